//! The Kinesis source: one of N tasks sharing a stream's shards through leases in DynamoDB, the
//! way the Kinesis Client Library does, in the same pipeline as the Kafka source.
//!
//! ```text
//!             ┌──────────── coordinator (every lease duration / 3) ────────────┐
//!             │ ListShards → new leases · renew ours · take free/expired/steal │
//!             │ finished shards → SHARD_END                                    │
//!             └──────────────┬─────────────────────────────────────────────────┘
//!                            │ starts/stops one reader per lease held
//!   reader(shard) ── GetRecords ──▶ de-aggregate (KPL) ──▶ RawBatch ──▶ bounded channel ──▶ pipeline
//!                                                                                │ durable frontiers
//!   lease table ◀── conditional checkpoint (owner + counter) ◀── Source::commit ◀─┘
//! ```
//!
//! **Offsets.** The pipeline numbers messages with a `u64` offset per partition; Kinesis
//! sequence numbers are up to 128-bit and not dense. Each shard's messages are numbered from the
//! offset stored with its checkpoint (`checkpointOffset`, 0 at the start), one per user record,
//! so a replay from a checkpoint numbers every record exactly as the first read did: the lake's
//! replay index and the events table rely on that. A shard started at `LATEST` or
//! `AT_TIMESTAMP` pins its first record's sequence number in the lease before handing it out,
//! so a restart before the first checkpoint reads the same records.
//!
//! **Checkpoints** advance only to the last whole Kinesis record below the durable frontier
//! (KPL user records of one record are checkpointed together); they are conditional on the
//! lease's owner and counter, so a worker that lost its lease (paused past expiry, stolen from)
//! has its checkpoint refused, stops reading the shard and starts a new turn of ownership in
//! the [`Partitions`] so nothing it read is ever committed.
//!
//! **Resharding.** A closed shard's reader reaches its end; once every record of it is durable
//! its lease is checkpointed `SHARD_END` and the shard list is synced at once. A child shard's
//! lease becomes readable only when all its parents' leases are `SHARD_END`, and it starts at
//! its beginning, so per-class order survives splits and merges.
//!
//! **Reading** respects the per-shard limits: GetRecords at most 5 times a second (here at most
//! every 200 ms, and every `CLASSPULSE_KINESIS_POLL_INTERVAL` when caught up), throughput
//! exceptions backed off with jitter, an expired iterator re-resolved after the last record read.
//! `MillisBehindLatest` is `classpulse_source_lag_seconds`.
//!
//! A child shard's partition carries its [`Lineage`](crate::partitions::Lineage) (its parents
//! and hash key range) in the [`Partitions`], so the aggregate stage takes over the parents'
//! classes in that range before counting the child's first event.
//!
//! Here the [`Source`] and the mapping of frontiers to checkpoints; `coordinator.rs` runs the
//! rounds of leases, `reader.rs` the polling readers, `fan_out.rs` enhanced fan-out, `lease.rs`
//! the lease table and `kpl.rs` KPL de-aggregation.

mod coordinator;
mod fan_out;
pub mod kpl;
pub mod lease;
mod reader;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::lease::{Checkpoint, LeaseError, LeaseTable};
use super::{RawBatch, Source, SourceError};
use crate::ack::PartitionId;
use crate::config::KinesisConfig;
use crate::health::Health;
use crate::partitions::Partitions;
use crate::retry::Backoff;
use coordinator::{coordinate, finish_shard, lose};
use fan_out::register_consumer;

/// Metric label and lake object prefix.
pub const KIND: &str = "kinesis";
/// Leases taken per coordinator round, at most (the KCL takes a few at a time, too).
const MAX_TAKES_PER_ROUND: usize = 4;
/// Shortest gap between two GetRecords calls on one shard (the limit is 5 a second per shard,
/// shared by every consumer of the stream).
const MIN_POLL_GAP: Duration = Duration::from_millis(200);
/// How long shutdown waits to release the leases.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Batches waiting for the pipeline, over all shards.
const CHANNEL_BATCHES: usize = 8;
/// The fewest records a GetRecords call asks for while answers are being lost on the way.
const MIN_RECORDS_PER_CALL: usize = 100;
/// How long the answer opening a fan-out subscription may take (its stream has no attempt
/// deadline, see [`crate::aws::call_timeouts`]).
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a fan-out subscription may go without an event before it is renewed. Kinesis sends
/// one at least every few seconds even with no records; 30 s is the KCL's read timeout too.
const FAN_OUT_SILENCE: Duration = Duration::from_secs(30);

