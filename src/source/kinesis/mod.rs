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
//! A child shard's partition carries its [`Lineage`] (its parents and hash key range) in the
//! [`Partitions`], so the aggregate stage takes over the parents' classes in that range before
//! counting the child's first event.

pub mod kpl;
pub mod lease;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::lease::{plan_takes, Checkpoint, Lease, LeaseError, LeaseTable, Observations};
use super::{RawBatch, Source, SourceError};
use crate::ack::PartitionId;
use crate::config::KinesisConfig;
use crate::decode::RawMessage;
use crate::health::Health;
use crate::partitions::{Lineage, Partitions};
use crate::retry::Backoff;

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

/// Registers the stream consumer `name` (or finds it, registered by another task or an earlier
/// run) and waits until it is active; returns its ARN.
async fn register_consumer(shared: &Shared, name: &str) -> Result<String, SourceError> {
    let failure = |what: &str, error: &dyn std::fmt::Display| {
        SourceError::Unavailable(format!(
            "kinesis stream {}: {what}: {error}",
            shared.config.stream
        ))
    };
    let stream_arn = if shared.config.stream.starts_with("arn:") {
        shared.config.stream.clone()
    } else {
        let summary = shared
            .kinesis
            .describe_stream_summary()
            .stream_name(&shared.config.stream)
            .send()
            .await
            .map_err(|e| {
                failure(
                    "DescribeStreamSummary",
                    &aws_sdk_kinesis::error::DisplayErrorContext(&e),
                )
            })?;
        summary
            .stream_description_summary()
            .map(|summary| summary.stream_arn().to_owned())
            .ok_or_else(|| failure("DescribeStreamSummary", &"no summary"))?
    };
    let registered = shared
        .kinesis
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name(name)
        .send()
        .await;
    match registered {
        Ok(_) => tracing::info!(consumer = name, "stream consumer registered"),
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => {
            return Err(failure(
                "RegisterStreamConsumer",
                &aws_sdk_kinesis::error::DisplayErrorContext(&e),
            ))
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let described = shared
            .kinesis
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| {
                failure(
                    "DescribeStreamConsumer",
                    &aws_sdk_kinesis::error::DisplayErrorContext(&e),
                )
            })?;
        if let Some(consumer) = described.consumer_description() {
            if consumer.consumer_status().as_str() == "ACTIVE" {
                return Ok(consumer.consumer_arn().to_owned());
            }
        }
        if Instant::now() > deadline {
            return Err(failure("stream consumer", &"not active after 120 s"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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

/// A lease this task held is another's now (or its write was refused): stop reading the shard
/// and start a new turn, so nothing read in the old one is committed.
fn lose(shared: &Shared, held: &mut BTreeMap<String, Held>, shard_id: &str, why: &str) {
    if let Some(lease) = held.remove(shard_id) {
        lease.reader.cancel();
        if let Some(partitions) = shared.partitions.get() {
            partitions.revoke(&lease.partition);
        }
        crate::metrics::clear_source_lag(KIND, &lease.partition);
        tracing::warn!(shard = %shard_id, why, "lease lost; the shard's new owner goes on from its checkpoint");
    }
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
}

/// A shard was checkpointed at its end: nothing more to read, its children may start.
fn finish_shard(shared: &Shared, held: &mut BTreeMap<String, Held>, shard_id: &str) {
    if let Some(lease) = held.remove(shard_id) {
        lease.reader.cancel();
        if let Some(partitions) = shared.partitions.get() {
            partitions.revoke(&lease.partition);
        }
        crate::metrics::clear_source_lag(KIND, &lease.partition);
    }
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
    tracing::info!(shard = %shard_id, "shard read to its end and checkpointed (SHARD_END)");
    shared.shard_ended.notify_one();
}

/// The coordinator: shard discovery, renewals, finished shards and taking leases, one round
/// every third of the lease duration (and a shard sync as soon as a shard ends).
async fn coordinate(shared: Arc<Shared>) {
    let mut observations = Observations::default();
    let mut last_sync: Option<Instant> = None;
    let round = shared.config.lease_duration / 3;
    let mut failures = Backoff::new(
        Duration::from_millis(200),
        round.max(Duration::from_secs(1)),
    );
    loop {
        let sync_due = last_sync.is_none_or(|at| at.elapsed() >= shared.config.shard_sync_interval);
        let outcome = async {
            if sync_due {
                sync_shards(&shared).await?;
                last_sync = Some(Instant::now());
            }
            coordinate_round(&shared, &mut observations).await
        }
        .await;
        let pause = match outcome {
            Ok(()) => {
                failures = Backoff::new(
                    Duration::from_millis(200),
                    round.max(Duration::from_secs(1)),
                );
                round
            }
            Err(RoundError::Fatal(error)) => {
                let _ = shared.batches.send(Err(error)).await;
                return;
            }
            Err(RoundError::Retry(detail)) => {
                shared.health.not_ready("source", detail.clone());
                crate::metrics::record_source_error(KIND, "unavailable");
                tracing::warn!(error = %detail, "kinesis coordination failed; retrying");
                failures.next_delay()
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = shared.shard_ended.notified() => last_sync = None,
        }
    }
}

/// Why a coordinator round stopped.
enum RoundError {
    Retry(String),
    Fatal(SourceError),
}

impl From<LeaseError> for RoundError {
    fn from(error: LeaseError) -> RoundError {
        if error.is_retryable() {
            RoundError::Retry(error.to_string())
        } else {
            RoundError::Fatal(lease_failure(error))
        }
    }
}

/// Lists the stream's shards and adds a lease for each one the table lacks.
async fn sync_shards(shared: &Shared) -> Result<(), RoundError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = shared.kinesis.list_shards();
        request = match &token {
            Some(token) => request.next_token(token),
            None if shared.config.stream.starts_with("arn:") => {
                request.stream_arn(&shared.config.stream)
            }
            None => request.stream_name(&shared.config.stream),
        };
        let page = request
            .send()
            .await
            .map_err(|e| kinesis_failure(shared, &e))?;
        shards.extend(page.shards().iter().cloned());
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let known: Vec<String> = shared
        .leases
        .list()
        .await?
        .into_iter()
        .map(|lease| lease.shard_id)
        .collect();
    for shard in &shards {
        if known.iter().any(|id| id == shard.shard_id()) {
            continue;
        }
        if shard_index(shard.shard_id()).is_none() {
            return Err(RoundError::Fatal(SourceError::Fatal(format!(
                "shard id {:?} has no number; classpulse numbers partitions by it",
                shard.shard_id()
            ))));
        }
        let parents: Vec<String> = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        let checkpoint = lease::first_checkpoint(shared.config.start, !parents.is_empty());
        let hash_range = shard.hash_key_range().and_then(|range| {
            let start = range.starting_hash_key().parse::<u128>().ok()?;
            Some((start, range.ending_hash_key().parse::<u128>().ok()?))
        });
        if shared
            .leases
            .create(shard.shard_id(), &parents, hash_range, &checkpoint)
            .await?
        {
            tracing::info!(shard = shard.shard_id(), parents = ?parents, "lease created for a new shard");
        }
    }
    Ok(())
}

fn kinesis_failure<E, R>(shared: &Shared, error: &SdkError<E, R>) -> RoundError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = format!(
        "kinesis stream {}: {}",
        shared.config.stream,
        aws_sdk_kinesis::error::DisplayErrorContext(error)
    );
    match error.code() {
        Some(
            "AccessDeniedException" | "UnrecognizedClientException" | "InvalidArgumentException",
        ) => RoundError::Fatal(SourceError::Fatal(detail)),
        _ => RoundError::Retry(detail),
    }
}

/// Renews held leases, finishes shards read to their end, and takes leases by the plan.
async fn coordinate_round(
    shared: &Arc<Shared>,
    observations: &mut Observations,
) -> Result<(), RoundError> {
    let mut held = shared.held.lock().await;
    // Second half of hand-offs begun last round: the sinks have dropped what they held of the
    // shard by now, so the new owner cannot meet a late write of ours.
    let handing_off: Vec<(String, String)> = held
        .iter()
        .filter_map(|(shard, lease)| Some((shard.clone(), lease.handing_off.clone()?)))
        .collect();
    for (shard_id, to) in handing_off {
        let counter = held[&shard_id].counter;
        let transferred = shared
            .leases
            .transfer(&shard_id, counter, &shared.worker, &to)
            .await?;
        if let Some(lease) = held.remove(&shard_id) {
            crate::metrics::clear_source_lag(KIND, &lease.partition);
        }
        match transferred {
            Some(_) => tracing::info!(shard = %shard_id, to = %to, "lease handed over"),
            None => tracing::info!(shard = %shard_id, "lease moved on before the hand-off"),
        }
    }
    for shard_id in held.keys().cloned().collect::<Vec<_>>() {
        let counter = held[&shard_id].counter;
        match shared
            .leases
            .renew(&shard_id, counter, &shared.worker)
            .await?
        {
            Some(counter) => {
                let lease = held.get_mut(&shard_id).expect("held");
                lease.counter = counter;
                lease.renewed_at = Instant::now();
            }
            None => lose(shared, &mut held, &shard_id, "renewal refused"),
        }
    }
    // A shard read to its end with every record already checkpointed (or none at all) gets
    // no further commit: finish it here.
    let finished: Vec<(String, u64)> = {
        let positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        held.keys()
            .filter_map(|shard| {
                let p = positions.get(shard)?;
                let end = p.end.filter(|_| p.records.is_empty())?;
                Some((shard.clone(), end))
            })
            .collect()
    };
    for (shard_id, end) in finished {
        let counter = held[&shard_id].counter;
        match shared
            .leases
            .checkpoint(
                &shard_id,
                counter,
                &shared.worker,
                &Checkpoint::ShardEnd { offset: end },
            )
            .await?
        {
            Some(_) => finish_shard(shared, &mut held, &shard_id),
            None => lose(shared, &mut held, &shard_id, "checkpoint refused"),
        }
    }
    shared.health.ready("source");

    let leases = shared.leases.list().await?;
    let expired = observations.expired(&leases, Instant::now(), shared.config.lease_duration);
    // Leases the table says are someone else's (taken while our renewal was in flight).
    for lease in &leases {
        if held.contains_key(&lease.shard_id) && lease.owner.as_deref() != Some(&shared.worker) {
            lose(shared, &mut held, &lease.shard_id, "taken by another task");
        }
    }
    for lease in &leases {
        if lease.owner.as_deref() != Some(&shared.worker) || lease.is_finished() {
            continue;
        }
        match (held.get(&lease.shard_id), &lease.handoff_to) {
            // Handed to this task by its last owner.
            (None, _) => start_reader(shared, &mut held, lease, lease.counter),
            // Another task asked for it: stop reading and begin the hand-off.
            (Some(ours), Some(to)) if ours.handing_off.is_none() && to != &shared.worker => {
                begin_handoff(shared, &mut held, &lease.shard_id, to).await?;
            }
            _ => {}
        }
    }
    for shard_id in plan_takes(&leases, &expired, &shared.worker, MAX_TAKES_PER_ROUND) {
        let Some(lease) = leases.iter().find(|lease| lease.shard_id == shard_id) else {
            continue;
        };
        match (&lease.owner, expired.contains(&shard_id)) {
            (Some(owner), false) => {
                if shared
                    .leases
                    .request_handoff(&shard_id, owner, &shared.worker)
                    .await?
                {
                    tracing::info!(shard = %shard_id, owner = %owner, "asked for a lease (balancing)");
                }
            }
            _ => {
                if let Some(counter) = shared
                    .leases
                    .take(&shard_id, lease.counter, &shared.worker)
                    .await?
                {
                    start_reader(shared, &mut held, lease, counter);
                }
            }
        }
    }
    crate::metrics::set_leases_held(KIND, held.len());
    Ok(())
}

/// First half of a hand-off: stop reading the shard, start a new turn (what the sinks hold of
/// it is dropped, and its next owner replays it), and checkpoint what is durable.
async fn begin_handoff(
    shared: &Shared,
    held: &mut BTreeMap<String, Held>,
    shard_id: &str,
    to: &str,
) -> Result<(), RoundError> {
    let Some(lease) = held.get_mut(shard_id) else {
        return Ok(());
    };
    lease.reader.cancel();
    lease.handing_off = Some(to.to_owned());
    let frontier = shared
        .partitions
        .get()
        .and_then(|partitions| partitions.revoke(&lease.partition));
    let planned = frontier.and_then(|frontier| {
        let positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.get(shard_id)?.checkpoint_for(frontier)
    });
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
    tracing::info!(shard = %shard_id, to = %to, "handing a lease over (balancing)");
    if let Some((checkpoint, _)) = planned {
        let counter = lease.counter;
        match shared
            .leases
            .checkpoint(shard_id, counter, &shared.worker, &checkpoint)
            .await?
        {
            Some(counter) => lease.counter = counter,
            None => lose(shared, held, shard_id, "checkpoint refused"),
        }
    }
    Ok(())
}

/// Starts reading a shard whose lease this task just took.
fn start_reader(
    shared: &Arc<Shared>,
    held: &mut BTreeMap<String, Held>,
    lease: &Lease,
    counter: u64,
) {
    let index = shard_index(&lease.shard_id).expect("lease keys are numbered shard ids");
    let partition = PartitionId::new(Arc::clone(&shared.stream), index);
    let generation = match shared.partitions.get() {
        Some(partitions) => {
            // A child shard continues its parents' classes (the aggregate stage takes them
            // over from the parents' last checkpoints).
            let parents: Option<Vec<PartitionId>> = lease
                .parents
                .iter()
                .map(|parent| {
                    shard_index(parent)
                        .map(|index| PartitionId::new(Arc::clone(&shared.stream), index))
                })
                .collect();
            if let (Some(parents), Some(hash_range)) = (parents, lease.hash_range) {
                if !parents.is_empty() {
                    partitions.set_lineage(
                        &partition,
                        Lineage {
                            parents,
                            hash_range,
                        },
                    );
                }
            }
            partitions.assign(&partition);
            partitions.generation(&partition)
        }
        None => 0,
    };
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            lease.shard_id.clone(),
            Positions {
                generation,
                ..Positions::default()
            },
        );
    let reader = shared.stop.child_token();
    let previous = held.insert(
        lease.shard_id.clone(),
        Held {
            counter,
            partition: partition.clone(),
            reader: reader.clone(),
            handing_off: None,
            renewed_at: Instant::now(),
        },
    );
    if let Some(previous) = previous {
        previous.reader.cancel();
    }
    tracing::info!(shard = %lease.shard_id, from = ?lease.checkpoint, previous_owner = ?lease.owner, "lease taken");
    let shared = Arc::clone(shared);
    let shard = ShardRead {
        shard_id: lease.shard_id.clone(),
        partition,
        generation,
        checkpoint: lease.checkpoint.clone(),
    };
    tokio::spawn(async move {
        let shard_id = shard.shard_id.clone();
        tokio::select! {
            _ = reader.cancelled() => {}
            () = read_shard(&shared, shard) => {}
        }
        tracing::debug!(shard = %shard_id, "shard reader stopped");
    });
}

/// One shard to read, from a checkpoint.
struct ShardRead {
    shard_id: String,
    partition: PartitionId,
    generation: u64,
    checkpoint: Checkpoint,
}

/// Where to (re)start reading.
#[derive(Debug, Clone)]
enum Start {
    Checkpoint(Checkpoint),
    /// After the last record read (an expired iterator).
    After(String),
}

/// Where a shard's reader is: the offset of the next user record, where to (re)start reading,
/// and whether a `LATEST`/`AT_TIMESTAMP` start is pinned yet.
struct Cursor {
    next_offset: u64,
    start: Start,
    pinned: bool,
}

impl Cursor {
    fn new(checkpoint: &Checkpoint) -> Cursor {
        Cursor {
            next_offset: checkpoint.next_offset(),
            start: Start::Checkpoint(checkpoint.clone()),
            pinned: !matches!(checkpoint, Checkpoint::Latest | Checkpoint::AtTimestamp(_)),
        }
    }

    /// The outage outlasted the stream's retention: what lay between the checkpoint and the
    /// oldest record kept is gone. Go on from there, counted and warned about as Kafka's offset
    /// resets are, numbering records apart from anything written before.
    fn restart_past_retention(&mut self, shard: &ShardRead, error: &str) {
        crate::metrics::record_offset_reset(KIND);
        tracing::warn!(shard = %shard.shard_id, error, "checkpoint past the stream's retention: reading from the oldest record kept; events in between were skipped");
        self.start = Start::Checkpoint(Checkpoint::TrimHorizon);
        self.next_offset += PAST_RETENTION_OFFSET_JUMP;
    }
}

/// Reads one shard until its end (or until cancelled by the caller), by polling or, with
/// `CLASSPULSE_KINESIS_EFO`, by enhanced fan-out.
async fn read_shard(shared: &Shared, shard: ShardRead) {
    if let Checkpoint::ShardEnd { offset } = shard.checkpoint {
        // Finished before this task took it (it is never planned so): nothing to read.
        let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = all.get_mut(&shard.shard_id) {
            p.end = Some(offset);
        }
        return;
    }
    let mut cursor = Cursor::new(&shard.checkpoint);
    let _reads = ReadsGuard {
        shared,
        shard_id: &shard.shard_id,
    };
    match shared.consumer_arn.get() {
        Some(consumer_arn) => subscribe_shard(shared, &shard, &mut cursor, consumer_arn).await,
        None => poll_shard(shared, &shard, &mut cursor).await,
    }
}

/// Hands `records` (one GetRecords response or fan-out event) to the pipeline, numbered from
/// the cursor; `false` when the reader must stop (lease lost, pipeline gone).
async fn hand_out(
    shared: &Shared,
    shard: &ShardRead,
    cursor: &mut Cursor,
    records: &[aws_sdk_kinesis::types::Record],
) -> bool {
    if records.is_empty() {
        return true;
    }
    if let Some(partitions) = shared.partitions.get() {
        partitions.left_end(&shard.partition);
    }
    if !cursor.pinned {
        let first = records[0].sequence_number().to_owned();
        if !pin(shared, &shard.shard_id, first).await {
            return false;
        }
        cursor.pinned = true;
    }
    let mut messages = Vec::with_capacity(records.len());
    let mut positions = Vec::with_capacity(records.len());
    for record in records {
        let arrival = record
            .approximate_arrival_timestamp()
            .and_then(|time| time.to_millis().ok());
        let data = bytes::Bytes::from(record.data().clone().into_inner());
        for user in kpl::deaggregate(record.partition_key().unwrap_or_default(), data) {
            messages.push(RawMessage {
                offset: cursor.next_offset,
                timestamp_ms: arrival,
                key: Some(user.partition_key),
                payload: Some(user.data),
            });
            cursor.next_offset += 1;
        }
        positions.push((cursor.next_offset, record.sequence_number().to_owned()));
    }
    if let Some((_, last)) = positions.last() {
        cursor.start = Start::After(last.clone());
    }
    {
        let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        match all.get_mut(&shard.shard_id) {
            Some(p) if p.generation == shard.generation => p.records.extend(positions),
            _ => return false, // lease lost meanwhile
        }
    }
    if !lease_fresh(shared, &shard.shard_id).await {
        return false;
    }
    let batch = RawBatch {
        partition: shard.partition.clone(),
        generation: shard.generation,
        messages,
    };
    shared.batches.send(Ok(batch)).await.is_ok()
}

/// Tells the aggregate stage where the reader stands against the shard's tip (see
/// [`crate::partitions::AtEnd`]): at it when a response says 0 ms behind and everything before has been
/// handed out; not at it while records are being handed out or the reader is behind.
fn report_tip(shared: &Shared, shard: &ShardRead, cursor: &Cursor, behind_ms: Option<i64>) {
    let Some(partitions) = shared.partitions.get() else {
        return;
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    match behind_ms {
        Some(0) => partitions.reached_end(
            &shard.partition,
            shard.generation,
            cursor.next_offset,
            now_ms,
        ),
        Some(_) => partitions.left_end(&shard.partition),
        // A read failed: nothing new would be seen now.
        None => partitions.doubt_end(Some(&shard.partition), now_ms),
    }
}

/// The shard is closed and read to its end: once what was handed out is durable, the
/// coordinator (or the next commit) checkpoints `SHARD_END`.
fn reached_end(shared: &Shared, shard: &ShardRead, cursor: &Cursor) {
    let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = all.get_mut(&shard.shard_id) {
        if p.generation == shard.generation {
            p.end = Some(cursor.next_offset);
        }
    }
    drop(all);
    crate::metrics::set_source_lag_seconds(KIND, &shard.partition, 0.0);
    tracing::info!(shard = %shard.shard_id, records = cursor.next_offset, "shard read to its end");
    shared.shard_ended.notify_one();
}

/// GetRecords polling, within the per-shard limits.
async fn poll_shard(shared: &Shared, shard: &ShardRead, cursor: &mut Cursor) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut iterator: Option<String> = None;
    // Records asked for per call: halved while answers are lost on the way (a path that cuts
    // long answers would otherwise fail the same call forever), doubled back after each
    // answer that arrives.
    let mut limit = shared.config.max_records;
    loop {
        let current = match &iterator {
            Some(iterator) => iterator.clone(),
            None => match shard_iterator(shared, &shard.shard_id, &cursor.start).await {
                Ok(iterator) => iterator,
                Err(error) if error.starts_with(PAST_RETENTION) => {
                    cursor.restart_past_retention(shard, &error);
                    continue;
                }
                Err(error) => {
                    report_tip(shared, shard, cursor, None);
                    shared.read_failed(&shard.shard_id, format!("GetShardIterator: {error}"));
                    tracing::warn!(shard = %shard.shard_id, error = %error, "GetShardIterator failed; retrying");
                    crate::metrics::record_source_error(KIND, "unavailable");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let response = shared
            .kinesis
            .get_records()
            .shard_iterator(&current)
            .limit(limit as i32)
            .send()
            .await;
        let output = match response {
            Ok(output) => {
                limit = (limit * 2).min(shared.config.max_records);
                output
            }
            Err(error) => {
                report_tip(shared, shard, cursor, None);
                if error.code().is_none() {
                    limit = (limit / 2).max(MIN_RECORDS_PER_CALL.min(shared.config.max_records));
                }
                if error.code() != Some("ExpiredIteratorException") {
                    let detail = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                    shared.read_failed(&shard.shard_id, format!("GetRecords: {detail}"));
                }
                match error.code() {
                    Some("ExpiredIteratorException") => {
                        tracing::info!(shard = %shard.shard_id, "shard iterator expired; resuming after the last record read");
                        iterator = None;
                        continue;
                    }
                    Some("ProvisionedThroughputExceededException" | "LimitExceededException") => {
                        crate::metrics::record_source_error(KIND, "throttled");
                    }
                    _ => {
                        crate::metrics::record_source_error(KIND, "unavailable");
                        tracing::warn!(shard = %shard.shard_id, error = %aws_sdk_kinesis::error::DisplayErrorContext(&error), "GetRecords failed; retrying");
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        shared.read_ok(&shard.shard_id);
        let behind_ms = output.millis_behind_latest().unwrap_or(0).max(0);
        crate::metrics::set_source_lag_seconds(KIND, &shard.partition, behind_ms as f64 / 1000.0);
        let records = output.records();
        if !hand_out(shared, shard, cursor, records).await {
            return;
        }
        report_tip(shared, shard, cursor, Some(behind_ms));
        match output.next_shard_iterator() {
            Some(next) => iterator = Some(next.to_owned()),
            None => return reached_end(shared, shard, cursor),
        }
        let gap = if records.is_empty() || behind_ms == 0 {
            shared.config.poll_interval
        } else {
            MIN_POLL_GAP
        };
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
}

/// Enhanced fan-out: SubscribeToShard pushes records for up to 5 minutes per subscription; a
/// subscription that ends (or fails) is renewed after the last record delivered.
async fn subscribe_shard(
    shared: &Shared,
    shard: &ShardRead,
    cursor: &mut Cursor,
    consumer_arn: &str,
) {
    use aws_sdk_kinesis::types::{StartingPosition, SubscribeToShardEventStream};
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        let position = match &cursor.start {
            Start::Checkpoint(Checkpoint::TrimHorizon) => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            Start::Checkpoint(Checkpoint::Latest) => {
                StartingPosition::builder().r#type(ShardIteratorType::Latest)
            }
            Start::Checkpoint(Checkpoint::AtTimestamp(ms)) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            Start::Checkpoint(Checkpoint::At(sequence)) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence),
            Start::Checkpoint(Checkpoint::After { sequence, .. }) | Start::After(sequence) => {
                StartingPosition::builder()
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(sequence)
            }
            Start::Checkpoint(Checkpoint::ShardEnd { .. }) => return,
        }
        .build()
        .expect("the type is set");
        let subscribing = shared
            .kinesis
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(&shard.shard_id)
            .starting_position(position)
            .customize()
            // A subscription streams for up to 5 minutes: no deadline on the whole call.
            .config_override(
                aws_sdk_kinesis::config::Builder::default().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(3))
                        .disable_operation_attempt_timeout()
                        .build(),
                ),
            )
            .send();
        // The attempt deadline is lifted for the stream, so the answer that opens it gets one
        // here: a hung server must not hold the shard's reader (and readiness) forever.
        let Ok(subscribed) = tokio::time::timeout(SUBSCRIBE_DEADLINE, subscribing).await else {
            report_tip(shared, shard, cursor, None);
            crate::metrics::record_source_error(KIND, "unavailable");
            let reason = format!(
                "SubscribeToShard: no answer within {} s",
                SUBSCRIBE_DEADLINE.as_secs()
            );
            shared.read_failed(&shard.shard_id, reason.clone());
            tracing::warn!(shard = %shard.shard_id, error = %reason, "SubscribeToShard failed; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        };
        let mut output = match subscribed {
            Ok(output) => {
                shared.read_ok(&shard.shard_id);
                output
            }
            Err(error) if past_retention(error.code(), error.message()) => {
                let error = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                cursor.restart_past_retention(shard, &error);
                continue;
            }
            Err(error) => {
                // One subscription per shard and consumer at a time, and at most one call a
                // second: a renewal right after the last ends may be refused; wait and retry.
                let class = match error.code() {
                    Some("ResourceInUseException" | "LimitExceededException") => "throttled",
                    _ => "unavailable",
                };
                report_tip(shared, shard, cursor, None);
                crate::metrics::record_source_error(KIND, class);
                let detail = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                shared.read_failed(&shard.shard_id, format!("SubscribeToShard: {detail}"));
                tracing::warn!(shard = %shard.shard_id, error = %detail, "SubscribeToShard failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            let Ok(received) =
                tokio::time::timeout(FAN_OUT_SILENCE, output.event_stream.recv()).await
            else {
                // Kinesis pushes an event every few seconds, records or none. A stream this
                // quiet is stuck (a hung server, a black-holed path): renew the subscription,
                // whose answer has a deadline and reports the failure if the server is away.
                report_tip(shared, shard, cursor, None);
                tracing::warn!(
                    shard = %shard.shard_id,
                    silent_s = FAN_OUT_SILENCE.as_secs(),
                    "fan-out subscription silent; renewing it"
                );
                break;
            };
            match received {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    shared.read_ok(&shard.shard_id);
                    let behind_ms = event.millis_behind_latest().max(0);
                    crate::metrics::set_source_lag_seconds(
                        KIND,
                        &shard.partition,
                        behind_ms as f64 / 1000.0,
                    );
                    if !hand_out(shared, shard, cursor, event.records()).await {
                        return;
                    }
                    report_tip(shared, shard, cursor, Some(behind_ms));
                    // A closed shard's last event has no continuation and names the children.
                    if event.continuation_sequence_number().is_empty()
                        || !event.child_shards().is_empty()
                    {
                        return reached_end(shared, shard, cursor);
                    }
                }
                Ok(Some(_)) => {}
                // The subscription's 5 minutes are up: renew it where this one stopped.
                Ok(None) => break,
                Err(error) => {
                    report_tip(shared, shard, cursor, None);
                    crate::metrics::record_source_error(KIND, "unavailable");
                    tracing::warn!(shard = %shard.shard_id, error = %error, "fan-out subscription failed; renewing it");
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            }
        }
    }
}

/// Waits until this task's lease on `shard_id` was renewed within the lease duration; `false`
/// once it is not held any more. A task that was frozen (SIGSTOP, a paused container) past
/// expiry must not hand out what it read before it learns whether the lease is still its own.
async fn lease_fresh(shared: &Shared, shard_id: &str) -> bool {
    loop {
        let fresh = shared
            .held
            .lock()
            .await
            .get(shard_id)
            .map(|lease| lease.renewed_at.elapsed() < shared.config.lease_duration);
        match fresh {
            None => return false,
            Some(true) => return true,
            Some(false) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An iterator for `start`.
async fn shard_iterator(shared: &Shared, shard_id: &str, start: &Start) -> Result<String, String> {
    let mut request = shared.kinesis.get_shard_iterator().shard_id(shard_id);
    request = if shared.config.stream.starts_with("arn:") {
        request.stream_arn(&shared.config.stream)
    } else {
        request.stream_name(&shared.config.stream)
    };
    request = match start {
        Start::Checkpoint(Checkpoint::TrimHorizon) => {
            request.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        Start::Checkpoint(Checkpoint::Latest) => {
            request.shard_iterator_type(ShardIteratorType::Latest)
        }
        Start::Checkpoint(Checkpoint::AtTimestamp(ms)) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
        Start::Checkpoint(Checkpoint::At(sequence)) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(sequence),
        Start::Checkpoint(Checkpoint::After { sequence, .. }) | Start::After(sequence) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(sequence),
        Start::Checkpoint(Checkpoint::ShardEnd { .. }) => {
            return Err("the shard is finished".to_owned())
        }
    };
    let output = request.send().await.map_err(|e| {
        let detail = aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string();
        if past_retention(e.code(), e.message()) {
            format!("{PAST_RETENTION}: {detail}")
        } else {
            detail
        }
    })?;
    output
        .shard_iterator()
        .map(str::to_owned)
        .ok_or_else(|| "no iterator returned".to_owned())
}

/// Marks a GetShardIterator failure because the starting sequence number is gone.
const PAST_RETENTION: &str = "checkpoint past retention";
/// Added to a shard's offsets when its checkpoint was past retention: the records read from the
/// trim horizon are numbered apart from anything written (and indexed) before, so none of them
/// passes for a record already in the lake.
const PAST_RETENTION_OFFSET_JUMP: u64 = 1 << 40;

/// Whether a GetShardIterator error says the starting sequence number is no longer in the
/// stream (older than its retention): Kinesis answers `InvalidArgumentException` naming the
/// `StartingSequenceNumber`.
fn past_retention(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("InvalidArgumentException")
        && message.is_some_and(|message| message.contains("StartingSequenceNumber"))
}

/// Records the first record read from `LATEST`/`AT_TIMESTAMP` in the lease; `false` when the
/// lease is lost (the caller stops). Retries while DynamoDB is unreachable.
async fn pin(shared: &Shared, shard_id: &str, sequence: String) -> bool {
    let checkpoint = Checkpoint::At(sequence);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut held = shared.held.lock().await;
        let Some(counter) = held.get(shard_id).map(|lease| lease.counter) else {
            return false;
        };
        match shared
            .leases
            .checkpoint(shard_id, counter, &shared.worker, &checkpoint)
            .await
        {
            Ok(Some(counter)) => {
                let lease = held.get_mut(shard_id).expect("held");
                lease.counter = counter;
                lease.renewed_at = Instant::now();
                return true;
            }
            Ok(None) => {
                lose(shared, &mut held, shard_id, "start position refused");
                return false;
            }
            Err(error) => {
                drop(held);
                tracing::warn!(shard = %shard_id, error = %error, "pinning the start position failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vanished_starting_sequence_number_counts_as_past_retention() {
        let message = "StartingSequenceNumber 4959 used in GetShardIterator on shard shardId-000000000001 in stream events under account 123456789012 is invalid because it did not come from this stream.";
        assert!(past_retention(
            Some("InvalidArgumentException"),
            Some(message)
        ));
        assert!(!past_retention(
            Some("InvalidArgumentException"),
            Some("Timestamp is in the future")
        ));
        assert!(!past_retention(
            Some("ResourceNotFoundException"),
            Some(message)
        ));
        assert!(!past_retention(None, None));
    }

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
