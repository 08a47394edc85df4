//! Answers slowed, reset and cut short by the TCP proxy for a whole run: S3, Kinesis and its
//! lease table, the broker, DynamoDB; and the proxy's own plan.

use std::time::{Duration, Instant};

use crate::common::backends::*;
use crate::common::tables::*;
use crate::common::tcp_proxy::{self, Fault, FaultPlan, Framing, TcpFaults, TcpProxy};
use crate::common::*;
use crate::{assert_same_as_a_clean_run, PARTITIONS};

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
    // A quick run has some 70 answers; a connection's first cut comes within 1-40 answers of
    // each kind, and a cut ends the connection: a few seeds cut only once or twice.
    let cut = proxy.counts.reset.load(Relaxed) + proxy.counts.truncated.load(Relaxed);
    assert!(cut >= 1, "connections were cut mid-answer: {report}");

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

/// Between classpulse and DynamoDB Local, the TCP proxy slows, resets and cuts short a share
/// of the server's answers for a whole run (below HTTP; the tests further down answer with
/// DynamoDB's own errors): the SDK's retries and the writer's own keep both tables whole, every
/// event once and every final result, as without the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_resets_and_truncated_answers_from_dynamodb_lose_nothing() {
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let aggregates_table = create_table(&client, "aggregates").await;
    let faults = TcpFaults {
        slow: 0.2,
        latency: Duration::from_millis(150),
        reset: 0.1,
        truncate: 0.1,
    };
    let upstream = DYNAMODB.trim_start_matches("http://").parse().unwrap();
    let proxy = TcpProxy::start(upstream, Framing::Chunks, faults, tcp_proxy::seed()).await;
    let lake = tempfile::tempdir().unwrap();

    let stdout = run_to_end(&mut run_with_tables(
        lake.path(),
        &format!("http://{}", proxy.addr),
        &events_table,
        &aggregates_table,
    ));
    let report = proxy.report();
    eprintln!("through the proxy: {report}");
    use std::sync::atomic::Ordering::Relaxed;
    assert!(
        proxy.counts.reset.load(Relaxed) > 0 && proxy.counts.truncated.load(Relaxed) > 0,
        "faults were injected: {report}"
    );

    let stored = table_events(&scan_all(&client, &events_table).await);
    let twice: Vec<_> = stored.iter().filter(|(_, (_, n))| *n > 1).take(5).collect();
    assert!(twice.is_empty(), "events stored twice: {twice:?}");
    let expected = lake_events(lake.path());
    assert_eq!(stored.len(), expected.len(), "{stdout}");
    for (id, member) in &expected {
        assert_eq!(stored.get(id).map(|(m, _)| m), Some(member), "{id}");
    }
    assert_table_matches_lake(&scan_all(&client, &aggregates_table).await, lake.path());

    delete_table(&client, &events_table).await;
    delete_table(&client, &aggregates_table).await;
}
