//! The aggregate stage: between the decoder and the sinks, it judges and counts every event,
//! then passes the batch on. Its state is checkpointed per partition, and the acknowledgement
//! of every batch is held until a checkpoint that includes it is durable.
//!
//! ```text
//!  decoder ──DecodedBatch──▶ aggregate stage ──Arc<DecodedBatch>──▶ sinks (lake skips duplicates,
//!                              │  every CLASSPULSE_AGG_CHECKPOINT_INTERVAL      flags late events)
//!                              ▼
//!                   writer task: checkpoints, then final results, then drop the ack tokens
//! ```
//!
//! Checkpoints are immutable objects named by the position they include,
//! `{prefix}/checkpoints/aggregates/{source}-{stream}-{partition}/{position:020}.postcard.zst`;
//! the newest is restored when a partition is first seen. Two are kept per partition. Since a
//! state is a function of the events up to its position, a stale owner writing the same
//! position after a rebalance writes the same state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoint::CheckpointError;
use super::directory::{self, Place, Role};
use super::output::{ClassResult, Outgoing};
use super::partition::{Finalised, PartitionState};
use super::Rules;
use crate::ack::{AckToken, PartitionId};
use crate::decode::DecodedBatch;
use crate::health::Health;
use crate::metrics;
use crate::partitions::Partitions;
use crate::retry::Backoff;
use crate::sink::dynamodb::aggregates::AggregatesTable;
use crate::stats::Stats;
use crate::store::{classify, sanitize, ObjectWriter};

/// Health component and write label of the stage.
pub const NAME: &str = "aggregates";
/// Health component naming the partitions refused for a checkpoint of a newer format.
pub const REFUSED: &str = "aggregate checkpoints";
/// How often the stage releases revoked partitions, adopts assigned ones, sweeps for classes
/// that are due, and writes live values and checkpoints when they are due.
const TICK: Duration = Duration::from_secs(1);
/// Checkpoints kept per partition (the newest, and one before it).
const CHECKPOINTS_KEPT: usize = 2;
/// How often a closing class looks again for the parts it waits for.
const CLOSING_RECHECK: Duration = Duration::from_secs(5);
/// Class claims in flight at once.
const CLAIMS_AT_ONCE: usize = 16;

/// Why the aggregate stage stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// A checkpoint exists but cannot be read: restoring without it would count events
    /// twice or lose them, so the partition is not processed. Needs an operator (or a build
    /// that reads that format).
    #[error("partition {partition}: {key}: {source}")]
    Checkpoint {
        /// The partition.
        partition: PartitionId,
        /// The checkpoint's key.
        key: String,
        /// What is wrong with it.
        source: CheckpointError,
    },
    /// The next stage stopped accepting batches.
    #[error("a sink stopped accepting batches")]
    Downstream,
    /// The checkpoint writer stopped.
    #[error("the checkpoint writer stopped: {0}")]
    Writer(String),
}

impl AggregateError {
    /// Whether restarting the process may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, AggregateError::Checkpoint { .. })
    }
}

/// One partition owned by the stage.
struct Owned {
    /// The partition's turn of ownership this state belongs to.
    generation: u64,
    state: PartitionState,
    /// Acknowledgements of batches counted since the last checkpoint.
    tokens: Vec<AckToken>,
    /// Whether the state changed since the last checkpoint.
    dirty: bool,
    /// Checkpoint keys known to exist, oldest first.
    checkpoints: Vec<Path>,
    /// When each closing class may look for its parts again.
    recheck: HashMap<String, Instant>,
    /// Directory objects of closed classes, deleted once the checkpoint after them is durable.
    leftovers: Vec<Path>,
}

/// Work for the writer task, in order.
#[derive(Default)]
struct Job {
    checkpoints: Vec<(Path, Bytes)>,
    results: Vec<(Path, Bytes)>,
    /// Live values for the aggregates table.
    live_rows: Vec<ClassResult>,
    /// Final results for the aggregates table.
    final_rows: Vec<ClassResult>,
    deletes: Vec<Path>,
    tokens: Vec<AckToken>,
}

/// The aggregate stage.
pub struct AggregateStage {
    rules: Rules,
    checkpoint_interval: Duration,
    /// How often live values are written to the object store; `None`: not there.
    live_interval: Option<Duration>,
    /// The DynamoDB aggregates table, and how often live values are written to it.
    table: Option<(AggregatesTable, Duration)>,
    writer: ObjectWriter,
    health: Health,
    stats: Arc<Stats>,
    partitions: HashMap<PartitionId, Owned>,
    /// Whether classes are claimed in the class directory.
    class_directory: bool,
    /// The source's partitions (set by [`AggregateStage::run`]): turns of ownership, ends,
    /// and which partitions continue others.
    registry: Option<Partitions>,
    /// Partitions whose newest checkpoint a newer build wrote, with the turn refused and why:
    /// their batches are failed, never counted, and nothing of them is written.
    refused: HashMap<PartitionId, (u64, String)>,
}

