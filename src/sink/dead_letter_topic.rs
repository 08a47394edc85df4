//! Dead letters to a Kafka topic (`CLASSPULSE_KAFKA_DLQ_TOPIC`), beside the objects in
//! the lake: producers' teams watch a topic, and replay tools read one.
//!
//! Each rejected input becomes one record: the raw bytes as the value, the original key, and
//! headers `classpulse.reason`, `classpulse.detail`, `classpulse.source.topic`,
//! `classpulse.source.partition`, `classpulse.source.offset` and (for an element of a batched
//! message) `classpulse.source.index`. A batch's acknowledgement is held until the broker has
//! every record of it; a record the producer gives up on (after librdkafka's own retries, up to
//! `message.timeout.ms`) fails the batch, so its position is never committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Sink, SinkError};
use crate::config::KafkaConfig;
use crate::decode::DecodedBatch;
use crate::health::Health;
use crate::kafka::{self, MskIam, TokenContext};
use crate::metrics;

const SINK: &str = "dead_letter_topic";

/// Produces rejected inputs to a topic.
pub struct DeadLetterTopicSink {
    producer: FutureProducer<TokenContext>,
    topic: String,
    health: Health,
}

impl DeadLetterTopicSink {
    /// A producer to `topic` on the consumer's brokers, with the same pass-through properties
    /// (security settings apply to both; consumer-only ones are ignored by librdkafka).
    pub fn new(
        config: &KafkaConfig,
        topic: &str,
        health: Health,
        msk_iam: Option<MskIam>,
    ) -> Result<Self, SinkError> {
        let client = kafka::producer_config(config);
        let context = TokenContext::new(msk_iam, health.clone());
        let producer = client
            .create_with_context(context)
            .map_err(|error| SinkError::Setup {
                sink: SINK,
                detail: format!("kafka producer: {}", kafka::redacted(&error)),
            })?;
        Ok(DeadLetterTopicSink {
            producer,
            topic: topic.to_owned(),
            health,
        })
    }
}

#[async_trait]
impl Sink for DeadLetterTopicSink {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn write(&mut self, batch: Arc<DecodedBatch>) -> Result<(), SinkError> {
        if batch.rejected.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let partition = batch.partition.index.to_string();
        let sends = batch.rejected.iter().map(|rejected| {
            let offset = rejected.offset.to_string();
            let index = rejected.index.map(|index| index.to_string());
            let mut headers = OwnedHeaders::new()
                .insert(header(
                    "classpulse.reason",
                    rejected.rejection.reason.as_str(),
                ))
                .insert(header("classpulse.detail", &rejected.rejection.detail))
                .insert(header("classpulse.source.topic", &batch.partition.stream))
                .insert(header("classpulse.source.partition", &partition))
                .insert(header("classpulse.source.offset", &offset));
            if let Some(index) = &index {
                headers = headers.insert(header("classpulse.source.index", index));
            }
            let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .payload(&rejected.raw[..])
                .headers(headers);
            // Waits for room in the producer's queue, not for the broker (that is below).
            self.producer.send(record, Duration::from_secs(30))
        });
        let results = futures::future::join_all(sends).await;
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|result| result.err().map(|(error, _)| error.to_string()))
            .collect();
        if let Some(error) = failed.first() {
            // Not committed: the batch is read again after a restart.
            batch.ack.fail();
            self.health
                .not_ready(SINK, format!("producing to {}: {error}", self.topic));
            tracing::error!(topic = %self.topic, failed = failed.len(), error = %error, "dead letters not delivered; the batch will be replayed");
        } else {
            self.health.ready(SINK);
            metrics::record_sink_write(SINK, batch.rejected.len(), 0, started.elapsed());
        }
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn flush_all(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
