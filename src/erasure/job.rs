//! The job of `classpulse erase`: members put on the suppression list, then removed from what
//! the lake's store and the DynamoDB tables hold.
//!
//! In order, each step safe to repeat:
//!
//! 1. the members go on the list (from then on no task writes them again, once it has read the
//!    list: within `CLASSPULSE_ERASURE_REFRESH`);
//! 2. every lake object's footer and `member_id` bloom filters are read (one or two ranged
//!    GETs), and
//!    the classes the members may be in are kept in a plan under `_erasure/pending/` (keyed by
//!    the members' hashes), so that a run cut short finds them again once their rows are gone;
//! 3. each object that holds their rows is rewritten without them under its own key (one PUT:
//!    readers see the old object or the new one); the lake is listed again for objects that
//!    came meanwhile (a compaction's, a task's) until a listing brings none;
//! 4. their results go: member lines, places on leaderboards (`erased`), live documents, their
//!    state in class parts handed between partitions (`checkpoints/classes/`), and in
//!    the aggregates table their `member#` items, the `summary` and `live` items' places and
//!    their observed maximum; their events-table items (a Query on `pk`) are deleted;
//! 5. dead letters whose raw input names them are removed;
//! 6. the plan is deleted and a log entry (counts and times, no member) written under
//!    `_erasure/log/`.
//!
//! Steps 2 to 5 run again once every task has read the list and written what it held before
//! ([`Request::settle`]). An object a compaction was merging when it was rewritten may hold the
//! rows again in the merged object: the report names it, and a later run finishes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::rewrite::{self, Candidate, FOOTER_TAIL};
use super::{record, ErasureKey, MemberHash};
use crate::aggregate::checkpoint;
use crate::aggregate::output::{ClassResult, ClassSummary, MemberSummary};
use crate::profile::source::{observed_key, OBSERVED_SORT_KEY};
use crate::sink::compact;
use crate::sink::dynamodb::{Item, PARTITION_KEY, SORT_KEY};
use crate::store::ObjectWriter;

/// Lake objects probed at once.
const PROBES_IN_FLIGHT: usize = 16;
/// Listings of the lake after the first, for objects written while the job ran.
const RELISTS: usize = 3;
/// Bytes read from an object's end to find its footer (most footers fit).
const TAIL_GUESS: u64 = 64 << 10;
/// Attempts at a read-modify-write of a table item another writer keeps changing.
const ITEM_ATTEMPTS: usize = 5;
/// Deletes in one BatchWriteItem (DynamoDB's limit).
const BATCH_DELETES: usize = 25;

/// What went wrong; every step is safe to run again.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// The store failed a request.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// A DynamoDB call failed.
    #[error("{table}: {detail}")]
    Table { table: String, detail: String },
    /// A rewrite did not finish (the run is stopping).
    #[error("a rewrite did not finish: {0}")]
    Interrupted(String),
}

/// The tables to erase from, as configured.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// The client, when a table is configured.
    pub client: Option<aws_sdk_dynamodb::Client>,
    /// The events table.
    pub events: Option<String>,
    /// The aggregates table.
    pub aggregates: Option<String>,
}

/// What a run was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// Member ids, each valid by the event contract's rule.
    pub members: BTreeSet<String>,
    /// Find and count, change nothing.
    pub dry_run: bool,
    /// How long after the members are on the list every task has read it and written what it
    /// held before (`CLASSPULSE_ERASURE_REFRESH` plus the longest an open lake object or
    /// events-table item is held): the run looks again then.
    pub settle: std::time::Duration,
}

