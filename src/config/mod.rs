//! Configuration: every setting is a `CLASSPULSE_*` environment variable (ECS tasks are tuned
//! that way), parsed into one typed [`Config`] and validated before anything connects.
//!
//! [`VARS`] is the single list of variables with their defaults; `classpulse config`, the
//! reference in docs/configuration.md (`classpulse config --markdown`, checked by a test) and
//! the parser all read it.
//!
//! Here the typed [`Config`] and [`Config::from_vars`], a list of sections each read on its
//! own: `vars.rs` is the registry, `reader.rs` the typed parsers, `kafka.rs` and `kinesis.rs`
//! the sources' sections, `sections.rs` the rest.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use crate::aggregate::heart::{Formula, ZoneBasis};

mod kafka;
mod kinesis;
mod reader;
mod sections;
mod vars;

pub use kafka::{KafkaConfig, KAFKA_PROP_PREFIX};
pub use kinesis::{KinesisConfig, StartPosition};
pub use reader::{parse_bytes, parse_duration};
pub use vars::{Range, VarSpec, VARS};

use reader::Reader;

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
    /// How long after an hour's end a partition's objects of it are compacted; `None`: never.
    pub compact_after: Option<Duration>,
    /// Key of the erasure list's hashes; `None`: the built-in key.
    pub erasure_key: Option<String>,
    /// How often a task reads the erasure list again.
    pub erasure_refresh: Duration,
}

#[cfg(test)]
impl LakeConfig {
    /// A lake in `directory` whose objects close after a second, compacted `compact_after`
    /// past each hour if given.
    pub(crate) fn in_directory(
        directory: &std::path::Path,
        compact_after: Option<Duration>,
    ) -> LakeConfig {
        LakeConfig {
            location: LakeLocation::Local(directory.to_path_buf()),
            s3_endpoint: None,
            max_events: 1_000_000,
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(1),
            max_buffer_bytes: 256 << 20,
            compact_after,
            erasure_key: None,
            erasure_refresh: Duration::from_secs(60),
        }
    }
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
    /// Maximum heart rate of a member with no better one.
    pub hr_max_bpm: u16,
    /// Age formula for the maximum.
    pub hr_max_formula: Formula,
    /// How long a member's heart rate stays above their maximum to raise it.
    pub hr_max_raise_after: Duration,
    /// Longest time one heart-rate sample counts for.
    pub hr_max_gap: Duration,
    /// Lower bounds of zones 1 to 5, tenths of a percent.
    pub hr_zone_tenths: [u16; 5],
    /// What zones are a share of.
    pub hr_zone_basis: ZoneBasis,
    /// Effort points per minute in zones 1 to 5, hundredths.
    pub effort_hundredths: [u32; 5],
    /// How far a class's watermark trails its newest event.
    pub watermark_delay: Duration,
    /// How far behind the watermark an event may be and still count.
    pub allowed_lateness: Duration,
    /// Idle time after which a class is final.
    pub class_idle_timeout: Duration,
    /// Interval between checkpoints.
    pub checkpoint_interval: Duration,
    /// Interval between writes of live values to the table and local documents; `None`: off.
    pub flush_interval: Option<Duration>,
    /// How far ahead of its arrival an event's time may pull the watermark.
    pub max_clock_skew: Duration,
    /// How long a final class is remembered after its last event.
    pub dedup_horizon: Duration,
    /// Members on each leaderboard.
    pub leaderboard_size: usize,
}

/// The live records of the walls ([`crate::live`]).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The Kafka topic they go to; `None`: not Kafka.
    pub topic: Option<String>,
    /// The Kinesis stream they go to (a name or an ARN); `None`: not Kinesis. At most one of
    /// the two is set; neither: the embedded walls only.
    pub stream: Option<String>,
    /// How often a record of each class that changed is published.
    pub interval: Duration,
    /// Key of the tile ids; `None`: unset (the embedded walls use a fixed one).
    pub tile_key: Option<String>,
    /// Why the tile key cannot publish to a topic (it is unset), for [`LiveConfig::tile_key_for_topic`].
    tile_key_error: Option<ConfigError>,
}

impl LiveConfig {
    /// Whether live records leave the task (a live topic or stream), for screen servers.
    pub fn published(&self) -> bool {
        self.topic.is_some() || self.stream.is_some()
    }

    /// The key tiles are made with when publishing to the live topic or stream: required, as
    /// every task must name a member alike (the screen server, which makes no tiles, needs
    /// none).
    pub fn tile_key_for_topic(&self) -> Result<&str, ConfigError> {
        match (&self.tile_key, &self.tile_key_error) {
            (Some(key), _) => Ok(key),
            (None, Some(error)) => Err(error.clone()),
            (None, None) => unreachable!("an unset tile key has its error"),
        }
    }

    /// The key tiles are made with on the embedded walls.
    pub fn tile_key_or_embedded(&self) -> &str {
        self.tile_key
            .as_deref()
            .unwrap_or("classpulse-embedded-walls")
    }
}

/// The screen server ([`crate::screens`]), and the walls of the embedded default.
#[derive(Debug, Clone)]
pub struct ScreensConfig {
    /// Key of the wall tokens; `None`: no token, on loopback only.
    pub key: Option<String>,
    /// How far back the live topic or stream is read at start.
    pub lookback: Duration,
    /// How long a final class stays on a wall.
    pub keep_final: Duration,
    /// Walls streamed at once.
    pub max_clients: usize,
}

