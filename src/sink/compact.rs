//! Compaction: the lake objects of one partition's hour merged into one object, each class of
//! the hour a row group of its own.
//!
//! The lake sink cuts an object every few minutes (`CLASSPULSE_LAKE_MAX_AGE`), each class a
//! row group of a few minutes' rows. Once the hour is over in event time
//! (`CLASSPULSE_LAKE_COMPACT_AFTER` past its end, or the partition idle that long) and none of
//! its objects is still open, the sink hands it to its compactor, which:
//!
//! 1. writes a marker, `_compact/events/{source}-{stream}-{partition}/{hour}-{first}-{last}`,
//!    whose body names the inputs;
//! 2. writes the merged object's replay index entry, then the object, named by the first and
//!    last positions of its inputs (one PUT: a reader sees it whole or not at all);
//! 3. deletes the inputs, then their index entries, then the marker.
//!
//! A crash between 2 and 3 leaves the hour's rows twice; the partition's next turn finds the
//! marker and finishes the deletes (or drops the marker if the merged object never made it).
//! The merged object is a function of its inputs alone, so two compactors of the same inputs
//! write the same bytes under the same key. See decision 0022.

use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::statistics::Statistics;
use tokio::sync::mpsc;

use super::lake::{self, SCHEMA};
use crate::ack::PartitionId;
use crate::metrics;
use crate::store::{hour_folder, sanitize, ObjectWriter};

/// The lake's sink (metric label), folder and file extension.
const SINK: &str = "lake";
const FOLDER: &str = "events";
const EXTENSION: &str = "parquet";

/// Attempts at one compaction before it is given up (the hour stays as it is).
const ATTEMPTS: u32 = 5;

/// Jobs waiting for the compactor; beyond this the sink offers them again later.
const QUEUE: usize = 256;

/// How long a drain gives the queued compactions.
const DRAIN_BUDGET: Duration = Duration::from_secs(10);

/// Why a compaction could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The store failed a request; a later attempt may succeed.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// An input is not a lake object this version can merge (another schema, or rows of
    /// several classes in one row group); retrying will not help.
    #[error("{object}: {detail}")]
    Input { object: String, detail: String },
    /// Parquet could not be read or written.
    #[error("{0}")]
    Parquet(String),
}

impl CompactError {
    /// Whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CompactError::Store(_))
    }
}

/// One lake object of a partition's hour, named by its source positions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Input {
    key: Path,
    first: u64,
    last: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compacted {
    /// The merged object.
    pub key: Path,
    /// Objects merged into it.
    pub inputs: usize,
    /// Rows it holds.
    pub rows: usize,
    /// Row groups it holds (one a class, or more for a class past the writer's group size).
    pub row_groups: usize,
}

/// A row group of an input: its class and where it is.
struct Group {
    class: (Vec<u8>, Vec<u8>),
    input: usize,
    index: usize,
}

