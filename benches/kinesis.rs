//! The Kinesis source against kinesalite and DynamoDB Local (started by `scripts/backends up`;
//! skipped when they are not running): the pipeline (Kinesis source with its leases -> decode
//! -> aggregate stage -> null sink) against a bare GetRecords loop that only counts records,
//! reading the same 4-shard stream of records holding 100 events each. Targets: at least
//! 100,000 events/s, and at least 80% of the bare loop. Timed from the first event to the last,
//! so creating the lease table and taking the leases are not counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use bytes::Bytes;
use classpulse::config::KinesisConfig;
use classpulse::config::StartPosition;
use classpulse::decode::RawMessage;
use classpulse::health::Health;
use classpulse::source::kinesis::KinesisSource;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

mod support;

const KINESIS: &str = "http://127.0.0.1:4567";
const DYNAMODB: &str = "http://127.0.0.1:8000";
const SHARDS: i32 = 4;
const EVENTS_PER_RECORD: usize = 100;

fn reachable(url: &str) -> bool {
    let addr = url.trim_start_matches("http://").parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

async fn clients() -> (aws_sdk_kinesis::Client, aws_sdk_dynamodb::Client) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    (
        classpulse::aws::kinesis(&sdk, Some(&KINESIS.parse().unwrap())),
        classpulse::aws::dynamodb(
            &sdk,
            Some(&DYNAMODB.parse().unwrap()),
            classpulse::aws::Retries::Sdk,
        ),
    )
}

/// The simulator's events regrouped as producers batch them: JSON arrays of 100 events of one
/// class, keyed by the class.
fn records(messages: &[RawMessage]) -> Vec<RawMessage> {
    let mut open: BTreeMap<Bytes, Vec<String>> = BTreeMap::new();
    let mut records = Vec::new();
    let mut flush = |key: &Bytes, events: &mut Vec<String>| {
        records.push(RawMessage {
            offset: records.len() as u64,
            timestamp_ms: None,
            key: Some(key.clone()),
            payload: Some(Bytes::from(format!("[{}]", events.join(",")))),
        });
        events.clear();
    };
    for message in messages {
        let key = message.key.clone().unwrap();
        let events = open.entry(key.clone()).or_default();
        events.extend(support::single_events(std::slice::from_ref(message)));
        if events.len() >= EVENTS_PER_RECORD {
            flush(&key, events);
        }
    }
    for (key, mut events) in open {
        if !events.is_empty() {
            flush(&key, &mut events);
        }
    }
    records
}

async fn create_stream(kinesis: &aws_sdk_kinesis::Client, records: &[RawMessage]) -> String {
    let stream = format!(
        "bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(SHARDS)
        .send()
        .await
        .unwrap();
    loop {
        let summary = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        if summary
            .stream_description_summary()
            .unwrap()
            .stream_status()
            == &StreamStatus::Active
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for chunk in records.chunks(50) {
        let mut pending: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .map(|record| {
                PutRecordsRequestEntry::builder()
                    .partition_key(String::from_utf8(record.key.clone().unwrap().to_vec()).unwrap())
                    .data(Blob::new(record.payload.clone().unwrap().to_vec()))
                    .build()
                    .unwrap()
            })
            .collect();
        while !pending.is_empty() {
            let output = kinesis
                .put_records()
                .stream_name(&stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .unwrap();
            let failed = output
                .records()
                .iter()
                .position(|r| r.error_code().is_some());
            pending = failed.map_or_else(Vec::new, |index| pending[index..].to_vec());
        }
    }
    stream
}

fn kinesis(c: &mut Criterion) {
    if !reachable(KINESIS) || !reachable(DYNAMODB) {
        eprintln!("kinesis benchmark skipped: no kinesalite on {KINESIS} or DynamoDB Local on {DYNAMODB} (scripts/backends up)");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let records = records(&support::messages(&support::simulation(40, 10)));
    let events = support::decoded(&records).len() as u64;
    let (client, dynamodb) = runtime.block_on(clients());
    let stream = runtime.block_on(create_stream(&client, &records));

    let mut group = c.benchmark_group("kinesis");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("bare_get_records_loop_counting_records", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| runtime.block_on(bare_loop(&client, &stream, records.len())))
                .sum()
        })
    });
    group.bench_function("source_decode_aggregate_null_sink", |b| {
        b.iter_custom(|iterations| {
            (0..iterations)
                .map(|_| runtime.block_on(pipeline(&client, &dynamodb, &stream, events)))
                .sum()
        })
    });
    group.finish();
    runtime.block_on(async {
        let _ = client.delete_stream().stream_name(&stream).send().await;
    });
}

/// Reads every shard from its start, all shards at once, until `records` records are read;
/// returns the time from the first record received to the last (as the pipeline is timed).
async fn bare_loop(kinesis: &aws_sdk_kinesis::Client, stream: &str, records: usize) -> Duration {
    let first = std::sync::OnceLock::new();
    let first = &first;
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let reads = shards.shards().iter().map(|shard| async move {
        let mut iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_owned);
        let mut read = 0;
        while let Some(current) = iterator {
            let output = kinesis
                .get_records()
                .shard_iterator(current)
                .limit(10_000)
                .send()
                .await
                .unwrap();
            read += output.records().len();
            if !output.records().is_empty() {
                first.get_or_init(Instant::now);
            }
            if output.records().is_empty() {
                break;
            }
            iterator = output.next_shard_iterator().map(str::to_owned);
        }
        read
    });
    let read: usize = futures::future::join_all(reads).await.into_iter().sum();
    assert_eq!(read, records);
    first.get().map_or(Duration::ZERO, Instant::elapsed)
}

/// Runs the pipeline on `stream` as a new application (so from the start) until it has decoded
/// `events`; returns the time from the first event decoded to the last.
async fn pipeline(
    kinesis: &aws_sdk_kinesis::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    stream: &str,
    events: u64,
) -> Duration {
    let app = format!(
        "bench-{}",
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
    );
    let config = KinesisConfig {
        stream: stream.to_owned(),
        app_name: app.clone(),
        lease_table: app.clone(),
        start: StartPosition::TrimHorizon,
        lease_duration: Duration::from_secs(10),
        shard_sync_interval: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
        max_records: 10_000,
        efo_consumer: None,
    };
    let source = KinesisSource::start(&config, kinesis.clone(), dynamodb.clone(), Health::new())
        .await
        .unwrap();
    let took = support::time_source_to_null_sink(Box::new(source), events).await;
    let _ = dynamodb.delete_table().table_name(&app).send().await;
    took
}

criterion_group!(benches, kinesis);
criterion_main!(benches);
