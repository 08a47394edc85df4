use super::time::parse_rfc3339_millis;
use super::*;
use crate::event::{EventType, MIN_EVENT_TIME_MS};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW_MS: i64 = 1_764_090_000_000; // 2025-11-25T17:00:00Z

fn limits() -> DecodeLimits {
    DecodeLimits {
        max_message_bytes: 64 * 1024,
        max_clock_skew_ms: 60_000,
    }
}

fn heart_rate() -> Value {
    json!({
        "event_id": "01JD6Z8K9Q3V7N2M4P5R6S7T8U",
        "event_type": "heart_rate",
        "event_created": "2025-11-25T16:59:58.250Z",
        "studio_id": "studio-0007",
        "class_id": "20251125T1700-hiit",
        "member_id": "m00070042",
        "device_id": "hr:0a:1b:2c",
        "event_data": { "bpm": 142 }
    })
}

fn event_of(event_type: &str, data: Value) -> Value {
    let mut event = heart_rate();
    event["event_type"] = json!(event_type);
    event["event_data"] = data;
    event
}

fn message_with_key(payload: &[u8], key: Option<&str>) -> RawMessage {
    RawMessage {
        offset: 41,
        timestamp_ms: None,
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        payload: Some(Bytes::copy_from_slice(payload)),
    }
}

fn decode(payload: &[u8]) -> (Vec<PerformanceEvent>, Vec<RejectedInput>) {
    decode_keyed(payload, None)
}

fn decode_keyed(payload: &[u8], key: Option<&str>) -> (Vec<PerformanceEvent>, Vec<RejectedInput>) {
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    decode_message(
        &message_with_key(payload, key),
        &limits(),
        NOW_MS,
        &mut events,
        &mut rejected,
    );
    (events, rejected)
}

/// Decodes one event and returns its rejection (panics if it was accepted).
fn reject(event: &Value) -> Rejection {
    let (events, rejected) = decode(event.to_string().as_bytes());
    assert!(events.is_empty(), "expected a rejection for {event}");
    assert_eq!(rejected.len(), 1);
    rejected[0].rejection.clone()
}

fn assert_rejected(event: &Value, reason: RejectReason, detail_mentions: &str) {
    let rejection = reject(event);
    assert_eq!(rejection.reason, reason, "{event} -> {}", rejection.detail);
    assert!(
        rejection.detail.contains(detail_mentions),
        "detail {:?} should mention {detail_mentions:?}",
        rejection.detail
    );
}

#[test]
fn a_valid_heart_rate_event_decodes_fully() {
    let (events, rejected) = decode(heart_rate().to_string().as_bytes());
    assert!(rejected.is_empty(), "{rejected:?}");
    let event = &events[0];
    assert_eq!(&*event.event_id, "01JD6Z8K9Q3V7N2M4P5R6S7T8U");
    assert_eq!(event.event_type, EventType::HeartRate);
    assert_eq!(event.event_time_ms, NOW_MS - 1750);
    assert_eq!(
        (&*event.studio_id, &*event.class_id, &*event.member_id),
        ("studio-0007", "20251125T1700-hiit", "m00070042")
    );
    assert_eq!(event.device_id.as_deref(), Some("hr:0a:1b:2c"));
    assert_eq!(event.schema_version, 1);
    assert_eq!(event.metrics.bpm, Some(142.0));
    assert_eq!(event.offset, 41);
}

#[test]
fn every_type_decodes_its_metrics() {
    let cases = [
        (
            "treadmill",
            json!({"speed_kph": 10.5, "incline_pct": -2, "distance_m": 1200.0, "calories": 80}),
        ),
        (
            "rower",
            json!({"stroke_rate_spm": 28, "watts": 210, "distance_m": 900}),
        ),
        (
            "bike",
            json!({"cadence_rpm": 95, "watts": 260, "distance_m": 5000, "calories": 120.5}),
        ),
        (
            "free_weights",
            json!({"exercise": "squat", "reps": 10, "weight_kg": 60}),
        ),
    ];
    for (event_type, data) in cases {
        let (events, rejected) = decode(event_of(event_type, data).to_string().as_bytes());
        assert!(rejected.is_empty(), "{event_type}: {rejected:?}");
        let metrics = &events[0].metrics;
        match event_type {
            "treadmill" => assert_eq!(
                (metrics.speed_kph, metrics.incline_pct, metrics.calories),
                (Some(10.5), Some(-2.0), Some(80.0))
            ),
            "rower" => assert_eq!(
                (metrics.stroke_rate_spm, metrics.watts, metrics.calories),
                (Some(28.0), Some(210.0), None)
            ),
            "bike" => assert_eq!(
                (metrics.cadence_rpm, metrics.distance_m),
                (Some(95.0), Some(5000.0))
            ),
            _ => assert_eq!(
                (metrics.exercise.as_deref(), metrics.reps, metrics.weight_kg),
                (Some("squat"), Some(10), Some(60.0))
            ),
        }
    }
}

