//! The events table: every valid event, packed into one item per member, class and window of
//! event time (`CLASSPULSE_DYNAMODB_PACK_WINDOW`, a minute by default), so a member's devices
//! cost about one write unit a minute instead of one per event.
//!
//! ```text
//! pk  member_id
//! sk  {window start, UTC: YYYYMMDDTHHMMSSZ}#{studio_id}#{class_id}#{partition}#{first offset}#{part}
//! ev  zstd of a JSON array, one object per event: event_id, event_type, event_created (epoch
//!     ms), device_id, schema_version, event_data (as received)
//! n   events in this item       parts  items the window was split into      ttl  epoch s
//! ```
//!
//! A member's history over a time range is one Query on `pk` with `sk` between two window
//! starts; every event of one class is one such Query per member of the class (the members
//! are the class's `member#` items in the aggregates table), over the class's hour. No index
//! is needed, so no index write doubles the cost.
//!
//! **When an item is written.** A window's item closes at the first event on the partition
//! whose time (capped at its arrival plus the allowed clock skew) passes the window's end by
//! the watermark delay; events of the window that come later start a new item (the first
//! offset in `sk` tells them apart). It also closes when the partition has had no event for a
//! window plus the watermark delay of wall-clock time, and at the end of input or a drain.
//! Producer duplicates within an item are kept once; duplicates the aggregate stage found are
//! left out, as in the lake.
//!
//! **Exactly one copy across replays.** BatchWriteItem cannot be conditional, so an item must
//! never be written with fewer events than it had. Two rules see to it:
//!
//! - whether an event joins an item depends only on the events after the item's first one,
//!   so a replay that starts at or before that event rebuilds the same item, byte for byte;
//! - a batch is acknowledged only when every item holding an event at or before its end is
//!   written *and ends there too*. The committed position therefore never falls inside a
//!   written item: a replay either rebuilds an item whole or does not touch it.
//!
//! The cost is a longer replay after a crash (up to a window and the delay). An item split
//! because it would pass 400 KB is split the same way on a replay (parts are cut in event
//! order). An item DynamoDB refuses as invalid goes to the dead letters with the reason.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{ttl_seconds, Item, RejectedItem, TableWriter, PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE};
use crate::ack::{AckToken, PartitionId};
use crate::decode::DecodedBatch;
use crate::event::{fingerprint, EventType, PerformanceEvent, Verdict};
use crate::metrics;
use crate::sink::dead_letter::{DeadLetterLine, NdjsonZstEncoder};
use crate::sink::object::Encoder;
use crate::sink::{Sink, SinkError};
use crate::store::{sanitize, ObjectWriter};

/// Sink name: metric label, log field, health component.
pub const NAME: &str = "events_table";
/// Attribute holding the packed events.
pub const EVENTS_ATTRIBUTE: &str = "ev";
/// Compressed payload per item at most: DynamoDB's 400 KB less room for keys and the rest.
pub const MAX_PAYLOAD_BYTES: usize = 380 * 1024;
/// zstd level of the payloads: level 3 packs a member's 3 minutes in about 3 KB; higher
/// levels save little on items this small and cost milliseconds each.
const ZSTD_LEVEL: i32 = 3;
/// Closed items that make the sink write before its next tick.
const WRITE_AT_ITEMS: usize = 200;

/// How events are packed.
#[derive(Debug, Clone)]
pub struct PackSettings {
    /// Event time per item.
    pub window_ms: i64,
    /// How far past a window's end the partition's time must be before it closes.
    pub delay_ms: i64,
    /// How far ahead of its arrival an event's time may move the partition's time.
    pub max_clock_skew_ms: i64,
    /// `ttl` attribute: days after the window; 0: none.
    pub ttl_days: u32,
    /// Compressed payload per item at most.
    pub max_payload_bytes: usize,
}

impl PackSettings {
    /// Wall-clock silence after which a partition's open items are written.
    fn idle(&self) -> Duration {
        Duration::from_millis((self.window_ms + self.delay_ms).max(0) as u64)
    }
}

/// The events-table sink.
pub struct EventsTableSink {
    writer: TableWriter,
    settings: PackSettings,
    /// Where items DynamoDB refuses go, as dead letters.
    dead_letters: ObjectWriter,
    partitions: HashMap<PartitionId, Packs>,
    /// Items closed and not yet written.
    closed: Vec<ClosedItem>,
}

