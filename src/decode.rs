//! Message decoding and validation: the hot path.
//!
//! A message (Kafka value, Kinesis record data, simulator payload) holds one event as a JSON
//! object, a JSON array of events, or newline-delimited events. Each event is decoded and
//! validated on its own, so one bad event never rejects its neighbours; every rejection gets a
//! [`RejectReason`] from a fixed set and a detail naming the field.
//!
//! Each JSON member is read as a [`Scalar`], which accepts any JSON value, so serde itself only
//! fails on malformed JSON and duplicate members. All other rules are checked once, by the
//! `check_*` functions, against the field table in [`crate::event`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use chrono::DateTime;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{
    fields_of, EventType, FieldKind, FieldSpec, Metrics, PerformanceEvent, RawJson, Verdict,
    CLASS_ID, DEVICE_ID, EVENT_CREATED, EVENT_ID, EVENT_TYPE, MEMBER_ID, MIN_EVENT_TIME_MS,
    SCHEMA_VERSION, STUDIO_ID, SUPPORTED_SCHEMA_VERSIONS,
};

/// Why an input was rejected. The string forms are the `reason` label values and the
/// dead-letter `reason` field; the set is fixed so metric cardinality stays small.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not parseable as JSON (or not UTF-8, or empty).
    NotJson,
    /// Larger than `CLASSPULSE_MAX_MESSAGE_BYTES`; not parsed.
    TooLarge,
    /// A required field is absent or null.
    MissingField,
    /// A field holds the wrong JSON type (or the event is not an object).
    BadType,
    /// A string field breaks its format: length, characters, timestamp syntax.
    BadFormat,
    /// A number outside its allowed range.
    OutOfRange,
    /// `event_type` names no known device kind.
    UnknownEventType,
    /// `schema_version` is not one this build understands.
    UnknownSchemaVersion,
    /// The message key names another class than the event.
    WrongKey,
    /// `event_created` is further in the future than `CLASSPULSE_MAX_CLOCK_SKEW`.
    TimestampSkew,
    /// The same member appears twice in one object.
    DuplicateField,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::NotJson,
        RejectReason::TooLarge,
        RejectReason::MissingField,
        RejectReason::BadType,
        RejectReason::BadFormat,
        RejectReason::OutOfRange,
        RejectReason::UnknownEventType,
        RejectReason::UnknownSchemaVersion,
        RejectReason::WrongKey,
        RejectReason::TimestampSkew,
        RejectReason::DuplicateField,
    ];

    /// The reason code as written in dead letters and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NotJson => "not_json",
            RejectReason::TooLarge => "too_large",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadType => "bad_type",
            RejectReason::BadFormat => "bad_format",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::UnknownSchemaVersion => "unknown_schema_version",
            RejectReason::WrongKey => "wrong_key",
            RejectReason::TimestampSkew => "timestamp_skew",
            RejectReason::DuplicateField => "duplicate_field",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: the reason code and a human-readable detail naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// For people: which field, what it held, what is allowed.
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}

/// One message as a source delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Position within its partition (Kafka offset, or the source's ordinal).
    pub offset: u64,
    /// When the message reached the source (Kafka record timestamp, Kinesis approximate
    /// arrival, the simulator's clock), epoch ms. Stable on replay, unlike the time it is read,
    /// so event-time decisions that depend on it replay the same way.
    pub timestamp_ms: Option<i64>,
    /// `studio_id:class_id` when the producer keyed the message.
    pub key: Option<Bytes>,
    /// The payload; `None` for a Kafka tombstone.
    pub payload: Option<Bytes>,
}

/// An input that failed validation, with everything needed to find and replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedInput {
    /// Offset of the message that carried it.
    pub offset: u64,
    /// Index within a batched message; `None` when the whole message was rejected.
    pub index: Option<u32>,
    /// The rejected bytes exactly as received (the element, or the whole message).
    pub raw: Bytes,
    /// Why it was rejected.
    pub rejection: Rejection,
}

/// Limits the decoder enforces, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Messages larger than this are rejected as `too_large` without being parsed.
    pub max_message_bytes: usize,
    /// How far in the future (ms) `event_created` may be before `timestamp_skew`.
    pub max_clock_skew_ms: i64,
}

