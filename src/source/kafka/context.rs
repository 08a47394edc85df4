//! librdkafka's callbacks for the source's consumer: its log, its errors (classified, partition
//! ends told apart), its statistics (lag, brokers silent while a request waits, partitions' ends
//! vouched for or doubted in the [`Partitions`] registry) and its rebalances (turns of ownership,
//! revoked partitions' durable frontiers committed before they go), and the OAUTHBEARER token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rdkafka::client::OAuthToken;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientContext, Statistics, TopicPartitionList};

use super::{KafkaSource, LastSeen, Refusal, SharedPartitions};
use crate::ack::PartitionId;
use crate::health::Health;
use crate::kafka::{oauth_token, MskIam};
use crate::log_limit::LogLimiter;

/// A broker that keeps a request waiting this long without answering anything is treated as
/// away: its partitions' ends are not vouched for and the source is not ready. librdkafka
/// itself gives a hung broker up only after `socket.timeout.ms` (60 s); a healthy one answers
/// a fetch within `fetch.wait.max.ms` (500 ms) even when there is nothing new.
pub(super) const BROKER_SILENCE_MS: i64 = 10_000;

/// When each broker was last heard from, from librdkafka's statistics.
#[derive(Debug, Default)]
struct Answers(HashMap<i32, (u64, i64)>);

impl Answers {
    /// Notes that `broker` has sent `rx` responses so far and has a request `waiting` for an
    /// answer, at `now_ms`. Returns when it was last heard from: `now_ms` when it answered
    /// since the last note or is asked nothing, else when it last did. (A partition's end is
    /// vouched for only up to then: a broker that answers nothing would not show a new
    /// message either.)
    fn heard_ms(&mut self, broker: i32, rx: u64, waiting: bool, now_ms: i64) -> i64 {
        let (last_rx, heard_ms) = self.0.entry(broker).or_insert((rx, now_ms));
        if rx != *last_rx || !waiting {
            (*last_rx, *heard_ms) = (rx, now_ms);
        }
        *heard_ms
    }
}

/// librdkafka callbacks of the source's consumer.
pub struct SourceContext {
    last_seen: LastSeen,
    health: Health,
    partitions: SharedPartitions,
    refusal: Refusal,
    repeats: Arc<LogLimiter>,
    answers: Mutex<Answers>,
    /// Signs OAUTHBEARER tokens with AWS IAM (`CLASSPULSE_KAFKA_AWS_IAM`).
    msk_iam: Option<MskIam>,
}

impl SourceContext {
    /// Callbacks that share what they learn with the source through these handles.
    pub(super) fn new(
        last_seen: LastSeen,
        health: Health,
        partitions: SharedPartitions,
        refusal: Refusal,
        repeats: Arc<LogLimiter>,
        msk_iam: Option<MskIam>,
    ) -> SourceContext {
        SourceContext {
            last_seen,
            health,
            partitions,
            refusal,
            repeats,
            answers: Mutex::default(),
            msk_iam,
        }
    }
}

/// The end of a partition, which librdkafka reports in the error callback too, as a partition
/// error or (when it cannot name the partition there) a global one. Not an error.
pub(super) fn is_partition_end(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// Whether a librdkafka error reason says the broker's certificate was not trusted (OpenSSL's
/// "certificate verify failed": a wrong or missing `ssl.ca.location`, or a name mismatch).
pub(super) fn is_untrusted_certificate(error: &KafkaError, reason: &str) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::SSL)
        && reason.contains("certificate verify failed")
}

/// The partition of a librdkafka log line reporting an offset reset forced by an error
/// (facility `OFFSET`, logged as a warning: the committed offset was out of range, so events
/// between it and where reading resumes were skipped, or are read again). Resets of a new group
/// with no committed offset are only debug-logged by librdkafka and are not counted.
pub fn offset_reset_partition(facility: &str, message: &str) -> Option<(String, u32)> {
    if facility != "OFFSET" {
        return None;
    }
    // "[thrd:...]: topic [3]: offset reset (at offset 120 ..., broker 1) to offset BEGINNING ...".
    let at = message.find("]: offset reset (at ")?;
    let head = &message[..at];
    let open = head.rfind(" [")?;
    let partition = head[open + 2..].parse().ok()?;
    let topic = head[..open].rsplit("]: ").next()?.trim();
    Some((topic.to_owned(), partition))
}

