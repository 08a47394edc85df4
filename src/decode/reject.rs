//! Rejections: the fixed set of reasons and the detail naming what was wrong.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

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
    pub(super) fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
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

pub(super) fn truncate_for_detail(text: &str) -> Cow<'_, str> {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => Cow::Owned(format!("{}…", &text[..cut])),
        None => Cow::Borrowed(text),
    }
}

/// Maps a serde_json error to a rejection. Member values are [`Scalar`]s, which accept any
/// JSON, so only malformed JSON, duplicate members, numbers beyond f64 and non-objects land here.
pub(super) fn serde_rejection(what: &str, error: serde_json::Error) -> Rejection {
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