/// The packing state of one partition.
struct Packs {
    /// The turn of ownership these items belong to.
    generation: u64,
    open: HashMap<OpenKey, OpenItem>,
    /// Open items by close deadline (event time), then by when they opened.
    deadlines: BTreeMap<(i64, u64), OpenKey>,
    /// Every item not yet behind the acknowledged position, by (first offset, sequence):
    /// `None` while open or unwritten, else its last offset.
    spans: BTreeMap<(u64, u64), Option<u64>>,
    /// Batches not yet acknowledged, in order: (last offset, token).
    held: VecDeque<(u64, AckToken)>,
    /// When the partition last had an event.
    last_event_at: Instant,
    /// Sequence numbers of items, in opening order.
    next_seq: u64,
}

/// What an open item is for: one member's events of one class in one window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct OpenKey {
    member_id: Box<str>,
    studio_id: Arc<str>,
    class_id: Arc<str>,
    window_start_ms: i64,
}

struct OpenItem {
    seq: u64,
    first_offset: u64,
    last_offset: u64,
    /// Hashes of the event ids held: a producer retry is kept once.
    ids: Vec<u128>,
    events: Packed,
}

/// One event as stored (the key fields are the item's) and its position, borrowed from a
/// [`Packed`] buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PackedEvent<'a> {
    offset: u64,
    time_ms: i64,
    event_type: EventType,
    schema_version: u16,
    #[serde(borrow)]
    event_id: &'a str,
    #[serde(borrow)]
    device_id: Option<&'a str>,
    /// The raw JSON as received.
    #[serde(borrow)]
    event_data: &'a str,
}

/// An item's events, postcard-encoded one after another in one buffer: about a third of the
/// memory of one allocation per field of each event (what an open window costs matters: a
/// task holds a window plus the delay of every class's events).
#[derive(Debug, Default)]
struct Packed {
    buf: Vec<u8>,
    count: usize,
    last_offset: u64,
}

impl Packed {
    fn push(&mut self, event: &PerformanceEvent) {
        let record = PackedEvent {
            offset: event.offset,
            time_ms: event.event_time_ms,
            event_type: event.event_type,
            schema_version: event.schema_version,
            event_id: &event.event_id,
            device_id: event.device_id.as_deref(),
            event_data: event.event_data.get(),
        };
        self.buf = postcard::to_extend(&record, std::mem::take(&mut self.buf))
            .unwrap_or_else(|e| unreachable!("an event always encodes: {e}"));
        self.count += 1;
        self.last_offset = event.offset;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn decode(&self) -> Vec<PackedEvent<'_>> {
        let mut events = Vec::with_capacity(self.count);
        let mut rest = self.buf.as_slice();
        while !rest.is_empty() {
            let (event, tail) = postcard::take_from_bytes::<PackedEvent<'_>>(rest)
                .unwrap_or_else(|e| unreachable!("the buffer holds what push wrote: {e}"));
            events.push(event);
            rest = tail;
        }
        events
    }
}

/// An item ready to be written.
struct ClosedItem {
    partition: PartitionId,
    /// The turn of ownership it was packed in.
    generation: u64,
    key: OpenKey,
    seq: u64,
    first_offset: u64,
    events: Packed,
}

/// The `ev` payload before zstd: one JSON object of columns, one entry per event, so that
/// repeated values (types, devices, versions) compress to almost nothing.
#[derive(Serialize, Deserialize)]
struct Columns<'a> {
    /// Start of the window (epoch ms); `event_created` is this plus `offset_ms`.
    window_start: i64,
    #[serde(borrow)]
    event_id: Vec<&'a str>,
    event_type: Vec<EventType>,
    offset_ms: Vec<i64>,
    #[serde(borrow)]
    device_id: Vec<Option<&'a str>>,
    schema_version: Vec<u16>,
    #[serde(borrow)]
    event_data: Vec<&'a RawValue>,
}

impl EventsTableSink {
    /// A sink writing through `writer`, dead-lettering refused items through `dead_letters`.
    pub fn new(
        writer: TableWriter,
        settings: PackSettings,
        dead_letters: ObjectWriter,
    ) -> EventsTableSink {
        EventsTableSink {
            writer,
            settings,
            dead_letters,
            partitions: HashMap::new(),
            closed: Vec::new(),
        }
    }

