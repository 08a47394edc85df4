//! The registry of variables: each one's name, default, range and meaning ([`VARS`]), and the
//! retired names refused with their replacements.

use std::collections::HashMap;
use std::time::Duration;

use super::{ConfigError, KAFKA_PROP_PREFIX};

/// One configuration variable.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    /// Full variable name.
    pub name: &'static str,
    /// Default value as text (empty: unset).
    pub default: &'static str,
    /// What it does, for `classpulse config` and docs/configuration.md.
    pub meaning: &'static str,
    /// The values allowed, for a number, duration or size.
    pub range: Range,
    /// Masked wherever values are shown.
    pub secret: bool,
}

/// The values a variable allows, bounds included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Range {
    /// Whatever its reader accepts (a name, a URL, a choice; the meaning says which).
    Any,
    /// A whole number.
    Whole(u64, u64),
    /// A number.
    Number(f64, f64),
    /// A duration (`500ms`, `30s`, `5m`, `1h`).
    Duration(Duration, Duration),
    /// A size in bytes (`65536`, `512KiB`, `64MiB`, `1GiB`).
    Bytes(usize, usize),
}

impl Range {
    /// The range as the reference and the errors show it, e.g. `1s to 1h`.
    pub fn describe(&self) -> Option<String> {
        match *self {
            Range::Any => None,
            Range::Whole(min, max) => Some(format!("{min} to {max}")),
            Range::Number(min, max) => Some(format!("{min} to {max}")),
            Range::Duration(min, max) => Some(format!("{} to {}", duration(min), duration(max))),
            Range::Bytes(min, max) => Some(format!("{} to {}", bytes(min), bytes(max))),
        }
    }
}