#[test]
fn epoch_millis_and_offsets_are_event_time() {
    let mut event = heart_rate();
    event["event_created"] = json!(NOW_MS - 5000);
    assert_eq!(
        decode(event.to_string().as_bytes()).0[0].event_time_ms,
        NOW_MS - 5000
    );
    event["event_created"] = json!("2025-11-25T11:59:55-05:00");
    assert_eq!(
        decode(event.to_string().as_bytes()).0[0].event_time_ms,
        NOW_MS - 5000
    );
}

proptest! {
    /// The fast RFC 3339 path agrees with chrono wherever it answers.
    #[test]
    fn fast_rfc3339_agrees_with_chrono(millis in MIN_EVENT_TIME_MS..4_102_444_800_000i64, offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59), fraction_digits in 0usize..10) {
        let offset = chrono::FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let time = chrono::DateTime::from_timestamp_millis(millis).unwrap().with_timezone(&offset);
        let mut text = time.format("%Y-%m-%dT%H:%M:%S").to_string();
        if fraction_digits > 0 {
            let nanos = format!("{:09}", time.timestamp_subsec_nanos());
            text.push('.');
            text.push_str(&format!("{nanos:0<10}")[..fraction_digits]);
        }
        text.push_str(&if offset_minutes == 0 { "Z".to_owned() } else { time.format("%:z").to_string() });
        let expected = chrono::DateTime::parse_from_rfc3339(&text).unwrap().timestamp_millis();
        prop_assert_eq!(parse_rfc3339_millis(&text), Some(expected), "{}", text);
    }
}

#[test]
fn fast_rfc3339_leaves_odd_shapes_to_chrono() {
    for text in [
        "2025-11-25 17:00:00Z",
        "2025-11-25T17:00:60Z",
        "2025-02-30T00:00:00Z",
        "2025-11-25T17:00:00",
        "2025-11-25T17:00:00.Z",
        "2025-11-25T17:00:00+0100",
    ] {
        assert_eq!(parse_rfc3339_millis(text), None, "{text}");
    }
}

#[test]
fn unknown_fields_are_kept_raw_but_not_aggregated() {
    let mut event = heart_rate();
    event["event_data"] = json!({"bpm": 150, "rr_intervals_ms": [410, 395], "watts": "n/a"});
    event["firmware"] = json!("2.1.0");
    let (events, rejected) = decode(event.to_string().as_bytes());
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(
        events[0].metrics.watts, None,
        "watts is not a heart_rate metric"
    );
    let raw: Value = serde_json::from_str(events[0].event_data.get()).unwrap();
    assert_eq!(raw["rr_intervals_ms"], json!([410, 395]));
}

#[test]
fn missing_fields() {
    for field in [
        "event_id",
        "event_type",
        "event_created",
        "studio_id",
        "class_id",
        "member_id",
        "event_data",
    ] {
        let mut event = heart_rate();
        event.as_object_mut().unwrap().remove(field);
        assert_rejected(&event, RejectReason::MissingField, field);
    }
    let mut null_member = heart_rate();
    null_member["member_id"] = Value::Null;
    assert_rejected(&null_member, RejectReason::MissingField, "member_id");
    assert_rejected(
        &event_of("rower", json!({"watts": 100, "distance_m": 5})),
        RejectReason::MissingField,
        "stroke_rate_spm",
    );
    assert_rejected(
        &event_of("free_weights", json!({"exercise": "squat", "reps": 5})),
        RejectReason::MissingField,
        "weight_kg",
    );
}