/// What a run found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Nothing was changed: the counts say what a run would remove.
    pub dry_run: bool,
    /// Members asked for.
    pub members: usize,
    /// Members put on the list by this run (not on it before).
    pub listed: usize,
    /// Lake objects whose footer was read.
    pub objects_probed: usize,
    /// Lake objects read whole (their bloom filters said they may hold a member).
    pub objects_read: usize,
    /// Lake objects rewritten.
    pub objects_rewritten: usize,
    /// Lake rows removed.
    pub rows_removed: usize,
    /// Classes the members were found in.
    pub classes: usize,
    /// Result objects (members, classes, live) rewritten.
    pub results_rewritten: usize,
    /// Member lines removed from results.
    pub member_lines_removed: usize,
    /// Places on leaderboards replaced by `erased` (objects and table items).
    pub leaders_replaced: usize,
    /// Dead-letter objects rewritten.
    pub dead_letter_objects_rewritten: usize,
    /// Dead letters removed.
    pub dead_letters_removed: usize,
    /// Events-table items deleted.
    pub event_items_deleted: usize,
    /// Aggregates-table items deleted or rewritten.
    pub aggregate_items_changed: usize,
    /// Lake objects that are not the lake's Parquet (left as they are), by key.
    pub refused: Vec<String>,
    /// Objects that may hold the members again (a compaction was merging them): a later run
    /// finishes them.
    pub unfinished: Vec<String>,
    /// Members on no row, line or item anywhere.
    pub not_found: usize,
    /// The members found somewhere (printed, never logged).
    #[serde(skip)]
    pub found: BTreeSet<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  members        {} asked, {} {} the erasure list, {} found nowhere",
            self.members,
            self.listed,
            if self.dry_run {
                "not yet on"
            } else {
                "added to"
            },
            self.not_found
        )?;
        writeln!(
            f,
            "  lake           {} objects probed (footer and bloom filters), {} read, {} rewritten, {} rows removed",
            self.objects_probed, self.objects_read, self.objects_rewritten, self.rows_removed
        )?;
        writeln!(
            f,
            "  results        {} classes, {} objects rewritten, {} member lines removed, {} leaderboard places erased",
            self.classes, self.results_rewritten, self.member_lines_removed, self.leaders_replaced
        )?;
        writeln!(
            f,
            "  dead letters   {} removed from {} objects",
            self.dead_letters_removed, self.dead_letter_objects_rewritten
        )?;
        writeln!(
            f,
            "  tables         {} events-table items deleted, {} aggregates-table items deleted or rewritten",
            self.event_items_deleted, self.aggregate_items_changed
        )?;
        if self.dry_run {
            writeln!(
                f,
                "  dry run        nothing changed: the counts are what a run would remove"
            )?;
        }
        for key in &self.refused {
            writeln!(
                f,
                "  left alone     {key}: not a lake object this build reads"
            )?;
        }
        for key in &self.unfinished {
            writeln!(
                f,
                "  unfinished     {key}: a compaction was merging it; run `classpulse erase` again once it is done"
            )?;
        }
        Ok(())
    }
}

/// The classes of a plan: `(studio_id, class_id)` and the dates (`YYYY-MM-DD`) their rows had.
type Classes = BTreeMap<(String, String), BTreeSet<String>>;

/// A plan kept while a run works: the classes the members were found in.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Plan {
    classes: Vec<(String, String, String)>,
}

/// A lake object that may hold a member.
struct Found {
    meta: ObjectMeta,
    candidates: Vec<Candidate>,
}

/// Erases `request.members` from the store of `writer` and from `tables`.
pub async fn erase(
    writer: &ObjectWriter,
    key: &ErasureKey,
    tables: &Tables,
    request: &Request,
) -> Result<Report, EraseError> {
    let started = Utc::now();
    let clock = Instant::now();
    let members = &request.members;
    let hashes: Vec<MemberHash> = members.iter().map(|m| key.hash(m.as_bytes())).collect();
    let mut report = Report {
        dry_run: request.dry_run,
        members: members.len(),
        ..Report::default()
    };
    let store = writer.store();

    // 1. The list.
    let listed_before = super::load(writer, key).await?;
    report.listed = members.iter().filter(|m| !listed_before.holds(m)).count();
    if !request.dry_run {
        record(writer, &hashes).await?;
    }

    // 2 to 5, then again once every task has read the list and written what it held.
    let mut pass = Pass {
        writer,
        tables,
        members,
        dry_run: request.dry_run,
        classes: read_plans(writer, &hashes).await?,
        lake_seen: BTreeSet::new(),
        letters_seen: BTreeSet::new(),
    };
    pass.run(&hashes, &mut report).await?;
    if !request.dry_run && !request.settle.is_zero() {
        let settled = clock + request.settle;
        tracing::info!(
            seconds = request.settle.as_secs(),
            "waiting for the tasks to read the erasure list and write what they held"
        );
        tokio::time::sleep_until(settled.into()).await;
        pass.run(&hashes, &mut report).await?;
    }
    report.classes = pass.classes.len();

    // 6. Done: the plan goes, the log stays.
    report.not_found = members.len() - report.found.len();
    if !request.dry_run {
        if report.unfinished.is_empty() {
            for hash in &hashes {
                ignore_missing(store.delete(&plan_key(writer, hash)).await)?;
            }
        }
        let entry = LogEntry {
            started: started.to_rfc3339(),
            finished: Utc::now().to_rfc3339(),
            seconds: clock.elapsed().as_secs_f64(),
            report: &report,
        };
        let body = serde_json::to_vec_pretty(&entry).unwrap_or_default();
        let name = format!(
            "_erasure/log/{}-{}.json",
            started.format("%Y%m%dT%H%M%S%3fZ"),
            std::process::id()
        );
        store.put(&writer.path(&name), body.into()).await?;
    }
    Ok(report)
}

