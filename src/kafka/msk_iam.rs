//! MSK IAM authentication: the OAUTHBEARER token MSK's IAM listener accepts, signed with the
//! task's AWS credentials (`CLASSPULSE_KAFKA_AWS_IAM=true`).
//!
//! The token is a SigV4-presigned URL of the action `kafka-cluster:Connect` on
//! `https://kafka.{region}.amazonaws.com/`, valid for 15 minutes, base64url-encoded without
//! padding: the format of AWS's own signers (aws-msk-iam-sasl-signer-go and -python), built
//! here with `aws-sigv4`, the SDK's signer. librdkafka asks for a new one before the last
//! expires (`ClientContext::generate_oauth_token`), so rotated task-role credentials are
//! picked up.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use base64::Engine;

/// How long a token is valid (the signers' default; MSK accepts up to this).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
/// The service name the token is signed for.
const SIGNING_NAME: &str = "kafka-cluster";

/// A signed token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    /// The OAUTHBEARER token (a secret: never logged).
    pub token: String,
    /// Expiry, epoch milliseconds.
    pub expires_ms: i64,
}

/// Signs the `kafka-cluster:Connect` token for `region` with `credentials` at `now`.
pub fn auth_token(
    region: &str,
    credentials: &Credentials,
    now: SystemTime,
) -> Result<AuthToken, String> {
    let endpoint = format!("https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SIGNING_NAME)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?
        .into();
    // The payload hash is that of an empty body, as AWS's signers sign it.
    let request = SignableRequest::new(
        "GET",
        &endpoint,
        std::iter::empty(),
        SignableBody::Bytes(&[]),
    )
    .map_err(|e| format!("signable request: {e}"))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let mut url = url::Url::parse(&endpoint).map_err(|e| e.to_string())?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        // Not signed: MSK logs it.
        query.append_pair(
            "User-Agent",
            concat!("classpulse/", env!("CARGO_PKG_VERSION")),
        );
    }
    let signed_at = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    Ok(AuthToken {
        token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url.as_str()),
        expires_ms: (signed_at + TOKEN_LIFETIME).as_millis() as i64,
    })
}

/// Signs tokens with the credentials of the AWS SDK's default chain (the ECS task role), for
/// librdkafka's token callback, which runs on a librdkafka thread and must not block a runtime
/// thread.
#[derive(Clone)]
pub struct MskIam {
    region: String,
    credentials: SharedCredentialsProvider,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for MskIam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIam")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl MskIam {
    /// From the SDK's configuration; fails without a region or a credentials provider. Call
    /// inside the runtime that will fetch the credentials.
    pub fn new(sdk: &aws_config::SdkConfig) -> Result<MskIam, String> {
        let region = sdk
            .region()
            .ok_or("no AWS region (set AWS_REGION) for CLASSPULSE_KAFKA_AWS_IAM")?
            .to_string();
        let credentials = sdk
            .credentials_provider()
            .ok_or("no AWS credentials provider for CLASSPULSE_KAFKA_AWS_IAM")?;
        Ok(MskIam {
            region,
            credentials,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// A fresh token (fetching or refreshing the credentials first).
    pub fn token(&self) -> Result<AuthToken, String> {
        let (provider, runtime) = (self.credentials.clone(), self.runtime.clone());
        // librdkafka may call from a thread the runtime drives: fetch on a thread of its own.
        let credentials = std::thread::spawn(move || {
            runtime.block_on(async move { provider.provide_credentials().await })
        })
        .join()
        .map_err(|_| "the credentials thread panicked".to_owned())?
        .map_err(|e| {
            format!(
                "AWS credentials: {}",
                aws_sdk_kinesis::error::DisplayErrorContext(&e)
            )
        })?;
        let token = auth_token(&self.region, &credentials, SystemTime::now())?;
        tracing::info!(
            region = %self.region,
            access_key = %credentials.access_key_id(),
            expires_ms = token.expires_ms,
            "MSK IAM token signed"
        );
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    fn hmac(key: &[u8], data: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The query of the token's URL, decoded, by name.
    fn query(token: &str) -> (url::Url, std::collections::BTreeMap<String, String>) {
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap();
        let url = url::Url::parse(std::str::from_utf8(&url).unwrap()).unwrap();
        let pairs = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        (url, pairs)
    }

    #[test]
    fn the_token_is_a_presigned_connect_url_signed_as_aws_signs_it() {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session/token+x=".into()),
            None,
            "test",
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_752_000); // 2026-11-27T04:00:00Z
        let token = auth_token("eu-west-1", &credentials, now).unwrap();
        assert!(
            !token.token.contains(['=', '+', '/']),
            "base64url, unpadded"
        );
        assert_eq!(token.expires_ms, 1_795_752_900_000);
        let (url, q) = query(&token.token);
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/");
        assert_eq!(q["Action"], "kafka-cluster:Connect");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20261127/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(q["X-Amz-Date"], "20261127T040000Z");
        assert_eq!(q["X-Amz-Expires"], "900");
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert_eq!(q["X-Amz-Security-Token"], "session/token+x=");
        assert!(q["User-Agent"].starts_with("classpulse/"));

        // The signature, derived here step by step from AWS's SigV4 description: every query
        // parameter but the signature and the user agent, sorted and URI-encoded; the host
        // header; the hash of an empty payload.
        let encode = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let canonical_query = q
            .iter()
            .filter(|(k, _)| *k != "X-Amz-Signature" && *k != "User-Agent")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let empty = hex::encode(Sha256::digest(b""));
        let canonical_request = format!(
            "GET\n/\n{canonical_query}\nhost:kafka.eu-west-1.amazonaws.com\n\nhost\n{empty}"
        );
        let scope = "20261127/eu-west-1/kafka-cluster/aws4_request";
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n20261127T040000Z\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20261127");
        for part in ["eu-west-1", "kafka-cluster", "aws4_request"] {
            key = hmac(&key, part);
        }
        assert_eq!(q["X-Amz-Signature"], hex::encode(hmac(&key, &to_sign)));
    }

    #[test]
    fn credentials_without_a_session_token_sign_without_one() {
        let credentials = Credentials::new("AKID", "SECRET", None, None, "test");
        let token = auth_token("us-east-1", &credentials, SystemTime::now()).unwrap();
        let (_, q) = query(&token.token);
        assert!(!q.contains_key("X-Amz-Security-Token"));
        assert_eq!(q["X-Amz-Credential"].split('/').nth(2), Some("us-east-1"));
    }
}
