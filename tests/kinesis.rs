//! The Kinesis source against kinesalite and DynamoDB Local: every record lands once, shards
//! are shared evenly through leases, a killed task's shards are taken over and a stopped one's
//! handed off, resharding keeps per-class order, and a restart resumes from the checkpoints.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use classpulse::decode::RawMessage;
use common::backends::*;
use common::*;

/// A lake row: event id, class key, partition, ingested at (epoch ms).
#[derive(Debug)]
struct Row {
    event_id: String,
    #[allow(dead_code)] // shown when a test fails
    partition: i32,
    #[allow(dead_code)] // shown when a test fails
    position: i64,
    class: String,
    ingested_at: i64,
}

fn lake_rows(lake: &std::path::Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for batch in read_lake(lake) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (ids, studios, classes) = (column("event_id"), column("studio_id"), column("class_id"));
        let ingested = batch
            .column_by_name("ingested_at")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .clone();
        let partitions = batch
            .column_by_name("partition")
            .unwrap()
            .as_primitive::<arrow_array::types::Int32Type>()
            .clone();
        let positions = batch
            .column_by_name("position")
            .unwrap()
            .as_primitive::<arrow_array::types::Int64Type>()
            .clone();
        for row in 0..batch.num_rows() {
            rows.push(Row {
                event_id: ids.value(row).to_owned(),
                partition: partitions.value(row),
                position: positions.value(row),
                class: format!("{}:{}", studios.value(row), classes.value(row)),
                ingested_at: ingested.value(row),
            });
        }
    }
    rows
}

/// How many times each event id was sent, over `messages`.
fn sent_ids(messages: &[RawMessage]) -> BTreeMap<String, u32> {
    let (events, _) = decode_all(messages);
    let mut sent = BTreeMap::new();
    for event in &events {
        *sent.entry(event.event_id.to_string()).or_insert(0) += 1;
    }
    sent
}

/// Waits until the lake holds every id of `expected`; fails naming how many are missing.
async fn await_lake(lake: &std::path::Path, expected: &BTreeMap<String, u32>, within: Duration) {
    wait_until_async(within, "every event in the lake", || async move {
        let rows = lake_rows(lake);
        let ids: BTreeSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        let missing = expected
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .count();
        match missing {
            0 => Ok(()),
            _ => Err(format!("{missing} of {} missing", expected.len())),
        }
    })
    .await
}

/// Fails if the lake holds an event id more often than once.
fn assert_no_duplicate_rows(lake: &std::path::Path) {
    assert_no_duplicate_rows_but(lake, |_, _| false);
}

/// Fails if the lake holds an event id more often than once, unless `allowed(id, rows)`.
fn assert_no_duplicate_rows_but(
    lake: &std::path::Path,
    mut allowed: impl FnMut(&str, &[Row]) -> bool,
) {
    let mut counts: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for row in lake_rows(lake) {
        counts.entry(row.event_id.clone()).or_default().push(row);
    }
    let duplicated: Vec<_> = counts
        .iter()
        .filter(|(id, rows)| rows.len() > 1 && !allowed(id, rows))
        .take(5)
        .collect();
    assert!(duplicated.is_empty(), "rows written twice: {duplicated:?}");
}

/// Waits until the checkpoints of all shards add up to `records` user records (everything
/// durable and checkpointed).
async fn await_checkpoints(
    table: &str,
    records: u64,
    within: Duration,
) -> BTreeMap<String, (Option<String>, String, u64)> {
    let dynamodb = &dynamodb_client().await;
    wait_until_async(within, "checkpoints of every record", || async move {
        let leases = leases(dynamodb, table).await;
        let total: u64 = leases.values().map(|(_, _, offset)| offset).sum();
        if total == records {
            Ok(leases)
        } else {
            Err(format!("{total} of {records} records: {leases:?}"))
        }
    })
    .await
}

/// Lease counts per owner, waiting until they are `expected` (sorted) or `within` passes.
async fn await_owners(table: &str, expected: &[usize], within: Duration) -> Vec<usize> {
    let dynamodb = dynamodb_client().await;
    let answer = poll_until_async(within, || async {
        let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
        for (owner, _, _) in leases(&dynamodb, table).await.values() {
            if let Some(owner) = owner {
                *per_owner.entry(owner.clone()).or_insert(0) += 1;
            }
        }
        let mut counts: Vec<usize> = per_owner.into_values().collect();
        counts.sort_unstable();
        if counts == expected {
            Ok(counts)
        } else {
            Err(counts)
        }
    })
    .await;
    answer.unwrap_or_else(|counts| counts)
}

