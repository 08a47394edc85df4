//! Enhanced fan-out: the stream consumer registered once, and a shard's records pushed over a
//! SubscribeToShard stream, renewed every 5 minutes or when it falls silent.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;

use super::lease::Checkpoint;
use super::reader::{hand_out, past_retention, reached_end, report_tip, Cursor, ShardRead, Start};
use super::{Shared, FAN_OUT_SILENCE, KIND, SUBSCRIBE_DEADLINE};
use crate::retry::Backoff;
use crate::source::SourceError;

/// Registers the stream consumer `name` (or finds it, registered by another task or an earlier
/// run) and waits until it is active; returns its ARN.
pub(super) async fn register_consumer(shared: &Shared, name: &str) -> Result<String, SourceError> {
    let failure = |error: crate::aws::StreamCallError| {
        SourceError::Unavailable(format!("kinesis stream {}: {error}", shared.config.stream))
    };
    let stream_arn = crate::aws::stream_arn(&shared.kinesis, &shared.config.stream)
        .await
        .map_err(failure)?;
    crate::aws::register_stream_consumer(&shared.kinesis, &stream_arn, name)
        .await
        .map_err(failure)
}

/// Enhanced fan-out: SubscribeToShard pushes records for up to 5 minutes per subscription; a
/// subscription that ends (or fails) is renewed after the last record delivered.
pub(super) async fn subscribe_shard(
    shared: &Shared,
    shard: &ShardRead,
    cursor: &mut Cursor,
    consumer_arn: &str,
) {
    use aws_sdk_kinesis::types::{StartingPosition, SubscribeToShardEventStream};
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
    loop {
        let position = match &cursor.start {
            Start::Checkpoint(Checkpoint::TrimHorizon) => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            Start::Checkpoint(Checkpoint::Latest) => {
                StartingPosition::builder().r#type(ShardIteratorType::Latest)
            }
            Start::Checkpoint(Checkpoint::AtTimestamp(ms)) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            Start::Checkpoint(Checkpoint::At(sequence)) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(sequence),
            Start::Checkpoint(Checkpoint::After { sequence, .. }) | Start::After(sequence) => {
                StartingPosition::builder()
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(sequence)
            }
            Start::Checkpoint(Checkpoint::ShardEnd { .. }) => return,
        }
        .build()
        .expect("the type is set");
        let subscribing = shared
            .kinesis
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(&shard.shard_id)
            .starting_position(position)
            .customize()
            .config_override(crate::aws::subscription_override())
            .send();
        // The attempt deadline is lifted for the stream, so the answer that opens it gets one
        // here: a hung server must not hold the shard's reader (and readiness) forever.
        let Ok(subscribed) = tokio::time::timeout(SUBSCRIBE_DEADLINE, subscribing).await else {
            report_tip(shared, shard, cursor, None);
            crate::metrics::record_source_error(KIND, "unavailable");
            let reason = format!(
                "SubscribeToShard: no answer within {} s",
                SUBSCRIBE_DEADLINE.as_secs()
            );
            shared.read_failed(&shard.shard_id, reason.clone());
            tracing::warn!(shard = %shard.shard_id, error = %reason, "SubscribeToShard failed; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        };
        let mut output = match subscribed {
            Ok(output) => {
                shared.read_ok(&shard.shard_id);
                output
            }
            Err(error) if past_retention(error.code(), error.message()) => {
                let error = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                cursor.restart_past_retention(shard, &error);
                continue;
            }
            Err(error) => {
                // One subscription per shard and consumer at a time, and at most one call a
                // second: a renewal right after the last ends may be refused; wait and retry.
                let class = match error.code() {
                    Some("ResourceInUseException" | "LimitExceededException") => "throttled",
                    _ => "unavailable",
                };
                report_tip(shared, shard, cursor, None);
                crate::metrics::record_source_error(KIND, class);
                let detail = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                shared.read_failed(&shard.shard_id, format!("SubscribeToShard: {detail}"));
                tracing::warn!(shard = %shard.shard_id, error = %detail, "SubscribeToShard failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        loop {
            let Ok(received) =
                tokio::time::timeout(FAN_OUT_SILENCE, output.event_stream.recv()).await
            else {
                // Kinesis pushes an event every few seconds, records or none. A stream this
                // quiet is stuck (a hung server, a black-holed path): renew the subscription,
                // whose answer has a deadline and reports the failure if the server is away.
                report_tip(shared, shard, cursor, None);
                tracing::warn!(
                    shard = %shard.shard_id,
                    silent_s = FAN_OUT_SILENCE.as_secs(),
                    "fan-out subscription silent; renewing it"
                );
                break;
            };
            match received {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                    shared.read_ok(&shard.shard_id);
                    let behind_ms = event.millis_behind_latest().max(0);
                    crate::metrics::set_source_lag_seconds(
                        KIND,
                        &shard.partition,
                        behind_ms as f64 / 1000.0,
                    );
                    if !hand_out(shared, shard, cursor, event.records()).await {
                        return;
                    }
                    report_tip(shared, shard, cursor, Some(behind_ms));
                    // A closed shard's last event has no continuation and names the children.
                    if event.continuation_sequence_number().is_empty()
                        || !event.child_shards().is_empty()
                    {
                        return reached_end(shared, shard, cursor);
                    }
                }
                Ok(Some(_)) => {}
                // The subscription's 5 minutes are up: renew it where this one stopped.
                Ok(None) => break,
                Err(error) => {
                    report_tip(shared, shard, cursor, None);
                    crate::metrics::record_source_error(KIND, "unavailable");
                    tracing::warn!(shard = %shard.shard_id, error = %error, "fan-out subscription failed; renewing it");
                    tokio::time::sleep(backoff.next_delay()).await;
                    break;
                }
            }
        }
    }
}
