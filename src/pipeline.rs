//! The pipeline: source -> decode/validate -> aggregate stage -> every sink, over bounded
//! channels, with acknowledgements flowing back to the source and a drain on shutdown.
//!
//! ```text
//!  source loop ──RawBatch──▶ decode stage ──DecodedBatch──▶ aggregate stage ──Arc<DecodedBatch>──▶ lake sink task
//!      ▲                        │ registers each batch        │ judges, counts,   ├──────▶ dead-letter sink task
//!      │                        ▼                             │ checkpoints       └──────▶ events table sink task
//!      └──commit frontiers── AckTracker ◀── the aggregate stage and the sinks drop their AckToken once durable
//! ```
//!
//! Without aggregates configured the decode stage sends straight to the sinks. Every channel
//! is bounded, so a slow sink slows the aggregate stage and the decoder, which slow the
//! source. A shutdown stops the source, lets the decoder and the aggregate stage finish, has
//! every sink flush, commits the last frontiers and returns, all within the shutdown timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckTracker, PartitionId};
use crate::aggregate::stage::{AggregateError, AggregateStage};
use crate::decode::{decode_stage, Closed, DecodeLimits, Downstream, Judge};
use crate::erasure::Suppression;
use crate::health::Health;
use crate::metrics;
use crate::partitions::Partitions;
use crate::retry::Backoff;
use crate::sink::{run_sink, Sink, SinkError};
use crate::source::{RawBatch, Source, SourceError};
use crate::stats::Stats;

/// How long the source waits for room downstream before it pauses fetching. Pausing is for a
/// sink that is slow for seconds: librdkafka drops what it prefetched for a paused partition
/// and fetches it again on resume, so pausing whenever the decoder is a moment behind would
/// throttle a backlog to a fetch round trip per batch. Far below `max.poll.interval.ms`.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// Pipeline settings, from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events per decoded batch (cut at message boundaries).
    pub batch_max_events: usize,
    /// Capacity of every channel between stages.
    pub channel_capacity: usize,
    /// Decoder limits.
    pub limits: DecodeLimits,
    /// How often frontiers are committed.
    pub commit_interval: Duration,
    /// Drain deadline.
    pub shutdown_timeout: Duration,
    /// Progress log interval; zero disables it.
    pub progress_interval: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// A bounded source (the simulator) ran out; everything was flushed.
    SourceEnded,
    /// A shutdown signal drained the pipeline.
    Drained,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// How it ended.
    pub ending: Ending,
    /// The last frontier committed per partition.
    pub committed: BTreeMap<PartitionId, u64>,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed in a way retrying cannot fix.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink stopped.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The drain did not finish in time; positions not yet durable were not committed and
    /// will be read again after a restart.
    #[error("drain did not finish within {timeout:?}; {in_flight} batches were not durable and will be replayed")]
    DrainTimeout {
        /// The configured deadline.
        timeout: Duration,
        /// Batches left unacknowledged.
        in_flight: usize,
    },
    /// The aggregate stage stopped.
    #[error(transparent)]
    Aggregate(#[from] AggregateError),
    /// A stage ended unexpectedly (a panic, or a channel closed early).
    #[error("pipeline stage failed: {0}")]
    Stage(String),
}

impl From<Closed> for PipelineError {
    fn from(closed: Closed) -> PipelineError {
        PipelineError::Stage(closed.to_string())
    }
}

impl PipelineError {
    /// Whether restarting the process may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Source(error) => error.is_retryable(),
            PipelineError::Sink(error) => error.is_retryable(),
            PipelineError::Aggregate(error) => error.is_retryable(),
            PipelineError::DrainTimeout { .. } | PipelineError::Stage(_) => true,
        }
    }
}

/// A source wired to its sinks.
pub struct Pipeline {
    source: Box<dyn Source>,
    sinks: Vec<Box<dyn Sink>>,
    settings: Settings,
    stats: Arc<Stats>,
    health: Health,
    partitions: Partitions,
    aggregates: Option<AggregateStage>,
    judge: Option<Judge>,
    suppression: Suppression,
}

impl Pipeline {
    /// Wires `source` to `sinks`.
    pub fn new(
        source: Box<dyn Source>,
        sinks: Vec<Box<dyn Sink>>,
        settings: Settings,
        stats: Arc<Stats>,
        health: Health,
    ) -> Pipeline {
        Pipeline {
            source,
            sinks,
            settings,
            stats,
            health,
            partitions: Partitions::new(AckTracker::new()),
            aggregates: None,
            judge: None,
            suppression: Suppression::none(),
        }
    }

