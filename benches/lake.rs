//! Parquet encoding of lake objects. Target: at least 1,000,000 events/s on one core, and
//! under 40 bytes per heart-rate event in the lake.

use classpulse::event::EventType;
use classpulse::sink::lake::{Ingest, ParquetEncoder};
use classpulse::sink::object::Encoder;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod support;

fn encode(c: &mut Criterion) {
    let events = support::decoded(&support::messages(&support::simulation(20, 15)));
    let ingest = Ingest {
        source: "kafka",
        stream: "performance-events",
        partition: 3,
        received_at_ms: 1_764_090_000_000,
    };
    let encode_all = |events: &[&classpulse::event::PerformanceEvent]| {
        let mut encoder = ParquetEncoder::new();
        for event in events {
            encoder.append(event, &ingest).unwrap();
        }
        encoder.finish(&[]).unwrap()
    };
    let all: Vec<_> = events.iter().collect();
    let heart_rate: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == EventType::HeartRate)
        .collect();
    let bytes = encode_all(&all).len();
    let heart_rate_bytes = encode_all(&heart_rate).len();
    eprintln!(
        "lake size: {:.1} bytes/event over {} mixed events; {:.1} bytes/event over {} heart-rate events",
        bytes as f64 / all.len() as f64,
        all.len(),
        heart_rate_bytes as f64 / heart_rate.len() as f64,
        heart_rate.len()
    );

    let mut group = c.benchmark_group("lake");
    group.throughput(Throughput::Elements(all.len() as u64));
    group.sample_size(20);
    group.bench_function("parquet_encode", |b| b.iter(|| encode_all(&all)));
    group.finish();
}

criterion_group!(benches, encode);
criterion_main!(benches);
