//! Checking what classpulse wrote against the manifest: the lake's Parquet events (every valid
//! event exactly once, late ones flagged), the dead letters (every invalid event, with its
//! reason), every class's final results, and optionally the DynamoDB events table (every
//! valid event exactly once). Prints what differs, not only how much.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use arrow_array::{Array, BooleanArray, StringArray};
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use serde::Serialize;
use serde_json::Value;

use crate::expect::diff;
use crate::model::parse_event_id;
use crate::produce::{Manifest, SendTimes};

/// Examples of each kind of difference printed.
const EXAMPLES: usize = 10;

/// Where classpulse wrote.
#[derive(clap::Args, Debug, Clone)]
pub struct OutputArgs {
    /// The lake: `file://DIR` or `s3://bucket/prefix` (as CLASSPULSE_LAKE_URL).
    #[arg(long, default_value = "file://./classpulse-data")]
    pub lake: String,
    /// S3 endpoint of a local server (as CLASSPULSE_S3_ENDPOINT).
    #[arg(long)]
    pub s3_endpoint: Option<String>,
    /// DynamoDB endpoint of a local server.
    #[arg(long)]
    pub dynamodb_endpoint: Option<String>,
    /// The events table to check, if classpulse wrote one.
    #[arg(long)]
    pub events_table: Option<String>,
}

/// The outcome, by check.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub lake_rows: u64,
    pub lake_objects: u64,
    pub lake_bytes: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub late_flag_wrong: u64,
    pub unexpected_rows: u64,
    pub dead_letters: u64,
    pub dead_letters_missing: u64,
    pub dead_letters_wrong_reason: u64,
    pub dead_letters_unexpected: u64,
    pub classes_expected: u64,
    pub classes_missing: u64,
    pub classes_wrong: u64,
    pub table_events: Option<u64>,
    pub table_missing: u64,
    pub table_duplicated: u64,
    pub table_items: u64,
    /// How selectively a class-hour and a member-day read the lake.
    pub lake_selectivity: Option<crate::selectivity::Figures>,
    /// Milliseconds from first send to the lake object's write, per event in an object not
    /// merged by compaction.
    #[serde(skip)]
    pub lake_latency_ms: Option<hdrhistogram::Histogram<u64>>,
    pub differences: Vec<String>,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.late_flag_wrong == 0
            && self.unexpected_rows == 0
            && self.dead_letters_missing == 0
            && self.dead_letters_wrong_reason == 0
            && self.dead_letters_unexpected == 0
            && self.classes_missing == 0
            && self.classes_wrong == 0
            && self.table_missing == 0
            && self.table_duplicated == 0
    }

    fn differ(&mut self, kind: &str, count: u64, text: impl FnOnce() -> String) {
        if count <= EXAMPLES as u64 {
            self.differences.push(format!("{kind}: {}", text()));
        }
    }

    pub fn print(&self) {
        println!(
            "lake          {} rows in {} objects ({:.1} MB): {} missing, {} duplicated, {} with the wrong late flag, {} not sent by this run",
            self.lake_rows,
            self.lake_objects,
            self.lake_bytes as f64 / 1e6,
            self.missing,
            self.duplicated,
            self.late_flag_wrong,
            self.unexpected_rows
        );
        println!(
            "dead letters  {}: {} expected ones missing, {} with the wrong reason, {} unexpected",
            self.dead_letters,
            self.dead_letters_missing,
            self.dead_letters_wrong_reason,
            self.dead_letters_unexpected
        );
        println!(
            "aggregates    {} classes expected: {} missing, {} different",
            self.classes_expected, self.classes_missing, self.classes_wrong
        );
        if let Some(s) = &self.lake_selectivity {
            println!(
                "lake reads    {} row groups; rows read per row returned: a class-hour {:.1} (at most {:.1}), a member's day {:.1} (at most {:.1})",
                s.row_groups, s.class_hour.mean, s.class_hour.max, s.member_day.mean, s.member_day.max
            );
        }
        if let Some(events) = self.table_events {
            println!(
                "events table  {events} events in {} items: {} missing, {} duplicated",
                self.table_items, self.table_missing, self.table_duplicated
            );
        }
        for line in &self.differences {
            println!("  {line}");
        }
        println!(
            "{}",
            if self.clean() {
                "verify: clean"
            } else {
                "verify: DIFFERENCES"
            }
        );
    }
}

/// The lake's store and prefix.
pub fn open_lake(output: &OutputArgs) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    if let Some(dir) = output.lake.strip_prefix("file://") {
        std::fs::create_dir_all(dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)?;
        return Ok((Arc::new(store), String::new()));
    }
    let rest = output.lake.strip_prefix("s3://").with_context(|| {
        format!(
            "--lake must be file://DIR or s3://bucket/prefix, not {}",
            output.lake
        )
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(endpoint) = &output.s3_endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false);
    }
    Ok((
        Arc::new(builder.build()?),
        prefix.trim_matches('/').to_owned(),
    ))
}