    /// Leaves out the events of the members on `suppression`'s erasure list.
    pub fn with_suppression(mut self, suppression: Suppression) -> Pipeline {
        self.suppression = suppression;
        self
    }

    /// Judges every event with `judge` (instead of an aggregate stage) before the sinks.
    pub fn with_judge(mut self, judge: Judge) -> Pipeline {
        self.judge = Some(judge);
        self
    }

    /// Puts the aggregate stage between the decoder and the sinks.
    pub fn with_aggregates(mut self, stage: AggregateStage) -> Pipeline {
        self.aggregates = Some(stage);
        self
    }

    /// Runs until the source ends or `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, PipelineError> {
        let started = Instant::now();
        let Pipeline {
            mut source,
            sinks,
            settings,
            stats,
            health,
            partitions,
            aggregates,
            judge,
            suppression,
        } = self;
        let acks = partitions.acks().clone();
        let source_kind = source.kind();
        source.attach(partitions.clone());
        let stages = Stages::spawn(
            sinks,
            aggregates,
            judge,
            suppression,
            &settings,
            &partitions,
            &stats,
            source_kind,
        );

        let mut committer = Committer {
            acks: acks.clone(),
            committed: BTreeMap::new(),
        };
        let mut progress = Progress::new(settings.progress_interval, Arc::clone(&stats));
        let mut commit_tick = tokio::time::interval(settings.commit_interval);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut stuck = Vec::new();
        health.ready("source");
        health.ready("commits");
        health.ready("pipeline");

