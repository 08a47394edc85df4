//! The polling readers: one task per leased shard, GetRecords from a checkpoint or a parent's
//! end, batches handed out only while the lease is fresh, the tip reported for lag and the end of
//! the shard for the aggregate stage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::time::Instant;

use super::coordinator::lose;
use super::fan_out::subscribe_shard;
use super::lease::{Checkpoint, Lease};
use super::{
    kpl, shard_index, Held, Positions, ReadsGuard, Shared, KIND, MIN_POLL_GAP, MIN_RECORDS_PER_CALL,
};
use crate::ack::PartitionId;
use crate::decode::RawMessage;
use crate::partitions::Lineage;
use crate::retry::Backoff;
use crate::source::RawBatch;

/// Starts reading a shard whose lease this task just took.
pub(super) fn start_reader(
    shared: &Arc<Shared>,
    held: &mut BTreeMap<String, Held>,
    lease: &Lease,
    counter: u64,
) {
    let index = shard_index(&lease.shard_id).expect("lease keys are numbered shard ids");
    let partition = PartitionId::new(Arc::clone(&shared.stream), index);
    let generation = match shared.partitions.get() {
        Some(partitions) => {
            // A child shard continues its parents' classes (the aggregate stage takes them
            // over from the parents' last checkpoints).
            let parents: Option<Vec<PartitionId>> = lease
                .parents
                .iter()
                .map(|parent| {
                    shard_index(parent)
                        .map(|index| PartitionId::new(Arc::clone(&shared.stream), index))
                })
                .collect();
            if let (Some(parents), Some(hash_range)) = (parents, lease.hash_range) {
                if !parents.is_empty() {
                    partitions.set_lineage(
                        &partition,
                        Lineage {
                            parents,
                            hash_range,
                        },
                    );
                }
            }
            partitions.assign(&partition);
            partitions.generation(&partition)
        }
        None => 0,
    };
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            lease.shard_id.clone(),
            Positions {
                generation,
                ..Positions::default()
            },
        );
    let reader = shared.stop.child_token();
    let previous = held.insert(
        lease.shard_id.clone(),
        Held {
            counter,
            partition: partition.clone(),
            reader: reader.clone(),
            handing_off: None,
            renewed_at: Instant::now(),
        },
    );
    if let Some(previous) = previous {
        previous.reader.cancel();
    }
    tracing::info!(shard = %lease.shard_id, from = ?lease.checkpoint, previous_owner = ?lease.owner, "lease taken");
    let shared = Arc::clone(shared);
    let shard = ShardRead {
        shard_id: lease.shard_id.clone(),
        partition,
        generation,
        checkpoint: lease.checkpoint.clone(),
    };
    tokio::spawn(async move {
        let shard_id = shard.shard_id.clone();
        tokio::select! {
            _ = reader.cancelled() => {}
            () = read_shard(&shared, shard) => {}
        }
        tracing::debug!(shard = %shard_id, "shard reader stopped");
    });
}

/// One shard to read, from a checkpoint.
pub(super) struct ShardRead {
    pub(super) shard_id: String,
    pub(super) partition: PartitionId,
    pub(super) generation: u64,
    pub(super) checkpoint: Checkpoint,
}

/// Where to (re)start reading.
#[derive(Debug, Clone)]
pub(super) enum Start {
    Checkpoint(Checkpoint),
    /// After the last record read (an expired iterator).
    After(String),
}

/// Where a shard's reader is: the offset of the next user record, where to (re)start reading,
/// and whether a `LATEST`/`AT_TIMESTAMP` start is pinned yet.
pub(super) struct Cursor {
    pub(super) next_offset: u64,
    pub(super) start: Start,
    pub(super) pinned: bool,
}

impl Cursor {
    pub(super) fn new(checkpoint: &Checkpoint) -> Cursor {
        Cursor {
            next_offset: checkpoint.next_offset(),
            start: Start::Checkpoint(checkpoint.clone()),
            pinned: !matches!(checkpoint, Checkpoint::Latest | Checkpoint::AtTimestamp(_)),
        }
    }

