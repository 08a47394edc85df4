//! Where profiles come from: a file of NDJSON read at start (the embedded default and tests),
//! a DynamoDB table the studios' member system writes (read in batches, cached), and the
//! observed maximums classpulse wrote itself (items of its aggregates table). The aggregate
//! stage asks [`Profiles::lookup`], which never waits: a member not known yet is queued for
//! [`Profiles::run`], which reads the table in the background; the stage asks again later.
//!
//! ```text
//! members table   pk member_id                          the member system's profile
//! aggregates      pk member#{member_id}  sk hr_max_observed   classpulse's observed maximum
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Builder, Profile, Value};
use crate::health::Health;
use crate::metrics;
use crate::retry::Backoff;

/// Health component of the members table.
pub const NAME: &str = "members_table";
/// The sort key of an observed maximum in the aggregates table.
pub const OBSERVED_SORT_KEY: &str = "hr_max_observed";
/// Keys in one BatchGetItem call at most (DynamoDB's limit).
const BATCH_KEYS: usize = 100;
/// How long one read of the table may take before it counts as failed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The partition key of `member_id`'s observed maximum in the aggregates table.
pub fn observed_key(member_id: &str) -> String {
    format!("member#{member_id}")
}

/// The DynamoDB tables profiles are read from.
#[derive(Clone)]
pub struct TableSource {
    /// The client.
    pub client: aws_sdk_dynamodb::Client,
    /// The members table.
    pub members: String,
    /// The aggregates table, where observed maximums are.
    pub aggregates: Option<String>,
}

/// Member profiles, shared by the aggregate stage and the task that reads the table.
#[derive(Clone)]
pub struct Profiles {
    inner: Arc<Inner>,
}

struct Inner {
    file: HashMap<Box<str>, Profile>,
    table: Option<TableSource>,
    ttl: Duration,
    cache: Mutex<Cache>,
    wake: Notify,
    /// Members whose rejected fields were logged.
    logged: Mutex<HashSet<Box<str>>>,
}

#[derive(Default)]
struct Cache {
    /// Profiles read from the table (empty: no item), with when.
    read: HashMap<Box<str>, (Instant, Profile)>,
    /// Maximums raised by classes final in this process (for a member's next class when no
    /// table holds them, and before the table's copy is read again).
    raised: HashMap<Box<str>, u16>,
    /// Members to read, in order asked, and the same as a set.
    wanted: Vec<Box<str>>,
    asked: HashSet<Box<str>>,
}

/// Why a profiles file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a profile.
    #[error("{path}:{line}: {source}")]
    Line {
        /// The file.
        path: String,
        /// The line number, from 1.
        line: usize,
        /// Why.
        source: super::ProfileError,
    },
}

impl Profiles {
    /// Profiles from `file` (members in it) and `table` (the others), a table's read kept
    /// for `ttl`.
    pub fn new(
        file: HashMap<Box<str>, Profile>,
        table: Option<TableSource>,
        ttl: Duration,
    ) -> Profiles {
        Profiles {
            inner: Arc::new(Inner {
                file,
                table,
                ttl,
                cache: Mutex::default(),
                wake: Notify::new(),
                logged: Mutex::default(),
            }),
        }
    }

