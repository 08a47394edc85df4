//! The DynamoDB tables as the tests read them: a run writing both, the events each table and
//! the lake hold, and the final results they must agree on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arrow_array::cast::AsArray;
use aws_sdk_dynamodb::types::AttributeValue;
use classpulse::aggregate::output::{ClassMinute, ClassSummary, MemberSummary};
use classpulse::sink::dynamodb::events::decode_payload;
use classpulse::sink::dynamodb::Item;

use super::backends::*;
use super::*;

/// `classpulse run` of the small simulation writing both tables through `endpoint`.
pub fn run_with_tables(lake: &Path, endpoint: &str, events: &str, aggregates: &str) -> Command {
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
pub fn table_events(items: &[Item]) -> BTreeMap<String, (String, u32)> {
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
pub async fn await_table_events(
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
pub fn lake_events(lake: &Path) -> BTreeMap<String, String> {
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
pub fn lake_results(
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
pub fn assert_table_matches_lake(items: &[Item], lake: &Path) {
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

/// A Kafka member writing the events table, with windows short enough to close items (and
/// commit past them) within seconds.
pub fn kafka_member_with_table(
    lake: &Path,
    topic: &str,
    group: &str,
    events_table: &str,
) -> Command {
    let mut command = kafka_member(lake, topic, group);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_DYNAMODB_EVENTS_TABLE", events_table)
        .env("CLASSPULSE_DYNAMODB_PACK_WINDOW", "20s");
    command
}
