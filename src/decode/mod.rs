//! Message decoding and validation: the hot path.
//!
//! A message (Kafka value, Kinesis record data, simulator payload) holds one event as a JSON
//! object, a JSON array of events, or newline-delimited events. Each event is decoded and
//! validated on its own, so one bad event never rejects its neighbours; every rejection gets a
//! [`RejectReason`] from a fixed set and a detail naming the field.
//!
//! Each JSON member is read as a `Scalar`, which accepts any JSON value, so reading only fails
//! on malformed JSON and duplicate members. A plain event (no escapes, no nested values but
//! `event_data`) is read in one pass by `scan`; anything else by serde, which also names what
//! is malformed. All other rules are checked once, by the `check_*` functions, against the
//! field table in [`crate::event`], whichever reader read the event.
//!
//! Here the [`Decoder`] (message after message, sharing each class's ids); `framing` finds a
//! message's events, `validate` checks one event (`time` parses its timestamp, `wire` holds
//! the members as both readers fill them, `scan` is the one-pass reader), `reject` names what
//! was wrong, and `batch` cuts the outcome into [`DecodedBatch`]es for the aggregate stage and
//! the sinks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::event::PerformanceEvent;

mod batch;
mod framing;
mod reject;
mod scan;
mod time;
mod validate;
mod wire;

pub(crate) use batch::member_id_in;
pub use batch::{decode_batch, decode_stage, Closed, DecodedBatch, Downstream, Judge};
pub use reject::{RejectReason, RejectedInput, Rejection};

use framing::{split_stream, trim_ascii, Elements, Next};
pub(crate) use validate::check_field;
use validate::{decode_event, validate_event, EventContext};
use wire::{WireData, WireEvent};

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
        // Where this message's outcomes start, should a truncated array take them back.
        let before = (events.len(), rejected.len());
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
            Some(b'[') => {
                if !decode_array(payload, &ctx, interner, &mut push_outcome) {
                    // Cut off mid-array: none of its elements stand on their own.
                    events.truncate(before.0);
                    rejected.truncate(before.1);
                    let rejection = Rejection::new(
                        RejectReason::NotJson,
                        "batch array: not closed (truncated message?)",
                    );
                    rejected.push(whole_message_rejected(rejection));
                }
            }
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

/// Decodes each element of the JSON array `payload` holds, handing its index, bytes and
/// outcome to `push`; `false` if the array is never closed. An element the fast reader reads
/// whole ends where the reader stopped; any other is cut by structure and decoded on its own.
/// Anything after the closing bracket is one more (invalid) element.
fn decode_array<'p>(
    payload: &'p [u8],
    ctx: &EventContext<'_>,
    interner: &mut Interner,
    push: &mut impl FnMut(Option<u32>, &'p [u8], Result<PerformanceEvent, Rejection>),
) -> bool {
    let Some(mut elements) = Elements::new(payload) else {
        return false;
    };
    // The readers slice the text at ASCII bytes only, so one check of the whole payload covers
    // every element; a payload that is not UTF-8 is cut by structure throughout.
    let text = std::str::from_utf8(payload).ok();
    let mut index = 0u32;
    loop {
        let start = match elements.next_start() {
            Next::Element(start) => start,
            Next::Closed => break,
            Next::Truncated => return false,
        };
        let (mut wire, mut data) = (WireEvent::default(), WireData::default());
        let scanned = text
            .and_then(|text| scan::scan_event_at(text, start, &mut wire, &mut data))
            .and_then(|end| elements.end_at(start, end));
        let (element, outcome) = match scanned {
            Some(element) => (element, validate_event(&wire, Some(&data), ctx, interner)),
            None => match elements.end_by_structure(start) {
                Some(element) => (element, decode_event(element, ctx, interner)),
                None => return false,
            },
        };
        push(Some(index), element, outcome);
        index += 1;
    }
    let rest = elements.rest();
    if !rest.is_empty() {
        push(Some(index), rest, decode_event(rest, ctx, interner));
    }
    true
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

#[cfg(test)]
mod tests;