    /// Packs one batch's events, closing the items their time passes.
    fn pack(&mut self, batch: &DecodedBatch) {
        let settings = &self.settings;
        let packs = match self.partitions.get_mut(&batch.partition) {
            Some(packs) if packs.generation == batch.generation => packs,
            // Read before a rebalance this sink has since seen: the new owner replays it.
            Some(packs) if packs.generation > batch.generation => return,
            _ => {
                // First seen, or assigned again: what was held belongs to an old turn.
                self.partitions
                    .insert(batch.partition.clone(), Packs::new(batch.generation));
                self.partitions
                    .get_mut(&batch.partition)
                    .expect("inserted above")
            }
        };
        for event in &batch.events {
            let capped = event
                .event_time_ms
                .min(event.arrival_ms.saturating_add(settings.max_clock_skew_ms));
            packs.close_due(capped, &batch.partition, &mut self.closed);
            if event.verdict == Verdict::Duplicate {
                continue;
            }
            packs.add(event, settings);
        }
        if !batch.events.is_empty() {
            packs.last_event_at = Instant::now();
        }
        packs.held.push_back((batch.last_offset, batch.ack.clone()));
    }

    /// Writes every closed item, then acknowledges what is safe to commit.
    async fn write_closed(&mut self) -> Result<(), SinkError> {
        // A revoked partition's items are the new owner's to write: one written here, cut
        // short, could land after the new owner's whole one.
        self.release();
        let partitions = &self.partitions;
        self.closed.retain(|item| {
            partitions
                .get(&item.partition)
                .is_some_and(|packs| packs.generation == item.generation)
        });
        if self.closed.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let closed = std::mem::take(&mut self.closed);
        let mut items = Vec::with_capacity(closed.len());
        let mut events = 0;
        let mut bytes = 0;
        for item in &closed {
            for part in self.render(item)? {
                bytes += part
                    .get(super::events::EVENTS_ATTRIBUTE)
                    .and_then(|value| value.as_b().ok())
                    .map_or(0, |blob| blob.as_ref().len());
                items.push(part);
            }
            events += item.events.len();
        }
        let rejected = self.writer.put_all(items).await;
        if !rejected.is_empty() {
            self.dead_letter(&closed, rejected).await?;
        }
        metrics::record_sink_write(NAME, events, bytes, started.elapsed());
        for item in &closed {
            if let Some(packs) = self.partitions.get_mut(&item.partition) {
                if let Some(span) = packs.spans.get_mut(&(item.first_offset, item.seq)) {
                    *span = Some(item.events.last_offset.max(item.first_offset));
                }
            }
        }
        self.release();
        Ok(())
    }

    /// Drops the acknowledgements of every batch no unwritten item, and no item that goes on
    /// past the batch, holds back.
    fn release(&mut self) {
        let mut buffered = 0;
        self.partitions.retain(|partition, packs| {
            if packs.held.front().is_some_and(|(_, token)| !token.is_current()) {
                tracing::info!(partition = %partition, "events-table items released (partition revoked)");
                return false;
            }
            packs.release();
            buffered += packs.open.values().map(OpenItem::bytes).sum::<usize>();
            true
        });
        metrics::set_sink_buffered(NAME, buffered);
    }

    /// The DynamoDB items of one closed item: one, or parts if it would pass the size limit.
    fn render(&self, item: &ClosedItem) -> Result<Vec<Item>, SinkError> {
        let events = item.events.decode();
        let mut parts = 1;
        let payloads = loop {
            let chunk = events.len().div_ceil(parts);
            let payloads = events
                .chunks(chunk.max(1))
                .map(|events| compress(item.key.window_start_ms, events))
                .collect::<Result<Vec<_>, _>>()?;
            if payloads
                .iter()
                .all(|p| p.len() <= self.settings.max_payload_bytes)
                || chunk <= 1
            {
                break payloads;
            }
            parts += 1;
        };
        let window = DateTime::<Utc>::from_timestamp_millis(item.key.window_start_ms)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ");
        let chunk = events.len().div_ceil(parts).max(1);
        let count = payloads.len();
        Ok(payloads
            .into_iter()
            .enumerate()
            .map(|(part, payload)| {
                let in_part = events.len().saturating_sub(part * chunk).min(chunk);
                let sort_key = format!(
                    "{window}#{}#{}#{}#{}#{part}",
                    item.key.studio_id, item.key.class_id, item.partition.index, item.first_offset
                );
                let mut attributes = HashMap::from([
                    (
                        PARTITION_KEY.to_owned(),
                        AttributeValue::S(item.key.member_id.to_string()),
                    ),
                    (SORT_KEY.to_owned(), AttributeValue::S(sort_key)),
                    (
                        EVENTS_ATTRIBUTE.to_owned(),
                        AttributeValue::B(Blob::new(payload)),
                    ),
                    ("n".to_owned(), AttributeValue::N(in_part.to_string())),
                    ("parts".to_owned(), AttributeValue::N(count.to_string())),
                ]);
                if let Some(ttl) = ttl_seconds(item.key.window_start_ms, self.settings.ttl_days) {
                    attributes.insert(TTL_ATTRIBUTE.to_owned(), AttributeValue::N(ttl.to_string()));
                }
                attributes
            })
            .collect())
    }