/// The number in a shard id (`shardId-000000000012` is 12): the partition index.
pub fn shard_index(shard_id: &str) -> Option<u32> {
    let digits = shard_id.rsplit('-').next()?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The stream's name, from a name or an ARN (`arn:aws:kinesis:region:account:stream/name`).
pub fn stream_name(stream: &str) -> &str {
    match stream.strip_prefix("arn:") {
        Some(_) => stream
            .rsplit_once("stream/")
            .map_or(stream, |(_, name)| name),
        None => stream,
    }
}

/// What is known of one shard's records handed out but not yet checkpointed.
#[derive(Debug, Default)]
struct Positions {
    /// The turn of ownership the reader that fills this runs in.
    generation: u64,
    /// Whole Kinesis records in order: the offset after the record, its sequence number.
    records: VecDeque<(u64, String)>,
    /// The shard is closed and read to its end: the offset after its last record.
    end: Option<u64>,
}

impl Positions {
    /// The checkpoint that `frontier` (every offset below it durable) allows, if it moves.
    fn checkpoint_for(&self, frontier: u64) -> Option<(Checkpoint, usize)> {
        let whole = self
            .records
            .iter()
            .take_while(|(end, _)| *end <= frontier)
            .count();
        if let Some(end) = self
            .end
            .filter(|end| whole == self.records.len() && *end <= frontier)
        {
            return Some((Checkpoint::ShardEnd { offset: end }, whole));
        }
        let (offset, sequence) = self.records.get(whole.checked_sub(1)?)?;
        Some((
            Checkpoint::After {
                sequence: sequence.clone(),
                offset: *offset,
            },
            whole,
        ))
    }
}

/// A lease this task holds.
struct Held {
    counter: u64,
    partition: PartitionId,
    /// Stops the shard's reader.
    reader: CancellationToken,
    /// Being handed over to this worker: reading stopped, the transfer is due next round.
    handing_off: Option<String>,
    /// When the lease was last taken, renewed or checkpointed: past the lease duration, the
    /// reader hands nothing out until a renewal succeeds (another task may own it by now).
    renewed_at: Instant,
}

/// Everything the readers, the coordinator and the source share.
struct Shared {
    kinesis: aws_sdk_kinesis::Client,
    leases: LeaseTable,
    config: KinesisConfig,
    /// Stream name (partition ids and logs).
    stream: Arc<str>,
    worker: String,
    health: Health,
    partitions: Arc<OnceLock<Partitions>>,
    /// Leases held, by shard id. Every lease write of this task goes through this lock, so
    /// renewals and checkpoints never race each other for the counter.
    held: tokio::sync::Mutex<BTreeMap<String, Held>>,
    /// Records handed out per shard id; written by readers, read by commits.
    positions: Mutex<HashMap<String, Positions>>,
    /// Readers hand batches (and the coordinator fatal errors) to the pipeline.
    batches: mpsc::Sender<Result<RawBatch, SourceError>>,
    /// A reader reached a shard's end: sync the shard list now.
    shard_ended: tokio::sync::Notify,
    /// Stops the coordinator and every reader.
    stop: CancellationToken,
    /// The registered stream consumer read through, with enhanced fan-out.
    consumer_arn: OnceLock<String>,
    /// Shards whose reads fail now, with the reason: the source is not ready while any does.
    failing: Mutex<BTreeMap<String, String>>,
}

/// The health component of the shard readers (the coordinator's is `source`).
const READS: &str = "shard reads";

impl Shared {
    /// A read of `shard_id` failed (an error, or no answer within the call timeout).
    fn read_failed(&self, shard_id: &str, reason: String) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing.insert(shard_id.to_owned(), reason);
        self.report_reads(&failing);
    }

    /// A read of `shard_id` succeeded, or its reader stopped.
    fn read_ok(&self, shard_id: &str) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.remove(shard_id).is_some() {
            self.report_reads(&failing);
        }
    }

    fn report_reads(&self, failing: &BTreeMap<String, String>) {
        match failing.iter().next() {
            None => self.health.ready(READS),
            Some((shard_id, reason)) => self.health.not_ready(
                READS,
                format!(
                    "kinesis: reads of {} shard(s) failing; {shard_id}: {reason}",
                    failing.len()
                ),
            ),
        }
    }
}

