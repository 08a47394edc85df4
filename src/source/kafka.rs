//! The Kafka source: one member of a consumer group (MSK in production), at least once.
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`): the
//! pipeline hands [`Source::commit`] the frontier of each partition once every sink has made
//! everything before it durable, and only then is it committed (asynchronously, batched by
//! `CLASSPULSE_COMMIT_INTERVAL`; synchronously once more at shutdown). A crash replays from the
//! last durable frontier.
//!
//! Lag comes from librdkafka's statistics (`statistics.interval.ms`, 5 s by default): messages
//! behind the partition's high watermark as seen in fetch responses, and how old the newest
//! consumed message is while there is lag (0 once caught up, so an idle topic never looks late).
//!
//! Not yet here (see the Kafka source issue): flushing and committing a revoked partition's
//! data before the rebalance completes (today the next owner replays it), pausing partitions
//! under backpressure, a dead-letter topic, MSK IAM authentication.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList};

use super::{RawBatch, Source, SourceError};
use crate::ack::PartitionId;
use crate::config::KafkaConfig;
use crate::decode::RawMessage;
use crate::health::Health;

/// How long shutdown waits for the final commit and for the consumer to leave its group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Newest consumed message time (epoch ms) per partition, shared with the statistics callback.
type LastSeen = Arc<Mutex<HashMap<PartitionId, i64>>>;

/// librdkafka callbacks of the source's consumer.
pub struct SourceContext {
    last_seen: LastSeen,
    health: Health,
}

impl ClientContext for SourceContext {
    /// Client-level errors; librdkafka retries on its own, so these only inform readiness.
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .not_ready("source", format!("kafka: no broker reachable ({reason})"));
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    /// Publishes lag per assigned partition (called on librdkafka's statistics interval).
    fn stats(&self, statistics: Statistics) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (topic, topic_stats) in &statistics.topics {
            for (index, partition_stats) in &topic_stats.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a negative lag means
                // not known yet (nothing fetched), which is not reported rather than shown as -1.
                if *index < 0 || partition_stats.consumer_lag < 0 {
                    continue;
                }
                let partition = PartitionId::new(topic.as_str(), *index as u32);
                let lag = partition_stats.consumer_lag as u64;
                let seconds = match (lag, last_seen.get(&partition)) {
                    (0, _) | (_, None) => 0.0,
                    (_, Some(seen_ms)) => ((now_ms - seen_ms) as f64 / 1000.0).max(0.0),
                };
                crate::metrics::set_source_lag("kafka", &partition, lag, seconds);
            }
        }
    }
}

impl ConsumerContext for SourceContext {}

/// A Kafka consumer-group member.
pub struct KafkaSource {
    /// `None` once shut down.
    consumer: Option<Arc<StreamConsumer<SourceContext>>>,
    /// Newest consumed message time per partition, for lag in seconds.
    last_seen: LastSeen,
    /// Readiness: a message received means the brokers are back.
    health: Health,
    /// Batches read but not yet handed out, one partition each.
    ready: VecDeque<RawBatch>,
    /// Messages gathered per call, at most.
    max_messages: usize,
    /// The last frontier committed per partition, for the final synchronous commit.
    committed: BTreeMap<PartitionId, u64>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Connects lazily: a broker that is down shows as
    /// retries, not as a start-up failure.
    pub fn new(
        config: &KafkaConfig,
        max_messages: usize,
        health: Health,
    ) -> Result<KafkaSource, SourceError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            // A new group reads the backlog instead of skipping it.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("client.id", format!("classpulse-{}", std::process::id()))
            .set("statistics.interval.ms", "5000");
        for (property, value) in &config.properties {
            client.set(property, value);
        }
        let last_seen = LastSeen::default();
        let context = SourceContext {
            last_seen: Arc::clone(&last_seen),
            health: health.clone(),
        };
        let consumer: StreamConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(|error| SourceError::Fatal(format!("kafka consumer: {error}")))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|error| SourceError::Fatal(format!("subscribing to {topics:?}: {error}")))?;
        tracing::info!(brokers = %config.brokers, topics = ?topics, group = %config.group_id, "kafka consumer subscribed");
        Ok(KafkaSource {
            consumer: Some(Arc::new(consumer)),
            last_seen,
            health,
            ready: VecDeque::new(),
            max_messages: max_messages.max(1),
            committed: BTreeMap::new(),
        })
    }

    fn to_raw(message: &rdkafka::message::BorrowedMessage<'_>) -> (PartitionId, RawMessage) {
        let partition = PartitionId::new(message.topic(), message.partition() as u32);
        let raw = RawMessage {
            offset: message.offset() as u64,
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(Bytes::copy_from_slice),
            payload: message.payload().map(Bytes::copy_from_slice),
        };
        (partition, raw)
    }

    fn offsets(frontiers: &[(PartitionId, u64)]) -> Result<TopicPartitionList, SourceError> {
        let mut list = TopicPartitionList::new();
        for (partition, next_offset) in frontiers {
            list.add_partition_offset(
                &partition.stream,
                partition.index as i32,
                Offset::Offset(*next_offset as i64),
            )
            .map_err(|error| SourceError::Fatal(format!("offset for {partition}: {error}")))?;
        }
        Ok(list)
    }
}

#[async_trait]
impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
        if let Some(batch) = self.ready.pop_front() {
            return Ok(Some(batch));
        }
        let Some(consumer) = &self.consumer else {
            return Ok(None);
        };
        // Wait for one message (cancel-safe: a pending recv has taken nothing from the queue),
        // then take whatever else is already there without waiting.
        let first = consumer
            .recv()
            .await
            .map_err(|error| SourceError::Unavailable(format!("kafka: {error}")))?;
        self.health.ready("source");
        let mut by_partition: BTreeMap<PartitionId, Vec<RawMessage>> = BTreeMap::new();
        // Newest message time per partition (epoch ms), for lag in seconds.
        let mut newest: BTreeMap<PartitionId, i64> = BTreeMap::new();
        let mut note_time = |partition: &PartitionId, timestamp: rdkafka::Timestamp| {
            if let Some(time_ms) = timestamp.to_millis() {
                newest.insert(partition.clone(), time_ms);
            }
        };
        let (partition, message) = Self::to_raw(&first);
        note_time(&partition, first.timestamp());
        by_partition.entry(partition).or_default().push(message);
        drop(first);
        for _ in 1..self.max_messages {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => {
                    let (partition, raw) = Self::to_raw(&message);
                    note_time(&partition, message.timestamp());
                    by_partition.entry(partition).or_default().push(raw);
                }
                Some(Err(error)) => tracing::warn!(error = %error, "kafka consumer error"),
                None => break,
            }
        }
        {
            let mut last_seen = self
                .last_seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (partition, time_ms) in &newest {
                last_seen.insert(partition.clone(), *time_ms);
            }
        }
        self.ready.extend(
            by_partition
                .into_iter()
                .map(|(partition, messages)| RawBatch {
                    partition,
                    messages,
                }),
        );
        Ok(self.ready.pop_front())
    }

    async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
        let offsets = Self::offsets(frontiers)?;
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(|error| SourceError::Unavailable(format!("committing offsets: {error}")))?;
        self.committed.extend(frontiers.iter().cloned());
        Ok(())
    }

    async fn shutdown(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let frontiers: Vec<_> = self
            .committed
            .iter()
            .map(|(p, o)| (p.clone(), *o))
            .collect();
        let committer = Arc::clone(&consumer);
        let offsets = Self::offsets(&frontiers);
        // Both calls block on the broker; keep them off the async workers and bound them.
        let final_commit = tokio::task::spawn_blocking(move || match offsets {
            Ok(offsets) if offsets.count() > 0 => committer
                .commit(&offsets, CommitMode::Sync)
                .map_err(|e| e.to_string()),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, final_commit).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(partitions = frontiers.len(), "final offsets committed")
            }
            Ok(Ok(Err(error))) => tracing::warn!(
                error,
                "final commit failed; the next owner replays from the last one"
            ),
            _ => tracing::warn!(
                "final commit did not finish in time; the next owner replays from the last one"
            ),
        }
        // Leaving the group can hang (it never finishes against tansu 0.6): do it on a thread
        // of its own and do not wait past the close timeout.
        let (closed_sender, closed) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            drop(consumer);
            let _ = closed_sender.send(());
        });
        if tokio::time::timeout(CLOSE_TIMEOUT, closed).await.is_err() {
            tracing::warn!("kafka consumer did not leave its group in time; the broker will expire the session");
        }
    }
}
