//! Configuration: every setting is a `CLASSPULSE_*` environment variable (ECS tasks are tuned
//! that way), parsed into one typed [`Config`] and validated before anything connects.
//!
//! [`VARS`] is the single list of variables with their defaults; `classpulse config`, the
//! reference in docs/configuration.md (`classpulse config --markdown`, checked by a test) and
//! the parser all read it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

/// One configuration variable.
#[derive(Debug, Clone, Copy)]
pub struct VarSpec {
    /// Full variable name.
    pub name: &'static str,
    /// Default value as text (empty: unset).
    pub default: &'static str,
    /// What it does, for `classpulse config` and docs/configuration.md.
    pub meaning: &'static str,
    /// Masked wherever values are shown.
    pub secret: bool,
}

const fn var(name: &'static str, default: &'static str, meaning: &'static str) -> VarSpec {
    VarSpec {
        name,
        default,
        meaning,
        secret: false,
    }
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
    var("CLASSPULSE_DYNAMODB_TTL_DAYS", "400", "Items of both tables carry a `ttl` attribute this many days after their event time (0: none)."),
    var("CLASSPULSE_DYNAMODB_MAX_INFLIGHT", "16", "Most DynamoDB calls in flight per table; throttling lowers it adaptively (AIMD)."),
    var("CLASSPULSE_DYNAMODB_PACK_WINDOW", "3m", "Event time packed into one events-table item per member: longer windows cost fewer write units (about 35 per 1,000 events at 3m) and hold more events in memory."),
    var("CLASSPULSE_KINESIS_ENDPOINT", "", "Kinesis endpoint override for local servers (unset in production)."),
    var("CLASSPULSE_KINESIS_STREAM", "", "Stream to consume, by name or ARN (required with `kinesis`)."),
    var("CLASSPULSE_KINESIS_APP_NAME", "classpulse", "Application name: every task of one deployment shares it; the lease table is named after it unless set."),
    var("CLASSPULSE_KINESIS_LEASE_TABLE", "", "DynamoDB table of shard leases and checkpoints (created if missing); default: the application name."),
    var("CLASSPULSE_KINESIS_START_POSITION", "TRIM_HORIZON", "Where a shard with no checkpoint and no parent starts: `TRIM_HORIZON`, `LATEST` or `AT_TIMESTAMP` (child shards always start at their beginning)."),
    var("CLASSPULSE_KINESIS_START_TIMESTAMP", "", "With `AT_TIMESTAMP`: the time to start from (RFC 3339)."),
    var("CLASSPULSE_KINESIS_LEASE_DURATION", "10s", "A lease not renewed for this long is taken over by another task (renewed every third of it)."),
    var("CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL", "60s", "How often the shard list is read for new shards (also whenever a shard ends)."),
    var("CLASSPULSE_KINESIS_POLL_INTERVAL", "1s", "GetRecords interval per shard once caught up (while behind: every 200 ms, within the 5 calls/s limit)."),
    var("CLASSPULSE_KINESIS_MAX_RECORDS", "10000", "Records per GetRecords call at most (the API's limit is 10,000)."),
    var("CLASSPULSE_KINESIS_EFO", "false", "`true`: read by enhanced fan-out (SubscribeToShard: a dedicated 2 MB/s per shard, pushed) instead of polling GetRecords."),
    var("CLASSPULSE_KINESIS_CONSUMER_NAME", "", "With `CLASSPULSE_KINESIS_EFO=true`: the stream consumer registered (if missing) and read through; default: the application name."),
    var("CLASSPULSE_BATCH_MAX_EVENTS", "500", "Events the decoder hands to the sinks at once (cut at message boundaries)."),
    var("CLASSPULSE_CHANNEL_CAPACITY", "16", "Batches queued between stages before the source is slowed."),
    var("CLASSPULSE_MAX_MESSAGE_BYTES", "1MiB", "Larger messages are dead-lettered as `too_large` without being parsed."),
    var("CLASSPULSE_MAX_CLOCK_SKEW", "60s", "How far in the future `event_created` may be before `timestamp_skew`."),
    var("CLASSPULSE_LAKE_MAX_EVENTS", "1000000", "An object is closed at this many records."),
    var("CLASSPULSE_LAKE_MAX_BYTES", "64MiB", "An object is closed at this many (encoded) bytes."),
    var("CLASSPULSE_LAKE_MAX_AGE", "300s", "An object is closed this long after it was opened, even with no new data."),
    var("CLASSPULSE_LAKE_MAX_BUFFER_BYTES", "256MiB", "Cap on bytes buffered in all open objects; the largest are cut early. Part of the task's memory budget: count about twice this (see docs/benchmarks.md)."),
    var("CLASSPULSE_HR_MAX_BPM", "190", "Heart rate taken as 100% for zones: zone 1 from 50%, each zone 10 points wide, zone 5 from 90%."),
    var("CLASSPULSE_HR_MAX_GAP", "5s", "A heart-rate sample counts for the gap to the member's previous one, at most this long."),
    var("CLASSPULSE_WATERMARK_DELAY", "10s", "A class's watermark trails its newest event time by this much (out-of-order tolerance)."),
    var("CLASSPULSE_ALLOWED_LATENESS", "5m", "Events up to this far behind the watermark still update aggregates; older ones are `late`."),
    var("CLASSPULSE_CLASS_IDLE_TIMEOUT", "10m", "A class is final once its partition's event time, or the wall clock while the partition is read to its end, passes its last event by this much."),
    var("CLASSPULSE_AGG_FLUSH_INTERVAL", "5s", "How often live (in-class) values of classes that changed are written, for the screens."),
    var("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "30s", "How often aggregate state is checkpointed and final results written; commits wait for it."),
    var("CLASSPULSE_COMMIT_INTERVAL", "5s", "How often durable positions are committed to the source."),
    var("CLASSPULSE_SHUTDOWN_TIMEOUT", "25s", "Drain deadline after SIGTERM (ECS stops tasks after 30 s)."),
    var("CLASSPULSE_HTTP_ADDR", "127.0.0.1:9898", "Address of /metrics, /healthz and /readyz (port 0: any free port)."),
    var("CLASSPULSE_LOG_FORMAT", "text", "`text`, or `json` for ECS/CloudWatch."),
    var("CLASSPULSE_LOG_LEVEL", "info", "tracing filter, e.g. `info` or `classpulse=debug`."),
    var("CLASSPULSE_EMF_INTERVAL", "60s", "With `json` logs: how often a CloudWatch Embedded Metric Format line with the largest source lag goes to stdout, for autoscaling (0s: never)."),
    var("CLASSPULSE_PROGRESS_INTERVAL", "5s", "How often `run` logs a progress line (0s: never)."),
    var("CLASSPULSE_SIM_STUDIOS", "20", "Simulator: studios running classes."),
    var("CLASSPULSE_SIM_MEMBERS", "12", "Simulator: members in each class."),
    var("CLASSPULSE_SIM_CLASS_MINUTES", "60", "Simulator: length of a class."),
    var("CLASSPULSE_SIM_DURATION", "60m", "Simulator: span of event time simulated (the run ends after it)."),
    var("CLASSPULSE_SIM_SPEEDUP", "120", "Simulator: event time runs this many times faster than the wall clock (0: as fast as possible)."),
    var("CLASSPULSE_SIM_PARTITIONS", "4", "Simulator: partitions classes are spread over, as on a Kafka topic."),
    var("CLASSPULSE_SIM_SEED", "", "Simulator: random seed; with CLASSPULSE_SIM_START set too, a run is reproducible event for event."),
    var("CLASSPULSE_SIM_START", "", "Simulator: event time of the start (RFC 3339); default: now minus the duration."),
    var("CLASSPULSE_SIM_DUPLICATE_RATE", "0.01", "Simulator: share of events sent twice (producer retries)."),
    var("CLASSPULSE_SIM_OUT_OF_ORDER_RATE", "0.02", "Simulator: share of events delayed by a few seconds."),
    var("CLASSPULSE_SIM_INVALID_RATE", "0.005", "Simulator: share of events corrupted (each ends as a dead letter)."),
];

/// Where events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The built-in studio simulator.
    Simulator,
    /// A Kafka consumer group.
    Kafka,
    /// Kinesis shards shared through leases in DynamoDB.
    Kinesis,
}

