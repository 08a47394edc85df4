//! Dead letters: every rejected input, with its raw bytes, reason, detail and source position,
//! as zstd-compressed newline-delimited JSON beside the lake. Nothing rejected is lost.

use std::io::Write;

use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::object::{Encoder, ObjectFormat, PartitionObjects};
use crate::decode::DecodedBatch;

/// One line of a dead-letter object.
#[derive(Debug, Serialize)]
pub struct DeadLetterLine<'a> {
    /// Reason code (`RejectReason`).
    pub reason: &'a str,
    /// What was wrong, naming the field.
    pub detail: &'a str,
    /// Source kind.
    pub source: &'a str,
    /// Topic or stream.
    pub stream: &'a str,
    /// Partition number.
    pub partition: u32,
    /// Offset of the message.
    pub position: u64,
    /// Index within a batched message, if the message was a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// The raw input, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a str>,
    /// The raw input in base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_base64: Option<String>,
}

/// Encodes one zstd NDJSON object.
pub struct NdjsonZstEncoder {
    encoder: zstd::stream::Encoder<'static, Vec<u8>>,
    records: usize,
    /// Uncompressed bytes written, bounding what zstd may still hold.
    pending_bytes: usize,
}

impl NdjsonZstEncoder {
    /// An empty object.
    pub fn new() -> NdjsonZstEncoder {
        let encoder = zstd::stream::Encoder::new(Vec::new(), 3)
            .unwrap_or_else(|e| unreachable!("zstd level 3 is valid: {e}"));
        NdjsonZstEncoder {
            encoder,
            records: 0,
            pending_bytes: 0,
        }
    }

    /// Appends one line.
    pub fn append(&mut self, line: &DeadLetterLine<'_>) -> Result<(), String> {
        let mut json = serde_json::to_vec(line).map_err(|e| e.to_string())?;
        json.push(b'\n');
        self.encoder.write_all(&json).map_err(|e| e.to_string())?;
        self.pending_bytes += json.len();
        self.records += 1;
        Ok(())
    }
}

impl Default for NdjsonZstEncoder {
    fn default() -> Self {
        NdjsonZstEncoder::new()
    }
}

impl Encoder for NdjsonZstEncoder {
    fn records(&self) -> usize {
        self.records
    }

    fn buffered_bytes(&self) -> usize {
        // zstd holds at most its window of uncompressed input beyond what it has emitted.
        self.encoder.get_ref().len() + self.pending_bytes.min(1 << 20)
    }

    fn finish(self, _metadata: &[(&'static str, String)]) -> Result<Bytes, String> {
        self.encoder
            .finish()
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }
}

/// The dead-letter object format.
pub struct DeadLetterFormat {
    /// Source kind written in each line.
    pub source_kind: &'static str,
}

impl ObjectFormat for DeadLetterFormat {
    type Encoder = NdjsonZstEncoder;
    const SINK: &'static str = "dead_letters";
    const FOLDER: &'static str = "dead-letters";
    const EXTENSION: &'static str = "ndjson.zst";

    fn append(
        &mut self,
        batch: &DecodedBatch,
        objects: &mut PartitionObjects<NdjsonZstEncoder>,
    ) -> Result<(), String> {
        if batch.rejected.is_empty() {
            return Ok(());
        }
        let received_at = DateTime::<Utc>::from_timestamp_millis(batch.received_at_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let object = objects.for_time(batch.received_at_ms);
        for rejected in &batch.rejected {
            let text = std::str::from_utf8(&rejected.raw).ok();
            let line = DeadLetterLine {
                reason: rejected.rejection.reason.as_str(),
                detail: &rejected.rejection.detail,
                source: self.source_kind,
                stream: &batch.partition.stream,
                partition: batch.partition.index,
                position: rejected.offset,
                index: rejected.index,
                received_at: received_at.clone(),
                raw: text,
                raw_base64: text
                    .is_none()
                    .then(|| base64::engine::general_purpose::STANDARD.encode(&rejected.raw)),
            };
            object.encoder.append(&line)?;
            object.include(rejected.offset, batch.received_at_ms, &batch.ack);
        }
        Ok(())
    }
}
