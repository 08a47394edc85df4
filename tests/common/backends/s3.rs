//! The S3 server (s3s-fs): clients, buckets, lake rows read back, and a private server.

use std::time::Duration;

use super::*;

/// An S3 client for s3s-fs (path-style addressing).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let sdk = sdk_config().await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(S3)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Deletes every object of `bucket`, then the bucket.
pub async fn delete_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    for object in listed.contents() {
        s3.delete_object()
            .bucket(bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    s3.delete_bucket().bucket(bucket).send().await.unwrap();
}

/// Rows of every Parquet object under `prefix` in `bucket`.
pub async fn s3_lake_rows(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> usize {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    let mut rows = 0;
    for object in listed.contents() {
        let response = s3
            .get_object()
            .bucket(bucket)
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
        let body = response.body.collect().await.unwrap().into_bytes();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body)
            .unwrap()
            .build()
            .unwrap();
        rows += reader.map(|batch| batch.unwrap().num_rows()).sum::<usize>();
    }
    rows
}

/// Lake settings for `bucket`/`prefix` on the local S3 server.
pub fn s3_lake(bucket: &str, prefix: &str) -> classpulse::config::LakeConfig {
    classpulse::config::LakeConfig {
        location: classpulse::config::LakeLocation::S3 {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        },
        s3_endpoint: Some(S3.parse().unwrap()),
        max_events: 1000,
        max_bytes: 64 << 20,
        max_age: Duration::from_secs(60),
        max_buffer_bytes: 256 << 20,
        compact_after: None,
        erasure_key: None,
        erasure_refresh: std::time::Duration::from_secs(60),
    }
}

/// An s3s-fs of a test's own on a free loopback port, keeping its objects as files under a
/// directory of its own (bucket `lake`), so the test may pause, kill and restart it without
/// disturbing the shared one. Killed when dropped.
pub struct PrivateS3 {
    /// The server process, to pause or kill (its files stay).
    pub process: ServerProcess,
    port: u16,
    data: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
}

impl PrivateS3 {
    /// The bucket it serves.
    pub const BUCKET: &'static str = "lake";

    pub async fn start() -> PrivateS3 {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(Self::BUCKET)).unwrap();
        let port = free_port();
        let mut server = PrivateS3 {
            process: ServerProcess::default(),
            port,
            data,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.start_again().await;
        server
    }

    /// Starts it (again, on the same port and files) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        let mut command = std::process::Command::new(installed_tool("cargo/bin/s3s-fs"));
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(self.data.path());
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        self.process.spawn(&mut command, addr).await;
    }

    /// Points `command`'s lake at `s3://lake/raw` on this server.
    pub fn lake_for(&self, command: &mut std::process::Command) {
        command
            .env("CLASSPULSE_LAKE_URL", format!("s3://{}/raw", Self::BUCKET))
            .env("CLASSPULSE_S3_ENDPOINT", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
    }

    /// The lake's files as the server keeps them: readable as a local lake.
    pub fn lake(&self) -> std::path::PathBuf {
        self.data.path().join(Self::BUCKET).join("raw")
    }
}
