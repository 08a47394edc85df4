//! DynamoDB: the events table (packed raw events, [`events`]) and the aggregates table (live
//! and final class results, [`aggregates`]), both written through one [`TableWriter`].
//!
//! The writer owns what every DynamoDB sink gets wrong at least once:
//!
//! - `UnprocessedItems` are retried (exponential backoff, full jitter) until written; an item
//!   is never reported written because the call succeeded;
//! - throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`,
//!   `RequestLimitExceeded`, and UnprocessedItems, which is how BatchWriteItem throttles)
//!   halves the calls allowed in flight; each call that goes through raises it again by a
//!   little (AIMD, as Vector's adaptive concurrency). The SDK's own retries are off, so the
//!   limiter sees every throttle;
//! - errors that cannot succeed (`ResourceNotFoundException`, `AccessDeniedException`, bad
//!   credentials) mark the table not ready on `/readyz`, naming it, and are retried slowly:
//!   nothing is acknowledged, so nothing is committed, until an operator fixes it;
//! - a `ValidationException` is narrowed down (by halves) to the item that causes it, which is
//!   returned to the caller (the events sink dead-letters its events) while the rest are
//!   written.
//!
//! A call's keys are unique (duplicates are merged, the last one wins), and the callers never
//! have two writes of one key in flight, so a late retry cannot overwrite a newer version.

pub mod aggregates;
pub mod events;
pub mod tables;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, ReturnConsumedCapacity, WriteRequest};
use futures::StreamExt;
use tokio::sync::Notify;

use crate::aws::{classify, Failure};
use crate::health::Health;
use crate::metrics;
use crate::retry::Backoff;

/// One item: attribute name to value.
pub type Item = HashMap<String, AttributeValue>;

/// Partition key attribute of both tables.
pub const PARTITION_KEY: &str = "pk";
/// Sort key attribute of both tables.
pub const SORT_KEY: &str = "sk";
/// Time-to-live attribute (epoch seconds) of both tables.
pub const TTL_ATTRIBUTE: &str = "ttl";
/// Items per BatchWriteItem call (the API's limit).
pub const BATCH_LIMIT: usize = 25;
/// DynamoDB's item size limit (names and values).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Additive-increase, multiplicative-decrease limit on calls in flight.
#[derive(Debug)]
pub struct Aimd {
    /// Most calls ever allowed (`CLASSPULSE_DYNAMODB_MAX_INFLIGHT`).
    max: usize,
    state: Mutex<AimdState>,
    /// Wakes callers waiting for a slot.
    freed: Notify,
    /// Metric label.
    table: String,
}

#[derive(Debug)]
struct AimdState {
    /// Calls allowed now; fractional so increases are gradual.
    limit: f64,
    in_flight: usize,
    /// Throttles within one round trip of a decrease belong to the same congestion: one halving.
    last_decrease: Option<tokio::time::Instant>,
}

/// A slot in flight; frees it when dropped.
pub struct Slot<'a>(&'a Aimd);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        drop(state);
        self.0.freed.notify_waiters();
    }
}

impl Aimd {
    /// Starts at `max` calls in flight.
    pub fn new(max: usize, table: &str) -> Aimd {
        let max = max.max(1);
        metrics::set_dynamodb_concurrency(table, max);
        Aimd {
            max,
            state: Mutex::new(AimdState {
                limit: max as f64,
                in_flight: 0,
                last_decrease: None,
            }),
            freed: Notify::new(),
            table: table.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AimdState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot.
    pub async fn acquire(&self) -> Slot<'_> {
        loop {
            let freed = self.freed.notified();
            {
                let mut state = self.lock();
                if (state.in_flight as f64) < state.limit.floor().max(1.0) {
                    state.in_flight += 1;
                    return Slot(self);
                }
            }
            freed.await;
        }
    }

    /// Calls allowed now.
    pub fn limit(&self) -> usize {
        self.lock().limit.floor().max(1.0) as usize
    }

    /// A call went through unthrottled: one more slot per round of calls.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        let before = state.limit.floor();
        state.limit = (state.limit + 1.0 / state.limit).min(self.max as f64);
        if state.limit.floor() > before {
            metrics::set_dynamodb_concurrency(&self.table, state.limit.floor() as usize);
            drop(state);
            self.freed.notify_waiters();
        }
    }

    /// A call was throttled: halve the limit (once per round trip).
    pub fn throttled(&self, round_trip: Duration) {
        let mut state = self.lock();
        let now = tokio::time::Instant::now();
        if state
            .last_decrease
            .is_some_and(|at| now.duration_since(at) < round_trip)
        {
            return;
        }
        state.last_decrease = Some(now);
        state.limit = (state.limit / 2.0).max(1.0);
        metrics::set_dynamodb_concurrency(&self.table, state.limit.floor() as usize);
    }
}

