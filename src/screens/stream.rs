//! Reads the live stream onto the board by enhanced fan-out: each screen server registers a
//! stream consumer of its own (deregistered at shutdown), so every instance gets every
//! record at 2 MB/s a shard of its own and the stream's polling limits are left alone.
//!
//! Every shard is read from `now - lookback` (`AT_TIMESTAMP`); a shard whose parents are
//! listed is read only once they are read to their end, so a class's records come in the
//! order they were put across a reshard. Subscriptions last 5 minutes and are renewed after
//! the last record seen; the shards are listed again every [`LIST_EVERY`] and when one
//! closes. `/readyz` holds the server back until every shard listed at start has been read
//! to its tip once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{
    Shard, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::aws::{self, StreamCallError};
use crate::health::Health;
use crate::live::board::{Board, Refused};
use crate::log_limit::LogLimiter;
use crate::metrics;
use crate::retry::Backoff;

/// Health component of the reader.
pub const NAME: &str = "live stream";
/// How often the stream's shards are listed again.
const LIST_EVERY: Duration = Duration::from_secs(10);
/// How long a subscription may take to open.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(15);
/// Kinesis sends an event every few seconds, records or not: a subscription silent this long
/// is stuck, and is renewed.
const SILENCE: Duration = Duration::from_secs(30);

/// The shards listed as closed (an ending sequence number), shared with their readers.
#[derive(Clone, Default)]
struct Closed(Arc<Mutex<HashSet<String>>>);

impl Closed {
    fn note(&self, shards: &[Shard]) {
        let mut closed = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for shard in shards {
            if shard
                .sequence_number_range()
                .is_some_and(|range| range.ending_sequence_number().is_some())
            {
                closed.insert(shard.shard_id().to_owned());
            }
        }
    }

    fn contains(&self, shard: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(shard)
    }
}

/// What a shard's reader tells the coordinator.
enum Told {
    /// The shard was read to its tip (nothing behind).
    AtTip(String),
    /// The shard is closed and read to its end.
    Ended(String),
}

/// The stream consumer a screen server registers: `classpulse-screens-{host}-{pid}` (an ECS
/// task's host name is its own, so each task has a consumer, and a container restarted in its
/// task, pid 1 again, takes its own back).
pub fn consumer_name() -> String {
    let host = hostname().unwrap_or_else(|| "host".to_owned());
    let host: String = host
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '-' => c,
            _ => '-',
        })
        .take(96)
        .collect();
    format!("classpulse-screens-{host}-{}", std::process::id())
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}

/// Marks the reader not ready, before anything can ask.
pub fn not_ready_yet(health: &Health, stream: &str, lookback: Duration) {
    health.not_ready(
        NAME,
        format!("{stream}: reading the last {}s", lookback.as_secs()),
    );
}

