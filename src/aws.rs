//! AWS clients and their errors. In production the SDK's default credential chain and region
//! apply (the ECS task role); for local servers an endpoint override per service, and us-east-1
//! when no region is configured. Also the Kinesis calls that the source and the live screens
//! both make to find a stream and register an enhanced fan-out consumer on it.

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use url::Url;

/// Region used when neither the environment nor a profile names one (local servers).
pub const FALLBACK_REGION: &str = "us-east-1";

/// Shared SDK configuration from the default chains.
pub async fn sdk_config() -> SdkConfig {
    let region = RegionProviderChain::default_provider().or_else(FALLBACK_REGION);
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await
}

/// Who retries a DynamoDB call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retries {
    /// The SDK, with its standard retries (the Kinesis source's leases and checkpoints, table
    /// setup).
    Sdk,
    /// The caller only: the sinks' table writer retries, and its limiter must see every
    /// throttle.
    Caller,
}

/// A DynamoDB client with [`call_timeouts`], retried by `retries`, sent to `endpoint` when one
/// is set.
pub fn dynamodb(
    sdk: &SdkConfig,
    endpoint: Option<&Url>,
    retries: Retries,
) -> aws_sdk_dynamodb::Client {
    let mut builder = aws_sdk_dynamodb::config::Builder::from(sdk).timeout_config(call_timeouts());
    if retries == Retries::Caller {
        builder = builder.retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled());
    }
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    aws_sdk_dynamodb::Client::from_conf(builder.build())
}

/// A deadline on every attempt of a call, so that a hung endpoint (a stopped server, a
/// black-holed network path) is a failure to retry and report, not a stall: the SDK sets none
/// by default. A fan-out subscription, which streams for minutes, lifts it (see the Kinesis
/// source).
pub fn call_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .build()
}

/// The timeouts of a SubscribeToShard call, which streams for up to 5 minutes: a connect
/// deadline and none on the whole call (the caller bounds the answer that opens the stream).
pub fn subscription_override() -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::default().timeout_config(
        aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .disable_operation_attempt_timeout()
            .build(),
    )
}

/// A Kinesis client with [`call_timeouts`], sent to `endpoint` when one is set.
pub fn kinesis(sdk: &SdkConfig, endpoint: Option<&Url>) -> aws_sdk_kinesis::Client {
    let mut builder = aws_sdk_kinesis::config::Builder::from(sdk).timeout_config(call_timeouts());
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    aws_sdk_kinesis::Client::from_conf(builder.build())
}

/// What a failed call means for what was in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Slow down and try again.
    Throttled,
    /// A transient fault (5xx, connection, timeout): try again.
    Transient(String),
    /// The request is invalid: retrying the same items cannot succeed.
    Invalid(String),
    /// The table is missing, or access is denied: needs an operator; retried slowly.
    Fatal(String),
}

impl Failure {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::Throttled => "throttled",
            Failure::Transient(_) => "transient",
            Failure::Invalid(_) => "invalid",
            Failure::Fatal(_) => "fatal",
        }
    }
}

/// Sorts an SDK error into a [`Failure`] by its error code (DynamoDB's, and the codes every
/// AWS service shares).
pub fn classify<E, R>(error: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = || {
        let message = error.message().unwrap_or_default();
        match error.code() {
            Some(code) => format!("{code}: {message}"),
            None => format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(error)),
        }
    };
    match error {
        SdkError::ServiceError(_) => match error.code().unwrap_or_default() {
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "LimitExceededException" => Failure::Throttled,
            "ValidationException"
            | "ItemCollectionSizeLimitExceededException"
            | "SerializationException" => Failure::Invalid(detail()),
            "ResourceNotFoundException"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "MissingAuthenticationTokenException"
            | "InvalidSignatureException"
            | "ExpiredTokenException" => Failure::Fatal(detail()),
            _ => Failure::Transient(detail()),
        },
        SdkError::ConstructionFailure(_) => Failure::Invalid(detail()),
        _ => Failure::Transient(detail()),
    }
}

/// A Kinesis call that failed while finding a stream or registering its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCallError {
    /// The call, e.g. `RegisterStreamConsumer`.
    pub call: &'static str,
    /// What went wrong, as the SDK tells it.
    pub detail: String,
    /// The stream is missing or may not be read: an operator's to fix, not worth retrying.
    pub refused: bool,
}

impl StreamCallError {
    fn of<E, R>(call: &'static str, error: &SdkError<E, R>) -> StreamCallError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        StreamCallError {
            call,
            detail: aws_sdk_kinesis::error::DisplayErrorContext(error).to_string(),
            refused: matches!(
                error.code(),
                Some(
                    "ResourceNotFoundException"
                        | "AccessDeniedException"
                        | "InvalidArgumentException"
                )
            ),
        }
    }
}

impl std::fmt::Display for StreamCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, self.detail)
    }
}

/// How long a stream consumer may take to become active after it is registered.
const CONSUMER_ACTIVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// The ARN of the Kinesis stream `stream`, a name or an ARN already.
pub async fn stream_arn(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
) -> Result<String, StreamCallError> {
    if stream.starts_with("arn:") {
        return Ok(stream.to_owned());
    }
    let summary = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| StreamCallError::of("DescribeStreamSummary", &e))?;
    summary
        .stream_description_summary()
        .map(|summary| summary.stream_arn().to_owned())
        .ok_or_else(|| StreamCallError {
            call: "DescribeStreamSummary",
            detail: "no summary".to_owned(),
            refused: false,
        })
}

/// Registers the enhanced fan-out consumer `name` on the stream `stream_arn` (or finds it
/// registered, by another task or an earlier run) and waits until it is active; returns its
/// ARN.
pub async fn register_stream_consumer(
    kinesis: &aws_sdk_kinesis::Client,
    stream_arn: &str,
    name: &str,
) -> Result<String, StreamCallError> {
    match kinesis
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(_) => tracing::info!(
            consumer = name,
            stream = stream_arn,
            "stream consumer registered"
        ),
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(StreamCallError::of("RegisterStreamConsumer", &e)),
    }
    let deadline = tokio::time::Instant::now() + CONSUMER_ACTIVE_DEADLINE;
    loop {
        let described = kinesis
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| StreamCallError::of("DescribeStreamConsumer", &e))?;
        if let Some(consumer) = described.consumer_description() {
            if consumer.consumer_status().as_str() == "ACTIVE" {
                return Ok(consumer.consumer_arn().to_owned());
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(StreamCallError {
                call: "DescribeStreamConsumer",
                detail: format!("not active after {} s", CONSUMER_ACTIVE_DEADLINE.as_secs()),
                refused: false,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