fn under(prefix: &str, path: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(path)
    } else {
        ObjectPath::from(format!("{prefix}/{path}"))
    }
}

/// Runs every check.
pub async fn verify(dir: &Path, output: &OutputArgs) -> anyhow::Result<Verdict> {
    let manifest = Manifest::read(dir)?;
    let sends = SendTimes::read(dir).ok();
    verify_with(&manifest, sends.as_ref(), output).await
}

/// Runs every check against a manifest in hand.
pub async fn verify_with(
    manifest: &Manifest,
    sends: Option<&SendTimes>,
    output: &OutputArgs,
) -> anyhow::Result<Verdict> {
    let (store, prefix) = open_lake(output)?;
    let mut verdict = Verdict::default();
    check_lake(manifest, sends, &store, &prefix, &mut verdict).await?;
    check_dead_letters(manifest, &store, &prefix, &mut verdict).await?;
    check_aggregates(manifest, &store, &prefix, &mut verdict).await?;
    if let Some(table) = &output.events_table {
        check_events_table(manifest, output, table, &mut verdict).await?;
    }
    Ok(verdict)
}

/// Which valid events should be where: `expected[i]` is false for events never accepted.
struct Bitmap {
    bits: Vec<u64>,
}

impl Bitmap {
    fn new(n: u64) -> Bitmap {
        Bitmap {
            bits: vec![0; n.div_ceil(64) as usize],
        }
    }
    /// Sets bit `i`, returning whether it was set before.
    fn set(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let before = self.bits[word] & bit != 0;
        self.bits[word] |= bit;
        before
    }
    fn get(&self, i: u64) -> bool {
        self.bits[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }
}

/// Checks one copy of each id against the manifest's valid events; `late` is the lake's flag.
struct Ledger<'a> {
    manifest: &'a Manifest,
    late: HashSet<u64>,
    seen: Bitmap,
}

