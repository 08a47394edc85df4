//! Validation of one event against the field table in [`crate::event`]: each rule checked
//! once, by the `check_*` functions.

use bytes::Bytes;
use bytestring::ByteString;
use chrono::DateTime;

use super::reject::{serde_rejection, truncate_for_detail, RejectReason, Rejection};
use super::scan::scan_event;
use super::time::parse_rfc3339_millis;
use super::wire::{Scalar, WireData, WireEvent};
use super::{DecodeLimits, Interner};
use crate::event::{
    fields_of, EventType, FieldKind, FieldSpec, Metrics, PerformanceEvent, RawJson, Verdict,
    CLASS_ID, DEVICE_ID, EVENT_CREATED, EVENT_ID, EVENT_TYPE, MEMBER_ID, MIN_EVENT_TIME_MS,
    SCHEMA_VERSION, STUDIO_ID, SUPPORTED_SCHEMA_VERSIONS,
};

/// What one event is checked against besides its own content.
pub(super) struct EventContext<'a> {
    /// The whole message: the event's strings are kept as slices of it.
    pub(super) payload: &'a Bytes,
    pub(super) key: Option<&'a [u8]>,
    pub(super) limits: &'a DecodeLimits,
    pub(super) arrival_ms: i64,
    pub(super) offset: u64,
}

/// Decodes and validates one event (a JSON object): the fast reader first, serde when it
/// declines.
pub(super) fn decode_event(
    bytes: &[u8],
    ctx: &EventContext<'_>,
    interner: &mut Interner,
) -> Result<PerformanceEvent, Rejection> {
    let (mut wire, mut data) = (WireEvent::default(), WireData::default());
    if scan_event(bytes, &mut wire, &mut data) {
        return validate_event(&wire, Some(&data), ctx, interner);
    }
    let wire = serde_json::from_slice(bytes).map_err(|e| serde_rejection("event", e))?;
    validate_event(&wire, None, ctx, interner)
}

/// Validates an event already read: `scanned_data` is its `event_data` when the fast reader
/// read it, else `None` and the raw `event_data` is read here by serde.
pub(super) fn validate_event(
    wire: &WireEvent<'_>,
    scanned_data: Option<&WireData<'_>>,
    ctx: &EventContext<'_>,
    interner: &mut Interner,
) -> Result<PerformanceEvent, Rejection> {
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
    let read_data: WireData<'_>;
    let data = match scanned_data {
        Some(data) => data,
        None => {
            read_data =
                serde_json::from_str(raw_data).map_err(|e| serde_rejection("event_data", e))?;
            &read_data
        }
    };
    let metrics = check_event_data(event_type, data)?;

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
        event_data: RawJson::parsed(share(raw_data)),
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
        let shared = payload.slice_ref(text.as_bytes());
        // SAFETY: the slice holds exactly the bytes of `text`, a `&str`, so it is UTF-8.
        return unsafe { ByteString::from_bytes_unchecked(shared) };
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
/// Checks `text` against a required string field's rule, as an event's field is checked
/// (`classpulse erase` checks the member ids it is given this way).
pub(crate) fn check_field(spec: &FieldSpec, text: &str) -> Result<(), Rejection> {
    check_string(spec, &Scalar::Str(text.into())).map(|_| ())
}

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
        let ascii = text.is_ascii();
        let chars = if ascii {
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
        let all_allowed = if ascii {
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