/// Outcome of a conditional put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    /// The item was written.
    Written,
    /// The condition failed: the table already holds something as new or newer.
    Refused,
}

/// A condition on a put: `expression` with its names and values.
#[derive(Debug, Clone, Default)]
pub struct Condition {
    /// The `ConditionExpression`.
    pub expression: String,
    /// `#name` placeholders.
    pub names: HashMap<String, String>,
    /// `:value` placeholders.
    pub values: HashMap<String, AttributeValue>,
}

/// Writes items to one table, retrying until they are written.
#[derive(Clone)]
pub struct TableWriter {
    inner: Arc<Inner>,
}

struct Inner {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// Health component (`events_table` or `aggregates_table`).
    component: &'static str,
    health: Health,
    limiter: Aimd,
    totals: Totals,
}

/// What a writer has done so far, for the run summary and benchmarks.
#[derive(Debug, Default)]
pub struct Totals {
    /// Items accepted.
    pub items: AtomicU64,
    /// Write capacity units consumed, in thousandths.
    pub milli_units: AtomicU64,
    /// Conditional writes refused as not newer.
    pub refused: AtomicU64,
    /// Write units by AWS's sizing rules ([`write_units`]) of the items accepted: what DynamoDB
    /// bills. DynamoDB Local's own figure differs (it sizes binary values differently).
    pub sized_units: AtomicU64,
}

