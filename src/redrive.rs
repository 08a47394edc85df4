//! `classpulse redrive`: dead letters read back from the lake and sent through the pipeline
//! again once their cause is fixed (a message limit raised, a schema version learned, a
//! studio's clock corrected), without writing twice what already made it.
//!
//! ```text
//! dead-letters/dt=.../hour=.../*.ndjson.zst     received in [from, to), of the reasons asked
//!   -> RedriveSource                            one partition per original partition and run
//!   -> decoder (today's rules)                  still invalid: counted by reason, left where it is
//!   -> judge                                    id already in the lake (or earlier in this run):
//!                                               duplicate, left out; else late (the classes'
//!                                               aggregates are done without it)
//!   -> lake (source `redrive`) and events table
//! ```
//!
//! The original dead letters stay: the lake is append-only, and a redrive run twice (or
//! stopped half way and run again) writes nothing twice, because everything it wrote is in the
//! lake when the next run looks. Aggregates are not recomputed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::Deserialize;

use crate::ack::PartitionId;
use crate::decode::Judge;
use crate::decode::{decode_message, DecodeLimits, RawMessage};
use crate::event::{fingerprint, IdSet, PerformanceEvent, Verdict};
use crate::source::{RawBatch, Source, SourceError};
use crate::store::{hour_folder, ObjectWriter, HOUR_MS};

/// The source kind of what a redrive writes: the lake's `source` column, object names.
pub const KIND: &str = "redrive";

/// Why a redrive could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The time range is empty or reversed.
    #[error("--from ({from}) must be before --to ({to})")]
    EmptyRange {
        /// Start.
        from: DateTime<Utc>,
        /// End.
        to: DateTime<Utc>,
    },
    /// An object could not be listed or read.
    #[error("reading {path}: {detail}")]
    Read {
        /// The object or folder.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A dead-letter line is not what the dead-letter sink writes.
    #[error("{path} line {line}: {detail}")]
    Line {
        /// The object.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        detail: String,
    },
}

/// Which dead letters to send again.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Received at or after this.
    pub from: DateTime<Utc>,
    /// Received before this.
    pub to: DateTime<Utc>,
    /// Only these reasons (all when empty).
    pub reasons: Vec<String>,
}

/// One dead-letter line, as the dead-letter sink writes it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeadLetter {
    /// Reason code.
    pub reason: String,
    /// Source kind it came from.
    pub source: String,
    /// Topic or stream.
    pub stream: String,
    /// Partition number.
    pub partition: u32,
    /// Offset of its message.
    pub position: u64,
    /// Index within a batched message.
    #[serde(default)]
    pub index: Option<u32>,
    /// When it was received (RFC 3339).
    received_at: String,
    #[serde(default)]
    raw: Option<String>,
    #[serde(default)]
    raw_base64: Option<String>,
}

impl DeadLetter {
    /// When it was received.
    pub fn received_at(&self) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(&self.received_at)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("received_at {:?}: {e}", self.received_at))
    }

    /// The input exactly as received.
    fn raw(&self) -> Result<Bytes, String> {
        match (&self.raw, &self.raw_base64) {
            (Some(text), _) => Ok(Bytes::from(text.clone())),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(Bytes::from)
                .map_err(|e| format!("raw_base64: {e}")),
            (None, None) => Err("neither raw nor raw_base64".to_owned()),
        }
    }

    /// The same input written twice (a replayed position) has the same key.
    fn key(&self) -> (String, String, u32, u64, Option<u32>) {
        (
            self.source.clone(),
            self.stream.clone(),
            self.partition,
            self.position,
            self.index,
        )
    }
}

