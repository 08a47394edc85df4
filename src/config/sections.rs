//! The sections of the configuration besides the sources' ([`super::kafka`],
//! [`super::kinesis`]): where events come from, the lake, the AWS endpoints, the DynamoDB
//! tables, member profiles, the simulator and the aggregate definitions, each read and checked
//! on its own.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::reader::{parse_lake_url, Reader};
use super::{
    AggregateConfig, AwsEndpoints, ConfigError, DynamoDbConfig, KafkaConfig, KinesisConfig,
    LakeConfig, LiveConfig, MembersConfig, ScreensConfig, SimulatorConfig, SourceKind,
};
use crate::aggregate::heart::{Formula, ZoneBasis};

impl Reader<'_> {
    /// `CLASSPULSE_SOURCE`.
    pub(super) fn source(&self) -> Result<SourceKind, ConfigError> {
        self.parse(
            "CLASSPULSE_SOURCE",
            "expected simulator, kafka or kinesis",
            |text| match text {
                "simulator" => Some(SourceKind::Simulator),
                "kafka" => Some(SourceKind::Kafka),
                "kinesis" => Some(SourceKind::Kinesis),
                _ => None,
            },
        )
    }

    /// The lake: where it lives and how its objects are cut. The buffer must hold one object.
    pub(super) fn lake(&self) -> Result<LakeConfig, ConfigError> {
        let location = self.parse(
            "CLASSPULSE_LAKE_URL",
            "expected file://DIR or s3://bucket/prefix",
            parse_lake_url,
        )?;
        let s3_endpoint = self.endpoint("CLASSPULSE_S3_ENDPOINT")?;
        let max_bytes = self.bytes("CLASSPULSE_LAKE_MAX_BYTES")?;
        let max_buffer_bytes = self.bytes("CLASSPULSE_LAKE_MAX_BUFFER_BYTES")?;
        if max_buffer_bytes < max_bytes {
            return Err(self.error(
                "CLASSPULSE_LAKE_MAX_BUFFER_BYTES",
                format!("must be at least CLASSPULSE_LAKE_MAX_BYTES ({max_bytes} bytes)"),
            ));
        }
        Ok(LakeConfig {
            location,
            s3_endpoint,
            max_events: self.integer("CLASSPULSE_LAKE_MAX_EVENTS")? as usize,
            max_bytes,
            max_age: self.duration("CLASSPULSE_LAKE_MAX_AGE")?,
            max_buffer_bytes,
            compact_after: self.compact_after()?,
            erasure_key: self.erasure_key()?,
            erasure_refresh: self.duration("CLASSPULSE_ERASURE_REFRESH")?,
        })
    }

    /// `CLASSPULSE_ERASURE_KEY`: at least 16 characters, if set.
    fn erasure_key(&self) -> Result<Option<String>, ConfigError> {
        let key = self.optional("CLASSPULSE_ERASURE_KEY").map(str::to_owned);
        if key.as_ref().is_some_and(|key| key.len() < 16) {
            return Err(self.error(
                "CLASSPULSE_ERASURE_KEY",
                "at least 16 characters, the same for every task and erase run",
            ));
        }
        Ok(key)
    }

    /// `CLASSPULSE_LAKE_COMPACT_AFTER`: a duration or `off`.
    fn compact_after(&self) -> Result<Option<Duration>, ConfigError> {
        let name = "CLASSPULSE_LAKE_COMPACT_AFTER";
        match self.optional(name) {
            None => Ok(Some(Duration::from_secs(600))),
            Some("off") => Ok(None),
            Some(_) => self
                .parse(
                    name,
                    "expected off, or a duration such as 30s, 10m or 1h, from 1s to 24h",
                    |text| {
                        super::parse_duration(text).filter(|d| {
                            (Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(d)
                        })
                    },
                )
                .map(Some),
        }
    }

    /// Endpoint overrides of the AWS services besides S3.
    pub(super) fn aws_endpoints(&self) -> Result<AwsEndpoints, ConfigError> {
        Ok(AwsEndpoints {
            dynamodb: self.endpoint("CLASSPULSE_DYNAMODB_ENDPOINT")?,
            kinesis: self.endpoint("CLASSPULSE_KINESIS_ENDPOINT")?,
        })
    }

    /// The DynamoDB tables; the two must differ.
    pub(super) fn dynamodb(&self) -> Result<DynamoDbConfig, ConfigError> {
        let dynamodb = DynamoDbConfig {
            events_table: self.table_name("CLASSPULSE_DYNAMODB_EVENTS_TABLE")?,
            aggregates_table: self.table_name("CLASSPULSE_DYNAMODB_AGGREGATES_TABLE")?,
            ttl_days: self.integer("CLASSPULSE_DYNAMODB_TTL_DAYS")? as u32,
            max_inflight: self.integer("CLASSPULSE_DYNAMODB_MAX_INFLIGHT")? as usize,
            pack_window: self.duration("CLASSPULSE_DYNAMODB_PACK_WINDOW")?,
        };
        if dynamodb.events_table.is_some() && dynamodb.events_table == dynamodb.aggregates_table {
            return Err(self.error(
                "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE",
                "must differ from CLASSPULSE_DYNAMODB_EVENTS_TABLE (the tables have different keys)",
            ));
        }
        Ok(dynamodb)
    }

    /// Where member profiles come from.
    pub(super) fn members(&self, dynamodb: &DynamoDbConfig) -> Result<MembersConfig, ConfigError> {
        let table = self.table_name("CLASSPULSE_DYNAMODB_MEMBERS_TABLE")?;
        if table.is_some() && (table == dynamodb.events_table || table == dynamodb.aggregates_table)
        {
            return Err(self.error(
                "CLASSPULSE_DYNAMODB_MEMBERS_TABLE",
                "must differ from the events and aggregates tables (the member system writes it)",
            ));
        }
        Ok(MembersConfig {
            file: self.optional("CLASSPULSE_MEMBERS_FILE").map(PathBuf::from),
            table,
            cache_ttl: self.duration("CLASSPULSE_MEMBERS_CACHE_TTL")?,
        })
    }

    /// The live records: a topic needs brokers, a stream must not be the source's, and either
    /// needs a tile key.
    pub(super) fn live(
        &self,
        kafka: &KafkaConfig,
        kinesis: &KinesisConfig,
    ) -> Result<LiveConfig, ConfigError> {
        let topic = self.optional("CLASSPULSE_LIVE_TOPIC").map(str::to_owned);
        if let Some(topic) = &topic {
            let valid = topic.len() <= 249
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(self.error(
                    "CLASSPULSE_LIVE_TOPIC",
                    "a topic name ([A-Za-z0-9._-], at most 249 characters)",
                ));
            }
            if kafka.brokers.is_empty() {
                return Err(self.error(
                    "CLASSPULSE_LIVE_TOPIC",
                    "needs CLASSPULSE_KAFKA_BROKERS (the brokers the live topic is on)",
                ));
            }
        }
        let stream = self.optional("CLASSPULSE_LIVE_STREAM").map(str::to_owned);
        if let Some(stream) = &stream {
            if topic.is_some() {
                return Err(self.error(
                    "CLASSPULSE_LIVE_STREAM",
                    "set CLASSPULSE_LIVE_TOPIC or CLASSPULSE_LIVE_STREAM, not both",
                ));
            }
            if !super::kinesis::valid_stream(stream) {
                return Err(self.error(
                    "CLASSPULSE_LIVE_STREAM",
                    "a stream name (1 to 128 of [A-Za-z0-9_.-]) or arn:aws:kinesis:REGION:ACCOUNT:stream/NAME",
                ));
            }
            let name = |s: &str| s.rsplit_once(":stream/").map_or(s, |(_, n)| n).to_owned();
            if !kinesis.stream.is_empty() && name(stream) == name(&kinesis.stream) {
                return Err(self.error(
                    "CLASSPULSE_LIVE_STREAM",
                    "must differ from CLASSPULSE_KINESIS_STREAM (the source is never written to)",
                ));
            }
        }
        let tile_key = self.optional("CLASSPULSE_LIVE_TILE_KEY").map(str::to_owned);
        let tile_key_error = tile_key
            .as_ref()
            .is_none_or(|key| key.len() < 16)
            .then(|| {
                self.error(
                    "CLASSPULSE_LIVE_TILE_KEY",
                    "at least 16 characters, the same in every task (required with CLASSPULSE_LIVE_TOPIC or CLASSPULSE_LIVE_STREAM)",
                )
            });
        if tile_key.is_some() {
            if let Some(error) = tile_key_error {
                return Err(error);
            }
        }
        Ok(LiveConfig {
            topic,
            stream,
            interval: self.duration("CLASSPULSE_LIVE_INTERVAL")?,
            tile_key,
            tile_key_error,
        })
    }

    /// `CLASSPULSE_AGG_FLUSH_INTERVAL`: a duration or `off`; unset: 5 s, off with a live topic.
    pub(super) fn flush_interval(&self, live_topic: bool) -> Result<Option<Duration>, ConfigError> {
        let name = "CLASSPULSE_AGG_FLUSH_INTERVAL";
        match self.optional(name) {
            None if live_topic => Ok(None),
            None => Ok(Some(Duration::from_secs(5))),
            Some("off") => Ok(None),
            Some(_) => self
                .parse(
                    name,
                    "expected off, or a duration such as 500ms, 5s or 1m, from 100ms to 1h",
                    |text| {
                        super::parse_duration(text).filter(|d| {
                            (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d)
                        })
                    },
                )
                .map(Some),
        }
    }

    /// The walls: a key of at least 16 characters, if any.
    pub(super) fn screens(&self) -> Result<ScreensConfig, ConfigError> {
        let key = self.optional("CLASSPULSE_SCREENS_KEY").map(str::to_owned);
        if key.as_ref().is_some_and(|key| key.len() < 16) {
            return Err(self.error("CLASSPULSE_SCREENS_KEY", "at least 16 characters"));
        }
        Ok(ScreensConfig {
            key,
            lookback: self.duration("CLASSPULSE_SCREENS_LOOKBACK")?,
            keep_final: self.duration("CLASSPULSE_SCREENS_KEEP_FINAL")?,
            max_clients: self.integer("CLASSPULSE_SCREENS_MAX_CLIENTS")? as usize,
        })
    }

    /// The built-in simulator.
    pub(super) fn simulator(&self) -> Result<SimulatorConfig, ConfigError> {
        Ok(SimulatorConfig {
            studios: self.integer("CLASSPULSE_SIM_STUDIOS")? as u32,
            members_per_class: self.integer("CLASSPULSE_SIM_MEMBERS")? as u32,
            class_length: Duration::from_secs(60 * self.integer("CLASSPULSE_SIM_CLASS_MINUTES")?),
            duration: self.duration("CLASSPULSE_SIM_DURATION")?,
            speedup: self.parse(
                "CLASSPULSE_SIM_SPEEDUP",
                "expected a number from 0 to 1000000 (0: unpaced)",
                |text| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|n| (0.0..=1_000_000.0).contains(n))
                },
            )?,
            partitions: self.integer("CLASSPULSE_SIM_PARTITIONS")? as u32,
            seed: match self.optional("CLASSPULSE_SIM_SEED") {
                None => None,
                Some(_) => Some(self.integer("CLASSPULSE_SIM_SEED")?),
            },
            start: match self.optional("CLASSPULSE_SIM_START") {
                None => None,
                Some(_) => Some(self.parse(
                    "CLASSPULSE_SIM_START",
                    "expected RFC 3339, e.g. 2026-11-25T17:00:00Z",
                    |text| {
                        DateTime::parse_from_rfc3339(text)
                            .ok()
                            .map(|time| time.with_timezone(&Utc))
                    },
                )?),
            },
            duplicate_rate: self.number("CLASSPULSE_SIM_DUPLICATE_RATE")?,
            out_of_order_rate: self.number("CLASSPULSE_SIM_OUT_OF_ORDER_RATE")?,
            invalid_rate: self.number("CLASSPULSE_SIM_INVALID_RATE")?,
        })
    }

    /// The aggregate definitions' parameters; `max_clock_skew` is shared with the decoder, and
    /// live values are written to the table by default unless a live topic carries them.
    pub(super) fn aggregates(
        &self,
        max_clock_skew: Duration,
        live_topic: bool,
    ) -> Result<AggregateConfig, ConfigError> {
        Ok(AggregateConfig {
            hr_max_bpm: self.integer("CLASSPULSE_HR_MAX_BPM")? as u16,
            hr_max_formula: self.parse(
                "CLASSPULSE_HR_MAX_FORMULA",
                &format!("expected {}", Formula::NAMES),
                Formula::from_name,
            )?,
            hr_max_raise_after: self.duration("CLASSPULSE_HR_MAX_RAISE_AFTER")?,
            hr_max_gap: self.duration("CLASSPULSE_HR_MAX_GAP")?,
            hr_zone_tenths: self.parse(
                "CLASSPULSE_HR_ZONES",
                "expected 5 ascending percents from 1 to 100, to 0.1, such as 50,60,70,80,90",
                |text| {
                    let tenths = fixed_points::<5>(text, 10)?.map(|n| n as u16);
                    let ascending = tenths.windows(2).all(|pair| pair[0] < pair[1]);
                    (ascending && tenths[0] >= 10 && tenths[4] <= 1000).then_some(tenths)
                },
            )?,
            hr_zone_basis: self.parse(
                "CLASSPULSE_HR_ZONE_BASIS",
                "expected max or reserve",
                |text| match text {
                    "max" => Some(ZoneBasis::Max),
                    "reserve" => Some(ZoneBasis::Reserve),
                    _ => None,
                },
            )?,
            effort_hundredths: self.parse(
                "CLASSPULSE_EFFORT_WEIGHTS",
                "expected 5 points per minute from 0 to 100, to 0.01, such as 0,0,0,1,2",
                |text| {
                    let weights = fixed_points::<5>(text, 100)?;
                    weights.iter().all(|w| *w <= 10_000).then_some(weights)
                },
            )?,
            watermark_delay: self.duration("CLASSPULSE_WATERMARK_DELAY")?,
            allowed_lateness: self.duration("CLASSPULSE_ALLOWED_LATENESS")?,
            class_idle_timeout: self.duration("CLASSPULSE_CLASS_IDLE_TIMEOUT")?,
            flush_interval: self.flush_interval(live_topic)?,
            checkpoint_interval: self.duration("CLASSPULSE_AGG_CHECKPOINT_INTERVAL")?,
            max_clock_skew,
            dedup_horizon: self.duration("CLASSPULSE_DEDUP_HORIZON")?,
            leaderboard_size: self.integer("CLASSPULSE_LEADERBOARD_SIZE")? as usize,
        })
    }
}

/// `N` comma-separated non-negative decimals with at most as many decimals as `scale` allows
/// (10: one, 100: two), each as a whole number of `1/scale`.
fn fixed_points<const N: usize>(text: &str, scale: u32) -> Option<[u32; N]> {
    let digits = scale.ilog10() as usize;
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    if parts.len() != N {
        return None;
    }
    let mut values = [0u32; N];
    for (value, part) in values.iter_mut().zip(parts) {
        let (whole, fraction) = part.split_once('.').unwrap_or((part, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty()
            || whole.len() > 6
            || fraction.len() > digits
            || !all_digits(whole)
            || !all_digits(fraction)
        {
            return None;
        }
        let fraction = format!("{fraction:0<digits$}");
        *value = whole.parse::<u32>().ok()? * scale + fraction.parse::<u32>().unwrap_or(0);
    }
    Some(values)
}
