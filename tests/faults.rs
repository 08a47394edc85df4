//! Faults against the real local servers: classpulse killed again and again while events are
//! produced, restarted each time. Afterwards nothing is missing, nothing is in the lake more
//! often than after a clean run, and the aggregates are byte for byte those of a clean run.

mod common;

use std::time::{Duration, Instant};

use classpulse::decode::RawMessage;
use common::backends::*;
use common::tcp_proxy::{self, Fault, FaultPlan, Framing, TcpFaults, TcpProxy};
use common::*;
use rand::{Rng, SeedableRng};

const PARTITIONS: i32 = 3;
/// Enough lives to die in every phase of a run: joining, mid-batch, flushing, checkpointing,
/// committing.
const KILLS: usize = 20;

/// Where the events go and how a classpulse reading them is started.
enum Target {
    Kafka {
        topic: String,
    },
    Kinesis {
        client: aws_sdk_kinesis::Client,
        stream: String,
    },
}

impl Target {
    /// How long a life lasts before its SIGKILL, in ms: long enough to get to work (a Kafka
    /// member joins its group in well under a second here; a Kinesis task first waits for the
    /// dead one's 1 s leases to expire).
    fn life_ms(&self) -> std::ops::Range<u64> {
        match self {
            Target::Kafka { .. } => 300..3_000,
            Target::Kinesis { .. } => 2_500..5_000,
        }
    }

    async fn produce(&self, messages: &[RawMessage]) {
        match self {
            Target::Kafka { topic } => {
                produce(topic, messages, PARTITIONS).await;
            }
            Target::Kinesis { client, stream } => put_messages(client, stream, messages, 0).await,
        }
    }

    /// A member of `group` (a consumer group, or a Kinesis application) writing into `lake`,
    /// whose classes end by the wall-clock idle rule once the stream is drained. The rule must
    /// not fire during the chaos (a class gone quiet for longer is final, and its later events
    /// late, unlike in the clean run): 8 s for Kafka; 20 s for Kinesis, where a new life first
    /// waits for the dead one's leases to expire.
    fn member(&self, lake: &std::path::Path, group: &str) -> std::process::Command {
        match self {
            Target::Kafka { topic } => finalising_kafka_member(lake, topic, group),
            Target::Kinesis { stream, .. } => {
                let mut command = kinesis_member(lake, stream, group);
                command
                    .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "20s")
                    // A killed task's leases are taken after this: short, so lives overlap
                    // with reading.
                    .env("CLASSPULSE_KINESIS_LEASE_DURATION", "1s");
                command
            }
        }
    }
}

/// Produces `messages` in `KILLS` chunks, one before each of `KILLS` lives that each end by
/// SIGKILL at a random moment, then lets a last life finish. Compares the lake and the
/// aggregates with a clean run of one member on the same stream.
async fn crash_loop(target: &Target, messages: &[RawMessage], groups: [String; 2]) {
    let (events, _) = decode_all(messages);
    let expected: std::collections::BTreeSet<String> =
        events.iter().map(|e| e.event_id.to_string()).collect();
    let classes = class_count(messages);
    let [group, clean_group] = groups;
    let seed: u64 = rand::random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);

    // Each life lasts a random time: some die starting up, some mid-batch, some during a
    // flush, a checkpoint or a commit (every 200 ms each here).
    let chaos = tempfile::tempdir().unwrap();
    let chunks: Vec<&[RawMessage]> = messages.chunks(messages.len() / KILLS + 1).collect();
    for life in 0..KILLS {
        if let Some(chunk) = chunks.get(life) {
            target.produce(chunk).await;
        }
        let running = Running::start(&mut target.member(chaos.path(), &group));
        tokio::time::sleep(Duration::from_millis(rng.random_range(target.life_ms()))).await;
        running.signal("KILL");
        let (code, _, _) =
            tokio::task::spawn_blocking(move || running.wait(Duration::from_secs(10)))
                .await
                .unwrap();
        assert_eq!(code, None, "life {life} was killed by the signal");
    }
    for chunk in chunks.iter().skip(KILLS) {
        target.produce(chunk).await;
    }
    // A last life runs to the end.
    run_until_final(
        &mut target.member(chaos.path(), &group),
        chaos.path(),
        classes,
    )
    .await;

    // The same stream, one member, never killed.
    let clean = tempfile::tempdir().unwrap();
    run_until_final(
        &mut target.member(clean.path(), &clean_group),
        clean.path(),
        classes,
    )
    .await;

    // Rows per event id exactly as in the clean run: nothing missing, nothing twice. (A
    // producer retry beyond the allowed lateness is kept, flagged late, in both.)
    let chaos_ids = lake_ids(chaos.path());
    let clean_ids = lake_ids(clean.path());
    let missing = expected
        .iter()
        .filter(|id| !chaos_ids.contains_key(*id))
        .count();
    let extra: Vec<(&String, &u32)> = chaos_ids
        .iter()
        .filter(|(id, n)| clean_ids.get(*id).is_none_or(|clean| *n > clean))
        .collect();
    eprintln!(
        "{KILLS} kills: {} events, {missing} missing, {} in the lake more often than in a clean run",
        expected.len(),
        extra.len()
    );
    assert_eq!(missing, 0, "events lost");
    assert!(
        extra.is_empty(),
        "rows written twice: {:?}",
        &extra[..extra.len().min(5)]
    );
    assert_eq!(chaos_ids, clean_ids);
    assert_same_aggregates(chaos.path(), clean.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_a_kafka_member_lose_nothing_duplicate_nothing_and_keep_aggregates_exact() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let messages = simulated_messages(21, "2026-11-25T23:00:00Z").await;
    let target = Target::Kafka {
        topic: topic.clone(),
    };
    crash_loop(
        &target,
        &messages,
        [unique_name("crash"), unique_name("clean")],
    )
    .await;
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
}