impl AggregateStage {
    /// A stage writing checkpoints and results through `writer` (the lake's store), and live
    /// values every `live_interval` if given.
    pub fn new(
        rules: Rules,
        checkpoint_interval: Duration,
        live_interval: Option<Duration>,
        writer: ObjectWriter,
        health: Health,
        stats: Arc<Stats>,
    ) -> AggregateStage {
        AggregateStage {
            rules,
            checkpoint_interval,
            live_interval,
            table: None,
            writer,
            health,
            stats,
            partitions: HashMap::new(),
            class_directory: false,
            registry: None,
            refused: HashMap::new(),
        }
    }

    /// Also writes live values (every `live_interval`) and final results to `table`.
    pub fn with_table(mut self, table: AggregatesTable, live_interval: Duration) -> AggregateStage {
        self.table = Some((table, live_interval));
        self
    }

    /// Keeps the class directory ([`directory`]): a class whose key moves to another
    /// partition (partitions added to a Kafka topic) is finalised once, by the partition where
    /// it began, with the parts counted elsewhere.
    pub fn with_class_directory(mut self) -> AggregateStage {
        self.class_directory = true;
        self
    }

    /// How often live values are written anywhere.
    fn live_every(&self) -> Option<Duration> {
        let table = self.table.as_ref().map(|(_, interval)| *interval);
        match (self.live_interval, table) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs until `input` closes: judges and counts each batch, then sends it to every output.
    /// If `source_ended` is cancelled by then, every open class is finalised (a bounded source
    /// ran out); otherwise the state is only checkpointed (a drain: the classes go on).
    pub async fn run(
        mut self,
        mut input: mpsc::Receiver<DecodedBatch>,
        outputs: Vec<mpsc::Sender<Arc<DecodedBatch>>>,
        source_ended: CancellationToken,
        registry: Partitions,
    ) -> Result<(), AggregateError> {
        self.registry = Some(registry.clone());
        let (jobs, job_receiver) = mpsc::channel(2);
        let writer = tokio::spawn(write_jobs(
            job_receiver,
            self.writer.clone(),
            self.table.as_ref().map(|(table, _)| table.clone()),
            Arc::clone(&self.stats),
        ));
        let live_every = self.live_every();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        let mut last_live = Instant::now();
        self.health.ready(NAME);
        loop {
            tokio::select! {
                batch = input.recv() => match batch {
                    Some(mut batch) => {
                        if !self.apply(&mut batch).await? {
                            // Refused: replayed by the build that reads its checkpoint.
                            batch.ack.fail();
                            continue;
                        }
                        let batch = Arc::new(batch);
                        for output in &outputs {
                            output.send(Arc::clone(&batch)).await.map_err(|_| AggregateError::Downstream)?;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    self.release_revoked(&registry);
                    self.adopt_assigned(&registry).await?;
                    self.sweep(&registry);
                    self.close_classes(false).await;
                    if live_every.is_some_and(|interval| last_live.elapsed() >= interval) {
                        self.write_live(&jobs).await?;
                        last_live = Instant::now();
                    }
                    if last_checkpoint.elapsed() >= self.checkpoint_interval {
                        self.checkpoint(&jobs).await?;
                        last_checkpoint = Instant::now();
                    }
                }
            }
        }
        drop(outputs);
        self.release_revoked(&registry);
        if source_ended.is_cancelled() {
            let mut finalised = Vec::new();
            for owned in self.partitions.values_mut() {
                let classes = owned.state.finalise_all(&self.rules);
                owned.dirty |= !classes.is_empty();
                finalised.extend(classes);
            }
            self.record_finalised(finalised);
            self.close_classes(true).await;
        }
        self.checkpoint(&jobs).await?;
        drop(jobs);
        match writer.await {
            Ok(()) => Ok(()),
            Err(error) => Err(AggregateError::Writer(error.to_string())),
        }
    }

    /// Counts `batch`; `false` if its partition is refused (the batch must not go on).
    async fn apply(&mut self, batch: &mut DecodedBatch) -> Result<bool, AggregateError> {
        match self.partitions.get(&batch.partition) {
            Some(owned) if owned.generation == batch.generation => {}
            // Read before a rebalance this task has since seen: the new turn replays it from
            // the committed position. Passed on uncounted (the lake keeps it at least once).
            Some(owned) if owned.generation > batch.generation => return Ok(true),
            // First seen, or assigned again: whatever this task held may be behind what
            // another owner checkpointed since. Start from the newest checkpoint.
            _ => {
                if !self.take_up(&batch.partition, batch.generation).await? {
                    return Ok(false);
                }
            }
        }
        self.claim_new_classes(&batch.partition, &batch.events)
            .await;
        let owned = self
            .partitions
            .get_mut(&batch.partition)
            .expect("restored above");
        let before = owned.state.position;
        let (tally, finalised) = owned.state.apply(
            &mut batch.events,
            batch.last_offset,
            &self.rules,
            Utc::now().timestamp_millis(),
        );
        owned.dirty |= owned.state.position != before || !owned.state.outbox.is_empty();
        metrics::record_handoffs("handed_over", owned.state.take_handed_over());
        owned.tokens.push(batch.ack.clone());
        metrics::record_verdicts(tally.duplicate, tally.late);
        Stats::add(&self.stats.duplicates, tally.duplicate);
        Stats::add(&self.stats.late, tally.late);
        self.record_finalised(finalised);
        self.close_classes(false).await;
        Ok(true)
    }

    /// Restores `partition` for turn `generation` from its newest checkpoint; `false` if it
    /// is refused: that checkpoint (or a parent's) has a format newer than this build reads.
    /// A refused partition is not ready until it is revoked, and nothing of it is written,
    /// so the newer state stays for a build that reads it.
    async fn take_up(
        &mut self,
        partition: &PartitionId,
        generation: u64,
    ) -> Result<bool, AggregateError> {
        if self
            .refused
            .get(partition)
            .is_some_and(|(refused, _)| *refused >= generation)
        {
            return Ok(false);
        }
        match self.restore(partition, generation).await {
            Ok(owned) => {
                self.partitions.insert(partition.clone(), owned);
                if self.refused.remove(partition).is_some() {
                    self.report_refused();
                }
                Ok(true)
            }
            Err(AggregateError::Checkpoint {
                partition: from,
                key,
                source,
            }) if source.is_newer() => {
                tracing::error!(partition = %partition, checkpoint = %key, error = %source, "partition refused: its checkpoint is of a newer build; nothing of it is counted or written here");
                metrics::record_checkpoint_refused();
                self.refused.insert(
                    partition.clone(),
                    (generation, format!("{partition} ({from}: {key}: {source})")),
                );
                self.report_refused();
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Readiness names the refused partitions.
    fn report_refused(&self) {
        if self.refused.is_empty() {
            self.health.ready(REFUSED);
            return;
        }
        let mut names: Vec<&str> = self.refused.values().map(|(_, why)| why.as_str()).collect();
        names.sort();
        self.health.not_ready(
            REFUSED,
            format!(
                "partitions refused, their checkpoints are of a newer build: {}",
                names.join("; ")
            ),
        );
    }

    /// Claims in the class directory the classes `events` meet for the first time on
    /// `partition`, so the state knows whether it is their home ([`directory`]). Retried until
    /// the store answers (the stage is not ready meanwhile).
    async fn claim_new_classes(
        &mut self,
        partition: &PartitionId,
        events: &[crate::event::PerformanceEvent],
    ) {
        let Some(owned) = self.partitions.get(partition) else {
            return;
        };
        let Some(place) = owned.state.place.clone() else {
            return;
        };
        let position = owned.state.position;
        let mut new: Vec<(String, Box<str>, Box<str>, i64)> = Vec::new();
        let mut previous: Option<(&str, &str)> = None;
        for event in events {
            if position.is_some_and(|p| event.offset <= p) {
                continue;
            }
            let ids = (&*event.studio_id, &*event.class_id);
            if previous == Some(ids) {
                continue;
            }
            previous = Some(ids);
            let key = format!("{}:{}", ids.0, ids.1);
            if owned.state.is_new_class(&key) && !new.iter().any(|(k, ..)| *k == key) {
                new.push((key, ids.0.into(), ids.1.into(), event.event_time_ms));
            }
        }
        if new.is_empty() {
            return;
        }
        let mut pending = Vec::with_capacity(new.len());
        for (key, studio, class, first_ms) in new {
            let (this, place) = (&*self, &place);
            pending.push(async move {
                let role = this
                    .retry("claiming a class", || {
                        directory::claim(&this.writer, place, &studio, &class, first_ms)
                    })
                    .await;
                (key, role)
            });
        }
        let claims: Vec<(String, Role)> = futures::stream::iter(pending)
            .buffer_unordered(CLAIMS_AT_ONCE)
            .collect()
            .await;
        let owned = self.partitions.get_mut(partition).expect("checked above");
        for (key, role) in claims {
            match role {
                Role::Closed(home) => {
                    metrics::record_handoffs("too_late", 1);
                    tracing::warn!(partition = %partition, class = %key, home, "class already final at its home partition: its events here are late");
                }
                Role::Visitor(home) => {
                    tracing::info!(partition = %partition, class = %key, home, "class moved here from its home partition: counting a part to hand over");
                }
                Role::Home => {}
            }
            owned.state.roles.insert(key, role);
        }
    }

    /// Runs `attempt` until it succeeds, reporting failures as the stage's readiness.
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match attempt().await {
                Ok(value) => {
                    if backoff.attempts() > 0 {
                        self.health.ready(NAME);
                    }
                    return value;
                }
                Err(error) => {
                    let reason = classify(&error);
                    metrics::record_sink_retry(NAME, reason);
                    self.health
                        .not_ready(NAME, format!("{reason} {what}: {error}"));
                    if backoff.attempts() % 10 == 0 {
                        tracing::warn!(reason, error = %error, "{what} failed, retrying");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// Finalises the closing classes whose parts are all handed over (all of them, with what
    /// is there, if `force`: a bounded source ended).
    async fn close_classes(&mut self, force: bool) {
        let now = Instant::now();
        /// A closing class to look at: its partition, key, place and ids.
        struct Due {
            partition: PartitionId,
            key: String,
            place: Place,
            studio: Box<str>,
            class: Box<str>,
        }
        let mut due = Vec::new();
        for (partition, owned) in &self.partitions {
            let Some(place) = &owned.state.place else {
                continue;
            };
            for (key, (class, _)) in &owned.state.closing {
                if force || owned.recheck.get(key).is_none_or(|at| *at <= now) {
                    due.push(Due {
                        partition: partition.clone(),
                        key: key.clone(),
                        place: place.clone(),
                        studio: class.studio_id.clone(),
                        class: class.class_id.clone(),
                    });
                }
            }
        }
        let mut finalised = Vec::new();
        for Due {
            partition,
            key,
            place,
            studio,
            class,
        } in due
        {
            let visits = self
                .retry("listing a class's parts", || {
                    directory::visits(&self.writer, &place, &studio, &class)
                })
                .await;
            let missing = visits.missing();
            if !missing.is_empty() && !force {
                let owned = self.partitions.get_mut(&partition).expect("listed above");
                if owned
                    .recheck
                    .insert(key.clone(), now + CLOSING_RECHECK)
                    .is_none()
                {
                    tracing::info!(partition = %partition, class = %key, waiting_for = ?missing, "class due: waiting for the parts counted on other partitions");
                }
                continue;
            }
            let mut parts = Vec::new();
            let mut newer = false;
            for (visitor, part_key) in &visits.parts {
                let body = self
                    .retry("reading a class part", || {
                        directory::read(&self.writer, part_key)
                    })
                    .await;
                match PartitionState::decode_part(&body) {
                    Ok((counted_on, part)) => {
                        tracing::info!(partition = %partition, class = %key, visitor, counted_on, "class part merged");
                        parts.push(part);
                    }
                    // Of a newer build: the class waits for a home that merges it.
                    Err(error) if error.is_newer() && !force => {
                        tracing::error!(partition = %partition, class = %key, key = %part_key, error = %error, "class part of a newer build: the class waits, closing, for a build that merges it");
                        newer = true;
                    }
                    Err(error) => {
                        // Not mergeable by this build: it stays where it is for an operator.
                        tracing::error!(partition = %partition, class = %key, key = %part_key, error = %error, "class part unreadable: the class is final without it");
                    }
                }
            }
            if newer {
                let owned = self.partitions.get_mut(&partition).expect("listed above");
                owned.recheck.insert(key.clone(), now + CLOSING_RECHECK);
                continue;
            }
            let merged = parts.len() as u64;
            let owned = self.partitions.get_mut(&partition).expect("listed above");
            owned.recheck.remove(&key);
            if let Some((result, exact)) = owned.state.close(&key, parts, &self.rules) {
                metrics::record_handoffs(if exact { "merged" } else { "merged_inexact" }, merged);
                if !exact {
                    tracing::warn!(partition = %partition, class = %key, "class parts interleave in time for a member: heart-rate zones merged approximately");
                }
                owned.dirty = true;
                owned.leftovers.extend(
                    directory::leftovers(&visits, &place, &studio, &class)
                        .iter()
                        .map(|relative| self.writer.path(relative)),
                );
                finalised.push(result);
            }
        }
        self.record_finalised(finalised);
    }

    /// Forgets partitions given up in a rebalance: another task owns them now and restores
    /// them from their checkpoint. Nothing of them is finalised or written here any more.
    fn release_revoked(&mut self, registry: &Partitions) {
        self.partitions.retain(|partition, owned| {
            let current = registry.generation(partition) == owned.generation;
            if !current {
                tracing::info!(partition = %partition, "aggregate state released (partition revoked)");
            }
            current
        });
        let refused = self.refused.len();
        self.refused
            .retain(|partition, (generation, _)| registry.generation(partition) == *generation);
        if self.refused.len() != refused {
            self.report_refused();
        }
    }

    /// Restores partitions assigned but not yet seen in a batch: a partition whose backlog is
    /// empty still holds open classes that must become final here.
    async fn adopt_assigned(&mut self, registry: &Partitions) -> Result<(), AggregateError> {
        for (partition, generation) in registry.assigned() {
            if self
                .partitions
                .get(&partition)
                .is_some_and(|owned| owned.generation >= generation)
            {
                continue;
            }
            self.take_up(&partition, generation).await?;
        }
        Ok(())
    }

    /// Finalises what is due, compacts the rest, reports the state's size. The wall-clock rule
    /// applies only to a partition the source read to its end and that this stage has counted
    /// up to that end.
    fn sweep(&mut self, registry: &Partitions) {
        let wall_ms = Utc::now().timestamp_millis();
        let mut finalised = Vec::new();
        let (mut classes, mut bytes) = (0, 0);
        for (partition, owned) in self.partitions.iter_mut() {
            let position = owned.state.position;
            let at_end = registry
                .at_end(partition, owned.generation, wall_ms)
                .filter(|end| position.is_none_or(|last| last + 1 >= end.next_offset))
                .map(|end| (end.since_ms, end.confirmed_ms));
            let due = owned.state.sweep(&self.rules, at_end);
            owned.dirty |= !due.is_empty() || !owned.state.outbox.is_empty();
            metrics::record_handoffs("handed_over", owned.state.take_handed_over());
            finalised.extend(due);
            classes += owned.state.classes.len();
            bytes += owned.state.approx_bytes();
        }
        metrics::set_aggregate_state(classes, bytes);
        self.record_finalised(finalised);
    }

    fn record_finalised(&self, finalised: Vec<Finalised>) {
        for class in finalised {
            metrics::record_class_final(class.trigger.as_str());
            Stats::add(&self.stats.classes_final, 1);
            let top = |summary: &super::output::ClassSummary| {
                summary
                    .leaderboard_effort
                    .first()
                    .map_or(0.0, |leader| leader.value)
            };
            let mut best = self
                .stats
                .top_class
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if best
                .as_ref()
                .is_none_or(|b| top(&class.result.summary) > top(b))
            {
                *best = Some(class.result.summary);
            }
        }
    }

    /// Hands the writer the live values of every class that changed. They hold no
    /// acknowledgement: live values are a view, the checkpoint is the record.
    async fn write_live(&mut self, jobs: &mpsc::Sender<Job>) -> Result<(), AggregateError> {
        let mut job = Job::default();
        for owned in self.partitions.values_mut() {
            for result in owned.state.take_changed(&self.rules) {
                if self.live_interval.is_some() {
                    if let Ok((relative, body)) = result.live_object() {
                        job.results
                            .push((self.writer.path(&relative), Bytes::from(body)));
                    }
                }
                if self.table.is_some() {
                    job.live_rows.push(result);
                }
            }
        }
        if job.results.is_empty() && job.live_rows.is_empty() {
            return Ok(());
        }
        jobs.send(job)
            .await
            .map_err(|_| AggregateError::Writer("writer task ended".into()))
    }

    /// Hands the writer a checkpoint of every changed partition, the final results they
    /// record, and the acknowledgements they cover.
    async fn checkpoint(&mut self, jobs: &mpsc::Sender<Job>) -> Result<(), AggregateError> {
        let mut job = Job::default();
        for (partition, owned) in &mut self.partitions {
            if owned.dirty {
                let position = owned.state.position.unwrap_or(0);
                let key = self.writer.path(&format!(
                    "{}/{position:020}.postcard.zst",
                    checkpoint_dir(&self.writer, partition)
                ));
                job.checkpoints
                    .push((key.clone(), Bytes::from(encode(&owned.state))));
                if owned.checkpoints.last() != Some(&key) {
                    owned.checkpoints.push(key);
                }
                while owned.checkpoints.len() > CHECKPOINTS_KEPT {
                    job.deletes.push(owned.checkpoints.remove(0));
                }
                job.deletes.append(&mut owned.leftovers);
                for outgoing in owned.state.outbox.drain(..) {
                    match outgoing {
                        Outgoing::Result(result) => {
                            let mut objects = result.objects();
                            if self.live_interval.is_some() {
                                // The screens' document ends with the final values.
                                objects = objects.and_then(|mut objects| {
                                    objects.push(result.live_object()?);
                                    Ok(objects)
                                });
                            }
                            match objects {
                                Ok(objects) => job.results.extend(objects.into_iter().map(
                                    |(relative, body)| {
                                        (self.writer.path(&relative), Bytes::from(body))
                                    },
                                )),
                                // Plain structs of numbers and strings always serialise.
                                Err(error) => {
                                    unreachable!("class result does not serialise: {error}")
                                }
                            }
                            if self.table.is_some() {
                                job.final_rows.push(*result);
                            }
                        }
                        Outgoing::Part { key, body } | Outgoing::HomeFinal { key, body } => {
                            job.results
                                .push((self.writer.path(&key), Bytes::from(body)));
                        }
                    }
                }
                owned.dirty = false;
            }
            job.tokens.append(&mut owned.tokens);
        }
        if job.checkpoints.is_empty() && job.tokens.is_empty() {
            return Ok(());
        }
        jobs.send(job)
            .await
            .map_err(|_| AggregateError::Writer("writer task ended".into()))
    }

    /// The newest checkpoint of `partition`, or an empty state. Listing and reading are
    /// retried until they succeed (the stage is not ready meanwhile); an unreadable
    /// checkpoint stops the stage.
    async fn restore(
        &self,
        partition: &PartitionId,
        generation: u64,
    ) -> Result<Owned, AggregateError> {
        let directory = self.writer.path(&checkpoint_dir(&self.writer, partition));
        let store = self.writer.store();
        let (keys, body) = self
            .retry(&format!("reading {directory}"), || {
                newest(store.as_ref(), &directory)
            })
            .await;
        let place = self
            .class_directory
            .then(|| Place::new(&self.writer, partition));
        let Some((key, body)) = body else {
            let mut state = PartitionState::new(partition.to_string());
            state.place = place;
            let inherited = self.inherit(partition, &mut state).await?;
            return Ok(Owned {
                generation,
                state,
                tokens: Vec::new(),
                dirty: inherited,
                checkpoints: keys,
                recheck: HashMap::new(),
                leftovers: Vec::new(),
            });
        };
        let mut state =
            PartitionState::decode(&body, Utc::now().timestamp_millis()).map_err(|source| {
                AggregateError::Checkpoint {
                    partition: partition.clone(),
                    key: key.to_string(),
                    source,
                }
            })?;
        tracing::info!(
            partition = %partition,
            position = state.position,
            classes = state.classes.len(),
            "aggregate state restored"
        );
        state.place = place;
        // Results recorded by the checkpoint may not have been written: write them again.
        let dirty = !state.outbox.is_empty();
        Ok(Owned {
            generation,
            state,
            tokens: Vec::new(),
            dirty,
            checkpoints: keys,
            recheck: HashMap::new(),
            leftovers: Vec::new(),
        })
    }
}

impl AggregateStage {
    /// A partition seen for the first time that continues others (a Kinesis child shard,
    /// read only once its parents are read to their end and checkpointed) takes over their
    /// classes in its hash range from their last checkpoints. Returns whether it took any.
    async fn inherit(
        &self,
        partition: &PartitionId,
        state: &mut PartitionState,
    ) -> Result<bool, AggregateError> {
        let Some(lineage) = self
            .registry
            .as_ref()
            .and_then(|registry| registry.lineage(partition))
        else {
            return Ok(false);
        };
        let store = self.writer.store();
        let mut classes = 0;
        for parent in &lineage.parents {
            let directory = self.writer.path(&checkpoint_dir(&self.writer, parent));
            let (_, body) = self
                .retry("reading a parent partition's checkpoints", || {
                    newest(store.as_ref(), &directory)
                })
                .await;
            let Some((key, body)) = body else {
                continue;
            };
            let parent_state = PartitionState::decode(&body, Utc::now().timestamp_millis())
                .map_err(|source| AggregateError::Checkpoint {
                    partition: parent.clone(),
                    key: key.to_string(),
                    source,
                })?;
            classes += state.inherit(parent_state, lineage.hash_range);
        }
        tracing::info!(partition = %partition, parents = ?lineage.parents.iter().map(ToString::to_string).collect::<Vec<_>>(), classes, "aggregate state taken over from the parent partitions");
        Ok(true)
    }
}

/// Encodes a partition's state. Hundreds of classes take a few hundred milliseconds of CPU:
/// on a multi-threaded runtime the worker hands its other tasks to the rest first.
fn encode(state: &PartitionState) -> Vec<u8> {
    let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(|| state.encode())
    } else {
        state.encode()
    }
}

fn checkpoint_dir(writer: &ObjectWriter, partition: &PartitionId) -> String {
    format!(
        "checkpoints/aggregates/{}-{}-{}",
        writer.source_kind(),
        sanitize(&partition.stream),
        partition.index
    )
}

/// Every checkpoint key under `directory` (oldest first) and the newest one's body.
async fn newest(
    store: &dyn ObjectStore,
    directory: &Path,
) -> object_store::Result<(Vec<Path>, Option<(Path, Bytes)>)> {
    let mut keys: Vec<Path> = store
        .list(Some(directory))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    keys.sort();
    let Some(newest) = keys.last().cloned() else {
        return Ok((keys, None));
    };
    let body = store.get(&newest).await?.bytes().await?;
    Ok((keys, Some((newest, body))))
}

/// Writes each job's checkpoints, then its results, then releases its acknowledgements.
async fn write_jobs(
    mut jobs: mpsc::Receiver<Job>,
    writer: ObjectWriter,
    table: Option<AggregatesTable>,
    stats: Arc<Stats>,
) {
    while let Some(job) = jobs.recv().await {
        let started = Instant::now();
        let mut bytes = 0;
        for (key, body) in job.checkpoints {
            bytes += body.len();
            writer.put(NAME, &key, body, &[]).await;
        }
        for (key, body) in job.results {
            writer.put(NAME, &key, body, &[]).await;
            Stats::add(&stats.aggregate_objects, 1);
        }
        if let Some(table) = &table {
            if !job.final_rows.is_empty() {
                table.write_final(&job.final_rows).await;
            }
            if !job.live_rows.is_empty() {
                table.write_live(&job.live_rows).await;
            }
        }
        metrics::record_aggregate_checkpoint(bytes, started.elapsed());
        drop(job.tokens);
        for key in job.deletes {
            if let Err(error) = writer.store().delete(&key).await {
                tracing::debug!(key = %key, error = %error, "old checkpoint not deleted");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ack::AckTracker;
    use crate::aggregate::reference::event;
    use crate::config::{LakeConfig, LakeLocation};
    use crate::event::{EventType, Metrics};

    /// A writer of a Kafka source's lake in the local `directory`.
    pub(crate) fn writer(directory: &std::path::Path) -> ObjectWriter {
        let lake = LakeConfig {
            location: LakeLocation::Local(directory.to_path_buf()),
            s3_endpoint: None,
            max_events: 1_000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
            max_buffer_bytes: 1 << 20,
        };
        ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap()
    }

    /// A batch of one heart-rate sample per offset in `offsets`, read in `generation`.
    fn batch(
        acks: &AckTracker,
        generation: u64,
        offsets: std::ops::RangeInclusive<u64>,
    ) -> DecodedBatch {
        batch_of(PartitionId::new("events", 0), acks, generation, offsets)
    }

    /// [`batch`] of `partition`.
    fn batch_of(
        partition: PartitionId,
        acks: &AckTracker,
        generation: u64,
        offsets: std::ops::RangeInclusive<u64>,
    ) -> DecodedBatch {
        let events = offsets
            .clone()
            .map(|offset| {
                let time = 1_764_090_000_000 + offset as i64 * 4_000;
                let metrics = Metrics {
                    bpm: Some(150.0),
                    ..Metrics::default()
                };
                event(
                    &format!("e{offset}"),
                    "m1",
                    time,
                    EventType::HeartRate,
                    metrics,
                    offset,
                )
            })
            .collect();
        DecodedBatch {
            ack: acks.register(&partition, generation, *offsets.end()),
            partition,
            generation,
            first_offset: *offsets.start(),
            last_offset: *offsets.end(),
            events,
            rejected: Vec::new(),
            received_at_ms: 0,
        }
    }

    /// One task's stage running on `directory` until `script` is done with it.
    async fn run_stage<F, Fut>(
        directory: &std::path::Path,
        registry: Partitions,
        end_of_input: bool,
        script: F,
    ) -> Arc<Stats>
    where
        F: FnOnce(mpsc::Sender<DecodedBatch>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let stats = Arc::new(Stats::default());
        let rules = Rules::default();
        let stage = AggregateStage::new(
            rules,
            Duration::from_millis(50),
            Some(Duration::from_millis(50)),
            writer(directory),
            Health::new(),
            Arc::clone(&stats),
        );
        let (input, receiver) = mpsc::channel(4);
        let (output, mut sink) = mpsc::channel(16);
        let drained = tokio::spawn(async move { while sink.recv().await.is_some() {} });
        let ended = CancellationToken::new();
        if end_of_input {
            ended.cancel();
        }
        let task = tokio::spawn(stage.run(receiver, vec![output], ended, registry));
        script(input).await;
        task.await.unwrap().unwrap();
        drained.await.unwrap();
        stats
    }

    #[tokio::test]
    async fn a_partition_assigned_again_continues_from_what_its_other_owner_checkpointed() {
        let directory = tempfile::tempdir().unwrap();
        let partition = PartitionId::new("events", 0);
        let first_task = Partitions::new(AckTracker::new());
        first_task.assign(&partition);
        let (to_first, first_input) = mpsc::channel(4);
        // The first task counts offsets 0-4, then loses the partition.
        let first = {
            let directory = directory.path().to_path_buf();
            let registry = first_task.clone();
            tokio::spawn(async move {
                run_stage(&directory, registry, true, |input| async move {
                    let mut first_input: mpsc::Receiver<DecodedBatch> = first_input;
                    while let Some(batch) = first_input.recv().await {
                        input.send(batch).await.unwrap();
                    }
                })
                .await
            })
        };
        to_first
            .send(batch(first_task.acks(), 1, 0..=4))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1_500)).await; // a checkpoint at 4
        first_task.revoke(&partition);

        // Another task owns it meanwhile: restores 0-4 and counts 5-9, then drains.
        let other_task = Partitions::new(AckTracker::new());
        other_task.assign(&partition);
        let other = run_stage(
            directory.path(),
            other_task.clone(),
            false,
            |input| async move {
                input
                    .send(batch(other_task.acks(), 1, 0..=9))
                    .await
                    .unwrap();
            },
        )
        .await;
        assert_eq!(
            Stats::get(&other.duplicates),
            0,
            "0-4 come from the checkpoint, not judged again"
        );

        // The first task gets it back and reads on from the committed offset 10. What it held
        // before is stale: it must start from the other task's checkpoint.
        tokio::time::sleep(Duration::from_millis(1_100)).await; // a tick notices the revoke
        first_task.assign(&partition);
        to_first
            .send(batch(first_task.acks(), 3, 10..=14))
            .await
            .unwrap();
        drop(to_first);
        let first_stats = first.await.unwrap();
        assert_eq!(Stats::get(&first_stats.classes_final), 1);

        let summary = std::fs::read_dir(directory.path().join("aggregates/classes"))
            .unwrap()
            .flat_map(|day| std::fs::read_dir(day.unwrap().path()).unwrap())
            .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
            .next()
            .unwrap();
        let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(summary["hr_samples"], 15, "{summary}");
        assert_eq!(summary["positions"]["first_offset"], 0);
        assert_eq!(summary["positions"]["last_offset"], 14);
        // The screens' live document ends with the final values.
        let live = std::fs::read_dir(directory.path().join("aggregates/live"))
            .unwrap()
            .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
            .collect::<Vec<_>>();
        assert_eq!(live.len(), 1);
        let live: serde_json::Value = serde_json::from_str(&live[0]).unwrap();
        assert_eq!(live["summary"], summary);
        assert_eq!(live["members"][0]["final"], true);
    }

    /// The rollback rule: a checkpoint of a newer format is never overwritten. Its partition
    /// is refused (not ready, by name; its batches failed, neither counted nor passed on)
    /// while the task's other partitions go on.
    #[tokio::test]
    async fn a_partition_whose_checkpoint_is_of_a_newer_build_is_refused_and_left_alone() {
        let directory = tempfile::tempdir().unwrap();
        let (newer, other) = (PartitionId::new("events", 0), PartitionId::new("events", 1));
        let newer_dir = directory
            .path()
            .join("checkpoints/aggregates/kafka-events-0");
        std::fs::create_dir_all(&newer_dir).unwrap();
        let mut plain = postcard::to_stdvec(&(super::super::checkpoint::VERSION + 1)).unwrap();
        plain.extend_from_slice(b"a newer build's state");
        let body = zstd::bulk::compress(&plain, 1).unwrap();
        let newer_key = newer_dir.join(format!("{:020}.postcard.zst", 40));
        std::fs::write(&newer_key, &body).unwrap();

        let registry = Partitions::new(AckTracker::new());
        registry.assign(&newer);
        registry.assign(&other);
        let acks = registry.acks();
        let health = Health::new();
        let stage = AggregateStage::new(
            Rules::default(),
            Duration::from_millis(50),
            None,
            writer(directory.path()),
            health.clone(),
            Arc::default(),
        );
        let (input, receiver) = mpsc::channel(4);
        let (output, mut sink) = mpsc::channel(16);
        let task = tokio::spawn(stage.run(
            receiver,
            vec![output],
            CancellationToken::new(),
            registry.clone(),
        ));
        input
            .send(batch_of(newer.clone(), acks, 1, 41..=45))
            .await
            .unwrap();
        input
            .send(batch_of(other.clone(), acks, 1, 0..=4))
            .await
            .unwrap();
        let passed_on = sink.recv().await.unwrap();
        assert_eq!(
            passed_on.partition, other,
            "only the other partition's batch goes on"
        );
        let (ready, report) = health.report();
        assert!(!ready);
        assert!(
            report.contains("events/0") && report.contains("newer than this build reads"),
            "{report}"
        );
        drop(input);
        task.await.unwrap().unwrap();
        assert!(sink.recv().await.is_none());

        assert_eq!(acks.failed_partitions(), vec![newer]);
        let kept: Vec<_> = std::fs::read_dir(&newer_dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(kept, vec![newer_key.clone()], "nothing written beside it");
        assert_eq!(
            std::fs::read(&newer_key).unwrap(),
            body,
            "left as the newer build wrote it"
        );
        assert!(
            directory
                .path()
                .join("checkpoints/aggregates/kafka-events-1")
                .read_dir()
                .unwrap()
                .next()
                .is_some(),
            "the other partition checkpoints"
        );
    }
}