    /// Sends the events of refused items to the dead letters, with DynamoDB's reason.
    async fn dead_letter(
        &self,
        closed: &[ClosedItem],
        rejected: Vec<RejectedItem>,
    ) -> Result<(), SinkError> {
        let received_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        for refused in rejected {
            let sort_key = refused
                .item
                .get(SORT_KEY)
                .and_then(|value| value.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let member = refused
                .item
                .get(PARTITION_KEY)
                .and_then(|value| value.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let Some(item) = closed.iter().find(|item| {
                *item.key.member_id == *member
                    && sort_key
                        .contains(&format!("#{}#{}#", item.partition.index, item.first_offset))
            }) else {
                continue;
            };
            let mut encoder = NdjsonZstEncoder::new();
            for event in &item.events.decode() {
                let raw = full_event_json(&item.key, event);
                let line = DeadLetterLine {
                    reason: "table_rejected",
                    detail: &refused.reason,
                    source: self.dead_letters.source_kind(),
                    stream: &item.partition.stream,
                    partition: item.partition.index,
                    position: event.offset,
                    index: None,
                    received_at: received_at.clone(),
                    raw: Some(&raw),
                    raw_base64: None,
                };
                encoder
                    .append(&line)
                    .map_err(|detail| SinkError::Encode { sink: NAME, detail })?;
            }
            let body = encoder
                .finish(&[])
                .map_err(|detail| SinkError::Encode { sink: NAME, detail })?;
            let key = self.dead_letters.path(&format!(
                "dead-letters/{NAME}/{}/{}-{}-{}-{}.ndjson.zst",
                sanitize(self.writer.table()),
                sanitize(&item.partition.stream),
                item.partition.index,
                item.first_offset,
                sanitize(&member),
            ));
            self.dead_letters.put(NAME, &key, body, &[]).await;
        }
        Ok(())
    }
}

/// The event as a whole JSON object again, as a producer would have sent it.
fn full_event_json(key: &OpenKey, event: &PackedEvent<'_>) -> String {
    let event_data: serde_json::Value =
        serde_json::from_str(event.event_data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "event_id": event.event_id,
        "event_type": event.event_type,
        "event_created": event.time_ms,
        "studio_id": &*key.studio_id,
        "class_id": &*key.class_id,
        "member_id": &*key.member_id,
        "device_id": event.device_id,
        "schema_version": event.schema_version,
        "event_data": event_data,
    })
    .to_string()
}

/// zstd of the events' columns.
fn compress(window_start: i64, events: &[PackedEvent<'_>]) -> Result<Vec<u8>, SinkError> {
    let encode_error = |detail: String| SinkError::Encode { sink: NAME, detail };
    let event_data = events
        .iter()
        .map(|e| serde_json::from_str::<&RawValue>(e.event_data))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| encode_error(e.to_string()))?;
    let columns = Columns {
        window_start,
        event_id: events.iter().map(|e| e.event_id).collect(),
        event_type: events.iter().map(|e| e.event_type).collect(),
        offset_ms: events.iter().map(|e| e.time_ms - window_start).collect(),
        device_id: events.iter().map(|e| e.device_id).collect(),
        schema_version: events.iter().map(|e| e.schema_version).collect(),
        event_data,
    };
    let json = serde_json::to_vec(&columns).map_err(|e| encode_error(e.to_string()))?;
    zstd::bulk::compress(&json, ZSTD_LEVEL).map_err(|e| encode_error(e.to_string()))
}

/// The events of one events-table item's `ev` attribute, as JSON objects with the fields a
/// producer sent (except the key fields `studio_id`, `class_id` and `member_id`).
pub fn decode_payload(payload: &[u8]) -> Result<Vec<serde_json::Value>, String> {
    let json = zstd::stream::decode_all(payload).map_err(|e| e.to_string())?;
    let columns: Columns<'_> = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
    let count = columns.event_id.len();
    let lengths = [
        columns.event_type.len(),
        columns.offset_ms.len(),
        columns.device_id.len(),
        columns.schema_version.len(),
        columns.event_data.len(),
    ];
    if lengths.iter().any(|&length| length != count) {
        return Err(format!(
            "columns of different lengths: {count} ids, {lengths:?}"
        ));
    }
    (0..count)
        .map(|i| {
            let data: serde_json::Value =
                serde_json::from_str(columns.event_data[i].get()).map_err(|e| e.to_string())?;
            Ok(serde_json::json!({
                "event_id": columns.event_id[i],
                "event_type": columns.event_type[i],
                "event_created": columns.window_start + columns.offset_ms[i],
                "device_id": columns.device_id[i],
                "schema_version": columns.schema_version[i],
                "event_data": data,
            }))
        })
        .collect()
}

impl Packs {
    fn new(generation: u64) -> Packs {
        Packs {
            generation,
            open: HashMap::new(),
            deadlines: BTreeMap::new(),
            spans: BTreeMap::new(),
            held: VecDeque::new(),
            last_event_at: Instant::now(),
            next_seq: 0,
        }
    }

