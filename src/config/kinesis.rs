//! The Kinesis source's section: the stream, the lease table and the start of new shards.

use std::time::Duration;

use chrono::DateTime;

use super::reader::Reader;
use super::ConfigError;

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

/// A Kinesis name: 1 to 128 of `[A-Za-z0-9_.-]`.
fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A stream name, or a stream ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
pub(super) fn valid_stream(stream: &str) -> bool {
    if let Some(rest) = stream.strip_prefix("arn:") {
        rest.contains(":kinesis:")
            && rest
                .rsplit_once(":stream/")
                .is_some_and(|(_, name)| valid_name(name))
    } else {
        valid_name(stream)
    }
}

impl Reader<'_> {
    /// Kinesis settings; the stream is required when `required`.
    pub(super) fn kinesis(&self, required: bool) -> Result<KinesisConfig, ConfigError> {
        let stream = self.raw("CLASSPULSE_KINESIS_STREAM").trim().to_owned();
        if (required || !stream.is_empty()) && !valid_stream(&stream) {
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
            lease_duration: self.duration("CLASSPULSE_KINESIS_LEASE_DURATION")?,
            shard_sync_interval: self.duration("CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL")?,
            poll_interval: self.duration("CLASSPULSE_KINESIS_POLL_INTERVAL")?,
            max_records: self.integer("CLASSPULSE_KINESIS_MAX_RECORDS")? as usize,
            efo_consumer: efo.then_some(consumer_name),
        })
    }
}