impl ClientContext for SourceContext {
    /// Tokens are asked for only with `sasl.mechanism=OAUTHBEARER`.
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.msk_iam.as_ref(), &self.health)
    }

    /// librdkafka's log lines, into `tracing`; an offset reset forced by an error is counted in
    /// `classpulse_source_offset_resets_total` and logged as a warning of its own.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if let Some((topic, partition)) = offset_reset_partition(facility, message) {
            crate::metrics::record_offset_reset("kafka");
            tracing::warn!(topic, partition, detail = message, "offset reset: the committed offset was out of range; events may have been skipped (retention) or will be read again");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    /// Client-level errors; librdkafka retries on its own, so these only inform readiness.
    fn error(&self, error: KafkaError, reason: &str) {
        if is_partition_end(&error) {
            return; // not an error: the end of a partition, handled where it is read
        }
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health
                .not_ready("source", format!("kafka: no broker reachable ({reason})"));
            if let Some(partitions) = self.partitions.get() {
                partitions.doubt_end(None, now_ms());
            }
        }
        if is_untrusted_certificate(&error, reason) {
            *self
                .refusal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason.to_owned());
        }
        let kind = format!("client {:?}", error.rdkafka_error_code());
        if let Some(left_out) = self.repeats.admit(&kind) {
            tracing::warn!(error = %error, reason, repeats_left_out = left_out, "kafka client error");
        }
    }

    /// Publishes lag per assigned partition, vouches for or doubts each partition's end, and
    /// restores readiness once every assigned partition is fetched again (called on
    /// librdkafka's statistics interval).
    fn stats(&self, statistics: Statistics) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let partitions = self.partitions.get();
        // Per broker that is UP: when it was last heard from. A hung one (a stopped process,
        // a black-holed network path) stays UP to librdkafka for a minute answering nothing.
        let heard: HashMap<i32, i64> = {
            let mut answers = self
                .answers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            statistics
                .brokers
                .values()
                .filter(|broker| broker.state == "UP")
                .map(|broker| {
                    let waiting = broker.waitresp_cnt > 0;
                    let heard_ms = answers.heard_ms(broker.nodeid, broker.rx, waiting, now_ms);
                    (broker.nodeid, heard_ms)
                })
                .collect()
        };
        // Whether every partition assigned here is being fetched from a leader that answers.
        let (mut assigned, mut fetching) = (0, 0);
        let mut silent_leaders = BTreeMap::new();
        for (topic, topic_stats) in &statistics.topics {
            for (index, partition_stats) in &topic_stats.partitions {
                let leader_heard_ms = heard.get(&partition_stats.leader).copied();
                let silence_ms = leader_heard_ms.map(|heard_ms| now_ms - heard_ms);
                let healthy = partition_stats.fetch_state == "active"
                    && silence_ms.is_some_and(|silence| silence <= BROKER_SILENCE_MS);
                if *index >= 0 && partition_stats.desired {
                    assigned += 1;
                    fetching += usize::from(healthy);
                    if let Some(silence) = silence_ms.filter(|s| *s > BROKER_SILENCE_MS) {
                        silent_leaders.insert(partition_stats.leader, silence);
                    }
                }
                // A partition not being fetched (its leader unreachable, fetching stopped)
                // would not show a new message: its time at the end starts again.
                // One being fetched would: the source vouches for the end it reported.
                if let (Some(partitions), true) = (partitions, *index >= 0) {
                    let partition = PartitionId::new(topic.as_str(), *index as u32);
                    if let (true, Some(heard_ms)) = (healthy, leader_heard_ms) {
                        partitions.vouch_end(&partition, heard_ms);
                    } else {
                        partitions.doubt_end(Some(&partition), now_ms);
                    }
                }
                // -1 is librdkafka's internal "unassigned" partition; a negative lag means
                // not known yet (nothing fetched), which is not reported rather than shown as -1.
                if *index < 0 || partition_stats.consumer_lag < 0 {
                    continue;
                }
                let partition = PartitionId::new(topic.as_str(), *index as u32);
                let lag = partition_stats.consumer_lag as u64;
                let seconds = match (lag, last_seen.get(&partition)) {
                    (0, _) | (_, None) => 0.0,
                    (_, Some(seen_ms)) => ((now_ms - seen_ms) as f64 / 1000.0).max(0.0),
                };
                crate::metrics::set_source_lag("kafka", &partition, lag, seconds);
            }
        }
        // Connected and fetching everything assigned: ready, even on a quiet topic where no
        // message arrives to say so after an outage.
        if assigned > 0 && fetching == assigned {
            self.health.ready("source");
        } else if let Some((broker, silence)) = silent_leaders.into_iter().next() {
            self.health.not_ready(
                "source",
                format!(
                    "kafka: broker {broker} has not answered for {} s",
                    silence / 1000
                ),
            );
        }
    }
}