#[test]
fn optional_fields_may_be_absent_or_null() {
    let mut event = heart_rate();
    event.as_object_mut().unwrap().remove("device_id");
    event["schema_version"] = Value::Null;
    assert_eq!(decode(event.to_string().as_bytes()).0.len(), 1);
    let treadmill = event_of(
        "treadmill",
        json!({"speed_kph": 8, "incline_pct": 1, "distance_m": 10, "calories": null}),
    );
    assert_eq!(
        decode(treadmill.to_string().as_bytes()).0[0]
            .metrics
            .calories,
        None
    );
}

#[test]
fn bad_types() {
    let cases = [
        (
            "event_id",
            json!(12345),
            "event_id must be a string, found a number",
        ),
        (
            "studio_id",
            json!(["a"]),
            "studio_id must be a string, found an array",
        ),
        ("event_created", json!(true), "event_created must be"),
        (
            "event_created",
            json!(1764090000000.5),
            "whole epoch milliseconds",
        ),
        (
            "schema_version",
            json!("1"),
            "schema_version must be a whole number",
        ),
        ("event_data", json!("bpm=120"), "invalid type"),
    ];
    for (field, value, detail) in cases {
        let mut event = heart_rate();
        event[field] = value;
        assert_rejected(&event, RejectReason::BadType, detail);
    }
    assert_rejected(
        &event_of("heart_rate", json!({"bpm": "120"})),
        RejectReason::BadType,
        "bpm must be a number, found a string",
    );
    assert_rejected(
        &event_of(
            "free_weights",
            json!({"exercise": "squat", "reps": 2.5, "weight_kg": 5}),
        ),
        RejectReason::BadType,
        "reps must be a whole number",
    );
    let (events, rejected) = decode(b"[1, \"two\", null]");
    assert!(events.is_empty());
    assert_eq!(rejected.len(), 3);
    assert!(
        rejected
            .iter()
            .all(|r| r.rejection.reason == RejectReason::BadType),
        "{rejected:?}"
    );
}

#[test]
fn bad_formats() {
    let cases = [
        ("event_id", json!(""), "event_id has 0 characters"),
        (
            "event_id",
            json!("x".repeat(65)),
            "event_id has 65 characters",
        ),
        (
            "member_id",
            json!("../../etc/passwd"),
            "member_id contains '/'",
        ),
        ("class_id", json!("studio:class"), "class_id contains ':'"),
        ("studio_id", json!("studio 7"), "studio_id contains ' '"),
        (
            "event_created",
            json!("2025-11-25 17:00:00"),
            "not RFC 3339",
        ),
        (
            "event_created",
            json!("2025-11-25T17:00:00"),
            "not RFC 3339",
        ),
    ];
    for (field, value, detail) in cases {
        let mut event = heart_rate();
        event[field] = value;
        assert_rejected(&event, RejectReason::BadFormat, detail);
    }
    assert_rejected(
        &event_of(
            "free_weights",
            json!({"exercise": "", "reps": 5, "weight_kg": 5}),
        ),
        RejectReason::BadFormat,
        "exercise",
    );
}