    /// Closes every open item whose deadline `time_ms` reaches.
    fn close_due(&mut self, time_ms: i64, partition: &PartitionId, closed: &mut Vec<ClosedItem>) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > time_ms {
                break;
            }
            let key = entry.remove();
            if let Some(item) = self.open.remove(&key) {
                closed.push(item.close(key, partition, self.generation));
            }
        }
    }

    /// Closes every open item.
    fn close_all(&mut self, partition: &PartitionId, closed: &mut Vec<ClosedItem>) {
        self.close_due(i64::MAX, partition, closed);
    }

    fn add(&mut self, event: &PerformanceEvent, settings: &PackSettings) {
        let window_start_ms =
            event.event_time_ms.div_euclid(settings.window_ms) * settings.window_ms;
        let key = OpenKey {
            member_id: Box::from(&*event.member_id),
            studio_id: Arc::clone(&event.studio_id),
            class_id: Arc::clone(&event.class_id),
            window_start_ms,
        };
        let id_hash = fingerprint(&event.event_id);
        let item = match self.open.get_mut(&key) {
            Some(item) => item,
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let deadline_ms = window_start_ms
                    .saturating_add(settings.window_ms)
                    .saturating_add(settings.delay_ms);
                self.deadlines.insert((deadline_ms, seq), key.clone());
                self.spans.insert((event.offset, seq), None);
                self.open.entry(key).or_insert(OpenItem {
                    seq,
                    first_offset: event.offset,
                    last_offset: event.offset,
                    ids: Vec::new(),
                    events: Packed::default(),
                })
            }
        };
        if item.ids.contains(&id_hash) {
            return;
        }
        item.ids.push(id_hash);
        item.last_offset = event.offset;
        item.events.push(event);
    }

    /// Drops the tokens of the longest prefix of held batches that no item holds back.
    fn release(&mut self) {
        let mut reach = 0u64;
        let mut spans = self.spans.iter().peekable();
        let mut releasable = 0;
        for (index, (last, _)) in self.held.iter().enumerate() {
            while let Some(((first, _), span)) = spans.peek() {
                if first > last {
                    break;
                }
                reach = reach.max(span.unwrap_or(u64::MAX));
                spans.next();
            }
            if reach <= *last {
                releasable = index + 1;
            }
        }
        if releasable == 0 {
            return;
        }
        let (released_to, _) = self.held[releasable - 1];
        self.held.drain(..releasable);
        // Every item starting at or before it is written and ends there too.
        self.spans.retain(|(first, _), _| *first > released_to);
    }
}

