//! The lease coordinator: each round it lists the stream's shards into the lease table, renews
//! the leases held, lets go of finished, stolen and handed-over shards, and takes leases (at most
//! a few a round) until the shards are shared evenly among the workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use tokio::time::Instant;

use super::lease::{plan_takes, Checkpoint, Lease, LeaseError, Observations};
use super::reader::start_reader;
use super::{lease, lease_failure, shard_index, Held, Shared, KIND, MAX_TAKES_PER_ROUND};
use crate::retry::Backoff;
use crate::source::SourceError;

/// The coordinator: shard discovery, renewals, finished shards and taking leases, one round
/// every third of the lease duration (and a shard sync as soon as a shard ends).
pub(super) async fn coordinate(shared: Arc<Shared>) {
    let mut observations = Observations::default();
    let mut last_sync: Option<Instant> = None;
    let round = shared.config.lease_duration / 3;
    let mut failures = Backoff::new(
        Duration::from_millis(200),
        round.max(Duration::from_secs(1)),
    );
    loop {
        let sync_due = last_sync.is_none_or(|at| at.elapsed() >= shared.config.shard_sync_interval);
        let outcome = async {
            if sync_due {
                sync_shards(&shared).await?;
                last_sync = Some(Instant::now());
            }
            coordinate_round(&shared, &mut observations).await
        }
        .await;
        let pause = match outcome {
            Ok(()) => {
                failures = Backoff::new(
                    Duration::from_millis(200),
                    round.max(Duration::from_secs(1)),
                );
                round
            }
            Err(RoundError::Fatal(error)) => {
                let _ = shared.batches.send(Err(error)).await;
                return;
            }
            Err(RoundError::Retry(detail)) => {
                shared.health.not_ready("source", detail.clone());
                crate::metrics::record_source_error(KIND, "unavailable");
                tracing::warn!(error = %detail, "kinesis coordination failed; retrying");
                failures.next_delay()
            }
        };
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = shared.shard_ended.notified() => last_sync = None,
        }
    }
}

/// Why a coordinator round stopped.
pub(super) enum RoundError {
    Retry(String),
    Fatal(SourceError),
}

impl From<LeaseError> for RoundError {
    fn from(error: LeaseError) -> RoundError {
        if error.is_retryable() {
            RoundError::Retry(error.to_string())
        } else {
            RoundError::Fatal(lease_failure(error))
        }
    }
}

/// Lists the stream's shards and adds a lease for each one the table lacks.
pub(super) async fn sync_shards(shared: &Shared) -> Result<(), RoundError> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut request = shared.kinesis.list_shards();
        request = match &token {
            Some(token) => request.next_token(token),
            None if shared.config.stream.starts_with("arn:") => {
                request.stream_arn(&shared.config.stream)
            }
            None => request.stream_name(&shared.config.stream),
        };
        let page = request
            .send()
            .await
            .map_err(|e| kinesis_failure(shared, &e))?;
        shards.extend(page.shards().iter().cloned());
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let known: Vec<String> = shared
        .leases
        .list()
        .await?
        .into_iter()
        .map(|lease| lease.shard_id)
        .collect();
    for shard in &shards {
        if known.iter().any(|id| id == shard.shard_id()) {
            continue;
        }
        if shard_index(shard.shard_id()).is_none() {
            return Err(RoundError::Fatal(SourceError::Fatal(format!(
                "shard id {:?} has no number; classpulse numbers partitions by it",
                shard.shard_id()
            ))));
        }
        let parents: Vec<String> = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
            .into_iter()
            .flatten()
            .map(str::to_owned)
            .collect();
        let checkpoint = lease::first_checkpoint(shared.config.start, !parents.is_empty());
        let hash_range = shard.hash_key_range().and_then(|range| {
            let start = range.starting_hash_key().parse::<u128>().ok()?;
            Some((start, range.ending_hash_key().parse::<u128>().ok()?))
        });
        if shared
            .leases
            .create(shard.shard_id(), &parents, hash_range, &checkpoint)
            .await?
        {
            tracing::info!(shard = shard.shard_id(), parents = ?parents, "lease created for a new shard");
        }
    }
    Ok(())
}