#[test]
fn out_of_range_values_at_both_edges() {
    let cases = [
        ("heart_rate", "bpm", 25.0, 250.0),
        ("treadmill", "speed_kph", 0.0, 30.0),
        ("treadmill", "incline_pct", -5.0, 30.0),
        ("rower", "stroke_rate_spm", 0.0, 80.0),
        ("rower", "watts", 0.0, 2000.0),
        ("bike", "cadence_rpm", 0.0, 250.0),
        ("bike", "watts", 0.0, 3000.0),
        ("free_weights", "reps", 1.0, 1000.0),
        ("free_weights", "weight_kg", 0.0, 500.0),
    ];
    let base = |event_type: &str| -> Value {
        match event_type {
            "heart_rate" => json!({"bpm": 100}),
            "treadmill" => json!({"speed_kph": 8, "incline_pct": 1, "distance_m": 10}),
            "rower" => json!({"stroke_rate_spm": 20, "watts": 100, "distance_m": 10}),
            "bike" => json!({"cadence_rpm": 80, "watts": 100, "distance_m": 10}),
            _ => json!({"exercise": "squat", "reps": 5, "weight_kg": 20}),
        }
    };
    for (event_type, field, min, max) in cases {
        for (value, accepted) in [
            (min, true),
            (max, true),
            (min - 1.0, false),
            (max + 1.0, false),
        ] {
            let mut data = base(event_type);
            data[field] = json!(value);
            let event = event_of(event_type, data);
            let (events, rejected) = decode(event.to_string().as_bytes());
            if accepted {
                assert_eq!(
                    events.len(),
                    1,
                    "{event_type}.{field}={value} should be accepted: {rejected:?}"
                );
            } else {
                assert_rejected(&event, RejectReason::OutOfRange, field);
            }
        }
    }
    assert_rejected(
        &event_of(
            "treadmill",
            json!({"speed_kph": 8, "incline_pct": 1, "distance_m": -1}),
        ),
        RejectReason::OutOfRange,
        "distance_m",
    );
    let mut ancient = heart_rate();
    ancient["event_created"] = json!(86_400_000);
    assert_rejected(&ancient, RejectReason::OutOfRange, "before 2000-01-01");
    let huge = br#"{"event_id":"a","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s","class_id":"c","member_id":"m","event_data":{"bpm":1e999}}"#;
    let (_, rejected) = decode(huge);
    assert_eq!(
        rejected[0].rejection.reason,
        RejectReason::OutOfRange,
        "{:?}",
        rejected[0].rejection
    );
}

#[test]
fn unknown_event_type_and_schema_version() {
    assert_rejected(
        &event_of("elliptical", json!({})),
        RejectReason::UnknownEventType,
        "elliptical",
    );
    let mut event = heart_rate();
    event["schema_version"] = json!(2);
    assert_rejected(
        &event,
        RejectReason::UnknownSchemaVersion,
        "schema_version 2",
    );
}

#[test]
fn duplicate_members_are_rejected() {
    let payload = br#"{"event_id":"a","event_id":"b","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s","class_id":"c","member_id":"m","event_data":{"bpm":100}}"#;
    assert_eq!(
        decode(payload).1[0].rejection.reason,
        RejectReason::DuplicateField
    );
    let payload = br#"{"event_id":"a","event_type":"heart_rate","event_created":1764090000000,"studio_id":"s","class_id":"c","member_id":"m","event_data":{"bpm":100,"bpm":300}}"#;
    assert_eq!(
        decode(payload).1[0].rejection.reason,
        RejectReason::DuplicateField
    );
}

#[test]
fn timestamp_skew() {
    let mut event = heart_rate();
    event["event_created"] = json!(NOW_MS + 61_000);
    assert_rejected(&event, RejectReason::TimestampSkew, "61.0 s in the future");
    event["event_created"] = json!(NOW_MS + 59_000);
    assert_eq!(decode(event.to_string().as_bytes()).0.len(), 1);
    event["event_created"] = json!("9999-12-31T23:59:59Z");
    assert_rejected(&event, RejectReason::TimestampSkew, "in the future");
}

#[test]
fn timestamp_skew_is_measured_from_the_stored_arrival_time_so_replays_agree() {
    let mut event = heart_rate();
    // Two minutes ahead of the broker's timestamp: in the future when it arrived.
    event["event_created"] = json!(NOW_MS + 120_000);
    let payload = event.to_string();
    let message = RawMessage {
        timestamp_ms: Some(NOW_MS),
        ..message_with_key(payload.as_bytes(), None)
    };
    // Read at once, or an hour later from a backlog or a replay: the same verdict.
    for read_at in [NOW_MS, NOW_MS + 3_600_000] {
        let (mut events, mut rejected) = (Vec::new(), Vec::new());
        decode_message(&message, &limits(), read_at, &mut events, &mut rejected);
        assert!(events.is_empty(), "read at {read_at}");
        assert_eq!(rejected[0].rejection.reason, RejectReason::TimestampSkew);
    }
}