/// A duration in its largest whole unit: `0s`, `200ms`, `10m`, `24h`.
fn duration(value: Duration) -> String {
    let ms = value.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

/// A size in its largest whole binary unit: `1KiB`, `256MiB`, `5GiB`.
fn bytes(value: usize) -> String {
    match value {
        0 => "0".to_owned(),
        _ if value % (1 << 30) == 0 => format!("{}GiB", value >> 30),
        _ if value % (1 << 20) == 0 => format!("{}MiB", value >> 20),
        _ if value % (1 << 10) == 0 => format!("{}KiB", value >> 10),
        _ => value.to_string(),
    }
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> VarSpec {
    VarSpec {
        name,
        default,
        meaning,
        range: Range::Any,
        secret: false,
    }
}

impl VarSpec {
    const fn whole(self, min: u64, max: u64) -> VarSpec {
        VarSpec {
            range: Range::Whole(min, max),
            ..self
        }
    }

    const fn number(self, min: f64, max: f64) -> VarSpec {
        VarSpec {
            range: Range::Number(min, max),
            ..self
        }
    }

    const fn duration(self, min: Duration, max: Duration) -> VarSpec {
        VarSpec {
            range: Range::Duration(min, max),
            ..self
        }
    }

    const fn bytes(self, min: usize, max: usize) -> VarSpec {
        VarSpec {
            range: Range::Bytes(min, max),
            ..self
        }
    }

    const fn secret(self) -> VarSpec {
        VarSpec {
            secret: true,
            ..self
        }
    }
}

const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// Every variable classpulse reads.
pub const VARS: &[VarSpec] = &[
    var("CLASSPULSE_SOURCE", "simulator", "Where events come from: `simulator` (built in, no servers), `kafka` or `kinesis`."),
    var("CLASSPULSE_KAFKA_BROKERS", "", "Kafka bootstrap servers, `host:port,...` (required with `kafka`)."),
    var("CLASSPULSE_KAFKA_TOPICS", "", "Topics to consume, comma-separated (required with `kafka`)."),
    var("CLASSPULSE_KAFKA_GROUP_ID", "classpulse", "Consumer group: every task of one deployment shares it."),
    var("CLASSPULSE_KAFKA_AWS_IAM", "false", "`true`: authenticate to MSK with the task's AWS credentials (SASL OAUTHBEARER with a SigV4-signed token, refreshed before it expires); sets `security.protocol=SASL_SSL` and `sasl.mechanism=OAUTHBEARER` unless a `CLASSPULSE_KAFKA_PROP_*` sets them. The region is the AWS SDK's (`AWS_REGION`)."),
    var("CLASSPULSE_KAFKA_DLQ_TOPIC", "", "With `kafka`: also produce every rejected input to this topic (raw bytes, reason headers)."),
    var("CLASSPULSE_LAKE_URL", "file://./classpulse-data", "Lake and dead-letter location: `file://DIR` or `s3://bucket/prefix`."),
    var("CLASSPULSE_S3_ENDPOINT", "", "S3 endpoint override for local servers (unset in production: AWS default)."),
    var("CLASSPULSE_DYNAMODB_ENDPOINT", "", "DynamoDB endpoint override for local servers (unset in production)."),
    var("CLASSPULSE_DYNAMODB_EVENTS_TABLE", "", "DynamoDB table of packed raw events (one item per member, class and pack window); unset: not written."),
    var("CLASSPULSE_DYNAMODB_AGGREGATES_TABLE", "", "DynamoDB table of live and final class aggregates; unset: not written."),
    var("CLASSPULSE_DYNAMODB_TTL_DAYS", "400", "Items of both tables carry a `ttl` attribute this many days after their event time (0: none).").whole(0, 36_500),
    var("CLASSPULSE_DYNAMODB_MAX_INFLIGHT", "16", "Most DynamoDB calls in flight per table; throttling lowers it adaptively (AIMD).").whole(1, 1_000),
    var("CLASSPULSE_DYNAMODB_PACK_WINDOW", "3m", "Event time packed into one events-table item per member: longer windows cost fewer write units (about 35 per 1,000 events at 3m) and hold more events in memory.").duration(Duration::from_secs(1), hours(1)),
    var("CLASSPULSE_KINESIS_ENDPOINT", "", "Kinesis endpoint override for local servers (unset in production)."),
    var("CLASSPULSE_KINESIS_STREAM", "", "Stream to consume, by name or ARN (required with `kinesis`)."),
    var("CLASSPULSE_KINESIS_APP_NAME", "classpulse", "Application name: every task of one deployment shares it; the lease table is named after it unless set."),
    var("CLASSPULSE_KINESIS_LEASE_TABLE", "", "DynamoDB table of shard leases and checkpoints (created if missing); default: the application name."),
    var("CLASSPULSE_KINESIS_START_POSITION", "TRIM_HORIZON", "Where a shard with no checkpoint and no parent starts: `TRIM_HORIZON`, `LATEST` or `AT_TIMESTAMP` (child shards always start at their beginning)."),
    var("CLASSPULSE_KINESIS_START_TIMESTAMP", "", "With `AT_TIMESTAMP`: the time to start from (RFC 3339)."),
    var("CLASSPULSE_KINESIS_LEASE_DURATION", "10s", "A lease not renewed for this long is taken over by another task (renewed every third of it).").duration(Duration::from_secs(1), Duration::from_secs(600)),
    var("CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL", "60s", "How often the shard list is read for new shards (also whenever a shard ends).").duration(Duration::from_secs(1), hours(1)),
    // Each poll vouches that the shard is still at its tip; the word lasts 15 s.
    var("CLASSPULSE_KINESIS_POLL_INTERVAL", "1s", "GetRecords interval per shard once caught up (while behind: every 200 ms, within the 5 calls/s limit).").duration(Duration::from_millis(200), Duration::from_secs(10)),
    var("CLASSPULSE_KINESIS_MAX_RECORDS", "10000", "Records per GetRecords call at most (the API's limit is 10,000).").whole(1, 10_000),
    var("CLASSPULSE_KINESIS_EFO", "false", "`true`: read by enhanced fan-out (SubscribeToShard: a dedicated 2 MB/s per shard, pushed) instead of polling GetRecords."),
    var("CLASSPULSE_KINESIS_CONSUMER_NAME", "", "With `CLASSPULSE_KINESIS_EFO=true`: the stream consumer registered (if missing) and read through; default: the application name."),
    var("CLASSPULSE_BATCH_MAX_EVENTS", "500", "Events the decoder hands to the sinks at once (cut at message boundaries).").whole(1, 100_000),
    var("CLASSPULSE_CHANNEL_CAPACITY", "16", "Batches queued between stages before the source is slowed.").whole(1, 4096),
    var("CLASSPULSE_MAX_MESSAGE_BYTES", "1MiB", "Larger messages are dead-lettered as `too_large` without being parsed.").bytes(1 << 10, 256 << 20),
    var("CLASSPULSE_MAX_CLOCK_SKEW", "60s", "How far in the future `event_created` may be before `timestamp_skew`.").duration(Duration::ZERO, hours(24)),
    var("CLASSPULSE_LAKE_MAX_EVENTS", "1000000", "An object is closed at this many records.").whole(1, 100_000_000),
    var("CLASSPULSE_LAKE_MAX_BYTES", "64MiB", "An object is closed at this many encoded bytes, estimated from the rows it holds.").bytes(1 << 10, 5 << 30),
    var("CLASSPULSE_LAKE_MAX_AGE", "300s", "An object is closed this long after it was opened, even with no new data.").duration(Duration::from_secs(1), hours(24)),
    var("CLASSPULSE_LAKE_MAX_BUFFER_BYTES", "256MiB", "Cap on the rows held in all open objects, as held (before encoding); the largest are cut early. Part of the task's memory budget: count about twice this (see docs/benchmarks.md).").bytes(1 << 20, 64 << 30),
    var("CLASSPULSE_LAKE_COMPACT_AFTER", "10m", "A partition's hour of lake objects is merged into one object (a row group per class) this long after the hour ends in event time, or after the partition has been idle this long: a duration from 1s to 24h, or `off`."),
    var("CLASSPULSE_ERASURE_KEY", "", "Key of the HMAC that names erased members in the lake's erasure list (`_erasure/members/`), at least 16 characters, the same for every task and `classpulse erase` run, never changed; unset: a built-in key, which keeps member ids out of listings only from those without classpulse's source.").secret(),
    var("CLASSPULSE_ERASURE_REFRESH", "1m", "How often a task reads the erasure list again: members `classpulse erase` adds are left out of everything a task writes from then on.").duration(Duration::from_secs(1), hours(1)),
    var("CLASSPULSE_HR_MAX_BPM", "190", "Maximum heart rate of a member with no better one (no profile, or one without a maximum, an observed maximum or a birth year).").whole(100, 240),
    var("CLASSPULSE_HR_MAX_FORMULA", "tanaka", "Age formula for a member's maximum heart rate when their profile has a birth year but no maximum: `tanaka` 208 - 0.7 x age, `gellish` 207 - 0.7 x age, `nes` 211 - 0.64 x age, `fox` 220 - age."),
    var("CLASSPULSE_HR_MAX_RAISE_AFTER", "30s", "A member's heart rate above their maximum for this long (every sample, no gap over `CLASSPULSE_HR_MAX_GAP`) raises it, from their next class, by at most 10 bpm.").duration(Duration::from_secs(5), Duration::from_secs(600)),
    var("CLASSPULSE_HR_MAX_GAP", "5s", "A heart-rate sample counts for the gap to the member's previous one, at most this long.").duration(Duration::from_secs(1), Duration::from_secs(60)),
    var("CLASSPULSE_HR_ZONES", "50,60,70,80,90", "Lower bounds of heart-rate zones 1 to 5, in percent (to 0.1), ascending."),
    var("CLASSPULSE_HR_ZONE_BASIS", "max", "What zones are a percent of: `max` (the maximum) or `reserve` (maximum minus resting, Karvonen; members without a resting rate fall back to `max`)."),
    var("CLASSPULSE_LEADERBOARD_SIZE", "5", "Members on each of a class's leaderboards (effort, work, and distance on the treadmill, rower and bike).").whole(1, 100),
    var("CLASSPULSE_EFFORT_WEIGHTS", "0,0,0,1,2", "Effort points per minute in zones 1 to 5 (to 0.01)."),
    var("CLASSPULSE_MEMBERS_FILE", "", "Member profiles as NDJSON, one object a line (`member_id`, `birth_year`, `sex`, `weight_kg`, `resting_hr`, `hr_max`, `hr_max_source`, `alias`, `leaderboard`); unset with the simulator: the simulator's members."),
    var("CLASSPULSE_DYNAMODB_MEMBERS_TABLE", "", "DynamoDB table of member profiles (pk `member_id`) the studios' member system writes; read, never written; unset: not read."),
    var("CLASSPULSE_MEMBERS_CACHE_TTL", "10m", "How long a profile read from the members table is used before it is read again.").duration(Duration::from_secs(1), hours(24)),
    var("CLASSPULSE_WATERMARK_DELAY", "10s", "A class's watermark trails its newest event time by this much (out-of-order tolerance).").duration(Duration::ZERO, hours(1)),
    var("CLASSPULSE_ALLOWED_LATENESS", "5m", "Events up to this far behind the watermark still update aggregates; older ones are `late`.").duration(Duration::ZERO, hours(24)),
    var("CLASSPULSE_CLASS_IDLE_TIMEOUT", "10m", "A class is final once its partition's event time, or the wall clock while the partition is read to its end, passes its last event by this much.").duration(Duration::from_secs(1), hours(24)),
    var("CLASSPULSE_DEDUP_HORIZON", "24h", "A final class is remembered this long after its last event (event time): its events are `late`, never a new class, and copies of events it wrote are duplicates.").duration(hours(1), hours(30 * 24)),
    var("CLASSPULSE_AGG_FLUSH_INTERVAL", "", "How often live (in-class) values of classes that changed are written to the aggregates table's `live` items (and, with a local lake, its live documents): a duration from 100ms to 1h, or `off`; unset: `5s`, or `off` with a live topic or stream (the walls read that)."),
    var("CLASSPULSE_LIVE_TOPIC", "", "Kafka topic (on `CLASSPULSE_KAFKA_BROKERS`) the aggregate stage publishes live records to, one a class a `CLASSPULSE_LIVE_INTERVAL` while it changes, for `classpulse screens`; unset: none (the embedded default serves its own walls)."),
    var("CLASSPULSE_LIVE_STREAM", "", "Kinesis stream (a name or ARN, the deployment's own, never `CLASSPULSE_KINESIS_STREAM`) the aggregate stage puts live records to instead of a topic, for `classpulse screens`, which reads it by enhanced fan-out; unset: none."),
    var("CLASSPULSE_LIVE_INTERVAL", "1s", "How often a live record of each class that changed is published (the walls refresh this often).").duration(Duration::from_millis(100), Duration::from_secs(60)),
    var("CLASSPULSE_LIVE_TILE_KEY", "", "Key of the HMAC that names members as tiles in live records (stable within a class, no member id): required with `CLASSPULSE_LIVE_TOPIC` or `CLASSPULSE_LIVE_STREAM`, the same in every task; unset otherwise: a fixed key.").secret(),
    var("CLASSPULSE_SCREENS_KEY", "", "`classpulse screens` and the embedded walls: key of the HMAC token in each studio's wall URL (`classpulse screens url STUDIO`); unset: walls are served without a token on a loopback address only.").secret(),
    var("CLASSPULSE_SCREENS_LOOKBACK", "10m", "`classpulse screens`: how far back the live topic or stream is read at start (the longest a final class stays on a wall).").duration(Duration::from_secs(10), hours(24)),
    var("CLASSPULSE_SCREENS_KEEP_FINAL", "10m", "How long a final class stays on its studio's wall.").duration(Duration::ZERO, hours(24)),
    var("CLASSPULSE_SCREENS_MAX_CLIENTS", "2000", "Walls streamed at once by one server; more get 503 with Retry-After.").whole(1, 100_000),
    var("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "30s", "How often aggregate state is checkpointed and final results written; commits wait for it.").duration(Duration::from_millis(100), hours(1)),
    var("CLASSPULSE_COMMIT_INTERVAL", "5s", "How often durable positions are committed to the source.").duration(Duration::from_millis(10), hours(1)),
    var("CLASSPULSE_SHUTDOWN_TIMEOUT", "25s", "Drain deadline after SIGTERM (ECS stops tasks after 30 s).").duration(Duration::from_secs(1), hours(1)),
    var("CLASSPULSE_HTTP_ADDR", "127.0.0.1:9898", "Address of /metrics, /healthz and /readyz (port 0: any free port)."),
    var("CLASSPULSE_LOG_FORMAT", "text", "`text`, or `json` for ECS/CloudWatch."),
    var("CLASSPULSE_LOG_LEVEL", "info", "tracing filter, e.g. `info` or `classpulse=debug`."),
    var("CLASSPULSE_EMF_INTERVAL", "60s", "With `json` logs: how often a CloudWatch Embedded Metric Format line with the largest source lag goes to stdout, for autoscaling (0s: never).").duration(Duration::ZERO, hours(1)),
    var("CLASSPULSE_PROGRESS_INTERVAL", "5s", "How often `run` logs a progress line (0s: never).").duration(Duration::ZERO, hours(1)),
    var("CLASSPULSE_SIM_STUDIOS", "20", "Simulator: studios running classes.").whole(1, 10_000),
    var("CLASSPULSE_SIM_MEMBERS", "12", "Simulator: members in each class.").whole(1, 200),
    var("CLASSPULSE_SIM_CLASS_MINUTES", "60", "Simulator: length of a class.").whole(1, 24 * 60),
    var("CLASSPULSE_SIM_DURATION", "60m", "Simulator: span of event time simulated (the run ends after it).").duration(Duration::from_secs(1), hours(7 * 24)),
    var("CLASSPULSE_SIM_SPEEDUP", "120", "Simulator: event time runs this many times faster than the wall clock (0: as fast as possible)."),
    var("CLASSPULSE_SIM_PARTITIONS", "4", "Simulator: partitions classes are spread over, as on a Kafka topic.").whole(1, 1024),
    var("CLASSPULSE_SIM_SEED", "", "Simulator: random seed; with CLASSPULSE_SIM_START set too, a run is reproducible event for event.").whole(0, u64::MAX),
    var("CLASSPULSE_SIM_START", "", "Simulator: event time of the start (RFC 3339); default: now minus the duration."),
    var("CLASSPULSE_SIM_DUPLICATE_RATE", "0.01", "Simulator: share of events sent twice (producer retries).").number(0.0, 1.0),
    var("CLASSPULSE_SIM_OUT_OF_ORDER_RATE", "0.02", "Simulator: share of events delayed by a few seconds.").number(0.0, 1.0),
    var("CLASSPULSE_SIM_INVALID_RATE", "0.005", "Simulator: share of events corrupted (each ends as a dead letter).").number(0.0, 1.0),
];

/// Variables of earlier releases and their names now: setting an old one is refused with its
/// new name, never silently ignored.
const RENAMED: &[(&str, &str)] = &[(
    "CLASSPULSE_KAFKA_DEAD_LETTER_TOPIC",
    "CLASSPULSE_KAFKA_DLQ_TOPIC",
)];

/// Refuses a `CLASSPULSE_*` variable classpulse does not read, naming its replacement when it
/// was renamed.
pub(super) fn refuse_unknown(env: &HashMap<String, String>) -> Result<(), ConfigError> {
    let mut unknown: Vec<&String> = env
        .keys()
        .filter(|name| {
            name.starts_with("CLASSPULSE_")
                && !name.starts_with(KAFKA_PROP_PREFIX)
                && !VARS.iter().any(|spec| spec.name == name.as_str())
        })
        .collect();
    unknown.sort();
    let Some(name) = unknown.first() else {
        return Ok(());
    };
    let allowed = match RENAMED.iter().find(|(old, _)| old == name) {
        Some((_, new)) => format!("renamed: set {new} instead"),
        None => "no such variable; `classpulse config` lists them all".to_owned(),
    };
    Err(ConfigError {
        variable: (*name).clone(),
        value: env[*name].clone(),
        allowed,
    })
}

pub(super) fn spec(name: &str) -> &'static VarSpec {
    VARS.iter()
        .find(|spec| spec.name == name)
        .unwrap_or_else(|| panic!("{name} is read but not declared in config::VARS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_reads_in_the_units_an_operator_writes() {
        let described = |name: &str| spec(name).range.describe().unwrap();
        assert_eq!(described("CLASSPULSE_COMMIT_INTERVAL"), "10ms to 1h");
        assert_eq!(described("CLASSPULSE_HR_MAX_GAP"), "1s to 1m");
        assert_eq!(described("CLASSPULSE_MAX_CLOCK_SKEW"), "0s to 24h");
        assert_eq!(described("CLASSPULSE_LAKE_MAX_BYTES"), "1KiB to 5GiB");
        assert_eq!(described("CLASSPULSE_BATCH_MAX_EVENTS"), "1 to 100000");
        assert_eq!(described("CLASSPULSE_SIM_DUPLICATE_RATE"), "0 to 1");
        assert_eq!(spec("CLASSPULSE_SOURCE").range.describe(), None);
    }
}