/// The dead letters selected, read from every dead-letter object of the hours the range
/// touches, each input once, in source position order.
pub async fn read_dead_letters(
    lake: &ObjectWriter,
    selection: &Selection,
) -> Result<Vec<DeadLetter>, RedriveError> {
    if selection.from >= selection.to {
        return Err(RedriveError::EmptyRange {
            from: selection.from,
            to: selection.to,
        });
    }
    let mut letters = BTreeMap::new();
    for hour in hours_between(selection.from, selection.to) {
        let folder = lake.path(&hour_folder("dead-letters", hour));
        for path in list(lake, &folder, ".ndjson.zst").await? {
            let bytes = read_object(lake, &path).await?;
            let read_error = |detail: String| RedriveError::Read {
                path: path.to_string(),
                detail,
            };
            let text = zstd::decode_all(bytes.as_ref()).map_err(|e| read_error(e.to_string()))?;
            for (number, line) in text.split(|b| *b == b'\n').enumerate() {
                if line.is_empty() {
                    continue;
                }
                let line_error = |detail: String| RedriveError::Line {
                    path: path.to_string(),
                    line: number + 1,
                    detail,
                };
                let letter: DeadLetter =
                    serde_json::from_slice(line).map_err(|e| line_error(e.to_string()))?;
                let received_at = letter.received_at().map_err(line_error)?;
                let wanted = (selection.from..selection.to).contains(&received_at)
                    && (selection.reasons.is_empty() || selection.reasons.contains(&letter.reason));
                if wanted {
                    letters.entry(letter.key()).or_insert(letter);
                }
            }
        }
    }
    Ok(letters.into_values().collect())
}

/// What the decoder makes of the dead letters today: the now-valid events, and the count of
/// inputs still rejected by reason.
pub fn decode_again(
    letters: &[DeadLetter],
    limits: &DecodeLimits,
) -> (Vec<PerformanceEvent>, BTreeMap<&'static str, u64>) {
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    for letter in letters {
        if let Ok(message) = message_of(letter, 0) {
            let now_ms = Utc::now().timestamp_millis();
            decode_message(&message, limits, now_ms, &mut events, &mut rejected);
        }
    }
    let mut still = BTreeMap::new();
    for input in &rejected {
        *still.entry(input.rejection.reason.as_str()).or_insert(0) += 1;
    }
    (events, still)
}

/// A dead letter as the message it was, at `offset` of its redrive partition. The clock-skew
/// rule measures from when it was first received, as it did then.
fn message_of(letter: &DeadLetter, offset: u64) -> Result<RawMessage, String> {
    Ok(RawMessage {
        offset,
        timestamp_ms: Some(letter.received_at()?.timestamp_millis()),
        key: None,
        payload: Some(letter.raw()?),
    })
}

/// The ids of the events the lake holds in the given event-time hours, by fingerprint.
pub struct LakeIds(IdSet);

impl LakeIds {
    /// Reads the `event_id` column of every lake object of `hours` (epoch hours).
    pub async fn read(lake: &ObjectWriter, hours: &BTreeSet<i64>) -> Result<LakeIds, RedriveError> {
        let mut ids = IdSet::default();
        for hour in hours {
            let folder = lake.path(&hour_folder("events", *hour));
            for path in list(lake, &folder, ".parquet").await? {
                let bytes = read_object(lake, &path).await?;
                let read_error = |detail: String| RedriveError::Read {
                    path: path.to_string(),
                    detail,
                };
                let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .map_err(|e| read_error(e.to_string()))?;
                let only_ids = ProjectionMask::columns(builder.parquet_schema(), ["event_id"]);
                let reader = builder
                    .with_projection(only_ids)
                    .build()
                    .map_err(|e| read_error(e.to_string()))?;
                for batch in reader {
                    let batch = batch.map_err(|e| read_error(e.to_string()))?;
                    let column = batch
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow_array::StringArray>()
                        .ok_or_else(|| read_error("event_id is not a string column".into()))?;
                    ids.extend(column.iter().flatten().map(fingerprint));
                }
            }
        }
        Ok(LakeIds(ids))
    }

    /// Whether `event_id` is among them.
    pub fn contains(&self, event_id: &str) -> bool {
        self.0.contains(&fingerprint(event_id))
    }

