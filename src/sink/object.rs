//! Object sinks: records grouped into objects per partition and hour, written through the
//! store's [`ObjectWriter`] (a local directory and S3 share one code path).
//!
//! The lake (Parquet) and the dead letters (zstd NDJSON) differ only in their [`ObjectFormat`];
//! opening, cutting and acknowledging live here once.
//!
//! Object keys are `{prefix}/{folder}/dt=YYYY-MM-DD/hour=HH/{source}-{stream}-{partition}-{first}-{last}.{ext}`,
//! named by the source positions they hold, so a replay that cuts at the same positions
//! overwrites instead of duplicating.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::compact::{Compactor, Job};
use super::{Sink, SinkError};
use crate::ack::{AckToken, PartitionId};
use crate::config::LakeConfig;
use crate::decode::DecodedBatch;
use crate::metrics;
use crate::store::{ObjectWriter, HOUR_MS};

/// Encodes the records of one object.
pub trait Encoder: Send {
    /// Records appended so far.
    fn records(&self) -> usize;
    /// Bytes this encoder holds in memory (counted against the sink's buffer cap).
    fn buffered_bytes(&self) -> usize;
    /// What the object would be if cut now, roughly (counted against the object size limit).
    fn encoded_bytes(&self) -> usize {
        self.buffered_bytes()
    }
    /// Finishes the object. `metadata` is also attached to the object where the store allows.
    fn finish(self, metadata: &[(&'static str, String)]) -> Result<Bytes, String>;
}

/// What distinguishes one kind of object sink from another.
pub trait ObjectFormat: Send + 'static {
    /// The per-object encoder.
    type Encoder: Encoder;
    /// Sink name (metric label).
    const SINK: &'static str;
    /// Folder under the lake prefix.
    const FOLDER: &'static str;
    /// File extension, without the dot.
    const EXTENSION: &'static str;
    /// Whether a record's hour is the same when its message is read again (event time: yes;
    /// receipt time: no). Then every object written gets an index entry, and a replay skips
    /// the records already in one, so a crash does not write them twice.
    const REPLAY_INDEX: bool = false;

    /// Appends the records of `batch` this format stores to `objects`.
    fn append(
        &mut self,
        batch: &DecodedBatch,
        objects: &mut PartitionObjects<Self::Encoder>,
    ) -> Result<(), String>;
}

/// Hours before a turn's first record that it compacts if an earlier turn did not.
const EARLIER_HOURS: i64 = 3;

/// Limits that make an object close.
#[derive(Debug, Clone, Copy)]
pub struct ObjectLimits {
    /// Records per object.
    pub max_records: usize,
    /// Encoded bytes per object.
    pub max_bytes: usize,
    /// Time since the object was opened.
    pub max_age: Duration,
    /// Bytes across all open objects of the sink.
    pub max_buffer_bytes: usize,
}

impl ObjectLimits {
    /// The limits configured for the lake.
    pub fn from_config(lake: &LakeConfig) -> ObjectLimits {
        ObjectLimits {
            max_records: lake.max_events,
            max_bytes: lake.max_bytes,
            max_age: lake.max_age,
            max_buffer_bytes: lake.max_buffer_bytes,
        }
    }
}

/// An object being filled.
pub struct OpenObject<E> {
    /// Encodes the records.
    pub encoder: E,
    /// Source positions held.
    first_offset: u64,
    last_offset: u64,
    /// Event-time range held (epoch ms).
    min_time_ms: i64,
    max_time_ms: i64,
    /// Records per event-time second, for end-to-end latency once durable.
    times: Vec<(i64, u64)>,
    opened_at: Instant,
    /// One clone per batch that contributed; dropped once the object is durable.
    tokens: Vec<AckToken>,
}

impl<E: Encoder> OpenObject<E> {
    fn new(encoder: E) -> OpenObject<E> {
        OpenObject {
            encoder,
            first_offset: u64::MAX,
            last_offset: 0,
            min_time_ms: i64::MAX,
            max_time_ms: i64::MIN,
            times: Vec::new(),
            opened_at: Instant::now(),
            tokens: Vec::new(),
        }
    }

    /// Records that a record at `offset` with time `time_ms` from the batch of `token` was
    /// appended to the encoder.
    pub fn include(&mut self, offset: u64, time_ms: i64, token: &AckToken) {
        self.first_offset = self.first_offset.min(offset);
        self.last_offset = self.last_offset.max(offset);
        self.min_time_ms = self.min_time_ms.min(time_ms);
        self.max_time_ms = self.max_time_ms.max(time_ms);
        let second = time_ms.div_euclid(1000);
        match self.times.last_mut() {
            Some((last, count)) if *last == second => *count += 1,
            _ => self.times.push((second, 1)),
        }
        if !self
            .tokens
            .last()
            .is_some_and(|last| last.same_batch(token))
        {
            self.tokens.push(token.clone());
        }
    }
}

/// The open objects of one partition, by hour of record time.
pub struct PartitionObjects<E> {
    by_hour: BTreeMap<i64, OpenObject<E>>,
    new_encoder: fn() -> E,
    /// The partition's turn of ownership these objects belong to.
    generation: u64,
    /// Objects already written that a replay may meet again: (hour, first, last) positions.
    written: Vec<(i64, u64, u64)>,
    /// The newest record time appended this turn (`i64::MIN` before its first), and when a
    /// record last came.
    newest_ms: i64,
    last_append: Instant,
    /// Hours to compact once over (those this turn wrote objects to, and the few before its
    /// first record, which an earlier turn may have left uncompacted); and those compacted.
    to_compact: BTreeSet<i64>,
    compacted: BTreeSet<i64>,
}

impl<E: Encoder> PartitionObjects<E> {
    /// Whether the record at `offset` with time `time_ms` is already in a written object.
    pub fn already_written(&self, time_ms: i64, offset: u64) -> bool {
        let hour = time_ms.div_euclid(HOUR_MS);
        self.written
            .iter()
            .any(|(h, first, last)| *h == hour && (*first..=*last).contains(&offset))
    }

    /// The open object for records whose time falls in the hour of `time_ms`.
    pub fn for_time(&mut self, time_ms: i64) -> &mut OpenObject<E> {
        let new_encoder = self.new_encoder;
        self.newest_ms = self.newest_ms.max(time_ms);
        self.by_hour
            .entry(time_ms.div_euclid(HOUR_MS))
            .or_insert_with(|| OpenObject::new(new_encoder()))
    }
}

/// A sink that writes objects of format `F`.
pub struct ObjectSink<F: ObjectFormat> {
    format: F,
    writer: ObjectWriter,
    limits: ObjectLimits,
    new_encoder: fn() -> F::Encoder,
    /// Open objects by partition.
    partitions: BTreeMap<PartitionId, PartitionObjects<F::Encoder>>,
    /// Merges each partition's hour of objects into one once it is over (the lake only).
    compactor: Option<Compactor>,
}

impl<F: ObjectFormat> ObjectSink<F> {
    /// A sink writing through `writer`, cutting objects at `limits`.
    pub fn new(
        format: F,
        new_encoder: fn() -> F::Encoder,
        writer: ObjectWriter,
        limits: ObjectLimits,
    ) -> ObjectSink<F> {
        ObjectSink {
            format,
            writer,
            limits,
            new_encoder,
            partitions: BTreeMap::new(),
            compactor: None,
        }
    }

    /// The same sink, handing each partition's hours to `compactor` once they are over.
    pub fn compacting(mut self, compactor: Compactor) -> ObjectSink<F> {
        self.compactor = Some(compactor);
        self
    }

    /// Offers the compactor every hour that is over: no object of it open, and its end
    /// `after` behind the partition's newest record, or the partition idle that long.
    fn compact_due(&mut self) {
        let Some(compactor) = &self.compactor else {
            return;
        };
        let after_ms = compactor.after.as_millis() as i64;
        for (partition, objects) in &mut self.partitions {
            let idle = objects.last_append.elapsed() >= compactor.after;
            let due: Vec<i64> = objects
                .to_compact
                .iter()
                .copied()
                .filter(|hour| !objects.by_hour.contains_key(hour))
                .filter(|hour| idle || (hour + 1) * HOUR_MS + after_ms <= objects.newest_ms)
                .collect();
            for hour in due {
                if !compactor.offer(Job::Compact(partition.clone(), hour)) {
                    return;
                }
                objects.to_compact.remove(&hour);
                objects.compacted.insert(hour);
            }
        }
    }

    fn buffered_bytes(&self) -> usize {
        let objects = self.partitions.values().flat_map(|p| p.by_hour.values());
        objects.map(|object| object.encoder.buffered_bytes()).sum()
    }

    /// Removes and returns the objects `select` picks.
    fn take(
        &mut self,
        mut select: impl FnMut(&OpenObject<F::Encoder>) -> bool,
    ) -> Vec<(PartitionId, i64, OpenObject<F::Encoder>)> {
        let mut taken = Vec::new();
        for (partition, objects) in self.partitions.iter_mut() {
            let hours: Vec<i64> = objects
                .by_hour
                .iter()
                .filter(|(_, o)| select(o))
                .map(|(h, _)| *h)
                .collect();
            for hour in hours {
                if let Some(object) = objects.by_hour.remove(&hour) {
                    taken.push((partition.clone(), hour, object));
                }
            }
        }
        taken
    }

    /// Takes the largest open objects until the rest fit under the buffer cap.
    fn take_over_cap(&mut self) -> Vec<(PartitionId, i64, OpenObject<F::Encoder>)> {
        let mut buffered = self.buffered_bytes();
        let mut taken = Vec::new();
        while buffered > self.limits.max_buffer_bytes {
            let largest = self
                .partitions
                .iter()
                .flat_map(|(partition, objects)| {
                    objects
                        .by_hour
                        .iter()
                        .map(move |(hour, o)| (o.encoder.buffered_bytes(), partition, *hour))
                })
                .max_by_key(|(bytes, _, _)| *bytes)
                .map(|(bytes, partition, hour)| (bytes, partition.clone(), hour));
            let Some((bytes, partition, hour)) = largest else {
                break;
            };
            if let Some(object) = self
                .partitions
                .get_mut(&partition)
                .and_then(|p| p.by_hour.remove(&hour))
            {
                taken.push((partition, hour, object));
            }
            buffered -= bytes;
        }
        taken
    }

    async fn flush(
        &mut self,
        objects: Vec<(PartitionId, i64, OpenObject<F::Encoder>)>,
    ) -> Result<(), SinkError> {
        for (partition, hour, object) in objects {
            flush_one::<F>(&self.writer, &partition, hour, object).await?;
            if self.compactor.is_some() {
                // An hour is compacted once a turn: objects of its stragglers stay apart.
                if let Some(objects) = self.partitions.get_mut(&partition) {
                    if !objects.compacted.contains(&hour) {
                        objects.to_compact.insert(hour);
                    }
                }
            }
        }
        // Partitions stay known with no open object: seeing one anew lists its replay index
        // (and prunes it to the position read), which is for a new turn only.
        metrics::set_sink_buffered(F::SINK, self.buffered_bytes());
        Ok(())
    }
}

/// Encodes and writes one object, then acknowledges its share of every batch in it.
async fn flush_one<F: ObjectFormat>(
    writer: &ObjectWriter,
    partition: &PartitionId,
    hour: i64,
    object: OpenObject<F::Encoder>,
) -> Result<(), SinkError> {
    let OpenObject {
        encoder,
        first_offset,
        last_offset,
        min_time_ms,
        max_time_ms,
        times,
        tokens,
        ..
    } = object;
    let records = encoder.records();
    if records == 0 {
        return Ok(());
    }
    let metadata = [
        ("record-count", records.to_string()),
        ("min-time", format_time(min_time_ms)),
        ("max-time", format_time(max_time_ms)),
        ("source", writer.source_kind().to_owned()),
        ("stream", partition.stream.to_string()),
        ("partition", partition.index.to_string()),
        ("first-position", first_offset.to_string()),
        ("last-position", last_offset.to_string()),
        ("schema-version", "1".to_owned()),
        ("classpulse-version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    let key = writer.key(
        F::FOLDER,
        partition,
        hour,
        first_offset,
        last_offset,
        F::EXTENSION,
    );
    let body = match encoder.finish(&metadata) {
        Ok(body) => body,
        Err(detail) => {
            for token in &tokens {
                token.fail();
            }
            return Err(SinkError::Encode {
                sink: F::SINK,
                detail,
            });
        }
    };
    let bytes = body.len();
    if F::REPLAY_INDEX {
        // Before the object: an entry whose object is missing was an intent a crash cut short,
        // and is dropped when read.
        let entry = writer.index_key(F::FOLDER, partition, hour, first_offset, last_offset);
        writer.put(F::SINK, &entry, Bytes::new(), &[]).await;
    }
    let took = writer.put(F::SINK, &key, body, &metadata).await;
    metrics::record_sink_write(F::SINK, records, bytes, took);
    writer.stats().record_object(F::SINK, records, bytes);
    let durable_ms = Utc::now().timestamp_millis();
    metrics::record_end_to_end(
        F::SINK,
        times.iter().map(|(second, count)| {
            (
                ((durable_ms - second * 1000) as f64 / 1000.0).max(0.0),
                *count,
            )
        }),
    );
    tracing::debug!(sink = F::SINK, key = %key, records, bytes, took_ms = took.as_millis() as u64, "object written");
    // Dropping the tokens acknowledges this object's share of each batch.
    drop(tokens);
    Ok(())
}

fn format_time(time_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(time_ms)
        .map(|time| time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[async_trait]
impl<F: ObjectFormat> Sink for ObjectSink<F> {
    fn name(&self) -> &'static str {
        F::SINK
    }

    async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
        let new_encoder = self.new_encoder;
        let known = self
            .partitions
            .get(&batch.partition)
            .is_some_and(|objects| objects.generation == batch.generation);
        if !known {
            // First seen in this turn: what a previous run or owner wrote past the committed
            // position (the first one read now) must not be written again.
            let written = if F::REPLAY_INDEX {
                self.writer
                    .written(
                        F::SINK,
                        F::FOLDER,
                        F::EXTENSION,
                        &batch.partition,
                        batch.first_offset,
                    )
                    .await
            } else {
                Vec::new()
            };
            let objects = self
                .partitions
                .entry(batch.partition.clone())
                .or_insert_with(|| PartitionObjects {
                    by_hour: BTreeMap::new(),
                    new_encoder,
                    generation: batch.generation,
                    written: Vec::new(),
                    newest_ms: i64::MIN,
                    last_append: Instant::now(),
                    to_compact: BTreeSet::new(),
                    compacted: BTreeSet::new(),
                });
            if objects.generation != batch.generation {
                // Objects of an earlier turn are never committed and this turn replays them:
                // written now, they would duplicate what the replay writes.
                objects.by_hour.clear();
            }
            objects.generation = batch.generation;
            objects.written = written;
            objects.newest_ms = i64::MIN;
            objects.to_compact.clear();
            objects.compacted.clear();
            if let Some(compactor) = &self.compactor {
                // A compaction a crash cut short is finished before this turn's own.
                if !compactor.offer(Job::Resume(batch.partition.clone())) {
                    tracing::warn!(partition = %batch.partition, "the compactor's queue is full; interrupted compactions wait for a later turn");
                }
            }
        }
        let objects = self
            .partitions
            .get_mut(&batch.partition)
            .expect("inserted above");
        objects.last_append = Instant::now();
        let first_records = objects.newest_ms == i64::MIN;
        // Past an indexed object's last position, this turn cannot meet it again.
        objects
            .written
            .retain(|(_, _, last)| *last >= batch.first_offset);
        self.format
            .append(&batch, objects)
            .map_err(|detail| SinkError::Encode {
                sink: F::SINK,
                detail,
            })?;
        if self.compactor.is_some() && first_records && objects.newest_ms > i64::MIN {
            // An earlier turn (a task replaced, scaled in) may have left its last hours
            // uncompacted: a compaction of an hour already done lists one object and stops.
            let hour = objects.newest_ms.div_euclid(HOUR_MS);
            objects.to_compact.extend(hour - EARLIER_HOURS..hour);
        }
        drop(batch);
        let limits = self.limits;
        let mut full = self.take(|o| {
            o.encoder.records() >= limits.max_records
                || o.encoder.encoded_bytes() >= limits.max_bytes
        });
        full.extend(self.take_over_cap());
        if !full.is_empty() {
            self.flush(full).await?;
            self.compact_due();
        }
        metrics::set_sink_buffered(F::SINK, self.buffered_bytes());
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), SinkError> {
        // A partition given up in a rebalance: its open objects will never be committed and
        // its next owner replays them, so they are dropped, not written.
        let stale = self.take(|o| !o.tokens.iter().any(AckToken::is_current));
        if !stale.is_empty() {
            tracing::info!(
                sink = F::SINK,
                objects = stale.len(),
                "open objects of revoked partitions dropped; their next owner replays them"
            );
        }
        let max_age = self.limits.max_age;
        let due = self.take(|o| o.opened_at.elapsed() >= max_age);
        self.flush(due).await?;
        self.compact_due();
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        self.take(|o| !o.tokens.iter().any(AckToken::is_current));
        let all = self.take(|_| true);
        self.flush(all).await?;
        self.compact_due();
        if let Some(compactor) = &mut self.compactor {
            compactor.stop().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;
    use object_store::{ObjectStoreExt, PutPayload};

    use super::*;
    use crate::health::Health;

    /// A lake sink on a fresh directory (objects close after 1 s), fed one valid event at
    /// offset 7 of `events/0`: the directory, its writer, the sink's input and driver, and
    /// the partitions whose acknowledgements the event's batch is registered with.
    struct Harness {
        directory: tempfile::TempDir,
        writer: ObjectWriter,
        input: Option<tokio::sync::mpsc::Sender<Arc<DecodedBatch>>>,
        driver: Option<tokio::task::JoinHandle<Result<(), SinkError>>>,
        partitions: crate::partitions::Partitions,
    }

    impl Harness {
        /// The sink and its directory; `before` runs on the writer first.
        async fn start<F, Fut>(before: F) -> Harness
        where
            F: FnOnce(ObjectWriter) -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            Harness::start_compacting(None, before).await
        }

        /// The same, compacting each hour `compact_after` past its end, if given.
        async fn start_compacting<F, Fut>(compact_after: Option<Duration>, before: F) -> Harness
        where
            F: FnOnce(ObjectWriter) -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            use crate::sink::lake::{LakeFormat, ParquetEncoder};
            use crate::sink::run_sink;

            let directory = tempfile::tempdir().unwrap();
            let lake = LakeConfig::in_directory(directory.path(), compact_after);
            let writer = ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap();
            before(writer.clone()).await;
            let mut sink = ObjectSink::new(
                LakeFormat {
                    source_kind: "kafka",
                },
                ParquetEncoder::new,
                writer.clone(),
                ObjectLimits::from_config(&lake),
            );
            if let Some(after) = compact_after {
                sink = sink.compacting(crate::sink::compact::Compactor::start(
                    writer.clone(),
                    after,
                ));
            }
            let (input, receiver) = tokio::sync::mpsc::channel(4);
            let driver = tokio::spawn(run_sink(Box::new(sink), receiver));
            Harness {
                directory,
                writer,
                input: Some(input),
                driver: Some(driver),
                partitions: crate::partitions::Partitions::new(crate::ack::AckTracker::new()),
            }
        }

        /// Sends one valid event at offset 7 of `events/0`, event time 2025-11-25T17:00Z.
        async fn send_event(&self) {
            self.send(7, 1_764_090_000_000).await;
        }

        /// Sends one valid event at `offset` of `events/0` with event time `time_ms`.
        async fn send(&self, offset: u64, time_ms: i64) {
            use crate::decode::decode_batch;
            use crate::decode::{DecodeLimits, RawMessage};
            use crate::source::RawBatch;

            let event = format!(
                r#"{{"event_id":"e{offset}","event_type":"heart_rate","event_created":{time_ms},"studio_id":"s1","class_id":"c1","member_id":"m1","event_data":{{"bpm":120}}}}"#
            );
            let raw = RawBatch {
                partition: PartitionId::new("events", 0),
                generation: 0,
                messages: vec![RawMessage {
                    offset,
                    timestamp_ms: None,
                    key: None,
                    payload: Some(Bytes::from(event)),
                }],
            };
            let limits = DecodeLimits {
                max_message_bytes: 1 << 20,
                max_clock_skew_ms: i64::MAX / 2,
            };
            for batch in decode_batch(
                &mut crate::decode::Decoder::default(),
                raw,
                &limits,
                500,
                1_764_090_000_000,
                self.partitions.acks(),
            ) {
                let input = self.input.as_ref().expect("not closed");
                input.send(Arc::new(batch)).await.unwrap();
            }
        }

        /// Objects written to the event's hour.
        fn objects_written(&self) -> usize {
            self.objects_in("events/dt=2025-11-25/hour=17")
        }

        /// Objects written to `folder`.
        fn objects_in(&self, folder: &str) -> usize {
            std::fs::read_dir(self.directory.path().join(folder)).map_or(0, Iterator::count)
        }

        /// Waits until the sink has acknowledged everything sent so far.
        async fn until_acknowledged(&self, through: u64) {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self
                .partitions
                .acks()
                .take_committable()
                .iter()
                .any(|(_, next)| *next > through)
            {
                assert!(
                    Instant::now() < deadline,
                    "position {through} was not written"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// Closes the input and waits for the sink to finish (it flushes what is open).
        async fn close(&mut self) {
            self.input.take();
            if let Some(driver) = self.driver.take() {
                driver.await.unwrap().unwrap();
            }
        }
    }

    #[tokio::test]
    async fn an_old_object_is_flushed_with_no_new_input() {
        let mut sink = Harness::start(|_| async {}).await;
        sink.send_event().await;

        // The input stays open and silent: only the age limit can close the object.
        let deadline = Instant::now() + Duration::from_secs(10);
        let committable = loop {
            let moved = sink.partitions.acks().take_committable();
            if !moved.is_empty() {
                break moved;
            }
            assert!(
                Instant::now() < deadline,
                "the object was not flushed by age"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(committable, vec![(PartitionId::new("events", 0), 8)]);
        assert_eq!(
            sink.objects_written(),
            1,
            "one object, acknowledged only once written"
        );
        sink.close().await;
    }

    // Time is paused: it moves when every task waits on a timer, so the sink's age ticks
    // pass the object's age limit while the test sleeps, however busy the machine is. A wrong
    // write would still be seen: closing waits for the sink, and so for any write it began.
    #[tokio::test(start_paused = true)]
    async fn open_objects_of_a_revoked_partition_are_dropped_not_written() {
        let mut sink = Harness::start(|_| async {}).await;
        sink.send_event().await;
        // The partition is given up before the object is old enough to be written.
        sink.partitions.revoke(&PartitionId::new("events", 0));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(sink.partitions.acks().take_committable().is_empty());
        sink.close().await;
        assert_eq!(
            sink.objects_written(),
            0,
            "nothing written for a partition its next owner replays"
        );
    }

    #[tokio::test]
    async fn an_hour_is_compacted_once_the_partition_is_past_it() {
        let mut sink = Harness::start_compacting(Some(Duration::from_secs(60)), |_| async {}).await;
        let hour_start = 1_764_090_000_000;
        // Two objects of the hour (each cut by age), then one of the next hour past the delay.
        sink.send(1, hour_start + 1_000).await;
        sink.until_acknowledged(1).await;
        sink.send(2, hour_start + 2_000).await;
        sink.until_acknowledged(2).await;
        let folder = "events/dt=2025-11-25/hour=17";
        assert_eq!(sink.objects_in(folder), 2);
        sink.send(3, hour_start + HOUR_MS + 61_000).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while sink.objects_in(folder) != 1 {
            assert!(Instant::now() < deadline, "the hour was not compacted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let names: Vec<String> = std::fs::read_dir(sink.directory.path().join(folder))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            vec![format!("kafka-events-0-{:020}-{:020}.parquet", 1, 2)]
        );
        sink.close().await;
    }

    #[tokio::test]
    async fn an_index_entry_whose_object_is_missing_does_not_hide_events() {
        // A crash between an index entry and its object: the entry covers offset 7.
        let partition = PartitionId::new("events", 0);
        let hour = 1_764_090_000_000 / HOUR_MS;
        let entry = Arc::new(std::sync::Mutex::new(None));
        let mut sink = Harness::start(|writer| {
            let (entry, partition) = (Arc::clone(&entry), partition.clone());
            async move {
                let key = writer.index_key("events", &partition, hour, 5, 9);
                writer
                    .store()
                    .put(&key, PutPayload::from_bytes(Bytes::new()))
                    .await
                    .unwrap();
                *entry.lock().unwrap() = Some(key);
            }
        })
        .await;
        sink.send_event().await;
        sink.close().await;
        assert_eq!(
            sink.objects_written(),
            1,
            "the event is written: its only copy never made it"
        );
        let entry = entry.lock().unwrap().clone().unwrap();
        let listed: Vec<String> = sink
            .writer
            .store()
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert!(
            !listed.contains(&entry.to_string()),
            "the stale entry is gone: {listed:?}"
        );
    }
}
