//! One smoke test per local server, through the clients classpulse uses: rdkafka, the AWS SDK
//! (DynamoDB, Kinesis) and the lake's object writer on S3. Needs `scripts/backends up`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use classpulse::ack::PartitionId;
use classpulse::health::Health;
use classpulse::store::ObjectWriter;
use common::backends::*;
use common::*;
use futures::TryStreamExt;
use object_store::ObjectStore;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produce_and_consume_through_a_consumer_group() {
    require(KAFKA);
    let (admin, topic) = create_topic(2).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut sent = BTreeSet::new();
    for i in 0..20 {
        let key = format!("studio-{:02}:class-{}", i % 4, i % 3);
        let payload = format!("{{\"n\":{i}}}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        sent.insert(payload);
    }

    let group = unique_name("group");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut received = BTreeSet::new();
    let mut partitions = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.len() < sent.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .expect("all messages within 60 s")
            .unwrap();
        partitions.insert(message.partition());
        received.insert(String::from_utf8(message.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(received, sent);
    assert_eq!(partitions.len(), 2, "keys spread over both partitions");
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    // committed() blocks on a broker round trip: keep it off the async workers.
    let committed =
        tokio::task::block_in_place(|| consumer.committed(Duration::from_secs(10))).unwrap();

    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| {
            if let Offset::Offset(o) = e.offset() {
                o
            } else {
                0
            }
        })
        .sum();
    assert_eq!(
        total, 20,
        "committed offsets cover every message: {committed:?}"
    );
    // Closing a group consumer polls until it has left the group, and against tansu 0.6 that
    // never completes (rust-rdkafka's close_queue loop; see fede1024/rust-rdkafka#509 for the
    // same symptom elsewhere). Close it on its own thread with a bounded wait; the Kafka
    // source must bound its close the same way or a drain could hang.
    let (closed_sender, closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(consumer);
        let _ = closed_sender.send(());
    });
    if closed.recv_timeout(Duration::from_secs(5)).is_err() {
        eprintln!("note: the consumer did not finish closing within 5 s");
    }
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn kinesis_put_and_get_records_on_two_shards() {
    require(KINESIS);
    let sdk = sdk_config().await;
    let kinesis = classpulse::aws::kinesis(&sdk, Some(&KINESIS.parse().unwrap()));
    let stream = unique_name("stream");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    await_stream_active(&kinesis, &stream).await;
    let shards = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()
        .to_vec();
    assert_eq!(shards.len(), 2);

    // Five records aimed at each shard by its starting hash key.
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for shard in &shards {
        for i in 0..5 {
            let data = format!("{}-{i}", shard.shard_id());
            kinesis
                .put_record()
                .stream_name(&stream)
                .partition_key("studio:class")
                .explicit_hash_key(shard.hash_key_range().unwrap().starting_hash_key())
                .data(Blob::new(data.clone()))
                .send()
                .await
                .unwrap();
            expected
                .entry(shard.shard_id().to_owned())
                .or_default()
                .insert(data);
        }
    }
    for shard in &shards {
        let iterator = kinesis
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        let records = kinesis
            .get_records()
            .shard_iterator(iterator.shard_iterator().unwrap())
            .send()
            .await
            .unwrap();
        let got: BTreeSet<String> = records
            .records()
            .iter()
            .map(|r| String::from_utf8(r.data().as_ref().to_vec()).unwrap())
            .collect();
        assert_eq!(
            got,
            expected[shard.shard_id()],
            "shard {}",
            shard.shard_id()
        );
    }
    delete_stream(&kinesis, &stream).await;
}

#[tokio::test]
async fn dynamodb_batch_write_and_read_back() {
    require(DYNAMODB);
    let sdk = sdk_config().await;
    let dynamodb = classpulse::aws::dynamodb(
        &sdk,
        Some(&DYNAMODB.parse().unwrap()),
        classpulse::aws::Retries::Sdk,
    );
    let table = unique_name("table");
    let key = |name: &str, key_type| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .unwrap()
    };
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    dynamodb
        .create_table()
        .table_name(&table)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();

    let writes: Vec<WriteRequest> = (0..25)
        .map(|minute| {
            let item = HashMap::from([
                (
                    "pk".to_owned(),
                    AttributeValue::S("studio-0001#m00010042".into()),
                ),
                (
                    "sk".to_owned(),
                    AttributeValue::S(format!("2026-11-25T17:{minute:02}")),
                ),
                (
                    "samples".to_owned(),
                    AttributeValue::N((minute * 15).to_string()),
                ),
            ]);
            WriteRequest::builder()
                .put_request(PutRequest::builder().set_item(Some(item)).build().unwrap())
                .build()
        })
        .collect();
    let written = dynamodb
        .batch_write_item()
        .request_items(&table, writes)
        .send()
        .await
        .unwrap();
    assert!(written
        .unprocessed_items()
        .is_none_or(|items| items.is_empty()));

    let queried = dynamodb
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":pk", AttributeValue::S("studio-0001#m00010042".into()))
        .expression_attribute_values(":from", AttributeValue::S("2026-11-25T17:10".into()))
        .expression_attribute_values(":to", AttributeValue::S("2026-11-25T17:19".into()))
        .send()
        .await
        .unwrap();
    let samples: Vec<&str> = queried
        .items()
        .iter()
        .map(|item| item["samples"].as_n().unwrap().as_str())
        .collect();
    assert_eq!(
        samples,
        (10..20)
            .map(|m| (m * 15).to_string())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    dynamodb
        .delete_table()
        .table_name(&table)
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn s3_put_and_list_through_the_lake_writer() {
    require(S3);
    let s3 = s3_client().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    // The lake's writer reads credentials from the standard AWS variables, as in production.
    let lake = s3_lake(&bucket, "lake/v1");
    let writer = with_test_credentials(|| {
        ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap()
    });
    let partition = PartitionId::new("performance-events", 2);
    let key = writer.key("events", &partition, 491_177, 100, 199, "parquet");
    let metadata = [("record-count", "100".to_owned())];
    writer
        .put(
            "lake",
            &key,
            Bytes::from_static(b"not really parquet"),
            &metadata,
        )
        .await;

    let listed: Vec<_> = writer.store().list(None).try_collect().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].location, key);
    assert!(
        key.as_ref()
            .starts_with("lake/v1/events/dt=2026-01-12/hour=17/"),
        "{key}"
    );
    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(key.as_ref())
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.metadata().unwrap()["record-count"],
        "100",
        "user metadata travels with the object"
    );
    delete_bucket(&s3, &bucket).await;
}

