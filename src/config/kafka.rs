//! The Kafka source's section: brokers, topics and group, the librdkafka pass-through
//! (`CLASSPULSE_KAFKA_PROP_*`) and the properties classpulse keeps for itself, TLS and MSK IAM.

use super::reader::Reader;
use super::ConfigError;

/// librdkafka properties classpulse sets itself, which the pass-through may not change: the
/// delivery guarantee and the end-of-partition signal depend on them, and the rest have
/// variables of their own.
const KAFKA_OWNED_PROPERTIES: &[(&str, &str)] = &[
    (
        "enable.auto.commit",
        "offsets are committed only once everything before them is durable",
    ),
    (
        "enable.partition.eof",
        "the wall-clock class finality needs to know a partition was read to its end",
    ),
    ("bootstrap.servers", "set CLASSPULSE_KAFKA_BROKERS"),
    ("group.id", "set CLASSPULSE_KAFKA_GROUP_ID"),
];

/// Prefix of the librdkafka pass-through: `CLASSPULSE_KAFKA_PROP_FETCH_MAX_BYTES=...` sets
/// `fetch.max.bytes`.
pub const KAFKA_PROP_PREFIX: &str = "CLASSPULSE_KAFKA_PROP_";

/// Kafka consumer settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Consumer group id.
    pub group_id: String,
    /// librdkafka properties from `CLASSPULSE_KAFKA_PROP_*`, applied last (they win).
    pub properties: Vec<(String, String)>,
    /// Topic that also receives dead letters, if any.
    pub dead_letter_topic: Option<String>,
    /// Authenticate with AWS IAM (MSK): an OAUTHBEARER token signed with the task's credentials.
    pub aws_iam: bool,
}

impl KafkaConfig {
    /// Whether a librdkafka property holds a secret (masked wherever shown).
    pub fn is_secret(property: &str) -> bool {
        ["password", "secret", "sasl.jaas", "key.pem", "token"]
            .iter()
            .any(|word| property.contains(word))
    }
}

impl Reader<'_> {
    /// Kafka settings; brokers and topics are required when `required`.
    pub(super) fn kafka(&self, required: bool) -> Result<KafkaConfig, ConfigError> {
        let brokers = self.raw("CLASSPULSE_KAFKA_BROKERS").trim().to_owned();
        let topics: Vec<String> = self
            .raw("CLASSPULSE_KAFKA_TOPICS")
            .split(',')
            .map(str::trim)
            .filter(|topic| !topic.is_empty())
            .map(str::to_owned)
            .collect();
        let valid_broker = |broker: &str| {
            broker.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok()
            })
        };
        let brokers_valid = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .all(valid_broker);
        if (required && brokers.is_empty()) || !brokers_valid {
            return Err(self.error(
                "CLASSPULSE_KAFKA_BROKERS",
                "host:port[,host:port...] (required with CLASSPULSE_SOURCE=kafka)",
            ));
        }
        let valid_topic = |topic: &String| {
            topic.len() <= 249
                && topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        if (required && topics.is_empty()) || !topics.iter().all(valid_topic) {
            return Err(self.error(
                "CLASSPULSE_KAFKA_TOPICS",
                "one or more topic names ([A-Za-z0-9._-]), comma-separated",
            ));
        }
        let dead_letter_topic = self
            .optional("CLASSPULSE_KAFKA_DLQ_TOPIC")
            .map(str::to_owned);
        if dead_letter_topic
            .as_ref()
            .is_some_and(|topic| !valid_topic(topic))
        {
            return Err(self.error(
                "CLASSPULSE_KAFKA_DLQ_TOPIC",
                "a topic name ([A-Za-z0-9._-], at most 249 characters)",
            ));
        }
        let group_id = self.raw("CLASSPULSE_KAFKA_GROUP_ID").trim().to_owned();
        if group_id.is_empty() {
            return Err(self.error("CLASSPULSE_KAFKA_GROUP_ID", "a non-empty consumer group id"));
        }
        let mut properties: Vec<(String, String)> = self
            .env
            .iter()
            .filter_map(|(name, value)| {
                let property = name
                    .strip_prefix(KAFKA_PROP_PREFIX)?
                    .to_ascii_lowercase()
                    .replace('_', ".");
                Some((property, value.clone()))
            })
            .collect();
        properties.sort();
        let aws_iam = self.boolean("CLASSPULSE_KAFKA_AWS_IAM")?;
        if aws_iam {
            // MSK's IAM listener: TLS, and the token as an OAUTHBEARER bearer.
            for (property, default) in [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "OAUTHBEARER"),
            ] {
                if !properties.iter().any(|(p, _)| p == property) {
                    properties.push((property.to_owned(), default.to_owned()));
                }
            }
            if let Some((_, mechanism)) = properties
                .iter()
                .find(|(p, v)| p == "sasl.mechanism" && !v.eq_ignore_ascii_case("OAUTHBEARER"))
            {
                return Err(ConfigError {
                    variable: format!("{KAFKA_PROP_PREFIX}SASL_MECHANISM"),
                    value: mechanism.clone(),
                    allowed: "OAUTHBEARER with CLASSPULSE_KAFKA_AWS_IAM=true (the IAM token is an OAUTHBEARER bearer)".to_owned(),
                });
            }
            properties.sort();
        }
        for (property, value) in &properties {
            if let Some((_, why)) = KAFKA_OWNED_PROPERTIES.iter().find(|(p, _)| p == property) {
                return Err(ConfigError {
                    variable: format!(
                        "{KAFKA_PROP_PREFIX}{}",
                        property.replace('.', "_").to_ascii_uppercase()
                    ),
                    value: value.clone(),
                    allowed: format!("classpulse sets {property} itself: {why}"),
                });
            }
            // The source vouches on each statistics interval that a partition is still at its
            // end, and that word lasts 15 s (`partitions::AT_END_STALE_MS`).
            if property == "statistics.interval.ms"
                && !value
                    .trim()
                    .parse::<u64>()
                    .is_ok_and(|ms| (1..=10_000).contains(&ms))
            {
                return Err(ConfigError {
                    variable: format!("{KAFKA_PROP_PREFIX}STATISTICS_INTERVAL_MS"),
                    value: value.clone(),
                    allowed: "1 to 10000 (ms): lag metrics and the end-of-partition signal are refreshed on it".to_owned(),
                });
            }
        }
        // librdkafka is built with its own OpenSSL (`ssl-vendored`), whose default CA directory
        // is not the system's: over TLS, unless told otherwise, find the system's CA bundle
        // (MSK's certificates are signed by Amazon's public CAs).
        let tls = properties.iter().any(|(property, value)| {
            property == "security.protocol"
                && ["ssl", "sasl_ssl"].contains(&value.trim().to_ascii_lowercase().as_str())
        });
        if tls
            && !properties
                .iter()
                .any(|(property, _)| property == "ssl.ca.location")
        {
            properties.push(("ssl.ca.location".to_owned(), "probe".to_owned()));
        }
        Ok(KafkaConfig {
            brokers,
            topics,
            group_id,
            properties,
            dead_letter_topic,
            aws_iam,
        })
    }
}
