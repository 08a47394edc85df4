#![allow(dead_code)] // each benchmark uses a different subset
//! Realistic inputs for the benchmarks, made by the simulator, and the service's allocator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use classpulse::aggregate::stage::AggregateStage;
use classpulse::aggregate::Rules;
use classpulse::health::Health;
use classpulse::pipeline::Settings;
use classpulse::stats::Stats;
use classpulse::store::ObjectWriter;

use chrono::Utc;
use classpulse::config::{Config, SimulatorConfig};
use classpulse::decode::{decode_message, DecodeLimits, RawMessage};
use classpulse::event::PerformanceEvent;
use classpulse::source::simulator::Simulator;
use classpulse::source::Source;
use serde_json::value::RawValue;

/// The allocator the service runs with (`src/main.rs`), so that the benchmarks measure it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Pipeline settings as configured by default (no progress line).
pub fn settings() -> Settings {
    Settings {
        batch_max_events: 500,
        channel_capacity: 16,
        limits: limits(),
        commit_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(25),
        progress_interval: Duration::ZERO,
    }
}

/// The aggregate stage with the default rules, checkpointing into `scratch` (no live values).
pub fn aggregate_stage(
    scratch: &std::path::Path,
    source_kind: &'static str,
    stats: &Arc<Stats>,
) -> AggregateStage {
    let (_, writer) = scratch_lake(scratch, source_kind, stats);
    aggregate_stage_writing_to(writer, stats)
}

/// The aggregate stage with the default rules, checkpointing through `writer`.
fn aggregate_stage_writing_to(writer: ObjectWriter, stats: &Arc<Stats>) -> AggregateStage {
    AggregateStage::new(
        Rules::default(),
        Duration::from_secs(30),
        None,
        writer,
        Health::new(),
        Arc::clone(stats),
    )
}

/// The lake's default configuration in the directory `root`, and its writer.
fn scratch_lake(
    root: &std::path::Path,
    source_kind: &'static str,
    stats: &Arc<Stats>,
) -> (classpulse::config::LakeConfig, ObjectWriter) {
    let vars: HashMap<String, String> = [(
        "CLASSPULSE_LAKE_URL".to_owned(),
        format!("file://{}", root.display()),
    )]
    .into();
    let lake = Config::from_vars(&vars).unwrap().lake;
    let writer = ObjectWriter::open(&lake, source_kind, Health::new(), Arc::clone(stats)).unwrap();
    (lake, writer)
}

/// Where a measured run's events go after decode and the aggregate stage.
#[derive(Clone, Copy, Debug)]
pub enum Sinks {
    /// A sink that drops everything.
    Null,
    /// The Parquet lake and its dead letters, in a local directory of the run's own, with the
    /// default object limits (the events table is not on).
    Lake,
}

/// What one run of a source through the pipeline measured.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    /// From the first event decoded to the last.
    pub wall: Duration,
    /// CPU-seconds of this whole process (user + system, from /proc) from the first event
    /// decoded to the end of the drain: the lake's last objects and the final checkpoint are
    /// work done for these events too.
    pub cpu_seconds: f64,
}

/// Runs `source` through decode and the aggregate stage into a null sink until `events` are
/// decoded; returns the time from the first event decoded to the last, so that start-up
/// (joining a group, taking leases) is not counted.
pub async fn time_source_to_null_sink(source: Box<dyn Source>, events: u64) -> Duration {
    run_source(source, events, Sinks::Null).await.wall
}