/// A new stream of `shards` shards, and a new application name (and so lease table).
async fn stream_and_app(shards: i32) -> (aws_sdk_kinesis::Client, String, String) {
    require(KINESIS);
    require(DYNAMODB);
    let kinesis = kinesis_client(KINESIS).await;
    let stream = create_stream(&kinesis, shards).await;
    (kinesis, stream, unique_name("app"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_lands_once_checkpoints_reach_the_end_and_a_restart_resumes() {
    let (kinesis, stream, app) = stream_and_app(4).await;

    let mut first = simulated_messages(11, "2026-11-25T17:00:00Z").await;
    let (events, rejected) = decode_all(&first);
    let distinct = sent_ids(&first).len() as u64;
    // A record that is no event at all, in the middle: a dead letter, and the shard moves on.
    let key = first[0].key.clone();
    first.insert(
        first.len() / 2,
        RawMessage {
            offset: 0,
            timestamp_ms: None,
            key,
            payload: Some(bytes::Bytes::from_static(b"this is not json")),
        },
    );
    // Some records KPL-aggregated (five user records in one Kinesis record).
    put_messages(&kinesis, &stream, &first, 5).await;

    let lake = tempfile::tempdir().unwrap();
    let running = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    await_lake(lake.path(), &sent_ids(&first), Duration::from_secs(90)).await;
    let checkpoints = await_checkpoints(&app, first.len() as u64, Duration::from_secs(30)).await;
    assert_eq!(checkpoints.len(), 4, "one lease per shard: {checkpoints:?}");
    let (_, metrics) = http_get(running.http, "/metrics");
    assert_eq!(metric_sum(&metrics, "classpulse_source_leases_held"), 4.0);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("classpulse_source_lag_seconds{")
                && l.contains("source=\"kinesis\"")
                && l.contains(&format!("partition=\"{stream}/"))),
        "lag published per shard"
    );
    let (stdout, _) = drain(running).await;
    assert_eq!(
        summary_number(&stdout, "events in"),
        events.len() as u64,
        "{stdout}"
    );
    let rows = lake_rows(lake.path());
    assert_eq!(rows.len() as u64, distinct);
    assert_no_duplicate_rows(lake.path());
    let dead_letters = read_dead_letters(lake.path());
    assert_eq!(dead_letters.len(), rejected.len() + 1);
    assert!(dead_letters
        .iter()
        .any(|letter| letter["reason"] == "not_json" && letter["stream"] == stream.as_str()));
    // The drain released every lease (graceful hand-off) after checkpointing.
    let dynamodb = dynamodb_client().await;
    let released = leases(&dynamodb, &app).await;
    assert!(
        released.values().all(|(owner, _, _)| owner.is_none()),
        "{released:?}"
    );

    // More records: a restart reads only what is new, from the checkpoints.
    let second = simulated_messages(12, "2026-11-25T18:00:00Z").await;
    let second_events = decode_all(&second).0;
    put_messages(&kinesis, &stream, &second, 0).await;
    let running = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    await_lake(lake.path(), &sent_ids(&second), Duration::from_secs(60)).await;
    await_checkpoints(
        &app,
        (first.len() + second.len()) as u64,
        Duration::from_secs(30),
    )
    .await;
    let (stdout, _) = drain(running).await;
    assert_eq!(
        summary_number(&stdout, "events in"),
        second_events.len() as u64,
        "the restart resumed from the checkpoints: {stdout}"
    );
    assert_no_duplicate_rows(lake.path());

    delete_stream(&kinesis, &stream).await;
    delete_table(&dynamodb, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_share_shards_evenly_a_killed_ones_are_taken_over_and_a_stopped_ones_handed_off() {
    let (kinesis, stream, app) = stream_and_app(6).await;
    let messages = simulated_messages(13, "2026-11-25T19:00:00Z").await;
    let sent = sent_ids(&messages);
    let chunks: Vec<&[RawMessage]> = messages.chunks(messages.len() / 8 + 1).collect();

    // Three tasks share one lake, as ECS tasks share one bucket.
    let lake = tempfile::tempdir().unwrap();
    let first = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    let second = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    put_messages(&kinesis, &stream, chunks[0], 0).await;
    assert_eq!(
        await_owners(&app, &[3, 3], Duration::from_secs(30)).await,
        vec![3, 3],
        "two tasks hold three shards each"
    );
    let third = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    put_messages(&kinesis, &stream, chunks[1], 0).await;
    assert_eq!(
        await_owners(&app, &[2, 2, 2], Duration::from_secs(30)).await,
        vec![2, 2, 2],
        "three tasks hold two shards each"
    );
    for chunk in &chunks[2..5] {
        put_messages(&kinesis, &stream, chunk, 0).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    // SIGKILL: the dead task's shards are taken after its leases expire (3 s here).
    first.signal("KILL");
    let (code, _, _) = tokio::task::spawn_blocking(move || first.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(code, None, "killed by a signal");
    put_messages(&kinesis, &stream, chunks[5], 0).await;
    assert_eq!(
        await_owners(&app, &[3, 3], Duration::from_secs(30)).await,
        vec![3, 3],
        "the survivors took the dead task's shards"
    );

    // SIGTERM: the stopping task checkpoints and releases its leases, and the last one takes
    // them at once, well before they would have expired.
    let (stdout, _) = drain(second).await;
    let released_at = Instant::now();
    let owners = await_owners(&app, &[6], Duration::from_secs(10)).await;
    let handed_off_in = released_at.elapsed();
    assert_eq!(owners, vec![6], "{stdout}");
    assert!(
        handed_off_in < Duration::from_secs(3),
        "hand-off took {handed_off_in:?}: no faster than lease expiry"
    );
    for chunk in &chunks[6..] {
        put_messages(&kinesis, &stream, chunk, 0).await;
    }
    await_lake(lake.path(), &sent, Duration::from_secs(60)).await;
    await_checkpoints(&app, messages.len() as u64, Duration::from_secs(30)).await;
    drain(third).await;
    assert_no_duplicate_rows(lake.path());

    delete_stream(&kinesis, &stream).await;
    delete_table(&dynamodb_client().await, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_and_merges_while_producing_keep_every_event_and_each_classes_order() {
    let (kinesis, stream, app) = stream_and_app(2).await;
    let messages = in_event_time_order(simulated_messages(14, "2026-11-25T20:00:00Z").await);
    let sent = sent_ids(&messages);
    let classes = class_count(&messages);
    let thirds: Vec<&[RawMessage]> = messages.chunks(messages.len() / 3 + 1).collect();
    // Classes end 8 s after their last event, so the test sees every final result.
    let member = |lake: &std::path::Path, stream: &str, app: &str| {
        let mut command = kinesis_member(lake, stream, app);
        command.env("CLASSPULSE_CLASS_IDLE_TIMEOUT", "8s");
        command
    };
    // The walls' records go to a Kafka topic.
    let (_, live_topic) = create_topic(1).await;

    let lake = tempfile::tempdir().unwrap();
    let running = Running::start(
        member(lake.path(), &stream, &app)
            .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
            .env("CLASSPULSE_LIVE_TOPIC", &live_topic)
            .env("CLASSPULSE_LIVE_TILE_KEY", "test-tile-key-0123456789")
            .env("CLASSPULSE_LIVE_INTERVAL", "200ms")
            // The live documents too, as the stream that never resharded has them.
            .env("CLASSPULSE_AGG_FLUSH_INTERVAL", "5s"),
    );
    put_messages(&kinesis, &stream, thirds[0], 0).await;

    // Split shard 0 in two halves; its children are shards 2 and 3.
    split_first_shard(&kinesis, &stream).await;
    put_messages(&kinesis, &stream, thirds[1], 0).await;

    // Merge the upper child of shard 0 with shard 1 (adjacent ranges) into shard 4.
    let shards = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    let id = |suffix: &str| {
        shards
            .shards()
            .iter()
            .find(|s| s.shard_id().ends_with(suffix))
            .unwrap_or_else(|| panic!("no shard {suffix}: {:?}", shards.shards()))
            .shard_id()
            .to_owned()
    };
    kinesis
        .merge_shards()
        .stream_name(&stream)
        .shard_to_merge(id("0003"))
        .adjacent_shard_to_merge(id("0001"))
        .send()
        .await
        .unwrap();
    await_stream_active(&kinesis, &stream).await;
    put_messages(&kinesis, &stream, thirds[2], 0).await;

    await_lake(lake.path(), &sent, Duration::from_secs(90)).await;
    let checkpoints = await_checkpoints(&app, messages.len() as u64, Duration::from_secs(30)).await;
    let resharded_lake = lake.path().to_owned();
    let final_classes = tokio::task::spawn_blocking(move || {
        await_final_classes(&resharded_lake, classes, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let (_, logs) = drain(running).await;
    assert_eq!(final_classes, classes, "{}", logs.join("\n"));
    // A child shard takes over its parents' classes, with the event ids they counted: a
    // producer retry that lands on the other side of a reshard is a duplicate like any other.
    assert_no_duplicate_rows(lake.path());
    assert!(
        logs.iter()
            .any(|line| line.contains("aggregate state taken over from the parent partitions")),
        "{}",
        logs.join("\n")
    );
    // Shards 0, 1 and 3 are closed and finished; 2 and 4 are open.
    for closed in ["0000", "0001", "0003"] {
        let (_, checkpoint, _) = &checkpoints[&id(closed)];
        assert_eq!(checkpoint, "SHARD_END", "{checkpoints:?}");
    }
    assert_eq!(checkpoints.len(), 5, "{checkpoints:?}");

    // Per class, events were read in the order they were sent: a child shard's records only
    // after its parents' (ingested_at never goes back in send order).
    let mut send_index: BTreeMap<String, usize> = BTreeMap::new();
    for (index, event) in decode_all(&messages).0.iter().enumerate() {
        send_index
            .entry(event.event_id.to_string())
            .or_insert(index);
    }
    // Each event when first read (a retry across the reshard is read again later).
    let mut first_read: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for row in lake_rows(lake.path()) {
        let read = first_read
            .entry(row.event_id)
            .or_insert((row.class, row.ingested_at));
        read.1 = read.1.min(row.ingested_at);
    }
    let mut by_class: BTreeMap<String, Vec<(usize, i64)>> = BTreeMap::new();
    for (id, (class, ingested_at)) in first_read {
        by_class
            .entry(class)
            .or_default()
            .push((send_index[&id], ingested_at));
    }
    for (class, mut rows) in by_class {
        rows.sort_unstable();
        let backwards = rows.windows(2).find(|pair| pair[1].1 < pair[0].1);
        assert!(
            backwards.is_none(),
            "class {class}: an event sent later was read earlier: {backwards:?}\n{}",
            logs.join("\n")
        );
    }

    // On the walls' topic, each class's versions grow across every hand-over to a child
    // shard (whose index is its epoch), and its last record is final with every member.
    let records = tokio::task::spawn_blocking({
        let live_topic = live_topic.clone();
        move || common::walls::topic_records(KAFKA, &live_topic, 1)
    })
    .await
    .unwrap();
    type Versions<'a> = BTreeMap<String, Vec<((u64, u64), &'a serde_json::Value)>>;
    let mut versions: Versions = BTreeMap::new();
    for record in &records {
        let key = format!(
            "{}-{}",
            record["studio_id"].as_str().unwrap(),
            record["class_id"].as_str().unwrap()
        );
        let version = (
            record["version"][0].as_u64().unwrap(),
            record["version"][1].as_u64().unwrap(),
        );
        versions.entry(key).or_default().push((version, record));
    }
    assert_eq!(versions.len(), classes, "every class on the walls' topic");
    let mut taken_over = 0;
    for (class, records) in &versions {
        let order: Vec<(u64, u64)> = records.iter().map(|(v, _)| *v).collect();
        assert!(
            order.windows(2).all(|pair| pair[0] < pair[1]),
            "{class}: {order:?}"
        );
        taken_over += usize::from(order.first().map(|v| v.0) != order.last().map(|v| v.0));
        let (_, last) = records.last().unwrap();
        assert_eq!(last["final"], true, "{class}: {order:?}");
        let file = files_under(&lake.path().join("aggregates/members"), ".ndjson")
            .into_iter()
            .find(|file| file.file_stem().is_some_and(|stem| stem == class.as_str()))
            .unwrap_or_else(|| panic!("{class}: no member results"));
        assert_eq!(
            last["members"].as_array().unwrap().len(),
            std::fs::read_to_string(file).unwrap().lines().count(),
            "{class}: the final record holds every member"
        );
    }
    assert!(taken_over > 0, "no class was taken over by a child shard");

    // Each class ends once, with every event, as on a stream that never resharded.
    let (_, unchanged_stream, unchanged_app) = stream_and_app(2).await;
    put_messages(&kinesis, &unchanged_stream, &messages, 0).await;
    let unchanged = tempfile::tempdir().unwrap();
    run_until_final(
        &mut member(unchanged.path(), &unchanged_stream, &unchanged_app),
        unchanged.path(),
        classes,
    )
    .await;
    assert_same_results(lake.path(), unchanged.path());

    for (stream, app) in [(&stream, &app), (&unchanged_stream, &unchanged_app)] {
        delete_stream(&kinesis, stream).await;
        delete_table(&dynamodb_client().await, app).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_frozen_past_its_lease_expiry_is_fenced_off() {
    let (kinesis, stream, app) = stream_and_app(2).await;
    let messages = simulated_messages(15, "2026-11-25T21:00:00Z").await;
    let (before, after) = messages.split_at(messages.len() / 2);
    let lake = tempfile::tempdir().unwrap();
    let frozen = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    put_messages(&kinesis, &stream, before, 0).await;
    await_checkpoints(&app, before.len() as u64, Duration::from_secs(60)).await;

    let dynamodb = dynamodb_client().await;
    let owner_of_all = |leases: BTreeMap<String, (Option<String>, String, u64)>| {
        let owners: BTreeSet<Option<String>> =
            leases.into_values().map(|(owner, _, _)| owner).collect();
        (owners.len() == 1)
            .then(|| owners.into_iter().next().flatten())
            .flatten()
    };
    let stale_owner = owner_of_all(leases(&dynamodb, &app).await).expect("one task holds both");

    // Frozen (as a container the host stops scheduling) for longer than the 3 s lease.
    frozen.signal("STOP");
    let survivor = Running::start(&mut kinesis_member(lake.path(), &stream, &app));
    let new_owner = {
        let (dynamodb, app, stale_owner) = (&dynamodb, &app, &stale_owner);
        wait_until_async(
            Duration::from_secs(30),
            "the other task holding both expired leases",
            || async move {
                match owner_of_all(leases(dynamodb, app).await) {
                    Some(owner) if owner != *stale_owner => Ok(owner),
                    owner => Err(format!("owner {owner:?}")),
                }
            },
        )
        .await
    };
    put_messages(&kinesis, &stream, after, 0).await;
    frozen.signal("CONT");
    // Thawed, the stale task's next renewal is refused: it stops reading and writes nothing
    // more. The survivor keeps both shards and everything lands once.
    await_lake(lake.path(), &sent_ids(&messages), Duration::from_secs(60)).await;
    await_checkpoints(&app, messages.len() as u64, Duration::from_secs(30)).await;
    let (_, frozen_logs) = drain(frozen).await;
    assert!(
        frozen_logs.iter().any(|line| line.contains("lease lost")),
        "the stale task noticed it lost its leases:\n{}",
        frozen_logs.join("\n")
    );
    // Thawed, it was a live task again and got a fair share back by hand-off; drained, it
    // released that, and the survivor holds everything.
    {
        let (dynamodb, app, new_owner) = (&dynamodb, &app, &new_owner);
        wait_until_async(
            Duration::from_secs(10),
            "the survivor holding the released lease",
            || async move {
                match owner_of_all(leases(dynamodb, app).await) {
                    Some(owner) if owner == *new_owner => Ok(()),
                    owner => Err(format!("owner {owner:?}")),
                }
            },
        )
        .await;
    }
    drain(survivor).await;
    assert_no_duplicate_rows(lake.path());

    delete_stream(&kinesis, &stream).await;
    delete_table(&dynamodb, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_delivers_every_record_once_and_checkpoints_them() {
    // kinesis-mock slows down as streams grow: a small stream.
    require(KINESIS_EFO);
    require(DYNAMODB);
    let kinesis = kinesis_client(KINESIS_EFO).await;
    let stream = create_stream(&kinesis, 2).await;
    let app = unique_name("app");
    let messages = simulated_messages(16, "2026-11-25T22:00:00Z").await;
    let (first, second) = messages.split_at(messages.len() / 2);
    put_messages(&kinesis, &stream, first, 5).await;
    let lake = tempfile::tempdir().unwrap();
    let mut member = kinesis_member(lake.path(), &stream, &app);
    member
        .env("CLASSPULSE_KINESIS_ENDPOINT", KINESIS_EFO)
        .env("CLASSPULSE_KINESIS_EFO", "true");
    let running = Running::start(&mut member);
    await_lake(lake.path(), &sent_ids(first), Duration::from_secs(60)).await;
    // Records put while subscribed are pushed, too.
    put_messages(&kinesis, &stream, second, 0).await;
    await_lake(lake.path(), &sent_ids(&messages), Duration::from_secs(60)).await;
    await_checkpoints(&app, messages.len() as u64, Duration::from_secs(30)).await;
    let (_, logs) = drain(running).await;
    assert!(
        logs.iter()
            .any(|line| line.contains("reading by enhanced fan-out")),
        "fan-out, not polling:\n{}",
        logs.join("\n")
    );
    assert_no_duplicate_rows(lake.path());
    delete_stream(&kinesis, &stream).await;
    delete_table(&dynamodb_client().await, &app).await;
}