/// Variables of earlier releases and their names now: setting an old one is refused with its
/// new name, never silently ignored.
const RENAMED: &[(&str, &str)] = &[(
    "CLASSPULSE_KAFKA_DEAD_LETTER_TOPIC",
    "CLASSPULSE_KAFKA_DLQ_TOPIC",
)];

/// librdkafka properties classpulse sets itself, which the pass-through may not change: the
/// delivery guarantee and the end-of-partition signal depend on them, and the rest have
/// variables of their own.
const KAFKA_OWNED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "offsets are committed only once everything before them is durable",
    ),
    (
        "enable.partition.eof",
        "the wall-clock class finality needs to know a partition was read to its end",
    ),
    ("bootstrap.servers", "set CLASSPULSE_KAFKA_BROKERS"),
    ("group.id", "set CLASSPULSE_KAFKA_GROUP_ID"),
];

/// Prefix of the librdkafka pass-through: `CLASSPULSE_KAFKA_PROP_FETCH_MAX_BYTES=...` sets
/// `fetch.max.bytes`.
pub const KAFKA_PROP_PREFIX: &str = "CLASSPULSE_KAFKA_PROP_";

/// Kafka consumer settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// librdkafka properties from `CLASSPULSE_KAFKA_PROP_*`, applied last (they win).
    pub properties: Vec<(String, String)>,
    /// Topic that also receives dead letters, if any.
    pub dead_letter_topic: Option<String>,
    /// Authenticate with AWS IAM (MSK): an OAUTHBEARER token signed with the task's credentials.
    pub aws_iam: bool,
}

impl KafkaConfig {
    /// Whether a librdkafka property holds a secret (masked wherever shown).
    pub fn is_secret(property: &str) -> bool {
        ["password", "secret", "sasl.jaas", "key.pem", "token"]
            .iter()
            .any(|word| property.contains(word))
    }
}

/// The configured start of a shard with no checkpoint and no parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    /// `TRIM_HORIZON` (the default: a backlog is never skipped).
    TrimHorizon,
    /// `LATEST`.
    Latest,
    /// `AT_TIMESTAMP`, epoch ms.
    AtTimestamp(i64),
}

/// Kinesis consumer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisConfig {
    /// Stream name or ARN.
    pub stream: String,
    /// Application name (the workers sharing the shards).
    pub app_name: String,
    /// Lease table name.
    pub lease_table: String,
    /// Start of shards with no checkpoint and no parent.
    pub start: StartPosition,
    /// Expiry of an unrenewed lease.
    pub lease_duration: Duration,
    /// Interval between shard listings.
    pub shard_sync_interval: Duration,
    /// GetRecords interval per shard once caught up.
    pub poll_interval: Duration,
    /// Records per GetRecords call.
    pub max_records: usize,
    /// Enhanced fan-out through this registered consumer name, instead of polling.
    pub efo_consumer: Option<String>,
}

/// Where the lake lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeLocation {
    /// A local directory (the embedded default).
    Local(PathBuf),
    /// An S3 bucket and key prefix (no leading or trailing `/`).
    S3 { bucket: String, prefix: String },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Lake and dead-letter object settings.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// Directory or bucket.
    pub location: LakeLocation,
    /// S3 endpoint override (local servers); `None` in production.
    pub s3_endpoint: Option<Url>,
    /// Records per object at most.
    pub max_events: usize,
    /// Encoded bytes per object at most.
    pub max_bytes: usize,
    /// Age at which an open object is closed.
    pub max_age: Duration,
    /// Bytes buffered across all open objects at most.
    pub max_buffer_bytes: usize,
}

/// Endpoint overrides for AWS services other than S3 (which the lake holds). `None` in
/// production, where the SDK's default endpoints, credential chain and region apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsEndpoints {
    /// DynamoDB endpoint, e.g. `http://127.0.0.1:8000`.
    pub dynamodb: Option<Url>,
    /// Kinesis endpoint, e.g. `http://127.0.0.1:4567`.
    pub kinesis: Option<Url>,
}

/// DynamoDB tables (the sink in [`crate::sink::dynamodb`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbConfig {
    /// Packed raw events; `None`: not written.
    pub events_table: Option<String>,
    /// Class aggregates; `None`: not written.
    pub aggregates_table: Option<String>,
    /// Days an item lives after its event time; 0: no `ttl` attribute.
    pub ttl_days: u32,
    /// Calls in flight per table at most.
    pub max_inflight: usize,
    /// Event time packed into one events-table item.
    pub pack_window: Duration,
}