    /// How many ids were read.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The verdict of each redriven event: a duplicate if the lake holds its id or this run has
/// passed it already, else late (its class's aggregates are final without it).
pub fn judge(lake: LakeIds) -> Judge {
    let passed = Mutex::new(IdSet::default());
    Arc::new(move |event: &PerformanceEvent| {
        let id = fingerprint(&event.event_id);
        let mut passed = passed.lock().unwrap_or_else(|e| e.into_inner());
        if lake.0.contains(&id) || !passed.insert(id) {
            Verdict::Duplicate
        } else {
            Verdict::Late
        }
    })
}

/// The selected dead letters as a bounded source: one partition per original partition,
/// named with the run (`{source}.{stream}.{run}`) so a later run never writes an object of the
/// same name; offsets count the partition's dead letters in position order.
pub struct RedriveSource {
    batches: VecDeque<RawBatch>,
}

impl RedriveSource {
    /// Batches of at most `batch_messages` dead letters.
    pub fn new(letters: &[DeadLetter], run: &str, batch_messages: usize) -> RedriveSource {
        let mut by_partition: BTreeMap<PartitionId, Vec<RawMessage>> = BTreeMap::new();
        for letter in letters {
            let partition = PartitionId::new(
                format!("{}.{}.{run}", letter.source, letter.stream),
                letter.partition,
            );
            let messages = by_partition.entry(partition).or_default();
            let offset = messages.len() as u64;
            match message_of(letter, offset) {
                Ok(message) => messages.push(message),
                Err(detail) => tracing::warn!(
                    source = %letter.source, stream = %letter.stream, partition = letter.partition,
                    position = letter.position, detail, "dead letter without its input; left alone"
                ),
            }
        }
        let mut batches = VecDeque::new();
        for (partition, messages) in by_partition {
            for chunk in messages.chunks(batch_messages.max(1)) {
                batches.push_back(RawBatch {
                    partition: partition.clone(),
                    generation: 0,
                    messages: chunk.to_vec(),
                });
            }
        }
        RedriveSource { batches }
    }
}

#[async_trait]
impl Source for RedriveSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
        Ok(self.batches.pop_front())
    }

    async fn commit(&mut self, _frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
        Ok(()) // nothing to commit: a run reads its selection once
    }
}

/// Epoch hours from the one holding `from` to the one holding the last instant before `to`.
fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> std::ops::RangeInclusive<i64> {
    let first = from.timestamp_millis().div_euclid(HOUR_MS);
    let last = (to.timestamp_millis() - 1).div_euclid(HOUR_MS);
    first..=last
}

/// The objects directly under `folder` whose names end with `extension`.
async fn list(
    lake: &ObjectWriter,
    folder: &Path,
    extension: &str,
) -> Result<Vec<Path>, RedriveError> {
    let mut paths: Vec<Path> = lake
        .store()
        .list(Some(folder))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| RedriveError::Read {
            path: folder.to_string(),
            detail: e.to_string(),
        })?;
    paths.retain(|path| path.as_ref().ends_with(extension));
    paths.sort();
    Ok(paths)
}

/// The whole of one object.
async fn read_object(lake: &ObjectWriter, path: &Path) -> Result<Bytes, RedriveError> {
    let read_error = |e: object_store::Error| RedriveError::Read {
        path: path.to_string(),
        detail: e.to_string(),
    };
    lake.store()
        .get(path)
        .await
        .map_err(read_error)?
        .bytes()
        .await
        .map_err(read_error)
}