/// Reads `stream` onto `board` as the consumer `consumer` until `stop`, then deregisters the
/// consumer. `health` has [`NAME`] not ready until every shard listed at start was read to
/// its tip.
pub async fn read(
    kinesis: Client,
    stream: &str,
    consumer: &str,
    lookback: Duration,
    board: Board,
    health: Health,
    stop: CancellationToken,
) -> Result<(), String> {
    let since_ms = chrono::Utc::now().timestamp_millis() - lookback.as_millis() as i64;
    let Some((stream_arn, consumer_arn)) = start(&kinesis, stream, consumer, &stop).await? else {
        return Ok(());
    };
    tracing::info!(
        stream,
        consumer,
        "reading the live stream by enhanced fan-out"
    );
    let readers = stop.child_token();
    let (told, mut tellings) = mpsc::channel::<Told>(64);
    // Shards whose reader runs, and those read to their end.
    let mut started: HashSet<String> = HashSet::new();
    let mut ended: HashSet<String> = HashSet::new();
    // Shards listed at start not yet read to their tip; `None` before the first listing.
    let mut behind: Option<HashSet<String>> = None;
    let closed = Closed::default();
    let mut ready = false;
    let errors = LogLimiter::new(Duration::from_secs(30));
    let mut next_listing = Instant::now();
    loop {
        if Instant::now() >= next_listing {
            next_listing = Instant::now() + LIST_EVERY;
            match list_shards(&kinesis, &stream_arn).await {
                Ok(shards) => {
                    if behind.is_none() {
                        behind = Some(shards.iter().map(|s| s.shard_id().to_owned()).collect());
                        tracing::info!(stream, shards = shards.len(), "live stream listed");
                    }
                    closed.note(&shards);
                    for shard in startable(&shards, &started, &ended) {
                        started.insert(shard.clone());
                        tokio::spawn(read_shard(
                            kinesis.clone(),
                            consumer_arn.clone(),
                            shard,
                            since_ms,
                            board.clone(),
                            closed.clone(),
                            told.clone(),
                            readers.clone(),
                        ));
                    }
                }
                Err(error) => {
                    if errors.admit("listing").is_some() {
                        tracing::warn!(stream, error = %error, "live stream not listed; trying again");
                    }
                    next_listing = Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if !ready && behind.as_ref().is_some_and(HashSet::is_empty) {
            tracing::info!(stream, "live stream read to its tip: ready");
            health.ready(NAME);
            ready = true;
        }
        tokio::select! {
            Some(telling) = tellings.recv() => match telling {
                Told::AtTip(shard) => {
                    if let Some(behind) = behind.as_mut() {
                        behind.remove(&shard);
                    }
                }
                Told::Ended(shard) => {
                    if let Some(behind) = behind.as_mut() {
                        behind.remove(&shard);
                    }
                    ended.insert(shard);
                    // Its children may start now.
                    next_listing = Instant::now();
                }
            },
            _ = tokio::time::sleep_until(next_listing) => {}
            _ = stop.cancelled() => break,
        }
    }
    readers.cancel();
    deregister(&kinesis, &consumer_arn, consumer).await;
    Ok(())
}

/// The shards of `shards` to read now: not started, and every parent listed read to its end
/// (a parent no longer listed is past retention).
fn startable(shards: &[Shard], started: &HashSet<String>, ended: &HashSet<String>) -> Vec<String> {
    let listed: HashSet<&str> = shards.iter().map(Shard::shard_id).collect();
    shards
        .iter()
        .filter(|shard| !started.contains(shard.shard_id()))
        .filter(|shard| {
            [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .all(|parent| !listed.contains(parent) || ended.contains(parent))
        })
        .map(|shard| shard.shard_id().to_owned())
        .collect()
}

/// Why the reader could not start.
enum StartError {
    /// The stream is missing or may not be read: an operator's to fix.
    Refused(String),
    /// Anything else (throttled, a fault, the consumer not active yet): tried again.
    Failed(String),
}

impl StartError {
    fn of(error: StreamCallError, message: String) -> StartError {
        if error.refused {
            StartError::Refused(message)
        } else {
            StartError::Failed(message)
        }
    }
}

/// The stream's and the consumer's ARNs, retrying what may pass until `stop` (`None`); a stream
/// that is missing or may not be read ends the server with the reason.
async fn start(
    kinesis: &Client,
    stream: &str,
    consumer: &str,
    stop: &CancellationToken,
) -> Result<Option<(String, String)>, String> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let attempt = async {
            let stream_arn = aws::stream_arn(kinesis, stream).await.map_err(|error| {
                let message = format!("live stream {stream}: {error}");
                StartError::of(error, message)
            })?;
            let consumer_arn = aws::register_stream_consumer(kinesis, &stream_arn, consumer)
                .await
                .map_err(|error| {
                    let message = format!("live stream consumer {consumer}: {error} (a stream has at most 20 consumers: docs/screens.md)");
                    StartError::of(error, message)
                })?;
            Ok::<_, StartError>((stream_arn, consumer_arn))
        };
        let failed = tokio::select! {
            attempt = attempt => match attempt {
                Ok(arns) => return Ok(Some(arns)),
                Err(StartError::Refused(reason)) => return Err(reason),
                Err(StartError::Failed(reason)) => reason,
            },
            _ = stop.cancelled() => return Ok(None),
        };
        tracing::warn!(stream, error = %failed, "live stream not started; trying again");
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.cancelled() => return Ok(None),
        }
    }
}

async fn deregister(kinesis: &Client, consumer_arn: &str, name: &str) {
    match kinesis
        .deregister_stream_consumer()
        .consumer_arn(consumer_arn)
        .send()
        .await
    {
        Ok(_) => tracing::info!(consumer = name, "live stream consumer deregistered"),
        Err(e) => {
            tracing::warn!(consumer = name, error = %DisplayErrorContext(&e), "live stream consumer not deregistered; deregister it by hand (docs/screens.md)")
        }
    }
}

async fn list_shards(kinesis: &Client, stream_arn: &str) -> Result<Vec<Shard>, String> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => kinesis.list_shards().next_token(token),
            None => kinesis.list_shards().stream_arn(stream_arn),
        };
        let listed = request
            .send()
            .await
            .map_err(|e| format!("ListShards: {}", DisplayErrorContext(&e)))?;
        shards.extend(listed.shards().iter().cloned());
        match listed.next_token() {
            Some(token) => next = Some(token.to_owned()),
            None => return Ok(shards),
        }
    }
}

