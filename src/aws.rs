//! AWS clients. In production the SDK's default credential chain and region apply (the ECS task
//! role); for local servers an endpoint override per service, and us-east-1 when no region is
//! configured.

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, SdkConfig};
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

/// A DynamoDB client with [`call_timeouts`] (the Kinesis source's leases and checkpoints),
/// sent to `endpoint` when one is set.
pub fn dynamodb(sdk: &SdkConfig, endpoint: Option<&Url>) -> aws_sdk_dynamodb::Client {
    let mut builder = aws_sdk_dynamodb::config::Builder::from(sdk).timeout_config(call_timeouts());
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

/// A Kinesis client with [`call_timeouts`], sent to `endpoint` when one is set.
pub fn kinesis(sdk: &SdkConfig, endpoint: Option<&Url>) -> aws_sdk_kinesis::Client {
    let mut builder = aws_sdk_kinesis::config::Builder::from(sdk).timeout_config(call_timeouts());
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    aws_sdk_kinesis::Client::from_conf(builder.build())
}
