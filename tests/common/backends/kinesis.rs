//! The Kinesis servers (kinesalite, kinesis-mock for fan-out): streams, records, members, leases, and private servers.

use std::time::Duration;

use super::*;

/// A Kinesis client for the server at `endpoint` (`KINESIS` or `KINESIS_EFO`).
pub async fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let sdk = sdk_config().await;
    classpulse::aws::kinesis(&sdk, Some(&endpoint.parse().unwrap()))
}

/// Waits until `stream` is ACTIVE (after a create, split or merge).
pub async fn await_stream_active(kinesis: &aws_sdk_kinesis::Client, stream: &str) {
    let what = format!("stream {stream} active");
    crate::common::wait_until_async(Duration::from_secs(30), &what, || async {
        let summary = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        match summary
            .stream_description_summary()
            .unwrap()
            .stream_status()
        {
            aws_sdk_kinesis::types::StreamStatus::Active => Ok(()),
            other => Err(format!("it is {other:?}")),
        }
    })
    .await;
}

/// Creates a stream of `shards` shards with a unique name and waits until it is active.
pub async fn create_stream(kinesis: &aws_sdk_kinesis::Client, shards: i32) -> String {
    let stream = unique_name("stream");
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    await_stream_active(kinesis, &stream).await;
    stream
}

/// Splits the first shard listed of `stream` at the middle of its hash range and waits until
/// the stream is active again; returns the shard split.
pub async fn split_first_shard(kinesis: &aws_sdk_kinesis::Client, stream: &str) -> String {
    let shards = kinesis
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let shard = shards.shards()[0].clone();
    let range = shard.hash_key_range().unwrap();
    let (low, high): (u128, u128) = (
        range.starting_hash_key().parse().unwrap(),
        range.ending_hash_key().parse().unwrap(),
    );
    kinesis
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard.shard_id())
        .new_starting_hash_key((low + (high - low) / 2).to_string())
        .send()
        .await
        .unwrap();
    await_stream_active(kinesis, stream).await;
    shard.shard_id().to_owned()
}

/// Deletes `stream`, with any fan-out consumers registered on it.
pub async fn delete_stream(kinesis: &aws_sdk_kinesis::Client, stream: &str) {
    kinesis
        .delete_stream()
        .stream_name(stream)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .unwrap();
}

/// Puts `messages` keyed by their class (Kinesis routes by the key's MD5), in order: one
/// PutRecords call at a time, retrying what the call did not take. Every `aggregate`-th run
/// of consecutive messages of one key is sent as one KPL-aggregated record, as the KPL does;
/// 0 sends every message as its own record.
pub async fn put_messages(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    messages: &[classpulse::decode::RawMessage],
    aggregate: usize,
) {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let key = |m: &classpulse::decode::RawMessage| {
        String::from_utf8(m.key.as_deref().unwrap_or(b"none").to_vec()).unwrap()
    };
    let mut entries = Vec::new();
    let mut i = 0;
    while i < messages.len() {
        let partition_key = key(&messages[i]);
        let run = if aggregate > 0 && i % (aggregate * 3) == 0 {
            messages[i..]
                .iter()
                .take(aggregate)
                .take_while(|m| key(m) == partition_key)
                .count()
        } else {
            1
        };
        let data = if run > 1 {
            let records: Vec<(&str, &[u8])> = messages[i..i + run]
                .iter()
                .map(|m| {
                    (
                        partition_key.as_str(),
                        m.payload.as_deref().unwrap_or_default(),
                    )
                })
                .collect();
            classpulse::source::kinesis::kpl::aggregate(&records)
        } else {
            messages[i].payload.as_deref().unwrap_or_default().to_vec()
        };
        entries.push(
            PutRecordsRequestEntry::builder()
                .partition_key(partition_key)
                .data(Blob::new(data))
                .build()
                .unwrap(),
        );
        i += run;
    }
    for chunk in entries.chunks(100) {
        let mut pending = chunk.to_vec();
        // Records of one key must stay in order: on a partial failure, resend from the first
        // record that failed.
        while !pending.is_empty() {
            let output = kinesis
                .put_records()
                .stream_name(stream)
                .set_records(Some(pending.clone()))
                .send()
                .await
                .unwrap();
            let first_failed = output
                .records()
                .iter()
                .position(|r| r.error_code().is_some());
            pending = match first_failed {
                Some(index) => pending[index..].to_vec(),
                None => Vec::new(),
            };
        }
    }
}