/// Class aggregate settings (the definitions are in [`crate::aggregate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AggregateConfig {
    /// Heart rate taken as 100% for zones.
    pub hr_max_bpm: f64,
    /// Longest time one heart-rate sample counts for.
    pub hr_max_gap: Duration,
    /// How far a class's watermark trails its newest event.
    pub watermark_delay: Duration,
    /// How far behind the watermark an event may be and still count.
    pub allowed_lateness: Duration,
    /// Idle time after which a class is final.
    pub class_idle_timeout: Duration,
    /// Interval between checkpoints.
    pub checkpoint_interval: Duration,
    /// Interval between writes of live values.
    pub flush_interval: Duration,
    /// How far ahead of its arrival an event's time may pull the watermark.
    pub max_clock_skew: Duration,
}

/// Simulator settings.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Studios running classes.
    pub studios: u32,
    /// Members per class.
    pub members_per_class: u32,
    /// Length of one class.
    pub class_length: Duration,
    /// Event time simulated.
    pub duration: Duration,
    /// Event-time seconds per wall-clock second; 0 means unpaced.
    pub speedup: f64,
    /// Partitions classes are spread over.
    pub partitions: u32,
    /// Seed; random when unset.
    pub seed: Option<u64>,
    /// Event time at the start; now minus the duration when unset.
    pub start: Option<DateTime<Utc>>,
    /// Share of events sent twice.
    pub duplicate_rate: f64,
    /// Share of events delayed.
    pub out_of_order_rate: f64,
    /// Share of events corrupted.
    pub invalid_rate: f64,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Which source to run.
    pub source: SourceKind,
    /// Kafka settings (used when `source` is `kafka`).
    pub kafka: KafkaConfig,
    /// Kinesis settings (used when `source` is `kinesis`).
    pub kinesis: KinesisConfig,
    /// Lake and dead letters.
    pub lake: LakeConfig,
    /// AWS endpoint overrides.
    pub aws: AwsEndpoints,
    /// DynamoDB tables.
    pub dynamodb: DynamoDbConfig,
    /// Events per decoded batch.
    pub batch_max_events: usize,
    /// Capacity of each bounded channel between stages.
    pub channel_capacity: usize,
    /// Largest message parsed.
    pub max_message_bytes: usize,
    /// Allowed future skew of event time.
    pub max_clock_skew: Duration,
    /// Interval between commits to the source.
    pub commit_interval: Duration,
    /// Drain deadline.
    pub shutdown_timeout: Duration,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter directive.
    pub log_level: String,
    /// Progress line interval; zero disables it.
    pub progress_interval: Duration,
    /// Embedded Metric Format line interval (JSON logs only); zero disables it.
    pub emf_interval: Duration,
    /// Simulator settings (used when `source` is `simulator`).
    pub simulator: SimulatorConfig,
    /// Class aggregates.
    pub aggregates: AggregateConfig,
}

/// An invalid or unknown variable. Its message names the variable, the value (masked if
/// secret) and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is invalid: {allowed}")]
pub struct ConfigError {
    /// The variable.
    pub variable: String,
    /// The value given (masked for secrets).
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

/// Reads variables with their defaults and records what was parsed from where.
struct Reader<'a> {
    env: &'a HashMap<String, String>,
}

