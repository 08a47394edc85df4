//! The stage's persistence: checkpoints, sealed id segments, final results and live values
//! handed to a writer task in order, and a partition restored from its newest checkpoint (or refused, when a newer
//! build wrote it: decision 0015), or taken over from its parents' (a Kinesis child shard).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::ack::{AckToken, PartitionId};
use crate::aggregate::directory::Place;
use crate::aggregate::output::{ClassResult, Outgoing};
use crate::aggregate::partition::PartitionState;
use crate::aggregate::segment;
use crate::live::{LiveRecord, Publisher};
use crate::metrics;
use crate::sink::dynamodb::aggregates::AggregatesTable;
use crate::stats::Stats;
use crate::store::{sanitize, ObjectWriter};

use super::segments::InFlight;
use super::{AggregateError, AggregateStage, Owned, NAME, REFUSED};

/// Checkpoints kept per partition (the newest, and one before it).
const CHECKPOINTS_KEPT: usize = 2;

/// Work for the writer task, in order.
#[derive(Default)]
pub(super) struct Job {
    /// Its number, in the order jobs are handed over.
    number: u64,
    checkpoints: Vec<(Path, Bytes)>,
    /// Sealed id segments.
    segments: Vec<(Path, Bytes)>,
    results: Vec<(Path, Bytes)>,
    /// Live values for the aggregates table.
    live_rows: Vec<ClassResult>,
    /// Final results for the aggregates table.
    final_rows: Vec<ClassResult>,
    /// Final records for the walls.
    final_records: Vec<LiveRecord>,
    deletes: Vec<Path>,
    tokens: Vec<AckToken>,
}

