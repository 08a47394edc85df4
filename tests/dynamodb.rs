//! The DynamoDB sink against DynamoDB Local: both tables round trip, replays change nothing,
//! injected throttling, errors and unprocessed items lose and duplicate nothing, a missing
//! table shows on /readyz, and an oversized item is split.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arrow_array::cast::AsArray;
use aws_sdk_dynamodb::types::AttributeValue;
use classpulse::aggregate::output::{ClassMinute, ClassSummary, MemberSummary};
use classpulse::sink::dynamodb::events::decode_payload;
use classpulse::sink::dynamodb::{item_size, Item};
use common::backends::*;
use common::faulty_dynamodb::{FaultCounts, FaultPlan, FaultyDynamo};
use common::*;

/// `classpulse run` of the small simulation writing both tables through `endpoint`.
fn run_with_tables(lake: &Path, endpoint: &str, events: &str, aggregates: &str) -> Command {
    let mut command = classpulse(lake);
    with_local_dynamodb(small_simulation(&mut command))
        .env("CLASSPULSE_DYNAMODB_ENDPOINT", endpoint)
        .env("CLASSPULSE_DYNAMODB_EVENTS_TABLE", events)
        .env("CLASSPULSE_DYNAMODB_AGGREGATES_TABLE", aggregates)
        .env("CLASSPULSE_DYNAMODB_MAX_INFLIGHT", "4")
        .arg("run");
    command
}

/// Every event of the events table: event id to (member, count).
fn table_events(items: &[Item]) -> BTreeMap<String, (String, u32)> {
    let mut events = BTreeMap::new();
    for item in items {
        let member = item["pk"].as_s().unwrap();
        let payload = item["ev"].as_b().unwrap().as_ref();
        let decoded = decode_payload(payload).unwrap();
        assert_eq!(
            decoded.len().to_string(),
            *item["n"].as_n().unwrap(),
            "n counts the item's events"
        );
        for event in decoded {
            let id = event["event_id"].as_str().unwrap().to_owned();
            events.entry(id).or_insert_with(|| (member.clone(), 0)).1 += 1;
        }
    }
    events
}

/// Waits until every id of `expected` is in `table`; returns what the table holds then.
async fn await_table_events(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    expected: &BTreeSet<String>,
    within: Duration,
) -> BTreeMap<String, (String, u32)> {
    wait_until_async(within, "every event in the table", || async move {
        let stored = table_events(&scan_all(client, table).await);
        let missing = expected
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .count();
        match missing {
            0 => Ok(stored),
            _ => Err(format!("{missing} missing")),
        }
    })
    .await
}

/// Event id to member of every row in the lake.
fn lake_events(lake: &Path) -> BTreeMap<String, String> {
    let mut events = BTreeMap::new();
    for batch in read_lake(lake) {
        let ids = batch.column_by_name("event_id").unwrap().as_string::<i32>();
        let members = batch
            .column_by_name("member_id")
            .unwrap()
            .as_string::<i32>();
        for row in 0..batch.num_rows() {
            let previous = events.insert(ids.value(row).to_owned(), members.value(row).to_owned());
            assert!(
                previous.is_none(),
                "the lake holds {} twice",
                ids.value(row)
            );
        }
    }
    events
}