impl Reader<'_> {
    fn raw(&self, name: &'static str) -> &str {
        match self.env.get(name) {
            Some(value) => value.as_str(),
            None => spec(name).default,
        }
    }

    fn error(&self, name: &'static str, allowed: impl Into<String>) -> ConfigError {
        let spec = spec(name);
        let value = if spec.secret {
            "****".to_owned()
        } else {
            self.raw(name).to_owned()
        };
        ConfigError {
            variable: name.to_owned(),
            value,
            allowed: allowed.into(),
        }
    }

    fn parse<T>(
        &self,
        name: &'static str,
        allowed: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        parse(self.raw(name).trim()).ok_or_else(|| self.error(name, allowed))
    }

    fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.parse(name, "expected true or false", |text| match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    fn integer(&self, name: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let allowed = format!("expected a whole number from {min} to {max}");
        self.parse(name, &allowed, |text| {
            text.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
        })
    }

    fn fraction(&self, name: &'static str) -> Result<f64, ConfigError> {
        self.parse(name, "expected a number from 0 to 1", |text| {
            text.parse::<f64>().ok().filter(|n| (0.0..=1.0).contains(n))
        })
    }

    fn duration(
        &self,
        name: &'static str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let allowed =
            format!("expected a duration such as 500ms, 30s, 5m or 1h, from {min:?} to {max:?}");
        self.parse(name, &allowed, |text| {
            parse_duration(text).filter(|d| (min..=max).contains(d))
        })
    }

    fn bytes(&self, name: &'static str, min: usize, max: usize) -> Result<usize, ConfigError> {
        let allowed = format!(
            "expected a size such as 65536, 512KiB, 64MiB or 1GiB, from {min} to {max} bytes"
        );
        self.parse(name, &allowed, |text| {
            parse_bytes(text).filter(|n| (min..=max).contains(n))
        })
    }

    fn optional(&self, name: &'static str) -> Option<&str> {
        Some(self.raw(name).trim()).filter(|text| !text.is_empty())
    }

    /// Kafka settings; brokers and topics are required when `required`.
    fn kafka(&self, required: bool) -> Result<KafkaConfig, ConfigError> {
        let brokers = self.raw("CLASSPULSE_KAFKA_BROKERS").trim().to_owned();
        let topics: Vec<String> = self
            .raw("CLASSPULSE_KAFKA_TOPICS")
            .split(',')
            .map(str::trim)
            .filter(|topic| !topic.is_empty())
            .map(str::to_owned)
            .collect();
        let valid_broker = |broker: &str| {
            broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok()
            })
        };
        let brokers_valid = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .all(valid_broker);
        if (required && brokers.is_empty()) || !brokers_valid {
            return Err(self.error(
                "CLASSPULSE_KAFKA_BROKERS",
                "host:port[,host:port...] (required with CLASSPULSE_SOURCE=kafka)",
            ));
        }
        let valid_topic = |topic: &String| {
            topic.len() <= 249
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if (required && topics.is_empty()) || !topics.iter().all(valid_topic) {
            return Err(self.error(
                "CLASSPULSE_KAFKA_TOPICS",
                "one or more topic names ([A-Za-z0-9._-]), comma-separated",
            ));
        }
        let dead_letter_topic = self
            .optional("CLASSPULSE_KAFKA_DLQ_TOPIC")
            .map(str::to_owned);
        if dead_letter_topic
            .as_ref()
            .is_some_and(|topic| !valid_topic(topic))
        {
            return Err(self.error(
                "CLASSPULSE_KAFKA_DLQ_TOPIC",
                "a topic name ([A-Za-z0-9._-], at most 249 characters)",
            ));
        }
        let group_id = self.raw("CLASSPULSE_KAFKA_GROUP_ID").trim().to_owned();
        if group_id.is_empty() {
            return Err(self.error("CLASSPULSE_KAFKA_GROUP_ID", "a non-empty consumer group id"));
        }
        let mut properties: Vec<(String, String)> = self
            .env
            .iter()
            .filter_map(|(name, value)| {
                let property = name
                    .strip_prefix(KAFKA_PROP_PREFIX)?
                    .to_ascii_lowercase()
                    .replace('_', ".");
                Some((property, value.clone()))
            })
            .collect();
        properties.sort();
        let aws_iam = self.boolean("CLASSPULSE_KAFKA_AWS_IAM")?;
        if aws_iam {
            // MSK's IAM listener: TLS, and the token as an OAUTHBEARER bearer.
            for (property, default) in [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
            ] {
                if !properties.iter().any(|(p, _)| p == property) {
                    properties.push((property.to_owned(), default.to_owned()));
                }
            }
            if let Some((_, mechanism)) = properties
                .iter()
                .find(|(p, v)| p == "sasl.mechanism" && !v.eq_ignore_ascii_case("OAUTHBEARER"))
            {
                return Err(ConfigError {
                    variable: format!("{KAFKA_PROP_PREFIX}SASL_MECHANISM"),
                    value: mechanism.clone(),
                    allowed: "OAUTHBEARER with CLASSPULSE_KAFKA_AWS_IAM=true (the IAM token is an OAUTHBEARER bearer)".to_owned(),
                });
            }
            properties.sort();
        }
        for (property, value) in &properties {
            if let Some((_, why)) = KAFKA_OWNED_PROPERTIES.iter().find(|(p, _)| p == property) {
                return Err(ConfigError {
                    variable: format!(
                        "{KAFKA_PROP_PREFIX}{}",
                        property.replace('.', "_").to_ascii_uppercase()
                    ),
                    value: value.clone(),
                    allowed: format!("classpulse sets {property} itself: {why}"),
                });
            }
            // The source vouches on each statistics interval that a partition is still at its
            // end, and that word lasts 15 s (`partitions::AT_END_STALE_MS`).
            if property == "statistics.interval.ms"
                && !value
                    .trim()
                    .parse::<u64>()
                    .is_ok_and(|ms| (1..=10_000).contains(&ms))
            {
                return Err(ConfigError {
                    variable: format!("{KAFKA_PROP_PREFIX}STATISTICS_INTERVAL_MS"),
                    value: value.clone(),
                    allowed: "1 to 10000 (ms): lag metrics and the end-of-partition signal are refreshed on it".to_owned(),
                });
            }
        }
        // librdkafka is built with its own OpenSSL (`ssl-vendored`), whose default CA directory
        // is not the system's: over TLS, unless told otherwise, find the system's CA bundle
        // (MSK's certificates are signed by Amazon's public CAs).
        let tls = properties.iter().any(|(property, value)| {
            property == "security.protocol"
                && ["ssl", "sasl_ssl"].contains(&value.trim().to_ascii_lowercase().as_str())
        });
        if tls
            && !properties
                .iter()
                .any(|(property, _)| property == "ssl.ca.location")
        {
            properties.push(("ssl.ca.location".to_owned(), "probe".to_owned()));
        }
        Ok(KafkaConfig {
            brokers,
            topics,
            group_id,
            properties,
            dead_letter_topic,
            aws_iam,
        })
    }

    /// Kinesis settings; the stream is required when `required`.
    fn kinesis(&self, required: bool) -> Result<KinesisConfig, ConfigError> {
        let stream = self.raw("CLASSPULSE_KINESIS_STREAM").trim().to_owned();
        let valid_name = |name: &str| {
            (1..=128).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        };
        let valid = if let Some(rest) = stream.strip_prefix("arn:") {
            rest.contains(":kinesis:")
                && rest
                    .rsplit_once(":stream/")
                    .is_some_and(|(_, name)| valid_name(name))
        } else {
            valid_name(&stream)
        };
        if (required || !stream.is_empty()) && !valid {
            return Err(self.error(
                "CLASSPULSE_KINESIS_STREAM",
                "a stream name (1 to 128 of [A-Za-z0-9_.-]) or arn:aws:kinesis:REGION:ACCOUNT:stream/NAME (required with CLASSPULSE_SOURCE=kinesis)",
            ));
        }
        let app_name = self.raw("CLASSPULSE_KINESIS_APP_NAME").trim().to_owned();
        if !valid_name(&app_name) {
            return Err(self.error("CLASSPULSE_KINESIS_APP_NAME", "1 to 128 of [A-Za-z0-9_.-]"));
        }
        let lease_table = match self.table_name("CLASSPULSE_KINESIS_LEASE_TABLE")? {
            Some(table) => table,
            None if app_name.len() >= 3 => app_name.clone(),
            None => {
                return Err(self.error(
                    "CLASSPULSE_KINESIS_LEASE_TABLE",
                    "a table name (required when CLASSPULSE_KINESIS_APP_NAME is shorter than 3 characters, DynamoDB's minimum)",
                ))
            }
        };
        let timestamp = |name| {
            self.parse(
                name,
                "expected RFC 3339, e.g. 2026-11-25T17:00:00Z (required with AT_TIMESTAMP)",
                |text| {
                    DateTime::parse_from_rfc3339(text)
                        .ok()
                        .map(|time| time.timestamp_millis())
                },
            )
        };
        // Checked whenever set, so a typo shows before anyone switches to AT_TIMESTAMP.
        let start_timestamp = match self.optional("CLASSPULSE_KINESIS_START_TIMESTAMP") {
            Some(_) => Some(timestamp("CLASSPULSE_KINESIS_START_TIMESTAMP")?),
            None => None,
        };
        let start = match self.raw("CLASSPULSE_KINESIS_START_POSITION").trim() {
            "TRIM_HORIZON" => StartPosition::TrimHorizon,
            "LATEST" => StartPosition::Latest,
            "AT_TIMESTAMP" => StartPosition::AtTimestamp(match start_timestamp {
                Some(ms) => ms,
                None => timestamp("CLASSPULSE_KINESIS_START_TIMESTAMP")?,
            }),
            _ => {
                return Err(self.error(
                    "CLASSPULSE_KINESIS_START_POSITION",
                    "expected TRIM_HORIZON, LATEST or AT_TIMESTAMP",
                ))
            }
        };
        let efo = self.boolean("CLASSPULSE_KINESIS_EFO")?;
        let consumer_name = self
            .optional("CLASSPULSE_KINESIS_CONSUMER_NAME")
            .unwrap_or(&app_name)
            .to_owned();
        if !valid_name(&consumer_name) {
            return Err(self.error(
                "CLASSPULSE_KINESIS_CONSUMER_NAME",
                "1 to 128 of [A-Za-z0-9_.-]",
            ));
        }
        Ok(KinesisConfig {
            stream,
            app_name,
            lease_table,
            start,
            lease_duration: self.duration(
                "CLASSPULSE_KINESIS_LEASE_DURATION",
                Duration::from_secs(1),
                Duration::from_secs(600),
            )?,
            shard_sync_interval: self.duration(
                "CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL",
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            poll_interval: self.duration(
                "CLASSPULSE_KINESIS_POLL_INTERVAL",
                Duration::from_millis(200),
                // Each poll vouches that the shard is still at its tip; the word lasts 15 s.
                Duration::from_secs(10),
            )?,
            max_records: self.integer("CLASSPULSE_KINESIS_MAX_RECORDS", 1, 10_000)? as usize,
            efo_consumer: efo.then_some(consumer_name),
        })
    }

    /// An optional DynamoDB table name.
    fn table_name(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(table) = self.optional(name) else {
            return Ok(None);
        };
        let valid = (3..=255).contains(&table.len())
            && table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(self.error(
                name,
                "a DynamoDB table name: 3 to 255 characters of [A-Za-z0-9_.-]",
            ));
        }
        Ok(Some(table.to_owned()))
    }

    /// An optional http(s) endpoint URL.
    fn endpoint(&self, name: &'static str) -> Result<Option<Url>, ConfigError> {
        if self.optional(name).is_none() {
            return Ok(None);
        }
        self.parse(
            name,
            "expected an http(s):// URL such as http://127.0.0.1:8000",
            |text| {
                Url::parse(text)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            },
        )
        .map(Some)
    }
}