        let ending = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ending::Drained,
                _ = commit_tick.tick() => committer.commit(source.as_mut()).await?,
                _ = housekeeping.tick() => {
                    metrics::set_batches_in_flight(acks.in_flight());
                    metrics::sample_process();
                    progress.maybe_log(&acks);
                    report_stuck_partitions(&acks, &health, &mut stuck);
                }
                batch = source.next_batch() => match batch {
                    Ok(Some(batch)) => {
                        if backoff.attempts() > 0 {
                            health.ready("source");
                            backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
                        }
                        let forwarded = forward(
                            batch,
                            &stages.raw,
                            source.as_mut(),
                            &mut committer,
                            &mut commit_tick,
                            &shutdown,
                        )
                        .await?;
                        if let Some(ending) = forwarded {
                            break ending;
                        }
                    }
                    Ok(None) => break Ending::SourceEnded,
                    Err(error) if error.is_retryable() => {
                        health.not_ready("source", error.to_string());
                        tracing::warn!(source = source_kind, error = %error, "source unavailable, retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };

        health.not_ready("pipeline", "draining");
        let drain_started = Instant::now();
        tracing::info!(ending = ?ending, in_flight = acks.in_flight(), "draining");
        let result = stages
            .drain(ending, settings.shutdown_timeout, &shutdown, &acks)
            .await;
        // Whatever happened, commit what is durable, and nothing else after this point.
        committer.commit(source.as_mut()).await?;
        acks.close();
        source.shutdown().await;
        metrics::set_drain_duration(drain_started.elapsed());
        metrics::set_batches_in_flight(acks.in_flight());
        result?;
        progress.log_now(&acks);
        Ok(RunReport {
            ending,
            committed: committer.committed,
            elapsed: started.elapsed(),
        })
    }
}

/// The stages after the source, each a task, and the channel into the first.
struct Stages {
    /// Raw batches to the decoder.
    raw: mpsc::Sender<RawBatch>,
    decoder: JoinHandle<Result<(), Closed>>,
    aggregator: Option<JoinHandle<Result<(), AggregateError>>>,
    sinks: Vec<JoinHandle<Result<(), SinkError>>>,
    /// Cancelled when a bounded source ends: the aggregate stage then finalises every class.
    source_ended: CancellationToken,
}

impl Stages {
    /// Spawns a task per sink, the aggregate stage (if any) and the decoder, joined by bounded
    /// channels of `settings.channel_capacity` batches.
    #[allow(clippy::too_many_arguments)] // the stages' inputs, each named at its one call
    fn spawn(
        sinks: Vec<Box<dyn Sink>>,
        aggregates: Option<AggregateStage>,
        judge: Option<Judge>,
        suppression: Suppression,
        settings: &Settings,
        partitions: &Partitions,
        stats: &Arc<Stats>,
        source_kind: &'static str,
    ) -> Stages {
        let capacity = settings.channel_capacity;
        let mut sink_inputs = Vec::new();
        let mut sink_tasks = Vec::new();
        for sink in sinks {
            let (sender, receiver) = mpsc::channel(capacity);
            sink_inputs.push(sender);
            sink_tasks.push(tokio::spawn(run_sink(sink, receiver)));
        }
        let source_ended = CancellationToken::new();
        let (downstream, aggregator) = match aggregates {
            Some(stage) => {
                let (sender, receiver) = mpsc::channel(capacity);
                let task = tokio::spawn(stage.run(
                    receiver,
                    sink_inputs,
                    source_ended.clone(),
                    partitions.clone(),
                ));
                (Downstream::Aggregates(sender), Some(task))
            }
            None => (Downstream::Sinks(sink_inputs), None),
        };
        let (raw, raw_receiver) = mpsc::channel::<RawBatch>(capacity);
        let decoder = tokio::spawn(decode_stage(
            raw_receiver,
            downstream,
            settings.limits,
            settings.batch_max_events,
            partitions.acks().clone(),
            Arc::clone(stats),
            source_kind,
            judge,
            suppression,
        ));
        Stages {
            raw,
            decoder,
            aggregator,
            sinks: sink_tasks,
            source_ended,
        }
    }

    /// No more input: the decoder and the aggregate stage finish, every sink flushes. After a
    /// signal within `timeout`; after a bounded source's end without a deadline, unless a
    /// signal arrives.
    async fn drain(
        self,
        ending: Ending,
        timeout: Duration,
        shutdown: &CancellationToken,
        acks: &AckTracker,
    ) -> Result<(), PipelineError> {
        if ending == Ending::SourceEnded {
            self.source_ended.cancel();
        }
        drop(self.raw);
        let drained = async {
            let mut decoded = join(self.decoder).await;
            if let Some(aggregator) = self.aggregator {
                decoded = decoded.and(join(aggregator).await);
            }
            let mut sinks_result = Ok(());
            for task in self.sinks {
                if let Err(error) = join(task).await {
                    sinks_result = sinks_result.and(Err(error));
                }
            }
            decoded.and(sinks_result)
        };
        let overran = || PipelineError::DrainTimeout {
            timeout,
            in_flight: acks.in_flight(),
        };
        match ending {
            Ending::Drained => tokio::time::timeout(timeout, drained)
                .await
                .unwrap_or_else(|_| Err(overran())),
            Ending::SourceEnded => {
                tokio::pin!(drained);
                tokio::select! {
                    result = &mut drained => result,
                    _ = shutdown.cancelled() => tokio::time::timeout(timeout, drained)
                        .await
                        .unwrap_or_else(|_| Err(overran())),
                }
            }
        }
    }
}

/// Hands `batch` to the decoder. With no room, waits up to [`PAUSE_AFTER`]; then pauses the
/// source (it stops fetching but keeps polling, so a Kafka member stays in its group) and
/// keeps committing until there is room. `Some` when the run ends meanwhile (a signal, or
/// the decoder stopped: its error is reported by the drain).
async fn forward(
    batch: RawBatch,
    raw: &mpsc::Sender<RawBatch>,
    source: &mut dyn Source,
    committer: &mut Committer,
    commit_tick: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
) -> Result<Option<Ending>, PipelineError> {
    match raw.try_send(batch) {
        Ok(()) => Ok(None),
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(Some(Ending::SourceEnded)),
        Err(mpsc::error::TrySendError::Full(batch)) => {
            // Boxed: the slow path's timers stay out of the per-batch future.
            Box::pin(wait_for_room(
                batch,
                raw,
                source,
                committer,
                commit_tick,
                shutdown,
            ))
            .await
        }
    }
}

/// [`forward`] when the decoder has no room: the backpressure protocol.
async fn wait_for_room(
    batch: RawBatch,
    raw: &mpsc::Sender<RawBatch>,
    source: &mut dyn Source,
    committer: &mut Committer,
    commit_tick: &mut tokio::time::Interval,
    shutdown: &CancellationToken,
) -> Result<Option<Ending>, PipelineError> {
    let waited = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Ok(Some(Ending::Drained)),
        permit = tokio::time::timeout(PAUSE_AFTER, raw.reserve()) => permit,
    };
    if let Ok(permit) = waited {
        return Ok(match permit {
            Ok(permit) => {
                permit.send(batch);
                None
            }
            Err(_) => Some(Ending::SourceEnded),
        });
    }
    source.pause();
    let mut keep_alive = tokio::time::interval(Duration::from_secs(1));
    let permit = loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break None,
            permit = raw.reserve() => break Some(permit),
            _ = keep_alive.tick() => source.keep_alive().await,
            // Whatever the sinks finish meanwhile is committed.
            _ = commit_tick.tick() => committer.commit(source).await?,
        }
    };
    source.resume();
    Ok(match permit {
        Some(Ok(permit)) => {
            permit.send(batch);
            None
        }
        Some(Err(_)) => Some(Ending::SourceEnded),
        None => Some(Ending::Drained),
    })
}

