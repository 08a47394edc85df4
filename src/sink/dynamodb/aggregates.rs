//! The aggregates table: the results [`crate::aggregate`] computes, for studios' apps and
//! dashboards.
//!
//! ```text
//! pk  {studio_id}#{class_id}
//! sk  live                       while the class runs: summary + members, every
//!                                CLASSPULSE_AGG_FLUSH_INTERVAL if changed; final values at the end
//!     summary                    the final class summary (leaderboards included)
//!     member#{member_id}         a member's final summary in the class
//!     minute#{YYYY-MM-DDTHH:MMZ} a final class minute window
//!
//! pk  member#{member_id}
//! sk  hr_max_observed            the highest maximum heart rate a class of the member raised
//!                                ([`crate::aggregate::heart`]), read with their profile
//! ```
//!
//! Every item holds the record's fields as DynamoDB types, plus `src` (the source partition),
//! `version` (the class's last counted position times two, plus one when final) and `ttl`.
//! Each is written with a conditional PutItem that refuses to go backwards:
//! `attribute_not_exists(pk) OR src <> :src OR version <= :version`. A replay, a restored
//! checkpoint writing its outbox again, or a stale owner after a rebalance can rewrite the same
//! values but never older ones; equal versions hold equal values, since a result is a function
//! of the events counted. Versions are comparable within one partition: a class that moves to
//! another partition (partitions added) starts over there. An observed maximum is written
//! under `attribute_not_exists(pk) OR hr_max_observed < :bpm`: it only ever rises.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use serde::Serialize;

use super::{
    ttl_seconds, Condition, Conditional, Item, TableWriter, PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE,
};
use crate::aggregate::output::{ClassMinute, ClassResult, ClassSummary, MemberSummary};
use crate::metrics;
use crate::profile::source::{observed_key, OBSERVED_SORT_KEY};

/// Health component and metric label.
pub const NAME: &str = "aggregates_table";

/// Writes class results, never going backwards.
#[derive(Clone)]
pub struct AggregatesTable {
    writer: TableWriter,
    ttl_days: u32,
}

/// The coalesced live item's body.
#[derive(Serialize)]
struct Live<'a> {
    summary: &'a ClassSummary,
    members: &'a [MemberSummary],
}

/// What a round of writes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Items written.
    pub written: usize,
    /// Items refused: the table held them as new or newer.
    pub refused: usize,
    /// Items DynamoDB refused as invalid (logged and counted; the lake holds the result).
    pub invalid: usize,
}

impl Written {
    fn add(&mut self, other: Written) {
        self.written += other.written;
        self.refused += other.refused;
        self.invalid += other.invalid;
    }
}

impl AggregatesTable {
    /// Results go through `writer`.
    pub fn new(writer: TableWriter, ttl_days: u32) -> AggregatesTable {
        AggregatesTable { writer, ttl_days }
    }

    /// The live item of each class.
    pub async fn write_live(&self, results: &[ClassResult]) -> Written {
        let items = results
            .iter()
            .filter_map(|result| self.live_item(result))
            .collect();
        self.write(items).await
    }

    /// Everything of a final class: its live item (now final), summary, members and minutes.
    pub async fn write_final(&self, results: &[ClassResult]) -> Written {
        let mut items = Vec::new();
        for result in results {
            items.extend(self.live_item(result));
            let summary = &result.summary;
            items.extend(self.item(summary, "summary".to_owned(), summary));
            for member in &result.members {
                items.extend(self.item(summary, format!("member#{}", member.member_id), member));
            }
            for minute in &result.minutes {
                items.extend(self.item(summary, minute_key(minute), minute));
            }
        }
        let mut written = self.write(items).await;
        for result in results {
            written.add(self.write_observed(result).await);
        }
        written
    }