impl OpenItem {
    fn close(self, key: OpenKey, partition: &PartitionId, generation: u64) -> ClosedItem {
        debug_assert!(self.last_offset >= self.first_offset);
        ClosedItem {
            partition: partition.clone(),
            generation,
            key,
            seq: self.seq,
            first_offset: self.first_offset,
            events: self.events,
        }
    }

    fn bytes(&self) -> usize {
        self.events.buf.capacity() + self.ids.capacity() * 16
    }
}

#[async_trait]
impl Sink for EventsTableSink {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
        self.pack(&batch);
        if self.closed.len() >= WRITE_AT_ITEMS {
            self.write_closed().await?;
        }
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), SinkError> {
        let idle = self.settings.idle();
        for (partition, packs) in &mut self.partitions {
            if !packs.open.is_empty() && packs.last_event_at.elapsed() >= idle {
                packs.close_all(partition, &mut self.closed);
            }
        }
        self.write_closed().await
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        for (partition, packs) in &mut self.partitions {
            packs.close_all(partition, &mut self.closed);
        }
        self.write_closed().await?;
        debug_assert!(self.partitions.values().all(|p| p.held.is_empty()));
        Ok(())
    }
}

/// The payload of a batch, for tests and tools that read the table.
pub fn payload_of(item: &Item) -> Option<Bytes> {
    item.get(EVENTS_ATTRIBUTE)
        .and_then(|value| value.as_b().ok())
        .map(|blob| Bytes::copy_from_slice(blob.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckTracker;
    use crate::aggregate::reference::event;
    use crate::event::Metrics;

    fn settings() -> PackSettings {
        PackSettings {
            window_ms: 60_000,
            delay_ms: 10_000,
            max_clock_skew_ms: 60_000,
            ttl_days: 1,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        }
    }

    /// A heart-rate sample of `member` at `second` of the class, at `offset`.
    fn sample(member: &str, second: i64, offset: u64) -> PerformanceEvent {
        let metrics = Metrics {
            bpm: Some(140.0),
            ..Metrics::default()
        };
        let mut e = event(
            &format!("{member}-{second}"),
            member,
            1_764_090_000_000 + second * 1_000,
            EventType::HeartRate,
            metrics,
            offset,
        );
        e.arrival_ms = e.event_time_ms;
        e
    }

    fn packs_after(events: &[PerformanceEvent]) -> (Packs, Vec<ClosedItem>) {
        let mut packs = Packs::new(0);
        let mut closed = Vec::new();
        let partition = PartitionId::new("t", 0);
        for e in events {
            packs.close_due(e.event_time_ms, &partition, &mut closed);
            packs.add(e, &settings());
        }
        (packs, closed)
    }

    #[test]
    fn a_window_closes_at_the_first_event_past_its_end_and_the_delay() {
        let events: Vec<_> = (0..80)
            .map(|second| sample("m1", second, second as u64))
            .collect();
        let (packs, closed) = packs_after(&events);
        assert_eq!(closed.len(), 1, "the first minute closed at second 70");
        assert_eq!(closed[0].events.len(), 60);
        assert_eq!(packs.open.len(), 1);
    }

    #[test]
    fn a_producer_retry_in_the_same_item_is_kept_once() {
        let mut events: Vec<_> = (0..10).map(|s| sample("m1", s, s as u64)).collect();
        let mut retry = sample("m1", 3, 10);
        retry.offset = 10;
        events.push(retry);
        let (packs, _) = packs_after(&events);
        let item = packs.open.values().next().unwrap();
        assert_eq!(item.events.len(), 10);
    }

    #[test]
    fn a_replay_from_an_items_first_event_rebuilds_it_byte_for_byte() {
        // Two members interleaved, out of order within the delay, past two windows.
        let mut events = Vec::new();
        for second in 0..150 {
            let jitter = if second % 7 == 0 { -5 } else { 0 };
            events.push(sample("m1", second + jitter, events.len() as u64));
            events.push(sample("m2", second, events.len() as u64));
        }
        let (_, first_run) = packs_after(&events);
        for item in &first_run {
            let replay_from = item.first_offset as usize;
            let (_, replayed) = packs_after(&events[replay_from..]);
            let same = replayed
                .iter()
                .find(|r| r.key == item.key && r.first_offset == item.first_offset)
                .expect("the replay rebuilds the item");
            assert_eq!(same.events.decode(), item.events.decode(), "{:?}", item.key);
        }
    }

    #[test]
    fn acknowledgements_never_stop_inside_a_written_item() {
        let acks = AckTracker::new();
        let partition = PartitionId::new("t", 0);
        let mut packs = Packs::new(0);
        // Item A spans offsets 0..=20; item B opens at 10 and stays open.
        packs.spans.insert((0, 0), Some(20));
        packs.spans.insert((10, 1), None);
        for last in [4, 9, 14, 20, 25] {
            packs
                .held
                .push_back((last, acks.register(&partition, 0, last)));
        }
        packs.release();
        assert_eq!(
            packs.held.len(),
            5,
            "A goes on past 9 and B is open: nothing is released"
        );
        // B is written and ends at 22: everything through 25 may go.
        packs.spans.insert((10, 1), Some(22));
        packs.release();
        assert!(packs.held.is_empty());
        assert!(packs.spans.is_empty());
        assert_eq!(acks.take_committable(), vec![(partition, 26)]);
    }

    #[test]
    fn release_stops_before_the_first_open_item_and_any_item_that_spans_it() {
        let acks = AckTracker::new();
        let partition = PartitionId::new("t", 0);
        let mut packs = Packs::new(0);
        packs.spans.insert((0, 0), Some(3)); // written, ends in the first batch
        packs.spans.insert((5, 1), Some(12)); // written, spans the open item's start
        packs.spans.insert((8, 2), None); // open
        for last in [4, 7, 10, 15] {
            packs
                .held
                .push_back((last, acks.register(&partition, 0, last)));
        }
        packs.release();
        let held: Vec<u64> = packs.held.iter().map(|(last, _)| *last).collect();
        assert_eq!(
            held,
            [7, 10, 15],
            "only the batch ending at 4 is free of both"
        );
        assert_eq!(acks.take_committable(), vec![(partition, 5)]);
    }

    #[test]
    fn an_item_too_large_is_split_in_event_order() {
        let events: Vec<_> = (0..500).map(|s| sample("m1", s % 60, s as u64)).collect();
        let mut packs = Packs::new(0);
        for e in &events {
            let mut e = e.clone();
            e.event_id = format!("{}-{}", e.event_id, e.offset).into();
            packs.add(&e, &settings());
        }
        let mut closed = Vec::new();
        packs.close_all(&PartitionId::new("t", 0), &mut closed);
        let item = closed.pop().unwrap();
        let whole = compress(item.key.window_start_ms, &item.events.decode())
            .unwrap()
            .len();
        let limit = whole / 2;
        let sink_settings = PackSettings {
            max_payload_bytes: limit,
            ..settings()
        };
        let parts = render_with(&item, sink_settings);
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let mut ids = Vec::new();
        for part in &parts {
            let size = payload_of(part).unwrap().len();
            assert!(size <= limit, "{size} > {limit} ({} parts)", parts.len());
            for event in decode_payload(&payload_of(part).unwrap()).unwrap() {
                ids.push(event["event_id"].as_str().unwrap().to_owned());
            }
            assert_eq!(part["parts"].as_n().unwrap(), &parts.len().to_string());
        }
        let expected: Vec<String> = (0..500).map(|s| format!("m1-{}-{s}", s % 60)).collect();
        assert_eq!(ids, expected, "every event once, in order");
    }

    fn render_with(item: &ClosedItem, settings: PackSettings) -> Vec<Item> {
        let sink = EventsTableSink {
            writer: TableWriter::new(
                aws_sdk_dynamodb::Client::from_conf(
                    aws_sdk_dynamodb::Config::builder()
                        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
                        .build(),
                ),
                "t",
                NAME,
                1,
                crate::health::Health::new(),
            ),
            settings,
            dead_letters: {
                let lake = crate::config::LakeConfig {
                    location: crate::config::LakeLocation::Local(std::env::temp_dir()),
                    s3_endpoint: None,
                    max_events: 10,
                    max_bytes: 1 << 20,
                    max_age: Duration::from_secs(1),
                    max_buffer_bytes: 1 << 20,
                    compact_after: None,
                    erasure_key: None,
                    erasure_refresh: std::time::Duration::from_secs(60),
                };
                ObjectWriter::open(&lake, "kafka", crate::health::Health::new(), Arc::default())
                    .unwrap()
            },
            partitions: HashMap::new(),
            closed: Vec::new(),
        };
        sink.render(item).unwrap()
    }
}