/// A partition behind a failed batch cannot commit until a restart replays it: say so on
/// `/readyz` and in the log (once per change).
fn report_stuck_partitions(acks: &AckTracker, health: &Health, reported: &mut Vec<PartitionId>) {
    let failed = acks.failed_partitions();
    if failed == *reported {
        return;
    }
    if failed.is_empty() {
        health.ready("commits");
    } else {
        let names: Vec<String> = failed.iter().map(ToString::to_string).collect();
        tracing::warn!(
            partitions = names.join(","),
            "partitions cannot commit past a batch a sink failed; a restart replays them"
        );
        health.not_ready(
            "commits",
            format!("stuck behind a failed batch: {}", names.join(", ")),
        );
    }
    *reported = failed;
}

async fn join<T>(
    task: JoinHandle<Result<T, impl Into<PipelineError>>>,
) -> Result<T, PipelineError> {
    match task.await {
        Ok(result) => result.map_err(Into::into),
        Err(error) => Err(PipelineError::Stage(error.to_string())),
    }
}

/// Hands durable frontiers to the source.
struct Committer {
    acks: AckTracker,
    /// Last frontier committed per partition.
    committed: BTreeMap<PartitionId, u64>,
}

impl Committer {
    async fn commit(&mut self, source: &mut dyn Source) -> Result<(), PipelineError> {
        let frontiers = self.acks.take_committable();
        if frontiers.is_empty() {
            return Ok(());
        }
        match source.commit(&frontiers).await {
            Ok(()) => {
                metrics::record_commit(source.kind());
                self.committed.extend(frontiers);
                Ok(())
            }
            // A failed commit only means a longer replay after a crash; the next one retries.
            Err(error) if error.is_retryable() => {
                tracing::warn!(error = %error, "commit failed, will retry");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// The progress line.
struct Progress {
    interval: Duration,
    stats: Arc<Stats>,
    last_at: Instant,
    last_events: u64,
}

impl Progress {
    fn new(interval: Duration, stats: Arc<Stats>) -> Progress {
        Progress {
            interval,
            stats,
            last_at: Instant::now(),
            last_events: 0,
        }
    }

    fn maybe_log(&mut self, acks: &AckTracker) {
        if !self.interval.is_zero() && self.last_at.elapsed() >= self.interval {
            self.log_now(acks);
        }
    }

    fn log_now(&mut self, acks: &AckTracker) {
        let events = Stats::get(&self.stats.events);
        let seconds = self.last_at.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            events_in = events,
            rejected = self.stats.rejected_total(),
            events_per_second = ((events - self.last_events) as f64 / seconds).round() as u64,
            lake_objects = Stats::get(&self.stats.lake_objects),
            lake_events = Stats::get(&self.stats.lake_records),
            dead_letters = Stats::get(&self.stats.dead_letter_records),
            batches_in_flight = acks.in_flight(),
            "progress"
        );
        self.last_at = Instant::now();
        self.last_events = events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decode::{decode_batch, DecodedBatch, Decoder, RawMessage};
    use crate::sink::NullSink;
    use crate::source::simulator::Simulator;
    use async_trait::async_trait;
    use bytes::Bytes;
    use chrono::Utc;

    fn settings() -> Settings {
        Settings {
            batch_max_events: 100,
            channel_capacity: 4,
            limits: DecodeLimits {
                max_message_bytes: 1 << 20,
                max_clock_skew_ms: 60_000,
            },
            commit_interval: Duration::from_millis(10),
            shutdown_timeout: Duration::from_secs(5),
            progress_interval: Duration::ZERO,
        }
    }

    fn simulator() -> Box<Simulator> {
        let mut config = Config::from_vars(&Default::default()).unwrap().simulator;
        config.studios = 6;
        config.duration = Duration::from_secs(120);
        config.speedup = 0.0;
        config.seed = Some(5);
        config.start = Some("2026-11-25T17:00:00Z".parse().unwrap());
        Box::new(Simulator::new(&config, 100, Utc::now()))
    }

    type CommitLog = Arc<std::sync::Mutex<Vec<(PartitionId, u64)>>>;

    /// The simulator, recording every commit it receives.
    struct RecordingSource {
        inner: Box<Simulator>,
        commits: CommitLog,
    }

    #[async_trait]
    impl Source for RecordingSource {
        fn kind(&self) -> &'static str {
            "simulator"
        }
        async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
            self.inner.next_batch().await
        }
        async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError> {
            self.commits.lock().unwrap().extend_from_slice(frontiers);
            Ok(())
        }
    }

    /// Holds every batch until the end of input, and checks that nothing was committed while
    /// it held them.
    struct HoldingSink {
        held: Vec<Arc<DecodedBatch>>,
        commits: CommitLog,
    }

    #[async_trait]
    impl Sink for HoldingSink {
        fn name(&self) -> &'static str {
            "holding"
        }
        async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
            self.held.push(batch);
            Ok(())
        }
        async fn flush_due(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn flush_all(&mut self) -> Result<(), SinkError> {
            // Several commit intervals pass in which there must be nothing to commit.
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!self.held.is_empty());
            let committed = self.commits.lock().unwrap().clone();
            assert!(
                committed.is_empty(),
                "committed while a sink still held the batches: {committed:?}"
            );
            self.held.clear();
            Ok(())
        }
    }