fn spec(name: &str) -> &'static VarSpec {
    VARS.iter()
        .find(|spec| spec.name == name)
        .unwrap_or_else(|| panic!("{name} is read but not declared in config::VARS"))
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parses `65536`, `512KiB`, `64MiB`, `1GiB`.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Parses and validates `env` (only `CLASSPULSE_*` names are looked at). Pure: connects
    /// to nothing.
    pub fn from_vars(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut unknown: Vec<&String> = env
            .keys()
            .filter(|name| {
                name.starts_with("CLASSPULSE_")
                    && !name.starts_with(KAFKA_PROP_PREFIX)
                    && !VARS.iter().any(|spec| spec.name == name.as_str())
            })
            .collect();
        unknown.sort();
        if let Some(name) = unknown.first() {
            let allowed = match RENAMED.iter().find(|(old, _)| old == name) {
                Some((_, new)) => format!("renamed: set {new} instead"),
                None => "no such variable; `classpulse config` lists them all".to_owned(),
            };
            return Err(ConfigError {
                variable: (*name).clone(),
                value: env[*name].clone(),
                allowed,
            });
        }
        let read = Reader { env };

        let source = read.parse(
            "CLASSPULSE_SOURCE",
            "expected simulator, kafka or kinesis",
            |text| match text {
                "simulator" => Some(SourceKind::Simulator),
                "kafka" => Some(SourceKind::Kafka),
                "kinesis" => Some(SourceKind::Kinesis),
                _ => None,
            },
        )?;
        let kafka = read.kafka(source == SourceKind::Kafka)?;
        let kinesis = read.kinesis(source == SourceKind::Kinesis)?;
        let location = read.parse(
            "CLASSPULSE_LAKE_URL",
            "expected file://DIR or s3://bucket/prefix",
            parse_lake_url,
        )?;
        let s3_endpoint = read.endpoint("CLASSPULSE_S3_ENDPOINT")?;
        let aws = AwsEndpoints {
            dynamodb: read.endpoint("CLASSPULSE_DYNAMODB_ENDPOINT")?,
            kinesis: read.endpoint("CLASSPULSE_KINESIS_ENDPOINT")?,
        };
        let dynamodb = DynamoDbConfig {
            events_table: read.table_name("CLASSPULSE_DYNAMODB_EVENTS_TABLE")?,
            aggregates_table: read.table_name("CLASSPULSE_DYNAMODB_AGGREGATES_TABLE")?,
            ttl_days: read.integer("CLASSPULSE_DYNAMODB_TTL_DAYS", 0, 36_500)? as u32,
            max_inflight: read.integer("CLASSPULSE_DYNAMODB_MAX_INFLIGHT", 1, 1_000)? as usize,
            pack_window: read.duration(
                "CLASSPULSE_DYNAMODB_PACK_WINDOW",
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
        };
        if dynamodb.events_table.is_some() && dynamodb.events_table == dynamodb.aggregates_table {
            return Err(read.error(
                "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE",
                "must differ from CLASSPULSE_DYNAMODB_EVENTS_TABLE (the tables have different keys)",
            ));
        }
        let max_bytes = read.bytes("CLASSPULSE_LAKE_MAX_BYTES", 1 << 10, 5 << 30)?;
        let max_buffer_bytes = read.bytes("CLASSPULSE_LAKE_MAX_BUFFER_BYTES", 1 << 20, 64 << 30)?;
        if max_buffer_bytes < max_bytes {
            return Err(read.error(
                "CLASSPULSE_LAKE_MAX_BUFFER_BYTES",
                format!("must be at least CLASSPULSE_LAKE_MAX_BYTES ({max_bytes} bytes)"),
            ));
        }
        let lake = LakeConfig {
            location,
            s3_endpoint,
            max_events: read.integer("CLASSPULSE_LAKE_MAX_EVENTS", 1, 100_000_000)? as usize,
            max_bytes,
            max_age: read.duration(
                "CLASSPULSE_LAKE_MAX_AGE",
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?,
            max_buffer_bytes,
        };

        let simulator = SimulatorConfig {
            studios: read.integer("CLASSPULSE_SIM_STUDIOS", 1, 10_000)? as u32,
            members_per_class: read.integer("CLASSPULSE_SIM_MEMBERS", 1, 200)? as u32,
            class_length: Duration::from_secs(
                60 * read.integer("CLASSPULSE_SIM_CLASS_MINUTES", 1, 24 * 60)?,
            ),
            duration: read.duration(
                "CLASSPULSE_SIM_DURATION",
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            )?,
            speedup: read.parse(
                "CLASSPULSE_SIM_SPEEDUP",
                "expected a number from 0 to 1000000 (0: unpaced)",
                |text| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|n| (0.0..=1_000_000.0).contains(n))
                },
            )?,
            partitions: read.integer("CLASSPULSE_SIM_PARTITIONS", 1, 1024)? as u32,
            seed: match read.optional("CLASSPULSE_SIM_SEED") {
                None => None,
                Some(_) => Some(read.integer("CLASSPULSE_SIM_SEED", 0, u64::MAX)?),
            },
            start: match read.optional("CLASSPULSE_SIM_START") {
                None => None,
                Some(_) => Some(read.parse(
                    "CLASSPULSE_SIM_START",
                    "expected RFC 3339, e.g. 2026-11-25T17:00:00Z",
                    |text| {
                        DateTime::parse_from_rfc3339(text)
                            .ok()
                            .map(|time| time.with_timezone(&Utc))
                    },
                )?),
            },
            duplicate_rate: read.fraction("CLASSPULSE_SIM_DUPLICATE_RATE")?,
            out_of_order_rate: read.fraction("CLASSPULSE_SIM_OUT_OF_ORDER_RATE")?,
            invalid_rate: read.fraction("CLASSPULSE_SIM_INVALID_RATE")?,
        };

        let max_clock_skew = read.duration(
            "CLASSPULSE_MAX_CLOCK_SKEW",
            Duration::ZERO,
            Duration::from_secs(24 * 3600),
        )?;
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(24 * 3600);
        let aggregates = AggregateConfig {
            hr_max_bpm: read.parse(
                "CLASSPULSE_HR_MAX_BPM",
                "expected a heart rate from 100 to 250",
                |text| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|n| (100.0..=250.0).contains(n))
                },
            )?,
            hr_max_gap: read.duration("CLASSPULSE_HR_MAX_GAP", Duration::from_secs(1), minute)?,
            watermark_delay: read.duration(
                "CLASSPULSE_WATERMARK_DELAY",
                Duration::ZERO,
                60 * minute,
            )?,
            allowed_lateness: read.duration("CLASSPULSE_ALLOWED_LATENESS", Duration::ZERO, day)?,
            class_idle_timeout: read.duration(
                "CLASSPULSE_CLASS_IDLE_TIMEOUT",
                Duration::from_secs(1),
                day,
            )?,
            flush_interval: read.duration(
                "CLASSPULSE_AGG_FLUSH_INTERVAL",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            checkpoint_interval: read.duration(
                "CLASSPULSE_AGG_CHECKPOINT_INTERVAL",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            max_clock_skew,
        };

        Ok(Config {
            source,
            kafka,
            kinesis,
            lake,
            aws,
            dynamodb,
            aggregates,
            batch_max_events: read.integer("CLASSPULSE_BATCH_MAX_EVENTS", 1, 100_000)? as usize,
            channel_capacity: read.integer("CLASSPULSE_CHANNEL_CAPACITY", 1, 4096)? as usize,
            max_message_bytes: read.bytes("CLASSPULSE_MAX_MESSAGE_BYTES", 1 << 10, 256 << 20)?,
            max_clock_skew,
            commit_interval: read.duration(
                "CLASSPULSE_COMMIT_INTERVAL",
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?,
            shutdown_timeout: read.duration(
                "CLASSPULSE_SHUTDOWN_TIMEOUT",
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
            http_addr: read.parse(
                "CLASSPULSE_HTTP_ADDR",
                "expected host:port, e.g. 127.0.0.1:9898",
                |text| text.parse().ok(),
            )?,
            log_format: read.parse("CLASSPULSE_LOG_FORMAT", "expected text or json", |text| {
                match text {
                    "text" => Some(LogFormat::Text),
                    "json" => Some(LogFormat::Json),
                    _ => None,
                }
            })?,
            log_level: read.parse(
                "CLASSPULSE_LOG_LEVEL",
                "expected a tracing filter such as info or classpulse=debug",
                |text| {
                    tracing_subscriber::EnvFilter::try_new(text)
                        .ok()
                        .map(|_| text.to_owned())
                },
            )?,
            progress_interval: read.duration(
                "CLASSPULSE_PROGRESS_INTERVAL",
                Duration::ZERO,
                Duration::from_secs(3600),
            )?,
            emf_interval: read.duration(
                "CLASSPULSE_EMF_INTERVAL",
                Duration::ZERO,
                Duration::from_secs(3600),
            )?,
            simulator,
        })
    }
}

fn parse_lake_url(text: &str) -> Option<LakeLocation> {
    if let Some(path) = text.strip_prefix("file://") {
        return Some(path)
            .filter(|path| !path.is_empty())
            .map(|path| LakeLocation::Local(PathBuf::from(path)));
    }
    let rest = text.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    valid_bucket.then(|| LakeLocation::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
    })
}

