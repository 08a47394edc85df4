//! Reads the live topic onto the board: every partition, no consumer group and no commits,
//! from `now - lookback` by the broker's offsets for times, and records older than the
//! lookback skipped by their own timestamps (a broker that does not answer offsets for times
//! is read from its start). `/readyz` holds the server back until every partition is read to
//! the end it had at start. Partitions added to the topic are read from their start.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::health::Health;
use crate::live::board::{Board, Refused};
use crate::log_limit::LogLimiter;
use crate::metrics;

/// Health component of the reader.
pub const NAME: &str = "live topic";
/// How often the topic's partitions are listed again.
const METADATA_EVERY: Duration = Duration::from_secs(30);
/// How long a metadata or offsets call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the offsets-for-times lookup may take (a broker that does not answer it is read
/// from its start).
const TIMES_TIMEOUT: Duration = Duration::from_secs(5);

/// The reader's configuration: the operator's properties, then what it depends on.
fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        // Required by librdkafka; never joined (partitions are assigned, nothing committed).
        .set(
            "group.id",
            format!("classpulse-screens-{}", std::process::id()),
        )
        .set(
            "client.id",
            format!("classpulse-screens-{}", std::process::id()),
        )
        .set("fetch.wait.max.ms", "100");
    for (property, value) in &config.properties {
        client.set(property, value);
    }
    client
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    client
}

/// Reads `topic` onto `board` until `stop`. `health` has [`NAME`] not ready until every
/// partition is read to the end it had at start (set by [`not_ready_yet`] before the server
/// answers).
pub async fn read(
    config: &KafkaConfig,
    topic: &str,
    lookback: Duration,
    board: Board,
    health: Health,
    stop: CancellationToken,
) -> Result<(), String> {
    let consumer: StreamConsumer = consumer_config(config)
        .create()
        .map_err(|error| format!("live topic reader: {}", crate::kafka::redacted(&error)))?;
    let mut assigned: HashSet<i32> = HashSet::new();
    // Partitions not yet read to the end they had at start.
    let mut behind: HashMap<i32, i64> = HashMap::new();
    let mut started = false;
    let mut next_listing = tokio::time::Instant::now();
    let errors = LogLimiter::new(Duration::from_secs(30));
    let mut ready = false;
    loop {
        if tokio::time::Instant::now() >= next_listing {
            next_listing = tokio::time::Instant::now() + METADATA_EVERY;
            match assign_new(&consumer, topic, lookback, &mut assigned, started).await {
                Ok(added) => {
                    for (partition, end) in added {
                        if end > 0 && !started {
                            behind.insert(partition, end);
                        }
                    }
                    if !started && !assigned.is_empty() {
                        started = true;
                        tracing::info!(
                            topic,
                            partitions = assigned.len(),
                            behind = behind.len(),
                            "live topic assigned"
                        );
                    }
                }
                Err(error) => {
                    if errors.admit("listing").is_some() {
                        tracing::warn!(topic, error = %error, "live topic not listed; trying again");
                    }
                    next_listing = tokio::time::Instant::now() + Duration::from_secs(2);
                }
            }
        }
        if started && behind.is_empty() && !ready {
            tracing::info!(topic, "live topic read to its end: ready");
            health.ready(NAME);
            ready = true;
        }
        let message = tokio::select! {
            message = consumer.recv() => message,
            _ = tokio::time::sleep_until(next_listing) => continue,
            _ = stop.cancelled() => return Ok(()),
        };
        match message {
            Ok(message) => {
                let partition = message.partition();
                if behind
                    .get(&partition)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    behind.remove(&partition);
                }
                let published_ms = match message.timestamp() {
                    Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => ms,
                    Timestamp::NotAvailable => chrono::Utc::now().timestamp_millis(),
                };
                let oldest = chrono::Utc::now().timestamp_millis() - lookback.as_millis() as i64;
                if published_ms < oldest {
                    metrics::record_screens_record_in("too_old");
                } else if let Some(payload) = message.payload() {
                    let outcome = match board
                        .offer(bytes::Bytes::copy_from_slice(payload), published_ms)
                    {
                        Ok(_) => "shown",
                        Err(Refused::NotNewer) => "not_newer",
                        Err(Refused::Malformed(why)) => {
                            if errors.admit("malformed").is_some() {
                                tracing::warn!(topic, partition, offset = message.offset(), error = %why, "not a live record; skipped");
                            }
                            "malformed"
                        }
                    };
                    metrics::record_screens_record_in(outcome);
                }
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                behind.remove(&partition);
            }
            Err(error) => {
                if errors.admit("read").is_some() {
                    tracing::warn!(topic, error = %error, "live topic read failed; librdkafka retries");
                }
            }
        }
    }
}