    /// The maximums `result`'s class raised, each in the member's own item, never lowering a
    /// value written meanwhile (by another class of the member, or a replay).
    async fn write_observed(&self, result: &ClassResult) -> Written {
        let mut written = Written::default();
        for member in &result.members {
            let Some(bpm) = member.hr_max_observed else {
                continue;
            };
            let value = AttributeValue::N(bpm.to_string());
            let item: Item = HashMap::from([
                (
                    PARTITION_KEY.to_owned(),
                    AttributeValue::S(observed_key(&member.member_id)),
                ),
                (
                    SORT_KEY.to_owned(),
                    AttributeValue::S(OBSERVED_SORT_KEY.to_owned()),
                ),
                (OBSERVED_SORT_KEY.to_owned(), value.clone()),
                (
                    "studio_id".to_owned(),
                    AttributeValue::S(member.studio_id.to_string()),
                ),
                (
                    "class_id".to_owned(),
                    AttributeValue::S(member.class_id.to_string()),
                ),
            ]);
            let condition = Condition {
                expression: "attribute_not_exists(#pk) OR #bpm < :bpm".to_owned(),
                names: HashMap::from([
                    ("#pk".to_owned(), PARTITION_KEY.to_owned()),
                    ("#bpm".to_owned(), OBSERVED_SORT_KEY.to_owned()),
                ]),
                values: HashMap::from([(":bpm".to_owned(), value)]),
            };
            match self.writer.put_if(item, &condition).await {
                Ok(Conditional::Written) => {
                    metrics::record_hr_max_observed("raised");
                    written.written += 1;
                }
                Ok(Conditional::Refused) => {
                    metrics::record_hr_max_observed("kept");
                    written.refused += 1;
                }
                Err(_) => written.invalid += 1,
            }
        }
        written
    }

    fn live_item(&self, result: &ClassResult) -> Option<(Item, Condition)> {
        let live = Live {
            summary: &result.summary,
            members: &result.members,
        };
        self.item(&result.summary, "live".to_owned(), &live)
    }

    /// One item of `summary`'s class under `sort_key`, with its condition.
    fn item(
        &self,
        summary: &ClassSummary,
        sort_key: String,
        record: &impl Serialize,
    ) -> Option<(Item, Condition)> {
        let mut item: Item = match serde_dynamo::aws_sdk_dynamodb_1::to_item(record) {
            Ok(item) => item,
            Err(error) => {
                tracing::error!(class = %summary.class_id, error = %error, "aggregate item not encoded");
                return None;
            }
        };
        let version = summary.positions.last_offset.saturating_mul(2) + u64::from(summary.is_final);
        let src = AttributeValue::S(summary.positions.partition.clone());
        let version = AttributeValue::N(version.to_string());
        item.insert(
            PARTITION_KEY.to_owned(),
            AttributeValue::S(format!("{}#{}", summary.studio_id, summary.class_id)),
        );
        item.insert(SORT_KEY.to_owned(), AttributeValue::S(sort_key));
        item.insert("src".to_owned(), src.clone());
        item.insert("final".to_owned(), AttributeValue::Bool(summary.is_final));
        item.insert("version".to_owned(), version.clone());
        if let Some(ttl) = ttl_seconds(summary.first_event_ms, self.ttl_days) {
            item.insert(TTL_ATTRIBUTE.to_owned(), AttributeValue::N(ttl.to_string()));
        }
        let condition = Condition {
            expression: "attribute_not_exists(#pk) OR #src <> :src OR #version <= :version"
                .to_owned(),
            names: HashMap::from([
                ("#pk".to_owned(), PARTITION_KEY.to_owned()),
                ("#src".to_owned(), "src".to_owned()),
                ("#version".to_owned(), "version".to_owned()),
            ]),
            values: HashMap::from([(":src".to_owned(), src), (":version".to_owned(), version)]),
        };
        Some((item, condition))
    }

    /// Puts every item under its condition, calls in flight up to the writer's limit.
    async fn write(&self, items: Vec<(Item, Condition)>) -> Written {
        let limit = self.writer.max_inflight();
        let outcomes: Vec<_> = futures::stream::iter(items)
            .map(|(item, condition)| {
                let writer = self.writer.clone();
                async move { writer.put_if(item, &condition).await }
            })
            .buffer_unordered(limit)
            .collect()
            .await;
        let mut written = Written::default();
        for outcome in outcomes {
            match outcome {
                Ok(Conditional::Written) => written.written += 1,
                Ok(Conditional::Refused) => written.refused += 1,
                Err(_) => written.invalid += 1,
            }
        }
        written
    }
}

fn minute_key(minute: &ClassMinute) -> String {
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(minute.minute_start_ms)
        .unwrap_or_default();
    format!("minute#{}", time.format("%Y-%m-%dT%H:%MZ"))
}
