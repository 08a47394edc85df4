//! The DynamoDB sink against DynamoDB Local (started by `scripts/backends up`; skipped when it
//! is not running).
//!
//! - **Write units per 1,000 events** of the events table for the simulator's mixed workload
//!   (20 studios, an hour; target at most 50, one item per event would be 1,000), printed
//!   once: the count of items and their units by AWS's sizing rules.
//! - **Items/s** written with 1, 4 and 16 calls in flight: the sink's writer (`put_all`:
//!   merging, AIMD, UnprocessedItems retries) against a plain client loop doing the same
//!   BatchWriteItem calls with nothing around them, side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use classpulse::ack::AckTracker;
use classpulse::decode::decode_batch;
use classpulse::decode::Decoder;
use classpulse::health::Health;
use classpulse::sink::dynamodb::events::{EventsTableSink, PackSettings, MAX_PAYLOAD_BYTES, NAME};
use classpulse::sink::dynamodb::tables::create_table;
use classpulse::sink::dynamodb::{Item, TableWriter};
use classpulse::sink::Sink;
use classpulse::source::simulator::Simulator;
use classpulse::source::Source;
use classpulse::store::ObjectWriter;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures::StreamExt;
use rand::Rng;

mod support;

const ENDPOINT: &str = "http://127.0.0.1:8000";
/// Items per measured round: 20 full BatchWriteItem calls.
const ROUND: usize = 500;

async fn client() -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    classpulse::aws::dynamodb(
        &sdk,
        Some(&ENDPOINT.parse().unwrap()),
        classpulse::aws::Retries::Caller,
    )
}

/// Packs a simulated hour into the events table; prints the write units per 1,000 events.
async fn write_units(client: &aws_sdk_dynamodb::Client, table: &str, studios: u32, minutes: u64) {
    let scratch = tempfile::tempdir().unwrap();
    let lake = classpulse::config::Config::from_vars(
        &[(
            "CLASSPULSE_LAKE_URL".to_owned(),
            format!("file://{}", scratch.path().display()),
        )]
        .into(),
    )
    .unwrap()
    .lake;
    let dead_letters =
        ObjectWriter::open(&lake, "simulator", Health::new(), Arc::default()).unwrap();
    let writer = TableWriter::new(client.clone(), table, NAME, 16, Health::new());
    let mut sink = EventsTableSink::new(
        writer.clone(),
        PackSettings {
            window_ms: 180_000,
            delay_ms: 10_000,
            max_clock_skew_ms: 60_000,
            ttl_days: 400,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
        },
        dead_letters,
    );
    let mut config = support::simulation(studios, minutes);
    // The load test's imperfections: retries and stragglers.
    config.duplicate_rate = 0.01;
    config.out_of_order_rate = 0.02;
    let mut simulator = Simulator::new(&config, 500, chrono::Utc::now());
    let acks = AckTracker::new();
    let mut decoder = Decoder::default();
    let mut events = 0;
    let started = Instant::now();
    while let Some(raw) = simulator.next_batch().await.unwrap() {
        let now_ms = chrono::Utc::now().timestamp_millis();
        for batch in decode_batch(&mut decoder, raw, &support::limits(), 500, now_ms, &acks) {
            events += batch.events.len();
            sink.write(Arc::new(batch)).await.unwrap();
        }
    }
    sink.flush_all().await.unwrap();
    let totals = writer.totals();
    println!(
        "events table, {studios} studios x {minutes} min: {events} events in {} items, {} write units: {:.1} per 1,000 events (one item per event: 1,000); {:.1} s",
        totals.items(),
        totals.sized_units(),
        totals.sized_units() as f64 * 1000.0 / events as f64,
        started.elapsed().as_secs_f64(),
    );
}

/// `ROUND` items of about 3 KB (a member's 3 minutes), under fresh keys.
fn items(round: u64) -> Vec<Item> {
    let mut rng = rand::rng();
    (0..ROUND)
        .map(|i| {
            let payload: Vec<u8> = (0..3_000).map(|_| rng.random()).collect();
            Item::from([
                (
                    "pk".to_owned(),
                    AttributeValue::S(format!("m{:05}", i % 97)),
                ),
                (
                    "sk".to_owned(),
                    AttributeValue::S(format!("20261125T170000Z#s#c#0#{round}#{i}")),
                ),
                ("ev".to_owned(), AttributeValue::B(Blob::new(payload))),
            ])
        })
        .collect()
}

/// The same writes with nothing around them: BatchWriteItem calls (asking for the consumed
/// capacity, as the sink does), `inflight` at once.
async fn plain_loop(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<Item>,
    inflight: usize,
) {
    let calls: Vec<Vec<WriteRequest>> = items
        .chunks(25)
        .map(|chunk| {
            chunk
                .iter()
                .map(|item| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item.clone()))
                                .build()
                                .unwrap(),
                        )
                        .build()
                })
                .collect()
        })
        .collect();
    futures::stream::iter(calls)
        .map(|requests| {
            client
                .batch_write_item()
                .request_items(table, requests)
                .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
                .send()
        })
        .buffer_unordered(inflight)
        .for_each(|result| async move {
            result.unwrap();
        })
        .await;
}

/// Time `write` takes for `iterations` rounds of fresh items (their making not counted).
fn timed_rounds(iterations: u64, round: &mut u64, mut write: impl FnMut(Vec<Item>)) -> Duration {
    let mut took = Duration::ZERO;
    for _ in 0..iterations {
        *round += 1;
        let items = items(*round);
        let started = Instant::now();
        write(items);
        took += started.elapsed();
    }
    took
}

fn dynamodb(c: &mut Criterion) {
    let addr = ENDPOINT.trim_start_matches("http://").parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        eprintln!(
            "dynamodb benchmark skipped: no DynamoDB Local on {ENDPOINT} (scripts/backends up)"
        );
        return;
    }
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(client());
    let table = format!(
        "bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    runtime.block_on(create_table(&client, &table)).unwrap();
    let (studios, minutes) = if measuring { (20, 60) } else { (2, 5) };
    runtime.block_on(write_units(&client, &table, studios, minutes));

    let mut group = c.benchmark_group("dynamodb_items");
    group.throughput(Throughput::Elements(ROUND as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let mut round = 0u64;
    for inflight in [1usize, 4, 16] {
        group.bench_function(BenchmarkId::new("sink_writer", inflight), |b| {
            let writer = TableWriter::new(
                runtime.block_on(self::client()),
                &table,
                NAME,
                inflight,
                Health::new(),
            );
            b.iter_custom(|iterations| {
                timed_rounds(iterations, &mut round, |items| {
                    assert!(runtime.block_on(writer.put_all(items)).is_empty());
                })
            });
        });
        group.bench_function(BenchmarkId::new("plain_client_loop", inflight), |b| {
            b.iter_custom(|iterations| {
                timed_rounds(iterations, &mut round, |items| {
                    runtime.block_on(plain_loop(&client, &table, items, inflight));
                })
            });
        });
    }
    group.finish();
    runtime
        .block_on(client.delete_table().table_name(&table).send())
        .unwrap();
}

criterion_group!(benches, dynamodb);
criterion_main!(benches);