/// Marks the reader not ready, before anything can ask.
pub fn not_ready_yet(health: &Health, topic: &str, lookback: Duration) {
    health.not_ready(
        NAME,
        format!("{topic}: reading the last {}s", lookback.as_secs()),
    );
}

/// Assigns the topic's partitions not yet assigned, from `now - lookback` (the first time) or
/// their start (partitions added later); returns them with their ends now.
async fn assign_new(
    consumer: &StreamConsumer,
    topic: &str,
    lookback: Duration,
    assigned: &mut HashSet<i32>,
    started: bool,
) -> Result<Vec<(i32, i64)>, String> {
    let metadata = blocking(consumer, {
        let topic = topic.to_owned();
        move |c| c.fetch_metadata(Some(&topic), CALL_TIMEOUT)
    })
    .await?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|id| !assigned.contains(id))
        .collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        let offset = if started {
            Offset::Beginning
        } else {
            let since = chrono::Utc::now().timestamp_millis() - lookback.as_millis() as i64;
            Offset::Offset(since)
        };
        list.add_partition_offset(topic, *partition, offset)
            .map_err(|error| error.to_string())?;
    }
    if !started {
        // Offsets for times; a broker that cannot answer leaves the partition at its start.
        list = match blocking(consumer, {
            let list = list.clone();
            move |c| c.offsets_for_times(list, TIMES_TIMEOUT)
        })
        .await
        {
            Ok(found) => {
                let mut starts = TopicPartitionList::new();
                for element in found.elements() {
                    // Anything but an offset (a broker that answers "the end" whatever the
                    // time, as the local one does) reads from the start; the timestamps skip
                    // what is older than the lookback.
                    let offset = match element.offset() {
                        Offset::Offset(offset) if offset >= 0 => Offset::Offset(offset),
                        _ => Offset::Beginning,
                    };
                    starts
                        .add_partition_offset(topic, element.partition(), offset)
                        .map_err(|error| error.to_string())?;
                }
                starts
            }
            Err(_) => {
                let mut starts = TopicPartitionList::new();
                for partition in &partitions {
                    starts
                        .add_partition_offset(topic, *partition, Offset::Beginning)
                        .map_err(|error| error.to_string())?;
                }
                starts
            }
        };
    }
    let mut ends = Vec::new();
    for partition in &partitions {
        let (_, high) = blocking(consumer, {
            let topic = topic.to_owned();
            let partition = *partition;
            move |c| c.fetch_watermarks(&topic, partition, CALL_TIMEOUT)
        })
        .await?;
        ends.push((*partition, high));
    }
    consumer
        .incremental_assign(&list)
        .map_err(|error| error.to_string())?;
    assigned.extend(partitions);
    Ok(ends)
}

/// Runs a blocking librdkafka call off the runtime's workers.
async fn blocking<T: Send + 'static>(
    consumer: &StreamConsumer,
    call: impl FnOnce(&StreamConsumer) -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, String> {
    // The calls are short (bounded by CALL_TIMEOUT) and rare; block_in_place keeps the
    // consumer borrowed rather than shared.
    let result = tokio::task::block_in_place(|| call(consumer));
    result.map_err(|error| error.to_string())
}