impl AggregateStage {
    /// Restores `partition` for turn `generation` from its newest checkpoint; `false` if it
    /// is refused: that checkpoint (or a parent's) has a format newer than this build reads.
    /// A refused partition is not ready until it is revoked, and nothing of it is written,
    /// so the newer state stays for a build that reads it.
    pub(super) async fn take_up(
        &mut self,
        partition: &PartitionId,
        generation: u64,
    ) -> Result<bool, AggregateError> {
        if self
            .refused
            .get(partition)
            .is_some_and(|(refused, _)| *refused >= generation)
        {
            return Ok(false);
        }
        match self.restore(partition, generation).await {
            Ok(owned) => {
                self.partitions.insert(partition.clone(), owned);
                self.wait_for_unbound(partition);
                if self.refused.remove(partition).is_some() {
                    self.report_refused();
                }
                Ok(true)
            }
            Err(AggregateError::Checkpoint {
                partition: from,
                key,
                source,
            }) if source.is_newer() => {
                tracing::error!(partition = %partition, checkpoint = %key, error = %source, "partition refused: its checkpoint is of a newer build; nothing of it is counted or written here");
                metrics::record_checkpoint_refused();
                self.refused.insert(
                    partition.clone(),
                    (generation, format!("{partition} ({from}: {key}: {source})")),
                );
                self.report_refused();
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Readiness names the refused partitions.
    pub(super) fn report_refused(&self) {
        if self.refused.is_empty() {
            self.health.ready(REFUSED);
            return;
        }
        let mut names: Vec<&str> = self.refused.values().map(|(_, why)| why.as_str()).collect();
        names.sort();
        self.health.not_ready(
            REFUSED,
            format!(
                "partitions refused, their checkpoints are of a newer build: {}",
                names.join("; ")
            ),
        );
    }

    /// Hands the writer the live values of every class that changed. They hold no
    /// acknowledgement: live values are a view, the checkpoint is the record.
    pub(super) async fn write_live(
        &mut self,
        jobs: &mpsc::Sender<Job>,
    ) -> Result<(), AggregateError> {
        let mut job = Job::default();
        for owned in self.partitions.values_mut() {
            for result in owned.state.take_changed(&self.rules) {
                if self.live_interval.is_some() {
                    if let Ok((relative, body)) = result.live_object() {
                        job.results
                            .push((self.writer.path(&relative), Bytes::from(body)));
                    }
                }
                if self
                    .table
                    .as_ref()
                    .is_some_and(|(_, every)| every.is_some())
                {
                    job.live_rows.push(result);
                }
            }
        }
        if job.results.is_empty() && job.live_rows.is_empty() {
            return Ok(());
        }
        self.send(jobs, job).await
    }

    /// Hands the walls' publisher a record of every class that counted an event since its
    /// last one (never waits: the publisher keeps the newest of each class).
    pub(super) fn publish_live(&mut self) {
        let Some(walls) = &self.walls else {
            return;
        };
        for (partition, owned) in &mut self.partitions {
            for (result, watermark_ms) in owned.state.take_unpublished(&self.rules) {
                let record = LiveRecord::from_result(
                    &result,
                    partition.index,
                    watermark_ms,
                    &walls.tiles,
                    self.rules.leaderboard_size,
                );
                walls.publisher.publish(&record);
            }
        }
    }

    /// Hands `job` to the writer, numbered.
    async fn send(&mut self, jobs: &mpsc::Sender<Job>, mut job: Job) -> Result<(), AggregateError> {
        job.number = self.next_job;
        self.next_job += 1;
        jobs.send(job)
            .await
            .map_err(|_| AggregateError::Writer("writer task ended".into()))
    }

    /// Hands the writer a checkpoint of every changed partition, the final results they
    /// record, and the acknowledgements they cover.
    pub(super) async fn checkpoint(
        &mut self,
        jobs: &mpsc::Sender<Job>,
    ) -> Result<(), AggregateError> {
        let mut job = Job::default();
        for (partition, owned) in &mut self.partitions {
            owned.dirty |= owned.state.seal_ids(segment::SEAL_AT);
            if owned.dirty {
                let position = owned.state.position.unwrap_or(0);
                let key = self.writer.path(&format!(
                    "{}/{position:020}.postcard.zst",
                    checkpoint_dir(&self.writer, partition)
                ));
                job.checkpoints
                    .push((key.clone(), Bytes::from(encode(&owned.state))));
                if owned.checkpoints.last() != Some(&key) {
                    owned.checkpoints.push(key);
                }
                while owned.checkpoints.len() > CHECKPOINTS_KEPT {
                    job.deletes.push(owned.checkpoints.remove(0));
                }
                job.deletes.append(&mut owned.leftovers);
                for outgoing in owned.state.outbox.drain(..) {
                    match outgoing {
                        Outgoing::Result(result) => {
                            let mut objects = result.objects();
                            if self.live_interval.is_some() {
                                // The screens' document ends with the final values.
                                objects = objects.and_then(|mut objects| {
                                    objects.push(result.live_object()?);
                                    Ok(objects)
                                });
                            }
                            match objects {
                                Ok(objects) => job.results.extend(objects.into_iter().map(
                                    |(relative, body)| {
                                        (self.writer.path(&relative), Bytes::from(body))
                                    },
                                )),
                                // Plain structs of numbers and strings always serialise.
                                Err(error) => {
                                    unreachable!("class result does not serialise: {error}")
                                }
                            }
                            if let Some(walls) = &self.walls {
                                // The class is over: its watermark is its last event.
                                job.final_records.push(LiveRecord::from_result(
                                    &result,
                                    partition.index,
                                    result.summary.last_event_ms,
                                    &walls.tiles,
                                    self.rules.leaderboard_size,
                                ));
                            }
                            if self.table.is_some() {
                                job.final_rows.push(*result);
                            }
                        }
                        Outgoing::Part { key, body } | Outgoing::HomeFinal { key, body } => {
                            job.results
                                .push((self.writer.path(&key), Bytes::from(body)));
                        }
                        Outgoing::Ids {
                            studio_id,
                            class_id,
                            ids,
                        } => {
                            let body = segment::encode(&ids);
                            let key =
                                segment::key(&self.writer, partition, &studio_id, &class_id, &body);
                            let class_dir = segment::class_dir(
                                &self.writer,
                                &partition.stream,
                                &studio_id,
                                &class_id,
                            );
                            self.segments.written(&class_dir, &key, &ids);
                            self.in_flight.push(InFlight {
                                job: self.next_job,
                                class_dir,
                                key: key.clone(),
                                ids: Arc::new(ids),
                            });
                            job.segments.push((key, Bytes::from(body)));
                        }
                    }
                }
                owned.dirty = false;
            }
            job.tokens.append(&mut owned.tokens);
        }
        if job.checkpoints.is_empty() && job.tokens.is_empty() {
            return Ok(());
        }
        self.send(jobs, job).await
    }

    /// The newest checkpoint of `partition`, or an empty state. Listing and reading are
    /// retried until they succeed (the stage is not ready meanwhile); an unreadable
    /// checkpoint stops the stage.
    pub(super) async fn restore(
        &self,
        partition: &PartitionId,
        generation: u64,
    ) -> Result<Owned, AggregateError> {
        let directory = self.writer.path(&checkpoint_dir(&self.writer, partition));
        let store = self.writer.store();
        let (keys, body) = self
            .retry(&format!("reading {directory}"), || {
                newest(store.as_ref(), &directory)
            })
            .await;
        let place = self
            .class_directory
            .then(|| Place::new(&self.writer, partition));
        let Some((key, body)) = body else {
            let mut state = PartitionState::new(partition.to_string());
            state.place = place;
            let inherited = self.inherit(partition, &mut state).await?;
            return Ok(Owned {
                generation,
                state,
                tokens: Vec::new(),
                dirty: inherited,
                checkpoints: keys,
                recheck: HashMap::new(),
                leftovers: Vec::new(),
                waiting: Vec::new(),
                screened: 0,
            });
        };
        let mut state =
            PartitionState::decode(&body, Utc::now().timestamp_millis()).map_err(|source| {
                AggregateError::Checkpoint {
                    partition: partition.clone(),
                    key: key.to_string(),
                    source,
                }
            })?;
        tracing::info!(
            partition = %partition,
            position = state.position,
            classes = state.classes.len(),
            "aggregate state restored"
        );
        state.place = place;
        // Results recorded by the checkpoint may not have been written: write them again.
        let dirty = !state.outbox.is_empty();
        Ok(Owned {
            generation,
            state,
            tokens: Vec::new(),
            dirty,
            checkpoints: keys,
            recheck: HashMap::new(),
            leftovers: Vec::new(),
            waiting: Vec::new(),
            screened: 0,
        })
    }

    /// A partition seen for the first time that continues others (a Kinesis child shard,
    /// read only once its parents are read to their end and checkpointed) takes over their
    /// classes in its hash range from their last checkpoints. Returns whether it took any.
    pub(super) async fn inherit(
        &self,
        partition: &PartitionId,
        state: &mut PartitionState,
    ) -> Result<bool, AggregateError> {
        let Some(lineage) = self
            .registry
            .as_ref()
            .and_then(|registry| registry.lineage(partition))
        else {
            return Ok(false);
        };
        let store = self.writer.store();
        let mut classes = 0;
        for parent in &lineage.parents {
            let directory = self.writer.path(&checkpoint_dir(&self.writer, parent));
            let (_, body) = self
                .retry("reading a parent partition's checkpoints", || {
                    newest(store.as_ref(), &directory)
                })
                .await;
            let Some((key, body)) = body else {
                continue;
            };
            let parent_state = PartitionState::decode(&body, Utc::now().timestamp_millis())
                .map_err(|source| AggregateError::Checkpoint {
                    partition: parent.clone(),
                    key: key.to_string(),
                    source,
                })?;
            classes += state.inherit(parent_state, lineage.hash_range);
        }
        tracing::info!(partition = %partition, parents = ?lineage.parents.iter().map(ToString::to_string).collect::<Vec<_>>(), classes, "aggregate state taken over from the parent partitions");
        Ok(true)
    }
}

/// Encodes a partition's state. Hundreds of classes take a few hundred milliseconds of CPU:
/// on a multi-threaded runtime the worker hands its other tasks to the rest first.
fn encode(state: &PartitionState) -> Vec<u8> {
    let flavor = tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(|| state.encode())
    } else {
        state.encode()
    }
}

fn checkpoint_dir(writer: &ObjectWriter, partition: &PartitionId) -> String {
    format!(
        "checkpoints/aggregates/{}-{}-{}",
        writer.source_kind(),
        sanitize(&partition.stream),
        partition.index
    )
}

/// Every checkpoint key under `directory` (oldest first) and the newest one's body.
async fn newest(
    store: &dyn ObjectStore,
    directory: &Path,
) -> object_store::Result<(Vec<Path>, Option<(Path, Bytes)>)> {
    let mut keys: Vec<Path> = store
        .list(Some(directory))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    keys.sort();
    let Some(newest) = keys.last().cloned() else {
        return Ok((keys, None));
    };
    let body = store.get(&newest).await?.bytes().await?;
    Ok((keys, Some((newest, body))))
}

/// Writes each job's checkpoints, then its id segments and results (and the walls' final
/// records, once the broker has them), then releases its acknowledgements; `done` is the
/// number of the last job written.
pub(super) async fn write_jobs(
    mut jobs: mpsc::Receiver<Job>,
    writer: ObjectWriter,
    table: Option<AggregatesTable>,
    stats: Arc<Stats>,
    done: Arc<AtomicU64>,
    walls: Option<Publisher>,
) {
    while let Some(job) = jobs.recv().await {
        let started = Instant::now();
        let mut bytes = 0;
        for (key, body) in job.checkpoints {
            bytes += body.len();
            writer.put(NAME, &key, body, &[]).await;
        }
        metrics::record_id_segment_requests("put", job.segments.len() as u64);
        for (key, body) in job.segments {
            writer.put(NAME, &key, body, &[]).await;
        }
        for (key, body) in job.results {
            writer.put(NAME, &key, body, &[]).await;
            Stats::add(&stats.aggregate_objects, 1);
        }
        if let Some(walls) = &walls {
            for record in &job.final_records {
                walls.publish_final(record).await;
            }
        }
        if let Some(table) = &table {
            if !job.final_rows.is_empty() {
                table.write_final(&job.final_rows).await;
            }
            if !job.live_rows.is_empty() {
                table.write_live(&job.live_rows).await;
            }
        }
        metrics::record_aggregate_checkpoint(bytes, started.elapsed());
        done.store(job.number, Ordering::Release);
        drop(job.tokens);
        for key in job.deletes {
            if let Err(error) = writer.store().delete(&key).await {
                tracing::debug!(key = %key, error = %error, "old checkpoint not deleted");
            }
        }
    }
}
