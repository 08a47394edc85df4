//! Nothing secret leaves the process: secret-looking values given to classpulse never appear
//! in `classpulse config`, in its logs, on `/metrics` or `/readyz`, or in its run summary. And
//! the HTTP server is read-only.

mod common;

use std::time::Duration;

use common::backends::*;
use common::*;

/// Values no output may contain.
const SECRETS: [(&str, &str); 3] = [
    (
        "CLASSPULSE_KAFKA_PROP_SASL_PASSWORD",
        "pw-7f3a9c1e-do-not-print",
    ),
    ("AWS_SESSION_TOKEN", "tok-9e1c5a7b-do-not-print"),
    ("AWS_SECRET_ACCESS_KEY", "aws-4c2e8a1f-do-not-print"),
];

fn assert_no_secret(what: &str, text: &str) {
    for (name, value) in SECRETS {
        assert!(
            !text.contains(value),
            "{what} shows the value of {name}:\n{text}"
        );
    }
}

#[test]
fn config_masks_every_secret() {
    let lake = tempfile::tempdir().unwrap();
    let mut command = classpulse(lake.path());
    for (name, value) in SECRETS {
        command.env(name, value);
    }
    let output = command.arg("config").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_no_secret("classpulse config", &stdout);
    assert!(stdout.contains("sasl.password=****"), "{stdout}");
}

#[test]
fn a_refused_secret_property_is_named_but_its_value_never_shown() {
    // librdkafka refuses a property its build does not support, and its error quotes the
    // value (this build has OpenSSL but not libcurl, which OIDC client secrets need).
    // classpulse must say which property, not what it holds.
    let lake = tempfile::tempdir().unwrap();
    let mut child = classpulse(lake.path())
        .env("CLASSPULSE_SOURCE", "kafka")
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_KAFKA_TOPICS", "events")
        .env(
            "CLASSPULSE_KAFKA_PROP_SASL_OAUTHBEARER_CLIENT_SECRET",
            "key-2b8d4e6f-do-not-print",
        )
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = poll_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().ok_or("running")
    });
    if exited.is_err() {
        let _ = child.kill();
        panic!("classpulse accepted the property and ran on");
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("sasl.oauthbearer.client.secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("key-2b8d4e6f-do-not-print"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("key-2b8d4e6f"));
}

#[test]
fn logs_metrics_readiness_and_summary_never_show_a_secret() {
    require(KAFKA);
    let lake = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (admin, topic) = runtime.block_on(create_topic(1));
    let messages = runtime.block_on(simulated_messages(23, "2026-11-25T23:00:00Z"));
    runtime.block_on(produce(&topic, &messages[..200], 1));

    let mut command = classpulse(lake.path());
    command
        .env("CLASSPULSE_SOURCE", "kafka")
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_KAFKA_TOPICS", &topic)
        .env("CLASSPULSE_KAFKA_GROUP_ID", unique_name("group"))
        .env("CLASSPULSE_LOG_LEVEL", "debug")
        .env("CLASSPULSE_LAKE_MAX_AGE", "1s")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_REGION", "us-east-1")
        .arg("run");
    for (name, value) in SECRETS {
        command.env(name, value);
    }
    let running = Running::start(&mut command);
    let metrics = wait_until(Duration::from_secs(60), "an event consumed", || {
        let (_, metrics) = http_get(running.http, "/metrics");
        let events = metric_sum(&metrics, "classpulse_events_in_total");
        if events > 0.0 {
            Ok(metrics)
        } else {
            Err(format!("{events} events in"))
        }
    });
    assert_no_secret("/metrics", &metrics);
    let (_, readiness) = http_get(running.http, "/readyz");
    assert_no_secret("/readyz", &readiness);

    // Read-only: nothing but GET is served, and nothing but the three endpoints.
    let (status, _) = http_request(running.http, "POST", "/metrics");
    assert_eq!(status, 405);
    let (status, _) = http_request(running.http, "DELETE", "/readyz");
    assert_eq!(status, 405);
    let (status, _) = http_get(running.http, "/debug/vars");
    assert_eq!(status, 404);

    running.signal("TERM");
    let (code, stdout, logs) = running.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stdout}");
    assert!(logs.len() > 5, "debug logs were written");
    assert_no_secret("the logs", &logs.join("\n"));
    assert_no_secret("the summary", &stdout);
    runtime
        .block_on(admin.delete_topics(&[&topic], &rdkafka::admin::AdminOptions::new()))
        .unwrap();
}

/// `CLASSPULSE_KAFKA_AWS_IAM=true` against the local broker over SASL without TLS: librdkafka
/// asks classpulse for a token, classpulse signs one with the credentials of the AWS SDK's chain
/// (here the environment's), and the broker, which has no IAM, refuses the login: classpulse
/// stops naming the authentication failure. Neither the secret key, the session token nor the
/// token reach the logs, even at debug level. (The token's format and signature are checked
/// in `src/source/msk_iam.rs`; no local broker verifies MSK tokens.)
#[test]
fn msk_iam_signs_a_token_for_librdkafka_and_never_logs_it() {
    require(KAFKA);
    let lake = tempfile::tempdir().unwrap();
    let mut command = classpulse(lake.path());
    command
        .env("CLASSPULSE_SOURCE", "kafka")
        .env("CLASSPULSE_KAFKA_BROKERS", KAFKA)
        .env("CLASSPULSE_KAFKA_TOPICS", unique_name("iam"))
        .env("CLASSPULSE_KAFKA_AWS_IAM", "true")
        // MSK's IAM listener is TLS; the local broker is not.
        .env("CLASSPULSE_KAFKA_PROP_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
        .env("CLASSPULSE_LOG_LEVEL", "debug")
        .env("AWS_ACCESS_KEY_ID", "AKIDCLASSPULSETEST")
        .env("AWS_REGION", "eu-west-1")
        .arg("run");
    for (name, value) in SECRETS {
        command.env(name, value);
    }
    let running = Running::start(&mut command);
    let (code, stdout, logs) = running.wait(Duration::from_secs(60));
    let logs = logs.join("\n");
    assert_ne!(code, Some(0), "{stdout}\n{logs}");
    assert!(
        logs.contains("MSK IAM token signed")
            && logs.contains("AKIDCLASSPULSETEST")
            && logs.contains("eu-west-1"),
        "librdkafka asked for a token and got one:\n{logs}"
    );
    assert!(
        logs.contains("Authentication") && logs.contains("OAUTHBEARER"),
        "the refused login is named:\n{logs}"
    );
    assert_no_secret("the logs", &logs);
    // base64url of "https://kafka.", the start of every token.
    assert!(!logs.contains("aHR0cHM6Ly9rYWZrYS4"), "a token in the logs");
    assert!(
        !logs.contains("X-Amz-Signature"),
        "a signed URL in the logs"
    );
}