/// The event-time hours of `events`.
pub fn hours_of(events: &[PerformanceEvent]) -> BTreeSet<i64> {
    events
        .iter()
        .map(|e| e.event_time_ms.div_euclid(HOUR_MS))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(line: &str) -> DeadLetter {
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn a_range_covers_the_hours_it_touches() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let hours = hours_between(at("2026-11-25T17:30:00Z"), at("2026-11-25T19:00:00Z"));
        let folders: Vec<String> = hours.map(|h| hour_folder("dead-letters", h)).collect();
        assert_eq!(
            folders,
            [
                "dead-letters/dt=2026-11-25/hour=17",
                "dead-letters/dt=2026-11-25/hour=18"
            ]
        );
    }

    #[test]
    fn raw_input_comes_back_byte_for_byte() {
        let text = letter(
            r#"{"reason":"too_large","detail":"d","source":"kafka","stream":"t","partition":2,"position":7,"received_at":"2026-11-25T17:00:00Z","raw":"{\"a\":1}"}"#,
        );
        assert_eq!(text.raw().unwrap(), Bytes::from_static(b"{\"a\":1}"));
        let binary = letter(
            r#"{"reason":"not_json","detail":"d","source":"kafka","stream":"t","partition":2,"position":8,"index":1,"received_at":"2026-11-25T17:00:00Z","raw_base64":"/w=="}"#,
        );
        assert_eq!(binary.raw().unwrap(), Bytes::from_static(&[0xff]));
        assert_eq!(binary.key().4, Some(1));
    }

    #[test]
    fn partitions_are_named_by_run_and_offsets_count_in_position_order() {
        let line = |position: u64, partition: u32| {
            letter(&format!(
                r#"{{"reason":"too_large","detail":"d","source":"kafka","stream":"t","partition":{partition},"position":{position},"received_at":"2026-11-25T17:00:00Z","raw":"x"}}"#
            ))
        };
        let letters = [line(5, 0), line(9, 0), line(12, 0), line(3, 1)];
        let mut source = RedriveSource::new(&letters, "r1", 2);
        let batches: Vec<RawBatch> = std::iter::from_fn(|| source.batches.pop_front()).collect();
        let shape: Vec<(String, u32, Vec<u64>)> = batches
            .iter()
            .map(|b| {
                let offsets = b.messages.iter().map(|m| m.offset).collect();
                (b.partition.stream.to_string(), b.partition.index, offsets)
            })
            .collect();
        assert_eq!(
            shape,
            [
                ("kafka.t.r1".to_owned(), 0, vec![0, 1]),
                ("kafka.t.r1".to_owned(), 0, vec![2]),
                ("kafka.t.r1".to_owned(), 1, vec![0]),
            ]
        );
    }

    #[test]
    fn the_judge_leaves_out_what_the_lake_holds_and_what_it_passed() {
        let limits = DecodeLimits {
            max_message_bytes: 1 << 20,
            max_clock_skew_ms: 60_000,
        };
        let event = |id: &str| {
            let json = format!(
                r#"{{"event_id":"{id}","event_type":"heart_rate","event_created":"2025-11-25T17:00:00Z","studio_id":"s","class_id":"c","member_id":"m","event_data":{{"bpm":120}}}}"#
            );
            let message = RawMessage {
                offset: 0,
                timestamp_ms: Some(1_764_090_000_000),
                key: None,
                payload: Some(Bytes::from(json)),
            };
            let (mut events, mut rejected) = (Vec::new(), Vec::new());
            decode_message(&message, &limits, 0, &mut events, &mut rejected);
            assert!(rejected.is_empty(), "{rejected:?}");
            events.remove(0)
        };
        let judge = judge(LakeIds([fingerprint("in-lake")].into_iter().collect()));
        assert_eq!(judge(&event("in-lake")), Verdict::Duplicate);
        assert_eq!(judge(&event("new")), Verdict::Late);
        assert_eq!(judge(&event("new")), Verdict::Duplicate);
    }

    #[test]
    fn fingerprints_tell_ids_apart() {
        assert_eq!(fingerprint("a"), fingerprint("a"));
        assert_ne!(fingerprint("a"), fingerprint("b"));
        assert_ne!(fingerprint("ab"), fingerprint("a") ^ fingerprint("b"));
    }
}