/// Decodes every event of `message` on its own (see [`Decoder::decode`]).
pub fn decode_message(
    message: &RawMessage,
    limits: &DecodeLimits,
    now_ms: i64,
    events: &mut Vec<PerformanceEvent>,
    rejected: &mut Vec<RejectedInput>,
) {
    Decoder::default().decode(message, limits, now_ms, events, rejected);
}

/// Decodes message after message. The events of one class share its studio and class ids,
/// allocated once for as long as the decoder lives rather than once per message.
#[derive(Default)]
pub struct Decoder {
    interner: Interner,
}

impl Decoder {
    /// Decodes every event of `message`, appending valid events to `events` and rejections to
    /// `rejected`. The clock-skew rule measures from the message's stored timestamp, or `now_ms`
    /// for a message without one.
    pub fn decode(
        &mut self,
        message: &RawMessage,
        limits: &DecodeLimits,
        now_ms: i64,
        events: &mut Vec<PerformanceEvent>,
        rejected: &mut Vec<RejectedInput>,
    ) {
        let interner = &mut self.interner;
        let whole_message_rejected = |rejection: Rejection| RejectedInput {
            offset: message.offset,
            index: None,
            raw: message.payload.clone().unwrap_or_default(),
            rejection,
        };
        let payload = match &message.payload {
            Some(payload) => payload,
            None => {
                let rejection =
                    Rejection::new(RejectReason::NotJson, "message has no payload (tombstone)");
                rejected.push(whole_message_rejected(rejection));
                return;
            }
        };
        if payload.len() > limits.max_message_bytes {
            let detail = format!(
                "message is {} bytes, more than CLASSPULSE_MAX_MESSAGE_BYTES={}",
                payload.len(),
                limits.max_message_bytes
            );
            rejected.push(whole_message_rejected(Rejection::new(
                RejectReason::TooLarge,
                detail,
            )));
            return;
        }
        let ctx = EventContext {
            payload,
            key: message.key.as_deref(),
            limits,
            arrival_ms: message.timestamp_ms.unwrap_or(now_ms),
            offset: message.offset,
        };
        let mut push_outcome =
            |index: Option<u32>, element: &[u8], outcome: Result<PerformanceEvent, Rejection>| {
                match outcome {
                    Ok(event) => events.push(event),
                    Err(rejection) => rejected.push(RejectedInput {
                        offset: message.offset,
                        index,
                        raw: payload.slice_ref(element),
                        rejection,
                    }),
                }
            };

        match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            None => {
                let rejection = Rejection::new(RejectReason::NotJson, "message is empty");
                rejected.push(whole_message_rejected(rejection));
            }
            Some(b'[') => match split_array(payload) {
                Some(elements) => {
                    for (index, element) in elements.into_iter().enumerate() {
                        let outcome = decode_event(element, &ctx, interner);
                        push_outcome(Some(index as u32), element, outcome);
                    }
                }
                None => {
                    let rejection = Rejection::new(
                        RejectReason::NotJson,
                        "batch array: not closed (truncated message?)",
                    );
                    rejected.push(whole_message_rejected(rejection));
                }
            },
            Some(_) => {
                // One event, or several (newline-delimited or concatenated). A piece that is not
                // JSON in a multi-line message means the structure cannot be trusted (a broken
                // string swallows the next lines): fall back to one piece per line, so every good
                // line survives.
                // Most messages hold one event: parse it directly, and split only when serde finds
                // more after it.
                let whole = trim_ascii(payload);
                let first_try = decode_event(whole, &ctx, interner);
                // A failure may also mean several events (a broken line followed by good ones).
                let more_follow = matches!(&first_try, Err(r) if r.reason == RejectReason::NotJson
                && (r.detail.contains("trailing characters") || whole.contains(&b'\n')));
                if !more_follow {
                    push_outcome(None, whole, first_try);
                    return;
                }
                let pieces = split_stream(payload);
                let mut outcomes: Vec<_> = pieces
                    .iter()
                    .map(|piece| (*piece, decode_event(piece, &ctx, interner)))
                    .collect();
                let broken = outcomes.iter().any(
                    |(_, outcome)| matches!(outcome, Err(r) if r.reason == RejectReason::NotJson),
                );
                if broken && payload.contains(&b'\n') {
                    let lines = payload
                        .split(|b| *b == b'\n')
                        .map(trim_ascii)
                        .filter(|line| !line.is_empty());
                    outcomes = lines
                        .map(|line| (line, decode_event(line, &ctx, interner)))
                        .collect();
                }
                let single = outcomes.len() == 1;
                for (index, (piece, outcome)) in outcomes.into_iter().enumerate() {
                    push_outcome((!single).then_some(index as u32), piece, outcome);
                }
            }
        }
    }
}

