//! The Kafka source against the local broker (started by `scripts/backends up`; skipped when
//! it is not running), on a topic pre-filled with at least 5 million events, 5 to a message.
//! Four rows read the same topic:
//! (a) a bare rdkafka consumer that only counts messages,
//! (b) the same consumer with serde_json validating every message and building nothing,
//! (c) the pipeline: Kafka source -> decode -> aggregate stage -> null sink,
//! (d) the same with the Parquet lake and its dead letters in a local directory.
//! Criterion times each from the first message to the last (joining the group takes seconds
//! on tansu); at the end the benchmark prints each row's CPU-seconds per million events (the
//! whole process, user + system) beside the others, so that what classpulse adds over the
//! floors (a) and (b) is read from one run. Target: at least 150,000 events/s for (c).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use classpulse::config::KafkaConfig;
use classpulse::decode::RawMessage;
use classpulse::health::Health;
use classpulse::source::kafka::KafkaSource;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

mod support;

const BROKER: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 3;

/// Events per message, as the load test's producers send them.
const EVENTS_PER_MESSAGE: usize = 5;

fn kafka(c: &mut Criterion) {
    if std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(1))
        .is_err()
    {
        eprintln!("kafka benchmark skipped: no broker on {BROKER} (scripts/backends up)");
        return;
    }
    // `cargo bench` reads a topic of over 5 million events (200 studios, 90 minutes); the smoke
    // run of `cargo test --benches` a small one.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let (studios, minutes) = if measuring { (200, 90) } else { (10, 2) };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let messages = regroup(
        &support::messages(&support::simulation(studios, minutes)),
        EVENTS_PER_MESSAGE,
    );
    let events = support::decoded(&messages).len() as u64;
    eprintln!(
        "kafka benchmark: {events} events in {} messages ({:.2} per message)",
        messages.len(),
        events as f64 / messages.len() as f64
    );
    let topic = format!(
        "bench-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let started = Instant::now();
    runtime.block_on(produce(&topic, &messages));
    eprintln!(
        "kafka benchmark: topic {topic} produced in {:?}",
        started.elapsed()
    );

    let mut cpu = support::CpuTable::default();
    let mut group = c.benchmark_group("kafka");
    group.throughput(Throughput::Elements(events));
    // Each run reads the whole topic (seconds): ten runs of one read each.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (row, check) in [
        ("bare_consumer_counting_messages", Check::Nothing),
        ("bare_consumer_validating_json", Check::Json),
    ] {
        group.bench_function(row, |b| {
            b.iter_custom(|iterations| {
                let mut took = Duration::ZERO;
                for _ in 0..iterations {
                    let run = bare_consumer(&topic, messages.len(), check);
                    cpu.record(row, run.cpu_seconds, events);
                    took += run.wall;
                }
                took
            })
        });
    }
    for (row, sinks) in [
        ("source_decode_aggregate_null_sink", support::Sinks::Null),
        ("source_decode_aggregate_lake", support::Sinks::Lake),
    ] {
        group.bench_function(row, |b| {
            b.iter_custom(|iterations| {
                let mut took = Duration::ZERO;
                for _ in 0..iterations {
                    let run = runtime.block_on(pipeline(&topic, events, sinks));
                    cpu.record(row, run.cpu_seconds, events);
                    took += run.wall;
                }
                took
            })
        });
    }
    group.finish();
    cpu.print(
        &format!("kafka benchmark, {events} events"),
        "bare_consumer_counting_messages",
    );
    runtime.block_on(delete(&topic));
}

/// What the bare consumer does with each message.
#[derive(Clone, Copy)]
enum Check {
    /// Counts it.
    Nothing,
    /// Validates it as JSON with serde_json, building nothing (the decoder's floor).
    Json,
}

