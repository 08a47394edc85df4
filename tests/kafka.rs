//! The Kafka source against the local broker: everything produced lands once, the committed
//! offsets reach the end of every partition, and a restart resumes from them.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use classpulse::decode::RawMessage;
use common::backends::*;
use common::*;
use rdkafka::admin::AdminOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const PARTITIONS: i32 = 3;

/// Runs classpulse on `topic` until it has made `events` rows durable in the lake, then
/// stops it with SIGTERM. Returns its stdout.
fn consume_until(lake: &std::path::Path, topic: &str, group: &str, events: u64) -> String {
    let running = Running::start(&mut kafka_member(lake, topic, group));
    wait_for_metric(
        running.http,
        "classpulse_sink_records_total{sink=\"lake\"}",
        events as f64,
        Duration::from_secs(90),
    );
    // Caught up: every partition's lag is published and reads zero, in messages and in seconds.
    wait_until(
        Duration::from_secs(15),
        "every partition's lag at zero",
        || {
            let (_, metrics) = http_get(running.http, "/metrics");
            let lag_lines: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("classpulse_source_lag_messages{"))
                .collect();
            let seconds_lines: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("classpulse_source_lag_seconds{"))
                .collect();
            let all_zero = |lines: &[&str]| lines.iter().all(|l| l.ends_with(" 0"));
            // Every partition with data has a series (an empty one may not: nothing fetched yet).
            if lag_lines.len() >= 2 && all_zero(&lag_lines) && all_zero(&seconds_lines) {
                assert!(
                    lag_lines.iter().all(|l| l.contains("source=\"kafka\"")
                        && l.contains(&format!("partition=\"{topic}/"))),
                    "{lag_lines:?}"
                );
                Ok(())
            } else {
                Err(format!("{lag_lines:?} {seconds_lines:?}"))
            }
        },
    );
    // Every batch durable: the drain commits the last frontiers.
    wait_until(Duration::from_secs(15), "no batch in flight", || {
        let (_, metrics) = http_get(running.http, "/metrics");
        let batches = metric_sum(&metrics, "classpulse_batches_in_flight");
        if batches == 0.0 {
            Ok(())
        } else {
            Err(format!("{batches} batches in flight"))
        }
    });
    running.signal("TERM");
    let (code, stdout, logs) = running.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stdout}\n{}", logs.join("\n"));
    stdout
}