/// A merged object and what it holds.
#[derive(Debug)]
pub struct Merged {
    /// The Parquet object.
    pub body: Bytes,
    /// Rows it holds.
    pub rows: usize,
    /// Row groups it holds.
    pub row_groups: usize,
    /// Its footer's `classpulse.*` entries (keys without the prefix): its record count and
    /// event-time range, then the `metadata` it was given.
    pub metadata: Vec<(&'static str, String)>,
}

/// Merges lake objects, each holding one row group per class in (studio, class) order, into
/// one: a row group per class, rows in (member, time, position) order.
pub fn merge(
    inputs: &[(String, Bytes)],
    metadata: &[(&'static str, String)],
) -> Result<Merged, CompactError> {
    let parquet = |e: parquet::errors::ParquetError| CompactError::Parquet(e.to_string());
    let mut readers = Vec::with_capacity(inputs.len());
    let mut groups = Vec::new();
    let (mut min_time, mut max_time): (Option<String>, Option<String>) = (None, None);
    for (input, (name, bytes)) in inputs.iter().enumerate() {
        let refused = |detail: String| CompactError::Input {
            object: name.clone(),
            detail,
        };
        let reader =
            ArrowReaderMetadata::load(bytes, ArrowReaderOptions::new()).map_err(parquet)?;
        if reader.schema().fields() != SCHEMA.fields() {
            return Err(refused("not the lake's schema".into()));
        }
        let file = reader.metadata();
        let footer = |key: &str| {
            let entries = file.file_metadata().key_value_metadata()?;
            entries.iter().find(|kv| kv.key == key)?.value.clone()
        };
        min_time = [min_time, footer("classpulse.min-time")]
            .into_iter()
            .flatten()
            .min();
        max_time = [max_time, footer("classpulse.max-time")]
            .into_iter()
            .flatten()
            .max();
        let column = |name: &str| {
            file.file_metadata()
                .schema_descr()
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .ok_or_else(|| refused(format!("no {name} column")))
        };
        let (studio, class) = (column("studio_id")?, column("class_id")?);
        for (index, group) in file.row_groups().iter().enumerate() {
            let only = |column: usize, name: &str| match group.column(column).statistics() {
                Some(stats @ Statistics::ByteArray(_))
                    if stats.min_bytes_opt().is_some()
                        && stats.min_bytes_opt() == stats.max_bytes_opt() =>
                {
                    Ok(stats.min_bytes_opt().unwrap_or_default().to_vec())
                }
                _ => Err(refused(format!(
                    "row group {index} holds more than one {name}"
                ))),
            };
            groups.push(Group {
                class: (only(studio, "studio")?, only(class, "class")?),
                input,
                index,
            });
        }
        readers.push(reader);
    }
    // Each input's groups are in class order already; a stable sort keeps their order within
    // a class, input by input.
    groups.sort_by(|a, b| a.class.cmp(&b.class));

    let mut writer =
        ArrowWriter::try_new(Vec::new(), SCHEMA.clone(), Some(lake::writer_properties()))
            .map_err(parquet)?;
    let (mut rows, mut row_groups) = (0, 0);
    for class in groups.chunk_by(|a, b| a.class == b.class) {
        let mut batches = Vec::new();
        for group in class {
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
                inputs[group.input].1.clone(),
                readers[group.input].clone(),
            )
            .with_row_groups(vec![group.index])
            .with_batch_size(
                readers[group.input]
                    .metadata()
                    .row_group(group.index)
                    .num_rows()
                    .max(1) as usize,
            )
            .build()
            .map_err(parquet)?;
            for batch in reader {
                let batch = batch.map_err(|e| CompactError::Parquet(e.to_string()))?;
                batches.push(
                    RecordBatch::try_new(SCHEMA.clone(), batch.columns().to_vec())
                        .map_err(|e| CompactError::Parquet(e.to_string()))?,
                );
            }
        }
        let merged = lake::in_row_order(&batches).map_err(CompactError::Parquet)?;
        rows += merged.num_rows();
        writer.write(&merged).map_err(parquet)?;
        writer.flush().map_err(parquet)?;
        row_groups = writer.flushed_row_groups().len();
    }
    let mut footer = vec![
        ("record-count", rows.to_string()),
        ("min-time", min_time.unwrap_or_default()),
        ("max-time", max_time.unwrap_or_default()),
    ];
    footer.extend(metadata.iter().cloned());
    for (name, value) in &footer {
        writer
            .append_key_value_metadata(KeyValue::new(format!("classpulse.{name}"), value.clone()));
    }
    let body = writer.into_inner().map_err(parquet)?;
    Ok(Merged {
        body: Bytes::from(body),
        rows,
        row_groups,
        metadata: footer,
    })
}

/// The lake objects of `partition` in the folder of `hour`, in position order.
async fn inputs(
    writer: &ObjectWriter,
    partition: &PartitionId,
    hour: i64,
) -> Result<Vec<Input>, CompactError> {
    let folder = writer.path(&hour_folder(FOLDER, hour));
    let prefix = object_prefix(writer, partition);
    let mut found: Vec<Input> = writer
        .store()
        .list(Some(&folder))
        .try_filter_map(|meta| {
            let parsed = meta
                .location
                .filename()
                .and_then(|name| positions(name, &prefix))
                .map(|(first, last)| Input {
                    key: meta.location.clone(),
                    first,
                    last,
                });
            futures::future::ready(Ok(parsed))
        })
        .try_collect()
        .await?;
    found.sort_by_key(|input| (input.first, input.last));
    Ok(found)
}

/// How the names of `partition`'s objects begin.
fn object_prefix(writer: &ObjectWriter, partition: &PartitionId) -> String {
    format!(
        "{}-{}-{}-",
        writer.source_kind(),
        sanitize(&partition.stream),
        partition.index
    )
}

/// The first and last positions in an object name, if it is one of the objects `prefix`
/// begins.
fn positions(name: &str, prefix: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(prefix)?.strip_suffix(".parquet")?;
    let (first, last) = rest.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

/// Where `partition`'s compaction markers live.
fn marker_dir(writer: &ObjectWriter, partition: &PartitionId) -> Path {
    writer.path(&format!(
        "_compact/{FOLDER}/{}",
        object_prefix(writer, partition).trim_end_matches('-')
    ))
}

/// Whether a compaction of the hour the lake object `key` belongs to is under way (its marker
/// exists): it may have read the object before a change to it, and write the old rows again.
pub async fn under_way(writer: &ObjectWriter, key: &Path) -> object_store::Result<bool> {
    let Some((partition, hour)) = place_of(key) else {
        return Ok(false);
    };
    let markers = writer.path(&format!("_compact/{FOLDER}/{partition}"));
    let pending: Vec<_> = writer
        .store()
        .list(Some(&markers))
        .try_filter(|meta| {
            let marker_hour = meta
                .location
                .filename()
                .and_then(|name| name.split('-').next()?.parse::<i64>().ok());
            futures::future::ready(marker_hour == Some(hour))
        })
        .try_collect()
        .await?;
    Ok(!pending.is_empty())
}

/// The `{source}-{stream}-{partition}` and epoch hour of a lake object's key,
/// `.../dt=YYYY-MM-DD/hour=HH/{source}-{stream}-{partition}-{first}-{last}.parquet`.
fn place_of(key: &Path) -> Option<(String, i64)> {
    let folder = |name: &str| {
        key.parts()
            .find_map(|part| part.as_ref().strip_prefix(name).map(str::to_owned))
    };
    let start = chrono::NaiveDateTime::parse_from_str(
        &format!("{} {}:00", folder("dt=")?, folder("hour=")?),
        "%Y-%m-%d %H:%M",
    )
    .ok()?;
    let stem = key.filename()?.strip_suffix(".parquet")?;
    let (rest, _last) = stem.rsplit_once('-')?;
    let (partition, _first) = rest.rsplit_once('-')?;
    Some((
        partition.to_owned(),
        start.and_utc().timestamp_millis() / crate::store::HOUR_MS,
    ))
}

/// Merges the objects of `partition`'s `hour` into one; `None` when there is nothing to merge
/// (one object or none).
pub async fn compact_hour(
    writer: &ObjectWriter,
    partition: &PartitionId,
    hour: i64,
) -> Result<Option<Compacted>, CompactError> {
    let store = writer.store();
    let inputs = inputs(writer, partition, hour).await?;
    if inputs.len() < 2 {
        return Ok(None);
    }
    let (first, last) = (
        inputs[0].first,
        inputs.iter().map(|i| i.last).max().unwrap_or(0),
    );
    let key = writer.key(FOLDER, partition, hour, first, last, EXTENSION);

    let marker = Path::from(format!(
        "{}/{hour}-{first:020}-{last:020}",
        marker_dir(writer, partition)
    ));
    let listed: String = inputs.iter().map(|i| format!("{}\n", i.key)).collect();
    store.put(&marker, Bytes::from(listed).into()).await?;

    let started = Instant::now();
    let mut bodies = Vec::with_capacity(inputs.len());
    for input in &inputs {
        let body = store.get(&input.key).await?.bytes().await?;
        bodies.push((input.key.to_string(), body));
    }
    let metadata = vec![
        ("source", writer.source_kind().to_owned()),
        ("stream", partition.stream.to_string()),
        ("partition", partition.index.to_string()),
        ("first-position", first.to_string()),
        ("last-position", last.to_string()),
        ("compacted-from", inputs.len().to_string()),
        ("schema-version", "1".to_owned()),
        ("classpulse-version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    let merged = tokio::task::spawn_blocking(move || merge(&bodies, &metadata))
        .await
        .map_err(|e| CompactError::Parquet(format!("the merge did not finish: {e}")))?;
    let Merged {
        body,
        rows,
        row_groups,
        metadata,
    } = match merged {
        Ok(merged) => merged,
        Err(error) => {
            let _ = store.delete(&marker).await;
            return Err(error);
        }
    };

    // The merged object's index entry before the object, as the sink writes its own: a replay
    // of these positions skips what the merged object holds.
    let entry = writer.index_key(FOLDER, partition, hour, first, last);
    writer.put(SINK, &entry, Bytes::new(), &[]).await;
    writer.put(SINK, &key, body, &metadata).await;
    finish(writer, partition, hour, &inputs, &key).await?;
    store.delete(&marker).await?;
    metrics::record_lake_compaction(inputs.len(), rows, started.elapsed());
    tracing::info!(key = %key, inputs = inputs.len(), rows, row_groups, took_ms = started.elapsed().as_millis() as u64, "lake hour compacted");
    Ok(Some(Compacted {
        key,
        inputs: inputs.len(),
        rows,
        row_groups,
    }))
}

/// Deletes the inputs merged into `merged`, then their index entries.
async fn finish(
    writer: &ObjectWriter,
    partition: &PartitionId,
    hour: i64,
    inputs: &[Input],
    merged: &Path,
) -> Result<(), CompactError> {
    let store = writer.store();
    for input in inputs.iter().filter(|input| input.key != *merged) {
        ignore_missing(store.delete(&input.key).await)?;
    }
    for input in inputs.iter().filter(|input| input.key != *merged) {
        let entry = writer.index_key(FOLDER, partition, hour, input.first, input.last);
        ignore_missing(store.delete(&entry).await)?;
    }
    Ok(())
}

fn ignore_missing(result: object_store::Result<()>) -> Result<(), CompactError> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Finishes the compactions of `partition` a crash cut short: where the merged object exists,
/// its inputs are deleted; where it does not, the inputs stay. Returns how many were found.
pub async fn resume(writer: &ObjectWriter, partition: &PartitionId) -> Result<usize, CompactError> {
    let store = writer.store();
    let markers: Vec<Path> = store
        .list(Some(&marker_dir(writer, partition)))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    for marker in &markers {
        let Some((hour, first, last)) = marker.filename().and_then(|name| {
            let mut parts = name.splitn(3, '-');
            Some((
                parts.next()?.parse::<i64>().ok()?,
                parts.next()?.parse::<u64>().ok()?,
                parts.next()?.parse::<u64>().ok()?,
            ))
        }) else {
            continue;
        };
        let merged = writer.key(FOLDER, partition, hour, first, last, EXTENSION);
        match store.head(&merged).await {
            Ok(_) => {
                let listed = store.get(marker).await?.bytes().await?;
                let prefix = object_prefix(writer, partition);
                let inputs: Vec<Input> = String::from_utf8_lossy(&listed)
                    .lines()
                    .filter_map(|line| {
                        let key = Path::from(line);
                        let (first, last) = positions(key.filename()?, &prefix)?;
                        Some(Input { key, first, last })
                    })
                    .collect();
                finish(writer, partition, hour, &inputs, &merged).await?;
                tracing::info!(key = %merged, inputs = inputs.len(), "an interrupted lake compaction finished");
            }
            Err(object_store::Error::NotFound { .. }) => {
                tracing::info!(marker = %marker, "an interrupted lake compaction dropped; its objects stay");
            }
            Err(error) => return Err(error.into()),
        }
        ignore_missing(store.delete(marker).await)?;
    }
    Ok(markers.len())
}

/// What the sink asks of its compactor.
#[derive(Debug)]
pub enum Job {
    /// Finish what a crash cut short, at a partition's new turn.
    Resume(PartitionId),
    /// Merge an hour's objects.
    Compact(PartitionId, i64),
}

/// Runs the lake sink's compactions one at a time, off the sink's path.
pub struct Compactor {
    /// How long after an hour's end (in event time, or of idleness) it is compacted.
    pub after: Duration,
    jobs: Option<mpsc::Sender<Job>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Compactor {
    /// A compactor writing through `writer`, on a task of its own.
    pub fn start(writer: ObjectWriter, after: Duration) -> Compactor {
        let (jobs, mut queue) = mpsc::channel(QUEUE);
        let worker = tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                run(&writer, &job).await;
            }
        });
        Compactor {
            after,
            jobs: Some(jobs),
            worker: Some(worker),
        }
    }

    /// Queues `job`; false if the queue is full (offer it again later) or stopped.
    pub fn offer(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.try_send(job).is_ok())
    }

    /// Runs the queued compactions for at most `DRAIN_BUDGET`, then stops where it is (every
    /// step is safe to cut): a drain must end in time, and the partitions' next turns compact
    /// the hours left and finish a compaction cut short.
    pub async fn stop(&mut self) {
        self.jobs = None;
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        if tokio::time::timeout(DRAIN_BUDGET, &mut worker)
            .await
            .is_err()
        {
            worker.abort();
            tracing::info!("lake compactions left to the partitions' next turns");
        }
    }
}

/// Runs one job, retrying what may pass; a job that cannot be done is logged and counted.
async fn run(writer: &ObjectWriter, job: &Job) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=ATTEMPTS {
        let outcome = match job {
            Job::Resume(partition) => resume(writer, partition).await.map(|_| ()),
            Job::Compact(partition, hour) => {
                compact_hour(writer, partition, *hour).await.map(|_| ())
            }
        };
        match outcome {
            Ok(()) => return,
            Err(error) if error.is_retryable() && attempt < ATTEMPTS => {
                tracing::warn!(?job, %error, attempt, "lake compaction failed, retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                metrics::record_lake_compaction_failed();
                tracing::error!(?job, %error, "lake compaction given up; the hour's objects stay as they are");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::PutPayload;
    use proptest::prelude::*;

    use super::*;
    use crate::config::LakeConfig;
    use crate::event::PerformanceEvent;
    use crate::health::Health;
    use crate::sink::lake::tests::{arrivals, encode, event, groups};
    use crate::store::HOUR_MS;

    #[tokio::test]
    async fn a_compaction_is_under_way_while_its_hours_marker_exists() {
        let (_directory, writer) = lake();
        let partition = PartitionId::new("performance-events", 3);
        let hour = 490_000;
        let key = writer.key(FOLDER, &partition, hour, 10, 20, EXTENSION);
        assert!(!under_way(&writer, &key).await.unwrap());
        let marker = Path::from(format!(
            "{}/{hour}-{:020}-{:020}",
            marker_dir(&writer, &partition),
            0,
            20
        ));
        writer
            .store()
            .put(&marker, Bytes::new().into())
            .await
            .unwrap();
        assert!(under_way(&writer, &key).await.unwrap());
        let next_hour = writer.key(FOLDER, &partition, hour + 1, 30, 40, EXTENSION);
        assert!(!under_way(&writer, &next_hour).await.unwrap());
    }

    #[test]
    fn an_object_key_gives_its_partition_and_hour() {
        let key = Path::from(
            "lake/events/dt=2026-11-25/hour=17/kafka-performance-events-3-00000000000000000010-00000000000000000020.parquet",
        );
        let hour = chrono::DateTime::parse_from_rfc3339("2026-11-25T17:00:00Z")
            .unwrap()
            .timestamp_millis()
            / HOUR_MS;
        assert_eq!(
            place_of(&key),
            Some(("kafka-performance-events-3".to_owned(), hour))
        );
        assert_eq!(
            place_of(&Path::from(
                "lake/events/dt=2026-11-25/hour=17/no positions.parquet"
            )),
            None
        );
        assert_eq!(place_of(&Path::from("lake/events/x-1-2-3.parquet")), None);
    }

    #[test]
    fn positions_are_read_from_a_partitions_object_names_only() {
        let prefix = "kafka-events-1-";
        let name = "kafka-events-1-00000000000000000005-00000000000000000009.parquet";
        assert_eq!(positions(name, prefix), Some((5, 9)));
        let other = "kafka-events-12-00000000000000000005-00000000000000000009.parquet";
        assert_eq!(
            positions(other, prefix),
            None,
            "partition 12 is not partition 1"
        );
        assert_eq!(positions("kafka-events-1-5.parquet", prefix), None);
    }

    proptest! {
        // Objects cut anywhere from one stream of rows merge into the object all of them
        // would have made at once: the same row groups, the same rows in the same order.
        #[test]
        fn merged_objects_equal_one_object_of_all_their_rows(
            events in arrivals(),
            cuts in prop::collection::btree_set(1..200usize, 0..5),
        ) {
            let mut parts = Vec::new();
            let mut start = 0;
            for cut in cuts.into_iter().filter(|cut| *cut < events.len()).chain([events.len()]) {
                parts.push((format!("part-{start}"), encode(&events[start..cut])));
                start = cut;
            }
            let Merged { body: merged, rows, row_groups, .. } = merge(&parts, &[]).unwrap();
            let expected = groups(&encode(&events));
            prop_assert_eq!(rows, events.len());
            prop_assert_eq!(row_groups, expected.len());
            prop_assert_eq!(groups(&merged), expected);
        }
    }

    #[test]
    fn an_object_of_several_classes_a_row_group_is_refused_by_name() {
        // Written by hand in one row group, as no lake object is.
        let events = [event(1, "s1", "c1", "m1", 0), event(2, "s1", "c2", "m1", 0)];
        let mut writer = ArrowWriter::try_new(Vec::new(), SCHEMA.clone(), None).unwrap();
        let one = groups(&encode(&events));
        assert_eq!(one.len(), 2);
        let batches: Vec<RecordBatch> = {
            let reader = ParquetRecordBatchReaderBuilder::try_new(encode(&events))
                .unwrap()
                .build()
                .unwrap();
            reader.map(Result::unwrap).collect()
        };
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        let mixed = Bytes::from(writer.into_inner().unwrap());
        let error = merge(&[("mixed.parquet".into(), mixed)], &[]).unwrap_err();
        assert!(!error.is_retryable());
        assert_eq!(
            error.to_string(),
            "mixed.parquet: row group 0 holds more than one class"
        );
    }

    /// A lake in a fresh directory.
    fn lake() -> (tempfile::TempDir, ObjectWriter) {
        let directory = tempfile::tempdir().unwrap();
        let lake = LakeConfig::in_directory(directory.path(), None);
        let writer = ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap();
        (directory, writer)
    }

    /// The value of the footer's key `name`, if written.
    fn footer_value(body: &Bytes, name: &str) -> Option<String> {
        let reader = ArrowReaderMetadata::load(body, ArrowReaderOptions::new()).ok()?;
        let entries = reader.metadata().file_metadata().key_value_metadata()?;
        entries.iter().find(|kv| kv.key == name)?.value.clone()
    }

    const HOUR: i64 = 1_764_090_000_000 / HOUR_MS;

    /// Writes `events` as the object of `partition` and its index entry, as the sink does.
    async fn write(writer: &ObjectWriter, partition: &PartitionId, events: &[PerformanceEvent]) {
        let first = events.iter().map(|e| e.offset).min().unwrap();
        let last = events.iter().map(|e| e.offset).max().unwrap();
        let entry = writer.index_key(FOLDER, partition, HOUR, first, last);
        writer.put(SINK, &entry, Bytes::new(), &[]).await;
        let key = writer.key(FOLDER, partition, HOUR, first, last, EXTENSION);
        writer.put(SINK, &key, encode(events), &[]).await;
    }

    /// Every key in the store, relative to it.
    async fn keys(writer: &ObjectWriter) -> Vec<String> {
        let mut keys: Vec<String> = writer
            .store()
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// Events 0..n of a few classes in the hour, at positions 0..n.
    fn hour_of_events(n: usize) -> Vec<PerformanceEvent> {
        (0..n)
            .map(|id| {
                let time = HOUR * HOUR_MS + (id as i64 * 997) % HOUR_MS;
                event(
                    id,
                    "s1",
                    &format!("c{}", id % 3),
                    &format!("m{}", id % 5),
                    time,
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn an_hour_becomes_one_object_and_its_inputs_and_their_entries_go() {
        let (_directory, writer) = lake();
        let (mine, other) = (
            PartitionId::new("events", 1),
            PartitionId::new("events", 12),
        );
        let events = hour_of_events(90);
        for part in events.chunks(30) {
            write(&writer, &mine, part).await;
        }
        write(&writer, &other, &events[..10]).await;
        let before = keys(&writer).await;

        let compacted = compact_hour(&writer, &mine, HOUR).await.unwrap().unwrap();
        assert_eq!(
            (compacted.inputs, compacted.rows, compacted.row_groups),
            (3, 90, 3)
        );
        let merged = writer.key(FOLDER, &mine, HOUR, 0, 89, EXTENSION);
        assert_eq!(compacted.key, merged);

        let after = keys(&writer).await;
        let other_keys = |keys: &[String]| -> Vec<String> {
            keys.iter()
                .filter(|k| k.contains("-events-12"))
                .cloned()
                .collect()
        };
        assert_eq!(
            other_keys(&after),
            other_keys(&before),
            "another partition's objects stay"
        );
        let mine_keys: Vec<&String> = after
            .iter()
            .filter(|k| k.contains("-events-1-") || k.contains("-events-1/"))
            .collect();
        assert_eq!(
            mine_keys,
            vec![
                &format!("_index/events/kafka-events-1/{:020}-{:020}-{HOUR}", 89, 0),
                &merged.to_string(),
            ],
            "the merged object and its entry, no marker: {after:?}"
        );
        let body = writer
            .store()
            .get(&merged)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(groups(&body), groups(&encode(&events)));
        let count = footer_value(&body, "classpulse.record-count");
        assert_eq!(
            count.as_deref(),
            Some("90"),
            "the footer counts the merged rows"
        );

        // A replay of these positions skips what the merged object holds.
        let written = writer.written(SINK, FOLDER, EXTENSION, &mine, 0).await;
        assert_eq!(written, vec![(HOUR, 0, 89)]);
        // Done once: a second pass finds one object and leaves it.
        assert_eq!(compact_hour(&writer, &mine, HOUR).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_compaction_cut_short_is_finished_or_dropped_by_resume() {
        let (_directory, writer) = lake();
        let partition = PartitionId::new("events", 0);
        let events = hour_of_events(40);
        for part in events.chunks(20) {
            write(&writer, &partition, part).await;
        }
        let inputs = inputs(&writer, &partition, HOUR).await.unwrap();
        let listed: String = inputs.iter().map(|i| format!("{}\n", i.key)).collect();
        let marker = |first: u64, last: u64| {
            Path::from(format!(
                "{}/{HOUR}-{first:020}-{last:020}",
                marker_dir(&writer, &partition)
            ))
        };

        // Cut short before the merged object: the inputs stay, the marker goes.
        let store = writer.store();
        store
            .put(&marker(0, 39), PutPayload::from(listed.clone()))
            .await
            .unwrap();
        let before = keys(&writer).await;
        assert_eq!(resume(&writer, &partition).await.unwrap(), 1);
        let after = keys(&writer).await;
        let without_marker: Vec<String> = before
            .into_iter()
            .filter(|k| !k.starts_with("_compact"))
            .collect();
        assert_eq!(after, without_marker);

        // Cut short after it: the inputs and their entries go.
        store
            .put(&marker(0, 39), PutPayload::from(listed))
            .await
            .unwrap();
        let merged = writer.key(FOLDER, &partition, HOUR, 0, 39, EXTENSION);
        writer
            .put(
                SINK,
                &writer.index_key(FOLDER, &partition, HOUR, 0, 39),
                Bytes::new(),
                &[],
            )
            .await;
        writer.put(SINK, &merged, encode(&events), &[]).await;
        assert_eq!(resume(&writer, &partition).await.unwrap(), 1);
        assert_eq!(
            keys(&writer).await,
            vec![
                format!("_index/events/kafka-events-0/{:020}-{:020}-{HOUR}", 39, 0),
                merged.to_string(),
            ]
        );
        assert_eq!(
            resume(&writer, &partition).await.unwrap(),
            0,
            "nothing left to finish"
        );
    }
}
