//! The local servers started by `scripts/backends up`, and per-test resources on them.
//!
//! Every test makes its own topic, stream, table or bucket with a unique name and removes it
//! when done, so tests run in parallel and repeat. A test whose server is down fails and says
//! how to start it; it never passes silently.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

mod dynamodb;
mod kafka;
mod kinesis;
mod s3;
mod tls;

// Each test binary uses a part of them.
#[allow(unused_imports)]
pub use {dynamodb::*, kafka::*, kinesis::*, s3::*, tls::*};

/// Kafka protocol (tansu).
pub const KAFKA: &str = "127.0.0.1:9092";
/// DynamoDB Local.
pub const DYNAMODB: &str = "http://127.0.0.1:8000";
/// kinesalite.
pub const KINESIS: &str = "http://127.0.0.1:4567";
/// kinesis-mock, which serves enhanced fan-out (SubscribeToShard).
pub const KINESIS_EFO: &str = "http://127.0.0.1:4568";
/// s3s-fs, access key `test`, secret `test`.
pub const S3: &str = "http://127.0.0.1:8014";

/// Fails the test unless the server at `url` (host:port or http://host:port) accepts
/// connections.
pub fn require(url: &str) {
    let addr: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("no server at {url}: start the local servers with `scripts/backends up` (./scripts/test does this)");
    }
}

/// A name no other test (or earlier run) uses: lowercase, digits and dashes, valid for every
/// backend (bucket names are the strictest).
pub fn unique_name(kind: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cp-{kind}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// SDK configuration for the local servers: fixed test credentials, us-east-1.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "classpulse-tests",
        ))
        .load()
        .await
}

/// The messages of a small seeded simulation.
pub async fn simulated_messages(seed: u64, start: &str) -> Vec<classpulse::decode::RawMessage> {
    let mut config = classpulse::config::Config::from_vars(&Default::default())
        .unwrap()
        .simulator;
    config.studios = 4;
    config.duration = Duration::from_secs(180);
    config.speedup = 0.0;
    config.seed = Some(seed);
    config.start = Some(start.parse().unwrap());
    config.invalid_rate = 0.02;
    super::simulate(&config).await
}

/// `relative` under the directory `scripts/backends install` fills (`CP_BACKENDS_DIR`, or
/// `.backends/`); fails the test, saying how to install, when it is not there.
pub fn installed_tool(relative: &str) -> std::path::PathBuf {
    let backends = std::env::var("CP_BACKENDS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.backends").to_owned());
    let tool = std::path::Path::new(&backends).join(relative);
    assert!(
        tool.exists(),
        "no {}: run `scripts/backends install` (./scripts/test does this)",
        tool.display()
    );
    tool
}

/// Short object ages, commit and checkpoint intervals, and a 16 KiB message limit: what the
/// source tests share, so they see progress within seconds.
fn quick_progress(command: &mut std::process::Command) -> &mut std::process::Command {
    command
        .env("CLASSPULSE_LAKE_MAX_AGE", "1s")
        .env("CLASSPULSE_MAX_MESSAGE_BYTES", "16KiB")
        .env("CLASSPULSE_COMMIT_INTERVAL", "200ms")
        .env("CLASSPULSE_AGG_CHECKPOINT_INTERVAL", "200ms")
}

/// Classes (message keys) among `messages`.
pub fn class_count(messages: &[classpulse::decode::RawMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.key.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// The first file named `name` under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|file| file == name) {
            return Some(path);
        }
    }
    None
}

/// A server process a test started and may pause, kill and start again; killed when dropped.
#[derive(Debug, Default)]
pub struct ServerProcess(Option<std::process::Child>);

impl ServerProcess {
    /// Spawns `command` (nothing may be running here) and waits until `addr` accepts
    /// connections.
    async fn spawn(&mut self, command: &mut std::process::Command, addr: SocketAddr) {
        assert!(self.0.is_none(), "{command:?}: already running");
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("{command:?}: {error}"));
        self.0 = Some(child);
        let what = format!("{command:?} listening on {addr}");
        crate::common::wait_until_async(Duration::from_secs(30), &what, || async {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).map_err(|e| e.to_string())
        })
        .await;
    }

    /// Sends it a signal (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let pid = self.0.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Kills it (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free port on 127.0.0.1 (free now: a server is started on it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `/readyz` of the process at `http` until its status is `status` (200 or 503) and, for
/// 503, its report mentions `mention`; returns the report. Fails after `within`.
pub async fn await_readiness(
    http: SocketAddr,
    status: u16,
    mention: &str,
    within: Duration,
) -> String {
    super::wait_until_async(
        within,
        &format!("/readyz {status} with {mention:?}"),
        || async move {
            let (now, report) = super::http_get(http, "/readyz");
            if now == status && (status == 200 || report.contains(mention)) {
                Ok(report)
            } else {
                Err(format!("{now} {report}"))
            }
        },
    )
    .await
}
