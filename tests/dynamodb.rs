//! The DynamoDB sink against DynamoDB Local: both tables round trip, replays change nothing,
//! injected throttling, errors and unprocessed items lose and duplicate nothing, a missing
//! table shows on /readyz, and an oversized item is split.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use classpulse::sink::dynamodb::item_size;
use common::backends::*;
use common::faulty_dynamodb::{FaultCounts, FaultPlan, FaultyDynamo};
use common::members::{expected_max, member_number};
use common::tables::*;
use common::*;

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
            compact_after: None,
            erasure_key: None,
            erasure_refresh: std::time::Duration::from_secs(60),
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

/// The small simulation, paced so that every member's profile is read while their class runs
/// (a lookup never waits: a profile that came after the class was final is no part of it),
/// with the members table and both tables of `endpoint`.
fn run_with_members(
    lake: &std::path::Path,
    endpoint: &str,
    members: &str,
    aggregates: &str,
) -> std::process::Command {
    let mut command = classpulse(lake);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_DYNAMODB_ENDPOINT", endpoint)
        .env("CLASSPULSE_DYNAMODB_MEMBERS_TABLE", members)
        .env("CLASSPULSE_DYNAMODB_AGGREGATES_TABLE", aggregates)
        .env("CLASSPULSE_SIM_STUDIOS", "6")
        .env("CLASSPULSE_SIM_CLASS_MINUTES", "10")
        .env("CLASSPULSE_SIM_DURATION", "20m")
        .env("CLASSPULSE_SIM_SPEEDUP", "120")
        .arg("run");
    command
}

/// The observed maximum items of the aggregates table: member id to (bpm, class id).
fn observed_items(items: &[classpulse::sink::dynamodb::Item]) -> BTreeMap<String, (u16, String)> {
    items
        .iter()
        .filter(|item| item["sk"].as_s().unwrap() == "hr_max_observed")
        .map(|item| {
            let member = item["pk"].as_s().unwrap().strip_prefix("member#").unwrap();
            let bpm = item["hr_max_observed"].as_n().unwrap().parse().unwrap();
            (
                member.to_owned(),
                (bpm, item["class_id"].as_s().unwrap().clone()),
            )
        })
        .collect()
}

