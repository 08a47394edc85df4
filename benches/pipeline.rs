//! The whole embedded pipeline: simulator source -> decode -> null sink, acknowledgements and
//! commits included; and the same with the aggregate stage between the decoder and the sink
//! (checkpoints and results to a scratch directory). Target: at least 300,000 events/s on this
//! 2-core machine.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use classpulse::aggregate::stage::AggregateStage;
use classpulse::aggregate::Rules;
use classpulse::config::Config;
use classpulse::health::Health;
use classpulse::pipeline::{Pipeline, Settings};
use classpulse::sink::object::ObjectWriter;
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
    let scratch = tempfile::tempdir().unwrap();
    let run_once = |aggregate: bool| {
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
            let lake = Config::from_vars(
                &[(
                    "CLASSPULSE_LAKE_URL".to_owned(),
                    format!("file://{}", scratch.path().display()),
                )]
                .into_iter()
                .collect(),
            )
            .unwrap()
            .lake;
            let writer =
                ObjectWriter::open(&lake, "simulator", Health::new(), Arc::clone(&stats)).unwrap();
            pipeline = pipeline.with_aggregates(AggregateStage::new(
                Rules::default(),
                Duration::from_secs(30),
                None,
                writer,
                Health::new(),
                Arc::clone(&stats),
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
