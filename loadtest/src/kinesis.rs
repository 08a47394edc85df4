//! Producing to Kinesis: one stream, PutRecords of up to 500 records, partition key the
//! class. Records a call rejects (throughput exceeded) are sent again, in order, after a pause.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;

use crate::model::Message;

/// Records per PutRecords call (the API's limit).
const MAX_RECORDS: usize = 500;
/// Bytes per PutRecords call (the API's limit is 5 MiB).
const MAX_BYTES: usize = 4 << 20;

/// Creates the stream with `shards` shards if missing and waits for it to be active.
pub async fn ensure_stream(client: &Client, stream: &str, shards: u32) -> anyhow::Result<()> {
    let exists = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .is_ok();
    if !exists {
        client
            .create_stream()
            .stream_name(stream)
            .shard_count(shards as i32)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "creating stream {stream}: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(e)
                )
            })?;
    }
    for _ in 0..600 {
        let summary = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if summary
            .stream_description_summary()
            .map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("stream {stream} did not become active")
}

/// Sends every message received, in order.
pub async fn put_all(
    client: &Client,
    stream: &str,
    mut rx: tokio::sync::mpsc::Receiver<Message>,
) -> anyhow::Result<()> {
    let mut batch: Vec<PutRecordsRequestEntry> = Vec::new();
    let mut bytes = 0;
    loop {
        let message = if batch.is_empty() {
            rx.recv().await
        } else {
            match rx.try_recv() {
                Ok(message) => Some(message),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    put(client, stream, std::mem::take(&mut batch)).await?;
                    bytes = 0;
                    continue;
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            }
        };
        let Some(message) = message else {
            if !batch.is_empty() {
                put(client, stream, batch).await?;
            }
            return Ok(());
        };
        if batch.len() == MAX_RECORDS || bytes + message.payload.len() > MAX_BYTES {
            put(client, stream, std::mem::take(&mut batch)).await?;
            bytes = 0;
        }
        bytes += message.payload.len() + message.key.len();
        batch.push(
            PutRecordsRequestEntry::builder()
                .partition_key(message.key)
                .data(Blob::new(message.payload))
                .build()?,
        );
    }
}

async fn put(
    client: &Client,
    stream: &str,
    mut records: Vec<PutRecordsRequestEntry>,
) -> anyhow::Result<()> {
    let mut pause = Duration::from_millis(50);
    for _ in 0..100 {
        let output = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(records.clone()))
            .send()
            .await;
        match output {
            Ok(output) if output.failed_record_count().unwrap_or(0) == 0 => return Ok(()),
            Ok(output) => {
                // Keep the failed ones, in their order.
                records = records
                    .into_iter()
                    .zip(output.records())
                    .filter(|(_, result)| result.error_code().is_some())
                    .map(|(record, _)| record)
                    .collect();
            }
            Err(error) => {
                eprintln!(
                    "PutRecords: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(&error)
                );
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    anyhow::bail!("PutRecords kept failing for {} records", records.len())
}
