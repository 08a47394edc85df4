//! The whole embedded pipeline: simulator source -> decode -> null sink, acknowledgements and
//! commits included; and the same with the aggregate stage between the decoder and the sink
//! (checkpoints and results to a scratch directory). Target: at least 300,000 events/s on this
//! 2-core machine.

use std::sync::Arc;

use chrono::Utc;
use classpulse::health::Health;
use classpulse::pipeline::Pipeline;
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
    let settings = support::settings();
    let run_once = |aggregate: bool| {
        // A directory per run: a checkpoint of an earlier run would have the stage skip what
        // that run counted.
        let scratch = tempfile::tempdir().unwrap();
        let simulator = Simulator::new(&config, settings.batch_max_events, Utc::now());
        let sim_stats = simulator.stats();
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(NullSink)];
        let stats = Arc::new(Stats::default());
        let mut pipeline = Pipeline::new(
            Box::new(simulator),
            sinks,
            settings.clone(),
            Arc::clone(&stats),
            Health::new(),
        );
        if aggregate {
            pipeline = pipeline.with_aggregates(support::aggregate_stage(
                scratch.path(),
                "simulator",
                &stats,
            ));
        }
        runtime
            .block_on(pipeline.run(CancellationToken::new()))
            .unwrap();
        assert_eq!(
            Stats::get(&stats.events),
            SimulatorStats::get(&sim_stats.events)
        );
        Stats::get(&stats.events)
    };
    let events = run_once(false);

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("simulator_to_null_sink", |b| b.iter(|| run_once(false)));
    group.bench_function("simulator_to_aggregates_to_null_sink", |b| {
        b.iter(|| run_once(true))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