    /// The outage outlasted the stream's retention: what lay between the checkpoint and the
    /// oldest record kept is gone. Go on from there, counted and warned about as Kafka's offset
    /// resets are, numbering records apart from anything written before.
    pub(super) fn restart_past_retention(&mut self, shard: &ShardRead, error: &str) {
        crate::metrics::record_offset_reset(KIND);
        tracing::warn!(shard = %shard.shard_id, error, "checkpoint past the stream's retention: reading from the oldest record kept; events in between were skipped");
        self.start = Start::Checkpoint(Checkpoint::TrimHorizon);
        self.next_offset += PAST_RETENTION_OFFSET_JUMP;
    }
}

/// Reads one shard until its end (or until cancelled by the caller), by polling or, with
/// `CLASSPULSE_KINESIS_EFO`, by enhanced fan-out.
pub(super) async fn read_shard(shared: &Shared, shard: ShardRead) {
    if let Checkpoint::ShardEnd { offset } = shard.checkpoint {
        // Finished before this task took it (it is never planned so): nothing to read.
        let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = all.get_mut(&shard.shard_id) {
            p.end = Some(offset);
        }
        return;
    }
    let mut cursor = Cursor::new(&shard.checkpoint);
    let _reads = ReadsGuard {
        shared,
        shard_id: &shard.shard_id,
    };
    match shared.consumer_arn.get() {
        Some(consumer_arn) => subscribe_shard(shared, &shard, &mut cursor, consumer_arn).await,
        None => poll_shard(shared, &shard, &mut cursor).await,
    }
}

/// Hands `records` (one GetRecords response or fan-out event) to the pipeline, numbered from
/// the cursor; `false` when the reader must stop (lease lost, pipeline gone).
pub(super) async fn hand_out(
    shared: &Shared,
    shard: &ShardRead,
    cursor: &mut Cursor,
    records: &[aws_sdk_kinesis::types::Record],
) -> bool {
    if records.is_empty() {
        return true;
    }
    if let Some(partitions) = shared.partitions.get() {
        partitions.left_end(&shard.partition);
    }
    if !cursor.pinned {
        let first = records[0].sequence_number().to_owned();
        if !pin(shared, &shard.shard_id, first).await {
            return false;
        }
        cursor.pinned = true;
    }
    let mut messages = Vec::with_capacity(records.len());
    let mut positions = Vec::with_capacity(records.len());
    for record in records {
        let arrival = record
            .approximate_arrival_timestamp()
            .and_then(|time| time.to_millis().ok());
        let data = bytes::Bytes::from(record.data().clone().into_inner());
        for user in kpl::deaggregate(record.partition_key().unwrap_or_default(), data) {
            messages.push(RawMessage {
                offset: cursor.next_offset,
                timestamp_ms: arrival,
                key: Some(user.partition_key),
                payload: Some(user.data),
            });
            cursor.next_offset += 1;
        }
        positions.push((cursor.next_offset, record.sequence_number().to_owned()));
    }
    if let Some((_, last)) = positions.last() {
        cursor.start = Start::After(last.clone());
    }
    {
        let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        match all.get_mut(&shard.shard_id) {
            Some(p) if p.generation == shard.generation => p.records.extend(positions),
            _ => return false, // lease lost meanwhile
        }
    }
    if !lease_fresh(shared, &shard.shard_id).await {
        return false;
    }
    let batch = RawBatch {
        partition: shard.partition.clone(),
        generation: shard.generation,
        messages,
    };
    shared.batches.send(Ok(batch)).await.is_ok()
}