/// One line of `classpulse config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveVar {
    /// Variable name.
    pub name: &'static str,
    /// Value in force (masked if secret; empty when unset).
    pub value: String,
    /// Whether the value is the default.
    pub is_default: bool,
}

/// The reference table of every variable, as `classpulse config --markdown` prints it and
/// docs/configuration.md holds it (a test keeps the two equal).
pub fn reference_markdown() -> String {
    let mut table = String::from("| Variable | Default | Meaning |\n|---|---|---|\n");
    for spec in VARS {
        let default = if spec.default.is_empty() {
            "(unset)".to_owned()
        } else {
            format!("`{}`", spec.default)
        };
        table.push_str(&format!(
            "| `{}` | {default} | {} |\n",
            spec.name, spec.meaning
        ));
    }
    table
}

/// The value of every variable, as `classpulse config` prints it: the declared ones, then the
/// librdkafka pass-through (secret-looking properties masked).
pub fn effective(env: &HashMap<String, String>) -> Vec<EffectiveVar> {
    let mut passthrough: Vec<EffectiveVar> = env
        .iter()
        .filter(|(name, _)| name.starts_with(KAFKA_PROP_PREFIX))
        .map(|(name, value)| {
            let property = name[KAFKA_PROP_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace('_', ".");
            EffectiveVar {
                name: "CLASSPULSE_KAFKA_PROP_*",
                value: if KafkaConfig::is_secret(&property) {
                    format!("{property}=****")
                } else {
                    format!("{property}={value}")
                },
                is_default: false,
            }
        })
        .collect();
    passthrough.sort_by(|a, b| a.value.cmp(&b.value));
    let declared: Vec<EffectiveVar> = VARS
        .iter()
        .map(|spec| {
            let given = env.get(spec.name);
            let value = given.map_or(spec.default, String::as_str);
            EffectiveVar {
                name: spec.name,
                value: if spec.secret && !value.is_empty() {
                    "****".to_owned()
                } else {
                    value.to_owned()
                },
                is_default: given.is_none(),
            }
        })
        .collect();
    declared.into_iter().chain(passthrough).collect()
}

impl fmt::Display for EffectiveVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = if self.is_default { "default" } else { "set" };
        write!(f, "{}={} ({origin})", self.name, self.value)
    }
}