/// Reads `shard` from `since_ms` onto `board`, renewing its subscription after the last record
/// seen, until the shard's end or `stop`.
#[allow(clippy::too_many_arguments)]
async fn read_shard(
    kinesis: Client,
    consumer_arn: String,
    shard: String,
    since_ms: i64,
    board: Board,
    closed: Closed,
    told: mpsc::Sender<Told>,
    stop: CancellationToken,
) {
    let mut after: Option<String> = None;
    let mut at_tip = false;
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    let errors = LogLimiter::new(Duration::from_secs(30));
    loop {
        let position = match &after {
            Some(sequence) => StartingPosition::builder()
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(sequence),
            None => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(since_ms)),
        }
        .build()
        .expect("the type is set");
        let subscribing = kinesis
            .subscribe_to_shard()
            .consumer_arn(&consumer_arn)
            .shard_id(&shard)
            .starting_position(position)
            .customize()
            .config_override(crate::aws::subscription_override())
            .send();
        let subscribed = tokio::select! {
            subscribed = tokio::time::timeout(SUBSCRIBE_DEADLINE, subscribing) => subscribed,
            _ = stop.cancelled() => return,
        };
        let mut output = match subscribed {
            Ok(Ok(output)) => output,
            failed => {
                let detail = match failed {
                    Err(_) => format!("no answer within {} s", SUBSCRIBE_DEADLINE.as_secs()),
                    Ok(Err(error)) => DisplayErrorContext(&error).to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                // One subscription a shard and consumer at a time, one call a second: a
                // renewal right after the last ends may be refused; wait and try again.
                if errors.admit("subscribe").is_some() {
                    tracing::warn!(shard, error = %detail, "live stream SubscribeToShard failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            let received = tokio::select! {
                received = tokio::time::timeout(SILENCE, output.event_stream.recv()) => received,
                _ = stop.cancelled() => return,
            };
            let Ok(received) = received else {
                tracing::warn!(
                    shard,
                    silent_s = SILENCE.as_secs(),
                    "live stream subscription silent; renewing it"
                );
                break;
            };
            match received {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    tracing::debug!(
                        shard,
                        records = event.records().len(),
                        continuation = event.continuation_sequence_number(),
                        children = event.child_shards().len(),
                        behind_ms = event.millis_behind_latest(),
                        "live stream event"
                    );
                    for record in event.records() {
                        after = Some(record.sequence_number().to_owned());
                        let published_ms = record
                            .approximate_arrival_timestamp()
                            .and_then(|t| t.to_millis().ok())
                            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
                        let outcome = match board.offer(
                            bytes::Bytes::copy_from_slice(record.data().as_ref()),
                            published_ms,
                        ) {
                            Ok(_) => "shown",
                            Err(Refused::NotNewer) => "not_newer",
                            Err(Refused::Malformed(why)) => {
                                if errors.admit("malformed").is_some() {
                                    tracing::warn!(shard, sequence = record.sequence_number(), error = %why, "not a live record; skipped");
                                }
                                "malformed"
                            }
                        };
                        metrics::record_screens_record_in(outcome);
                    }
                    if after.is_none() {
                        // Nothing read yet: renewals start where this subscription stands.
                        let continuation = event.continuation_sequence_number();
                        if !continuation.is_empty() {
                            after = Some(continuation.to_owned());
                        }
                    }
                    // A closed shard's last event has no continuation and names the children;
                    // an event with nothing in it from a shard listed closed also ends it (a
                    // server that never sends that last event, as kinesis-mock does not).
                    if event.continuation_sequence_number().is_empty()
                        || !event.child_shards().is_empty()
                        || (event.records().is_empty() && closed.contains(&shard))
                    {
                        let _ = told.send(Told::Ended(shard)).await;
                        return;
                    }
                    if !at_tip && event.millis_behind_latest() == 0 {
                        at_tip = true;
                        let _ = told.send(Told::AtTip(shard.clone())).await;
                    }
                }
                Ok(Some(_)) => {}
                // The subscription's 5 minutes are up: renew it where this one stopped.
                Ok(None) => break,
                Err(error) => {
                    if errors.admit("subscription").is_some() {
                        tracing::warn!(shard, error = %DisplayErrorContext(&error), "live stream subscription failed; renewing it");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => break,
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>, adjacent: Option<&str>) -> Shard {
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parent.map(str::to_owned))
            .set_adjacent_parent_shard_id(adjacent.map(str::to_owned))
            .hash_key_range(
                aws_sdk_kinesis::types::HashKeyRange::builder()
                    .starting_hash_key("0")
                    .ending_hash_key("1")
                    .build()
                    .unwrap(),
            )
            .sequence_number_range(
                aws_sdk_kinesis::types::SequenceNumberRange::builder()
                    .starting_sequence_number("0")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn a_child_is_read_after_every_parent_listed_is_read_to_its_end() {
        // 0 split into 2 and 3; 3 merged with 1 into 4; 5's parent is past retention.
        let shards = [
            shard("0", None, None),
            shard("1", None, None),
            shard("2", Some("0"), None),
            shard("3", Some("0"), None),
            shard("4", Some("3"), Some("1")),
            shard("5", Some("gone"), None),
        ];
        let none = HashSet::new();
        assert_eq!(startable(&shards, &none, &none), ["0", "1", "5"]);
        let started: HashSet<String> = ["0", "1", "5"].map(String::from).into();
        let ended: HashSet<String> = ["0"].map(String::from).into();
        assert_eq!(startable(&shards, &started, &ended), ["2", "3"]);
        let started: HashSet<String> = ["0", "1", "2", "3", "5"].map(String::from).into();
        let ended: HashSet<String> = ["0", "3"].map(String::from).into();
        assert!(
            startable(&shards, &started, &ended).is_empty(),
            "4 waits on 1"
        );
        let ended: HashSet<String> = ["0", "1", "3"].map(String::from).into();
        assert_eq!(startable(&shards, &started, &ended), ["4"]);
    }

    #[test]
    fn a_consumer_is_named_from_its_host_within_kinesis_rules() {
        let name = consumer_name();
        assert!(name.starts_with("classpulse-screens-"), "{name}");
        assert!(name.len() <= 128);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')));
    }
}