/// What a pass over the store and the tables keeps between its steps and passes.
struct Pass<'a> {
    writer: &'a ObjectWriter,
    tables: &'a Tables,
    members: &'a BTreeSet<String>,
    dry_run: bool,
    /// The classes the members were found in, with the dates of their rows.
    classes: Classes,
    /// Lake objects probed already.
    lake_seen: BTreeSet<Path>,
    /// Dead-letter objects read already.
    letters_seen: BTreeSet<Path>,
}

impl Pass<'_> {
    /// Steps 2 to 5 over what came since the last pass.
    async fn run(&mut self, hashes: &[MemberHash], report: &mut Report) -> Result<(), EraseError> {
        let (writer, members, dry_run) = (self.writer, self.members, self.dry_run);
        // 2. Probe the lake; keep the plan.
        let mut found = probe_lake(writer, members, &mut self.lake_seen, report).await?;
        for object in &found {
            let date = date_of(&object.meta.location);
            for candidate in &object.candidates {
                self.classes
                    .entry(candidate.class.clone())
                    .or_default()
                    .extend(date.clone());
            }
        }
        if !dry_run {
            write_plans(writer, hashes, &self.classes).await?;
        }

        // 3. Rewrite, then list again for objects that came meanwhile.
        for round in 0..=RELISTS {
            if round > 0 {
                found = probe_lake(writer, members, &mut self.lake_seen, report).await?;
                if found.is_empty() {
                    break;
                }
            }
            for object in found.drain(..) {
                rewrite_lake_object(writer, members, object, dry_run, &mut self.classes, report)
                    .await?;
            }
        }

        // 4. Results and tables.
        let tables = self.tables;
        if let (Some(client), Some(table)) = (&tables.client, &tables.events) {
            erase_event_items(client, table, members, dry_run, &mut self.classes, report).await?;
        }
        let mut aliases = BTreeSet::new();
        for ((studio, class), dates) in &self.classes {
            erase_results(
                writer,
                members,
                studio,
                class,
                dates,
                dry_run,
                &mut aliases,
                report,
            )
            .await?;
        }
        if let (Some(client), Some(table)) = (&tables.client, &tables.aggregates) {
            erase_aggregate_items(
                client,
                table,
                members,
                &self.classes,
                &aliases,
                dry_run,
                report,
            )
            .await?;
        }

        // 5. Dead letters.
        erase_dead_letters(writer, members, dry_run, &mut self.letters_seen, report).await
    }
}

/// An erasure log entry: what a run did, without the members it was for.
#[derive(Serialize)]
struct LogEntry<'a> {
    started: String,
    finished: String,
    seconds: f64,
    #[serde(flatten)]
    report: &'a Report,
}

fn plan_key(writer: &ObjectWriter, hash: &MemberHash) -> Path {
    writer.path(&format!("_erasure/pending/{}.json", hash.hex()))
}

async fn read_plans(writer: &ObjectWriter, hashes: &[MemberHash]) -> Result<Classes, EraseError> {
    let store = writer.store();
    let mut classes = Classes::new();
    for hash in hashes {
        let body = match store.get(&plan_key(writer, hash)).await {
            Ok(body) => body.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(error) => return Err(error.into()),
        };
        let plan: Plan = serde_json::from_slice(&body).unwrap_or_default();
        for (studio, class, date) in plan.classes {
            classes.entry((studio, class)).or_default().insert(date);
        }
    }
    Ok(classes)
}

async fn write_plans(
    writer: &ObjectWriter,
    hashes: &[MemberHash],
    classes: &Classes,
) -> Result<(), EraseError> {
    let plan = Plan {
        classes: classes
            .iter()
            .flat_map(|((studio, class), dates)| {
                dates
                    .iter()
                    .map(|date| (studio.clone(), class.clone(), date.clone()))
            })
            .collect(),
    };
    let body = Bytes::from(serde_json::to_vec(&plan).unwrap_or_default());
    for hash in hashes {
        writer
            .store()
            .put(&plan_key(writer, hash), body.clone().into())
            .await?;
    }
    Ok(())
}