/// Runs `source` through decode and the aggregate stage into `sinks` until `events` are
/// decoded, then drains the pipeline. The stage checkpoints into a directory of this run's
/// own (a checkpoint left by an earlier run would have it skip what that run counted), the
/// lake's objects beside them as in the service.
pub async fn run_source(source: Box<dyn Source>, events: u64, sinks: Sinks) -> Run {
    use classpulse::pipeline::Pipeline;
    use classpulse::sink::{NullSink, Sink};
    use tokio::time::Instant;
    let stats = Arc::new(Stats::default());
    let scratch = tempfile::tempdir().unwrap();
    let (lake, writer) = scratch_lake(scratch.path(), source.kind(), &stats);
    let sinks: Vec<Box<dyn Sink>> = match sinks {
        Sinks::Null => vec![Box::new(NullSink)],
        Sinks::Lake => classpulse::sink::lake_sinks(&lake, source.kind(), &writer),
    };
    let aggregates = aggregate_stage_writing_to(writer, &stats);
    let pipeline = Pipeline::new(source, sinks, settings(), Arc::clone(&stats), Health::new())
        .with_aggregates(aggregates);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let mut first = None;
    // Polled each millisecond (the timer's resolution): a wake-up costs microseconds, well
    // under a thousandth of the CPU measured.
    loop {
        let decoded = Stats::get(&stats.events);
        if decoded > 0 && first.is_none() {
            first = Some((Instant::now(), cpu_seconds()));
        }
        if decoded >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (first_at, first_cpu) = first.expect("at least one event decoded");
    let wall = first_at.elapsed();
    shutdown.cancel();
    run.await.unwrap().unwrap();
    Run {
        wall,
        cpu_seconds: cpu_seconds() - first_cpu,
    }
}

/// CPU-seconds this process has used (user + system).
pub fn cpu_seconds() -> f64 {
    classpulse::metrics::cpu_seconds().expect("CPU time from /proc/self/stat (Linux)")
}

/// CPU-seconds per million events of each row of a benchmark, gathered over its runs and
/// printed side by side, so that the gaps between rows are read from one run.
#[derive(Default)]
pub struct CpuTable {
    rows: Vec<(String, Vec<f64>)>,
}

impl CpuTable {
    /// Records one run of `row`: `cpu_seconds` spent on `events`.
    pub fn record(&mut self, row: &str, cpu_seconds: f64, events: u64) {
        let per_million = cpu_seconds * 1e6 / events as f64;
        match self.rows.iter_mut().find(|(name, _)| name == row) {
            Some((_, runs)) => runs.push(per_million),
            None => self.rows.push((row.to_owned(), vec![per_million])),
        }
    }

    /// The median of `row`'s runs.
    pub fn median(&self, row: &str) -> Option<f64> {
        let (_, runs) = self.rows.iter().find(|(name, _)| name == row)?;
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    /// Prints each row's median, lowest and highest, and each row's difference from `floor`.
    pub fn print(&self, title: &str, floor: &str) {
        eprintln!("{title}: CPU-seconds per million events (process user + system), median [lowest, highest] of the runs");
        let floor_median = self.median(floor);
        for (row, runs) in &self.rows {
            let low = runs.iter().copied().fold(f64::INFINITY, f64::min);
            let high = runs.iter().copied().fold(0.0, f64::max);
            let median = self.median(row).unwrap();
            let over = match floor_median {
                Some(floor_median) if row != floor => {
                    format!("  {:+.3} over {floor}", median - floor_median)
                }
                _ => String::new(),
            };
            eprintln!(
                "  {row:<44} {median:>7.3} [{low:.3}, {high:.3}] over {} runs{over}",
                runs.len()
            );
        }
    }
}

/// Decoder limits as configured by default.
pub fn limits() -> DecodeLimits {
    DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_ms: 60_000,
    }
}

/// An unpaced, clean simulation of `studios` studios over `minutes` of event time.
pub fn simulation(studios: u32, minutes: u64) -> SimulatorConfig {
    let mut config = Config::from_vars(&Default::default()).unwrap().simulator;
    config.studios = studios;
    config.duration = Duration::from_secs(minutes * 60);
    config.speedup = 0.0;
    config.seed = Some(42);
    config.start = Some("2026-11-25T17:00:00Z".parse().unwrap());
    config.invalid_rate = 0.0;
    config.duplicate_rate = 0.0;
    config.out_of_order_rate = 0.0;
    config
}

/// Every message of a simulation.
pub fn messages(config: &SimulatorConfig) -> Vec<RawMessage> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut simulator = Simulator::new(config, 500, Utc::now());
        let mut messages = Vec::new();
        while let Some(batch) = simulator.next_batch().await.unwrap() {
            messages.extend(batch.messages);
        }
        messages
    })
}

/// Each event of `messages` as its own JSON text.
pub fn single_events(messages: &[RawMessage]) -> Vec<String> {
    let mut events = Vec::new();
    for message in messages {
        let payload = std::str::from_utf8(message.payload.as_ref().unwrap()).unwrap();
        if payload.starts_with('[') {
            let elements: Vec<&RawValue> = serde_json::from_str(payload).unwrap();
            events.extend(elements.iter().map(|e| e.get().to_owned()));
        } else {
            events.extend(payload.lines().map(str::to_owned));
        }
    }
    events
}

/// Decoded events of `messages`.
pub fn decoded(messages: &[RawMessage]) -> Vec<PerformanceEvent> {
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    for message in messages {
        decode_message(
            message,
            &limits(),
            Utc::now().timestamp_millis(),
            &mut events,
            &mut rejected,
        );
    }
    assert!(rejected.is_empty());
    events
}
