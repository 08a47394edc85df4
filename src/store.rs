//! The object store the lake, the aggregates and the events table's redrive write through: a
//! local directory or S3 behind one client ([`ObjectWriter`]), with the key layout, the replay
//! index that keeps the lake to one copy of each position, writes retried until durable, and
//! the fixed-set reasons of failures.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
};
use tokio::time::Instant;

use crate::ack::PartitionId;
use crate::config::{LakeConfig, LakeLocation};
use crate::health::Health;
use crate::log_limit::LogLimiter;
use crate::metrics;
use crate::retry::Backoff;
use crate::stats::Stats;

pub(crate) const HOUR_MS: i64 = 3_600_000;
/// A write failure of one sink and reason is logged at most this often (the rest are counted
/// in the next line, and all of them in `classpulse_sink_retries_total`).
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Objects larger than this are uploaded in parts (S3 allows 5 GiB in one PUT, but parts
/// retry cheaper and stream faster).
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// Size of each part but the last (S3's minimum is 5 MiB).
const MULTIPART_PART_BYTES: usize = 8 << 20;
/// Consecutive transient failures after which a sink reports not ready.
const FAILURES_BEFORE_NOT_READY: u32 = 3;
/// Longest wait between write attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// A request whose connection yields nothing for this long is given up (a hung server). Each
/// successful read restarts it, so a slow but moving upload of a large part is not cut.
const S3_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long object_store itself retries one request (throttling, a dropped connection) before
/// the error reaches the writer's own retry loop, which reports readiness and retries forever.
/// object_store's default of 3 minutes hid a hung S3 from `/readyz` for minutes.
const S3_RETRY_BUDGET: Duration = Duration::from_secs(15);

/// The lake's store cannot be opened (a directory that cannot be made, an S3 setting that is
/// not valid).
#[derive(Debug, thiserror::Error)]
#[error("lake: cannot start: {0}")]
pub struct OpenError(String);

/// `{folder}/dt=YYYY-MM-DD/hour=HH` of an epoch hour: the Hive partition objects of that hour
/// go under.
pub(crate) fn hour_folder(folder: &str, hour: i64) -> String {
    let start = DateTime::<Utc>::from_timestamp_millis(hour * HOUR_MS).unwrap_or_default();
    format!(
        "{folder}/dt={}/hour={}",
        start.format("%Y-%m-%d"),
        start.format("%H")
    )
}

/// Where objects go, and how they are written.
#[derive(Clone)]
pub struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    /// Key prefix inside the store (may be empty).
    prefix: String,
    /// S3 keeps user metadata; the local filesystem refuses it.
    supports_metadata: bool,
    /// Names the source in object keys ("kafka", "simulator").
    source_kind: &'static str,
    health: Health,
    /// Totals for the summary.
    stats: Arc<Stats>,
    /// Write failures, logged once per sink, reason and interval (S3 away fails every write).
    repeats: Arc<LogLimiter>,
}

impl ObjectWriter {
    /// Opens the lake's store. Connects to nothing yet.
    pub fn open(
        lake: &LakeConfig,
        source_kind: &'static str,
        health: Health,
        stats: Arc<Stats>,
    ) -> Result<ObjectWriter, OpenError> {
        let setup_error = OpenError;
        let (store, prefix, supports_metadata): (Arc<dyn ObjectStore>, String, bool) =
            match &lake.location {
                LakeLocation::Local(directory) => {
                    std::fs::create_dir_all(directory).map_err(|e| {
                        setup_error(format!("cannot create {}: {e}", directory.display()))
                    })?;
                    let store = LocalFileSystem::new_with_prefix(directory)
                        .map_err(|e| setup_error(format!("{}: {e}", directory.display())))?;
                    (Arc::new(store), String::new(), false)
                }
                LakeLocation::S3 { bucket, prefix } => {
                    // Client options first: they include `allow_http`, which the endpoint
                    // override below sets.
                    let mut builder = AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .with_client_options(
                            object_store::ClientOptions::new().with_read_timeout(S3_READ_TIMEOUT),
                        )
                        .with_retry(object_store::RetryConfig {
                            max_retries: 3,
                            retry_timeout: S3_RETRY_BUDGET,
                            ..object_store::RetryConfig::default()
                        });
                    if let Some(endpoint) = &lake.s3_endpoint {
                        builder = builder
                            .with_endpoint(endpoint.as_str().trim_end_matches('/'))
                            .with_allow_http(endpoint.scheme() == "http")
                            .with_virtual_hosted_style_request(false);
                    }
                    let store = builder
                        .build()
                        .map_err(|e| setup_error(format!("s3://{bucket}: {e}")))?;
                    (Arc::new(store), prefix.clone(), true)
                }
            };
        Ok(ObjectWriter {
            store,
            prefix,
            supports_metadata,
            source_kind,
            health,
            stats,
            repeats: Arc::new(LogLimiter::new(FAILURE_LOG_INTERVAL)),
        })
    }

