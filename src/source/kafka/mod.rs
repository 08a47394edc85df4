//! The Kafka source: one member of a consumer group (MSK in production), at least once.
//!
//! Offsets are never committed by librdkafka on its own (`enable.auto.commit=false`): the
//! pipeline hands [`Source::commit`] the frontier of each partition once every sink has made
//! everything before it durable, and only then is it committed (asynchronously, batched by
//! `CLASSPULSE_COMMIT_INTERVAL`; synchronously once more at shutdown). A crash replays from the
//! last durable frontier.
//!
//! Lag comes from librdkafka's statistics (`statistics.interval.ms`, every 5 s): messages
//! behind the partition's high watermark as seen in fetch responses, and how old the newest
//! consumed message is while there is lag (0 once caught up, so an idle topic never looks late).
//!
//! Rebalances (cooperative-sticky by default): an assigned or revoked partition starts a new turn
//! of ownership in the [`Partitions`] registry. A revoked partition's durable frontier is
//! committed synchronously before it is let go, and nothing read in an earlier turn is ever
//! committed again; commits are limited to the partitions assigned now.
//!
//! Consumer errors are classified: unreachable brokers or a missing topic make the source not
//! ready and retry; refused credentials or ACLs, and a broker certificate that fails TLS
//! verification, stop the process (retrying cannot fix them); anything about one partition is
//! logged and counted while the others go on (`classpulse_source_errors_total{class}`).
//! Repeated warnings are logged once per 30 s with a count of those left out.
//!
//! A revoked partition's open lake objects are dropped, not written (their tokens belong to an
//! old turn, see [`crate::ack::AckToken::is_current`]): its next owner replays them, and the
//! lake's replay index keeps what was written from being written twice.
//!
//! The end of each partition is tracked for the aggregate stage (`enable.partition.eof`; see
//! [`crate::partitions::AtEnd`]): a class becomes final by the wall clock only while its
//! partition is read to its end, never while it is paused, starved or cut off from its leader.
//!
//! Here the source; `context.rs` holds librdkafka's callbacks (log, errors, statistics,
//! rebalances) and the classes of its errors. The client's configuration, its secrets kept out
//! of errors and its MSK IAM tokens come from [`crate::kafka`], which the dead-letter topic's
//! producer shares. The dead-letter topic is a sink: [`crate::sink::dead_letter_topic`].

mod context;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{RawBatch, Source, SourceError};
use crate::ack::PartitionId;
use crate::config::KafkaConfig;
use crate::decode::RawMessage;
use crate::health::Health;
use crate::kafka::{consumer_config, redacted, MskIam};
use crate::log_limit::LogLimiter;
use crate::partitions::Partitions;
use context::{assigned, classify, names, now_ms, ErrorClass, SourceContext};

/// How long shutdown waits for the final commit and for the consumer to leave its group.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Newest consumed message time (epoch ms) per partition, shared with the statistics callback.
type LastSeen = Arc<Mutex<HashMap<PartitionId, i64>>>;

/// The pipeline's partition registry, handed over by [`Source::attach`].
type SharedPartitions = Arc<OnceLock<Partitions>>;

/// What the client has learned that retrying will not fix: the brokers' TLS certificate
/// failed verification (librdkafka reports it only in its error callback; the consumer's own
/// errors say just "SSL error", which a connection cut mid-handshake also gives).
type Refusal = Arc<Mutex<Option<String>>>;