/// Reads every message of `topic` from the beginning; measures from the first to the last.
fn bare_consumer(topic: &str, messages: usize, check: Check) -> support::Run {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .set("group.id", "classpulse-bench-bare")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let mut read = 0;
    let mut first = None;
    while read < messages {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            first.get_or_insert_with(|| (Instant::now(), support::cpu_seconds()));
            if let Check::Json = check {
                let parsed: serde::de::IgnoredAny =
                    serde_json::from_slice(message.payload().unwrap()).unwrap();
                std::hint::black_box(parsed);
            }
            read += 1;
        }
    }
    let (first_at, first_cpu) = first.expect("the topic holds messages");
    let run = support::Run {
        wall: first_at.elapsed(),
        cpu_seconds: support::cpu_seconds() - first_cpu,
    };
    std::thread::spawn(move || drop(consumer));
    run
}

/// Runs the pipeline on `topic` with a fresh group until it has decoded `events`, into `sinks`.
async fn pipeline(topic: &str, events: u64, sinks: support::Sinks) -> support::Run {
    let kafka = KafkaConfig {
        brokers: BROKER.into(),
        topics: vec![topic.into()],
        group_id: format!(
            "classpulse-bench-{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        ),
        properties: vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "500".into()),
        ],
        dead_letter_topic: None,
        aws_iam: false,
    };
    let source = KafkaSource::new(&kafka, 500, Health::new(), None).unwrap();
    support::run_source(Box::new(source), events, sinks).await
}

/// The events of `messages`, regrouped per key (class) into JSON arrays of `per_message`
/// events, in order; a class's last message holds what is left.
fn regroup(messages: &[RawMessage], per_message: usize) -> Vec<RawMessage> {
    let mut regrouped = Vec::new();
    let mut pending: HashMap<Bytes, Vec<String>> = HashMap::new();
    fn emit(key: &Bytes, events: &[String], out: &mut Vec<RawMessage>) {
        out.push(RawMessage {
            offset: out.len() as u64,
            timestamp_ms: None,
            key: Some(key.clone()),
            payload: Some(Bytes::from(format!("[{}]", events.join(",")))),
        })
    }
    for message in messages {
        let key = message
            .key
            .clone()
            .expect("the simulator keys its messages");
        let events = pending.entry(key.clone()).or_default();
        events.extend(support::single_events(std::slice::from_ref(message)));
        while events.len() >= per_message {
            let full: Vec<String> = events.drain(..per_message).collect();
            emit(&key, &full, &mut regrouped);
        }
    }
    let mut rest: Vec<_> = pending.into_iter().filter(|(_, e)| !e.is_empty()).collect();
    rest.sort();
    for (key, events) in rest {
        emit(&key, &events, &mut regrouped);
    }
    regrouped
}

/// Creates `topic` and produces `messages` round robin over its partitions.
async fn produce(topic: &str, messages: &[RawMessage]) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .create()
        .unwrap();
    let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
    for created in admin
        .create_topics(&[new_topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        created.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .set("linger.ms", "20")
        .create()
        .unwrap();
    // In slices, so that a million messages never wait in memory as futures all at once.
    for (slice, chunk) in messages.chunks(50_000).enumerate() {
        let sends = chunk.iter().enumerate().map(|(i, message)| {
            let record = FutureRecord::to(topic)
                .payload(message.payload.as_deref().unwrap())
                .key(message.key.as_deref().unwrap())
                .partition((slice * 50_000 + i) as i32 % PARTITIONS);
            producer.send(record, Duration::from_secs(60))
        });
        for delivered in futures::future::join_all(sends).await {
            delivered.unwrap();
        }
    }
}

/// Deletes `topic` (the measured one holds over a gigabyte).
async fn delete(topic: &str) {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", BROKER)
        .create()
        .unwrap();
    if let Err(error) = admin.delete_topics(&[topic], &AdminOptions::new()).await {
        eprintln!("kafka benchmark: topic {topic} not deleted: {error}");
    }
}

criterion_group!(benches, kafka);
criterion_main!(benches);