/// Committed offset of each partition of `topic` for `group`. (End offsets come from the
/// producer's delivery reports: tansu 0.6 answers ListOffsets(latest) with a batch count.)
fn committed(topic: &str, group: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    let result = (0..PARTITIONS)
        .filter_map(
            |partition| match committed.find_partition(topic, partition)?.offset() {
                Offset::Offset(offset) => Some((partition, offset)),
                _ => None,
            },
        )
        .collect();
    // No group membership was joined, so closing cannot hang; close off-thread anyway.
    std::thread::spawn(move || drop(consumer));
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_lands_once_and_offsets_reach_the_end_then_a_restart_resumes() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let group = unique_name("group");

    let mut first = simulated_messages(1, "2026-11-25T17:00:00Z").await;
    let (events, rejected) = decode_all(&first);
    let (mut first_valid, mut first_rejected) = (events.len() as u64, rejected.len() as u64);
    // The lake keeps one copy of each event: producer retries are left out.
    let first_distinct = distinct_ids(&events) + 1;
    // Poison in the middle of the stream: each becomes a dead letter and the partition moves on.
    let key = first[0].key.clone();
    let event = |bpm: u32| {
        format!(
            r#"{{"event_id":"poison-{bpm}","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s1","class_id":"c1","member_id":"m1","event_data":{{"bpm":{bpm}}}}}"#
        )
    };
    let poison = [
        "this is not json".to_owned(),
        format!("[{}]", vec![event(120); 200].join(",")), // larger than the 16 KiB limit set below
        format!("[{},{}]", event(130), event(999))
            .replace("\"s1\"", "\"studio-x\"")
            .replace("\"c1\"", "\"class-x\""),
    ];
    let poison_key = Some(bytes::Bytes::from_static(b"studio-x:class-x"));
    let middle = first.len() / 2;
    for (i, payload) in poison.iter().enumerate() {
        let key = if i == 2 {
            poison_key.clone()
        } else {
            key.clone()
        };
        first.insert(
            middle,
            RawMessage {
                offset: 0,
                timestamp_ms: None,
                key,
                payload: Some(bytes::Bytes::from(payload.clone())),
            },
        );
    }
    first_valid += 1; // the good half of the mixed batch
    first_rejected += 3; // not_json, too_large, out_of_range
    let ends = produce(&topic, &first, PARTITIONS).await;
    assert!(
        ends.len() >= 2,
        "keys spread over partitions, so commits are per partition: {ends:?}"
    );
    let lake = tempfile::tempdir().unwrap();
    let stdout = {
        let (lake, topic, group) = (lake.path().to_owned(), topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || consume_until(&lake, &topic, &group, first_distinct))
            .await
            .unwrap()
    };
    assert_eq!(
        summary_number(&stdout, "events in"),
        first_valid,
        "{stdout}"
    );
    let rows: usize = read_lake(lake.path()).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, first_distinct);
    assert_eq!(
        summary_number(&stdout, "duplicates"),
        first_valid - first_distinct
    );
    let dead_letters = read_dead_letters(lake.path());
    assert_eq!(dead_letters.len() as u64, first_rejected);
    for reason in ["not_json", "too_large", "out_of_range"] {
        assert!(
            dead_letters
                .iter()
                .any(|letter| letter["reason"] == reason && letter["stream"] == topic.as_str()),
            "no {reason} dead letter"
        );
    }
    let offsets = {
        let (topic, group) = (topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || committed(&topic, &group))
            .await
            .unwrap()
    };
    assert_eq!(
        offsets, ends,
        "committed offsets reach the end of every partition written"
    );

    // More events, same group: a restart reads only what is new.
    let second = simulated_messages(2, "2026-11-25T18:00:00Z").await;
    let second_events = decode_all(&second).0;
    let second_valid = second_events.len() as u64;
    let second_distinct = distinct_ids(&second_events);
    produce(&topic, &second, PARTITIONS).await;
    let stdout = {
        let (lake, topic, group) = (lake.path().to_owned(), topic.clone(), group.clone());
        tokio::task::spawn_blocking(move || consume_until(&lake, &topic, &group, second_distinct))
            .await
            .unwrap()
    };
    assert_eq!(
        summary_number(&stdout, "events in"),
        second_valid,
        "the restart resumed from the committed offsets: {stdout}"
    );
    let rows: usize = read_lake(lake.path()).iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows as u64, first_distinct + second_distinct);

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

#[test]
fn no_reachable_broker_makes_the_source_not_ready() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lake = tempfile::tempdir().unwrap();
    let mut command = classpulse(lake.path());
    command
        .env("CLASSPULSE_SOURCE", "kafka")
        .env("CLASSPULSE_KAFKA_BROKERS", format!("127.0.0.1:{port}"))
        .env("CLASSPULSE_KAFKA_TOPICS", "nowhere")
        .env("CLASSPULSE_SHUTDOWN_TIMEOUT", "5s")
        .arg("run");
    let running = Running::start(&mut command);
    wait_until(
        Duration::from_secs(20),
        "/readyz naming the missing broker",
        || {
            let (status, report) = http_get(running.http, "/readyz");
            let source_line = report
                .lines()
                .find(|line| line.starts_with("source:"))
                .unwrap_or_default()
                .to_owned();
            if status == 503
                && source_line.contains("not ready")
                && source_line.to_lowercase().contains("broker")
            {
                Ok(())
            } else {
                Err(format!("{status} {report}"))
            }
        },
    );
    assert_eq!(
        http_get(running.http, "/healthz").0,
        200,
        "alive while not ready"
    );
    running.signal("TERM");
    let (code, stdout, logs) = running.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "nothing was read, so the drain has nothing to wait for: {stdout}\n{}",
        logs.join("\n")
    );
}

