#![allow(dead_code)] // each benchmark uses a different subset
//! Realistic inputs for the benchmarks, made by the simulator.

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
    let vars: HashMap<String, String> = [(
        "CLASSPULSE_LAKE_URL".to_owned(),
        format!("file://{}", scratch.display()),
    )]
    .into();
    let lake = Config::from_vars(&vars).unwrap().lake;
    let writer = ObjectWriter::open(&lake, source_kind, Health::new(), Arc::clone(stats)).unwrap();
    AggregateStage::new(
        Rules::default(),
        Duration::from_secs(30),
        None,
        writer,
        Health::new(),
        Arc::clone(stats),
    )
}

/// Runs `source` through decode and the aggregate stage into a null sink until `events` are
/// decoded; returns the time from the first event decoded to the last, so that start-up
/// (joining a group, taking leases) is not counted. The stage checkpoints into a directory of
/// this run's own: a checkpoint left by an earlier run would have it skip what that run
/// counted.
pub async fn time_source_to_null_sink(source: Box<dyn Source>, events: u64) -> Duration {
    use classpulse::pipeline::Pipeline;
    use classpulse::sink::{NullSink, Sink};
    use tokio::time::Instant;
    let stats = Arc::new(Stats::default());
    let scratch = tempfile::tempdir().unwrap();
    let aggregates = aggregate_stage(scratch.path(), source.kind(), &stats);
    let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NullSink)];
    let pipeline = Pipeline::new(source, sinks, settings(), Arc::clone(&stats), Health::new())
        .with_aggregates(aggregates);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let mut first = None;
    loop {
        let decoded = Stats::get(&stats.events);
        if decoded > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if decoded >= events {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let took = first.map_or(Duration::ZERO, |first| first.elapsed());
    shutdown.cancel();
    run.await.unwrap().unwrap();
    took
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