/// The final results the lake holds, by `studio#class`.
fn lake_results(
    lake: &Path,
) -> BTreeMap<String, (ClassSummary, Vec<MemberSummary>, Vec<ClassMinute>)> {
    let files = aggregate_files(lake);
    let mut results = BTreeMap::new();
    for (name, body) in &files {
        let Some(rest) = name.strip_prefix("classes/") else {
            continue;
        };
        let summary: ClassSummary = serde_json::from_slice(body).unwrap();
        let members_name = format!("members/{}", rest.replace(".json", ".ndjson"));
        let minutes_name = format!("minutes/{}", rest.replace(".json", ".ndjson"));
        let lines = |name: &str| -> Vec<String> {
            String::from_utf8(files[name].clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let members = lines(&members_name)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let minutes = lines(&minutes_name)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        results.insert(
            format!("{}#{}", summary.studio_id, summary.class_id),
            (summary, members, minutes),
        );
    }
    results
}

/// Asserts the aggregates table holds exactly the lake's final results.
fn assert_table_matches_lake(items: &[Item], lake: &Path) {
    let expected = lake_results(lake);
    assert!(!expected.is_empty());
    let mut by_class: BTreeMap<String, Vec<&Item>> = BTreeMap::new();
    for item in items {
        by_class
            .entry(item["pk"].as_s().unwrap().clone())
            .or_default()
            .push(item);
    }
    assert_eq!(
        by_class.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (class, (summary, members, minutes)) in &expected {
        let items = &by_class[class];
        let find = |sk: &str| {
            *items
                .iter()
                .find(|item| item["sk"].as_s().unwrap() == sk)
                .unwrap_or_else(|| panic!("{class}: no {sk} item"))
        };
        let stored: ClassSummary =
            serde_dynamo::aws_sdk_dynamodb_1::from_item(find("summary").clone()).unwrap();
        assert_eq!(&stored, summary, "{class}");
        for member in members {
            let item = find(&format!("member#{}", member.member_id));
            let stored: MemberSummary =
                serde_dynamo::aws_sdk_dynamodb_1::from_item(item.clone()).unwrap();
            assert_eq!(&stored, member);
        }
        let stored_minutes = items
            .iter()
            .filter(|item| item["sk"].as_s().unwrap().starts_with("minute#"))
            .map(|item| serde_dynamo::aws_sdk_dynamodb_1::from_item((*item).clone()).unwrap())
            .collect::<Vec<ClassMinute>>();
        assert_eq!(&stored_minutes, minutes, "{class}: minutes in time order");
        let live = find("live");
        assert_eq!(live["final"], AttributeValue::Bool(true), "{class}");
        let live_summary: ClassSummary =
            serde_dynamo::aws_sdk_dynamodb_1::from_attribute_value(live["summary"].clone())
                .unwrap();
        assert_eq!(&live_summary, summary, "the live item ends final");
        assert_eq!(items.len(), 2 + members.len() + minutes.len());
        for item in items {
            assert!(item.contains_key("ttl") && item.contains_key("version"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_tables_hold_every_event_once_and_every_final_result() {
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let aggregates_table = create_table(&client, "aggregates").await;
    let lake = tempfile::tempdir().unwrap();

    let stdout = run_to_end(&mut run_with_tables(
        lake.path(),
        DYNAMODB,
        &events_table,
        &aggregates_table,
    ));

    let items = scan_all(&client, &events_table).await;
    let stored = table_events(&items);
    let twice: Vec<_> = stored.iter().filter(|(_, (_, n))| *n > 1).collect();
    assert!(twice.is_empty(), "events stored twice: {twice:?}");
    let expected = lake_events(lake.path());
    assert_eq!(stored.len(), expected.len(), "{stdout}");
    for (id, member) in &expected {
        assert_eq!(stored.get(id).map(|(m, _)| m), Some(member), "{id}");
    }
    // Packed: a member's minutes, not one item per event.
    assert!(items.len() * 20 < expected.len(), "{} items", items.len());
    for item in &items {
        let sort_key = item["sk"].as_s().unwrap();
        assert_eq!(sort_key.split('#').count(), 6, "{sort_key}");
        assert!(item_size(item) < 400 * 1024);
        let ttl: i64 = item["ttl"].as_n().unwrap().parse().unwrap();
        assert!(ttl > 1_764_000_000, "{ttl}");
    }

    let aggregates = scan_all(&client, &aggregates_table).await;
    assert_table_matches_lake(&aggregates, lake.path());
    let live_sizes: Vec<usize> = aggregates
        .iter()
        .filter(|item| item["sk"].as_s().unwrap() == "live")
        .map(item_size)
        .collect();
    eprintln!("live item sizes: {live_sizes:?}");
    assert!(
        stdout.contains(&format!("dynamodb       {events_table}:")),
        "{stdout}"
    );

    delete_table(&client, &events_table).await;
    delete_table(&client, &aggregates_table).await;
}

/// Between classpulse and DynamoDB Local, the TCP proxy slows, resets and cuts short a share
/// of the server's answers for a whole run (below HTTP; the tests further down answer with
/// DynamoDB's own errors): the SDK's retries and the writer's own keep both tables whole, every
/// event once and every final result, as without the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_resets_and_truncated_answers_from_dynamodb_lose_nothing() {
    use common::tcp_proxy::{self, Framing, TcpFaults, TcpProxy};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_positions_changes_no_item_and_never_regresses_one() {
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let aggregates_table = create_table(&client, "aggregates").await;
    let first_lake = tempfile::tempdir().unwrap();
    run_to_end(&mut run_with_tables(
        first_lake.path(),
        DYNAMODB,
        &events_table,
        &aggregates_table,
    ));
    let events_before = scan_all(&client, &events_table).await;
    let mut aggregates_before = scan_all(&client, &aggregates_table).await;

    // A newer result of one class arrived meanwhile (say, from a later owner): a replay
    // must not overwrite it.
    let newer = aggregates_before
        .iter_mut()
        .find(|item| item["sk"].as_s().unwrap() == "summary")
        .unwrap();
    let version: u64 = newer["version"].as_n().unwrap().parse().unwrap();
    newer.insert(
        "version".into(),
        AttributeValue::N((version + 100).to_string()),
    );
    newer.insert("hr_samples".into(), AttributeValue::N("999999".into()));
    client
        .put_item()
        .table_name(&aggregates_table)
        .set_item(Some(newer.clone()))
        .send()
        .await
        .unwrap();

    // The same source positions again, from scratch (a fresh lake: nothing is skipped).
    let second_lake = tempfile::tempdir().unwrap();
    let stdout = run_to_end(&mut run_with_tables(
        second_lake.path(),
        DYNAMODB,
        &events_table,
        &aggregates_table,
    ));
    let refused: u64 = stdout
        .lines()
        .find(|line| line.contains(&format!("{aggregates_table}:")))
        .and_then(|line| line.rsplit(", ").next())
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refusals reported: {stdout}"));
    assert!(
        refused > 0,
        "the newer summary was refused a rewrite: {stdout}"
    );
    assert_eq!(scan_all(&client, &events_table).await, events_before);
    assert_eq!(
        scan_all(&client, &aggregates_table).await,
        aggregates_before
    );

    delete_table(&client, &events_table).await;
    delete_table(&client, &aggregates_table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_errors_and_unprocessed_items_lose_nothing_and_duplicate_nothing() {
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let aggregates_table = create_table(&client, "aggregates").await;
    let proxy = FaultyDynamo::start(
        DYNAMODB,
        FaultPlan {
            throttle: 0.15,
            server_error: 0.1,
            unprocessed: 0.5,
            // Simulated member ids end in digits: about a tenth of them are refused.
            poison_suffix: Some("7".into()),
        },
        7,
    )
    .await;
    let lake = tempfile::tempdir().unwrap();
    let stdout = tokio::task::spawn_blocking({
        let lake = lake.path().to_path_buf();
        let (url, events_table, aggregates_table) = (
            proxy.url.clone(),
            events_table.clone(),
            aggregates_table.clone(),
        );
        move || {
            run_to_end(
                run_with_tables(&lake, &url, &events_table, &aggregates_table)
                    // Many small items: many calls to throttle, split and poison.
                    .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "20s"),
            )
        }
    })
    .await
    .unwrap();

    let counts = &proxy.counts;
    for (what, count) in [
        ("throttled calls", FaultCounts::get(&counts.throttled)),
        ("500s", FaultCounts::get(&counts.server_errors)),
        (
            "unprocessed items",
            FaultCounts::get(&counts.unprocessed_items),
        ),
        ("poisoned calls", FaultCounts::get(&counts.poisoned_calls)),
    ] {
        assert!(count > 0, "the proxy injected no {what}: {stdout}");
    }

    // Every event of the lake once: in the table, or (poisoned members) in the dead letters.
    let stored = table_events(&scan_all(&client, &events_table).await);
    let dead: Vec<serde_json::Value> = read_dead_letters(lake.path())
        .into_iter()
        .filter(|line| line["reason"] == "table_rejected")
        .collect();
    let mut dead_ids = BTreeSet::new();
    for line in &dead {
        let raw: serde_json::Value = serde_json::from_str(line["raw"].as_str().unwrap()).unwrap();
        assert!(raw["member_id"].as_str().unwrap().ends_with('7'), "{line}");
        assert!(
            line["detail"].as_str().unwrap().contains("poisoned"),
            "{line}"
        );
        assert!(
            dead_ids.insert(raw["event_id"].as_str().unwrap().to_owned()),
            "{line}"
        );
    }
    assert!(!dead_ids.is_empty());
    for (id, member) in lake_events(lake.path()) {
        match stored.get(&id) {
            Some((stored_member, count)) => {
                assert_eq!(*count, 1, "{id} stored {count} times");
                assert_eq!(*stored_member, member);
                assert!(
                    !member.ends_with('7'),
                    "{id} of a poisoned member was written"
                );
                assert!(
                    !dead_ids.contains(&id),
                    "{id} both written and dead-lettered"
                );
            }
            None => assert!(dead_ids.remove(&id), "{id} of {member} is lost"),
        }
    }
    assert!(
        dead_ids.is_empty(),
        "dead letters of events the lake lacks: {dead_ids:?}"
    );
    assert_table_matches_lake(&scan_all(&client, &aggregates_table).await, lake.path());

    delete_table(&client, &events_table).await;
    delete_table(&client, &aggregates_table).await;
}

#[test]
fn a_missing_table_fails_readyz_by_name_and_nothing_is_lost_once_it_exists() {
    require(DYNAMODB);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime.block_on(dynamodb_client());
    let events_table = unique_name("events");
    let aggregates_table = runtime.block_on(create_table(&client, "aggregates"));
    let lake = tempfile::tempdir().unwrap();
    let running = Running::start(&mut run_with_tables(
        lake.path(),
        DYNAMODB,
        &events_table,
        &aggregates_table,
    ));
    let body = wait_until(Duration::from_secs(60), "/readyz naming the table", || {
        let (status, body) = http_get(running.http, "/readyz");
        if status == 503 && body.contains("events_table") && body.contains(&events_table) {
            Ok(body)
        } else {
            Err(format!("{status} {body}"))
        }
    });
    assert!(body.contains("ResourceNotFoundException"), "{body}");
    runtime
        .block_on(classpulse::sink::dynamodb::tables::create_table(
            &client,
            &events_table,
        ))
        .unwrap();
    let (code, stdout, _) = running.wait(Duration::from_secs(120));
    assert_eq!(code, Some(0), "{stdout}");
    let stored = table_events(&runtime.block_on(scan_all(&client, &events_table)));
    assert_eq!(stored.len(), lake_events(lake.path()).len());
    assert!(stored.values().all(|(_, count)| *count == 1));
    runtime.block_on(delete_table(&client, &events_table));
    runtime.block_on(delete_table(&client, &aggregates_table));
}

/// A Kafka member writing the events table, with windows short enough to close items (and
/// commit past them) within seconds.
fn kafka_member_with_table(lake: &Path, topic: &str, group: &str, events_table: &str) -> Command {
    let mut command = kafka_member(lake, topic, group);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_DYNAMODB_EVENTS_TABLE", events_table)
        .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "20s");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_member_killed_after_writing_items_leaves_every_event_once() {
    require(KAFKA);
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = create_table(&client, "events").await;
    let (admin, topic) = create_topic(3).await;
    let group = unique_name("group");
    let messages = simulated_messages(11, "2026-11-25T21:00:00Z").await;
    let (events, _) = decode_all(&messages);
    let expected: BTreeSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let lake = tempfile::tempdir().unwrap();

    // The first two thirds, read by a member that writes items, commits past some of them,
    // and is killed while other items are open.
    let cut = messages.len() * 2 / 3;
    produce(&topic, &messages[..cut], 3).await;
    let first = Running::start(&mut kafka_member_with_table(
        lake.path(),
        &topic,
        &group,
        &events_table,
    ));
    let http = first.http;
    wait_until_async(
        Duration::from_secs(60),
        "items written and committed",
        || async move {
            let (_, metrics) = http_get(http, "/metrics");
            let commits = metric_sum(&metrics, "classpulse_source_commits_total");
            let items = metric_sum(&metrics, "classpulse_dynamodb_items_written_total");
            if commits >= 1.0 && items >= 100.0 {
                Ok(())
            } else {
                Err(format!("{commits} commits, {items} items"))
            }
        },
    )
    .await;
    first.signal("KILL");
    let (code, _, _) = tokio::task::spawn_blocking(move || first.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, None);
    let before = table_events(&scan_all(&client, &events_table).await);
    assert!(!before.is_empty() && before.len() < expected.len());

    // The rest, read by a new member from the committed offsets.
    produce(&topic, &messages[cut..], 3).await;
    let second = Running::start(&mut kafka_member_with_table(
        lake.path(),
        &topic,
        &group,
        &events_table,
    ));
    let stored =
        await_table_events(&client, &events_table, &expected, Duration::from_secs(90)).await;
    drain(second).await;
    // The drain may have written open items early: still once each.
    let stored_after = table_events(&scan_all(&client, &events_table).await);
    let twice: Vec<_> = stored_after.iter().filter(|(_, (_, n))| *n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events stored twice: {:?}",
        twice.len(),
        twice.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(stored_after.len(), stored.len());
    assert_eq!(
        stored_after.keys().collect::<BTreeSet<_>>(),
        expected.iter().collect()
    );

    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    delete_table(&client, &events_table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_too_large_for_one_item_is_split_into_parts_dynamodb_accepts() {
    use classpulse::ack::{AckTracker, PartitionId};
    use classpulse::decode::DecodedBatch;
    use classpulse::sink::dynamodb::events::{
        EventsTableSink, PackSettings, MAX_PAYLOAD_BYTES, NAME,
    };
    use classpulse::sink::dynamodb::TableWriter;
    use classpulse::sink::Sink;
    use rand::Rng;
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let table = create_table(&client, "events").await;
    let lake = tempfile::tempdir().unwrap();

    // One member's minute holding 6,000 events with incompressible notes: about 800 KB packed.
    let mut rng = rand::rng();
    let messages: Vec<classpulse::decode::RawMessage> = (0..6u64)
        .map(|offset| {
            let events: Vec<String> = (0..1_000)
                .map(|i| {
                    let note: String = (0..200).map(|_| format!("{:x}", rng.random_range(0..16))).collect();
                    format!(
                        r#"{{"event_id":"e{offset}-{i}","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s1","class_id":"c1","member_id":"m1","event_data":{{"bpm":120,"note":"{note}"}}}}"#
                    )
                })
                .collect();
            classpulse::decode::RawMessage {
                offset,
                timestamp_ms: Some(1_764_090_000_000),
                key: None,
                payload: Some(format!("[{}]", events.join(",")).into()),
            }
        })
        .collect();
    let (events, rejected) = decode_all(&messages);
    assert!(rejected.is_empty(), "{:?}", rejected.first());
    assert_eq!(events.len(), 6_000);

    let sdk = sdk_config().await;
    let endpoint: url::Url = DYNAMODB.parse().unwrap();
    let writer = TableWriter::new(
        classpulse::aws::dynamodb(&sdk, Some(&endpoint), classpulse::aws::Retries::Caller),
        &table,
        NAME,
        4,
        classpulse::health::Health::new(),
    );
    let settings = PackSettings {
        window_ms: 60_000,
        delay_ms: 10_000,
        max_clock_skew_ms: 60_000,
        ttl_days: 1,
        max_payload_bytes: MAX_PAYLOAD_BYTES,
    };
    let dead_letters = classpulse::store::ObjectWriter::open(
        &classpulse::config::LakeConfig {
            location: classpulse::config::LakeLocation::Local(lake.path().to_path_buf()),
            s3_endpoint: None,
            max_events: 1_000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            max_buffer_bytes: 1 << 20,
        },
        "kafka",
        classpulse::health::Health::new(),
        Default::default(),
    )
    .unwrap();
    let mut sink = EventsTableSink::new(writer, settings, dead_letters);
    let acks = AckTracker::new();
    let partition = PartitionId::new("events", 0);
    sink.write(std::sync::Arc::new(DecodedBatch {
        ack: acks.register(&partition, 0, 5),
        partition: partition.clone(),
        generation: 0,
        first_offset: 0,
        last_offset: 5,
        events,
        rejected: Vec::new(),
        received_at_ms: 1_764_090_000_000,
    }))
    .await
    .unwrap();
    assert!(acks.take_committable().is_empty(), "held until written");
    sink.flush_all().await.unwrap();
    assert_eq!(acks.take_committable(), vec![(partition, 6)]);

    let items = scan_all(&client, &table).await;
    assert!(items.len() >= 2, "{} items", items.len());
    for item in &items {
        assert!(item_size(item) <= 400 * 1024, "{}", item_size(item));
        assert_eq!(item["parts"].as_n().unwrap(), &items.len().to_string());
    }
    let stored = table_events(&items);
    assert_eq!(stored.len(), 6_000);
    assert!(stored.values().all(|(member, n)| member == "m1" && *n == 1));
    delete_table(&client, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_stalled_past_the_poll_interval_keeps_the_member_in_its_group() {
    require(KAFKA);
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let events_table = unique_name("events"); // created only later: the sink stalls until then
    let (admin, topic) = create_topic(3).await;
    let group = unique_name("group");
    let messages = simulated_messages(29, "2026-11-26T01:00:00Z").await;
    let (events, _) = decode_all(&messages);
    let expected: BTreeSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    produce(&topic, &messages, 3).await;
    let lake = tempfile::tempdir().unwrap();

    let mut command = kafka_member_with_table(lake.path(), &topic, &group, &events_table);
    command
        // librdkafka puts a member that does not poll for 8 s out of its group.
        .env("CLASSPULSE_KAFKA_PROP_MAX_POLL_INTERVAL_MS", "8000")
        .env("CLASSPULSE_KAFKA_PROP_SESSION_TIMEOUT_MS", "6000")
        .env("CLASSPULSE_CHANNEL_CAPACITY", "2")
        .env("CLASSPULSE_BATCH_MAX_EVENTS", "50");
    let running = Running::start(&mut command);
    await_readiness(running.http, 503, &events_table, Duration::from_secs(60)).await;
    // Stalled for twice the poll interval.
    tokio::time::sleep(Duration::from_secs(16)).await;
    classpulse::sink::dynamodb::tables::create_table(&client, &events_table)
        .await
        .unwrap();
    await_table_events(&client, &events_table, &expected, Duration::from_secs(90)).await;
    let (_, logs) = drain(running).await;
    let logs = logs.join("\n");
    assert!(
        !logs.contains("maximum poll interval") && logs.matches("partitions assigned").count() == 1,
        "the member left its group during the stall:\n{logs}"
    );
    // Nothing lost, nothing twice, in the lake either.
    let lake_ids = lake_events(lake.path());
    assert_eq!(
        lake_ids.keys().collect::<BTreeSet<_>>(),
        expected.iter().collect()
    );
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    delete_table(&client, &events_table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamodb_server_that_hangs_makes_the_task_not_ready_then_nothing_is_lost() {
    require(KAFKA);
    // A server of this test's own: pausing the shared one would stall the other tests.
    let server = PrivateDynamo::start().await;
    let client = server.client().await;
    let events_table = unique_name("events");
    classpulse::sink::dynamodb::tables::create_table(&client, &events_table)
        .await
        .unwrap();
    let (admin, topic) = create_topic(3).await;
    let messages = simulated_messages(12, "2026-11-25T22:00:00Z").await;
    let (events, _) = decode_all(&messages);
    let expected: BTreeSet<String> = events.iter().map(|e| e.event_id.to_string()).collect();
    let (first, rest) = messages.split_at(messages.len() / 3);
    produce(&topic, first, 3).await;
    let lake = tempfile::tempdir().unwrap();
    let mut member =
        kafka_member_with_table(lake.path(), &topic, &unique_name("hang"), &events_table);
    member.env("CLASSPULSE_DYNAMODB_ENDPOINT", &server.endpoint);
    let running = Running::start(&mut member);
    let http = running.http;
    wait_until_async(Duration::from_secs(60), "an item written", || async move {
        let (_, metrics) = http_get(http, "/metrics");
        match metric_sum(&metrics, "classpulse_dynamodb_items_written_total") {
            items if items >= 1.0 => Ok(()),
            items => Err(format!("{items} items")),
        }
    })
    .await;

    // Hung, not refusing: connections open, no answer (as a JVM in a long pause, or a host
    // that stopped scheduling it). Calls time out; after a few the task says it is not ready,
    // naming the table, while it keeps reading into its bounded buffers.
    server.process.signal("STOP");
    produce(&topic, rest, 3).await;
    let reason = await_readiness(running.http, 503, &events_table, Duration::from_secs(90)).await;
    assert!(reason.contains("unreachable"), "{reason}");
    let rss = metric_sum(
        &http_get(running.http, "/metrics").1,
        "classpulse_process_resident_memory_bytes",
    );
    assert!(
        rss < 400.0 * 1024.0 * 1024.0,
        "resident memory {rss} bytes while the table hangs"
    );

    server.process.signal("CONT");
    let stored =
        await_table_events(&client, &events_table, &expected, Duration::from_secs(120)).await;
    let (status, _) = http_get(running.http, "/readyz");
    assert_eq!(status, 200, "ready again");
    drain(running).await;
    assert!(
        stored.values().all(|(_, n)| *n == 1),
        "every event once in the table"
    );
    assert!(expected
        .iter()
        .all(|id| lake_ids(lake.path()).contains_key(id)));
    admin
        .delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
}