/// Every event id in the lake, with how often it appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_loses_nothing() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let group = unique_name("group");
    let messages = simulated_messages(3, "2026-11-25T19:00:00Z").await;
    let (events, _) = decode_all(&messages);
    // Producer retries send some ids twice: count how often each id was sent.
    let mut sent: BTreeMap<String, u32> = BTreeMap::new();
    for event in &events {
        *sent.entry(event.event_id.to_string()).or_insert(0) += 1;
    }
    let expected: std::collections::BTreeSet<String> = sent.keys().cloned().collect();

    // Two members share one lake, as ECS tasks share one bucket.
    let lake = tempfile::tempdir().unwrap();
    let first = Running::start(&mut kafka_member(lake.path(), &topic, &group));
    let second = Running::start(&mut kafka_member(lake.path(), &topic, &group));
    // Produce over about ten seconds, so both members are working when one dies.
    let chunks: Vec<Vec<RawMessage>> = messages
        .chunks(messages.len() / 10 + 1)
        .map(<[RawMessage]>::to_vec)
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        produce(&topic, chunk, PARTITIONS).await;
        if i == 5 {
            let status = std::process::Command::new("kill")
                .args(["-KILL", &first.child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (killed_code, _, _) =
        tokio::task::spawn_blocking(move || first.wait(Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(killed_code, None, "killed by a signal");

    // The survivor takes over the dead member's partitions after its session times out and
    // replays them from their last committed offsets.
    let (lake_path, expected) = (lake.path(), &expected);
    let ids = wait_until_async(
        Duration::from_secs(60),
        "every event in the lake",
        || async move {
            let ids = lake_ids(lake_path);
            let missing = expected.iter().filter(|id| !ids.contains_key(*id)).count();
            match missing {
                0 => Ok(ids),
                _ => Err(format!("{missing} of {} missing", expected.len())),
            }
        },
    )
    .await;
    drain(second).await;
    // Nothing lost, and nothing written more often than it was sent: the replay after the
    // kill skips what the dead member wrote (the lake's replay index) and leaves out the same
    // producer retries (replayed positions keep their verdict). tests/faults.rs goes further:
    // 20 kills, rows compared with a clean run.
    let duplicated: Vec<_> = ids
        .iter()
        .filter(|(id, count)| **count > sent.get(*id).copied().unwrap_or(0))
        .collect();
    assert!(
        duplicated.is_empty(),
        "written more than once after the crash: {:?}",
        &duplicated[..duplicated.len().min(5)]
    );
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

fn distinct_ids(events: &[classpulse::event::PerformanceEvent]) -> u64 {
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| &*e.event_id).collect();
    ids.len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_through_kills_and_rebalances_equal_a_clean_run() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let messages = simulated_messages(5, "2026-11-25T20:00:00Z").await;
    let classes = class_count(&messages);
    let member = |lake: &std::path::Path, group: &str| finalising_kafka_member(lake, &topic, group);

    // Produced over about sixteen seconds while members join, leave and die.
    let chaos = tempfile::tempdir().unwrap();
    let group = unique_name("chaos");
    let first = Running::start(&mut member(chaos.path(), &group));
    let mut second = None;
    let mut third = None;
    let chunks: Vec<Vec<RawMessage>> = messages
        .chunks(messages.len() / 16 + 1)
        .map(<[RawMessage]>::to_vec)
        .collect();
    let mut first = Some(first);
    for (i, chunk) in chunks.iter().enumerate() {
        produce(&topic, chunk, PARTITIONS).await;
        match i {
            // Joins: the first member gives up some partitions.
            2 => second = Some(Running::start(&mut member(chaos.path(), &group))),
            // Leaves: the first member gets them back, behind what the second one did.
            7 => {
                let leaving: Running = second.take().unwrap();
                drain(leaving).await;
            }
            9 => third = Some(Running::start(&mut member(chaos.path(), &group))),
            // Dies: the third member takes over once the session times out.
            12 => {
                let killed = first.take().unwrap();
                killed.signal("KILL");
                let (code, _, _) =
                    tokio::task::spawn_blocking(move || killed.wait(Duration::from_secs(10)))
                        .await
                        .unwrap();
                assert_eq!(code, None);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let chaos_lake = chaos.path().to_owned();
    let final_classes = tokio::task::spawn_blocking(move || {
        await_final_classes(&chaos_lake, classes, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let survivor = third.take().unwrap();
    let (_, logs) = drain(survivor).await;
    assert_eq!(
        final_classes,
        classes,
        "survivor's log:\n{}",
        logs.join("\n")
    );

    // One member alone, from the start of the same topic.
    let clean = tempfile::tempdir().unwrap();
    let alone = Running::start(&mut member(clean.path(), &unique_name("clean")));
    let clean_lake = clean.path().to_owned();
    let final_classes = tokio::task::spawn_blocking(move || {
        await_final_classes(&clean_lake, classes, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(final_classes, classes);
    alone.signal("TERM");
    tokio::task::spawn_blocking(move || alone.wait(Duration::from_secs(30)))
        .await
        .unwrap();

    assert_same_aggregates(chaos.path(), clean.path());
    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_inputs_also_go_to_the_dead_letter_topic() {
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let (_, dead_letter_topic) = create_topic(PARTITIONS).await;
    let key = Some(bytes::Bytes::from_static(b"studio-x:class-x"));
    let event = |bpm: u32| {
        format!(
            r#"{{"event_id":"dlq-{bpm}","event_type":"heart_rate","event_created":1764090000000,"studio_id":"studio-x","class_id":"class-x","member_id":"m1","event_data":{{"bpm":{bpm}}}}}"#
        )
    };
    let payloads = [
        "not json at all".to_owned(),
        format!("[{},{}]", event(120), event(999)),
    ];
    let messages: Vec<RawMessage> = payloads
        .iter()
        .map(|payload| RawMessage {
            offset: 0,
            timestamp_ms: None,
            key: key.clone(),
            payload: Some(bytes::Bytes::from(payload.clone())),
        })
        .collect();
    produce(&topic, &messages, PARTITIONS).await;

    let lake = tempfile::tempdir().unwrap();
    let mut command = kafka_member(lake.path(), &topic, &unique_name("group"));
    command.env("CLASSPULSE_KAFKA_DLQ_TOPIC", &dead_letter_topic);
    let running = Running::start(&mut command);
    wait_for_metric(
        running.http,
        "classpulse_sink_records_total{sink=\"dead_letter_topic\"}",
        2.0,
        Duration::from_secs(60),
    );
    drain(running).await;

    // Read the dead-letter topic back from the beginning of every partition.
    let reading = dead_letter_topic.clone();
    let letters = tokio::task::spawn_blocking(move || {
        let dead_letter_topic = reading;
        use rdkafka::message::{Headers, Message};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", KAFKA)
            .set("group.id", unique_name("reader"))
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions
                .add_partition_offset(&dead_letter_topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&partitions).unwrap();
        let mut letters = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while letters.len() < 2 && Instant::now() < deadline {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let headers: BTreeMap<String, String> = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_owned(), value.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let payload = String::from_utf8_lossy(message.payload().unwrap_or_default());
            letters.push((headers, payload.to_string()));
        }
        std::thread::spawn(move || drop(consumer));
        letters
    })
    .await
    .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_reason: BTreeMap<&str, &(BTreeMap<String, String>, String)> = letters
        .iter()
        .map(|letter| (letter.0["classpulse.reason"].as_str(), letter))
        .collect();
    let (headers, payload) = by_reason["not_json"];
    assert_eq!(payload, "not json at all");
    assert_eq!(headers["classpulse.source.topic"], topic);
    assert!(!headers.contains_key("classpulse.source.index"));
    let (headers, payload) = by_reason["out_of_range"];
    assert_eq!(payload, &event(999), "the element, not the whole message");
    assert_eq!(headers["classpulse.source.index"], "1");
    assert!(headers["classpulse.detail"].contains("bpm"), "{headers:?}");
    admin
        .delete_topics(&[&topic, &dead_letter_topic], &AdminOptions::new())
        .await
        .unwrap();
}

/// Kafka over TLS, configured only through librdkafka's own properties
/// (`CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL=SSL`, `..._SSL_CA_LOCATION`), as MSK's TLS
/// listeners are. tansu 0.6 cannot serve TLS itself, so the broker advertises a TLS
/// terminator in front of it and every connection after the bootstrap goes through TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_tls_is_read_with_the_ca_it_is_given_and_refused_without_it() {
    let mut broker = PrivateKafka::start(&unique_name("tansu")).await;
    let (_admin, topic) = create_topic_on(&broker.brokers, PARTITIONS).await;
    let messages = simulated_messages(12, "2026-11-25T19:00:00Z").await;
    let classes = class_count(&messages);
    produce_to(&broker.brokers, &topic, &messages, PARTITIONS).await;

    // What a member reads in plain text, to compare with.
    let plain = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(plain.path(), &topic, &unique_name("plain"));
    member.env("CLASSPULSE_KAFKA_BROKERS", &broker.brokers);
    run_until_final(&mut member, plain.path(), classes).await;

    // From here on the broker sends clients to the TLS port only.
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(certificates.path());
    let tls = TlsTerminator::start(&cert, &key, &broker.brokers);
    broker.process.kill();
    broker.advertise(&tls.addr);
    broker.start_again().await;

    // A member that does not trust the broker's certificate stops with a reason that says so.
    let refused = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(refused.path(), &topic, &unique_name("untrusting"));
    member
        .env("CLASSPULSE_KAFKA_BROKERS", &tls.addr)
        .env("CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL", "SSL");
    let untrusting = Running::start(&mut member);
    let (code, stdout, logs) =
        tokio::task::spawn_blocking(move || untrusting.wait(Duration::from_secs(60)))
            .await
            .unwrap();
    let logs = logs.join("\n");
    assert_ne!(code, Some(0), "{stdout}\n{logs}");
    assert!(logs.contains("certificate verify failed"), "{logs}");
    assert!(lake_ids(refused.path()).is_empty());

    // Given the CA, a member reads everything through TLS.
    let lake = tempfile::tempdir().unwrap();
    let mut member = finalising_kafka_member(lake.path(), &topic, &unique_name("trusting"));
    member
        .env("CLASSPULSE_KAFKA_BROKERS", &tls.addr)
        .env("CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL", "SSL")
        .env("CLASSPULSE_KAFKA_PROP_SSL_CA_LOCATION", &cert);
    run_until_final(&mut member, lake.path(), classes).await;
    assert_same_lake_rows(lake.path(), plain.path());
    assert_same_aggregates(lake.path(), plain.path());
}

/// Partitions added to a topic while classes run (3, then 6): a producer that sees the new
/// count sends the rest of some classes to a new partition, read by another member. Each
/// such class ends once, at the partition where it began, with the part counted on the new
/// one merged in: results equal those of a topic that never grew, and the lake holds every
/// event once. On the walls' topic every class is published by its home alone (one epoch, the
/// home's index), one set of values under each version, its newest record final and holding
/// the merged result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_whose_key_moves_to_an_added_partition_ends_once_with_all_its_events() {
    require(KAFKA);
    let (admin, topic) = create_topic(6).await;
    let (_, unchanged_topic) = create_topic(3).await;
    let messages = in_event_time_order(simulated_messages(11, "2026-11-25T20:00:00Z").await);
    let classes = class_count(&messages);
    let keys: std::collections::BTreeSet<bytes::Bytes> =
        messages.iter().map(|m| m.key.clone().unwrap()).collect();
    let moved = keys
        .iter()
        .filter(|key| partition_of(key, 3) != partition_of(key, 6))
        .count();
    assert!(moved > 0, "no class moves with this seed");
    // Classes end 20 s (of event time, or of wall-clock time read to the end) after their
    // last event: a moved class is due at its home two chunks of the grown topic (about 11 s
    // of event time each, 2 s apart) after it moved, and its new partition meets it in the
    // first one. Live, that margin is the idle timeout itself (10 minutes by default).
    let member = |lake: &std::path::Path, topic: &str, group: &str| {
        let mut command = kafka_member(lake, topic, group);
        command.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "20s");
        command
    };
    let (_, live_topic) = create_topic(1).await;
    let publishing = |lake: &std::path::Path, group: &str| {
        let mut command = member(lake, &topic, group);
        command
            .env("CLASSPULSE_LIVE_TOPIC", &live_topic)
            .env("CLASSPULSE_LIVE_TILE_KEY", "test-tile-key-0123456789")
            .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
            // The live documents too, as the topic that never grew has them.
            .env("CLASSPULSE_AGG_FLUSH_INTERVAL", "5s");
        command
    };

    let grown = tempfile::tempdir().unwrap();
    let group = unique_name("grown");
    let first = Running::start(&mut publishing(grown.path(), &group));
    let second = Running::start(&mut publishing(grown.path(), &group));
    let chunks: Vec<&[RawMessage]> = messages.chunks(messages.len() / 16 + 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        // The producer learns of the new partitions half way.
        let grown = i >= chunks.len() / 2;
        produce(&topic, chunk, if grown { 6 } else { 3 }).await;
        tokio::time::sleep(Duration::from_secs(if grown { 2 } else { 1 })).await;
    }
    let grown_lake = grown.path().to_owned();
    let final_classes = tokio::task::spawn_blocking(move || {
        await_final_classes(&grown_lake, classes, Duration::from_secs(90))
    })
    .await
    .unwrap();
    let (_, first_logs) = drain(first).await;
    let (_, second_logs) = drain(second).await;
    let logs = [first_logs, second_logs].concat().join("\n");
    assert_eq!(final_classes, classes, "logs:\n{logs}");
    let merged = logs.matches("class part merged").count();
    assert_eq!(
        merged, moved,
        "one part merged per moved class; logs:\n{logs}"
    );

    // The walls' view of every class, moved or not.
    let records = tokio::task::spawn_blocking({
        let live_topic = live_topic.clone();
        move || common::walls::topic_records(KAFKA, &live_topic, 1)
    })
    .await
    .unwrap();
    let mut by_class: BTreeMap<String, Vec<&serde_json::Value>> = BTreeMap::new();
    for record in &records {
        let key = format!(
            "{}:{}",
            record["studio_id"].as_str().unwrap(),
            record["class_id"].as_str().unwrap()
        );
        by_class.entry(key).or_default().push(record);
    }
    assert_eq!(by_class.len(), classes, "every class on the walls' topic");
    let version = |r: &serde_json::Value| {
        (
            r["version"][0].as_u64().unwrap(),
            r["version"][1].as_u64().unwrap(),
        )
    };
    for (key, records) in &by_class {
        // Its home: where it began, before the growth or after it.
        let home = version(records[0]).0;
        assert!(
            [
                partition_of(key.as_bytes(), 3),
                partition_of(key.as_bytes(), 6)
            ]
            .contains(&(home as i32)),
            "{key}: epoch {home}"
        );
        assert!(
            records.iter().all(|r| version(r).0 == home),
            "{key}: published by its home ({home}) alone: {:?}",
            records.iter().map(|r| version(r)).collect::<Vec<_>>()
        );
        let newest = records.iter().max_by_key(|r| version(r)).unwrap();
        assert_eq!(newest["final"], true, "{key}: the newest record is final");
        for record in records {
            let same = records.iter().filter(|r| version(r) == version(record));
            assert!(
                same.clone().all(|r| r == record),
                "{key}: different values under {:?}",
                version(record)
            );
        }
        let name = key.replacen(':', "-", 1);
        let file = files_under(&grown.path().join("aggregates/members"), ".ndjson")
            .into_iter()
            .find(|file| file.file_stem().is_some_and(|stem| stem == name.as_str()))
            .unwrap_or_else(|| panic!("{key}: no member results"));
        let members = std::fs::read_to_string(file).unwrap();
        assert_eq!(
            newest["members"].as_array().unwrap().len(),
            members.lines().count(),
            "{key}: the final record holds every member of the merged result"
        );
    }

    // The same events on a topic that never grew.
    let unchanged = tempfile::tempdir().unwrap();
    produce(&unchanged_topic, &messages, 3).await;
    run_until_final(
        &mut member(
            unchanged.path(),
            &unchanged_topic,
            &unique_name("unchanged"),
        ),
        unchanged.path(),
        classes,
    )
    .await;

    assert_same_results(grown.path(), unchanged.path());
    assert_eq!(lake_ids(grown.path()), lake_ids(unchanged.path()));
    for topic in [&topic, &unchanged_topic, &live_topic] {
        admin
            .delete_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
    }
}

/// Messages of `classes` classes of 6 members with 80 heart-rate events each (one event a
/// message, keyed by class), their start `start_ms` apart, and the class of each.
fn classes_of_six(classes: usize, start_ms: i64) -> Vec<(String, RawMessage)> {
    let mut messages = Vec::new();
    for c in 0..classes {
        let (studio, class) = (format!("studio-{}", c % 3), format!("class-{c}"));
        let key = format!("{studio}:{class}");
        for member in 0..6 {
            for i in 0..80 {
                let time = start_ms + c as i64 * 60_000 + i * 4_000 + member * 500;
                let payload = format!(
                    r#"{{"event_id":"{class}-m{member}-{i}","event_type":"heart_rate","event_created":{time},"studio_id":"{studio}","class_id":"{class}","member_id":"m{member}","event_data":{{"bpm":{}}}}}"#,
                    110 + (i * 7 + member * 3) % 80
                );
                messages.push((
                    key.clone(),
                    RawMessage {
                        offset: 0,
                        timestamp_ms: None,
                        key: Some(bytes::Bytes::from(key.clone())),
                        payload: Some(bytes::Bytes::from(payload)),
                    },
                ));
            }
        }
    }
    messages
}

/// Copies that come after their class is final land once: 12 classes shuffled with producer
/// retries, read with a 3 s idle timeout so that classes end while their events are still
/// behind in the partition; then one class's whole queue posted again by a client, read by a
/// new process that finds the ids in the class's sealed segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_copies_of_final_classes_are_left_out_of_the_lake() {
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    const RETRIES: usize = 150;
    require(KAFKA);
    let (admin, topic) = create_topic(PARTITIONS).await;
    let group = unique_name("late-copies");
    let classes = classes_of_six(12, 1_764_090_000_000);
    let valid = classes.len();
    assert_eq!(valid, 5_760);
    let mut rng = rand::rngs::StdRng::seed_from_u64(28);
    let mut messages: Vec<RawMessage> = classes.iter().map(|(_, m)| m.clone()).collect();
    for _ in 0..RETRIES {
        let retry = messages[rng.random_range(0..valid)].clone();
        messages.push(retry);
    }
    for i in 0..5 {
        let key = messages[i].key.clone();
        messages.push(RawMessage {
            offset: 0,
            timestamp_ms: None,
            key,
            payload: Some(bytes::Bytes::from(format!("not json {i}"))),
        });
    }
    messages.shuffle(&mut rng);
    produce(&topic, &messages, PARTITIONS).await;

    let lake = tempfile::tempdir().unwrap();
    let member = |lake: &std::path::Path| {
        let mut command = kafka_member(lake, &topic, &group);
        command.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "3s");
        command
    };
    let running = Running::start(&mut member(lake.path()));
    let http = running.http;
    tokio::task::spawn_blocking(move || {
        wait_for_metric(
            http,
            "classpulse_sink_records_total{sink=\"lake\"}",
            valid as f64,
            Duration::from_secs(90),
        );
        wait_for_metric(
            http,
            "classpulse_events_duplicate_total",
            RETRIES as f64,
            Duration::from_secs(30),
        );
        wait_for_metric(
            http,
            "classpulse_sink_records_total{sink=\"dead_letters\"}",
            5.0,
            Duration::from_secs(30),
        );
        // Every class final, its ids sealed and written.
        wait_for_metric(
            http,
            "classpulse_aggregate_classes_final_total",
            12.0,
            Duration::from_secs(30),
        );
        wait_for_metric(
            http,
            "classpulse_id_segment_requests_total{request=\"put\"}",
            12.0,
            Duration::from_secs(30),
        );
    })
    .await
    .unwrap();
    let (_, logs) = drain(running).await;
    let ids = lake_ids(lake.path());
    let twice: Vec<_> = ids.iter().filter(|(_, rows)| **rows > 1).collect();
    assert!(twice.is_empty(), "ids in the lake twice: {twice:?}");
    assert_eq!(ids.len(), valid, "{}", logs.join("\n"));
    let late = read_lake(lake.path())
        .iter()
        .map(|batch| {
            let late = batch.column_by_name("late").unwrap();
            let late = late
                .as_any()
                .downcast_ref::<arrow_array::BooleanArray>()
                .unwrap();
            late.true_count()
        })
        .sum::<usize>();
    assert!(
        late > 0,
        "the short idle timeout ends classes before their last events"
    );

    // A client posts one class's queue again: every event a duplicate, found in the class's
    // segments (the new process holds none of its ids), and no row added.
    let again: Vec<RawMessage> = classes
        .iter()
        .filter(|(key, _)| key == "studio-1:class-4")
        .map(|(_, m)| m.clone())
        .collect();
    produce(&topic, &again, PARTITIONS).await;
    let segments = files_under(&lake.path().join("checkpoints/ids"), ".ids")
        .into_iter()
        .filter(|path| path.to_string_lossy().contains("/studio-1/class-4/"))
        .count() as f64;
    assert!(segments >= 1.0);
    let running = Running::start(&mut member(lake.path()));
    let (http, copies) = (running.http, again.len() as f64);
    tokio::task::spawn_blocking(move || {
        wait_for_metric(
            http,
            "classpulse_events_duplicate_total",
            copies,
            Duration::from_secs(60),
        );
        let (_, metrics) = http_get(http, "/metrics");
        assert_eq!(
            metric_sum(
                &metrics,
                "classpulse_id_segment_lookups_total{outcome=\"duplicate\"}"
            ),
            copies,
            "{metrics}"
        );
        // One listing and one read of each of the class's segments for the whole burst.
        let requests = |request: &str| {
            metric_sum(
                &metrics,
                &format!("classpulse_id_segment_requests_total{{request=\"{request}\"}}"),
            )
        };
        assert_eq!((requests("list"), requests("get")), (1.0, segments));
    })
    .await
    .unwrap();
    drain(running).await;
    assert_eq!(lake_ids(lake.path()), ids, "the second post added no row");

    admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap();
}