#[test]
fn message_key_must_name_the_events_class() {
    let payload = heart_rate().to_string();
    let (events, _) = decode_keyed(payload.as_bytes(), Some("studio-0007:20251125T1700-hiit"));
    assert_eq!(events.len(), 1);
    let (events, rejected) =
        decode_keyed(payload.as_bytes(), Some("studio-0007:20251125T1800-ride"));
    assert!(events.is_empty());
    assert_eq!(rejected[0].rejection.reason, RejectReason::WrongKey);
    assert!(rejected[0]
        .rejection
        .detail
        .contains("studio-0007:20251125T1700-hiit"));
}

#[test]
fn arrays_and_ndjson_decode_each_event_on_its_own() {
    let good = heart_rate().to_string();
    let mut bad = heart_rate();
    bad["event_data"]["bpm"] = json!(400);
    let bad = bad.to_string();

    let array = format!("[{good},{bad},{good}]");
    let (events, rejected) = decode(array.as_bytes());
    assert_eq!(events.len(), 2);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].index, Some(1));
    assert_eq!(
        &rejected[0].raw[..],
        bad.as_bytes(),
        "the dead letter holds exactly the bad element"
    );

    let ndjson = format!("{good}\n{bad}\n\n{{not json\n{good}\n");
    let (events, rejected) = decode(ndjson.as_bytes());
    assert_eq!(events.len(), 2);
    let reasons: Vec<_> = rejected
        .iter()
        .map(|r| (r.index, r.rejection.reason))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (Some(1), RejectReason::OutOfRange),
            (Some(2), RejectReason::NotJson)
        ]
    );
    assert_eq!(&rejected[1].raw[..], b"{not json");

    let pretty = serde_json::to_string_pretty(&heart_rate()).unwrap();
    let (events, rejected) = decode(pretty.as_bytes());
    assert_eq!(
        (events.len(), rejected.len()),
        (1, 0),
        "a pretty-printed single event is one event"
    );
    assert_eq!(
        decode(b"[]").0.len() + decode(b"[]").1.len(),
        0,
        "an empty batch holds nothing to lose"
    );
}

#[test]
fn splitting_respects_strings_escapes_and_nesting() {
    let mut tricky = heart_rate();
    tricky["event_data"]["note"] = json!("a, b] c} \\\" [{ \n end");
    tricky["event_data"]["nested"] = json!([{"x": [1, {"y": "]"}]}]);
    let tricky = tricky.to_string();
    let good = heart_rate().to_string();

    let (events, rejected) = decode(format!("[ {tricky} ,\n {good} ]").as_bytes());
    assert_eq!((events.len(), rejected.len()), (2, 0), "{rejected:?}");

    let pretty = serde_json::to_string_pretty(&heart_rate()).unwrap();
    let (events, rejected) = decode(format!("{pretty}\n{pretty}{tricky}").as_bytes());
    assert_eq!(
        (events.len(), rejected.len()),
        (3, 0),
        "concatenated pretty events: {rejected:?}"
    );

    let (events, rejected) = decode(format!("[{good}] trailing").as_bytes());
    assert_eq!(events.len(), 1);
    assert_eq!(rejected[0].rejection.reason, RejectReason::NotJson);
    assert_eq!(&rejected[0].raw[..], b"trailing");

    let (events, rejected) = decode(format!("[{good},{good}").as_bytes());
    assert!(events.is_empty(), "an unclosed array is rejected whole");
    assert_eq!(
        (rejected[0].index, rejected[0].rejection.reason),
        (None, RejectReason::NotJson)
    );

    // A truncated line with an open string does not swallow the good lines after it.
    let truncated = &good[..good.len() / 2];
    let (events, rejected) = decode(format!("{good}\n{truncated}\n{good}\n{good}").as_bytes());
    assert_eq!(events.len(), 3, "{rejected:?}");
    assert_eq!(rejected.len(), 1);
    assert_eq!(&rejected[0].raw[..], truncated.as_bytes());
}