/// Kills cut a class's run of events at random places; its finality by event time must not
/// depend on where (shard 1 carries a class whose backlog arrives a minute behind the
/// partition's clock): see `PartitionState::last_class`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_of_a_kinesis_task_lose_nothing_duplicate_nothing_and_keep_aggregates_exact() {
    require(KINESIS);
    require(DYNAMODB);
    let client = kinesis_client(KINESIS).await;
    let stream = create_stream(&client, PARTITIONS).await;
    let messages = simulated_messages(22, "2026-11-26T00:00:00Z").await;
    let target = Target::Kinesis {
        client: client.clone(),
        stream: stream.clone(),
    };
    let groups = [unique_name("crash"), unique_name("clean")];
    crash_loop(&target, &messages, groups.clone()).await;
    delete_stream(&client, &stream).await;
    let dynamodb = dynamodb_client().await;
    for lease_table in &groups {
        delete_table(&dynamodb, lease_table).await;
    }
}

/// A valid heart-rate event of the hostile test's class, with `field` set to `value` (raw JSON).
fn hostile_event(id: &str, field: &str, value: &str) -> String {
    let mut event = format!(
        r#"{{"event_id":"{id}","event_type":"heart_rate","event_created":"2026-11-25T17:00:00Z","studio_id":"studio-h","class_id":"class-h","member_id":"m1","event_data":{{"bpm":120}}}}"#
    );
    if !field.is_empty() {
        let start = event.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
        let end = if field == "event_data" {
            event.len() - 1
        } else {
            start + event[start..].find([',', '}']).unwrap()
        };
        event.replace_range(start..end, value);
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_hostile_inputs_ends_in_dead_letters_with_the_right_reasons_in_bounded_memory()
{
    require(KAFKA);
    let (admin, topic) = create_topic(1).await;
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let mut invalid_utf8 = hostile_event("utf8", "", "").into_bytes();
    let at = invalid_utf8.len() - 20;
    invalid_utf8[at] = 0xFF;
    // (input, the reason its dead letter must give). Ids and keys are the strictest fields.
    let corpus: Vec<(Vec<u8>, &str)> = vec![
        (nested.clone().into_bytes(), "too_large"),
        (
            hostile_event("deep", "member_id", &"[".repeat(2_000).to_string()).into_bytes(),
            "not_json",
        ),
        (
            hostile_event(
                "deep-ok",
                "member_id",
                &format!("{}{}", "[".repeat(2_000), "]".repeat(2_000)),
            )
            .into_bytes(),
            "bad_type",
        ),
        (
            hostile_event("huge", "event_data", r#"{"bpm":1e400}"#).into_bytes(),
            "out_of_range",
        ),
        (
            hostile_event(
                "big",
                "event_data",
                r#"{"bpm":123456789012345678901234567890}"#,
            )
            .into_bytes(),
            "out_of_range",
        ),
        (
            hostile_event("nan", "event_data", r#"{"bpm":NaN}"#).into_bytes(),
            "not_json",
        ),
        (
            hostile_event("inf", "event_data", r#"{"bpm":Infinity}"#).into_bytes(),
            "not_json",
        ),
        (
            hostile_event(&"x".repeat(10_000), "", "").into_bytes(),
            "bad_format",
        ),
        (invalid_utf8, "not_json"),
        (vec![b'a'; 10 << 20], "too_large"),
        (
            hostile_event("path", "member_id", r#""../../x""#).into_bytes(),
            "bad_format",
        ),
        (
            hostile_event("sql", "studio_id", r#""studio';DROP TABLE events;--""#).into_bytes(),
            "bad_format",
        ),
        (
            hostile_event("nul", "member_id", r#""m\u0000""#).into_bytes(),
            "bad_format",
        ),
        (
            hostile_event("year9999", "event_created", r#""9999-12-31T23:59:59Z""#).into_bytes(),
            "timestamp_skew",
        ),
        (
            hostile_event("twice", "member_id", r#""m1","member_id":"m2""#).into_bytes(),
            "duplicate_field",
        ),
    ];
    // Sent one at a time, in order, then one good event: the partition moves on past them.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("message.max.bytes", "16000000")
        .create()
        .unwrap();
    let good = hostile_event("good", "", "");
    for payload in corpus
        .iter()
        .map(|(p, _)| p.as_slice())
        .chain([good.as_bytes()])
    {
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .payload(payload)
            .key("studio-h:class-h")
            .partition(0);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(error, _)| error)
            .unwrap();
    }

    let lake = tempfile::tempdir().unwrap();
    let mut member = kafka_member(lake.path(), &topic, &unique_name("hostile"));
    member.env("CLASSPULSE_MAX_MESSAGE_BYTES", "64KiB");
    let running = Running::start(&mut member);
    let lake_path = lake.path();
    wait_until_async(
        Duration::from_secs(60),
        "the good event in the lake",
        || async move {
            match lake_ids(lake_path).contains_key("good") {
                true => Ok(()),
                false => Err("not yet".to_owned()),
            }
        },
    )
    .await;
    let (_, metrics) = http_get(running.http, "/metrics");
    let rss = metric_sum(&metrics, "classpulse_process_resident_memory_bytes");
    drain(running).await;
    assert!(rss < 300.0 * 1024.0 * 1024.0, "resident memory {rss} bytes");

    let mut letters = read_dead_letters(lake.path());
    letters.sort_by_key(|letter| letter["position"].as_u64());
    let reasons: Vec<&str> = letters
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = corpus.iter().map(|(_, reason)| *reason).collect();
    assert_eq!(
        reasons,
        expected,
        "details: {:#?}",
        letters
            .iter()
            .map(|l| l["detail"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(120)
                .collect::<String>())
            .collect::<Vec<_>>()
    );
    // Kept for redrive: the raw bytes of every one (base64 when not UTF-8).
    assert!(letters
        .iter()
        .all(|l| l["raw"].is_string() || l["raw_base64"].is_string()));
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
}

/// The S3 server under the lake hangs (SIGSTOP: connections accepted, nothing answered) in the
/// middle of a run, comes back, then crashes and is started again on its files. The member
/// says it is not ready while S3 is away, keeps its memory bounded, and afterwards the lake and
/// the aggregates (which live on S3 too) equal those of a run that saw no fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_that_hangs_then_crashes_mid_run_loses_nothing() {
    require(KAFKA);
    let (_admin, topic) = create_topic(PARTITIONS).await;
    let messages = simulated_messages(13, "2026-11-25T20:00:00Z").await;
    let classes = class_count(&messages);
    let third = messages.len() / 3;
    let (first, rest) = messages.split_at(third);
    let (second, last) = rest.split_at(third);
    produce(&topic, first, PARTITIONS).await;

    let mut s3 = PrivateS3::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(scratch.path(), &topic, &unique_name("s3-faults"));
    s3.lake_for(&mut member);
    // The producer falls silent while the member waits for S3 (half a minute): an idle timeout
    // that outlasts that keeps every class open, as in the clean run, which reads everything
    // at once. (With 8 s, classes read to their end became final during the hang, rightly,
    // and the last third of their events was judged late.)
    member.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "45s");
    let running = Running::start(&mut member);
    let http = running.http;
    await_lake_ids(&s3.lake(), 1, Duration::from_secs(60)).await;

    // Hung: requests get no answer and time out, rather than fail fast. (Events keep coming:
    // a member with nothing to write has no way to notice.)
    s3.process.signal("STOP");
    let hung = Instant::now();
    produce(&topic, second, PARTITIONS).await;
    let report = await_readiness(http, 503, "lake", Duration::from_secs(60)).await;
    let detected = hung.elapsed();
    let rss = metric_sum(
        &http_get(http, "/metrics").1,
        "classpulse_process_resident_memory_bytes",
    );
    assert!(
        rss < 400.0 * 1024.0 * 1024.0,
        "resident memory {rss} bytes while S3 hangs"
    );
    s3.process.signal("CONT");
    produce(&topic, last, PARTITIONS).await;
    await_readiness(http, 200, "", Duration::from_secs(60)).await;

    // Crashed: connections refused until it is started again on the same files.
    s3.process.kill();
    await_readiness(http, 503, "lake", Duration::from_secs(60)).await;
    s3.start_again().await;
    await_readiness(http, 200, "", Duration::from_secs(60)).await;
    let lake = s3.lake();
    let finals = tokio::task::spawn_blocking(move || {
        await_final_classes(&lake, classes, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let (_, logs) = drain(running).await;
    assert_eq!(finals, classes, "log:\n{}", logs.join("\n"));
    eprintln!("not ready {detected:?} after S3 hung: {report}");

    assert_same_as_a_clean_run(&s3, &topic, classes).await;
}

/// Fails unless the lake on `s3` holds the rows and final aggregates of a member that read
/// `topic` into a local lake without a fault.
async fn assert_same_as_a_clean_run(s3: &PrivateS3, topic: &str, classes: usize) {
    let clean = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(clean.path(), topic, &unique_name("s3-clean"));
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(&s3.lake(), clean.path());
    // Live results go to the lake only when it is a local directory (on S3 they go to the
    // DynamoDB table): the final ones are compared.
    std::fs::remove_dir_all(clean.path().join("aggregates/live")).unwrap();
    assert_same_aggregates(&s3.lake(), clean.path());
}

/// The Kinesis server hangs (SIGSTOP) for three idle timeouts in the middle of every class,
/// comes back, then crashes and is started again on its data, with events put after each. The
/// task says it is not ready while the server is away, ends no class while it hangs, and
/// afterwards the lake and the aggregates equal those of a task that saw no fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_server_that_hangs_then_crashes_mid_run_loses_nothing() {
    require(DYNAMODB);
    let mut server = PrivateKinesis::start().await;
    let client = server.client().await;
    let stream = create_stream(&client, 2).await;
    let messages = simulated_messages(14, "2026-11-25T21:00:00Z").await;
    let classes = class_count(&messages);
    let third = messages.len() / 3;
    let (first, rest) = messages.split_at(third);
    let (second, last) = rest.split_at(third);
    put_messages(&client, &stream, first, 0).await;

    let faulty = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(faulty.path(), &stream, &unique_name("kinesis-faults"));
    member
        .env("CLASSPULSE_KINESIS_ENDPOINT", &server.endpoint)
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s")
        // Leases outlast the crash and restart: the task keeps its shards.
        .env("CLASSPULSE_KINESIS_LEASE_DURATION", "60s");
    let running = Running::start(&mut member);
    let http = running.http;
    await_lake_ids(faulty.path(), first.len() / 2, Duration::from_secs(60)).await;

    // Hung for three idle timeouts: calls get no answer.
    server.process.signal("STOP");
    let hung = Instant::now();
    let report = await_readiness(http, 503, "kinesis", Duration::from_secs(60)).await;
    let detected = hung.elapsed();
    tokio::time::sleep(Duration::from_secs(24).saturating_sub(hung.elapsed())).await;
    let finals_while_hung = aggregate_files(faulty.path())
        .keys()
        .filter(|name| name.starts_with("classes/"))
        .count();
    server.process.signal("CONT");
    put_messages(&client, &stream, second, 0).await;
    await_readiness(http, 200, "", Duration::from_secs(60)).await;

    // Crashed, and started again on its data.
    server.process.kill();
    await_readiness(http, 503, "kinesis", Duration::from_secs(60)).await;
    server.start_again().await;
    put_messages(&client, &stream, last, 0).await;
    await_readiness(http, 200, "", Duration::from_secs(60)).await;
    let lake = faulty.path().to_owned();
    let finals = tokio::task::spawn_blocking(move || {
        await_final_classes(&lake, classes, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let (_, logs) = drain(running).await;
    assert_eq!(finals, classes, "log:\n{}", logs.join("\n"));
    eprintln!("not ready {detected:?} after the Kinesis server hung: {report}");
    assert_eq!(finals_while_hung, 0, "classes ended while the server hung");

    let clean = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(clean.path(), &stream, &unique_name("kinesis-clean"));
    member
        .env("CLASSPULSE_KINESIS_ENDPOINT", &server.endpoint)
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(faulty.path(), clean.path());
    assert_same_aggregates(faulty.path(), clean.path());
}

/// A fan-out subscription whose server hangs (SIGSTOP) mid-run: its event stream goes quiet
/// without closing (the receive had no deadline: the shard's reader waited on it forever). The
/// task reports not ready (its shard listing times out), renews a subscription silent for 30 s
/// (the renewal's answer has a deadline too), ends no class while the server hangs, and
/// afterwards the lake and the aggregates equal those of a task that saw no fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_server_that_hangs_mid_run_loses_nothing() {
    require(DYNAMODB);
    let server = PrivateKinesisMock::start().await;
    let client = server.client().await;
    let stream = create_stream(&client, 2).await;
    // kinesis-mock slows down as streams grow: a small stream.
    let messages = simulated_messages(16, "2026-11-25T20:00:00Z").await;
    let classes = class_count(&messages);
    let (first, second) = messages.split_at(messages.len() / 2);
    put_messages(&client, &stream, first, 0).await;

    let faulty = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(faulty.path(), &stream, &unique_name("efo-faults"));
    member
        .env("CLASSPULSE_KINESIS_ENDPOINT", &server.endpoint)
        .env("CLASSPULSE_KINESIS_EFO", "true")
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    let running = Running::start(&mut member);
    let http = running.http;
    await_lake_ids(faulty.path(), first.len() / 2, Duration::from_secs(60)).await;

    server.process.signal("STOP");
    let hung = Instant::now();
    let report = await_readiness(http, 503, "kinesis", Duration::from_secs(90)).await;
    let detected = hung.elapsed();
    let finals_while_hung = aggregate_files(faulty.path())
        .keys()
        .filter(|name| name.starts_with("classes/"))
        .count();
    server.process.signal("CONT");
    await_readiness(http, 200, "", Duration::from_secs(60)).await;
    put_messages(&client, &stream, second, 0).await;
    let lake = faulty.path().to_owned();
    let finals = tokio::task::spawn_blocking(move || {
        await_final_classes(&lake, classes, Duration::from_secs(120))
    })
    .await
    .unwrap();
    let (_, logs) = drain(running).await;
    assert_eq!(finals, classes, "log:\n{}", logs.join("\n"));
    eprintln!("not ready {detected:?} after the fan-out server hung: {report}");
    assert!(
        logs.iter()
            .any(|line| line.contains("fan-out subscription silent")),
        "the silent subscription was renewed:\n{}",
        logs.join("\n")
    );
    assert_eq!(finals_while_hung, 0, "classes ended while the server hung");

    let clean = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(clean.path(), &stream, &unique_name("efo-clean"));
    member
        .env("CLASSPULSE_KINESIS_ENDPOINT", &server.endpoint)
        .env("CLASSPULSE_KINESIS_EFO", "true")
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(faulty.path(), clean.path());
    assert_same_aggregates(faulty.path(), clean.path());
}

/// Between classpulse and the S3 server under its lake, a proxy that slows, resets and
/// truncates a share of the server's answers for the whole run: every write is retried until
/// it lands, and the lake and the aggregates equal those of a run without the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_resets_and_truncated_answers_from_s3_lose_nothing() {
    require(KAFKA);
    let (_admin, topic) = create_topic(PARTITIONS).await;
    let messages = simulated_messages(15, "2026-11-25T22:00:00Z").await;
    let classes = class_count(&messages);
    produce(&topic, &messages, PARTITIONS).await;

    let s3 = PrivateS3::start().await;
    let upstream = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let faults = TcpFaults {
        slow: 0.2,
        latency: Duration::from_millis(150),
        reset: 0.15,
        truncate: 0.15,
    };
    let proxy = TcpProxy::start(upstream, Framing::Chunks, faults, tcp_proxy::seed()).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(scratch.path(), &topic, &unique_name("s3-proxy"));
    s3.lake_for(&mut member);
    member.env("CLASSPULSE_S3_ENDPOINT", format!("http://{}", proxy.addr));
    run_until_final(&mut member, &s3.lake(), classes).await;
    let report = proxy.report();
    eprintln!("through the proxy: {report}");
    let counts = &proxy.counts;
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        counts.reset.load(Relaxed) > 0 && counts.truncated.load(Relaxed) > 0,
        "faults were injected: {report}"
    );

    assert_same_as_a_clean_run(&s3, &topic, classes).await;
}

/// A Kinesis task whose Kinesis calls and lease-table calls both go through the proxy, which
/// slows, resets and cuts short a share of each server's answers for a whole run: the SDK's
/// retries and the source's own keep every shard read and every lease held or taken back, and
/// the lake and the aggregates equal those of a task talking to the servers directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_resets_and_truncated_answers_from_kinesis_and_its_lease_table_lose_nothing() {
    require(KINESIS);
    require(DYNAMODB);
    let client = kinesis_client(KINESIS).await;
    let stream = create_stream(&client, 2).await;
    let messages = simulated_messages(14, "2026-11-25T19:00:00Z").await;
    let classes = class_count(&messages);
    put_messages(&client, &stream, &messages, 0).await;

    let seed = tcp_proxy::seed();
    // Shares of answer chunks: a GetRecords answer of 10,000 records is hundreds of chunks,
    // so at these rates it is always cut (the source asks for fewer records until answers
    // arrive); a lease write's answer is one.
    let faults = TcpFaults {
        slow: 0.1,
        latency: Duration::from_millis(150),
        reset: 0.03,
        truncate: 0.03,
    };
    let address = |url: &str| url.trim_start_matches("http://").parse().unwrap();
    let kinesis = TcpProxy::start(address(KINESIS), Framing::Chunks, faults.clone(), seed).await;
    // Lease writes answer in one chunk each: many lost answers, so some lost after the write.
    let lease_faults = TcpFaults {
        reset: 0.15,
        truncate: 0.15,
        ..faults
    };
    let leases = TcpProxy::start(address(DYNAMODB), Framing::Chunks, lease_faults, seed ^ 1).await;
    let faulty = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(faulty.path(), &stream, &unique_name("kinesis-proxy"));
    member
        .env(
            "CLASSPULSE_KINESIS_ENDPOINT",
            format!("http://{}", kinesis.addr),
        )
        .env(
            "CLASSPULSE_DYNAMODB_ENDPOINT",
            format!("http://{}", leases.addr),
        )
        .env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    let logs = run_until_final(&mut member, faulty.path(), classes).await;
    // The only worker: a refused lease write was its own, applied before its answer was lost
    // and refused on the SDK's retry. Once, that made the task give up its shards.
    let lost: Vec<_> = logs.iter().filter(|l| l.contains("lease lost")).collect();
    assert!(lost.is_empty(), "its own lease writes refused: {lost:?}");
    use std::sync::atomic::Ordering::Relaxed;
    for (name, proxy) in [("kinesis", &kinesis), ("lease table", &leases)] {
        let report = proxy.report();
        eprintln!("{name} through the proxy: {report}");
        assert!(
            proxy.counts.reset.load(Relaxed) > 0 && proxy.counts.truncated.load(Relaxed) > 0,
            "{name}: faults were injected: {report}"
        );
    }

    let clean = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(clean.path(), &stream, &unique_name("kinesis-direct"));
    member.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(faulty.path(), clean.path());
    assert_same_aggregates(faulty.path(), clean.path());
}

/// The broker behind the same proxy (it advertises the proxy, so every connection goes through
/// it): one Kafka answer in ten is slowed, one in twenty reset and one in twenty cut short, on
/// every connection (heartbeats, metadata, fetches, commits), for a whole run. librdkafka
/// reconnects and retries, a lost connection does not hold the classes' wall-clock finality
/// back, nothing is lost, and the lake and the aggregates equal those of a member reading
/// through the proxy with no faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_resets_and_truncated_answers_from_the_broker_lose_nothing() {
    let mut broker = PrivateKafka::start(&unique_name("tansu")).await;
    let (_admin, topic) = create_topic_on(&broker.brokers, PARTITIONS).await;
    let messages = simulated_messages(16, "2026-11-25T23:00:00Z").await;
    let classes = class_count(&messages);
    produce_to(&broker.brokers, &topic, &messages, PARTITIONS).await;

    let faults = TcpFaults {
        slow: 0.1,
        latency: Duration::from_millis(100),
        reset: 0.05,
        truncate: 0.05,
    };
    let upstream = broker.brokers.parse().unwrap();
    let proxy = TcpProxy::start(upstream, Framing::Kafka, faults, tcp_proxy::seed()).await;
    broker.process.kill();
    broker.advertise(&proxy.addr.to_string());
    broker.start_again().await;

    let faulty = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(faulty.path(), &topic, &unique_name("proxied"));
    // A session that outlasts a reconnection or two, as MSK's 45 s default does.
    member
        .env("CLASSPULSE_KAFKA_BROKERS", proxy.addr.to_string())
        .env("CLASSPULSE_KAFKA_PROP_SESSION_TIMEOUT_MS", "30000")
        .env("CLASSPULSE_KAFKA_PROP_HEARTBEAT_INTERVAL_MS", "1000");
    // At one answer in ten lost, these 16 classes were read and final within 26-108 s on two
    // busy cores (docs/kafka.md, "Lossy networks"); about twice the slowest is the bound.
    let started = Instant::now();
    run_until_final_within(
        &mut member,
        faulty.path(),
        classes,
        Duration::from_secs(220),
    )
    .await;
    let report = proxy.report();
    eprintln!("through the proxy in {:?}: {report}", started.elapsed());
    use std::sync::atomic::Ordering::Relaxed;
    let cut = proxy.counts.reset.load(Relaxed) + proxy.counts.truncated.load(Relaxed);
    assert!(cut >= 3, "connections were cut mid-answer: {report}");

    proxy.set_faults(TcpFaults::default());
    let clean = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(clean.path(), &topic, &unique_name("unfaulted"));
    member.env("CLASSPULSE_KAFKA_BROKERS", proxy.addr.to_string());
    run_until_final(&mut member, clean.path(), classes).await;
    assert_same_lake_rows(faulty.path(), clean.path());
    assert_same_aggregates(faulty.path(), clean.path());
}

fn proxy_faults(seed: u64, connection: u64, answers: usize) -> Vec<Fault> {
    let faults = TcpFaults {
        slow: 0.1,
        latency: Duration::from_millis(100),
        reset: 0.02,
        truncate: 0.02,
    };
    let mut plan = FaultPlan::new(seed, connection);
    (0..answers).map(|_| plan.roll(&faults)).collect()
}

/// The proxy's faults are a function of the seed, the connection's number and the answer's
/// number on it: a failing run's seed fails the same answers again.
#[test]
fn the_proxys_faults_follow_from_the_seed_and_the_connection() {
    assert_eq!(proxy_faults(7, 3, 500), proxy_faults(7, 3, 500));
    assert_ne!(proxy_faults(7, 3, 500), proxy_faults(7, 4, 500));
    assert_ne!(proxy_faults(7, 3, 500), proxy_faults(8, 3, 500));
}

/// One reset in 50 answers on average, never much more than 100 apart (a reset due on an
/// answer another fault took waits for the next).
#[test]
fn the_proxys_resets_come_at_their_share_and_within_twice_its_spacing() {
    let resets: Vec<usize> = proxy_faults(11, 0, 5_000)
        .iter()
        .enumerate()
        .filter(|(_, fault)| matches!(fault, Fault::Reset(_)))
        .map(|(at, _)| at)
        .collect();
    assert!(
        (70..=130).contains(&resets.len()),
        "{} resets",
        resets.len()
    );
    for pair in resets.windows(2) {
        assert!(pair[1] - pair[0] <= 110, "resets at {pair:?}");
    }
}
