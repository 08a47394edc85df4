//! What the Kafka source and the dead-letter topic's producer share: their client
//! configuration (the operator's `CLASSPULSE_KAFKA_PROP_*` properties apply to both), errors
//! told without the secrets librdkafka quotes, and the OAUTHBEARER token of MSK IAM
//! ([`msk_iam`]).

pub mod msk_iam;

use rdkafka::client::OAuthToken;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

pub use msk_iam::MskIam;

use crate::config::KafkaConfig;
use crate::health::Health;

/// librdkafka properties classpulse sets unless the operator sets them
/// (`CLASSPULSE_KAFKA_PROP_*`). A partition whose prefetch queue is over
/// `queued.max.messages.kbytes` waits `fetch.queue.backoff.ms` before its next fetch;
/// librdkafka's 1 s starves a pipeline only a moment behind, and with 20 ms a quarter of its
/// 64 MiB queue reads as fast. See docs/decisions/0006-fetch-backoff-and-queue-size.md.
const FETCH_DEFAULTS: [(&str, &str); 2] = [
    ("fetch.queue.backoff.ms", "20"),
    ("queued.max.messages.kbytes", "16384"),
];

/// The consumer's configuration: classpulse's settings, then the operator's properties (which
/// win), then the end-of-partition signal classpulse depends on.
pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        // A new group reads the backlog instead of skipping it.
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("client.id", format!("classpulse-{}", std::process::id()))
        .set("statistics.interval.ms", "5000");
    for (property, value) in FETCH_DEFAULTS {
        client.set(property, value);
    }
    for (property, value) in &config.properties {
        client.set(property, value);
    }
    // The aggregate stage finalises a class by the wall clock only on a partition read to
    // its end (the configuration refuses to have this changed).
    client.set("enable.partition.eof", "true");
    client
}

/// The dead-letter topic producer's configuration: idempotent, batched for 20 ms, then the
/// operator's properties (security settings apply to both clients; librdkafka ignores the
/// consumer-only ones).
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set(
            "client.id",
            format!("classpulse-dlq-{}", std::process::id()),
        );
    for (property, value) in &config.properties {
        client.set(property, value);
    }
    client
}

/// A producer's librdkafka callbacks: MSK IAM tokens, signed as the consumer signs them.
pub struct TokenContext {
    msk_iam: Option<MskIam>,
    health: Health,
}

impl TokenContext {
    /// Tokens from `msk_iam` (none: the producer does not use OAUTHBEARER); a failure to sign
    /// one is reported on `health`.
    pub fn new(msk_iam: Option<MskIam>, health: Health) -> TokenContext {
        TokenContext { msk_iam, health }
    }
}

impl ClientContext for TokenContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        oauth_token(self.msk_iam.as_ref(), &self.health)
    }
}

/// The live-record producer's configuration: the dead-letter producer's, lz4, batched for 5 ms,
/// and a send given up after 10 s (it is sent again, or replaced by a newer record of its
/// class). The operator's properties win.
pub fn live_producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = producer_config(config);
    client
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "10000")
        .set(
            "client.id",
            format!("classpulse-live-{}", std::process::id()),
        );
    for (property, value) in &config.properties {
        client.set(property, value);
    }
    client
}

/// An rdkafka error as text without a secret in it: librdkafka's configuration errors quote the
/// property's value (`Client config error: ... ssl.key.password <value>`), which must not reach
/// the logs when the property holds a password, key or token.
pub fn redacted(error: &KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, description, property, value)
            if KafkaConfig::is_secret(property) =>
        {
            let description = if value.is_empty() {
                description.clone()
            } else {
                description.replace(value.as_str(), "****")
            };
            format!("Client config error: {description} {property} ****")
        }
        other => other.to_string(),
    }
}

/// librdkafka's OAUTHBEARER token callback: an MSK IAM token, or why there is none.
pub fn oauth_token(
    msk_iam: Option<&MskIam>,
    health: &Health,
) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let Some(msk_iam) = msk_iam else {
        return Err("sasl.mechanism OAUTHBEARER: classpulse signs only MSK IAM tokens (set CLASSPULSE_KAFKA_AWS_IAM=true)".into());
    };
    match msk_iam.token() {
        Ok(token) => Ok(OAuthToken {
            token: token.token,
            principal_name: String::new(),
            lifetime_ms: token.expires_ms,
        }),
        Err(error) => {
            health.not_ready("source", format!("kafka: no MSK IAM token: {error}"));
            tracing::warn!(error = %error, "MSK IAM token not signed");
            Err(error.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_defaults_apply_unless_the_operator_sets_them() {
        let mut config = KafkaConfig {
            brokers: "b:9092".into(),
            topics: vec!["perf".into()],
            group_id: "g".into(),
            properties: Vec::new(),
            dead_letter_topic: None,
            aws_iam: false,
        };
        let client = consumer_config(&config);
        assert_eq!(client.get("fetch.queue.backoff.ms"), Some("20"));
        assert_eq!(client.get("queued.max.messages.kbytes"), Some("16384"));
        config.properties = vec![
            ("queued.max.messages.kbytes".into(), "65536".into()),
            ("enable.partition.eof".into(), "false".into()),
        ];
        let client = consumer_config(&config);
        assert_eq!(client.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(client.get("fetch.queue.backoff.ms"), Some("20"));
        // The configuration refuses this one; were it let through, classpulse's value stands.
        assert_eq!(client.get("enable.partition.eof"), Some("true"));
    }

    #[test]
    fn configuration_errors_never_quote_a_secret_value() {
        let secret = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for configuration property \"sasl.password\"".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        let text = redacted(&secret);
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.password ****"), "{text}");
        let plain = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value".into(),
            "fetch.max.bytes".into(),
            "lots".into(),
        );
        assert!(redacted(&plain).contains("fetch.max.bytes lots"));
    }
}
