//! Aggregation: judging and counting decoded events into class state, on one core.
//! Target: at least 2,000,000 events/s. With `cargo bench` it also reports the memory held by
//! 800 open classes of 12 members half-way through an hour (target: RSS under 256 MB).

use std::sync::Arc;

use classpulse::aggregate::partition::PartitionState;
use classpulse::aggregate::Rules;
use classpulse::event::{EventType, Metrics, PerformanceEvent, RawJson, Verdict};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

mod support;

/// Applies `events` in batches of 500; returns them too, so that dropping them is not timed.
fn apply_all(
    mut events: Vec<PerformanceEvent>,
    rules: &Rules,
) -> (PartitionState, Vec<PerformanceEvent>) {
    let mut state = PartitionState::new("bench/0".into());
    for (n, batch) in events.chunks_mut(500).enumerate() {
        let last = batch.last().unwrap().offset;
        state.apply(batch, last, rules, 0);
        if n % 100 == 99 {
            state.sweep(rules, None);
        }
    }
    (state, events)
}

fn aggregate(c: &mut Criterion) {
    let rules = Rules::default();
    let mut events = support::decoded(&support::messages(&support::simulation(20, 10)));
    for (offset, event) in events.iter_mut().enumerate() {
        event.offset = offset as u64;
    }
    let (state, _) = apply_all(events.clone(), &rules);
    assert_eq!(state.classes.len(), 20);

    let mut group = c.benchmark_group("aggregate");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(10);
    group.bench_function("apply_simulated_events", |b| {
        b.iter_batched(
            || events.clone(),
            |events| apply_all(events, &rules),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    if std::env::args().any(|arg| arg == "--bench") {
        report_memory(&rules);
    }
}

/// 800 classes of 12 members, 30 minutes in: a strap and a machine reading every 4 s each.
fn report_memory(rules: &Rules) {
    const CLASSES: usize = 800;
    const MEMBERS: usize = 12;
    let rss_before = classpulse::metrics::resident_memory_bytes().unwrap_or(0);
    let data = RawJson::from_string("{\"bpm\":150}".into()).unwrap();
    let start_ms = 1_764_090_000_000i64;
    let classes: Vec<(Arc<str>, Arc<str>)> = (0..CLASSES)
        .map(|i| {
            (
                Arc::from(format!("studio-{i:04}")),
                Arc::from(format!("20261125T1700-class-{i}")),
            )
        })
        .collect();
    let mut state = PartitionState::new("bench/0".into());
    let mut offset = 0u64;
    for step in 0..(30 * 60 / 4) {
        let time_ms = start_ms + step * 4_000;
        let mut batch = Vec::with_capacity(CLASSES * MEMBERS * 2);
        for (c, (studio, class)) in classes.iter().enumerate() {
            for m in 0..MEMBERS {
                let member: bytestring::ByteString = format!("m{c:04}{m:03}").into();
                for (kind, event_type, metrics) in [
                    (
                        "hr",
                        EventType::HeartRate,
                        Metrics {
                            bpm: Some(120.0 + (step % 50) as f64),
                            ..Metrics::default()
                        },
                    ),
                    (
                        "bk",
                        EventType::Bike,
                        Metrics {
                            cadence_rpm: Some(90.0),
                            watts: Some(200.0),
                            distance_m: Some(step as f64 * 30.0),
                            calories: Some(step as f64),
                            ..Metrics::default()
                        },
                    ),
                ] {
                    batch.push(PerformanceEvent {
                        event_id: format!("{c}-{m}-{kind}-{step}").into(),
                        event_type,
                        event_time_ms: time_ms,
                        studio_id: Arc::clone(studio),
                        class_id: Arc::clone(class),
                        member_id: member.clone(),
                        device_id: None,
                        schema_version: 1,
                        metrics,
                        event_data: data.clone(),
                        offset,
                        arrival_ms: time_ms,
                        verdict: Verdict::Counted,
                    });
                }
            }
            offset += 1;
        }
        state.apply(&mut batch, offset - 1, rules, 0);
        if step % 15 == 0 {
            state.sweep(rules, None);
        }
    }
    state.sweep(rules, None);
    let rss_after = classpulse::metrics::resident_memory_bytes().unwrap_or(0);
    let held = state.approx_bytes();
    let encode_started = std::time::Instant::now();
    let checkpoint = state.encode().len();
    let encode_time = encode_started.elapsed();
    println!(
        "memory: {} open classes of {MEMBERS} members after 30 min: state about {:.1} MB ({:.0} KB per class), \
         checkpoint {:.1} MB encoded in {:.2} s, process RSS {:.0} MB (grew {:.0} MB)",
        state.classes.len(),
        held as f64 / 1e6,
        held as f64 / CLASSES as f64 / 1e3,
        checkpoint as f64 / 1e6,
        encode_time.as_secs_f64(),
        rss_after as f64 / 1e6,
        rss_after.saturating_sub(rss_before) as f64 / 1e6,
    );
}

criterion_group!(benches, aggregate);
criterion_main!(benches);