/// Splits a JSON array into its elements by structure alone (strings and escapes skipped,
/// brackets counted); each element is parsed on its own afterwards. `None` if the array is
/// never closed. Anything after the closing bracket becomes one more (invalid) element.
fn split_array(payload: &[u8]) -> Option<Vec<&[u8]>> {
    let mut elements = Vec::new();
    let mut i = payload.iter().position(|b| *b == b'[')? + 1;
    loop {
        while i < payload.len() && payload[i].is_ascii_whitespace() {
            i += 1;
        }
        match payload.get(i) {
            None => return None,
            Some(b']') => break,
            Some(_) => {}
        }
        let start = i;
        let mut depth = 0usize;
        while i < payload.len() {
            match payload[i] {
                b'"' => {
                    i = string_end(payload, i);
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => break,
                _ => {}
            }
            i += 1;
        }
        elements.push(trim_ascii(&payload[start..i.min(payload.len())]));
        match payload.get(i) {
            Some(b',') => i += 1,
            Some(_) => {}
            None => return None,
        }
    }
    let rest = trim_ascii(&payload[i + 1..]);
    if !rest.is_empty() {
        elements.push(rest);
    }
    Some(elements)
}

/// Splits concatenated or newline-delimited JSON values by structure alone. An object or array
/// ends where its brackets balance (so pretty-printed events stay whole); anything else runs
/// to the end of its line.
fn split_stream(payload: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut i = 0;
    loop {
        while i < payload.len() && payload[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= payload.len() {
            return pieces;
        }
        let start = i;
        i = match payload[i] {
            b'{' | b'[' => value_end(payload, i),
            _ => payload[i..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(payload.len(), |n| i + n),
        };
        pieces.push(&payload[start..i]);
    }
}

/// The index after the object or array starting at `start`, or the end of the payload.
fn value_end(payload: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < payload.len() {
        match payload[i] {
            b'"' => {
                i = string_end(payload, i);
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    payload.len()
}

/// The index after the string whose opening quote is at `quote` (escapes skipped), or the end
/// of the payload for an unterminated string.
fn string_end(payload: &[u8], quote: usize) -> usize {
    let mut i = quote + 1;
    while i < payload.len() {
        match payload[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    payload.len()
}

/// Shares the studio and class ids of the events decoded: one allocation per class, not two
/// per event. Past [`Interner::MAX_CLASSES`] it forgets them all, so ever-new ids cannot grow
/// it without end.
#[derive(Default)]
struct Interner {
    /// The class of the event before: a batch holds one class, so most lookups end here.
    last: Option<(Arc<str>, Arc<str>)>,
    studios: HashMap<Arc<str>, HashSet<Arc<str>, FastHash>, FastHash>,
    classes: usize,
}

type FastHash = foldhash::fast::RandomState;

impl Interner {
    const MAX_CLASSES: usize = 16_384;

    fn class(&mut self, studio_id: &str, class_id: &str) -> (Arc<str>, Arc<str>) {
        if let Some((studio, class)) = &self.last {
            if &**studio == studio_id && &**class == class_id {
                return (Arc::clone(studio), Arc::clone(class));
            }
        }
        let pair = self.lookup(studio_id, class_id);
        self.last = Some(pair.clone());
        pair
    }

    fn lookup(&mut self, studio_id: &str, class_id: &str) -> (Arc<str>, Arc<str>) {
        if let Some((studio, classes)) = self.studios.get_key_value(studio_id) {
            if let Some(class) = classes.get(class_id) {
                return (Arc::clone(studio), Arc::clone(class));
            }
        }
        if self.classes >= Self::MAX_CLASSES {
            self.studios.clear();
            self.classes = 0;
        }
        let studio = match self.studios.get_key_value(studio_id) {
            Some((studio, _)) => Arc::clone(studio),
            None => Arc::from(studio_id),
        };
        let class = Arc::<str>::from(class_id);
        self.studios
            .entry(Arc::clone(&studio))
            .or_default()
            .insert(Arc::clone(&class));
        self.classes += 1;
        (studio, class)
    }
}

fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// What one event is checked against besides its own content.
struct EventContext<'a> {
    /// The whole message: the event's strings are kept as slices of it.
    payload: &'a Bytes,
    key: Option<&'a [u8]>,
    limits: &'a DecodeLimits,
    arrival_ms: i64,
    offset: u64,
}

/// Decodes and validates one event (a JSON object).
fn decode_event(
    bytes: &[u8],
    ctx: &EventContext<'_>,
    interner: &mut Interner,
) -> Result<PerformanceEvent, Rejection> {
    let wire: WireEvent<'_> =
        serde_json::from_slice(bytes).map_err(|e| serde_rejection("event", e))?;
    let event_id = check_string(&EVENT_ID, &wire.event_id)?;
    let event_type_name = check_string(&EVENT_TYPE, &wire.event_type)?;
    let event_time_ms = check_timestamp(&EVENT_CREATED, &wire.event_created)?;
    let studio_id = check_string(&STUDIO_ID, &wire.studio_id)?;
    let class_id = check_string(&CLASS_ID, &wire.class_id)?;
    let member_id = check_string(&MEMBER_ID, &wire.member_id)?;
    let device_id = check_optional_string(&DEVICE_ID, &wire.device_id)?;
    let schema_version = match check_optional_number(&SCHEMA_VERSION, &wire.schema_version) {
        Ok(version) => version.unwrap_or(1.0) as i64,
        Err(rejection) if rejection.reason == RejectReason::OutOfRange => {
            return Err(Rejection::new(
                RejectReason::UnknownSchemaVersion,
                format!(
                    "schema_version {} is not supported (supported: {SUPPORTED_SCHEMA_VERSIONS:?})",
                    wire.schema_version
                ),
            ))
        }
        Err(rejection) => return Err(rejection),
    };
    let event_type = EventType::from_wire(event_type_name).ok_or_else(|| {
        Rejection::new(
            RejectReason::UnknownEventType,
            format!(
                "event_type {:?} is not one of heart_rate, treadmill, rower, bike, free_weights",
                truncate_for_detail(event_type_name)
            ),
        )
    })?;
    let raw_data = wire.event_data.ok_or_else(|| missing("event_data"))?;
    let data: WireData<'_> =
        serde_json::from_str(raw_data.get()).map_err(|e| serde_rejection("event_data", e))?;
    let metrics = check_event_data(event_type, &data)?;

    if let Some(key) = ctx.key {
        if !key_matches(key, studio_id, class_id) {
            return Err(Rejection::new(
                RejectReason::WrongKey,
                format!(
                    "event is for class {studio_id}:{class_id} but the message key is {:?}",
                    truncate_for_detail(&String::from_utf8_lossy(key))
                ),
            ));
        }
    }
    // Judged against the time stored with the message (the broker's), not the time it is
    // read: a replay after a crash or a backlog must reject exactly what the first read did.
    let skew_ms = event_time_ms - ctx.arrival_ms;
    if skew_ms > ctx.limits.max_clock_skew_ms {
        return Err(Rejection::new(
            RejectReason::TimestampSkew,
            format!(
                "event_created is {:.1} s in the future, more than CLASSPULSE_MAX_CLOCK_SKEW={} s",
                skew_ms as f64 / 1000.0,
                ctx.limits.max_clock_skew_ms / 1000
            ),
        ));
    }

    let (studio_id, class_id) = interner.class(studio_id, class_id);
    let share = |text: &str| share(ctx.payload, text);
    Ok(PerformanceEvent {
        event_id: share(event_id),
        event_type,
        event_time_ms,
        studio_id,
        class_id,
        member_id: share(member_id),
        device_id: device_id.map(share),
        schema_version: schema_version as u16,
        metrics,
        event_data: RawJson::parsed(share(raw_data.get())),
        offset: ctx.offset,
        arrival_ms: ctx.arrival_ms,
        verdict: Verdict::Counted,
    })
}

/// `text` as a slice of `payload` when it lies within it (no copy: the usual case, a string
/// without escapes), else as a copy (an unescaped string).
fn share(payload: &Bytes, text: &str) -> ByteString {
    let within = payload.as_ptr_range();
    let range = text.as_bytes().as_ptr_range();
    if within.start <= range.start && range.end <= within.end {
        if let Ok(shared) = ByteString::try_from(payload.slice_ref(text.as_bytes())) {
            return shared;
        }
    }
    ByteString::from(text)
}

fn key_matches(key: &[u8], studio_id: &str, class_id: &str) -> bool {
    key.len() == studio_id.len() + 1 + class_id.len()
        && key.starts_with(studio_id.as_bytes())
        && key[studio_id.len()] == b':'
        && key.ends_with(class_id.as_bytes())
}

/// Checks the type-specific fields and builds the typed metrics.
fn check_event_data(event_type: EventType, data: &WireData<'_>) -> Result<Metrics, Rejection> {
    let mut metrics = Metrics::default();
    for spec in fields_of(event_type) {
        let value = data.get(spec.name);
        match spec.kind {
            FieldKind::Number { .. } => {
                let number = check_optional_number(spec, value)?;
                if let Some(slot) = metrics.number_mut(spec.name) {
                    *slot = number;
                }
            }
            FieldKind::Integer { .. } => {
                metrics.reps = check_optional_number(spec, value)?.map(|n| n as u32);
            }
            FieldKind::String { .. } => {
                metrics.exercise = check_optional_string(spec, value)?.map(str::to_owned);
            }
            FieldKind::Timestamp | FieldKind::EventType | FieldKind::Object => {
                unreachable!("event_data holds only numbers and strings: {}", spec.name)
            }
        }
    }
    Ok(metrics)
}

fn missing(name: &str) -> Rejection {
    Rejection::new(RejectReason::MissingField, format!("{name} is missing"))
}

fn bad_type(spec: &FieldSpec, expected: &str, found: &Scalar<'_>) -> Rejection {
    Rejection::new(
        RejectReason::BadType,
        format!(
            "{} must be {expected}, found {}",
            spec.name,
            found.type_name()
        ),
    )
}

/// Checks a required string field.
fn check_string<'v>(spec: &FieldSpec, value: &'v Scalar<'_>) -> Result<&'v str, Rejection> {
    check_optional_string(spec, value)?.ok_or_else(|| missing(spec.name))
}

/// Checks a string field that may be absent (required ones are reported missing).
fn check_optional_string<'v>(
    spec: &FieldSpec,
    value: &'v Scalar<'_>,
) -> Result<Option<&'v str>, Rejection> {
    let text = match value {
        Scalar::Absent | Scalar::Null if spec.required => return Err(missing(spec.name)),
        Scalar::Absent | Scalar::Null => return Ok(None),
        Scalar::Str(text) => text.as_ref(),
        other => return Err(bad_type(spec, "a string", other)),
    };
    if let FieldKind::String {
        min_len,
        max_len,
        charset,
    } = spec.kind
    {
        // Ids are ASCII: count and check bytes, not chars.
        let chars = if text.is_ascii() {
            text.len()
        } else {
            text.chars().count()
        };
        if chars < min_len || chars > max_len {
            return Err(Rejection::new(
                RejectReason::BadFormat,
                format!(
                    "{} has {chars} characters, allowed {min_len} to {max_len}",
                    spec.name
                ),
            ));
        }
        let all_allowed = if text.is_ascii() {
            charset.allows_ascii(text.as_bytes())
        } else {
            text.chars().all(|c| charset.allows(c))
        };
        if let Some(bad) = (!all_allowed)
            .then(|| text.chars().find(|c| !charset.allows(*c)))
            .flatten()
        {
            let allowed = charset.pattern().unwrap_or("no control characters");
            return Err(Rejection::new(
                RejectReason::BadFormat,
                format!("{} contains {bad:?}; allowed: {allowed}", spec.name),
            ));
        }
    }
    Ok(Some(text))
}

/// Checks a numeric field that may be absent (required ones are reported missing).
fn check_optional_number(spec: &FieldSpec, value: &Scalar<'_>) -> Result<Option<f64>, Rejection> {
    let (min, max, integer) = match spec.kind {
        FieldKind::Number { min, max } => (min, max, false),
        FieldKind::Integer { min, max } => (min, max, true),
        _ => unreachable!("{} is not numeric", spec.name),
    };
    let number = match value {
        Scalar::Absent | Scalar::Null if spec.required => return Err(missing(spec.name)),
        Scalar::Absent | Scalar::Null => return Ok(None),
        Scalar::Num(number) => *number,
        other => {
            let expected = if integer {
                "a whole number"
            } else {
                "a number"
            };
            return Err(bad_type(spec, expected, other));
        }
    };
    if integer && number.fract() != 0.0 {
        return Err(Rejection::new(
            RejectReason::BadType,
            format!("{} must be a whole number, found {number}", spec.name),
        ));
    }
    if !(min..=max).contains(&number) {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!("{} is {number}, allowed {min} to {max}", spec.name),
        ));
    }
    Ok(Some(number))
}

/// Checks `event_created` and returns epoch milliseconds.
fn check_timestamp(spec: &FieldSpec, value: &Scalar<'_>) -> Result<i64, Rejection> {
    let millis = match value {
        Scalar::Absent | Scalar::Null => return Err(missing(spec.name)),
        Scalar::Num(number) if number.fract() == 0.0 => *number,
        Scalar::Num(number) => {
            return Err(Rejection::new(
                RejectReason::BadType,
                format!(
                    "{} must be whole epoch milliseconds, found {number}",
                    spec.name
                ),
            ))
        }
        Scalar::Str(text) => match parse_rfc3339_millis(text).map_or_else(
            || DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()),
            Ok,
        ) {
            Ok(millis) => millis as f64,
            Err(error) => {
                return Err(Rejection::new(
                    RejectReason::BadFormat,
                    format!(
                        "{} {:?} is not RFC 3339 with an offset: {error}",
                        spec.name,
                        truncate_for_detail(text)
                    ),
                ))
            }
        },
        other => {
            return Err(bad_type(
                spec,
                "an RFC 3339 string or epoch milliseconds",
                other,
            ))
        }
    };
    // Anything past year 9999 in epoch ms is also far beyond i64-safe f64 precision concerns;
    // the skew rule rejects future times, this rejects the impossible past.
    if millis < MIN_EVENT_TIME_MS as f64 || millis > i64::MAX as f64 / 2.0 {
        return Err(Rejection::new(
            RejectReason::OutOfRange,
            format!(
                "{} is {millis} ms since the epoch, before 2000-01-01 or absurdly late",
                spec.name
            ),
        ));
    }
    Ok(millis as i64)
}

/// Epoch milliseconds of the common RFC 3339 shapes, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`,
/// without chrono's general parser. `None` for anything else (chrono then decides).
fn parse_rfc3339_millis(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = bytes.get(range)?;
        slice.iter().try_fold(0i64, |value, b| {
            b.is_ascii_digit().then(|| value * 10 + i64::from(b - b'0'))
        })
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None; // leap seconds and invalid fields: let chrono decide
    }
    let mut i = 19;
    let mut millis = 0;
    if bytes[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let fraction = &bytes[start..i];
        if fraction.is_empty() {
            return None;
        }
        for (position, b) in fraction.iter().take(3).enumerate() {
            millis += i64::from(b - b'0') * [100, 10, 1][position];
        }
    }
    let offset_seconds = match bytes.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits(i + 1..i + 3)?;
            let minutes = digits(i + 4..i + 6)?;
            let _ = (h1, h2, m1, m2);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)?;
    let days = date
        .signed_duration_since(chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?)
        .num_days();
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds) * 1000) + millis)
}