    /// Reads a profiles file: one JSON object a line (blank lines skipped). A line that is no
    /// profile fails the whole file, naming the line; a field out of range is ignored, counted
    /// and logged.
    pub fn read_file(path: &Path) -> Result<HashMap<Box<str>, Profile>, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Profiles::parse(&text, &path.display().to_string())
    }

    /// Reads profiles from NDJSON `text` (named `origin` in errors), as [`Profiles::read_file`].
    pub fn parse(text: &str, origin: &str) -> Result<HashMap<Box<str>, Profile>, FileError> {
        let this_year = chrono::Datelike::year(&chrono::Utc::now());
        let mut profiles = HashMap::new();
        let logged = Mutex::default();
        for (number, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (member_id, profile, rejected) =
                super::from_json(line, this_year).map_err(|source| FileError::Line {
                    path: origin.to_owned(),
                    line: number + 1,
                    source,
                })?;
            report_rejected(&logged, &member_id, &rejected);
            profiles.insert(member_id, profile);
        }
        Ok(profiles)
    }

    /// The profile of `member_id`, if known now: from the file, else the table's copy (a
    /// copy older than the cache time is used while it is read again). `None`: queued for
    /// the table; ask again later.
    pub fn lookup(&self, member_id: &str) -> Option<Profile> {
        let inner = &self.inner;
        let mut cache = inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let raised = cache.raised.get(member_id).copied();
        let with_raise = |mut profile: Profile| {
            profile.hr_max_observed = profile.hr_max_observed.max(raised);
            profile
        };
        if let Some(profile) = inner.file.get(member_id) {
            return Some(with_raise(profile.clone()));
        }
        if inner.table.is_none() {
            return Some(with_raise(Profile::default()));
        }
        let read = cache
            .read
            .get(member_id)
            .map(|(at, profile)| (at.elapsed() < inner.ttl, profile.clone()));
        if !matches!(read, Some((true, _))) && cache.asked.insert(member_id.into()) {
            cache.wanted.push(member_id.into());
            inner.wake.notify_one();
        }
        read.map(|(_, profile)| with_raise(profile))
    }

    /// Records that a class final here raised `member_id`'s maximum to `bpm` (their next
    /// class uses it; the aggregates table keeps it for other tasks).
    pub fn record_raised(&self, member_id: &str, bpm: u16) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.raised.entry(member_id.into()).or_insert(bpm);
        *entry = (*entry).max(bpm);
    }

    /// Members queued for the table.
    pub fn queued(&self) -> usize {
        let cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.wanted.len()
    }

    /// Reads queued members from the table until `shutdown`, at most [`BATCH_KEYS`] keys a
    /// call (a member's profile and observed maximum are two). A failed read is reported as
    /// the table's readiness and retried with backoff; the members wait meanwhile, their
    /// classes going on without them.
    pub async fn run(self, health: Health, shutdown: CancellationToken) {
        let Some(table) = self.inner.table.clone() else {
            return;
        };
        health.ready(NAME);
        let per_call = if table.aggregates.is_some() {
            BATCH_KEYS / 2
        } else {
            BATCH_KEYS
        };
        let new_backoff = || Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut backoff = new_backoff();
        loop {
            let members = self.next_batch(per_call);
            if members.is_empty() {
                tokio::select! {
                    _ = self.inner.wake.notified() => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let read = tokio::time::timeout(READ_TIMEOUT, read_batch(&table, &members)).await;
            match read {
                Ok(Ok((found, unprocessed))) => {
                    backoff = new_backoff();
                    health.ready(NAME);
                    self.store(found, &members, &unprocessed);
                }
                _ if shutdown.is_cancelled() => return,
                failed => {
                    let reason = match failed {
                        Ok(Err(reason)) => reason,
                        _ => format!("no answer in {}s", READ_TIMEOUT.as_secs()),
                    };
                    metrics::record_profile_reads("failed", members.len());
                    if backoff.attempts() % 10 == 0 {
                        tracing::warn!(table = %table.members, %reason, "member profiles not read, retrying; classes go on with cached or default profiles");
                    }
                    health.not_ready(NAME, format!("{}: {reason}", table.members));
                    self.requeue(members);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// The next members to read, at most `limit`, in the order they were asked for.
    fn next_batch(&self, limit: usize) -> Vec<Box<str>> {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let n = cache.wanted.len().min(limit);
        cache.wanted.drain(..n).collect()
    }

    /// Keeps what a read found; members it had no item for get an empty profile; members left
    /// unprocessed (throttled) are read again.
    fn store(
        &self,
        found: HashMap<Box<str>, (Profile, Vec<&'static str>)>,
        members: &[Box<str>],
        unprocessed: &[Box<str>],
    ) {
        let now = Instant::now();
        let (mut present, mut absent) = (0, 0);
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        for member in members {
            if unprocessed.contains(member) {
                continue;
            }
            let profile = match found.get(member) {
                Some((profile, rejected)) => {
                    present += 1;
                    report_rejected(&self.inner.logged, member, rejected);
                    profile.clone()
                }
                None => {
                    absent += 1;
                    Profile::default()
                }
            };
            cache.asked.remove(member);
            cache.read.insert(member.clone(), (now, profile));
        }
        cache.wanted.extend(unprocessed.iter().cloned());
        metrics::record_profile_reads("found", present);
        metrics::record_profile_reads("absent", absent);
    }

    fn requeue(&self, members: Vec<Box<str>>) {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|e| e.into_inner());
        let later = std::mem::take(&mut cache.wanted);
        cache.wanted = members;
        cache.wanted.extend(later);
    }
}

/// Counts `fields` of `member_id`'s profile as rejected, logging them the first time.
fn report_rejected(logged: &Mutex<HashSet<Box<str>>>, member_id: &str, fields: &[&'static str]) {
    if fields.is_empty() {
        return;
    }
    metrics::record_profile_rejected(fields);
    let first = logged
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(member_id.into());
    if first {
        tracing::warn!(member = member_id, fields = ?fields, "member profile fields out of range, ignored");
    }
}

/// Reads `members`' profiles (and observed maximums) in one call: the profiles found, and the
/// members DynamoDB left unprocessed.
async fn read_batch(
    table: &TableSource,
    members: &[Box<str>],
) -> Result<
    (
        HashMap<Box<str>, (Profile, Vec<&'static str>)>,
        Vec<Box<str>>,
    ),
    String,
> {
    use crate::sink::dynamodb::{PARTITION_KEY, SORT_KEY};
    let member_keys = members
        .iter()
        .map(|id| HashMap::from([("member_id".to_owned(), AttributeValue::S(id.to_string()))]))
        .collect::<Vec<_>>();
    let mut request = aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemInput::builder();
    let keys = |keys: Vec<HashMap<String, AttributeValue>>| {
        KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(false)
            .build()
            .map_err(|error| error.to_string())
    };
    request = request.request_items(&table.members, keys(member_keys)?);
    if let Some(aggregates) = &table.aggregates {
        let observed_keys = members
            .iter()
            .map(|id| {
                HashMap::from([
                    (
                        PARTITION_KEY.to_owned(),
                        AttributeValue::S(observed_key(id)),
                    ),
                    (
                        SORT_KEY.to_owned(),
                        AttributeValue::S(OBSERVED_SORT_KEY.to_owned()),
                    ),
                ])
            })
            .collect();
        request = request.request_items(aggregates, keys(observed_keys)?);
    }
    let input = request.build().map_err(|error| error.to_string())?;
    let output = table
        .client
        .batch_get_item()
        .set_request_items(input.request_items)
        .send()
        .await
        .map_err(|error| {
            let failure = crate::aws::classify(&error);
            match failure {
                crate::aws::Failure::Throttled => "throttled".to_owned(),
                crate::aws::Failure::Transient(detail)
                | crate::aws::Failure::Invalid(detail)
                | crate::aws::Failure::Fatal(detail) => detail,
            }
        })?;
    let this_year = chrono::Datelike::year(&chrono::Utc::now());
    let mut found: HashMap<Box<str>, (Profile, Vec<&'static str>)> = HashMap::new();
    let mut observed: HashMap<Box<str>, u16> = HashMap::new();
    let responses = output.responses.unwrap_or_default();
    for item in responses.get(&table.members).into_iter().flatten() {
        let Some(AttributeValue::S(member_id)) = item.get("member_id") else {
            continue;
        };
        let mut builder = Builder::new(this_year);
        for (field, value) in item {
            builder.set(field, attribute_value(value));
        }
        found.insert(member_id.as_str().into(), builder.finish());
    }
    if let Some(aggregates) = &table.aggregates {
        for item in responses.get(aggregates).into_iter().flatten() {
            let member = match item.get(PARTITION_KEY) {
                Some(AttributeValue::S(key)) => key.strip_prefix("member#"),
                _ => None,
            };
            let bpm = match item.get(OBSERVED_SORT_KEY) {
                Some(AttributeValue::N(n)) => n.parse::<u16>().ok(),
                _ => None,
            };
            if let (Some(member), Some(bpm)) = (member, bpm) {
                observed.insert(member.into(), bpm);
            }
        }
    }
    for (member, bpm) in observed {
        found.entry(member).or_default().0.hr_max_observed = Some(bpm);
    }
    let mut unprocessed = Vec::new();
    for keys in output.unprocessed_keys.unwrap_or_default().into_values() {
        for key in keys.keys {
            let member = match (key.get("member_id"), key.get(PARTITION_KEY)) {
                (Some(AttributeValue::S(id)), _) => Some(id.as_str()),
                (_, Some(AttributeValue::S(pk))) => pk.strip_prefix("member#"),
                _ => None,
            };
            if let Some(member) = member {
                let member: Box<str> = member.into();
                if !unprocessed.contains(&member) {
                    unprocessed.push(member);
                }
            }
        }
    }
    Ok((found, unprocessed))
}

/// A table attribute as a profile field's value.
fn attribute_value(value: &AttributeValue) -> Value<'_> {
    match value {
        AttributeValue::N(n) => n.parse().map_or(Value::Text("\u{0}"), Value::Number),
        AttributeValue::S(text) => Value::Text(text),
        AttributeValue::Bool(on) => Value::Bool(*on),
        AttributeValue::Null(_) => Value::Null,
        _ => Value::Text("\u{0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn born(year: u16) -> Profile {
        Profile {
            birth_year: Some(year),
            ..Profile::default()
        }
    }

    /// A table source whose client is never called.
    fn table() -> TableSource {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .build();
        TableSource {
            client: aws_sdk_dynamodb::Client::from_conf(config),
            members: "members".to_owned(),
            aggregates: None,
        }
    }

    #[test]
    fn a_file_answers_at_once_and_a_raise_is_kept_for_the_next_class() {
        let text =
            "{\"member_id\":\"a\",\"birth_year\":1980}\n\n{\"member_id\":\"b\",\"hr_max\":181}\n";
        let profiles = Profiles::new(
            Profiles::parse(text, "test").unwrap(),
            None,
            Duration::from_secs(600),
        );
        assert_eq!(profiles.lookup("a"), Some(born(1980)));
        assert_eq!(
            profiles.lookup("b").unwrap().hr_max,
            Some((181, super::super::SetBy::Manual))
        );
        // Not in the file and no table to ask: known to have no profile.
        assert_eq!(profiles.lookup("c"), Some(Profile::default()));
        assert_eq!(profiles.queued(), 0);
        // Raises only rise.
        profiles.record_raised("a", 190);
        profiles.record_raised("a", 185);
        assert_eq!(profiles.lookup("a").unwrap().hr_max_observed, Some(190));
    }

    #[test]
    fn a_line_that_is_no_profile_fails_the_file_naming_the_line() {
        let error = Profiles::parse(
            "{\"member_id\":\"a\"}\n{\"birth_year\":1980}\n",
            "members.ndjson",
        )
        .unwrap_err();
        assert_eq!(error.to_string(), "members.ndjson:2: no member_id string");
    }

    #[test]
    fn a_member_not_read_yet_is_queued_once_and_never_waited_for() {
        let profiles = Profiles::new(HashMap::new(), Some(table()), Duration::from_secs(600));
        assert_eq!(profiles.lookup("a"), None);
        assert_eq!(profiles.lookup("b"), None);
        assert_eq!(profiles.lookup("a"), None, "asked again: still not read");
        assert_eq!(profiles.queued(), 2);
        let batch = profiles.next_batch(100);
        assert_eq!(batch, [Box::<str>::from("a"), Box::from("b")]);
        // The read finds a, has no item for b, and leaves c unprocessed (throttled).
        profiles.lookup("c");
        let batch: Vec<Box<str>> = [batch, profiles.next_batch(100)].concat();
        let found = HashMap::from([("a".into(), (born(1990), Vec::new()))]);
        profiles.store(found, &batch, &[Box::from("c")]);
        assert_eq!(profiles.lookup("a"), Some(born(1990)));
        assert_eq!(profiles.lookup("b"), Some(Profile::default()));
        assert_eq!(profiles.lookup("c"), None);
        assert_eq!(
            profiles.next_batch(100),
            [Box::<str>::from("c")],
            "read again"
        );
    }

    #[test]
    fn a_copy_older_than_the_cache_time_is_used_while_it_is_read_again() {
        let profiles = Profiles::new(HashMap::new(), Some(table()), Duration::ZERO);
        profiles.lookup("a");
        let batch = profiles.next_batch(100);
        profiles.store(
            HashMap::from([("a".into(), (born(1970), Vec::new()))]),
            &batch,
            &[],
        );
        assert_eq!(profiles.lookup("a"), Some(born(1970)));
        assert_eq!(profiles.queued(), 1, "stale: queued to be read again");
        assert_eq!(profiles.lookup("a"), Some(born(1970)));
        assert_eq!(profiles.queued(), 1, "queued once");
    }
}
