//! Decode + validate throughput: single-event messages and 500-event batches, each beside
//! serde_json validating the same messages and building nothing (the floor).
//! Targets: at least 1,000,000 events/s on one core, and at least a third of the floor's rate.

use bytes::Bytes;
use chrono::Utc;
use classpulse::decode::{Decoder, RawMessage};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

mod support;

fn decode(c: &mut Criterion) {
    let messages = support::messages(&support::simulation(10, 10));
    let singles: Vec<RawMessage> = support::single_events(&messages)
        .into_iter()
        .take(5000)
        .enumerate()
        .map(|(offset, json)| RawMessage {
            offset: offset as u64,
            timestamp_ms: None,
            key: None,
            payload: Some(Bytes::from(json)),
        })
        .collect();
    let batch_json = format!(
        "[{}]",
        support::single_events(&messages)
            .into_iter()
            .take(500)
            .collect::<Vec<_>>()
            .join(",")
    );
    let batch = RawMessage {
        offset: 0,
        timestamp_ms: None,
        key: None,
        payload: Some(Bytes::from(batch_json)),
    };
    let limits = support::limits();
    let now_ms = Utc::now().timestamp_millis();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(singles.len() as u64));
    // One decoder for all messages, as the pipeline's decode stage has: its interned class
    // ids outlive each message.
    group.bench_function("single_event_messages", |b| {
        let mut decoder = Decoder::default();
        b.iter_batched_ref(
            || (Vec::with_capacity(singles.len()), Vec::new()),
            |(events, rejected)| {
                for message in &singles {
                    decoder.decode(message, &limits, now_ms, events, rejected);
                }
                assert_eq!(events.len(), singles.len());
            },
            BatchSize::SmallInput,
        )
    });
    // Floor: serde_json only checking that each message is JSON, building nothing.
    group.bench_function("baseline_serde_json_validate_only", |b| {
        b.iter(|| {
            for message in &singles {
                let parsed: serde::de::IgnoredAny =
                    serde_json::from_slice(message.payload.as_ref().unwrap()).unwrap();
                std::hint::black_box(parsed);
            }
        })
    });
    group.throughput(Throughput::Elements(500));
    group.bench_function("batch_of_500", |b| {
        let mut decoder = Decoder::default();
        b.iter_batched_ref(
            || (Vec::with_capacity(500), Vec::new()),
            |(events, rejected)| {
                decoder.decode(&batch, &limits, now_ms, events, rejected);
                assert_eq!(events.len(), 500);
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("baseline_serde_json_validate_only_batch_of_500", |b| {
        b.iter(|| {
            let parsed: serde::de::IgnoredAny =
                serde_json::from_slice(batch.payload.as_ref().unwrap()).unwrap();
            std::hint::black_box(parsed);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