fn truncate_for_detail(text: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// Maps a serde_json error to a rejection. Member values are [`Scalar`]s, which accept any
/// JSON, so only malformed JSON, duplicate members, numbers beyond f64 and non-objects land here.
fn serde_rejection(what: &str, error: serde_json::Error) -> Rejection {
    let message = error.to_string();
    let reason = if message.starts_with("duplicate field") {
        RejectReason::DuplicateField
    } else if message.starts_with("number out of range") {
        RejectReason::OutOfRange
    } else if message.starts_with("invalid type") {
        RejectReason::BadType
    } else {
        RejectReason::NotJson
    };
    Rejection::new(reason, format!("{what}: {message}"))
}

/// Any JSON value, reduced to what validation needs. Never fails to deserialize.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// The member is not there.
    #[default]
    Absent,
    /// JSON `null`.
    Null,
    /// Any JSON number.
    Num(f64),
    /// A JSON string (borrowed when it had no escapes).
    Str(Cow<'a, str>),
    /// A boolean, array or object, by type name.
    Other(&'static str),
}

impl Scalar<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Absent => "nothing",
            Scalar::Null => "null",
            Scalar::Num(_) => "a number",
            Scalar::Str(_) => "a string",
            Scalar::Other(name) => name,
        }
    }
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Num(number) => write!(f, "{number}"),
            Scalar::Str(text) => write!(f, "{:?}", truncate_for_detail(text)),
            other => f.write_str(other.type_name()),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Num(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object"))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The base members of an event; anything else at the top level is ignored.
#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(default, borrow)]
    event_id: Scalar<'a>,
    #[serde(default, borrow)]
    event_type: Scalar<'a>,
    #[serde(default, borrow)]
    event_created: Scalar<'a>,
    #[serde(default, borrow)]
    studio_id: Scalar<'a>,
    #[serde(default, borrow)]
    class_id: Scalar<'a>,
    #[serde(default, borrow)]
    member_id: Scalar<'a>,
    #[serde(default, borrow)]
    device_id: Scalar<'a>,
    #[serde(default, borrow)]
    schema_version: Scalar<'a>,
    #[serde(default, borrow)]
    event_data: Option<&'a RawValue>,
}

