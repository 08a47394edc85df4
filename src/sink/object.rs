//! Object sinks: records grouped into objects per partition and hour, written through
//! `object_store` (a local directory and S3 share one code path).
//!
//! The lake (Parquet) and the dead letters (zstd NDJSON) differ only in their [`ObjectFormat`];
//! opening, cutting, naming, writing with retries and acknowledging live here once.
//!
//! Object keys are `{prefix}/{folder}/dt=YYYY-MM-DD/hour=HH/{source}-{stream}-{partition}-{first}-{last}.{ext}`,
//! named by the source positions they hold, so a replay that cuts at the same positions
//! overwrites instead of duplicating.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::time::Instant;

use super::{DecodedBatch, Sink, SinkError};
use crate::ack::{AckToken, PartitionId};
use crate::config::{LakeConfig, LakeLocation};
use crate::health::Health;
use crate::log_limit::LogLimiter;
use crate::metrics;
use crate::retry::Backoff;
use crate::stats::Stats;

pub(crate) const HOUR_MS: i64 = 3_600_000;
/// A write failure of one sink and reason is logged at most this often (the rest are counted
/// in the next line, and all of them in `classpulse_sink_retries_total`).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Objects larger than this are uploaded in parts (S3 allows 5 GiB in one PUT, but parts
/// retry cheaper and stream faster).
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part but the last (S3's minimum is 5 MiB).
const MULTIPART_PART_BYTES: usize = 8 << 20;
/// Consecutive transient failures after which a sink reports not ready.
const FAILURES_BEFORE_NOT_READY: u32 = 3;
/// Longest wait between write attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// A request whose connection yields nothing for this long is given up (a hung server). Each
/// successful read restarts it, so a slow but moving upload of a large part is not cut.
const S3_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long object_store itself retries one request (throttling, a dropped connection) before
/// the error reaches the writer's own retry loop, which reports readiness and retries forever.
/// object_store's default of 3 minutes hid a hung S3 from `/readyz` for minutes.
const S3_RETRY_BUDGET: Duration = Duration::from_secs(15);

/// Encodes the records of one object.
pub trait Encoder: Send {
    /// Records appended so far.
    fn records(&self) -> usize;
    /// Bytes this encoder holds in memory (what the object would be if cut now, roughly).
    fn buffered_bytes(&self) -> usize;
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
        self.by_hour
            .entry(time_ms.div_euclid(HOUR_MS))
            .or_insert_with(|| OpenObject::new(new_encoder()))
    }
}

/// `{folder}/dt=YYYY-MM-DD/hour=HH` of an epoch hour: the Hive partition objects of that hour
/// go under.
pub(crate) fn hour_folder(folder: &str, hour: i64) -> String {
    let start = DateTime::<Utc>::from_timestamp_millis(hour * HOUR_MS).unwrap_or_default();
    format!(
        "{folder}/dt={}/hour={}",
        start.format("%Y-%m-%d"),
        start.format("%H")
    )
}

/// Where objects go, and how they are written.
#[derive(Clone)]
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (may be empty).
    prefix: String,
    /// S3 keeps user metadata; the local filesystem refuses it.
    supports_metadata: bool,
    /// Names the source in object keys ("kafka", "simulator").
    source_kind: &'static str,
    health: Health,
    /// Totals for the summary.
    stats: Arc<Stats>,
    /// Write failures, logged once per sink, reason and interval (S3 away fails every write).
    repeats: Arc<LogLimiter>,
}