/// Tells the aggregate stage where the reader stands against the shard's tip (see
/// [`crate::partitions::AtEnd`]): at it when a response says 0 ms behind and everything before has been
/// handed out; not at it while records are being handed out or the reader is behind.
pub(super) fn report_tip(
    shared: &Shared,
    shard: &ShardRead,
    cursor: &Cursor,
    behind_ms: Option<i64>,
) {
    let Some(partitions) = shared.partitions.get() else {
        return;
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    match behind_ms {
        Some(0) => partitions.reached_end(
            &shard.partition,
            shard.generation,
            cursor.next_offset,
            now_ms,
        ),
        Some(_) => partitions.left_end(&shard.partition),
        // A read failed: nothing new would be seen now.
        None => partitions.doubt_end(Some(&shard.partition), now_ms),
    }
}

/// The shard is closed and read to its end: once what was handed out is durable, the
/// coordinator (or the next commit) checkpoints `SHARD_END`.
pub(super) fn reached_end(shared: &Shared, shard: &ShardRead, cursor: &Cursor) {
    let mut all = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = all.get_mut(&shard.shard_id) {
        if p.generation == shard.generation {
            p.end = Some(cursor.next_offset);
        }
    }
    drop(all);
    crate::metrics::set_source_lag_seconds(KIND, &shard.partition, 0.0);
    tracing::info!(shard = %shard.shard_id, records = cursor.next_offset, "shard read to its end");
    shared.shard_ended.notify_one();
}

/// GetRecords polling, within the per-shard limits.
pub(super) async fn poll_shard(shared: &Shared, shard: &ShardRead, cursor: &mut Cursor) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut iterator: Option<String> = None;
    // Records asked for per call: halved while answers are lost on the way (a path that cuts
    // long answers would otherwise fail the same call forever), doubled back after each
    // answer that arrives.
    let mut limit = shared.config.max_records;
    loop {
        let current = match &iterator {
            Some(iterator) => iterator.clone(),
            None => match shard_iterator(shared, &shard.shard_id, &cursor.start).await {
                Ok(iterator) => iterator,
                Err(error) if error.starts_with(PAST_RETENTION) => {
                    cursor.restart_past_retention(shard, &error);
                    continue;
                }
                Err(error) => {
                    report_tip(shared, shard, cursor, None);
                    shared.read_failed(&shard.shard_id, format!("GetShardIterator: {error}"));
                    tracing::warn!(shard = %shard.shard_id, error = %error, "GetShardIterator failed; retrying");
                    crate::metrics::record_source_error(KIND, "unavailable");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let response = shared
            .kinesis
            .get_records()
            .shard_iterator(&current)
            .limit(limit as i32)
            .send()
            .await;
        let output = match response {
            Ok(output) => {
                limit = (limit * 2).min(shared.config.max_records);
                output
            }
            Err(error) => {
                report_tip(shared, shard, cursor, None);
                if error.code().is_none() {
                    limit = (limit / 2).max(MIN_RECORDS_PER_CALL.min(shared.config.max_records));
                }
                if error.code() != Some("ExpiredIteratorException") {
                    let detail = aws_sdk_kinesis::error::DisplayErrorContext(&error).to_string();
                    shared.read_failed(&shard.shard_id, format!("GetRecords: {detail}"));
                }
                match error.code() {
                    Some("ExpiredIteratorException") => {
                        tracing::info!(shard = %shard.shard_id, "shard iterator expired; resuming after the last record read");
                        iterator = None;
                        continue;
                    }
                    Some("ProvisionedThroughputExceededException" | "LimitExceededException") => {
                        crate::metrics::record_source_error(KIND, "throttled");
                    }
                    _ => {
                        crate::metrics::record_source_error(KIND, "unavailable");
                        tracing::warn!(shard = %shard.shard_id, error = %aws_sdk_kinesis::error::DisplayErrorContext(&error), "GetRecords failed; retrying");
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        shared.read_ok(&shard.shard_id);
        let behind_ms = output.millis_behind_latest().unwrap_or(0).max(0);
        crate::metrics::set_source_lag_seconds(KIND, &shard.partition, behind_ms as f64 / 1000.0);
        let records = output.records();
        if !hand_out(shared, shard, cursor, records).await {
            return;
        }
        report_tip(shared, shard, cursor, Some(behind_ms));
        match output.next_shard_iterator() {
            Some(next) => iterator = Some(next.to_owned()),
            None => return reached_end(shared, shard, cursor),
        }
        let gap = if records.is_empty() || behind_ms == 0 {
            shared.config.poll_interval
        } else {
            MIN_POLL_GAP
        };
        tokio::time::sleep(gap.saturating_sub(started.elapsed())).await;
    }
}

/// Waits until this task's lease on `shard_id` was renewed within the lease duration; `false`
/// once it is not held any more. A task that was frozen (SIGSTOP, a paused container) past
/// expiry must not hand out what it read before it learns whether the lease is still its own.
pub(super) async fn lease_fresh(shared: &Shared, shard_id: &str) -> bool {
    loop {
        let fresh = shared
            .held
            .lock()
            .await
            .get(shard_id)
            .map(|lease| lease.renewed_at.elapsed() < shared.config.lease_duration);
        match fresh {
            None => return false,
            Some(true) => return true,
            Some(false) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// An iterator for `start`.
pub(super) async fn shard_iterator(
    shared: &Shared,
    shard_id: &str,
    start: &Start,
) -> Result<String, String> {
    let mut request = shared.kinesis.get_shard_iterator().shard_id(shard_id);
    request = if shared.config.stream.starts_with("arn:") {
        request.stream_arn(&shared.config.stream)
    } else {
        request.stream_name(&shared.config.stream)
    };
    request = match start {
        Start::Checkpoint(Checkpoint::TrimHorizon) => {
            request.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        Start::Checkpoint(Checkpoint::Latest) => {
            request.shard_iterator_type(ShardIteratorType::Latest)
        }
        Start::Checkpoint(Checkpoint::AtTimestamp(ms)) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
        Start::Checkpoint(Checkpoint::At(sequence)) => request
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number(sequence),
        Start::Checkpoint(Checkpoint::After { sequence, .. }) | Start::After(sequence) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(sequence),
        Start::Checkpoint(Checkpoint::ShardEnd { .. }) => {
            return Err("the shard is finished".to_owned())
        }
    };
    let output = request.send().await.map_err(|e| {
        let detail = aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string();
        if past_retention(e.code(), e.message()) {
            format!("{PAST_RETENTION}: {detail}")
        } else {
            detail
        }
    })?;
    output
        .shard_iterator()
        .map(str::to_owned)
        .ok_or_else(|| "no iterator returned".to_owned())
}

/// Marks a GetShardIterator failure because the starting sequence number is gone.
pub(super) const PAST_RETENTION: &str = "checkpoint past retention";

/// Added to a shard's offsets when its checkpoint was past retention: the records read from the
/// trim horizon are numbered apart from anything written (and indexed) before, so none of them
/// passes for a record already in the lake.
pub(super) const PAST_RETENTION_OFFSET_JUMP: u64 = 1 << 40;

/// Whether a GetShardIterator error says the starting sequence number is no longer in the
/// stream (older than its retention): Kinesis answers `InvalidArgumentException` naming the
/// `StartingSequenceNumber`.
pub(super) fn past_retention(code: Option<&str>, message: Option<&str>) -> bool {
    code == Some("InvalidArgumentException")
        && message.is_some_and(|message| message.contains("StartingSequenceNumber"))
}

/// Records the first record read from `LATEST`/`AT_TIMESTAMP` in the lease; `false` when the
/// lease is lost (the caller stops). Retries while DynamoDB is unreachable.
pub(super) async fn pin(shared: &Shared, shard_id: &str, sequence: String) -> bool {
    let checkpoint = Checkpoint::At(sequence);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut held = shared.held.lock().await;
        let Some(counter) = held.get(shard_id).map(|lease| lease.counter) else {
            return false;
        };
        match shared
            .leases
            .checkpoint(shard_id, counter, &shared.worker, &checkpoint)
            .await
        {
            Ok(Some(counter)) => {
                let lease = held.get_mut(shard_id).expect("held");
                lease.counter = counter;
                lease.renewed_at = Instant::now();
                return true;
            }
            Ok(None) => {
                lose(shared, &mut held, shard_id, "start position refused");
                return false;
            }
            Err(error) => {
                drop(held);
                tracing::warn!(shard = %shard_id, error = %error, "pinning the start position failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vanished_starting_sequence_number_counts_as_past_retention() {
        let message = "StartingSequenceNumber 4959 used in GetShardIterator on shard shardId-000000000001 in stream events under account 123456789012 is invalid because it did not come from this stream.";
        assert!(past_retention(
            Some("InvalidArgumentException"),
            Some(message)
        ));
        assert!(!past_retention(
            Some("InvalidArgumentException"),
            Some("Timestamp is in the future")
        ));
        assert!(!past_retention(
            Some("ResourceNotFoundException"),
            Some(message)
        ));
        assert!(!past_retention(None, None));
    }
}