/// The known `event_data` members of every type; which ones count depends on the type.
#[derive(Deserialize)]
struct WireData<'a> {
    #[serde(default, borrow)]
    bpm: Scalar<'a>,
    #[serde(default, borrow)]
    speed_kph: Scalar<'a>,
    #[serde(default, borrow)]
    incline_pct: Scalar<'a>,
    #[serde(default, borrow)]
    distance_m: Scalar<'a>,
    #[serde(default, borrow)]
    calories: Scalar<'a>,
    #[serde(default, borrow)]
    stroke_rate_spm: Scalar<'a>,
    #[serde(default, borrow)]
    watts: Scalar<'a>,
    #[serde(default, borrow)]
    cadence_rpm: Scalar<'a>,
    #[serde(default, borrow)]
    exercise: Scalar<'a>,
    #[serde(default, borrow)]
    reps: Scalar<'a>,
    #[serde(default, borrow)]
    weight_kg: Scalar<'a>,
}

impl<'a> WireData<'a> {
    fn get(&self, name: &str) -> &Scalar<'a> {
        match name {
            "bpm" => &self.bpm,
            "speed_kph" => &self.speed_kph,
            "incline_pct" => &self.incline_pct,
            "distance_m" => &self.distance_m,
            "calories" => &self.calories,
            "stroke_rate_spm" => &self.stroke_rate_spm,
            "watts" => &self.watts,
            "cadence_rpm" => &self.cadence_rpm,
            "exercise" => &self.exercise,
            "reps" => &self.reps,
            "weight_kg" => &self.weight_kg,
            _ => unreachable!("event_data field {name} is missing from WireData"),
        }
    }
}

#[cfg(test)]
mod tests;