impl ObjectWriter {
    /// Opens the lake's store. Connects to nothing yet.
    pub fn open(
        lake: &LakeConfig,
        source_kind: &'static str,
        health: Health,
        stats: Arc<Stats>,
    ) -> Result<ObjectWriter, SinkError> {
        let setup_error = |detail: String| SinkError::Setup {
            sink: "lake",
            detail,
        };
        let (store, prefix, supports_metadata): (Arc<dyn ObjectStore>, String, bool) =
            match &lake.location {
                LakeLocation::Local(directory) => {
                    std::fs::create_dir_all(directory).map_err(|e| {
                        setup_error(format!("cannot create {}: {e}", directory.display()))
                    })?;
                    let store = LocalFileSystem::new_with_prefix(directory)
                        .map_err(|e| setup_error(format!("{}: {e}", directory.display())))?;
                    (Arc::new(store), String::new(), false)
                }
                LakeLocation::S3 { bucket, prefix } => {
                    // Client options first: they include `allow_http`, which the endpoint
                    // override below sets.
                    let mut builder = AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_client_options(
                            object_store::ClientOptions::new().with_read_timeout(S3_READ_TIMEOUT),
                        )
                        .with_retry(object_store::RetryConfig {
                            max_retries: 3,
                            retry_timeout: S3_RETRY_BUDGET,
                            ..object_store::RetryConfig::default()
                        });
                    if let Some(endpoint) = &lake.s3_endpoint {
                        builder = builder
                            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                            .with_allow_http(endpoint.scheme() == "http")
                            .with_virtual_hosted_style_request(false);
                    }
                    let store = builder
                        .build()
                        .map_err(|e| setup_error(format!("s3://{bucket}: {e}")))?;
                    (Arc::new(store), prefix.clone(), true)
                }
            };
        Ok(ObjectWriter {
            store,
            prefix,
            supports_metadata,
            source_kind,
            health,
            stats,
            repeats: Arc::new(LogLimiter::new(FAILURE_LOG_INTERVAL)),
        })
    }