/// The `YYYY-MM-DD` of a key's `dt=` folder.
fn date_of(key: &Path) -> Option<String> {
    key.parts()
        .find_map(|part| part.as_ref().strip_prefix("dt=").map(str::to_owned))
}

/// Lists the lake's objects not in `seen` and probes each; returns those that may hold a
/// member.
async fn probe_lake(
    writer: &ObjectWriter,
    members: &BTreeSet<String>,
    seen: &mut BTreeSet<Path>,
    report: &mut Report,
) -> Result<Vec<Found>, EraseError> {
    let store = writer.store();
    let listed: Vec<ObjectMeta> = store
        .list(Some(&writer.path("events")))
        .try_filter(|meta| futures::future::ready(meta.location.extension() == Some("parquet")))
        .try_collect()
        .await?;
    let new: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|meta| seen.insert(meta.location.clone()))
        .collect();
    report.objects_probed += new.len();
    let probes = futures::stream::iter(new)
        .map(|meta| {
            let store = store.clone();
            async move {
                let probed = probe(&store, &meta, members).await;
                (meta, probed)
            }
        })
        .buffer_unordered(PROBES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let mut found = Vec::new();
    for (meta, probed) in probes {
        match probed {
            Ok(candidates) if candidates.is_empty() => {}
            Ok(candidates) => found.push(Found { meta, candidates }),
            Err(Probe::Gone) => {}
            Err(Probe::Store(error)) => return Err(error.into()),
            Err(Probe::Refused(detail)) => {
                tracing::warn!(key = %meta.location, detail, "lake object left alone");
                report.refused.push(meta.location.to_string());
            }
        }
    }
    found.sort_by(|a, b| a.meta.location.cmp(&b.meta.location));
    Ok(found)
}

enum Probe {
    Gone,
    Store(object_store::Error),
    Refused(String),
}

impl From<object_store::Error> for Probe {
    fn from(error: object_store::Error) -> Probe {
        match error {
            object_store::Error::NotFound { .. } => Probe::Gone,
            error => Probe::Store(error),
        }
    }
}

/// Reads an object's footer, then its `member_id` bloom filters: the row groups that may
/// hold one of `members`.
async fn probe(
    store: &std::sync::Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    members: &BTreeSet<String>,
) -> Result<Vec<Candidate>, Probe> {
    let size = meta.size;
    if size < FOOTER_TAIL as u64 {
        return Err(Probe::Refused("shorter than a Parquet footer".into()));
    }
    let guess = size.min(TAIL_GUESS);
    let mut tail = store.get_range(&meta.location, size - guess..size).await?;
    let length = rewrite::metadata_length(&tail).map_err(Probe::Refused)? as u64;
    let needed = length + FOOTER_TAIL as u64;
    if needed > size {
        return Err(Probe::Refused("footer longer than the object".into()));
    }
    if needed > tail.len() as u64 {
        tail = store.get_range(&meta.location, size - needed..size).await?;
    }
    let tail_start = size - tail.len() as u64;
    let metadata_at = (size - needed - tail_start) as usize;
    let metadata = rewrite::decode_metadata(&tail[metadata_at..tail.len() - FOOTER_TAIL])
        .map_err(Probe::Refused)?;
    let blooms = match rewrite::bloom_range(&metadata, "member_id") {
        Some((start, end)) if start >= tail_start => Some((
            start,
            tail.slice((start - tail_start) as usize..(end - tail_start) as usize),
        )),
        Some((start, end)) => Some((start, store.get_range(&meta.location, start..end).await?)),
        None => None,
    };
    Ok(rewrite::candidates(
        &metadata,
        blooms.as_ref().map(|(at, bytes)| (*at, &bytes[..])),
        members,
    ))
}

