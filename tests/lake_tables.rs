//! The lake's tables for Athena (`deploy/cloudformation/classpulse.yaml` and
//! `deploy/terraform/lake.tf`) hold exactly the columns the code writes, with their types: the
//! events' Parquet schema, the dead letters' lines, and the class, member and minute results.
//!
//! The JSON tables' columns come from a sample of each line's type with every field filled:
//! a field added to the type must be filled here (the struct literal does not compile
//! without it), and the test then wants it in both templates.

mod common;

use std::fmt::Write as _;

use arrow_schema::{DataType, TimeUnit};
use classpulse::aggregate::heart::{HrMaxSource, ZoneBasis};
use classpulse::aggregate::output::{
    CardioSummary, ClassMinute, ClassSummary, Leader, MemberSummary, Positions, TypeCounts,
};
use classpulse::sink::dead_letter::DeadLetterLine;
use classpulse::sink::lake::SCHEMA;
use common::athena::cloudformation_table;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A JSON value with its objects' fields in the order they were written.
enum Json {
    Null,
    Bool,
    Integer,
    Float,
    String,
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Json, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Json, E> {
                Ok(Json::Bool)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Json, E> {
                Ok(Json::Integer)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Json, E> {
                Ok(Json::Integer)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Json, E> {
                Ok(Json::Float)
            }
            fn visit_str<E>(self, _: &str) -> Result<Json, E> {
                Ok(Json::String)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Json::Object(fields))
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// The Athena (Hive) type of a sample value; `at` names it in a failure.
fn hive_type(value: &Json, at: &str) -> String {
    match value {
        Json::Null => panic!("{at} is null in the sample: fill it, so its type is known"),
        Json::Bool => "boolean".to_owned(),
        Json::Integer => "bigint".to_owned(),
        Json::Float => "double".to_owned(),
        Json::String => "string".to_owned(),
        Json::Array(items) => {
            let first = items
                .first()
                .unwrap_or_else(|| panic!("{at} is empty in the sample: fill it"));
            format!("array<{}>", hive_type(first, &format!("{at}[0]")))
        }
        Json::Object(fields) => {
            let fields: Vec<String> = fields
                .iter()
                .map(|(name, value)| {
                    format!("{name}:{}", hive_type(value, &format!("{at}.{name}")))
                })
                .collect();
            format!("struct<{}>", fields.join(","))
        }
    }
}

/// The columns of a JSON line: its fields and their types.
fn json_columns(sample: &impl serde::Serialize) -> Vec<(String, String)> {
    let text = serde_json::to_string(sample).unwrap();
    let Json::Object(fields) = serde_json::from_str(&text).unwrap() else {
        panic!("a line is an object: {text}");
    };
    fields
        .iter()
        .map(|(name, value)| (name.clone(), hive_type(value, name)))
        .collect()
}

/// The events' columns, from the Parquet schema the lake writes.
fn event_columns() -> Vec<(String, String)> {
    SCHEMA
        .fields()
        .iter()
        .map(|field| {
            let kind = match field.data_type() {
                DataType::Utf8 => "string",
                DataType::Int32 => "int",
                DataType::Int64 => "bigint",
                DataType::Float64 => "double",
                DataType::Boolean => "boolean",
                DataType::Timestamp(TimeUnit::Millisecond, _) => "timestamp",
                other => panic!("{}: no Athena type for {other}", field.name()),
            };
            (field.name().clone(), kind.to_owned())
        })
        .collect()
}

fn machine() -> CardioSummary {
    CardioSummary {
        events: 1,
        distance_m: 1.0,
        calories: 1.0,
        avg_speed_kph: Some(1.0),
        max_speed_kph: Some(1.0),
        avg_watts: Some(1.0),
        max_watts: Some(1.0),
        avg_cadence_rpm: Some(1.0),
        max_cadence_rpm: Some(1.0),
        avg_stroke_rate_spm: Some(1.0),
        max_stroke_rate_spm: Some(1.0),
        work_kj: Some(1.0),
        split_500m_s: Some(1.0),
    }
}

fn leaders() -> Vec<Leader> {
    vec![Leader {
        member_id: Some("m".into()),
        alias: Some("a".into()),
        value: 1.0,
    }]
}

fn counts() -> TypeCounts {
    TypeCounts::from_array([1; 5])
}

fn class_columns() -> Vec<(String, String)> {
    json_columns(&ClassSummary {
        studio_id: "s".into(),
        class_id: "c".into(),
        is_final: true,
        members: 1,
        events: counts(),
        first_event_ms: 0,
        last_event_ms: 0,
        hr_samples: 1,
        hr_avg: Some(1.0),
        zone_seconds: [1.0; 5],
        effort_points: 1.0,
        distance_m: 1.0,
        calories: 1.0,
        calories_hr: 1.0,
        trimp: 1.0,
        work_kj: 1.0,
        sets: 1,
        reps_total: 1,
        volume_kg: 1.0,
        leaderboard_effort: leaders(),
        leaderboard_work: leaders(),
        leaderboard_treadmill: leaders(),
        leaderboard_rower: leaders(),
        leaderboard_bike: leaders(),
        leaderboard_hidden: 1,
        leaderboard_distance: Some(leaders()),
        positions: Positions {
            partition: "events/0".into(),
            first_offset: 0,
            last_offset: 1,
        },
    })
}

fn member_columns() -> Vec<(String, String)> {
    json_columns(&MemberSummary {
        studio_id: "s".into(),
        class_id: "c".into(),
        member_id: "m".into(),
        alias: Some("a".into()),
        is_final: true,
        events: counts(),
        hr_samples: 1,
        hr_min: Some(1.0),
        hr_max: Some(1.0),
        hr_avg: Some(1.0),
        hr_max_used: Some(1),
        hr_max_source: Some(HrMaxSource::Measured),
        hr_max_observed: Some(1),
        zone_basis: Some(ZoneBasis::Max),
        hr_pct_avg: Some(1.0),
        hr_pct_peak: Some(1.0),
        hr_current: Some(1.0),
        hr_pct_current: Some(1.0),
        zone_current: Some(1),
        zone_seconds: [1.0; 5],
        effort_points: 1.0,
        distance_m: 1.0,
        calories: 1.0,
        calories_hr: Some(1.0),
        trimp: Some(1.0),
        work_kj: Some(1.0),
        profile_missing: vec!["weight_kg".into()],
        leaderboard: false,
        treadmill: Some(machine()),
        rower: Some(machine()),
        bike: Some(machine()),
        sets: 1,
        reps_total: 1,
        volume_kg: 1.0,
    })
}

fn minute_columns() -> Vec<(String, String)> {
    json_columns(&ClassMinute {
        studio_id: "s".into(),
        class_id: "c".into(),
        minute_start_ms: 0,
        is_final: true,
        events: 1,
        members_active: 1,
        hr_avg: Some(1.0),
        distance_m: 1.0,
    })
}

fn dead_letter_columns() -> Vec<(String, String)> {
    json_columns(&DeadLetterLine {
        reason: "invalid_json",
        detail: "d",
        source: "kafka",
        stream: "events",
        partition: 0,
        position: 0,
        index: Some(0),
        received_at: "2026-12-03T00:00:00Z".into(),
        raw: Some("r"),
        raw_base64: Some("cg==".into()),
    })
}

/// A table's columns: (name, Athena type).
type Columns = Vec<(String, String)>;

/// Each table: its name in the templates, its columns, and its partition keys.
fn tables() -> Vec<(&'static str, Columns, Vec<&'static str>)> {
    let hourly = vec!["dt", "hour"];
    vec![
        ("events", event_columns(), hourly.clone()),
        ("dead_letters", dead_letter_columns(), hourly),
        ("classes", class_columns(), vec!["dt"]),
        ("members", member_columns(), vec!["dt"]),
        ("minutes", minute_columns(), vec!["dt"]),
    ]
}

/// The lines after the first that starts with `start`, up to the line that closes the block
/// (`end` says whether a line does).
fn block<'a>(text: &'a str, start: &str, end: impl Fn(&str) -> bool) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|line| !line.starts_with(start));
    assert!(lines.next().is_some(), "no line {start:?}");
    lines.take_while(|line| !end(line)).collect()
}

/// `{ name = "x", type = "y" }` lines of a Terraform block, as (name, type).
fn terraform_columns(lines: &[&str]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|line| {
            let entry = line.trim().strip_prefix("{ name = \"")?;
            let entry = entry.strip_suffix("\" },")?;
            let (name, kind) = entry.split_once("\", type = \"")?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

fn listing(columns: &[(String, String)], line: impl Fn(&str, &str) -> String) -> String {
    let mut text = String::new();
    for (name, kind) in columns {
        writeln!(text, "{}", line(name, kind)).unwrap();
    }
    text
}

#[test]
fn the_cloudformation_tables_hold_the_columns_the_code_writes() {
    for (name, columns, keys) in tables() {
        let table = cloudformation_table(name);
        assert!(
            table.columns == columns,
            "CloudFormation table `{name}`: its columns should be\n{}",
            listing(&columns, |column, kind| {
                let kind = if kind.contains(',') {
                    format!("\"{kind}\"")
                } else {
                    kind.to_owned()
                };
                format!("            - {{Name: {column}, Type: {kind}}}")
            })
        );
        let partition_keys: Vec<&str> = table
            .partition_keys
            .iter()
            .map(|(key, kind)| {
                assert_eq!(kind, "string", "{name}: partition key {key}");
                key.as_str()
            })
            .collect();
        assert_eq!(partition_keys, keys, "{name}: partition keys");
        // Partition projection, so no crawler or MSCK REPAIR is ever needed.
        assert!(
            table.text.contains("projection.enabled: \"true\""),
            "{name}: projection"
        );
        for key in &keys {
            assert!(
                table.text.contains(&format!("projection.{key}.type:")),
                "{name}: projection of {key}"
            );
        }
    }
}

#[test]
fn the_terraform_tables_hold_the_columns_the_code_writes() {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/terraform/lake.tf")).unwrap();
    for (table, columns, _) in tables() {
        let lines = block(&text, &format!("    {table} = ["), |line| line == "    ]");
        assert!(
            terraform_columns(&lines) == columns,
            "Terraform table `{table}`: its columns should be\n{}",
            listing(&columns, |name, kind| format!(
                "      {{ name = \"{name}\", type = \"{kind}\" }},"
            ))
        );
    }
}