/// How often one kind of repeated client warning is logged (the rest are counted into it).
const REPEAT_LOG_INTERVAL: Duration = Duration::from_secs(30);

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
    /// The pipeline's acknowledgements (for turns of ownership).
    partitions: SharedPartitions,
    /// Whether fetching is paused because the pipeline is full.
    paused: bool,
    /// The offset after the last message read per partition, with the turn it was read in.
    read_next: HashMap<PartitionId, (u64, u64)>,
    /// Partitions reported read to their end and not read past since.
    at_end: HashSet<PartitionId>,
    /// Set by the client callbacks when retrying cannot help (see [`Refusal`]).
    refusal: Refusal,
    /// Repeated warnings, once per [`REPEAT_LOG_INTERVAL`].
    repeats: Arc<LogLimiter>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes. Connects lazily: a broker that is down shows as
    /// retries, not as a start-up failure.
    pub fn new(
        config: &KafkaConfig,
        max_messages: usize,
        health: Health,
        msk_iam: Option<MskIam>,
    ) -> Result<KafkaSource, SourceError> {
        let client = consumer_config(config);
        let last_seen = LastSeen::default();
        let partitions = SharedPartitions::default();
        let refusal = Refusal::default();
        let repeats = Arc::new(LogLimiter::new(REPEAT_LOG_INTERVAL));
        let context = SourceContext::new(
            Arc::clone(&last_seen),
            health.clone(),
            Arc::clone(&partitions),
            Arc::clone(&refusal),
            Arc::clone(&repeats),
            msk_iam,
        );
        let consumer: StreamConsumer<SourceContext> = client
            .create_with_context(context)
            .map_err(|error| SourceError::Fatal(format!("kafka consumer: {}", redacted(&error))))?;
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
            partitions,
            paused: false,
            read_next: HashMap::new(),
            at_end: HashSet::new(),
            refusal,
            repeats,
        })
    }

    /// Takes one message into `batches` (by partition and turn of ownership: a rebalance may
    /// run inside `recv`, and what was read before it must not pass for the replay after it).
    fn take(
        &mut self,
        message: &rdkafka::message::BorrowedMessage<'_>,
        batches: &mut BTreeMap<(PartitionId, u64), Vec<RawMessage>>,
        newest: &mut BTreeMap<PartitionId, i64>,
    ) {
        let (partition, raw) = Self::to_raw(message);
        if let Some(time_ms) = message.timestamp().to_millis() {
            newest.insert(partition.clone(), time_ms);
        }
        let partitions = self.partitions.get();
        let generation = partitions.map_or(0, |partitions| partitions.generation(&partition));
        if self.at_end.remove(&partition) {
            if let Some(partitions) = partitions {
                partitions.left_end(&partition);
            }
        }
        self.read_next
            .insert(partition.clone(), (generation, raw.offset + 1));
        batches
            .entry((partition, generation))
            .or_default()
            .push(raw);
    }

    /// librdkafka read partition `index` to its end (`enable.partition.eof`: once each time
    /// a fetch finds nothing past the last message delivered). The event does not name the
    /// topic: with several topics sharing the index it is not used, and those partitions'
    /// classes become final by event time and at the end of input only.
    fn reached_end(&mut self, consumer: &StreamConsumer<SourceContext>, index: i32) {
        let Some(partitions) = self.partitions.get() else {
            return;
        };
        let candidates: Vec<PartitionId> = assigned(consumer)
            .into_iter()
            .filter(|partition| partition.index as i32 == index)
            .collect();
        let [partition] = candidates.as_slice() else {
            tracing::debug!(index, partitions = %names(&candidates), "end of partition reported for an index several topics share; not used");
            return;
        };
        let generation = partitions.generation(partition);
        // Nothing read in this turn: the end is where reading started, which the aggregate
        // state restored for the turn already includes.
        let next_offset = match self.read_next.get(partition) {
            Some((turn, next_offset)) if *turn == generation => *next_offset,
            _ => 0,
        };
        partitions.reached_end(partition, generation, next_offset, now_ms());
        self.at_end.insert(partition.clone());
    }

    /// Why the brokers refuse this client for good, if the client callbacks said so.
    fn refusal(&self) -> Option<String> {
        self.refusal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Nothing new would be seen now (paused, brokers away): time at the end starts again.
    fn doubt_ends(&self) {
        if let Some(partitions) = self.partitions.get() {
            partitions.doubt_end(None, now_ms());
        }
    }

    /// Pauses or resumes fetching of every assigned partition. A paused partition fetches
    /// nothing, so its time at the end restarts at every call (the pipeline calls it again
    /// each second while paused) and at the resume.
    fn set_paused(&mut self, paused: bool) {
        self.doubt_ends();
        let Some(consumer) = &self.consumer else {
            return;
        };
        let Ok(assignment) = consumer.assignment() else {
            return;
        };
        let result = if paused {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        };
        if let Err(error) = result {
            tracing::warn!(error = %error, paused, "kafka pause or resume failed");
        }
        if paused != self.paused {
            tracing::debug!(
                paused,
                partitions = assignment.count(),
                "kafka fetching paused or resumed (backpressure)"
            );
        }
        self.paused = paused;
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
        let Some(consumer) = self.consumer.clone() else {
            return Ok(None);
        };
        // Wait for one message (cancel-safe: a pending recv has taken nothing from the queue),
        // then take whatever else is already there without waiting.
        let first = loop {
            match consumer.recv().await {
                Ok(message) => break message,
                Err(KafkaError::PartitionEOF(index)) => self.reached_end(&consumer, index),
                Err(error) => match classify(&error) {
                    ErrorClass::Partition => {
                        // One partition's trouble (librdkafka recovers it, or resets its
                        // offset): the others go on, and readiness is not affected.
                        tracing::warn!(error = %error, "kafka partition error");
                        crate::metrics::record_source_error("kafka", "partition");
                    }
                    // librdkafka reconnects and refreshes metadata on its own, and its queue
                    // holds these errors in line with the messages: keep reading, so that the
                    // messages behind a burst of them are not held back by the pipeline's
                    // retry delays (after a broker restart, a burst is one error per delay).
                    // One lost connection does not doubt the partitions' ends: the statistics
                    // do, when a leader is down or silent (docs/decisions/0014).
                    ErrorClass::Unavailable => {
                        if let Some(reason) = self.refusal() {
                            crate::metrics::record_source_error("kafka", "denied");
                            return Err(SourceError::Fatal(format!(
                                "kafka: the brokers' TLS certificate is not trusted: {reason}"
                            )));
                        }
                        crate::metrics::record_source_error("kafka", "unavailable");
                        self.health.not_ready("source", format!("kafka: {error}"));
                        let kind = format!("unavailable {:?}", error.rdkafka_error_code());
                        if let Some(left_out) = self.repeats.admit(&kind) {
                            tracing::warn!(error = %error, repeats_left_out = left_out, "kafka unavailable; librdkafka retries");
                        }
                    }
                    ErrorClass::Denied => {
                        crate::metrics::record_source_error("kafka", "denied");
                        return Err(SourceError::Fatal(format!(
                            "kafka: {error} (check the credentials and ACLs of the group and topics)"
                        )));
                    }
                },
            }
        };
        self.health.ready("source");
        let mut by_partition: BTreeMap<(PartitionId, u64), Vec<RawMessage>> = BTreeMap::new();
        // Newest message time per partition (epoch ms), for lag in seconds.
        let mut newest: BTreeMap<PartitionId, i64> = BTreeMap::new();
        self.take(&first, &mut by_partition, &mut newest);
        drop(first);
        for _ in 1..self.max_messages {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => self.take(&message, &mut by_partition, &mut newest),
                Some(Err(KafkaError::PartitionEOF(index))) => self.reached_end(&consumer, index),
                // Whatever it is, what was read so far goes out.
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "kafka consumer error");
                    break;
                }
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
                .map(|((partition, generation), messages)| RawBatch {
                    partition,
                    generation,
                    messages,
                }),
        );
        Ok(self.ready.pop_front())
    }

    fn pause(&mut self) {
        self.set_paused(true);
    }

    fn resume(&mut self) {
        self.set_paused(false);
    }

    /// Polls briefly: librdkafka counts it as the application polling, serves rebalances, and
    /// keeps the member in its group. A partition assigned meanwhile is paused too; a message
    /// fetched before the pause is kept, in order, for the next batch.
    async fn keep_alive(&mut self) {
        if self.paused {
            self.set_paused(true);
        }
        let Some(consumer) = self.consumer.clone() else {
            return;
        };
        match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Ok(Ok(message)) => {
                let (mut batches, mut newest) = (BTreeMap::new(), BTreeMap::new());
                self.take(&message, &mut batches, &mut newest);
                self.ready.extend(batches.into_iter().map(
                    |((partition, generation), messages)| RawBatch {
                        partition,
                        generation,
                        messages,
                    },
                ));
            }
            Ok(Err(KafkaError::PartitionEOF(index))) => self.reached_end(&consumer, index),
            Ok(Err(error)) => tracing::warn!(error = %error, "kafka consumer error while paused"),
            Err(_) => {}
        }
    }

    async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        // Only partitions still assigned: a commit for one given up would overwrite its new
        // owner's progress.
        let assigned = assigned(consumer);
        let frontiers: Vec<(PartitionId, u64)> = frontiers
            .iter()
            .filter(|(partition, _)| assigned.contains(partition))
            .cloned()
            .collect();
        if frontiers.is_empty() {
            return Ok(());
        }
        let offsets = Self::offsets(&frontiers)?;
        consumer
            .commit(&offsets, CommitMode::Async)
            .map_err(|error| SourceError::Unavailable(format!("committing offsets: {error}")))?;
        self.committed.extend(frontiers.iter().cloned());
        Ok(())
    }

    fn attach(&mut self, partitions: Partitions) {
        let _ = self.partitions.set(partitions);
    }

    async fn shutdown(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let assigned = assigned(&consumer);
        let frontiers: Vec<_> = self
            .committed
            .iter()
            .filter(|(partition, _)| assigned.contains(partition))
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