impl Totals {
    /// Write capacity units consumed.
    pub fn write_units(&self) -> f64 {
        self.milli_units.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Write units of the items accepted, by AWS's sizing rules.
    pub fn sized_units(&self) -> u64 {
        self.sized_units.load(Ordering::Relaxed)
    }

    /// Items accepted.
    pub fn items(&self) -> u64 {
        self.items.load(Ordering::Relaxed)
    }

    fn add(&self, items: usize, units: f64) {
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.milli_units
            .fetch_add((units * 1000.0).round() as u64, Ordering::Relaxed);
    }
}

/// An item DynamoDB refused as invalid, and why.
#[derive(Debug, Clone)]
pub struct RejectedItem {
    /// The item.
    pub item: Item,
    /// DynamoDB's reason.
    pub reason: String,
}

impl TableWriter {
    /// A writer for `table`, reporting health as `component`. `client` should have the SDK's
    /// retries off (see [`crate::aws::Retries`]): this writer retries itself.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: &str,
        component: &'static str,
        max_inflight: usize,
        health: Health,
    ) -> TableWriter {
        health.ready(component);
        TableWriter {
            inner: Arc::new(Inner {
                client,
                table: table.to_owned(),
                component,
                health,
                limiter: Aimd::new(max_inflight, table),
                totals: Totals::default(),
            }),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// What this writer has written so far.
    pub fn totals(&self) -> &Totals {
        &self.inner.totals
    }

    /// The most calls in flight (`CLASSPULSE_DYNAMODB_MAX_INFLIGHT`).
    pub fn max_inflight(&self) -> usize {
        self.inner.limiter.max
    }

    /// The adaptive limit on calls in flight.
    pub fn concurrency(&self) -> usize {
        self.inner.limiter.limit()
    }

    /// Writes every item with BatchWriteItem, 25 per call, calls in flight up to the adaptive
    /// limit. Returns when every item is written or refused as invalid (returned). Items with
    /// the same key are merged first: the last one wins.
    pub async fn put_all(&self, items: Vec<Item>) -> Vec<RejectedItem> {
        let items = merge_keys(items);
        let chunks: Vec<Vec<Item>> = items.chunks(BATCH_LIMIT).map(<[Item]>::to_vec).collect();
        let max = self.inner.limiter.max;
        futures::stream::iter(chunks)
            .map(|chunk| self.write_chunk(chunk))
            .buffer_unordered(max)
            .flat_map(futures::stream::iter)
            .collect()
            .await
    }

    /// One chunk, until every item is written or refused.
    async fn write_chunk(&self, mut items: Vec<Item>) -> Vec<RejectedItem> {
        let inner = &self.inner;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        let mut rejected = Vec::new();
        while !items.is_empty() {
            let requests = items
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .expect("an item is set");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            let slot = inner.limiter.acquire().await;
            let started = tokio::time::Instant::now();
            let result = inner
                .client
                .batch_write_item()
                .request_items(&inner.table, requests)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            drop(slot);
            match result {
                Ok(output) => {
                    let units: f64 = output
                        .consumed_capacity()
                        .iter()
                        .filter_map(|capacity| capacity.capacity_units())
                        .sum();
                    let unprocessed: Vec<Item> = output
                        .unprocessed_items()
                        .and_then(|tables| tables.get(&inner.table))
                        .map(|requests| {
                            requests
                                .iter()
                                .filter_map(|request| request.put_request())
                                .map(|put| put.item().clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    metrics::record_dynamodb_write(
                        &inner.table,
                        items.len() - unprocessed.len(),
                        units,
                    );
                    inner.totals.add(items.len() - unprocessed.len(), units);
                    let sized: u64 = items
                        .iter()
                        .filter(|item| !unprocessed.contains(item))
                        .map(write_units)
                        .sum();
                    inner.totals.sized_units.fetch_add(sized, Ordering::Relaxed);
                    self.mark_ready();
                    if unprocessed.is_empty() {
                        inner.limiter.succeeded();
                        break;
                    }
                    // BatchWriteItem's way of throttling: back off, send what is left.
                    metrics::record_dynamodb_throttled(&inner.table, unprocessed.len());
                    metrics::record_sink_retry(inner.component, "unprocessed");
                    inner.limiter.throttled(started.elapsed());
                    items = unprocessed;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => {
                    let failure = classify(&error);
                    metrics::record_sink_retry(inner.component, failure.reason());
                    match failure {
                        Failure::Invalid(reason) if items.len() == 1 => {
                            let item = items.pop().expect("one item");
                            tracing::warn!(table = %inner.table, reason = %reason, "item refused as invalid");
                            metrics::record_dynamodb_rejected(&inner.table, 1);
                            rejected.push(RejectedItem { item, reason });
                        }
                        // Narrow it down by halves: the others must still be written.
                        Failure::Invalid(_) => {
                            let second = items.split_off(items.len() / 2);
                            for half in [std::mem::take(&mut items), second] {
                                rejected.extend(Box::pin(self.write_chunk(half)).await);
                            }
                        }
                        failure => {
                            self.wait_after(&failure, started.elapsed(), &mut backoff)
                                .await
                        }
                    }
                }
            }
        }
        rejected
    }

    /// Writes `item` if `condition` holds, retrying until DynamoDB answers either way.
    pub async fn put_if(
        &self,
        item: Item,
        condition: &Condition,
    ) -> Result<Conditional, RejectedItem> {
        let inner = &self.inner;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(10));
        loop {
            let slot = inner.limiter.acquire().await;
            let started = tokio::time::Instant::now();
            let result = inner
                .client
                .put_item()
                .table_name(&inner.table)
                .set_item(Some(item.clone()))
                .condition_expression(&condition.expression)
                .set_expression_attribute_names(Some(condition.names.clone()))
                .set_expression_attribute_values(Some(condition.values.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            drop(slot);
            match result {
                Ok(output) => {
                    let units = output
                        .consumed_capacity()
                        .and_then(|capacity| capacity.capacity_units())
                        .unwrap_or(0.0);
                    metrics::record_dynamodb_write(&inner.table, 1, units);
                    inner.totals.add(1, units);
                    inner
                        .totals
                        .sized_units
                        .fetch_add(write_units(&item), Ordering::Relaxed);
                    inner.limiter.succeeded();
                    self.mark_ready();
                    return Ok(Conditional::Written);
                }
                Err(error) if error.code() == Some("ConditionalCheckFailedException") => {
                    // A refused condition is charged too, but reports no capacity here.
                    metrics::record_dynamodb_refusal(&inner.table);
                    inner.totals.refused.fetch_add(1, Ordering::Relaxed);
                    inner.limiter.succeeded();
                    self.mark_ready();
                    return Ok(Conditional::Refused);
                }
                Err(error) => {
                    let failure = classify(&error);
                    metrics::record_sink_retry(inner.component, failure.reason());
                    if let Failure::Invalid(reason) = failure {
                        tracing::warn!(table = %inner.table, reason = %reason, "item refused as invalid");
                        metrics::record_dynamodb_rejected(&inner.table, 1);
                        return Err(RejectedItem { item, reason });
                    }
                    self.wait_after(&failure, started.elapsed(), &mut backoff)
                        .await;
                }
            }
        }
    }

    /// After a failed call: slow down, say why on `/readyz` when an operator is needed, wait.
    async fn wait_after(&self, failure: &Failure, round_trip: Duration, backoff: &mut Backoff) {
        let inner = &self.inner;
        match failure {
            Failure::Throttled => {
                metrics::record_dynamodb_throttled(&inner.table, 1);
                inner.limiter.throttled(round_trip);
            }
            Failure::Fatal(reason) => {
                inner
                    .health
                    .not_ready(inner.component, format!("table {}: {reason}", inner.table));
                if backoff.attempts() % 10 == 0 {
                    tracing::error!(table = %inner.table, reason = %reason, "table cannot be written; retrying until it can");
                }
            }
            Failure::Transient(reason) => {
                if backoff.attempts() >= 3 {
                    inner.health.not_ready(
                        inner.component,
                        format!("table {}: unreachable: {reason}", inner.table),
                    );
                }
                if backoff.attempts() % 10 == 3 {
                    tracing::warn!(table = %inner.table, reason = %reason, "table write failing, retrying");
                }
            }
            Failure::Invalid(_) => {}
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }

    fn mark_ready(&self) {
        self.inner.health.ready(self.inner.component);
    }
}

/// An item's size by DynamoDB's rules: attribute names plus values; strings and binaries by
/// their bytes, numbers about one byte per two digits plus one, lists and maps 3 bytes plus
/// their elements plus one per element.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => {
            let digits = number.chars().filter(char::is_ascii_digit).count();
            digits.div_ceil(2) + 1
        }
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(values) => 3 + values.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(name, v)| name.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::Ss(values) => values.iter().map(String::len).sum(),
        AttributeValue::Ns(values) => values.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
        AttributeValue::Bs(values) => values.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// Write units one put of `item` costs: one per started KB.
pub fn write_units(item: &Item) -> u64 {
    item_size(item).div_ceil(1024).max(1) as u64
}

/// Merges items with the same key (the last wins), keeping first-seen order.
pub fn merge_keys(items: Vec<Item>) -> Vec<Item> {
    let mut order: Vec<Item> = Vec::with_capacity(items.len());
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for item in items {
        let key = (key_text(&item, PARTITION_KEY), key_text(&item, SORT_KEY));
        match index.get(&key) {
            Some(&at) => order[at] = item,
            None => {
                index.insert(key, order.len());
                order.push(item);
            }
        }
    }
    order
}

fn key_text(item: &Item, attribute: &str) -> String {
    match item.get(attribute) {
        Some(AttributeValue::S(text)) => text.clone(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Epoch seconds `days` after `time_ms`, for the `ttl` attribute; `None` when TTL is off.
pub fn ttl_seconds(time_ms: i64, days: u32) -> Option<i64> {
    (days > 0).then(|| time_ms.div_euclid(1000) + i64::from(days) * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pk: &str, sk: &str, value: &str) -> Item {
        HashMap::from([
            (PARTITION_KEY.to_owned(), AttributeValue::S(pk.to_owned())),
            (SORT_KEY.to_owned(), AttributeValue::S(sk.to_owned())),
            ("v".to_owned(), AttributeValue::S(value.to_owned())),
        ])
    }

    #[test]
    fn items_with_one_key_are_merged_and_the_last_wins() {
        let merged = merge_keys(vec![
            item("a", "1", "old"),
            item("b", "1", "b"),
            item("a", "1", "new"),
            item("a", "2", "other"),
        ]);
        let values: Vec<_> = merged
            .iter()
            .map(|i| i["v"].as_s().unwrap().clone())
            .collect();
        assert_eq!(values, ["new", "b", "other"]);
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_halves_the_limit_once_per_round_trip_and_success_wins_it_back() {
        let aimd = Aimd::new(16, "t");
        aimd.throttled(Duration::from_millis(100));
        aimd.throttled(Duration::from_millis(100)); // same congestion
        assert_eq!(aimd.limit(), 8);
        tokio::time::advance(Duration::from_millis(200)).await;
        aimd.throttled(Duration::from_millis(100));
        assert_eq!(aimd.limit(), 4);
        for _ in 0..5 {
            aimd.succeeded();
        }
        assert_eq!(aimd.limit(), 5, "about one slot per round of calls");
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            aimd.throttled(Duration::from_millis(1));
        }
        assert_eq!(aimd.limit(), 1, "never below one call");
    }

    #[tokio::test]
    async fn slots_never_exceed_the_limit() {
        let aimd = Arc::new(Aimd::new(2, "t"));
        let first = aimd.acquire().await;
        let _second = aimd.acquire().await;
        let waiting = {
            let aimd = Arc::clone(&aimd);
            tokio::spawn(async move {
                let _third = aimd.acquire().await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third call waits for a slot");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a freed slot lets it go")
            .unwrap();
    }

    #[test]
    fn item_sizes_follow_the_published_rules() {
        // AWS's example sizes: a string is its bytes, a name counts too.
        let mut example = item("a", "b", "");
        example.insert("n".into(), AttributeValue::N("123.45".into()));
        example.insert(
            "bin".into(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0u8; 1000])),
        );
        // pk+a, sk+b, v+"", n + (5 digits -> 3 + 1), bin + 1000
        assert_eq!(item_size(&example), 3 + 3 + 1 + (1 + 4) + (3 + 1000));
        assert_eq!(write_units(&example), 1);
        example.insert("more".into(), AttributeValue::S("x".repeat(20)));
        assert_eq!(write_units(&example), 2);
    }

    #[test]
    fn ttl_is_days_after_the_event() {
        assert_eq!(ttl_seconds(1_000_999, 1), Some(1_000 + 86_400));
        assert_eq!(ttl_seconds(1_000_999, 0), None);
    }
}