    /// The store, for readers (tests, redrive).
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// `relative` under the store's prefix.
    pub fn path(&self, relative: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(relative)
        } else {
            Path::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Where the replay index of `folder` for `partition` lives.
    fn index_dir(&self, folder: &str, partition: &PartitionId) -> Path {
        self.path(&format!(
            "_index/{folder}/{}-{}-{}",
            self.source_kind,
            sanitize(&partition.stream),
            partition.index
        ))
    }

    /// The index entry of an object: its positions and hour, in the name.
    pub(crate) fn index_key(
        &self,
        folder: &str,
        partition: &PartitionId,
        hour: i64,
        first: u64,
        last: u64,
    ) -> Path {
        let directory = self.index_dir(folder, partition);
        Path::from(format!("{directory}/{last:020}-{first:020}-{hour}"))
    }

    /// The objects of `partition` written with an index entry, as (hour, first, last). Entries
    /// that end before `from` (already committed) and entries whose object is missing (a
    /// crash between the two PUTs) are deleted, best effort.
    ///
    /// Compaction deletes an object only after the entry and the object that replace it are
    /// written, so when an entry's object is found missing the index is listed again: whatever
    /// replaced it is in the new listing.
    pub(crate) async fn written(
        &self,
        sink: &'static str,
        folder: &str,
        extension: &str,
        partition: &PartitionId,
        from: u64,
    ) -> Vec<(i64, u64, u64)> {
        let directory = self.index_dir(folder, partition);
        let mut checked = std::collections::HashSet::new();
        let mut written = Vec::new();
        loop {
            let mut missing = false;
            for key in self.list_retrying(sink, &directory).await {
                if !checked.insert(key.clone()) {
                    continue;
                }
                let Some((hour, first, last)) = key.filename().and_then(parse_index_entry) else {
                    continue;
                };
                if last < from {
                    let _ = self.store.delete(&key).await;
                    continue;
                }
                // The entry is written before its object: keep it only if the object made it.
                let object = self.key(folder, partition, hour, first, last, extension);
                match self.store.head(&object).await {
                    Ok(_) => written.push((hour, first, last)),
                    Err(object_store::Error::NotFound { .. }) => {
                        missing = true;
                        let _ = self.store.delete(&key).await;
                    }
                    // Unknown: keep the events (a copy too many beats a missing one).
                    Err(error) => {
                        tracing::warn!(key = %object, error = %error, "cannot check an indexed object; its events are written again")
                    }
                }
            }
            if !missing {
                return written;
            }
        }
    }

    /// Every key under `directory`, listing again with backoff until the store answers.
    async fn list_retrying(&self, sink: &'static str, directory: &Path) -> Vec<Path> {
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
        loop {
            match self
                .store
                .list(Some(directory))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
            {
                Ok(keys) => return keys,
                Err(error) => {
                    let reason = classify(&error);
                    metrics::record_sink_retry(sink, reason);
                    self.health
                        .not_ready(sink, format!("{reason} listing {directory}: {error}"));
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The totals this writer adds to.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The source kind that names objects.
    pub fn source_kind(&self) -> &'static str {
        self.source_kind
    }

    /// The key of an object of `folder` holding `partition`'s records `first..=last` of `hour`.
    pub fn key(
        &self,
        folder: &str,
        partition: &PartitionId,
        hour: i64,
        first: u64,
        last: u64,
        extension: &str,
    ) -> Path {
        let name = format!(
            "{}/{}-{}-{}-{first:020}-{last:020}.{extension}",
            hour_folder(folder, hour),
            self.source_kind,
            sanitize(&partition.stream),
            partition.index,
        );
        self.path(&name)
    }

    /// Writes one object, retrying with backoff until it succeeds. Failures that retrying
    /// alone cannot fix (permissions, a missing bucket) mark `sink` not ready until a write
    /// succeeds again, and are logged at most once a minute.
    pub async fn put(
        &self,
        sink: &'static str,
        key: &Path,
        body: Bytes,
        metadata: &[(&'static str, String)],
    ) -> Duration {
        let mut attributes = Attributes::new();
        if self.supports_metadata {
            for (name, value) in metadata {
                attributes.insert(Attribute::Metadata((*name).into()), value.clone().into());
            }
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
        loop {
            let started = Instant::now();
            match self.put_once(key, &body, attributes.clone()).await {
                Ok(_) => {
                    if backoff.attempts() > 0 {
                        tracing::info!(sink, key = %key, attempts = backoff.attempts() + 1, "write succeeded after retries");
                    }
                    self.health.ready(sink);
                    return started.elapsed();
                }
                Err(error) => {
                    let reason = classify(&error);
                    metrics::record_sink_retry(sink, reason);
                    // Failures retrying cannot fix, and any failure that persists, make the sink
                    // not ready; one transient blip does not flap readiness.
                    if reason != "transient" || backoff.attempts() + 1 >= FAILURES_BEFORE_NOT_READY
                    {
                        self.health
                            .not_ready(sink, format!("{reason} writing {key}: {error}"));
                    }
                    if let Some(left_out) = self.repeats.admit(&format!("{sink} {reason}")) {
                        tracing::warn!(sink, key = %key, reason, error = %error, attempt = backoff.attempts() + 1, repeats_left_out = left_out, "write failed, retrying");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

impl ObjectWriter {
    /// One attempt: a single PUT, or a multipart upload for large objects (aborted on failure,
    /// so no parts are left behind to bill for).
    async fn put_once(
        &self,
        key: &Path,
        body: &Bytes,
        attributes: Attributes,
    ) -> object_store::Result<()> {
        if body.len() <= MULTIPART_THRESHOLD {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            return self
                .store
                .put_opts(key, PutPayload::from_bytes(body.clone()), options)
                .await
                .map(|_| ());
        }
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let mut upload = self.store.put_multipart_opts(key, options).await?;
        for part in body.chunks(MULTIPART_PART_BYTES) {
            if let Err(error) = upload
                .put_part(PutPayload::from_bytes(body.slice_ref(part)))
                .await
            {
                let _ = upload.abort().await;
                return Err(error);
            }
        }
        match upload.complete().await {
            Ok(_) => Ok(()),
            Err(error) => {
                let _ = upload.abort().await;
                Err(error)
            }
        }
    }
}

/// The (hour, first, last) of a replay index entry's name, `{last}-{first}-{hour}`.
fn parse_index_entry(name: &str) -> Option<(i64, u64, u64)> {
    let mut parts = name.splitn(3, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let hour = parts.next()?.parse().ok()?;
    Some((hour, first, last))
}

/// A fixed-set reason for a failed write (metric label).
pub fn classify(error: &object_store::Error) -> &'static str {
    match error {
        object_store::Error::NotFound { .. } => "not_found",
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => "access_denied",
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            "not_supported"
        }
        // S3 LIST failures arrive as `Generic` with the HTTP status only in the message.
        object_store::Error::Generic { source, .. } => {
            let text = source.to_string();
            if text.contains("403 Forbidden") || text.contains("401 Unauthorized") {
                "access_denied"
            } else if timed_out(error) {
                "timeout"
            } else {
                "transient"
            }
        }
        _ if timed_out(error) => "timeout",
        _ => "transient",
    }
}

/// Whether a request was given up for want of an answer (a hung or unreachable server, not
/// one that answered with an error): anywhere in the error's chain of causes.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        let text = error.to_string();
        // Not "timeout": object_store's retry errors quote their `retry_timeout` setting.
        if text.contains("timed out") {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Keeps a stream name safe as one path segment.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_given_up_for_want_of_an_answer_is_a_timeout_wherever_it_is_said() {
        #[derive(Debug)]
        struct Cause(&'static str, Option<Box<Cause>>);
        impl std::fmt::Display for Cause {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for Cause {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|c| c as _)
            }
        }
        let generic = |cause: Cause| object_store::Error::Generic {
            store: "S3",
            source: Box::new(cause),
        };
        let hung = Cause(
            "Error after 1 retries in 20s, max_retries:3, retry_timeout:15s, source:error sending request",
            Some(Box::new(Cause("operation timed out", None))),
        );
        assert_eq!(classify(&generic(hung)), "timeout");
        // A retried server error quotes the retry_timeout setting: not a timeout.
        let refused = Cause(
            "Error after 3 retries in 2s, max_retries:3, retry_timeout:15s, source:error sending request",
            Some(Box::new(Cause("Connection refused (os error 111)", None))),
        );
        assert_eq!(classify(&generic(refused)), "transient");
        let denied = Cause("Client error with status 403 Forbidden", None);
        assert_eq!(classify(&generic(denied)), "access_denied");
    }

    #[test]
    fn keys_are_hive_partitioned_and_sort_by_position() {
        let lake = LakeConfig {
            location: LakeLocation::S3 {
                bucket: "lake".into(),
                prefix: "raw".into(),
            },
            s3_endpoint: Some("http://127.0.0.1:1".parse().unwrap()),
            max_events: 10,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            max_buffer_bytes: 1 << 20,
            compact_after: None,
            erasure_key: None,
            erasure_refresh: std::time::Duration::from_secs(60),
        };
        let writer = ObjectWriter::open(&lake, "kafka", Health::new(), Arc::default()).unwrap();
        let hour = DateTime::parse_from_rfc3339("2026-11-25T17:42:00Z")
            .unwrap()
            .timestamp_millis()
            / HOUR_MS;
        let key = writer.key(
            "events",
            &PartitionId::new("perf/events", 3),
            hour,
            42,
            1042,
            "parquet",
        );
        assert_eq!(
            key.as_ref(),
            "raw/events/dt=2026-11-25/hour=17/kafka-perf_events-3-00000000000000000042-00000000000000001042.parquet"
        );
    }

    #[test]
    fn sanitize_keeps_one_path_segment() {
        assert_eq!(sanitize("../../etc"), ".._.._etc");
        assert_eq!(sanitize("topic.v1-a_b"), "topic.v1-a_b");
    }
}
