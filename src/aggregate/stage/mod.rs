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
//!
//! Here the stage's loop and the counting of each batch; `persist.rs` writes checkpoints,
//! results, sealed id segments and live values and restores a partition from its checkpoint
//! (refusing one of a newer format); `handoff.rs` claims new classes in the class directory
//! and closes the classes whose parts other partitions counted; `segments.rs` looks late
//! events up in their classes' sealed id segments.

mod handoff;
mod persist;
mod profiles;
mod segments;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use object_store::path::Path;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::checkpoint::CheckpointError;
use super::partition::{Finalised, PartitionState};
use super::Rules;
use crate::ack::{AckToken, PartitionId};
use crate::decode::DecodedBatch;
use crate::erasure::{Screen, Suppression};
use crate::health::Health;
use crate::live::{Publisher, Tiles};
use crate::metrics;
use crate::partitions::Partitions;
use crate::profile::source::Profiles;
use crate::retry::Backoff;
use crate::sink::dynamodb::aggregates::AggregatesTable;
use crate::stats::Stats;
use crate::store::{classify, ObjectWriter};

use persist::write_jobs;
use profiles::bind_profiles;
use segments::{InFlight, SegmentCache};

/// Health component and write label of the stage.
pub const NAME: &str = "aggregates";
/// Health component naming the partitions refused for a checkpoint of a newer format.
pub const REFUSED: &str = "aggregate checkpoints";
/// How often the stage releases revoked partitions, adopts assigned ones, sweeps for classes
/// that are due, and writes live values and checkpoints when they are due.
const TICK: Duration = Duration::from_secs(1);

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
    /// Members of open classes whose profile is not known yet: `(class key, member id)`.
    waiting: Vec<(String, Box<str>)>,
    /// The version of the erasure list the state was last screened with.
    screened: u64,
}

/// The aggregate stage.
pub struct AggregateStage {
    rules: Rules,
    checkpoint_interval: Duration,
    /// How often live values are written to the object store; `None`: not there.
    live_interval: Option<Duration>,
    /// The DynamoDB aggregates table, and how often live values are written to it (`None`:
    /// never).
    table: Option<(AggregatesTable, Option<Duration>)>,
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
    /// Sealed ids of classes whose late events came lately.
    segments: SegmentCache,
    /// Segments handed to the writer and not yet written.
    in_flight: Vec<InFlight>,
    /// The number of the next job handed to the writer.
    next_job: u64,
    /// The number of the last job the writer finished.
    jobs_done: Arc<AtomicU64>,
    /// Member profiles, bound to members as they appear; `None`: none configured.
    profiles: Option<Profiles>,
    /// Where live records go for the walls; `None`: nowhere.
    walls: Option<Walls>,
    /// The erasure list: erased members are left out of the state and of every result.
    erased: Screen,
}