/// Clears a reader's failing state however it ends (its task may be aborted mid-call when its
/// lease is lost).
struct ReadsGuard<'a> {
    shared: &'a Shared,
    shard_id: &'a str,
}

impl Drop for ReadsGuard<'_> {
    fn drop(&mut self) {
        self.shared.read_ok(self.shard_id);
    }
}

/// One task's share of a Kinesis stream.
pub struct KinesisSource {
    shared: Arc<Shared>,
    batches: mpsc::Receiver<Result<RawBatch, SourceError>>,
    coordinator: Option<JoinHandle<()>>,
}

impl KinesisSource {
    /// Creates the lease table if missing and starts the coordinator, which takes leases and
    /// starts readers. A server that cannot be reached shows as retries and `/readyz`, not as
    /// a start-up failure; access denied on the lease table is fatal.
    pub async fn start(
        config: &KinesisConfig,
        kinesis: aws_sdk_kinesis::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        health: Health,
    ) -> Result<KinesisSource, SourceError> {
        let leases = LeaseTable::new(dynamodb, &config.lease_table);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match leases.ensure().await {
                Ok(()) => break,
                Err(error) if error.is_retryable() && backoff.attempts() < 8 => {
                    health.not_ready("source", error.to_string());
                    tracing::warn!(error = %error, "lease table not reachable yet");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(error) => return Err(lease_failure(error)),
            }
        }
        let worker = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "classpulse".to_owned()),
            std::process::id(),
            rand::random::<u32>()
        );
        let (sender, batches) = mpsc::channel(CHANNEL_BATCHES);
        let shared = Arc::new(Shared {
            kinesis,
            leases,
            stream: Arc::from(stream_name(&config.stream)),
            config: config.clone(),
            worker,
            health,
            partitions: Arc::default(),
            held: tokio::sync::Mutex::default(),
            positions: Mutex::default(),
            failing: Mutex::default(),
            batches: sender,
            shard_ended: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
            consumer_arn: OnceLock::new(),
        });
        if let Some(name) = &config.efo_consumer {
            let arn = register_consumer(&shared, name).await?;
            tracing::info!(consumer = %arn, "reading by enhanced fan-out");
            let _ = shared.consumer_arn.set(arn);
        }
        tracing::info!(stream = %config.stream, worker = %shared.worker, lease_table = %config.lease_table, "kinesis consumer starting");
        Ok(KinesisSource {
            shared,
            batches,
            coordinator: None,
        })
    }

    /// This task's worker id (the `leaseOwner` of its leases).
    pub fn worker(&self) -> &str {
        &self.shared.worker
    }
}

fn lease_failure(error: LeaseError) -> SourceError {
    if error.is_retryable() {
        SourceError::Unavailable(error.to_string())
    } else {
        SourceError::Fatal(format!(
            "{error} (check the task role's access to the lease table)"
        ))
    }
}

