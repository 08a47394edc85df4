//! The sections of the configuration besides the sources' ([`super::kafka`],
//! [`super::kinesis`]): where events come from, the lake, the AWS endpoints, the DynamoDB
//! tables, the simulator and the aggregate definitions, each read and checked on its own.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::reader::{parse_lake_url, Reader};
use super::{
    AggregateConfig, AwsEndpoints, ConfigError, DynamoDbConfig, LakeConfig, SimulatorConfig,
    SourceKind,
};

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
        let max_bytes = self.bytes("CLASSPULSE_LAKE_MAX_BYTES", 1 << 10, 5 << 30)?;
        let max_buffer_bytes = self.bytes("CLASSPULSE_LAKE_MAX_BUFFER_BYTES", 1 << 20, 64 << 30)?;
        if max_buffer_bytes < max_bytes {
            return Err(self.error(
                "CLASSPULSE_LAKE_MAX_BUFFER_BYTES",
                format!("must be at least CLASSPULSE_LAKE_MAX_BYTES ({max_bytes} bytes)"),
            ));
        }
        Ok(LakeConfig {
            location,
            s3_endpoint,
            max_events: self.integer("CLASSPULSE_LAKE_MAX_EVENTS", 1, 100_000_000)? as usize,
            max_bytes,
            max_age: self.duration(
                "CLASSPULSE_LAKE_MAX_AGE",
                Duration::from_secs(1),
                Duration::from_secs(24 * 3600),
            )?,
            max_buffer_bytes,
        })
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
            ttl_days: self.integer("CLASSPULSE_DYNAMODB_TTL_DAYS", 0, 36_500)? as u32,
            max_inflight: self.integer("CLASSPULSE_DYNAMODB_MAX_INFLIGHT", 1, 1_000)? as usize,
            pack_window: self.duration(
                "CLASSPULSE_DYNAMODB_PACK_WINDOW",
                Duration::from_secs(1),
                Duration::from_secs(3600),
            )?,
        };
        if dynamodb.events_table.is_some() && dynamodb.events_table == dynamodb.aggregates_table {
            return Err(self.error(
                "CLASSPULSE_DYNAMODB_AGGREGATES_TABLE",
                "must differ from CLASSPULSE_DYNAMODB_EVENTS_TABLE (the tables have different keys)",
            ));
        }
        Ok(dynamodb)
    }

    /// The built-in simulator.
    pub(super) fn simulator(&self) -> Result<SimulatorConfig, ConfigError> {
        Ok(SimulatorConfig {
            studios: self.integer("CLASSPULSE_SIM_STUDIOS", 1, 10_000)? as u32,
            members_per_class: self.integer("CLASSPULSE_SIM_MEMBERS", 1, 200)? as u32,
            class_length: Duration::from_secs(
                60 * self.integer("CLASSPULSE_SIM_CLASS_MINUTES", 1, 24 * 60)?,
            ),
            duration: self.duration(
                "CLASSPULSE_SIM_DURATION",
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            )?,
            speedup: self.parse(
                "CLASSPULSE_SIM_SPEEDUP",
                "expected a number from 0 to 1000000 (0: unpaced)",
                |text| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|n| (0.0..=1_000_000.0).contains(n))
                },
            )?,
            partitions: self.integer("CLASSPULSE_SIM_PARTITIONS", 1, 1024)? as u32,
            seed: match self.optional("CLASSPULSE_SIM_SEED") {
                None => None,
                Some(_) => Some(self.integer("CLASSPULSE_SIM_SEED", 0, u64::MAX)?),
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
            duplicate_rate: self.fraction("CLASSPULSE_SIM_DUPLICATE_RATE")?,
            out_of_order_rate: self.fraction("CLASSPULSE_SIM_OUT_OF_ORDER_RATE")?,
            invalid_rate: self.fraction("CLASSPULSE_SIM_INVALID_RATE")?,
        })
    }

    /// The aggregate definitions' parameters; `max_clock_skew` is shared with the decoder.
    pub(super) fn aggregates(
        &self,
        max_clock_skew: Duration,
    ) -> Result<AggregateConfig, ConfigError> {
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(24 * 3600);
        Ok(AggregateConfig {
            hr_max_bpm: self.parse(
                "CLASSPULSE_HR_MAX_BPM",
                "expected a heart rate from 100 to 250",
                |text| {
                    text.parse::<f64>()
                        .ok()
                        .filter(|n| (100.0..=250.0).contains(n))
                },
            )?,
            hr_max_gap: self.duration("CLASSPULSE_HR_MAX_GAP", Duration::from_secs(1), minute)?,
            watermark_delay: self.duration(
                "CLASSPULSE_WATERMARK_DELAY",
                Duration::ZERO,
                60 * minute,
            )?,
            allowed_lateness: self.duration("CLASSPULSE_ALLOWED_LATENESS", Duration::ZERO, day)?,
            class_idle_timeout: self.duration(
                "CLASSPULSE_CLASS_IDLE_TIMEOUT",
                Duration::from_secs(1),
                day,
            )?,
            flush_interval: self.duration(
                "CLASSPULSE_AGG_FLUSH_INTERVAL",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            checkpoint_interval: self.duration(
                "CLASSPULSE_AGG_CHECKPOINT_INTERVAL",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            max_clock_skew,
        })
    }
}