impl ConsumerContext for SourceContext {
    /// Runs on the thread that polls, before librdkafka changes the assignment. An assigned
    /// partition starts a new turn (what was in flight from an earlier turn is never
    /// committed; the batches read from now on replay from the committed offset). A revoked
    /// partition commits its durable frontier, synchronously, before it is let go, then starts
    /// a new turn so that nothing read before is ever committed by this member again.
    fn pre_rebalance(&self, consumer: &BaseConsumer<SourceContext>, rebalance: &Rebalance<'_>) {
        let Some(partitions) = self.partitions.get() else {
            return;
        };
        let ids_of = |list: &TopicPartitionList| -> Vec<PartitionId> {
            list.elements()
                .iter()
                .map(|element| PartitionId::new(element.topic(), element.partition() as u32))
                .collect()
        };
        match rebalance {
            Rebalance::Assign(list) => {
                let assigned = ids_of(list);
                for partition in &assigned {
                    partitions.assign(partition);
                }
                tracing::info!(partitions = %names(&assigned), "partitions assigned");
            }
            Rebalance::Revoke(list) => {
                let revoked = ids_of(list);
                let frontiers: Vec<(PartitionId, u64)> = revoked
                    .iter()
                    .filter_map(|partition| {
                        let frontier = partitions.revoke(partition)?;
                        Some((partition.clone(), frontier))
                    })
                    .collect();
                if let Ok(offsets) = KafkaSource::offsets(&frontiers) {
                    if offsets.count() > 0 {
                        match consumer.commit(&offsets, CommitMode::Sync) {
                            Ok(()) => tracing::info!(
                                partitions = frontiers.len(),
                                "durable offsets of revoked partitions committed"
                            ),
                            Err(error) => {
                                tracing::warn!(error = %error, "committing revoked partitions failed; the next owner replays more")
                            }
                        }
                    }
                }
                let mut last_seen = self
                    .last_seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                for partition in &revoked {
                    last_seen.remove(partition);
                }
                tracing::info!(partitions = %names(&revoked), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(error = %error, "rebalance failed"),
        }
    }

    /// After the assignment changed: how many partitions this member owns now
    /// (`classpulse_source_leases_held{source="kafka"}`, like a Kinesis task's leases).
    fn post_rebalance(&self, consumer: &BaseConsumer<SourceContext>, _: &Rebalance<'_>) {
        if let Ok(assignment) = consumer.assignment() {
            crate::metrics::set_leases_held("kafka", assignment.count());
        }
    }
}

/// What a consumer error means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorClass {
    /// The brokers cannot be reached, or the topic is not there (yet): not ready, retry.
    Unavailable,
    /// Credentials or ACLs refuse the group or the topic: retrying will not help.
    Denied,
    /// One partition's problem; the consumer goes on.
    Partition,
}

pub(super) fn classify(error: &KafkaError) -> ErrorClass {
    use RDKafkaErrorCode as Code;
    match error.rdkafka_error_code() {
        Some(
            Code::TopicAuthorizationFailed
            | Code::GroupAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::SaslAuthenticationFailed
            | Code::Authentication,
        ) => ErrorClass::Denied,
        Some(
            Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::Resolve
            | Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::UnknownPartition
            | Code::OperationTimedOut
            // A handshake cut short by a restarting broker; an untrusted certificate is told
            // apart by its reason (see `Refusal`).
            | Code::SSL,
        )
        | None => ErrorClass::Unavailable,
        Some(_) => ErrorClass::Partition,
    }
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The partitions `consumer` holds now.
pub(super) fn assigned(consumer: &StreamConsumer<SourceContext>) -> Vec<PartitionId> {
    consumer
        .assignment()
        .map(|list| {
            list.elements()
                .iter()
                .map(|element| PartitionId::new(element.topic(), element.partition() as u32))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn names(partitions: &[PartitionId]) -> String {
    let names: Vec<String> = partitions.iter().map(ToString::to_string).collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_errors_are_classified() {
        let class = |code| classify(&KafkaError::MessageConsumption(code));
        assert_eq!(
            class(RDKafkaErrorCode::AllBrokersDown),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class(RDKafkaErrorCode::UnknownTopicOrPartition),
            ErrorClass::Unavailable
        );
        assert_eq!(
            class(RDKafkaErrorCode::TopicAuthorizationFailed),
            ErrorClass::Denied
        );
        assert_eq!(
            class(RDKafkaErrorCode::SaslAuthenticationFailed),
            ErrorClass::Denied
        );
        assert_eq!(
            class(RDKafkaErrorCode::AutoOffsetReset),
            ErrorClass::Partition
        );
        assert_eq!(
            class(RDKafkaErrorCode::OffsetOutOfRange),
            ErrorClass::Partition
        );
        assert_eq!(
            classify(&KafkaError::NoMessageReceived),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn a_broker_is_silent_only_while_it_keeps_a_request_waiting_without_answering() {
        let mut answers = Answers::default();
        assert_eq!(answers.heard_ms(1, 10, true, 0), 0);
        // Still waiting, nothing answered: last heard at 0.
        assert_eq!(answers.heard_ms(1, 10, true, 4_000), 0);
        assert_eq!(answers.heard_ms(1, 10, true, 12_000), 0);
        // An answer.
        assert_eq!(answers.heard_ms(1, 11, true, 13_000), 13_000);
        assert_eq!(answers.heard_ms(1, 11, true, 14_000), 13_000);
        // Asked nothing (its partitions paused by backpressure, say): not silent.
        assert_eq!(answers.heard_ms(1, 11, false, 30_000), 30_000);
        assert_eq!(answers.heard_ms(1, 11, true, 31_000), 30_000);
        // Brokers are kept apart.
        assert_eq!(answers.heard_ms(2, 5, true, 31_000), 31_000);
    }

    #[test]
    fn the_end_of_a_partition_is_not_an_error_in_either_form() {
        // The error callback saw the global form at the peak: 400 warnings in 30 s.
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
    }

    #[test]
    fn only_a_failed_certificate_verification_is_an_untrusted_certificate() {
        let ssl = KafkaError::Global(RDKafkaErrorCode::SSL);
        // A handshake cut short is retried like any other unreachable broker.
        assert_eq!(
            classify(&KafkaError::MessageConsumption(RDKafkaErrorCode::SSL)),
            ErrorClass::Unavailable
        );
        assert!(is_untrusted_certificate(
            &ssl,
            "ssl://b-1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified"
        ));
        assert!(!is_untrusted_certificate(
            &ssl,
            "ssl://b-1:9094/bootstrap: SSL handshake failed: Disconnected: connection closed by peer"
        ));
        assert!(!is_untrusted_certificate(
            &KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "certificate verify failed"
        ));
    }
}

#[cfg(test)]
mod log_and_error_text_tests {
    use super::*;

    #[test]
    fn an_offset_reset_warning_names_its_partition() {
        let line = "[thrd:main]: events.v1 [3]: offset reset (at offset 120 (leader epoch -1), broker 1) to offset BEGINNING (leader epoch -1): fetch failed due to requested offset not available on the broker: Broker: Offset out of range";
        assert_eq!(
            offset_reset_partition("OFFSET", line),
            Some(("events.v1".to_owned(), 3))
        );
        assert_eq!(offset_reset_partition("FETCH", line), None);
        assert_eq!(
            offset_reset_partition("OFFSET", "[thrd:main]: events [0]: stored offset 5"),
            None
        );
    }
}