#[test]
fn whole_message_rejections() {
    let cases: [(&[u8], RejectReason); 5] = [
        (b"", RejectReason::NotJson),
        (b"   \n ", RejectReason::NotJson),
        (b"[{\"event_id\": ", RejectReason::NotJson),
        (b"\xff\xfe{}", RejectReason::NotJson),
        (b"hello", RejectReason::NotJson),
    ];
    for (payload, reason) in cases {
        let (events, rejected) = decode(payload);
        assert!(events.is_empty());
        assert_eq!(rejected.len(), 1, "{payload:?}");
        assert_eq!(rejected[0].rejection.reason, reason, "{payload:?}");
        assert_eq!(&rejected[0].raw[..], payload, "raw bytes are kept");
    }
    let tombstone = RawMessage {
        offset: 1,
        timestamp_ms: None,
        key: None,
        payload: None,
    };
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    decode_message(&tombstone, &limits(), NOW_MS, &mut events, &mut rejected);
    assert!(rejected[0].rejection.detail.contains("tombstone"));
}

#[test]
fn oversized_messages_are_rejected_unparsed() {
    let mut payload = b"[".to_vec();
    payload.extend(std::iter::repeat_n(b' ', 70 * 1024));
    let (_, rejected) = decode(&payload);
    assert_eq!(rejected[0].rejection.reason, RejectReason::TooLarge);
    assert!(rejected[0]
        .rejection
        .detail
        .contains("CLASSPULSE_MAX_MESSAGE_BYTES=65536"));
    assert_eq!(
        rejected[0].raw.len(),
        payload.len(),
        "the whole message is kept for redrive"
    );
}

#[test]
fn deeply_nested_json_never_overflows_the_stack() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let limits = DecodeLimits {
        max_message_bytes: 1 << 20,
        max_clock_skew_ms: 60_000,
    };
    let decode_big = |payload: String| {
        let (mut events, mut rejected) = (Vec::new(), Vec::new());
        decode_message(
            &message_with_key(payload.as_bytes(), None),
            &limits,
            NOW_MS,
            &mut events,
            &mut rejected,
        );
        (events, rejected)
    };
    // In a known field: skipped without recursion, then rejected for its type.
    let mut in_known = heart_rate().to_string();
    in_known = in_known.replacen(
        "\"member_id\":\"m00070042\"",
        &format!("\"member_id\":{nested}"),
        1,
    );
    let (events, rejected) = decode_big(in_known);
    assert!(events.is_empty());
    assert_eq!(
        rejected[0].rejection.reason,
        RejectReason::BadType,
        "{}",
        rejected[0].rejection.detail
    );
    // In an unknown top-level field: ignored without recursion, the event is accepted.
    let mut in_unknown = heart_rate().to_string();
    in_unknown.insert_str(1, &format!("\"deep\":{nested},"));
    assert_eq!(decode_big(in_unknown).0.len(), 1);
    // As a batch element: kept raw, rejected as not an object.
    let (_, rejected) = decode_big(format!("[{nested}]"));
    assert_eq!(
        rejected[0].rejection.reason,
        RejectReason::BadType,
        "{}",
        rejected[0].rejection.detail
    );
    assert_eq!(rejected[0].raw.len(), nested.len());
}

#[test]
fn reason_codes_are_the_documented_set() {
    // docs/event-contract.md lists these codes; a new reason is added there too.
    let reached: std::collections::BTreeSet<&str> = [
        "not_json",
        "too_large",
        "missing_field",
        "bad_type",
        "bad_format",
        "out_of_range",
        "unknown_event_type",
        "unknown_schema_version",
        "wrong_key",
        "timestamp_skew",
        "duplicate_field",
    ]
    .into_iter()
    .collect();
    let all: std::collections::BTreeSet<&str> =
        RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(reached, all);
}

fn arb_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,64}"
}