/// Where member profiles come from ([`crate::profile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersConfig {
    /// NDJSON profiles; `None` with the simulator: its own members.
    pub file: Option<PathBuf>,
    /// The DynamoDB table the studios' member system writes.
    pub table: Option<String>,
    /// How long a profile read from the table is used.
    pub cache_ttl: Duration,
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
    /// Member profiles.
    pub members: MembersConfig,
    /// Live records.
    pub live: LiveConfig,
    /// Walls.
    pub screens: ScreensConfig,
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

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect())
    }

    /// Parses and validates `env` (only `CLASSPULSE_*` names are looked at). Pure: connects
    /// to nothing.
    pub fn from_vars(env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        vars::refuse_unknown(env)?;
        let read = Reader { env };
        let source = read.source()?;
        let kafka = read.kafka(source == SourceKind::Kafka)?;
        let kinesis = read.kinesis(source == SourceKind::Kinesis)?;
        let lake = read.lake()?;
        let aws = read.aws_endpoints()?;
        let dynamodb = read.dynamodb()?;
        let simulator = read.simulator()?;
        let max_clock_skew = read.duration("CLASSPULSE_MAX_CLOCK_SKEW")?;
        let live = read.live(&kafka, &kinesis)?;
        let aggregates = read.aggregates(max_clock_skew, live.published())?;
        let members = read.members(&dynamodb)?;
        let screens = read.screens()?;
        Ok(Config {
            members,
            live,
            screens,
            source,
            kafka,
            kinesis,
            lake,
            aws,
            dynamodb,
            aggregates,
            batch_max_events: read.integer("CLASSPULSE_BATCH_MAX_EVENTS")? as usize,
            channel_capacity: read.integer("CLASSPULSE_CHANNEL_CAPACITY")? as usize,
            max_message_bytes: read.bytes("CLASSPULSE_MAX_MESSAGE_BYTES")?,
            max_clock_skew,
            commit_interval: read.duration("CLASSPULSE_COMMIT_INTERVAL")?,
            shutdown_timeout: read.duration("CLASSPULSE_SHUTDOWN_TIMEOUT")?,
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
            progress_interval: read.duration("CLASSPULSE_PROGRESS_INTERVAL")?,
            emf_interval: read.duration("CLASSPULSE_EMF_INTERVAL")?,
            simulator,
        })
    }
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
    let mut table = String::from("| Variable | Default | Allowed | Meaning |\n|---|---|---|---|\n");
    for spec in VARS {
        let default = if spec.default.is_empty() {
            "(unset)".to_owned()
        } else {
            format!("`{}`", spec.default)
        };
        let allowed = spec.range.describe().unwrap_or_default();
        table.push_str(&format!(
            "| `{}` | {default} | {allowed} | {} |\n",
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
    use super::reader::parse_lake_url;
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
    fn a_live_stream_is_a_stream_of_its_own_instead_of_a_topic() {
        let config = Config::from_vars(&env(&[("CLASSPULSE_LIVE_STREAM", "studio-live")])).unwrap();
        assert_eq!(config.live.stream.as_deref(), Some("studio-live"));
        assert!(config.live.published());
        assert!(
            config.live.tile_key_for_topic().is_err(),
            "a tile key is required"
        );
        assert_eq!(
            config.aggregates.flush_interval, None,
            "the walls read the stream"
        );
        let arn = "arn:aws:kinesis:us-east-1:123456789012:stream/studio-live";
        assert!(Config::from_vars(&env(&[("CLASSPULSE_LIVE_STREAM", arn)])).is_ok());
        for (pairs, says) in [
            (
                &[
                    ("CLASSPULSE_LIVE_STREAM", "studio-live"),
                    ("CLASSPULSE_LIVE_TOPIC", "studio-live"),
                    ("CLASSPULSE_KAFKA_BROKERS", "127.0.0.1:9092"),
                ][..],
                "not both",
            ),
            (
                &[
                    ("CLASSPULSE_SOURCE", "kinesis"),
                    ("CLASSPULSE_KINESIS_STREAM", "studio-events"),
                    (
                        "CLASSPULSE_LIVE_STREAM",
                        "arn:aws:kinesis:us-east-1:123456789012:stream/studio-events",
                    ),
                ][..],
                "must differ from CLASSPULSE_KINESIS_STREAM",
            ),
            (
                &[("CLASSPULSE_LIVE_STREAM", "studio/live")][..],
                "a stream name",
            ),
        ] {
            let error = Config::from_vars(&env(pairs)).unwrap_err();
            assert_eq!(error.variable, "CLASSPULSE_LIVE_STREAM");
            assert!(error.to_string().contains(says), "{error}");
        }
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
        let free_text = [
            "CLASSPULSE_LOG_LEVEL",
            "CLASSPULSE_KAFKA_GROUP_ID",
            "CLASSPULSE_MEMBERS_FILE",
            "CLASSPULSE_LIVE_TILE_KEY",
            "CLASSPULSE_SCREENS_KEY",
            "CLASSPULSE_ERASURE_KEY",
        ];
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