    /// The store, for readers (tests, redrive).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// `relative` under the store's prefix.
    pub fn path(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Where the replay index of `folder` for `partition` lives.
    fn index_dir(&self, folder: &str, partition: &PartitionId) -> Path {
        self.path(&format!(
            "_index/{folder}/{}-{}-{}",
            self.source_kind,
            sanitize(&partition.stream),
            partition.index
        ))
    }

    /// The index entry of an object: its positions and hour, in the name.
    fn index_key(
        &self,
        folder: &str,
        partition: &PartitionId,
        hour: i64,
        first: u64,
        last: u64,
    ) -> Path {
        let directory = self.index_dir(folder, partition);
        Path::from(format!("{directory}/{last:020}-{first:020}-{hour}"))
    }

    /// The objects of `partition` written with an index entry, as (hour, first, last). Entries
    /// that end before `from` (already committed) and entries whose object is missing (a
    /// crash between the two PUTs) are deleted, best effort.
    async fn written(
        &self,
        sink: &'static str,
        folder: &str,
        extension: &str,
        partition: &PartitionId,
        from: u64,
    ) -> Vec<(i64, u64, u64)> {
        let directory = self.index_dir(folder, partition);
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
        let keys: Vec<Path> = loop {
            match self
                .store
                .list(Some(&directory))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
            {
                Ok(keys) => break keys,
                Err(error) => {
                    let reason = classify(&error);
                    metrics::record_sink_retry(sink, reason);
                    self.health
                        .not_ready(sink, format!("{reason} listing {directory}: {error}"));
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        };
        let mut written = Vec::new();
        for key in keys {
            let Some(name) = key.filename() else { continue };
            let mut parts = name.splitn(3, '-');
            let (Some(last), Some(first), Some(hour)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let (Ok(last), Ok(first), Ok(hour)) = (
                last.parse::<u64>(),
                first.parse::<u64>(),
                hour.parse::<i64>(),
            ) else {
                continue;
            };
            if last < from {
                let _ = self.store.delete(&key).await;
                continue;
            }
            // The entry is written before its object: keep it only if the object made it.
            let object = self.key(folder, partition, hour, first, last, extension);
            match self.store.head(&object).await {
                Ok(_) => written.push((hour, first, last)),
                Err(object_store::Error::NotFound { .. }) => {
                    let _ = self.store.delete(&key).await;
                }
                // Unknown: keep the events (a copy too many beats a missing one).
                Err(error) => {
                    tracing::warn!(key = %object, error = %error, "cannot check an indexed object; its events are written again")
                }
            }
        }
        written
    }

    /// The source kind that names objects.
    pub fn source_kind(&self) -> &'static str {
        self.source_kind
    }

    /// The key of an object of `folder` holding `partition`'s records `first..=last` of `hour`.
    pub fn key(
        &self,
        folder: &str,
        partition: &PartitionId,
        hour: i64,
        first: u64,
        last: u64,
        extension: &str,
    ) -> Path {
        let name = format!(
            "{}/{}-{}-{}-{first:020}-{last:020}.{extension}",
            hour_folder(folder, hour),
            self.source_kind,
            sanitize(&partition.stream),
            partition.index,
        );
        self.path(&name)
    }

    /// Writes one object, retrying with backoff until it succeeds. Failures that retrying
    /// alone cannot fix (permissions, a missing bucket) mark `sink` not ready until a write
    /// succeeds again, and are logged at most once a minute.
    pub async fn put(
        &self,
        sink: &'static str,
        key: &Path,
        body: Bytes,
        metadata: &[(&'static str, String)],
    ) -> Duration {
        let mut attributes = Attributes::new();
        if self.supports_metadata {
            for (name, value) in metadata {
                attributes.insert(Attribute::Metadata((*name).into()), value.clone().into());
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
        loop {
            let started = Instant::now();
            match self.put_once(key, &body, attributes.clone()).await {
                Ok(_) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(sink, key = %key, attempts = backoff.attempts() + 1, "write succeeded after retries");
                    }
                    self.health.ready(sink);
                    return started.elapsed();
                }
                Err(error) => {
                    let reason = classify(&error);
                    metrics::record_sink_retry(sink, reason);
                    // Failures retrying cannot fix, and any failure that persists, make the sink
                    // not ready; one transient blip does not flap readiness.
                    if reason != "transient" || backoff.attempts() + 1 >= FAILURES_BEFORE_NOT_READY
                    {
                        self.health
                            .not_ready(sink, format!("{reason} writing {key}: {error}"));
                    }
                    if let Some(left_out) = self.repeats.admit(&format!("{sink} {reason}")) {
                        tracing::warn!(sink, key = %key, reason, error = %error, attempt = backoff.attempts() + 1, repeats_left_out = left_out, "write failed, retrying");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

impl ObjectWriter {
    /// One attempt: a single PUT, or a multipart upload for large objects (aborted on failure,
    /// so no parts are left behind to bill for).
    async fn put_once(
        &self,
        key: &Path,
        body: &Bytes,
        attributes: Attributes,
    ) -> object_store::Result<()> {
        if body.len() <= MULTIPART_THRESHOLD {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            return self
                .store
                .put_opts(key, PutPayload::from_bytes(body.clone()), options)
                .await
                .map(|_| ());
        }
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.store.put_multipart_opts(key, options).await?;
        for part in body.chunks(MULTIPART_PART_BYTES) {
            if let Err(error) = upload
                .put_part(PutPayload::from_bytes(body.slice_ref(part)))
                .await
            {
                let _ = upload.abort().await;
                return Err(error);
            }
        }
        match upload.complete().await {
            Ok(_) => Ok(()),
            Err(error) => {
                let _ = upload.abort().await;
                Err(error)
            }
        }
    }
}

/// A fixed-set reason for a failed write (metric label).
pub fn classify(error: &object_store::Error) -> &'static str {
    match error {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => "access_denied",
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            "not_supported"
        }
        // S3 LIST failures arrive as `Generic` with the HTTP status only in the message.
        object_store::Error::Generic { source, .. } => {
            let text = source.to_string();
            if text.contains("403 Forbidden") || text.contains("401 Unauthorized") {
                "access_denied"
            } else if timed_out(error) {
                "timeout"
            } else {
                "transient"
            }
        }
        _ if timed_out(error) => "timeout",
        _ => "transient",
    }
}

/// Whether a request was given up for want of an answer (a hung or unreachable server, not
/// one that answered with an error): anywhere in the error's chain of causes.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        // Not "timeout": object_store's retry errors quote their `retry_timeout` setting.
        if text.contains("timed out") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Keeps a stream name safe as one path segment.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A sink that writes objects of format `F`.
pub struct ObjectSink<F: ObjectFormat> {
    format: F,
    writer: ObjectWriter,
    limits: ObjectLimits,
    new_encoder: fn() -> F::Encoder,
    /// Open objects by partition.
    partitions: BTreeMap<PartitionId, PartitionObjects<F::Encoder>>,
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
        ("source", writer.source_kind.to_owned()),
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
    writer.stats.record_object(F::SINK, records, bytes);
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
                });
            if objects.generation != batch.generation {
                // Objects of an earlier turn are never committed and this turn replays them:
                // written now, they would duplicate what the replay writes.
                objects.by_hour.clear();
            }
            objects.generation = batch.generation;
            objects.written = written;
        }
        let objects = self
            .partitions
            .get_mut(&batch.partition)
            .expect("inserted above");
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
        drop(batch);
        let limits = self.limits;
        let mut full = self.take(|o| {
            o.encoder.records() >= limits.max_records
                || o.encoder.buffered_bytes() >= limits.max_bytes
        });
        full.extend(self.take_over_cap());
        if !full.is_empty() {
            self.flush(full).await?;
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
        self.flush(due).await
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        self.take(|o| !o.tokens.iter().any(AckToken::is_current));
        let all = self.take(|_| true);
        self.flush(all).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_given_up_for_want_of_an_answer_is_a_timeout_wherever_it_is_said() {
        #[derive(Debug)]
        struct Cause(&'static str, Option<Box<Cause>>);
        impl std::fmt::Display for Cause {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Cause {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|c| c as _)
            }
        }
        let generic = |cause: Cause| object_store::Error::Generic {
            store: "S3",
            source: Box::new(cause),
        };
        let hung = Cause(
            "Error after 1 retries in 20s, max_retries:3, retry_timeout:15s, source:error sending request",
            Some(Box::new(Cause("operation timed out", None))),
        );
        assert_eq!(classify(&generic(hung)), "timeout");
        // A retried server error quotes the retry_timeout setting: not a timeout.
        let refused = Cause(
            "Error after 3 retries in 2s, max_retries:3, retry_timeout:15s, source:error sending request",
            Some(Box::new(Cause("Connection refused (os error 111)", None))),
        );
        assert_eq!(classify(&generic(refused)), "transient");
        let denied = Cause("Client error with status 403 Forbidden", None);
        assert_eq!(classify(&generic(denied)), "access_denied");
    }

    #[test]
    fn keys_are_hive_partitioned_and_sort_by_position() {
        let lake = LakeConfig {
            location: LakeLocation::S3 {
                bucket: "lake".into(),
                prefix: "raw".into(),
            },
            s3_endpoint: Some("http://127.0.0.1:1".parse().unwrap()),
            max_events: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            max_buffer_bytes: 1 << 20,
        };
        let writer = ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap();
        let hour = DateTime::parse_from_rfc3339("2026-11-25T17:42:00Z")
            .unwrap()
            .timestamp_millis()
            / HOUR_MS;
        let key = writer.key(
            "events",
            &PartitionId::new("perf/events", 3),
            hour,
            42,
            1042,
            "parquet",
        );
        assert_eq!(
            key.as_ref(),
            "raw/events/dt=2026-11-25/hour=17/kafka-perf_events-3-00000000000000000042-00000000000000001042.parquet"
        );
    }

    /// A lake sink on a fresh directory (objects close after 1 s), fed one valid event at
    /// offset 7 of `events/0`: the directory, its writer, the sink's input and driver, and
    /// the tracker the event's batch is registered with.
    struct Harness {
        directory: tempfile::TempDir,
        writer: ObjectWriter,
        input: Option<tokio::sync::mpsc::Sender<Arc<DecodedBatch>>>,
        driver: Option<tokio::task::JoinHandle<Result<(), SinkError>>>,
        acks: crate::ack::AckTracker,
    }

    impl Harness {
        /// The sink and its directory; `before` runs on the writer first.
        async fn start<F, Fut>(before: F) -> Harness
        where
            F: FnOnce(ObjectWriter) -> Fut,
            Fut: std::future::Future<Output = ()>,
        {
            use crate::sink::lake::{LakeFormat, ParquetEncoder};
            use crate::sink::run_sink;

            let directory = tempfile::tempdir().unwrap();
            let lake = LakeConfig {
                location: LakeLocation::Local(directory.path().to_path_buf()),
                s3_endpoint: None,
                max_events: 1_000_000,
                max_bytes: 64 << 20,
                max_age: Duration::from_secs(1),
                max_buffer_bytes: 256 << 20,
            };
            let writer = ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap();
            before(writer.clone()).await;
            let sink = ObjectSink::new(
                LakeFormat {
                    source_kind: "kafka",
                },
                ParquetEncoder::new,
                writer.clone(),
                ObjectLimits::from_config(&lake),
            );
            let (input, receiver) = tokio::sync::mpsc::channel(4);
            let driver = tokio::spawn(run_sink(Box::new(sink), receiver));
            Harness {
                directory,
                writer,
                input: Some(input),
                driver: Some(driver),
                acks: crate::ack::AckTracker::new(),
            }
        }

        /// Sends one valid event at offset 7 of `events/0`, event time 2025-11-25T17:00Z.
        async fn send_event(&self) {
            use crate::decode::{DecodeLimits, RawMessage};
            use crate::pipeline::decode_batch;
            use crate::source::RawBatch;

            let event = r#"{"event_id":"e1","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s1","class_id":"c1","member_id":"m1","event_data":{"bpm":120}}"#;
            let raw = RawBatch {
                partition: PartitionId::new("events", 0),
                generation: 0,
                messages: vec![RawMessage {
                    offset: 7,
                    timestamp_ms: None,
                    key: None,
                    payload: Some(Bytes::from(event)),
                }],
            };
            let limits = DecodeLimits {
                max_message_bytes: 1 << 20,
                max_clock_skew_ms: 60_000,
            };
            for batch in decode_batch(
                &mut crate::decode::Decoder::default(),
                raw,
                &limits,
                500,
                1_764_090_000_000,
                &self.acks,
            ) {
                let input = self.input.as_ref().expect("not closed");
                input.send(Arc::new(batch)).await.unwrap();
            }
        }

        /// Objects written to the event's hour.
        fn objects_written(&self) -> usize {
            std::fs::read_dir(self.directory.path().join("events/dt=2025-11-25/hour=17"))
                .map_or(0, Iterator::count)
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
            let moved = sink.acks.take_committable();
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

    #[tokio::test]
    async fn open_objects_of_a_revoked_partition_are_dropped_not_written() {
        let mut sink = Harness::start(|_| async {}).await;
        sink.send_event().await;
        // The partition is given up before the object is old enough to be written.
        sink.acks.revoke(&PartitionId::new("events", 0));
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(sink.acks.take_committable().is_empty());
        sink.close().await;
        assert_eq!(
            sink.objects_written(),
            0,
            "nothing written for a partition its next owner replays"
        );
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

    #[test]
    fn sanitize_keeps_one_path_segment() {
        assert_eq!(sanitize("../../etc"), ".._.._etc");
        assert_eq!(sanitize("topic.v1-a_b"), "topic.v1-a_b");
    }
}