#[tokio::test]
async fn run_writes_the_lake_to_s3() {
    require(S3);
    let s3 = s3_client().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let stdout = run_on_s3(&bucket, &[]).await;

    let rows = s3_lake_rows(&s3, &bucket, "raw/events/").await;
    assert!(rows > 0);
    assert_eq!(rows as u64, expected_lake_rows(&stdout));
    let dead = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("raw/dead-letters/")
        .send()
        .await
        .unwrap();
    assert!(
        dead.key_count().unwrap_or(0) > 0,
        "dead letters land beside the lake"
    );
    delete_bucket(&s3, &bucket).await;
}

#[tokio::test]
async fn run_compacts_each_hour_of_the_lake_on_s3_into_an_object_a_partition() {
    require(S3);
    let s3 = s3_client().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    // Ten minutes across 17:00: hour 16 is over, and compacted, while hour 17 is written.
    let stdout = run_on_s3(
        &bucket,
        &[
            ("CLASSPULSE_SIM_STUDIOS", "3"),
            ("CLASSPULSE_SIM_START", "2026-11-25T16:55:00Z"),
            ("CLASSPULSE_SIM_DURATION", "10m"),
            ("CLASSPULSE_LAKE_MAX_EVENTS", "300"),
            ("CLASSPULSE_LAKE_COMPACT_AFTER", "1s"),
        ],
    )
    .await;

    // Every event once, compacted or not.
    let rows = s3_lake_rows(&s3, &bucket, "raw/events/").await;
    assert_eq!(rows as u64, expected_lake_rows(&stdout));
    let keys = |prefix: &'static str| {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        async move {
            let listed = s3
                .list_objects_v2()
                .bucket(&bucket)
                .prefix(prefix)
                .send()
                .await
                .unwrap();
            listed
                .contents()
                .iter()
                .map(|o| o.key().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let partition_of = |key: &str| {
        key.rsplit('/')
            .next()
            .unwrap()
            .rsplitn(3, '-')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let over = keys("raw/events/dt=2026-11-25/hour=16/").await;
    let by_partition: BTreeSet<String> = over.iter().map(|k| partition_of(k)).collect();
    assert_eq!(
        by_partition.len(),
        over.len(),
        "one object a partition in the hour that is over: {over:?}"
    );
    let open = keys("raw/events/dt=2026-11-25/hour=17/").await;
    assert!(
        open.len() > over.len(),
        "the hour still written keeps its objects: {open:?}"
    );

    // The merged objects: a row group per class, classes in order, their inputs gone.
    for key in &over {
        let body = s3
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        let body = body.body.collect().await.unwrap().into_bytes();
        let reader = parquet::file::reader::SerializedFileReader::new(body).unwrap();
        use parquet::file::reader::FileReader;
        let metadata = reader.metadata();
        let footer = metadata.file_metadata().key_value_metadata().unwrap();
        assert!(
            footer
                .iter()
                .any(|kv| kv.key == "classpulse.compacted-from"),
            "{key} is compacted"
        );
        let count = footer
            .iter()
            .find(|kv| kv.key == "classpulse.record-count")
            .and_then(|kv| kv.value.clone());
        let rows = metadata.file_metadata().num_rows().to_string();
        assert_eq!(count, Some(rows), "{key}'s footer counts its rows");
        let column = |name: &str| {
            let schema = metadata.file_metadata().schema_descr();
            schema
                .columns()
                .iter()
                .position(|c| c.name() == name)
                .unwrap()
        };
        let (studio, class) = (column("studio_id"), column("class_id"));
        let classes: Vec<(Vec<u8>, Vec<u8>)> = metadata
            .row_groups()
            .iter()
            .map(|group| {
                let only = |column: usize| {
                    let stats = group.column(column).statistics().unwrap();
                    assert_eq!(
                        stats.min_bytes_opt(),
                        stats.max_bytes_opt(),
                        "one class a row group"
                    );
                    stats.min_bytes_opt().unwrap().to_vec()
                };
                (only(studio), only(class))
            })
            .collect();
        assert!(
            classes.windows(2).all(|pair| pair[0] < pair[1]),
            "each class once, in order"
        );
    }
    let markers = keys("raw/_compact/").await;
    assert!(
        markers.is_empty(),
        "no compaction left unfinished: {markers:?}"
    );
    delete_bucket(&s3, &bucket).await;
}

/// Runs the small simulation (with `settings` over it) into `s3://{bucket}/raw` on the local S3
/// server; its standard output, once it has succeeded.
async fn run_on_s3(bucket: &str, settings: &[(&str, &str)]) -> String {
    let scratch = tempfile::tempdir().unwrap();
    let mut command = classpulse(scratch.path());
    small_simulation(&mut command)
        .envs(settings.iter().copied())
        .env("CLASSPULSE_LAKE_URL", format!("s3://{bucket}/raw"))
        .env("CLASSPULSE_S3_ENDPOINT", S3)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .arg("run");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `f` with the standard AWS credential variables set to the local servers' test keys.
/// The variables are process-wide, so every test that needs them sets the same values.
fn with_test_credentials<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: tests in this binary only ever set these to the same constant values.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    f()
}

#[tokio::test]
async fn large_objects_go_up_in_parts() {
    require(S3);
    let s3 = s3_client().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let lake = s3_lake(&bucket, "");
    let writer = with_test_credentials(|| {
        ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap()
    });
    let body: Vec<u8> = (0..classpulse::store::MULTIPART_THRESHOLD + (4 << 20))
        .map(|i| (i % 251) as u8)
        .collect();
    let key = writer.key(
        "events",
        &PartitionId::new("t", 0),
        491_177,
        0,
        9,
        "parquet",
    );
    writer
        .put(
            "lake",
            &key,
            Bytes::from(body.clone()),
            &[("record-count", "10".to_owned())],
        )
        .await;
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key(key.as_ref())
        .send()
        .await
        .unwrap();
    assert_eq!(object.metadata().unwrap()["record-count"], "10");
    let stored = object.body.collect().await.unwrap().into_bytes();
    assert!(
        stored[..] == body[..],
        "the object reassembled from its parts is byte for byte the same"
    );
    delete_bucket(&s3, &bucket).await;
}

/// classpulse writing its lake to a local S3 endpoint, with the test credentials unless given.
fn lake_on_s3(
    scratch: &std::path::Path,
    endpoint: &str,
    bucket: &str,
    secret: &str,
) -> std::process::Command {
    let mut command = classpulse(scratch);
    small_simulation(&mut command)
        .env("CLASSPULSE_LAKE_URL", format!("s3://{bucket}/raw"))
        .env("CLASSPULSE_S3_ENDPOINT", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_REGION", "us-east-1")
        .arg("run");
    command
}

/// Polls /readyz until it is 503 and mentions `expected`.
async fn await_not_ready(running: &Running, expected: &str) -> String {
    let what = format!("/readyz reporting {expected:?}");
    wait_until_async(Duration::from_secs(30), &what, || async {
        let (status, report) = http_get(running.http, "/readyz");
        if status == 503 && report.contains(expected) {
            Ok(report)
        } else {
            Err(format!("{status} {report}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_s3_is_reported_and_nothing_is_lost_once_it_is_back() {
    require(S3);
    // An S3 server of this test's own, started late on a port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let scratch = tempfile::tempdir().unwrap();
    let running = Running::start(&mut lake_on_s3(
        scratch.path(),
        &endpoint,
        "late-bucket",
        "test",
    ));
    // The first thing read is the erasure list (the decoder waits for it); then the lake's or
    // the aggregates' checkpoints are written or read.
    let report = await_not_ready(&running, "not ready: transient").await;
    assert!(
        [
            "raw/_erasure",
            "raw/events",
            "raw/dead-letters",
            "raw/checkpoints",
        ]
        .iter()
        .any(|key| report.contains(key)),
        "{report}"
    );

    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("late-bucket")).unwrap();
    let mut server = std::process::Command::new(s3s_fs_binary())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            "test",
            "--secret-key",
            "test",
        ])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (code, stdout, logs) =
        tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(90)))
            .await
            .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    // s3s-fs keeps objects as files: read them as the lake.
    let rows: usize = read_lake(&data.path().join("late-bucket/raw"))
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(
        rows as u64,
        expected_lake_rows(&stdout),
        "every event buffered while S3 was away landed"
    );
    assert_eq!(
        read_dead_letters(&data.path().join("late-bucket/raw")).len() as u64,
        summary_number(&stdout, "rejected")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_writes_are_reported_and_never_committed() {
    require(S3);
    let s3 = s3_client().await;
    let bucket = unique_name("bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut command = lake_on_s3(scratch.path(), S3, &bucket, "not-the-secret");
    command.env("CLASSPULSE_SHUTDOWN_TIMEOUT", "2s");
    let running = Running::start(&mut command);
    await_not_ready(&running, "not ready: access_denied").await;

    running.signal("TERM");
    let (code, stdout, logs) =
        tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(30)))
            .await
            .unwrap();
    assert_eq!(
        code,
        Some(1),
        "a drain that cannot make data durable fails: {stdout}"
    );
    let logs = logs.join("\n");
    assert!(logs.contains("drain did not finish"), "{logs}");
    assert!(
        !stdout.contains("committed"),
        "no summary, nothing committed: {stdout}"
    );
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count().unwrap_or(0), 0);
    delete_bucket(&s3, &bucket).await;
}

fn s3s_fs_binary() -> std::path::PathBuf {
    installed_tool("cargo/bin/s3s-fs")
}