/// Rewrites one lake object without `members`' rows.
async fn rewrite_lake_object(
    writer: &ObjectWriter,
    members: &BTreeSet<String>,
    object: Found,
    dry_run: bool,
    classes: &mut Classes,
    report: &mut Report,
) -> Result<(), EraseError> {
    let store = writer.store();
    let key = object.meta.location;
    let body = match store.get(&key).await {
        Ok(body) => body.bytes().await?,
        // Merged away by a compaction meanwhile: the next listing has the merged object.
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(error) => return Err(error.into()),
    };
    report.objects_read += 1;
    let members = members.clone();
    let rewritten = off_the_runtime(move || rewrite::lake_object(&body, &members)).await?;
    let rewritten = match rewritten {
        Ok(Some(rewritten)) => rewritten,
        Ok(None) => return Ok(()),
        Err(detail) => {
            tracing::warn!(key = %key, detail, "lake object left alone");
            report.refused.push(key.to_string());
            return Ok(());
        }
    };
    report.rows_removed += rewritten.removed;
    report.found.extend(rewritten.members.iter().cloned());
    for class in &rewritten.classes {
        classes
            .entry(class.clone())
            .or_default()
            .extend(rewritten.dates.iter().cloned());
    }
    if dry_run {
        return Ok(());
    }
    writer
        .put("erase", &key, rewritten.body, &rewritten.metadata)
        .await;
    report.objects_rewritten += 1;
    if compact::under_way(writer, &key).await? {
        report.unfinished.push(key.to_string());
    }
    Ok(())
}

/// The class's result objects (members, summary) of each date it may be filed under (the
/// date of its first event: a row's date or the day before), and its live document.
#[allow(clippy::too_many_arguments)]
async fn erase_results(
    writer: &ObjectWriter,
    members: &BTreeSet<String>,
    studio: &str,
    class: &str,
    dates: &BTreeSet<String>,
    dry_run: bool,
    aliases: &mut BTreeSet<String>,
    report: &mut Report,
) -> Result<(), EraseError> {
    let store = writer.store();
    let mut days = BTreeSet::new();
    for date in dates {
        if let Ok(day) = NaiveDate::parse_from_str(date, "%Y-%m-%d") {
            days.insert(day);
            days.extend(day.pred_opt());
        }
    }
    for day in days {
        let name = format!("dt={}/{studio}-{class}", day.format("%Y-%m-%d"));
        let lines_key = writer.path(&format!("aggregates/members/{name}.ndjson"));
        let Some(body) = get_if_exists(&*store, &lines_key).await? else {
            continue;
        };
        let mut class_aliases = BTreeSet::new();
        match rewrite::member_lines(&body, members) {
            Ok(Some((kept, removed, found, theirs))) => {
                report.member_lines_removed += removed;
                report.found.extend(theirs);
                class_aliases = found;
                if !dry_run {
                    store.put(&lines_key, kept.into()).await?;
                    report.results_rewritten += 1;
                }
            }
            Ok(None) => {}
            Err(detail) => report.refused.push(format!("{lines_key} ({detail})")),
        }
        let summary_key = writer.path(&format!("aggregates/classes/{name}.json"));
        if let Some(body) = get_if_exists(&*store, &summary_key).await? {
            match rewrite::class_summary(&body, members, &class_aliases) {
                Ok(Some((kept, replaced))) => {
                    report.leaders_replaced += replaced;
                    if !dry_run {
                        store.put(&summary_key, kept.into()).await?;
                        report.results_rewritten += 1;
                    }
                }
                Ok(None) => {}
                Err(detail) => report.refused.push(format!("{summary_key} ({detail})")),
            }
        }
        aliases.extend(class_aliases);
    }
    erase_class_parts(writer, members, studio, class, dry_run, report).await?;
    let live_key = writer.path(&format!("aggregates/live/{studio}-{class}.json"));
    if let Some(body) = get_if_exists(&*store, &live_key).await? {
        match serde_json::from_slice::<ClassResult>(&body) {
            Ok(mut result) => {
                let before = result.members.len();
                if rewrite::class_result(&mut result, &mut |id| members.contains(id)) {
                    report.member_lines_removed += before - result.members.len();
                    if !dry_run {
                        let mut body = serde_json::to_vec(&result).unwrap_or_default();
                        body.push(b'\n');
                        store.put(&live_key, body.into()).await?;
                        report.results_rewritten += 1;
                    }
                }
            }
            Err(error) => report.refused.push(format!("{live_key} ({error})")),
        }
    }
    Ok(())
}