#[async_trait]
impl Source for KinesisSource {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
        if self.coordinator.is_none() {
            // Not attached to a pipeline's acknowledgements: run without turns of ownership.
            self.coordinator = Some(tokio::spawn(coordinate(Arc::clone(&self.shared))));
        }
        match self.batches.recv().await {
            Some(Ok(batch)) => Ok(Some(batch)),
            Some(Err(error)) => Err(error),
            None => Ok(None),
        }
    }

    async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
        let shared = &self.shared;
        let mut held = shared.held.lock().await;
        let mut result = Ok(());
        for (partition, frontier) in frontiers {
            let Some((shard_id, lease)) = held
                .iter()
                .find(|(_, lease)| &lease.partition == partition)
                .map(|(shard, lease)| (shard.clone(), lease.counter))
            else {
                continue; // given up since: its new owner checkpoints it
            };
            let planned = {
                let positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
                positions
                    .get(&shard_id)
                    .and_then(|p| p.checkpoint_for(*frontier))
            };
            let Some((checkpoint, records)) = planned else {
                continue;
            };
            match shared
                .leases
                .checkpoint(&shard_id, lease, &shared.worker, &checkpoint)
                .await
            {
                Ok(Some(counter)) => {
                    crate::metrics::record_commit(KIND);
                    if let Some(lease) = held.get_mut(&shard_id) {
                        lease.counter = counter;
                        lease.renewed_at = Instant::now();
                    }
                    let mut positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(p) = positions.get_mut(&shard_id) {
                        p.records.drain(..records);
                    }
                    if matches!(checkpoint, Checkpoint::ShardEnd { .. }) {
                        drop(positions);
                        finish_shard(shared, &mut held, &shard_id);
                    }
                }
                Ok(None) => lose(shared, &mut held, &shard_id, "checkpoint refused"),
                Err(error) => {
                    result = Err(lease_failure(error));
                }
            }
        }
        result
    }

    fn attach(&mut self, partitions: Partitions) {
        let _ = self.shared.partitions.set(partitions);
        if self.coordinator.is_none() {
            self.coordinator = Some(tokio::spawn(coordinate(Arc::clone(&self.shared))));
        }
    }

    /// Stops reading, then releases every lease (their checkpoints were written by the last
    /// commit) so other tasks take the shards at once rather than after expiry.
    async fn shutdown(&mut self) {
        self.shared.stop.cancel();
        if let Some(coordinator) = self.coordinator.take() {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, coordinator).await;
        }
        let shared = &self.shared;
        let release = async {
            let mut held = shared.held.lock().await;
            let mut released = 0;
            for (shard_id, lease) in std::mem::take(&mut *held) {
                lease.reader.cancel();
                match shared
                    .leases
                    .release(&shard_id, lease.counter, &shared.worker)
                    .await
                {
                    Ok(Some(_)) => released += 1,
                    Ok(None) => {
                        tracing::info!(shard = %shard_id, "lease already taken by another task")
                    }
                    Err(error) => {
                        tracing::warn!(shard = %shard_id, error = %error, "lease not released; it expires instead")
                    }
                }
            }
            released
        };
        match tokio::time::timeout(RELEASE_TIMEOUT, release).await {
            Ok(released) => tracing::info!(released, "kinesis leases released"),
            Err(_) => {
                tracing::warn!("releasing leases did not finish in time; they expire instead")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_and_stream_names() {
        assert_eq!(shard_index("shardId-000000000012"), Some(12));
        assert_eq!(shard_index("shardId-"), None);
        assert_eq!(shard_index("shard"), None);
        assert_eq!(stream_name("events"), "events");
        assert_eq!(
            stream_name("arn:aws:kinesis:us-east-1:123456789012:stream/studio-events"),
            "studio-events"
        );
    }

    #[test]
    fn checkpoints_stop_at_the_last_whole_record_below_the_frontier() {
        let mut positions = Positions::default();
        // Record "a" holds offsets 0..3 (a KPL aggregate), "b" 3, "c" 4..6.
        positions.records.extend([
            (3, "a".to_owned()),
            (4, "b".to_owned()),
            (6, "c".to_owned()),
        ]);
        assert_eq!(positions.checkpoint_for(2), None, "inside the first record");
        assert_eq!(
            positions.checkpoint_for(3),
            Some((
                Checkpoint::After {
                    sequence: "a".to_owned(),
                    offset: 3
                },
                1
            ))
        );
        assert_eq!(
            positions
                .checkpoint_for(5)
                .map(|(c, n)| (c.next_offset(), n)),
            Some((4, 2))
        );
        assert_eq!(
            positions
                .checkpoint_for(6)
                .map(|(c, n)| (c.next_offset(), n)),
            Some((6, 3))
        );
        positions.end = Some(6);
        assert_eq!(
            positions.checkpoint_for(6),
            Some((Checkpoint::ShardEnd { offset: 6 }, 3))
        );
        assert_eq!(
            positions.checkpoint_for(5).map(|(c, _)| c.next_offset()),
            Some(4),
            "not at the end until everything is durable"
        );
    }
}
