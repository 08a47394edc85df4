//! Sinks: where decoded batches go and become durable.
//!
//! Every sink receives every [`DecodedBatch`] (shared, not copied) through its own bounded
//! channel and keeps what it stores: the lake keeps valid events, the dead-letter sink keeps
//! rejected inputs. A sink holds a clone of the batch's [`crate::ack::AckToken`] until its part of the batch
//! is durable; that is how the source learns what it may commit. Sinks retry transient failures
//! themselves (with backoff and jitter) and return an error only when they cannot go on.

pub mod compact;
pub mod dead_letter;
pub mod dead_letter_topic;
pub mod dynamodb;
pub mod lake;
pub mod object;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::config::LakeConfig;
use crate::decode::DecodedBatch;
use crate::store::ObjectWriter;

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Records could not be encoded: a bug, not a backend problem.
    #[error("{sink}: encoding failed: {detail}")]
    Encode {
        /// The sink.
        sink: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The sink's backend could not be set up at start-up.
    #[error("{sink}: cannot start: {detail}")]
    Setup {
        /// The sink.
        sink: &'static str,
        /// What went wrong.
        detail: String,
    },
}

impl SinkError {
    /// Whether trying again can succeed. Transient write failures never reach this type: the
    /// sinks retry them.
    pub fn is_retryable(&self) -> bool {
        match self {
            SinkError::Encode { .. } => false,
            SinkError::Setup { .. } => true,
        }
    }
}

/// A destination for decoded batches.
#[async_trait]
pub trait Sink: Send {
    /// Fixed name: metric label and log field.
    fn name(&self) -> &'static str;

    /// Takes what this sink stores from `batch`; may buffer it and flush it later.
    async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError>;

    /// Flushes what is due by age. Called on every tick of the driver.
    async fn flush_due(&mut self) -> Result<(), SinkError>;

    /// Makes everything buffered durable (end of input, drain).
    async fn flush_all(&mut self) -> Result<(), SinkError>;
}

/// How often the driver asks a sink to flush what is due by age.
pub const TICK: Duration = Duration::from_secs(1);

/// Drives one sink until its input closes, then flushes everything.
pub async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut input: mpsc::Receiver<Arc<DecodedBatch>>,
) -> Result<(), SinkError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            batch = input.recv() => match batch {
                Some(batch) => sink.write(batch).await?,
                None => break,
            },
            _ = tick.tick() => sink.flush_due().await?,
        }
    }
    sink.flush_all().await?;
    tracing::debug!(sink = sink.name(), "sink drained");
    Ok(())
}

/// The lake's two sinks, both writing through `writer` within `lake`'s object limits: the
/// valid events as Parquet (each partition's hours compacted once over, unless
/// `lake.compact_after` is `None`) and the dead letters as zstd NDJSON.
pub fn lake_sinks(
    lake: &LakeConfig,
    source_kind: &'static str,
    writer: &ObjectWriter,
) -> Vec<Box<dyn Sink>> {
    use dead_letter::{DeadLetterFormat, NdjsonZstEncoder};
    use object::{ObjectLimits, ObjectSink};
    let limits = ObjectLimits::from_config(lake);
    let mut events = ObjectSink::new(
        lake::LakeFormat { source_kind },
        lake::ParquetEncoder::new,
        writer.clone(),
        limits,
    );
    if let Some(after) = lake.compact_after {
        events = events.compacting(compact::Compactor::start(writer.clone(), after));
    }
    vec![
        Box::new(events),
        Box::new(ObjectSink::new(
            DeadLetterFormat { source_kind },
            NdjsonZstEncoder::new,
            writer.clone(),
            limits,
        )),
    ]
}

/// Accepts everything and holds nothing: for benchmarks of the rest of the pipeline.
#[derive(Debug, Default)]
pub struct NullSink;

#[async_trait]
impl Sink for NullSink {
    fn name(&self) -> &'static str {
        "null"
    }

    async fn write(&mut self, _batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
