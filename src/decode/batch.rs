//! Decoded batches: the unit that flows from the decoder to the aggregate stage and the sinks,
//! and the decode stage that cuts raw batches into them and registers each with the
//! acknowledgements.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::mpsc;

use super::{DecodeLimits, Decoder, RejectReason, RejectedInput};
use crate::ack::{AckToken, AckTracker, PartitionId};
use crate::erasure::{Screen, Suppression};
use crate::event::{EventType, PerformanceEvent, Verdict};
use crate::metrics;
use crate::source::RawBatch;
use crate::stats::Stats;

/// The unit that flows from the decoder to the sinks: the outcome of decoding consecutive
/// messages of one partition.
#[derive(Debug)]
pub struct DecodedBatch {
    /// The partition the messages came from.
    pub partition: PartitionId,
    /// The partition's turn of ownership when the messages were read.
    pub generation: u64,
    /// Offset of the first message in the batch.
    pub first_offset: u64,
    /// Offset of the last message in the batch.
    pub last_offset: u64,
    /// Valid events, in message order.
    pub events: Vec<PerformanceEvent>,
    /// Inputs that failed validation, in message order.
    pub rejected: Vec<RejectedInput>,
    /// When the decoder received the messages (epoch ms).
    pub received_at_ms: i64,
    /// Held until every sink has made its part durable.
    pub ack: AckToken,
}

/// Decides each event's verdict where no aggregate stage does (a redrive: its events come
/// after their classes' aggregates are final).
pub type Judge = Arc<dyn Fn(&PerformanceEvent) -> Verdict + Send + Sync>;

/// The next stage stopped accepting batches.
#[derive(Debug, thiserror::Error)]
#[error("a sink stopped accepting batches")]
pub struct Closed;

/// Where the decoder sends its batches.
pub enum Downstream {
    /// Straight to every sink.
    Sinks(Vec<mpsc::Sender<Arc<DecodedBatch>>>),
    /// To the aggregate stage, which passes them on.
    Aggregates(mpsc::Sender<DecodedBatch>),
}

/// The decode stage: raw messages in, batches of about `batch_max_events` validated events
/// out to the aggregate stage or, without one, to every sink.
#[allow(clippy::too_many_arguments)] // the stage's inputs, each named at its one call
pub async fn decode_stage(
    mut input: mpsc::Receiver<RawBatch>,
    downstream: Downstream,
    limits: DecodeLimits,
    batch_max_events: usize,
    acks: AckTracker,
    stats: Arc<Stats>,
    source_kind: &'static str,
    judge: Option<Judge>,
    suppression: Suppression,
) -> Result<(), Closed> {
    let mut decoder = Decoder::default();
    let mut screen = Screen::new(suppression);
    screen.loaded().await;
    while let Some(raw) = input.recv().await {
        let now_ms = Utc::now().timestamp_millis();
        metrics::record_message_ages(
            source_kind,
            raw.messages
                .iter()
                .filter_map(|message| message.timestamp_ms)
                .map(|sent_ms| (now_ms - sent_ms).max(0) as f64 / 1000.0),
        );
        for mut batch in decode_batch(&mut decoder, raw, &limits, batch_max_events, now_ms, &acks) {
            record_decoded(&stats, source_kind, &batch);
            if screen.refresh() {
                metrics::record_erased(screen_out(&mut screen, &mut batch));
            }
            if let Some(judge) = &judge {
                let (mut duplicate, mut late) = (0, 0);
                for event in &mut batch.events {
                    event.verdict = judge(event);
                    duplicate += u64::from(event.verdict == Verdict::Duplicate);
                    late += u64::from(event.verdict == Verdict::Late);
                }
                Stats::add(&stats.duplicates, duplicate);
                Stats::add(&stats.late, late);
                metrics::record_verdicts(duplicate, late);
            }
            match &downstream {
                Downstream::Aggregates(output) => output.send(batch).await.map_err(|_| Closed)?,
                Downstream::Sinks(outputs) => {
                    let batch = Arc::new(batch);
                    for output in outputs {
                        output.send(Arc::clone(&batch)).await.map_err(|_| Closed)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Decodes a raw batch into batches of about `max_events` records (cut at message
/// boundaries), each registered with `acks`.
pub fn decode_batch(
    decoder: &mut Decoder,
    raw: RawBatch,
    limits: &DecodeLimits,
    max_events: usize,
    now_ms: i64,
    acks: &AckTracker,
) -> Vec<DecodedBatch> {
    let mut batches = Vec::new();
    let mut events = Vec::new();
    let mut rejected = Vec::new();
    let mut first_offset = None;
    let mut cut =
        |first: &mut Option<u64>, last: u64, events: &mut Vec<_>, rejected: &mut Vec<_>| {
            let Some(first_offset) = first.take() else {
                return;
            };
            batches.push(DecodedBatch {
                partition: raw.partition.clone(),
                first_offset,
                last_offset: last,
                events: std::mem::take(events),
                rejected: std::mem::take(rejected),
                received_at_ms: now_ms,
                generation: raw.generation,
                ack: acks.register(&raw.partition, raw.generation, last),
            });
        };
    let last_offset = raw.messages.last().map(|message| message.offset);
    for message in &raw.messages {
        first_offset.get_or_insert(message.offset);
        decoder.decode(message, limits, now_ms, &mut events, &mut rejected);
        if events.len() + rejected.len() >= max_events {
            cut(
                &mut first_offset,
                message.offset,
                &mut events,
                &mut rejected,
            );
        }
    }
    if let Some(last) = last_offset {
        cut(&mut first_offset, last, &mut events, &mut rejected);
    }
    batches
}

/// Leaves out of `batch` the events and rejected inputs of erased members (a rejected input
/// when its `member_id` can be read); returns how many.
fn screen_out(screen: &mut Screen, batch: &mut DecodedBatch) -> u64 {
    let before = batch.events.len() + batch.rejected.len();
    batch
        .events
        .retain(|event| !screen.erased(&event.member_id));
    batch.rejected.retain(|rejected| {
        member_id_in(&rejected.raw).is_none_or(|member_id| !screen.erased(member_id))
    });
    (before - batch.events.len() - batch.rejected.len()) as u64
}

/// The first `"member_id": "..."` string in `raw`, however malformed the rest: what a rejected
/// input says of its member.
pub(crate) fn member_id_in(raw: &[u8]) -> Option<&str> {
    const NAME: &[u8] = b"\"member_id\"";
    let at = memchr::memmem::find(raw, NAME)? + NAME.len();
    let rest = raw[at..].trim_ascii_start().strip_prefix(b":")?;
    let value = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr(b'"', value)?;
    std::str::from_utf8(&value[..end]).ok()
}

fn record_decoded(stats: &Stats, source_kind: &'static str, batch: &DecodedBatch) {
    let mut by_type = [0u64; 5];
    for event in &batch.events {
        by_type[EventType::ALL
            .iter()
            .position(|t| *t == event.event_type)
            .unwrap_or(0)] += 1;
    }
    let mut by_reason = [0u64; 11];
    for rejected in &batch.rejected {
        let index = RejectReason::ALL
            .iter()
            .position(|r| *r == rejected.rejection.reason)
            .unwrap_or(0);
        by_reason[index] += 1;
        Stats::add(&stats.rejected[index], 1);
    }
    let messages = (batch.last_offset - batch.first_offset + 1) as usize;
    Stats::add(&stats.messages, messages as u64);
    Stats::add(&stats.events, batch.events.len() as u64);
    metrics::record_decoded(source_kind, messages, &by_type, &by_reason);
}