/// The parts of the class that partitions handed to its home through the class directory
/// (`checkpoints/classes/{source}-{stream}/{studio}/{class}/part-*`), without `members`' state.
async fn erase_class_parts(
    writer: &ObjectWriter,
    members: &BTreeSet<String>,
    studio: &str,
    class: &str,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), EraseError> {
    let store = writer.store();
    let streams = store
        .list_with_delimiter(Some(&writer.path("checkpoints/classes")))
        .await?;
    for stream in streams.common_prefixes {
        let directory = Path::from(format!("{stream}/{studio}/{class}"));
        let parts: Vec<ObjectMeta> = store
            .list(Some(&directory))
            .try_filter(|meta| {
                let name = meta.location.filename().unwrap_or_default();
                futures::future::ready(name.starts_with("part-"))
            })
            .try_collect()
            .await?;
        for part in parts {
            let Some(body) = get_if_exists(&*store, &part.location).await? else {
                continue;
            };
            let (partition, mut state) = match checkpoint::decode_part(&body) {
                Ok(decoded) => decoded,
                Err(error) => {
                    report.refused.push(format!("{} ({error})", part.location));
                    continue;
                }
            };
            let before = state.members.len();
            state.members.retain(|member_id, _| {
                let theirs = members.contains(&**member_id);
                if theirs {
                    report.found.insert(member_id.to_string());
                }
                !theirs
            });
            let removed = before - state.members.len();
            if removed == 0 {
                continue;
            }
            report.member_lines_removed += removed;
            if !dry_run {
                let body = checkpoint::encode_part(&partition, &state);
                store.put(&part.location, body.into()).await?;
                report.results_rewritten += 1;
            }
        }
    }
    Ok(())
}

