//! The whole embedded pipeline: simulator source -> decode -> null sink, acknowledgements and
//! commits included. Target: at least 300,000 events/s on this 2-core machine.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use classpulse::health::Health;
use classpulse::pipeline::{Pipeline, Settings};
use classpulse::sink::{NullSink, Sink};
use classpulse::source::simulator::{Simulator, SimulatorStats};
use classpulse::stats::Stats;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

mod support;

fn pipeline(c: &mut Criterion) {
    let _ = classpulse::metrics::install(); // measure with the real recorder in place
    let config = support::simulation(20, 10);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = Settings {
        batch_max_events: 500,
        channel_capacity: 16,
        limits: support::limits(),
        commit_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(25),
        progress_interval: Duration::ZERO,
    };
    let run_once = || {
        let simulator = Simulator::new(&config, settings.batch_max_events, Utc::now());
        let sim_stats = simulator.stats();
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NullSink)];
        let stats = Arc::new(Stats::default());
        let pipeline = Pipeline::new(
            Box::new(simulator),
            sinks,
            settings.clone(),
            Arc::clone(&stats),
            Health::new(),
        );
        runtime
            .block_on(pipeline.run(CancellationToken::new()))
            .unwrap();
        assert_eq!(
            Stats::get(&stats.events),
            SimulatorStats::get(&sim_stats.events)
        );
        Stats::get(&stats.events)
    };
    let events = run_once();

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("simulator_to_null_sink", |b| b.iter(run_once));
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