/// Only `CLASSPULSE_*` variables, for `effective` and tests.
pub fn classpulse_vars() -> HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("CLASSPULSE_"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_vars(&HashMap::new()).expect("defaults must validate");
        assert_eq!(config.source, SourceKind::Simulator);
        assert_eq!(
            config.lake.location,
            LakeLocation::Local(PathBuf::from("./classpulse-data"))
        );
        assert_eq!(config.batch_max_events, 500);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(25));
        assert_eq!(config.lake.max_bytes, 64 << 20);
        assert_eq!(config.http_addr, "127.0.0.1:9898".parse().unwrap());
    }

    #[test]
    fn invalid_value_names_variable_value_and_allowed() {
        let error = Config::from_vars(&env(&[("CLASSPULSE_BATCH_MAX_EVENTS", "abc")])).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_BATCH_MAX_EVENTS");
        let message = error.to_string();
        assert!(
            message.contains("CLASSPULSE_BATCH_MAX_EVENTS=\"abc\""),
            "{message}"
        );
        assert!(message.contains("1 to 100000"), "{message}");
    }

    #[test]
    fn every_variable_rejects_garbage_except_free_text() {
        // Free-form values where any text is meaningful are exempt.
        let free_text = ["CLASSPULSE_LOG_LEVEL", "CLASSPULSE_KAFKA_GROUP_ID"];
        for spec in VARS.iter().filter(|spec| !free_text.contains(&spec.name)) {
            let result = Config::from_vars(&env(&[(spec.name, "not a valid value ☃")]));
            let error = result.expect_err(spec.name);
            assert_eq!(error.variable, spec.name);
        }
    }

    #[test]
    fn unknown_classpulse_variable_is_an_error() {
        let error = Config::from_vars(&env(&[("CLASSPULSE_BATCH_MAX_EVENT", "10")])).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_BATCH_MAX_EVENT");
        assert!(Config::from_vars(&env(&[("OTHER_VAR", "x")])).is_ok());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("25"), Some(Duration::from_secs(25)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_bytes("64MiB"), Some(64 << 20));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("1MB"), None);
        assert_eq!(parse_bytes("99999999999999999999GiB"), None);
    }

    #[test]
    fn lake_urls() {
        assert_eq!(
            parse_lake_url("s3://studio-lake/raw/v1/"),
            Some(LakeLocation::S3 {
                bucket: "studio-lake".into(),
                prefix: "raw/v1".into()
            })
        );
        assert_eq!(
            parse_lake_url("file:///tmp/lake"),
            Some(LakeLocation::Local("/tmp/lake".into()))
        );
        assert_eq!(parse_lake_url("s3://Bad_Bucket"), None);
        assert_eq!(parse_lake_url("gs://bucket"), None);
        assert_eq!(parse_lake_url("file://"), None);
    }

    #[test]
    fn kinesis_needs_a_stream_and_names_its_lease_table_after_the_app() {
        let error = Config::from_vars(&env(&[("CLASSPULSE_SOURCE", "kinesis")])).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KINESIS_STREAM");
        let config = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kinesis"),
            (
                "CLASSPULSE_KINESIS_STREAM",
                "arn:aws:kinesis:us-east-1:123456789012:stream/studio-events",
            ),
            ("CLASSPULSE_KINESIS_APP_NAME", "studios"),
        ]))
        .unwrap();
        assert_eq!(config.source, SourceKind::Kinesis);
        assert_eq!(config.kinesis.lease_table, "studios");
        assert_eq!(config.kinesis.start, StartPosition::TrimHorizon);
        let error = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kinesis"),
            ("CLASSPULSE_KINESIS_STREAM", "events"),
            ("CLASSPULSE_KINESIS_START_POSITION", "AT_TIMESTAMP"),
        ]))
        .unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KINESIS_START_TIMESTAMP");
        let config = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kinesis"),
            ("CLASSPULSE_KINESIS_STREAM", "events"),
            ("CLASSPULSE_KINESIS_START_POSITION", "AT_TIMESTAMP"),
            ("CLASSPULSE_KINESIS_START_TIMESTAMP", "2026-11-25T17:00:00Z"),
        ]))
        .unwrap();
        assert_eq!(
            config.kinesis.start,
            StartPosition::AtTimestamp(1_795_626_000_000)
        );
        let error = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kinesis"),
            ("CLASSPULSE_KINESIS_STREAM", "arn:aws:s3:::bucket"),
        ]))
        .unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KINESIS_STREAM");
    }

    #[test]
    fn buffer_cap_must_hold_one_object() {
        let error = Config::from_vars(&env(&[
            ("CLASSPULSE_LAKE_MAX_BYTES", "64MiB"),
            ("CLASSPULSE_LAKE_MAX_BUFFER_BYTES", "32MiB"),
        ]))
        .unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_LAKE_MAX_BUFFER_BYTES");
    }

    #[test]
    fn kafka_properties_classpulse_owns_and_renamed_variables_are_refused_by_name() {
        let kafka = [
            ("CLASSPULSE_SOURCE", "kafka"),
            ("CLASSPULSE_KAFKA_BROKERS", "b:9092"),
            ("CLASSPULSE_KAFKA_TOPICS", "perf"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut vars = kafka.to_vec();
            vars.push(extra);
            Config::from_vars(&env(&vars)).unwrap_err()
        };
        let error = with(("CLASSPULSE_KAFKA_PROP_ENABLE_AUTO_COMMIT", "true"));
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_PROP_ENABLE_AUTO_COMMIT");
        assert!(
            error.allowed.contains("enable.auto.commit itself"),
            "{}",
            error.allowed
        );
        let error = with(("CLASSPULSE_KAFKA_PROP_ENABLE_PARTITION_EOF", "false"));
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_PROP_ENABLE_PARTITION_EOF");
        let error = with(("CLASSPULSE_KAFKA_PROP_STATISTICS_INTERVAL_MS", "60000"));
        assert_eq!(
            error.variable,
            "CLASSPULSE_KAFKA_PROP_STATISTICS_INTERVAL_MS"
        );
        let mut vars = kafka.to_vec();
        vars.push(("CLASSPULSE_KAFKA_PROP_STATISTICS_INTERVAL_MS", "200"));
        assert!(Config::from_vars(&env(&vars)).is_ok());
        let error = with(("CLASSPULSE_KAFKA_DEAD_LETTER_TOPIC", "dlq"));
        assert_eq!(
            error.allowed,
            "renamed: set CLASSPULSE_KAFKA_DLQ_TOPIC instead"
        );
        let mut vars = kafka.to_vec();
        vars.push(("CLASSPULSE_KAFKA_DLQ_TOPIC", "perf.dlq"));
        let config = Config::from_vars(&env(&vars)).unwrap();
        assert_eq!(config.kafka.dead_letter_topic.as_deref(), Some("perf.dlq"));
    }

    #[test]
    fn kafka_over_tls_finds_the_system_cas_unless_given_a_ca() {
        let kafka = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                ("CLASSPULSE_SOURCE", "kafka"),
                ("CLASSPULSE_KAFKA_BROKERS", "b-1:9094"),
                ("CLASSPULSE_KAFKA_TOPICS", "perf"),
            ];
            vars.extend_from_slice(extra);
            Config::from_vars(&env(&vars)).unwrap().kafka.properties
        };
        let ca = |properties: &[(String, String)]| {
            properties
                .iter()
                .find(|(property, _)| property == "ssl.ca.location")
                .map(|(_, value)| value.clone())
        };
        assert_eq!(ca(&kafka(&[])), None);
        assert_eq!(
            ca(&kafka(&[(
                "CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL",
                "SASL_SSL"
            )])),
            Some("probe".to_owned())
        );
        assert_eq!(
            ca(&kafka(&[
                ("CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL", "ssl"),
                ("CLASSPULSE_KAFKA_PROP_SSL_CA_LOCATION", "/etc/msk/ca.pem"),
            ])),
            Some("/etc/msk/ca.pem".to_owned())
        );
    }

    #[test]
    fn aws_iam_means_oauthbearer_over_tls_and_nothing_else() {
        let kafka = |extra: &[(&str, &str)]| {
            let mut vars = vec![
                ("CLASSPULSE_SOURCE", "kafka"),
                ("CLASSPULSE_KAFKA_BROKERS", "b-1:9098"),
                ("CLASSPULSE_KAFKA_TOPICS", "perf"),
                ("CLASSPULSE_KAFKA_AWS_IAM", "true"),
            ];
            vars.extend_from_slice(extra);
            Config::from_vars(&env(&vars)).map(|c| c.kafka)
        };
        let set = |properties: &[(String, String)], name: &str| {
            properties
                .iter()
                .find(|(property, _)| property == name)
                .map(|(_, value)| value.clone())
        };
        let config = kafka(&[]).unwrap();
        assert!(config.aws_iam);
        assert_eq!(
            set(&config.properties, "security.protocol").as_deref(),
            Some("SASL_SSL")
        );
        assert_eq!(
            set(&config.properties, "sasl.mechanism").as_deref(),
            Some("OAUTHBEARER")
        );
        assert_eq!(
            set(&config.properties, "ssl.ca.location").as_deref(),
            Some("probe")
        );
        // A test broker without TLS may be named; another mechanism may not.
        let plain =
            kafka(&[("CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL", "SASL_PLAINTEXT")]).unwrap();
        assert_eq!(
            set(&plain.properties, "security.protocol").as_deref(),
            Some("SASL_PLAINTEXT")
        );
        let error =
            kafka(&[("CLASSPULSE_KAFKA_PROP_SASL_MECHANISM", "SCRAM-SHA-512")]).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_PROP_SASL_MECHANISM");
        let error = kafka(&[("CLASSPULSE_KAFKA_AWS_IAM", "yes")]).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_AWS_IAM");
        assert!(
            !Config::from_vars(&env(&[
                ("CLASSPULSE_SOURCE", "kafka"),
                ("CLASSPULSE_KAFKA_BROKERS", "b-1:9092"),
                ("CLASSPULSE_KAFKA_TOPICS", "perf"),
            ]))
            .unwrap()
            .kafka
            .aws_iam
        );
    }

    #[test]
    fn kafka_needs_brokers_and_topics_and_passes_properties_through() {
        let error = Config::from_vars(&env(&[("CLASSPULSE_SOURCE", "kafka")])).unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_BROKERS");
        let error = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kafka"),
            ("CLASSPULSE_KAFKA_BROKERS", "b:9092"),
        ]))
        .unwrap_err();
        assert_eq!(error.variable, "CLASSPULSE_KAFKA_TOPICS");
        let config = Config::from_vars(&env(&[
            ("CLASSPULSE_SOURCE", "kafka"),
            ("CLASSPULSE_KAFKA_BROKERS", "b1:9092,b2:9092"),
            ("CLASSPULSE_KAFKA_TOPICS", "perf-a, perf-b"),
            ("CLASSPULSE_KAFKA_PROP_FETCH_MAX_BYTES", "1048576"),
            ("CLASSPULSE_KAFKA_PROP_SASL_PASSWORD", "hunter2"),
        ]))
        .unwrap();
        assert_eq!(config.kafka.topics, vec!["perf-a", "perf-b"]);
        assert_eq!(
            config.kafka.properties[0],
            ("fetch.max.bytes".to_owned(), "1048576".to_owned())
        );
        let shown: Vec<String> =
            effective(&env(&[("CLASSPULSE_KAFKA_PROP_SASL_PASSWORD", "hunter2")]))
                .iter()
                .map(ToString::to_string)
                .collect();
        assert!(
            shown.iter().any(|line| line.contains("sasl.password=****")),
            "{shown:?}"
        );
        assert!(
            !shown.iter().any(|line| line.contains("hunter2")),
            "secrets never printed"
        );
    }

    #[test]
    fn effective_marks_defaults() {
        let shown = effective(&env(&[("CLASSPULSE_SIM_STUDIOS", "3")]));
        let studios = shown
            .iter()
            .find(|v| v.name == "CLASSPULSE_SIM_STUDIOS")
            .unwrap();
        assert_eq!((studios.value.as_str(), studios.is_default), ("3", false));
        let source = shown
            .iter()
            .find(|v| v.name == "CLASSPULSE_SOURCE")
            .unwrap();
        assert!(source.is_default);
        assert_eq!(shown.len(), VARS.len());
    }
}