pub(super) fn kinesis_failure<E, R>(shared: &Shared, error: &SdkError<E, R>) -> RoundError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = format!(
        "kinesis stream {}: {}",
        shared.config.stream,
        aws_sdk_kinesis::error::DisplayErrorContext(error)
    );
    match error.code() {
        Some(
            "AccessDeniedException" | "UnrecognizedClientException" | "InvalidArgumentException",
        ) => RoundError::Fatal(SourceError::Fatal(detail)),
        _ => RoundError::Retry(detail),
    }
}

/// Renews held leases, finishes shards read to their end, and takes leases by the plan.
pub(super) async fn coordinate_round(
    shared: &Arc<Shared>,
    observations: &mut Observations,
) -> Result<(), RoundError> {
    let mut held = shared.held.lock().await;
    complete_handoffs(shared, &mut held).await?;
    renew_held(shared, &mut held).await?;
    finish_read_shards(shared, &mut held).await?;
    shared.health.ready("source");
    let leases = shared.leases.list().await?;
    let expired = observations.expired(&leases, Instant::now(), shared.config.lease_duration);
    follow_lease_table(shared, &mut held, &leases).await?;
    take_by_plan(shared, &mut held, &leases, &expired).await?;
    crate::metrics::set_leases_held(KIND, held.len());
    Ok(())
}

/// Second half of the hand-offs begun last round: the sinks have dropped what they held of the
/// shard by now, so the new owner cannot meet a late write of ours.
async fn complete_handoffs(
    shared: &Shared,
    held: &mut BTreeMap<String, Held>,
) -> Result<(), RoundError> {
    let handing_off: Vec<(String, String)> = held
        .iter()
        .filter_map(|(shard, lease)| Some((shard.clone(), lease.handing_off.clone()?)))
        .collect();
    for (shard_id, to) in handing_off {
        let counter = held[&shard_id].counter;
        let transferred = shared
            .leases
            .transfer(&shard_id, counter, &shared.worker, &to)
            .await?;
        if let Some(lease) = held.remove(&shard_id) {
            crate::metrics::clear_source_lag(KIND, &lease.partition);
        }
        match transferred {
            Some(_) => tracing::info!(shard = %shard_id, to = %to, "lease handed over"),
            None => tracing::info!(shard = %shard_id, "lease moved on before the hand-off"),
        }
    }
    Ok(())
}

/// Renews every lease held; one whose renewal is refused is lost.
async fn renew_held(shared: &Shared, held: &mut BTreeMap<String, Held>) -> Result<(), RoundError> {
    for shard_id in held.keys().cloned().collect::<Vec<_>>() {
        let counter = held[&shard_id].counter;
        match shared
            .leases
            .renew(&shard_id, counter, &shared.worker)
            .await?
        {
            Some(counter) => {
                let lease = held.get_mut(&shard_id).expect("held");
                lease.counter = counter;
                lease.renewed_at = Instant::now();
            }
            None => lose(shared, held, &shard_id, "renewal refused"),
        }
    }
    Ok(())
}

/// Finishes the shards read to their end with every record already checkpointed (or none at
/// all): they get no further commit.
async fn finish_read_shards(
    shared: &Shared,
    held: &mut BTreeMap<String, Held>,
) -> Result<(), RoundError> {
    let finished: Vec<(String, u64)> = {
        let positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        held.keys()
            .filter_map(|shard| {
                let p = positions.get(shard)?;
                let end = p.end.filter(|_| p.records.is_empty())?;
                Some((shard.clone(), end))
            })
            .collect()
    };
    for (shard_id, end) in finished {
        let counter = held[&shard_id].counter;
        match shared
            .leases
            .checkpoint(
                &shard_id,
                counter,
                &shared.worker,
                &Checkpoint::ShardEnd { offset: end },
            )
            .await?
        {
            Some(_) => finish_shard(shared, held, &shard_id),
            None => lose(shared, held, &shard_id, "checkpoint refused"),
        }
    }
    Ok(())
}