prop_compose! {
    fn arb_valid_event()(
        event_id in "[A-Za-z0-9_.:-]{1,64}",
        studio in arb_id(),
        class in arb_id(),
        member in arb_id(),
        age_ms in 0i64..86_400_000,
        rfc3339 in any::<bool>(),
        kind in 0usize..5,
        a in 0.0f64..=1.0,
        b in 0.0f64..=1.0,
        reps in 1u32..=1000,
        exercise in "[a-z ]{1,64}",
    ) -> (Value, EventType) {
        let time_ms = NOW_MS - age_ms;
        let created = if rfc3339 {
            json!(chrono::DateTime::from_timestamp_millis(time_ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        } else {
            json!(time_ms)
        };
        let event_type = EventType::ALL[kind];
        let data = match event_type {
            EventType::HeartRate => json!({"bpm": 25.0 + a * 225.0}),
            EventType::Treadmill => json!({"speed_kph": a * 30.0, "incline_pct": -5.0 + b * 35.0, "distance_m": b * 20000.0}),
            EventType::Rower => json!({"stroke_rate_spm": a * 80.0, "watts": b * 2000.0, "distance_m": a * 9000.0, "calories": b * 500.0}),
            EventType::Bike => json!({"cadence_rpm": a * 250.0, "watts": b * 3000.0, "distance_m": a * 50000.0}),
            EventType::FreeWeights => json!({"exercise": exercise, "reps": reps, "weight_kg": a * 500.0}),
        };
        (json!({
            "event_id": event_id, "event_type": event_type.as_str(), "event_created": created,
            "studio_id": studio, "class_id": class, "member_id": member, "event_data": data,
        }), event_type)
    }
}

proptest! {
    #[test]
    fn valid_events_are_accepted_with_their_values((event, event_type) in arb_valid_event()) {
        let (events, rejected) = decode(event.to_string().as_bytes());
        prop_assert!(rejected.is_empty(), "{:?}", rejected);
        let decoded = &events[0];
        prop_assert_eq!(decoded.event_type, event_type);
        prop_assert_eq!(&*decoded.event_id, event["event_id"].as_str().unwrap());
        prop_assert_eq!(&*decoded.member_id, event["member_id"].as_str().unwrap());
        let raw: Value = serde_json::from_str(decoded.event_data.get()).unwrap();
        prop_assert_eq!(raw, event["event_data"].clone());
    }

    #[test]
    fn batches_account_for_every_element(batch in prop::collection::vec((arb_valid_event(), any::<bool>()), 1..20), ndjson in any::<bool>()) {
        let elements: Vec<String> = batch.iter().map(|((event, _), corrupt)| {
            let mut event = event.clone();
            if *corrupt { event["event_data"] = json!({}); }
            event.to_string()
        }).collect();
        let payload = if ndjson { elements.join("\n") } else { format!("[{}]", elements.join(",")) };
        let (events, rejected) = decode(payload.as_bytes());
        let corrupt = batch.iter().filter(|(_, corrupt)| *corrupt).count();
        prop_assert_eq!(rejected.len(), corrupt);
        prop_assert_eq!(events.len() + rejected.len(), batch.len());
        prop_assert!(rejected.iter().all(|r| r.rejection.reason == RejectReason::MissingField));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_vanish(payload in prop::collection::vec(any::<u8>(), 0..512)) {
        let (events, rejected) = decode(&payload);
        let is_empty_array = serde_json::from_slice::<Vec<Value>>(&payload).is_ok_and(|v| v.is_empty());
        prop_assert!(events.len() + rejected.len() >= 1 || is_empty_array, "{:?} produced nothing", payload);
        for r in &rejected {
            prop_assert!(!r.rejection.detail.is_empty());
            prop_assert!(r.raw.len() <= payload.len());
        }
    }

    #[test]
    fn an_array_decodes_as_its_elements_would_alone(
        batch in prop::collection::vec((arb_valid_event(), 0usize..5, 0usize..4), 1..12),
    ) {
        // Plain elements (read by the fast reader and ended where it stopped), escaped, pretty,
        // invalid and non-JSON ones (cut by structure), between every kind of JSON whitespace.
        let gaps = [" ", "\n", "\t ", "\r\n\u{c}"];
        let elements: Vec<String> = batch.iter().map(|((event, _), kind, _)| match kind {
            0 => event.to_string(),
            1 => event.to_string().replacen("\"event_id\":\"", "\"event_id\":\"\\u0041", 1),
            2 => serde_json::to_string_pretty(event).unwrap(),
            3 => { let mut event = event.clone(); event["event_data"] = json!({}); event.to_string() }
            _ => "nope".to_owned(),
        }).collect();
        let payload: String = elements.iter().zip(&batch).fold("[".to_owned(), |mut payload, (element, (_, _, gap))| {
            if payload.len() > 1 { payload.push(','); }
            payload.push_str(gaps[*gap]);
            payload.push_str(element);
            payload.push_str(gaps[*gap]);
            payload
        }) + "]";
        let (events, rejected) = decode(payload.as_bytes());

        let (mut alone_events, mut alone_rejected) = (Vec::new(), Vec::new());
        for (index, element) in elements.iter().enumerate() {
            let (events, rejected) = decode(element.as_bytes());
            alone_events.extend(events);
            alone_rejected.extend(rejected.into_iter().map(|r| (Some(index as u32), r.rejection, r.raw)));
        }
        prop_assert_eq!(format!("{events:?}"), format!("{alone_events:?}"));
        let rejected: Vec<_> = rejected.into_iter().map(|r| (r.index, r.rejection, r.raw)).collect();
        prop_assert_eq!(rejected, alone_rejected);
    }

    #[test]
    fn arrays_split_correctly_whatever_the_strings_hold(notes in prop::collection::vec(any::<String>(), 1..8)) {
        let elements: Vec<String> = notes.iter().map(|note| {
            let mut event = heart_rate();
            event["event_data"]["note"] = json!(note);
            event.to_string()
        }).collect();
        let (events, rejected) = decode(format!("[{}]", elements.join(",")).as_bytes());
        prop_assert!(rejected.is_empty(), "{:?}", rejected);
        prop_assert_eq!(events.len(), notes.len());
        for (event, note) in events.iter().zip(&notes) {
            let raw: Value = serde_json::from_str(event.event_data.get()).unwrap();
            prop_assert_eq!(raw["note"].as_str().unwrap(), note.as_str());
        }
    }

    #[test]
    fn arbitrary_json_objects_never_panic(event in any::<std::collections::BTreeMap<String, i64>>()) {
        let (events, rejected) = decode(serde_json::to_string(&event).unwrap().as_bytes());
        prop_assert_eq!(events.len() + rejected.len(), 1);
    }
}

#[test]
fn ids_and_event_data_are_slices_of_the_message_and_escaped_strings_copies() {
    // The device id is written with an escape (\u0030 is "0").
    let text = heart_rate()
        .to_string()
        .replace("hr:0a:1b:2c", "hr:\\u0030a:1b:2c");
    let message = message_with_key(text.as_bytes(), None);
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    decode_message(&message, &limits(), NOW_MS, &mut events, &mut rejected);
    assert!(rejected.is_empty(), "{rejected:?}");
    let payload = message.payload.as_ref().unwrap().as_ptr_range();
    let within = |text: &str| payload.contains(&text.as_ptr());
    let event = &events[0];
    assert!(within(&event.event_id) && within(&event.member_id));
    assert!(within(event.event_data.get()));
    assert_eq!(event.event_data.get(), r#"{"bpm":142}"#);
    // The escaped one was unescaped into a copy of its own.
    let device_id = event.device_id.as_deref().unwrap();
    assert_eq!(device_id, "hr:0a:1b:2c");
    assert!(!within(device_id));
}

#[test]
fn one_decoder_shares_a_class_ids_across_messages_and_forgets_them_past_its_limit() {
    let payload = |class: &str| {
        let mut event = heart_rate();
        event["class_id"] = json!(class);
        message_with_key(event.to_string().as_bytes(), None)
    };
    let mut decoder = Decoder::default();
    let (mut events, mut rejected) = (Vec::new(), Vec::new());
    for class in ["a", "b", "a"] {
        decoder.decode(
            &payload(class),
            &limits(),
            NOW_MS,
            &mut events,
            &mut rejected,
        );
    }
    assert!(rejected.is_empty());
    assert!(Arc::ptr_eq(&events[0].class_id, &events[2].class_id));
    assert!(Arc::ptr_eq(&events[0].studio_id, &events[1].studio_id));
    assert!(!Arc::ptr_eq(&events[0].class_id, &events[1].class_id));

    let mut interner = Interner::default();
    let first = interner.class("s", "c0");
    for i in 1..=Interner::MAX_CLASSES {
        interner.class("s", &format!("c{i}"));
    }
    assert!(interner.classes <= Interner::MAX_CLASSES);
    let again = interner.lookup("s", "c0");
    assert_eq!(again, first);
    assert!(
        !Arc::ptr_eq(&again.1, &first.1),
        "forgotten, then made anew"
    );
}