/// classpulse consuming `stream` as a worker of application `app` into `lake`, with short
/// leases, shard syncs, polls, commits and checkpoints, so tests see progress within seconds.
/// `command` talking to the Kinesis server at `endpoint` with the test credentials.
pub fn with_local_kinesis<'a>(
    command: &'a mut std::process::Command,
    endpoint: &str,
) -> &'a mut std::process::Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("CLASSPULSE_KINESIS_ENDPOINT", endpoint)
}

pub fn kinesis_member(lake: &std::path::Path, stream: &str, app: &str) -> std::process::Command {
    let mut command = super::super::classpulse(lake);
    with_local_dynamodb(&mut command)
        .env("CLASSPULSE_SOURCE", "kinesis")
        .env("CLASSPULSE_KINESIS_ENDPOINT", KINESIS)
        .env("CLASSPULSE_KINESIS_STREAM", stream)
        .env("CLASSPULSE_KINESIS_APP_NAME", app)
        .env("CLASSPULSE_KINESIS_LEASE_DURATION", "3s")
        .env("CLASSPULSE_KINESIS_SHARD_SYNC_INTERVAL", "2s")
        .env("CLASSPULSE_KINESIS_POLL_INTERVAL", "200ms");
    quick_progress(&mut command).arg("run");
    command
}

/// Lease items of `table` by shard id: (owner, checkpoint, checkpointOffset).
pub async fn leases(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> std::collections::BTreeMap<String, (Option<String>, String, u64)> {
    // One page holds every lease of a test stream; no table yet (the task creates it): none.
    let page = match client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
    {
        Ok(page) => page,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            return Default::default()
        }
        Err(e) => panic!("scanning {table}: {e:?}"),
    };
    page.items()
        .iter()
        .map(|item| {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let offset = item
                .get("checkpointOffset")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (
                text("leaseKey").unwrap(),
                (
                    text("leaseOwner"),
                    text("checkpoint").unwrap_or_default(),
                    offset,
                ),
            )
        })
        .collect()
}

/// A kinesalite of a test's own on a free loopback port, keeping its streams in LevelDB under a
/// directory of its own, so the test may pause or restart it. Killed when dropped.
pub struct PrivateKinesis {
    /// The server process, to pause or kill (its data stays).
    pub process: ServerProcess,
    port: u16,
    data: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateKinesis {
    pub async fn start() -> PrivateKinesis {
        let port = free_port();
        let mut server = PrivateKinesis {
            process: ServerProcess::default(),
            port,
            data: tempfile::tempdir().unwrap(),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.start_again().await;
        server
    }

    /// Starts it (again, on the same port and data) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut command = std::process::Command::new("node");
        command
            // The same preload `scripts/backends` uses: its listening socket stays on loopback.
            .arg("--require")
            .arg(root.join("scripts/loopback.js"))
            .arg(installed_tool("npm/node_modules/kinesalite/cli.js"))
            .args(["--port", &self.port.to_string(), "--shardLimit", "100"])
            .arg("--path")
            .arg(self.data.path());
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.process.spawn(&mut command, addr).await;
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        kinesis_client(&self.endpoint).await
    }
}

/// A kinesis-mock of a test's own (it serves enhanced fan-out, which kinesalite lacks) on free
/// loopback ports, its streams in memory, so the test may pause it. Killed when dropped.
pub struct PrivateKinesisMock {
    /// The server process, to pause.
    pub process: ServerProcess,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateKinesisMock {
    pub async fn start() -> PrivateKinesisMock {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let package = installed_tool("npm/node_modules/kinesis-local");
        let (port, tls_port) = (free_port(), free_port());
        let mut command = std::process::Command::new("node");
        command
            // Its certificate (server.json) is read from the working directory.
            .current_dir(&package)
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", tls_port.to_string())
            .env("LOG_LEVEL", "WARN")
            .env("SHARD_LIMIT", "50")
            .arg("--require")
            .arg(root.join("scripts/loopback.js"))
            .arg(package.join("main.js"));
        let mut process = ServerProcess::default();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        process.spawn(&mut command, addr).await;
        PrivateKinesisMock {
            process,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn client(&self) -> aws_sdk_kinesis::Client {
        kinesis_client(&self.endpoint).await
    }
}