/// Follows what the lease table says of this task's leases: one taken by another task while
/// our renewal was in flight is lost, one handed to this task starts reading, and one another
/// task asked for begins its hand-off.
async fn follow_lease_table(
    shared: &Arc<Shared>,
    held: &mut BTreeMap<String, Held>,
    leases: &[Lease],
) -> Result<(), RoundError> {
    for lease in leases {
        if held.contains_key(&lease.shard_id) && lease.owner.as_deref() != Some(&shared.worker) {
            lose(shared, held, &lease.shard_id, "taken by another task");
        }
    }
    for lease in leases {
        if lease.owner.as_deref() != Some(&shared.worker) || lease.is_finished() {
            continue;
        }
        match (held.get(&lease.shard_id), &lease.handoff_to) {
            // Handed to this task by its last owner.
            (None, _) => start_reader(shared, held, lease, lease.counter),
            // Another task asked for it: stop reading and begin the hand-off.
            (Some(ours), Some(to)) if ours.handing_off.is_none() && to != &shared.worker => {
                begin_handoff(shared, held, &lease.shard_id, to).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Takes the leases the plan gives this task: an expired one at once, a live one by asking its
/// owner for a hand-off.
async fn take_by_plan(
    shared: &Arc<Shared>,
    held: &mut BTreeMap<String, Held>,
    leases: &[Lease],
    expired: &[String],
) -> Result<(), RoundError> {
    for shard_id in plan_takes(leases, expired, &shared.worker, MAX_TAKES_PER_ROUND) {
        let Some(lease) = leases.iter().find(|lease| lease.shard_id == shard_id) else {
            continue;
        };
        match (&lease.owner, expired.contains(&shard_id)) {
            (Some(owner), false) => {
                if shared
                    .leases
                    .request_handoff(&shard_id, owner, &shared.worker)
                    .await?
                {
                    tracing::info!(shard = %shard_id, owner = %owner, "asked for a lease (balancing)");
                }
            }
            _ => {
                if let Some(counter) = shared
                    .leases
                    .take(&shard_id, lease.counter, &shared.worker)
                    .await?
                {
                    start_reader(shared, held, lease, counter);
                }
            }
        }
    }
    Ok(())
}

/// First half of a hand-off: stop reading the shard, start a new turn (what the sinks hold of
/// it is dropped, and its next owner replays it), and checkpoint what is durable.
pub(super) async fn begin_handoff(
    shared: &Shared,
    held: &mut BTreeMap<String, Held>,
    shard_id: &str,
    to: &str,
) -> Result<(), RoundError> {
    let Some(lease) = held.get_mut(shard_id) else {
        return Ok(());
    };
    lease.reader.cancel();
    lease.handing_off = Some(to.to_owned());
    let frontier = shared
        .partitions
        .get()
        .and_then(|partitions| partitions.revoke(&lease.partition));
    let planned = frontier.and_then(|frontier| {
        let positions = shared.positions.lock().unwrap_or_else(|e| e.into_inner());
        positions.get(shard_id)?.checkpoint_for(frontier)
    });
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
    tracing::info!(shard = %shard_id, to = %to, "handing a lease over (balancing)");
    if let Some((checkpoint, _)) = planned {
        let counter = lease.counter;
        match shared
            .leases
            .checkpoint(shard_id, counter, &shared.worker, &checkpoint)
            .await?
        {
            Some(counter) => lease.counter = counter,
            None => lose(shared, held, shard_id, "checkpoint refused"),
        }
    }
    Ok(())
}

/// A lease this task held is another's now (or its write was refused): stop reading the shard
/// and start a new turn, so nothing read in the old one is committed.
pub(super) fn lose(shared: &Shared, held: &mut BTreeMap<String, Held>, shard_id: &str, why: &str) {
    if let Some(lease) = held.remove(shard_id) {
        lease.reader.cancel();
        if let Some(partitions) = shared.partitions.get() {
            partitions.revoke(&lease.partition);
        }
        crate::metrics::clear_source_lag(KIND, &lease.partition);
        tracing::warn!(shard = %shard_id, why, "lease lost; the shard's new owner goes on from its checkpoint");
    }
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
}

/// A shard was checkpointed at its end: nothing more to read, its children may start.
pub(super) fn finish_shard(shared: &Shared, held: &mut BTreeMap<String, Held>, shard_id: &str) {
    if let Some(lease) = held.remove(shard_id) {
        lease.reader.cancel();
        if let Some(partitions) = shared.partitions.get() {
            partitions.revoke(&lease.partition);
        }
        crate::metrics::clear_source_lag(KIND, &lease.partition);
    }
    shared
        .positions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(shard_id);
    tracing::info!(shard = %shard_id, "shard read to its end and checkpointed (SHARD_END)");
    shared.shard_ended.notify_one();
}
