//! Hostile input: every malformed, oversized and out-of-range event ends as a dead letter with
//! its reason, in bounded memory.

use std::time::Duration;

use crate::common::backends::*;
use crate::common::*;

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