/// The walls' channel of the stage.
#[derive(Clone)]
pub struct Walls {
    /// Takes the records.
    pub publisher: Publisher,
    /// Names the members.
    pub tiles: Tiles,
    /// How often a record of each class that changed is published.
    pub interval: Duration,
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
            segments: SegmentCache::default(),
            in_flight: Vec::new(),
            next_job: 1,
            jobs_done: Arc::default(),
            profiles: None,
            walls: None,
            erased: Screen::new(Suppression::none()),
        }
    }

    /// Leaves the members on `list` out of the state and every result, from the moment the
    /// stage reads them on it (a restored state included).
    pub fn with_suppression(mut self, list: Suppression) -> AggregateStage {
        self.erased = Screen::new(list);
        self
    }

    /// Screens each partition's state with the erasure list's newest version: a state not yet
    /// screened with it (the list changed, a state was restored), or, `every_state`, each one
    /// (before results are written: a class part handed over by another partition may hold
    /// state counted before that partition read the list).
    fn forget_erased(&mut self, every_state: bool) {
        self.erased.refresh();
        let version = self.erased.version();
        if version == 0 {
            return;
        }
        for owned in self.partitions.values_mut() {
            if owned.screened == version && !every_state {
                continue;
            }
            let erased = &mut self.erased;
            let changed = owned
                .state
                .forget(&mut |member_id| erased.erased(member_id));
            owned.screened = version;
            if changed > 0 {
                owned.dirty = true;
                owned
                    .waiting
                    .retain(|(_, member_id)| !self.erased.erased(member_id));
                tracing::info!(partition = %owned.state.name, changed, "erased members left out of the aggregate state");
            }
        }
    }

    /// Publishes a live record of every class that counted an event every `walls.interval`,
    /// and each class's final record after the checkpoint that records it.
    pub fn with_walls(mut self, walls: Walls) -> AggregateStage {
        self.walls = Some(walls);
        self
    }

    /// Binds each member's profile to their state in a class as it becomes known
    /// ([`Profiles::lookup`] never waits).
    pub fn with_profiles(mut self, profiles: Profiles) -> AggregateStage {
        self.profiles = Some(profiles);
        self
    }

    /// Also writes final results to `table`, and live values every `live_interval` if given.
    pub fn with_table(
        mut self,
        table: AggregatesTable,
        live_interval: Option<Duration>,
    ) -> AggregateStage {
        self.table = Some((table, live_interval));
        self
    }

    /// Keeps the class directory ([`directory`](super::directory)): a class whose key moves
    /// to another partition (partitions added to a Kafka topic) is finalised once, by the
    /// partition where it began, with the parts counted elsewhere.
    pub fn with_class_directory(mut self) -> AggregateStage {
        self.class_directory = true;
        self
    }

    /// How often live values are written to the table or the lake's live documents.
    fn live_every(&self) -> Option<Duration> {
        let table = self.table.as_ref().and_then(|(_, interval)| *interval);
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
            Arc::clone(&self.jobs_done),
            self.walls.as_ref().map(|walls| walls.publisher.clone()),
        ));
        let live_every = self.live_every();
        // The walls' records on a timer of their own: their interval may be shorter than a
        // tick, and a tick a moment early would hold them back a whole tick.
        let walls_every = self.walls.as_ref().map(|walls| walls.interval);
        let mut walls_tick = tokio::time::interval(walls_every.unwrap_or(TICK));
        walls_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        let mut last_live = Instant::now();
        self.health.ready(NAME);
        loop {
            tokio::select! {
                batch = input.recv() => match batch {
                    Some(mut batch) => {
                        let applied = self.apply(&mut batch).await?;
                        self.forget_erased(false);
                        if !applied {
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
                _ = walls_tick.tick(), if walls_every.is_some() => {
                    self.forget_erased(false);
                    self.publish_live();
                }
                _ = tick.tick() => {
                    self.forget_erased(false);
                    let done = self.jobs_done.load(Ordering::Acquire);
                    self.in_flight.retain(|segment| segment.job > done);
                    self.release_revoked(&registry);
                    self.adopt_assigned(&registry).await?;
                    self.bind_waiting();
                    self.sweep(&registry);
                    self.close_classes(false).await;
                    self.forget_erased(true);
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
        self.forget_erased(true);
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
        let (mut tally, finalised) = owned.state.apply(
            &mut batch.events,
            batch.last_offset,
            &self.rules,
            Utc::now().timestamp_millis(),
        );
        let unbound = owned.state.take_unbound();
        let unconfirmed = owned.state.take_unconfirmed();
        if !unconfirmed.is_empty() {
            let found = self
                .find_in_segments(&batch.partition, &batch.events, unconfirmed)
                .await;
            let owned = self
                .partitions
                .get_mut(&batch.partition)
                .expect("restored above");
            owned
                .state
                .confirm_duplicates(&mut batch.events, &found, &mut tally);
        }
        let owned = self
            .partitions
            .get_mut(&batch.partition)
            .expect("restored above");
        owned.dirty |= owned.state.position != before || !owned.state.outbox.is_empty();
        metrics::record_handoffs("handed_over", owned.state.take_handed_over());
        owned.tokens.push(batch.ack.clone());
        if let Some(profiles) = &self.profiles {
            owned.waiting.extend(unbound);
            bind_profiles(profiles, owned);
        }
        metrics::record_verdicts(tally.duplicate, tally.late);
        Stats::add(&self.stats.duplicates, tally.duplicate);
        Stats::add(&self.stats.late, tally.late);
        self.record_finalised(finalised);
        self.close_classes(false).await;
        Ok(true)
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
            self.record_raised(&class.result);
            for member in &class.result.members {
                let source = member
                    .hr_max_source
                    .unwrap_or(super::heart::HrMaxSource::Default);
                Stats::add(&self.stats.hr_max_sources[source as usize], 1);
                if member.hr_max_observed.is_some() {
                    Stats::add(&self.stats.hr_max_raised, 1);
                }
            }
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
            compact_after: None,
            erasure_key: None,
            erasure_refresh: std::time::Duration::from_secs(60),
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
        // The first task's checkpoint at 4 is durable before it loses the partition.
        let checkpoints = directory
            .path()
            .join("checkpoints/aggregates/kafka-events-0");
        let written = async {
            while std::fs::read_dir(&checkpoints).map_or(true, |mut dir| dir.next().is_none()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), written)
            .await
            .expect("a checkpoint within 30 s");
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
        // before is stale: it must start from the other task's checkpoint, whether a tick or
        // the next batch is the first to see the new turn.
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
