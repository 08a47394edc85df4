//! The event contract as JSON Schema (draft 2020-12), generated from the field table in
//! [`crate::event`] so producers can validate before they send. The committed copy is
//! `schemas/performance-event.v1.json`; a test fails when it and the code drift apart.

use serde_json::{json, Map, Value};

use crate::event::{fields_of, EventType, FieldKind, FieldSpec, BASE_FIELDS, MIN_EVENT_TIME_MS};

/// Path of the committed schema, relative to the repository root.
pub const SCHEMA_PATH: &str = "schemas/performance-event.v1.json";

/// The schema of one performance event.
pub fn performance_event_schema() -> Value {
    let (properties, required) = object_members(BASE_FIELDS);
    let per_type: Vec<Value> = EventType::ALL
        .iter()
        .map(|event_type| {
            let (data_properties, data_required) = object_members(fields_of(*event_type));
            json!({
                "if": { "properties": { "event_type": { "const": event_type.as_str() } } },
                "then": { "properties": { "event_data": {
                    "type": "object",
                    "required": data_required,
                    "properties": data_properties,
                } } }
            })
        })
        .collect();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "performance-event.v1.json",
        "title": "classpulse performance event, version 1",
        "description": "One measurement from a studio device. A message holds one event, a JSON array of events, or newline-delimited events, all of one class; keyed messages use the key studio_id:class_id.",
        "type": "object",
        "required": required,
        "properties": properties,
        "allOf": per_type,
    })
}

fn object_members(fields: &[FieldSpec]) -> (Map<String, Value>, Vec<&'static str>) {
    let properties = fields
        .iter()
        .map(|field| (field.name.to_owned(), field_schema(field)))
        .collect();
    let required = fields
        .iter()
        .filter(|field| field.required)
        .map(|field| field.name)
        .collect();
    (properties, required)
}

fn field_schema(field: &FieldSpec) -> Value {
    let mut schema = match field.kind {
        FieldKind::Number { min, max } => {
            json!({ "type": "number", "minimum": min, "maximum": max })
        }
        FieldKind::Integer { min, max } => {
            json!({ "type": "integer", "minimum": min as i64, "maximum": max as i64 })
        }
        FieldKind::String {
            min_len,
            max_len,
            charset,
        } => {
            let mut schema =
                json!({ "type": "string", "minLength": min_len, "maxLength": max_len });
            if let Some(pattern) = charset.pattern() {
                schema["pattern"] = json!(pattern);
            }
            schema
        }
        FieldKind::Timestamp => json!({ "oneOf": [
            { "type": "string", "format": "date-time" },
            { "type": "integer", "minimum": MIN_EVENT_TIME_MS },
        ] }),
        FieldKind::EventType => {
            json!({ "type": "string", "enum": EventType::ALL.map(EventType::as_str) })
        }
        FieldKind::Object => json!({ "type": "object" }),
    };
    schema["description"] = json!(field.description);
    schema
}

/// The schema as committed: pretty-printed with a trailing newline.
pub fn performance_event_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&performance_event_schema()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_schema_matches_the_code() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/",
            "schemas/performance-event.v1.json"
        ))
        .expect("schemas/performance-event.v1.json exists");
        assert!(
            committed == performance_event_schema_text(),
            "the event contract changed: run `cargo run -- schema > {SCHEMA_PATH}` and review the diff"
        );
    }

    #[test]
    fn every_type_requires_its_required_fields() {
        let schema = performance_event_schema();
        let clauses = schema["allOf"].as_array().unwrap();
        assert_eq!(clauses.len(), EventType::ALL.len());
        let heart_rate = &clauses[0]["then"]["properties"]["event_data"];
        assert_eq!(heart_rate["required"], json!(["bpm"]));
        assert_eq!(heart_rate["properties"]["bpm"]["maximum"], json!(250.0));
    }
}