    /// Fails every batch of the first partition it sees, counting them.
    struct FailingSink {
        target: Arc<std::sync::OnceLock<u32>>,
        failed: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait]
    impl Sink for FailingSink {
        fn name(&self) -> &'static str {
            "failing"
        }
        async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
            if *self.target.get_or_init(|| batch.partition.index) == batch.partition.index {
                batch.ack.fail();
                self.failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }
        async fn flush_due(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn flush_all(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn nothing_is_committed_before_every_sink_is_durable() {
        let stats = Arc::new(Stats::default());
        let commits = CommitLog::default();
        let source = RecordingSource {
            inner: simulator(),
            commits: Arc::clone(&commits),
        };
        let holding = HoldingSink {
            held: Vec::new(),
            commits: Arc::clone(&commits),
        };
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NullSink), Box::new(holding)];
        let pipeline = Pipeline::new(
            Box::new(source),
            sinks,
            settings(),
            Arc::clone(&stats),
            Health::new(),
        );
        let acks = pipeline.partitions.acks().clone();
        let report = pipeline.run(CancellationToken::new()).await.unwrap();
        assert_eq!(report.ending, Ending::SourceEnded);
        assert!(Stats::get(&stats.events) > 1000);
        // Once the holding sink let go, every partition with data was committed, in one commit.
        assert!(report.committed.len() >= 2, "{:?}", report.committed);
        assert_eq!(
            commits.lock().unwrap().len(),
            report.committed.len(),
            "one final commit per partition"
        );
        assert_eq!(acks.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_failed_batch_is_never_committed() {
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let target = Arc::new(std::sync::OnceLock::new());
        let failing = FailingSink {
            target: Arc::clone(&target),
            failed: Arc::clone(&failed),
        };
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NullSink), Box::new(failing)];
        let report = Pipeline::new(
            simulator(),
            sinks,
            settings(),
            Arc::default(),
            Health::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        assert!(
            failed.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the first partition seen had batches to fail"
        );
        let target = *target.get().unwrap();
        assert!(
            !report
                .committed
                .keys()
                .any(|partition| partition.index == target),
            "partition {target} failed in one sink and must not be committed: {:?}",
            report.committed
        );
        assert!(
            report.committed.len() >= 2,
            "the other partitions commit: {:?}",
            report.committed
        );
    }

    /// The simulator, counting the pipeline's calls to pause and resume it.
    struct PausedSource {
        inner: Box<Simulator>,
        pauses: Arc<std::sync::atomic::AtomicUsize>,
        resumes: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait]
    impl Source for PausedSource {
        fn kind(&self) -> &'static str {
            "simulator"
        }
        async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError> {
            self.inner.next_batch().await
        }
        async fn commit(&mut self, _: &[(PartitionId, u64)]) -> Result<(), SourceError> {
            Ok(())
        }
        fn pause(&mut self) {
            self.pauses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        fn resume(&mut self) {
            self.resumes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Takes `each` over every batch, and `first` over the first one.
    struct SlowSink {
        each: Duration,
        first: Option<Duration>,
    }

    #[async_trait]
    impl Sink for SlowSink {
        fn name(&self) -> &'static str {
            "slow"
        }
        async fn write(&mut self, _: Arc<DecodedBatch>) -> Result<(), SinkError> {
            tokio::time::sleep(self.first.take().unwrap_or(self.each)).await;
            Ok(())
        }
        async fn flush_due(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        async fn flush_all(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    /// Runs the simulator into `sink`; returns (pauses, resumes, events decoded).
    async fn run_paced(sink: SlowSink) -> (usize, usize, u64) {
        let pauses = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let resumes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let source = PausedSource {
            inner: simulator(),
            pauses: Arc::clone(&pauses),
            resumes: Arc::clone(&resumes),
        };
        let stats = Arc::new(Stats::default());
        let report = Pipeline::new(
            Box::new(source),
            vec![Box::new(sink)],
            settings(),
            Arc::clone(&stats),
            Health::new(),
        )
        .run(CancellationToken::new())
        .await
        .unwrap();
        assert_eq!(report.ending, Ending::SourceEnded);
        let count =
            |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
        (count(&pauses), count(&resumes), Stats::get(&stats.events))
    }

    #[tokio::test]
    async fn a_sink_a_moment_behind_slows_the_source_without_pausing_it() {
        let (_, _, all) = run_paced(SlowSink {
            each: Duration::ZERO,
            first: None,
        })
        .await;
        // Every batch waits for the sink, so the channels stay full: pausing each time (as
        // before) dropped librdkafka's prefetched messages at every batch.
        let (pauses, _, events) = run_paced(SlowSink {
            each: Duration::from_millis(2),
            first: None,
        })
        .await;
        assert_eq!(events, all);
        assert_eq!(pauses, 0, "paused for a sink 2 ms behind");
    }

    #[tokio::test]
    async fn a_sink_stalled_for_seconds_pauses_the_source_until_it_has_room() {
        let (_, _, all) = run_paced(SlowSink {
            each: Duration::ZERO,
            first: None,
        })
        .await;
        let (pauses, resumes, events) = run_paced(SlowSink {
            each: Duration::ZERO,
            first: Some(PAUSE_AFTER * 3),
        })
        .await;
        assert_eq!(events, all);
        assert_eq!(pauses, 1, "one stall, one pause");
        assert_eq!(resumes, pauses);
    }

    fn message(offset: u64, events: usize) -> RawMessage {
        let body: Vec<String> = (0..events)
            .map(|i| {
                format!(
                    r#"{{"event_id":"e{offset}-{i}","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s1","class_id":"c1","member_id":"m{i}","event_data":{{"bpm":120}}}}"#
                )
            })
            .collect();
        RawMessage {
            offset,
            timestamp_ms: None,
            key: None,
            payload: Some(Bytes::from(format!("[{}]", body.join(",")))),
        }
    }

    #[test]
    fn batches_are_cut_at_message_boundaries() {
        let acks = AckTracker::new();
        let limits = DecodeLimits {
            max_message_bytes: 1 << 20,
            max_clock_skew_ms: 60_000,
        };
        let raw = RawBatch {
            partition: PartitionId::new("t", 0),
            generation: 0,
            messages: (10..15).map(|offset| message(offset, 3)).collect(),
        };
        let batches = decode_batch(
            &mut Decoder::default(),
            raw,
            &limits,
            5,
            1_764_090_000_000,
            &acks,
        );
        let ranges: Vec<_> = batches
            .iter()
            .map(|b| (b.first_offset, b.last_offset, b.events.len()))
            .collect();
        assert_eq!(ranges, vec![(10, 11, 6), (12, 13, 6), (14, 14, 3)]);
        assert_eq!(acks.in_flight(), 3);
        drop(batches);
        assert_eq!(
            acks.take_committable(),
            vec![(PartitionId::new("t", 0), 15)]
        );
    }
}