async fn get_if_exists(store: &dyn ObjectStore, key: &Path) -> Result<Option<Bytes>, EraseError> {
    match store.get(key).await {
        Ok(body) => Ok(Some(body.bytes().await?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Runs `work` (a Parquet or zstd rewrite: CPU-bound) off the runtime's workers.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EraseError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| EraseError::Interrupted(e.to_string()))
}

fn ignore_missing(result: object_store::Result<()>) -> Result<(), EraseError> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

fn table_error(table: &str, error: impl std::error::Error) -> EraseError {
    EraseError::Table {
        table: table.to_owned(),
        detail: aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string(),
    }
}

/// Deletes every events-table item of `members` (a Query on `pk` each), and adds the classes
/// their sort keys name to `classes`.
async fn erase_event_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    members: &BTreeSet<String>,
    dry_run: bool,
    classes: &mut Classes,
    report: &mut Report,
) -> Result<(), EraseError> {
    for member in members {
        let keys: Vec<Item> = client
            .query()
            .table_name(table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_values(":pk", AttributeValue::S(member.clone()))
            .projection_expression("#pk, #sk")
            .expression_attribute_names("#sk", SORT_KEY)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| table_error(table, e))?;
        for item in &keys {
            // sk: {window start}#{studio}#{class}#{partition}#{first offset}#{part}
            if let Some(AttributeValue::S(sort)) = item.get(SORT_KEY) {
                let mut parts = sort.split('#');
                if let (Some(window), Some(studio), Some(class)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    let date =
                        DateTime::parse_from_str(&format!("{window}+0000"), "%Y%m%dT%H%M%SZ%z")
                            .map(|time| time.with_timezone(&Utc).format("%Y-%m-%d").to_string());
                    classes
                        .entry((studio.to_owned(), class.to_owned()))
                        .or_default()
                        .extend(date.ok());
                }
            }
        }
        report.event_items_deleted += keys.len();
        if !keys.is_empty() {
            report.found.insert(member.clone());
        }
        if !dry_run {
            delete_items(client, table, keys).await?;
        }
    }
    Ok(())
}

/// Deletes `keys` (items of `pk` and `sk` only), 25 a call, retrying what comes back
/// unprocessed.
async fn delete_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<Item>,
) -> Result<(), EraseError> {
    for chunk in keys.chunks(BATCH_DELETES) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|key| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(key.clone()))
                    .build()
                    .map_err(|e| table_error(table, e))?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<_, EraseError>>()?;
        let mut backoff = crate::retry::Backoff::new(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        while !requests.is_empty() {
            let output = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(|e| table_error(table, e))?;
            requests = output
                .unprocessed_items
                .and_then(|mut left| left.remove(table))
                .unwrap_or_default();
            if !requests.is_empty() {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    Ok(())
}

/// The coalesced live item's body, as the aggregates table holds it.
#[derive(Serialize, Deserialize)]
struct Live {
    summary: ClassSummary,
    members: Vec<MemberSummary>,
}

/// In the aggregates table: deletes `members`' `member#` items of each class and their
/// observed maximum; erases their places in each class's `summary` and `live` items.
async fn erase_aggregate_items(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    members: &BTreeSet<String>,
    classes: &Classes,
    aliases: &BTreeSet<String>,
    dry_run: bool,
    report: &mut Report,
) -> Result<(), EraseError> {
    let key = |pk: String, sk: String| -> Item {
        HashMap::from([
            (PARTITION_KEY.to_owned(), AttributeValue::S(pk)),
            (SORT_KEY.to_owned(), AttributeValue::S(sk)),
        ])
    };
    let mut deletes = Vec::new();
    for member in members {
        deletes.push((
            member,
            key(observed_key(member), OBSERVED_SORT_KEY.to_owned()),
        ));
        for (studio, class) in classes.keys() {
            let item = key(format!("{studio}#{class}"), format!("member#{member}"));
            deletes.push((member, item));
        }
    }
    // Only the items that exist count as changed.
    let mut existing = Vec::new();
    for (member, item) in deletes {
        let found = client
            .get_item()
            .table_name(table)
            .set_key(Some(item.clone()))
            .projection_expression("#pk")
            .expression_attribute_names("#pk", PARTITION_KEY)
            .send()
            .await
            .map_err(|e| table_error(table, e))?;
        if found.item.is_some() {
            report.found.insert(member.clone());
            existing.push(item);
        }
    }
    report.aggregate_items_changed += existing.len();
    if !dry_run {
        delete_items(client, table, existing).await?;
    }
    for (studio, class) in classes.keys() {
        for sort in ["summary", "live"] {
            let changed = rewrite_class_item(
                client,
                table,
                key(format!("{studio}#{class}"), sort.to_owned()),
                members,
                aliases,
                dry_run,
            )
            .await?;
            if changed > 0 {
                report.aggregate_items_changed += 1;
                report.leaders_replaced += changed;
            }
        }
    }
    Ok(())
}

/// Rewrites one `summary` or `live` item without `members`, on condition that its `version` is
/// still the one read (the task that owns the class may write it meanwhile: then it is read
/// again). Returns the places and member entries it erased.
async fn rewrite_class_item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: Item,
    members: &BTreeSet<String>,
    aliases: &BTreeSet<String>,
    dry_run: bool,
) -> Result<usize, EraseError> {
    let is_live = matches!(key.get(SORT_KEY), Some(AttributeValue::S(sort)) if sort == "live");
    for _ in 0..ITEM_ATTEMPTS {
        let Some(item) = client
            .get_item()
            .table_name(table)
            .set_key(Some(key.clone()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| table_error(table, e))?
            .item
        else {
            return Ok(0);
        };
        let decode = |e: serde_dynamo::Error| EraseError::Table {
            table: table.to_owned(),
            detail: format!("{key:?}: {e}"),
        };
        let (mut new, changed): (Item, usize) = if is_live {
            let mut live: Live =
                serde_dynamo::aws_sdk_dynamodb_1::from_item(item.clone()).map_err(decode)?;
            let mut result = ClassResult {
                summary: live.summary,
                members: live.members,
                minutes: Vec::new(),
            };
            let before = result.members.len();
            if !rewrite::class_result(&mut result, &mut |id| members.contains(id)) {
                return Ok(0);
            }
            let removed = before - result.members.len();
            live = Live {
                summary: result.summary,
                members: result.members,
            };
            let item = serde_dynamo::aws_sdk_dynamodb_1::to_item(&live).map_err(decode)?;
            (item, removed.max(1))
        } else {
            let mut summary: ClassSummary =
                serde_dynamo::aws_sdk_dynamodb_1::from_item(item.clone()).map_err(decode)?;
            let replaced =
                rewrite::erase_leaders(&mut summary, &mut |id| members.contains(id), aliases);
            if replaced == 0 {
                return Ok(0);
            }
            let item = serde_dynamo::aws_sdk_dynamodb_1::to_item(&summary).map_err(decode)?;
            (item, replaced)
        };
        if dry_run {
            return Ok(changed);
        }
        for attribute in [PARTITION_KEY, SORT_KEY, "src", "final", "version", "ttl"] {
            if let Some(value) = item.get(attribute) {
                new.insert(attribute.to_owned(), value.clone());
            }
        }
        let mut put = client
            .put_item()
            .table_name(table)
            .set_item(Some(new))
            .expression_attribute_names("#version", "version");
        put = match item.get("version") {
            Some(version) => put
                .condition_expression("#version = :version")
                .expression_attribute_values(":version", version.clone()),
            None => put.condition_expression("attribute_not_exists(#version)"),
        };
        match put.send().await {
            Ok(_) => return Ok(changed),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                continue;
            }
            Err(error) => return Err(table_error(table, error)),
        }
    }
    Err(EraseError::Table {
        table: table.to_owned(),
        detail: format!("{key:?} kept changing while it was rewritten; run again"),
    })
}

/// Removes dead letters whose raw input names one of `members`.
async fn erase_dead_letters(
    writer: &ObjectWriter,
    members: &BTreeSet<String>,
    dry_run: bool,
    seen: &mut BTreeSet<Path>,
    report: &mut Report,
) -> Result<(), EraseError> {
    let store = writer.store();
    let listed: Vec<ObjectMeta> = store
        .list(Some(&writer.path("dead-letters")))
        .try_collect()
        .await?;
    for meta in listed {
        if !seen.insert(meta.location.clone()) {
            continue;
        }
        let Some(body) = get_if_exists(&*store, &meta.location).await? else {
            continue;
        };
        let members = members.clone();
        let outcome = off_the_runtime(move || rewrite::dead_letters(&body, &members)).await?;
        match outcome {
            Ok(Some((kept, removed, found))) => {
                report.dead_letters_removed += removed;
                report.found.extend(found);
                if !dry_run {
                    store.put(&meta.location, kept.into()).await?;
                    report.dead_letter_objects_rewritten += 1;
                }
            }
            Ok(None) => {}
            Err(detail) => report.refused.push(format!("{} ({detail})", meta.location)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_class_part_handed_over_loses_the_member_and_keeps_the_others() {
        use crate::aggregate::partition::PartitionState;
        use crate::aggregate::reference::event;
        use crate::aggregate::Rules;
        use crate::event::{EventType, Metrics};

        let directory = tempfile::tempdir().unwrap();
        let lake = crate::config::LakeConfig::in_directory(directory.path(), None);
        let writer = ObjectWriter::open(
            &lake,
            "kafka",
            crate::health::Health::new(),
            std::sync::Arc::new(crate::stats::Stats::default()),
        )
        .unwrap();
        let mut events: Vec<_> = (0..4)
            .map(|i| {
                let metrics = Metrics {
                    bpm: Some(140.0),
                    ..Metrics::default()
                };
                let member = if i < 2 { "m1" } else { "m2" };
                let time = 1_764_090_000_000 + i as i64 * 1_000;
                event(
                    &format!("e{i}"),
                    member,
                    time,
                    EventType::HeartRate,
                    metrics,
                    i,
                )
            })
            .collect();
        let mut state = PartitionState::new("events/1".to_owned());
        state.apply(&mut events, 3, &Rules::default(), 0);
        let class = state.classes.values().next().unwrap();
        let (studio, class_id) = (class.studio_id.to_string(), class.class_id.to_string());
        let key = writer.path(&format!(
            "checkpoints/classes/kafka-events/{studio}/{class_id}/part-1.postcard.zst"
        ));
        let body = checkpoint::encode_part("events/1", class);
        writer.store().put(&key, body.into()).await.unwrap();

        let members: BTreeSet<String> = ["m1".to_owned()].into();
        let mut report = Report::default();
        erase_class_parts(&writer, &members, &studio, &class_id, false, &mut report)
            .await
            .unwrap();
        assert_eq!(
            (report.member_lines_removed, report.results_rewritten),
            (1, 1)
        );
        let body = writer
            .store()
            .get(&key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (partition, part) = checkpoint::decode_part(&body).unwrap();
        assert_eq!(partition, "events/1");
        let left: Vec<&str> = part.members.keys().map(|id| &**id).collect();
        assert_eq!(left, ["m2"]);

        let mut again = Report::default();
        erase_class_parts(&writer, &members, &studio, &class_id, false, &mut again)
            .await
            .unwrap();
        assert_eq!(again, Report::default(), "a second pass finds nothing");
    }

    #[test]
    fn a_key_gives_its_date() {
        let key = Path::from("lake/events/dt=2026-11-25/hour=17/x.parquet");
        assert_eq!(date_of(&key).as_deref(), Some("2026-11-25"));
        assert_eq!(date_of(&Path::from("lake/events/x.parquet")), None);
    }
}