/// An observed maximum item as classpulse writes it.
fn observed_item(member: &str, bpm: u16, class: &str) -> classpulse::sink::dynamodb::Item {
    [
        ("pk", AttributeValue::S(format!("member#{member}"))),
        ("sk", AttributeValue::S("hr_max_observed".to_owned())),
        ("hr_max_observed", AttributeValue::N(bpm.to_string())),
        ("class_id", AttributeValue::S(class.to_owned())),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// Every member's result in the lake: (member, class) to its summary.
fn member_results(
    lake: &std::path::Path,
) -> BTreeMap<(String, String), classpulse::aggregate::output::MemberSummary> {
    lake_results(lake)
        .into_values()
        .flat_map(|(_, members, _)| members)
        .map(|member| {
            (
                (member.member_id.to_string(), member.class_id.to_string()),
                member,
            )
        })
        .collect()
}

/// Profiles come from the members table in batches of at most 100 keys, each member's result
/// uses the maximum their profile gives (set by hand or measured, an observed one classpulse
/// wrote earlier, the age formula; the default for a member with no item), and a raise is
/// written to the aggregates table once, conditionally: a second run of the same classes
/// leaves an equal value as it is, writes one that is gone again, and never lowers a higher
/// one written meanwhile by another task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_come_from_the_members_table_and_observed_maximums_only_rise() {
    require(DYNAMODB);
    let client = dynamodb_client().await;
    let members_table = create_members_table(&client).await;
    let aggregates_table = create_table(&client, "aggregates").await;
    let proxy = FaultyDynamo::start(DYNAMODB, FaultPlan::default(), 1).await;
    let lake = tempfile::tempdir().unwrap();
    let mut command = run_with_members(lake.path(), &proxy.url, &members_table, &aggregates_table);
    let profiles = common::members::simulated_profiles(&command);

    // Two members in three have an item; one in five has an observed maximum of 205 already.
    let in_table: Vec<&str> = profiles
        .iter()
        .filter(|(id, _)| member_number(id) % 3 != 2)
        .map(|(_, line)| line.as_str())
        .collect();
    put_profiles(&client, &members_table, &in_table).await;
    let observed_before: BTreeMap<&str, u16> = profiles
        .keys()
        .filter(|id| member_number(id) % 5 == 0)
        .map(|id| (id.as_str(), 205))
        .collect();
    let items: Vec<_> = observed_before
        .keys()
        .map(|member| observed_item(member, 205, "written-by-test"))
        .collect();
    put_items(&client, &aggregates_table, items).await;

    let stdout = tokio::task::spawn_blocking(move || run_to_end(&mut command))
        .await
        .unwrap();
    let results = member_results(lake.path());
    assert!(results.len() > 100, "{stdout}");
    let mut sources = BTreeMap::<&str, usize>::new();
    for ((member, class), result) in &results {
        let profile = (member_number(member) % 3 != 2).then(|| profiles[member].as_str());
        let expected = expected_max(profile, observed_before.get(member.as_str()).copied(), 2026);
        let source = serde_json::to_value(result.hr_max_source).unwrap();
        assert_eq!(
            (result.hr_max_used, source.as_str()),
            (Some(expected.0), Some(expected.1)),
            "{member} in {class}: {profile:?}"
        );
        *sources.entry(expected.1).or_default() += 1;
        if let Some(raised) = result.hr_max_observed {
            assert!(
                raised > expected.0 && raised <= expected.0 + 10,
                "{member}: {raised}"
            );
            assert!(!["manual", "measured"].contains(&expected.1), "{member}");
        }
    }
    eprintln!("maximum sources: {sources:?}");
    for source in ["manual", "measured", "observed", "formula", "default"] {
        assert!(
            sources.contains_key(source),
            "no member's maximum is {source}: {sources:?}"
        );
    }
    // Read in batches, each member's profile and observed maximum once: two keys a member.
    let keys = proxy.counts.batch_get_keys.lock().unwrap().clone();
    let members_seen = results
        .keys()
        .map(|(member, _)| member)
        .collect::<BTreeSet<_>>()
        .len();
    assert!(keys.iter().all(|keys| *keys <= 100), "{keys:?}");
    assert!(
        keys.iter().any(|keys| *keys > 2),
        "one member a call: {keys:?}"
    );
    assert_eq!(keys.iter().sum::<usize>(), 2 * members_seen, "{keys:?}");

    // Each raise is in the table, the highest of the member's classes; none lowered a value.
    let mut raised = BTreeMap::<String, u16>::new();
    for ((member, _), result) in &results {
        if let Some(bpm) = result.hr_max_observed {
            let entry = raised.entry(member.clone()).or_insert(bpm);
            *entry = (*entry).max(bpm);
        }
    }
    let items = observed_items(&scan_all(&client, &aggregates_table).await);
    for (member, bpm) in &observed_before {
        let expected = raised.get(*member).copied().unwrap_or(*bpm).max(*bpm);
        assert_eq!(items[*member].0, expected, "{member}");
    }
    let raised_now: Vec<(&String, &u16)> = raised
        .iter()
        .filter(|(member, _)| !observed_before.contains_key(member.as_str()))
        .collect();
    assert!(
        raised_now.len() >= 3,
        "too few raises to test their writes: {raised:?}"
    );
    for (member, bpm) in &raised_now {
        assert_eq!(items[*member].0, **bpm, "{member}");
    }

    // Meanwhile: one raise gone, one overtaken by a higher value another task wrote, one left
    // as it is but marked. The same classes again, with the same profiles from a file (the
    // table's observed values are not read then, so every class raises as before).
    let (gone, overtaken, left) = (raised_now[0].0, raised_now[1].0, raised_now[2].0);
    client
        .delete_item()
        .table_name(&aggregates_table)
        .set_key(Some(
            observed_item(gone, 0, "")
                .into_iter()
                .filter(|(name, _)| name == "pk" || name == "sk")
                .collect(),
        ))
        .send()
        .await
        .unwrap();
    let meanwhile = vec![
        observed_item(overtaken, 239, "written-by-test"),
        observed_item(left, *raised_now[2].1, "kept-by-test"),
    ];
    put_items(&client, &aggregates_table, meanwhile).await;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), in_table.join("\n")).unwrap();
    let again = tempfile::tempdir().unwrap();
    let mut command = run_with_members(again.path(), DYNAMODB, &members_table, &aggregates_table);
    command
        .env_remove("CLASSPULSE_DYNAMODB_MEMBERS_TABLE")
        .env("CLASSPULSE_MEMBERS_FILE", file.path());
    tokio::task::spawn_blocking(move || run_to_end(&mut command))
        .await
        .unwrap();
    let second = member_results(again.path());
    for member in [gone, overtaken, left] {
        let raises =
            |results: &BTreeMap<(String, String), classpulse::aggregate::output::MemberSummary>| {
                results
                    .iter()
                    .filter(|((id, _), _)| id == member)
                    .filter_map(|(_, result)| result.hr_max_observed)
                    .max()
            };
        assert_eq!(
            raises(&second),
            raises(&results),
            "{member} raised as before"
        );
    }
    let items_after = observed_items(&scan_all(&client, &aggregates_table).await);
    assert_eq!(
        items_after[gone].0, *raised_now[0].1,
        "{gone}: written again"
    );
    assert_eq!(
        items_after[overtaken],
        (239, "written-by-test".to_owned()),
        "never lowered"
    );
    assert_eq!(
        items_after[left],
        (*raised_now[2].1, "kept-by-test".to_owned()),
        "not rewritten"
    );
    for (member, (bpm, _)) in &items {
        assert!(
            items_after[member].0 >= *bpm || member == gone,
            "{member} lowered"
        );
    }

    delete_table(&client, &members_table).await;
    delete_table(&client, &aggregates_table).await;
}