impl<'a> Ledger<'a> {
    fn new(manifest: &'a Manifest) -> Ledger<'a> {
        Ledger {
            manifest,
            late: manifest.expected.late.iter().copied().collect(),
            seen: Bitmap::new(manifest.valid_events),
        }
    }

    /// Returns the index if the id is one of this run's valid events and the first copy; a
    /// second copy is counted in the counter `duplicates` picks.
    fn record(
        &mut self,
        id: &str,
        verdict: &mut Verdict,
        place: &str,
        duplicates: fn(&mut Verdict) -> &mut u64,
    ) -> Option<u64> {
        let Some((run, index)) = parse_event_id(id) else {
            return None; // another producer's event sharing the lake
        };
        if run != self.manifest.run_id {
            return None;
        }
        if index >= self.manifest.valid_events
            || self.manifest.expected.rejected_valid.contains_key(&index)
        {
            verdict.unexpected_rows += 1;
            let n = verdict.unexpected_rows;
            verdict.differ(place, n, || {
                format!("{id} should have been rejected (index {index})")
            });
            return None;
        }
        if self.seen.set(index) {
            *duplicates(verdict) += 1;
            let n = *duplicates(verdict);
            verdict.differ(place, n, || format!("{id} is there more than once"));
            return None;
        }
        Some(index)
    }

    /// Counts the valid events never seen.
    fn missing(&self, verdict: &mut Verdict, place: &str) -> u64 {
        let mut missing = 0;
        for index in 0..self.manifest.valid_events {
            if !self.seen.get(index) && !self.manifest.expected.rejected_valid.contains_key(&index)
            {
                missing += 1;
                verdict.differ(place, missing, || {
                    format!(
                        "{} is missing",
                        crate::model::event_id(self.manifest.run_id, index)
                    )
                });
            }
        }
        missing
    }
}

async fn list(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjectPath,
) -> anyhow::Result<Vec<object_store::ObjectMeta>> {
    Ok(store.list(Some(prefix)).try_collect().await?)
}

/// The leaf columns of `schema` named `names`, in that order; `key` names the object.
pub fn leaf_indexes(
    schema: &parquet::schema::types::SchemaDescriptor,
    names: &[&str],
    key: &str,
) -> anyhow::Result<Vec<usize>> {
    names
        .iter()
        .map(|name| {
            schema
                .columns()
                .iter()
                .position(|c| c.name() == *name)
                .with_context(|| format!("{key} has no column {name}"))
        })
        .collect()
}

async fn check_lake(
    manifest: &Manifest,
    sends: Option<&SendTimes>,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut ledger = Ledger::new(manifest);
    let mut latency = hdrhistogram::Histogram::<u64>::new(3)?;
    let mut selectivity = crate::selectivity::Selectivity::default();
    let objects = list(store, &under(prefix, "events")).await?;
    for object in objects
        .iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
    {
        let bytes = store.get(&object.location).await?.bytes().await?;
        verdict.lake_objects += 1;
        verdict.lake_bytes += object.size;
        let written_ms = object.last_modified.timestamp_millis();
        let key = object.location.as_ref();
        selectivity.row_groups(key, &bytes)?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .with_context(|| format!("reading {key}"))?;
        // A merged hour was written when it was merged, not when its events first landed.
        let merged = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .is_some_and(|kv| kv.iter().any(|kv| kv.key == "classpulse.compacted-from"));
        let mut names = vec!["event_id", "late"];
        names.extend(crate::selectivity::COLUMNS);
        let columns = leaf_indexes(builder.parquet_schema(), &names, key)?;
        let mask = ProjectionMask::leaves(builder.parquet_schema(), columns);
        for batch in builder
            .with_projection(mask)
            .with_batch_size(65_536)
            .build()?
        {
            let batch = batch?;
            selectivity.rows(key, &batch)?;
            let ids = batch
                .column_by_name("event_id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                .context("event_id is not a string column")?;
            let late = batch
                .column_by_name("late")
                .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
                .context("late is not a boolean column")?;
            for row in 0..batch.num_rows() {
                verdict.lake_rows += 1;
                let id = ids.value(row);
                let Some(index) = ledger.record(id, verdict, "lake", |v| &mut v.duplicated) else {
                    continue;
                };
                let expected_late = ledger.late.contains(&index);
                if late.value(row) != expected_late {
                    verdict.late_flag_wrong += 1;
                    let n = verdict.late_flag_wrong;
                    verdict.differ("lake", n, || {
                        format!("{id}: late = {}, expected {expected_late}", late.value(row))
                    });
                }
                if let Some(sent) = sends
                    .filter(|_| !merged)
                    .and_then(|s| s.0.get(index as usize))
                    .filter(|t| **t != u32::MAX)
                {
                    let from = manifest.started_ms + i64::from(*sent);
                    latency.record((written_ms - from).max(0) as u64)?;
                }
            }
        }
    }
    verdict.missing = ledger.missing(verdict, "lake");
    verdict.lake_latency_ms = (!latency.is_empty()).then_some(latency);
    verdict.lake_selectivity = Some(selectivity.figures());
    Ok(())
}

/// The event id inside a raw input, if it has one.
fn raw_event_id(raw: &str) -> Option<&str> {
    let start = raw.find("\"event_id\":\"")? + "\"event_id\":\"".len();
    let len = raw[start..].find('"')?;
    Some(&raw[start..start + len])
}

async fn check_dead_letters(
    manifest: &Manifest,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for object in list(store, &under(prefix, "dead-letters")).await? {
        if !object.location.as_ref().ends_with(".ndjson.zst") {
            continue;
        }
        let bytes = store.get(&object.location).await?.bytes().await?;
        let text = zstd::decode_all(&bytes[..])?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let letter: Value = serde_json::from_slice(line)
                .with_context(|| format!("a dead letter in {} is not JSON", object.location))?;
            let reason = letter["reason"].as_str().unwrap_or("").to_owned();
            let raw = letter["raw"].as_str().unwrap_or("");
            let Some(id) = raw_event_id(raw) else {
                continue;
            };
            let Some((run, _)) = parse_event_id(id) else {
                continue;
            };
            if run != manifest.run_id {
                continue;
            }
            verdict.dead_letters += 1;
            if found.insert(id.to_owned(), reason).is_some() {
                verdict.dead_letters_unexpected += 1;
                let n = verdict.dead_letters_unexpected;
                verdict.differ("dead letters", n, || {
                    format!("{id} is there more than once")
                });
            }
        }
    }
    let expected = &manifest.expected;
    let wanted = expected
        .invalid
        .iter()
        .map(|(id, reason)| (id.clone(), reason.clone()))
        .chain(expected.rejected_valid.iter().map(|(index, reason)| {
            (
                crate::model::event_id(manifest.run_id, *index),
                reason.clone(),
            )
        }));
    let mut wanted_ids = HashSet::new();
    for (id, reason) in wanted {
        wanted_ids.insert(id.clone());
        match found.get(&id) {
            None => {
                verdict.dead_letters_missing += 1;
                let n = verdict.dead_letters_missing;
                verdict.differ("dead letters", n, || format!("{id} ({reason}) is missing"));
            }
            Some(got) if *got != reason => {
                verdict.dead_letters_wrong_reason += 1;
                let n = verdict.dead_letters_wrong_reason;
                verdict.differ("dead letters", n, || {
                    format!("{id}: reason {got}, expected {reason}")
                });
            }
            Some(_) => {}
        }
    }
    for (id, reason) in &found {
        if !wanted_ids.contains(id) {
            verdict.dead_letters_unexpected += 1;
            let n = verdict.dead_letters_unexpected;
            verdict.differ("dead letters", n, || {
                format!("{id} rejected ({reason}) but valid")
            });
        }
    }
    Ok(())
}

async fn read_json_lines(
    store: &Arc<dyn ObjectStore>,
    path: &ObjectPath,
) -> anyhow::Result<Vec<Value>> {
    let bytes = store.get(path).await?.bytes().await?;
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .with_context(|| format!("{path} holds a line that is not JSON"))
        })
        .collect()
}

async fn check_aggregates(
    manifest: &Manifest,
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let mut found: BTreeMap<String, (ObjectPath, String)> = BTreeMap::new();
    for object in list(store, &under(prefix, "aggregates/classes")).await? {
        let location = object.location.as_ref();
        let Some(name) = location
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let dt = location.rsplit('/').nth(1).unwrap_or("").to_owned();
        found.insert(name.to_owned(), (object.location.clone(), dt));
    }
    for (key, expected) in &manifest.expected.classes {
        verdict.classes_expected += 1;
        let name = key.replacen(':', "-", 1);
        let Some((summary_path, dt)) = found.get(&name) else {
            verdict.classes_missing += 1;
            let n = verdict.classes_missing;
            verdict.differ("aggregates", n, || format!("{key}: no final result"));
            continue;
        };
        let mut out = Vec::new();
        let summary = read_json_lines(store, summary_path).await?;
        diff(
            &format!("{key} summary"),
            &expected.summary,
            summary.first().unwrap_or(&Value::Null),
            &mut out,
        );
        for (kind, want) in [
            ("members", &expected.members),
            ("minutes", &expected.minutes),
        ] {
            let path = under(prefix, &format!("aggregates/{kind}/{dt}/{name}.ndjson"));
            let got = read_json_lines(store, &path).await.unwrap_or_default();
            diff(
                &format!("{key} {kind}"),
                &Value::Array(want.clone()),
                &Value::Array(got),
                &mut out,
            );
        }
        if !out.is_empty() {
            verdict.classes_wrong += 1;
            let n = verdict.classes_wrong;
            verdict.differ("aggregates", n, || {
                let more = if out.len() > 3 {
                    format!(" (and {} more)", out.len() - 3)
                } else {
                    String::new()
                };
                format!("{}{more}", out[..out.len().min(3)].join("; "))
            });
        }
    }
    Ok(())
}

async fn check_events_table(
    manifest: &Manifest,
    output: &OutputArgs,
    table: &str,
    verdict: &mut Verdict,
) -> anyhow::Result<()> {
    let client = crate::dynamodb_client(output.dynamodb_endpoint.as_deref()).await;
    let mut ledger = Ledger::new(manifest);
    let (mut events, mut items) = (0u64, 0u64);
    let mut pages = client.scan().table_name(table).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "scanning {table}: {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            )
        })?;
        for item in page.items() {
            items += 1;
            let Some(payload) = item.get("ev").and_then(|v| v.as_b().ok()) else {
                continue;
            };
            // `ev`: zstd of one JSON object of columns; event ids in `event_id`.
            let columns: Value = serde_json::from_slice(&zstd::decode_all(payload.as_ref())?)?;
            for id in columns["event_id"].as_array().into_iter().flatten() {
                let id = id.as_str().unwrap_or("");
                if parse_event_id(id).is_some_and(|(run, _)| run == manifest.run_id) {
                    events += 1;
                }
                ledger.record(id, verdict, "events table", |v| &mut v.table_duplicated);
            }
        }
    }
    verdict.table_events = Some(events);
    verdict.table_items = items;
    let mut scratch = Verdict::default();
    verdict.table_missing = ledger.missing(&mut scratch, "events table");
    verdict.differences.extend(scratch.differences);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ids_are_found_in_whole_and_truncated_events() {
        assert_eq!(raw_event_id(r#"{"event_id":"abc","x":1}"#), Some("abc"));
        assert_eq!(raw_event_id(r#"{"event_id":"abc","event_cre"#), Some("abc"));
        assert_eq!(raw_event_id("garbage"), None);
    }

    #[test]
    fn the_bitmap_reports_a_second_copy() {
        let mut bits = Bitmap::new(130);
        assert!(!bits.set(129));
        assert!(bits.set(129));
        assert!(bits.get(129) && !bits.get(0));
    }
}
