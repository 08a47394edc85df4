//! Shard leases in DynamoDB: who reads each shard, and how far its events are durable.
//!
//! One item per shard, in the KCL's schema where it fits:
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `leaseKey` | S (hash key) | the shard id |
//! | `leaseOwner` | S | the worker holding it; absent when free |
//! | `leaseCounter` | N | bumped by every write: the fencing token |
//! | `checkpoint` | S | last durable sequence number, or `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END` |
//! | `checkpointSubSequenceNumber` | N | always 0: classpulse checkpoints whole records |
//! | `ownerSwitchesSinceCheckpoint` | N | as in the KCL |
//! | `parentShardId` | SS | the shard's parents |
//! | `startingHashKey`, `endingHashKey` | S | the shard's hash key range, as the KCL keeps it (decimal) |
//! | `checkpointOffset` | N | classpulse: the offset of the record after `checkpoint` |
//! | `startSequence` | S | classpulse: the first record read from `LATEST`/`AT_TIMESTAMP` |
//! | `startTimestamp` | N | classpulse: epoch ms of `AT_TIMESTAMP` |
//! | `handoffTo` | S | classpulse: a worker that asked for the lease (graceful hand-off) |
//!
//! Differences from the KCL: one stream per table (`leaseKey` is the bare shard id, as in the
//! KCL's single-stream mode); the KCL 3 worker-metrics and coordinator-state tables are not
//! used (balancing is by lease count); `checkpointOffset` and `startSequence` make the offsets
//! classpulse numbers records with the same after every restart (see [`super`]).
//!
//! Balancing never takes a live lease outright: the worker short of its share sets `handoffTo`
//! on a lease of the busiest worker, which stops reading that shard, checkpoints what is
//! durable, and on its next round makes the asker the owner (as KCL 3's graceful hand-off). A
//! shard is never read by two workers at once in a planned move, so nothing read by the old
//! owner is written by it after the new one looked at what was written.
//!
//! Every write is conditional on the owner and the counter the writer last saw and bumps the
//! counter, so a worker that stalled past the lease's expiry has its checkpoint refused once
//! another worker took the shard. Expiry is judged as the KCL does: a lease whose counter has
//! not moved for the lease duration, on the observer's own clock (no clock sync needed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use tokio::time::Instant;

use crate::config::StartPosition;

/// Attribute names.
const KEY: &str = "leaseKey";
const OWNER: &str = "leaseOwner";
const COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
const PARENTS: &str = "parentShardId";
const HASH_START: &str = "startingHashKey";
const HASH_END: &str = "endingHashKey";
const OFFSET: &str = "checkpointOffset";
const START_SEQUENCE: &str = "startSequence";
const START_TIMESTAMP: &str = "startTimestamp";
const HANDOFF_TO: &str = "handoffTo";

/// Sentinel checkpoints (the KCL's).
const TRIM_HORIZON: &str = "TRIM_HORIZON";
const LATEST: &str = "LATEST";
const AT_TIMESTAMP: &str = "AT_TIMESTAMP";
const SHARD_END: &str = "SHARD_END";

/// Where a shard's next read starts, and the offset its first record gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Nothing read yet: from the oldest record kept.
    TrimHorizon,
    /// Nothing read yet: from the newest.
    Latest,
    /// Nothing read yet: from this epoch ms.
    AtTimestamp(i64),
    /// Nothing durable yet, but the first record read was this one (offset 0): a restart reads
    /// the same records, numbered the same.
    At(String),
    /// Every record up to and including `sequence` is durable; the next has offset `offset`.
    After {
        /// Sequence number of the last durable record.
        sequence: String,
        /// Offset of the record after it.
        offset: u64,
    },
    /// The shard is closed and every record in it durable: `offset` records (user records,
    /// counting each of a KPL aggregate) were read from it in all.
    ShardEnd {
        /// The offset after the shard's last record.
        offset: u64,
    },
}

impl Checkpoint {
    /// The offset the next record read gets.
    pub fn next_offset(&self) -> u64 {
        match self {
            Checkpoint::After { offset, .. } | Checkpoint::ShardEnd { offset } => *offset,
            _ => 0,
        }
    }
}

/// The first checkpoint of a new shard: a child shard always starts at its beginning, once its
/// parents are done, whatever the configured start is.
pub fn first_checkpoint(start: StartPosition, has_parents: bool) -> Checkpoint {
    match (has_parents, start) {
        (true, _) | (false, StartPosition::TrimHorizon) => Checkpoint::TrimHorizon,
        (false, StartPosition::Latest) => Checkpoint::Latest,
        (false, StartPosition::AtTimestamp(ms)) => Checkpoint::AtTimestamp(ms),
    }
}

/// One shard's lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub shard_id: String,
    /// The worker holding it.
    pub owner: Option<String>,
    /// The fencing token.
    pub counter: u64,
    /// Progress.
    pub checkpoint: Checkpoint,
    /// Parent shard ids.
    pub parents: Vec<String>,
    /// The shard's first and last hash key (absent on leases created before it was kept).
    pub hash_range: Option<(u128, u128)>,
    /// A worker that asked the owner to hand the lease over.
    pub handoff_to: Option<String>,
}

impl Lease {
    /// Whether the shard is read to its end and checkpointed there.
    pub fn is_finished(&self) -> bool {
        matches!(self.checkpoint, Checkpoint::ShardEnd { .. })
    }
}

/// A lease-table failure.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// DynamoDB could not be reached or throttled us: try again.
    #[error("lease table {table}: {detail}")]
    Unavailable {
        /// The lease table.
        table: String,
        /// What went wrong.
        detail: String,
    },
    /// Access denied or a malformed item: retrying will not help.
    #[error("lease table {table}: {detail}")]
    Fatal {
        /// The lease table.
        table: String,
        /// What went wrong.
        detail: String,
    },
}

impl LeaseError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LeaseError::Unavailable { .. })
    }
}

/// A conditional write's outcome: the new counter, or `None` when the condition failed (the
/// lease moved on: it is not ours any more, or someone else took it first).
pub type Written = Option<u64>;

/// The lease table of one application.
#[derive(Clone)]
pub struct LeaseTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl LeaseTable {
    /// The table `table`, reached with `client`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> LeaseTable {
        LeaseTable {
            client,
            table: table.to_owned(),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.table
    }

    fn error<E, R>(&self, error: SdkError<E, R>) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use crate::aws::{classify, Failure};
        match classify(&error) {
            Failure::Throttled => LeaseError::Unavailable {
                table: self.table.clone(),
                detail: "throttled".to_owned(),
            },
            Failure::Transient(detail) => LeaseError::Unavailable {
                table: self.table.clone(),
                detail,
            },
            Failure::Invalid(detail) | Failure::Fatal(detail) => LeaseError::Fatal {
                table: self.table.clone(),
                detail,
            },
        }
    }

    /// Creates the table (on-demand, keyed by `leaseKey`) if it is missing, and waits until it
    /// is active.
    pub async fn ensure(&self) -> Result<(), LeaseError> {
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        match described {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("ResourceNotFoundException") => {}
            Err(e) => return Err(self.error(e)),
        }
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("name and type are set"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("name and type are set"),
            )
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %self.table, "lease table created"),
            // Another task created it at the same time.
            Err(e) if e.code() == Some("ResourceInUseException") => {}
            Err(e) => return Err(self.error(e)),
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.error(e))?;
            let active = described
                .table()
                .and_then(|table| table.table_status())
                .is_some_and(|status| status.as_str() == "ACTIVE");
            if active {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LeaseError::Unavailable {
                    table: self.table.clone(),
                    detail: "not active after 120 s".to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Every lease (a consistent scan).
    pub async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.error(e))?;
            for item in page.items() {
                leases.push(from_item(item).map_err(|detail| LeaseError::Fatal {
                    table: self.table.clone(),
                    detail,
                })?);
            }
            start = page.last_evaluated_key().cloned();
            if start.is_none() {
                return Ok(leases);
            }
        }
    }

    /// Adds a free lease for a shard not in the table yet; `false` if it was there already.
    pub async fn create(
        &self,
        shard_id: &str,
        parents: &[String],
        hash_range: Option<(u128, u128)>,
        checkpoint: &Checkpoint,
    ) -> Result<bool, LeaseError> {
        let mut item = HashMap::from([
            (KEY.to_owned(), s(shard_id)),
            (COUNTER.to_owned(), n(0)),
            (OWNER_SWITCHES.to_owned(), n(0)),
        ]);
        item.extend(
            checkpoint_attributes(checkpoint)
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        );
        if !parents.is_empty() {
            item.insert(PARENTS.to_owned(), AttributeValue::Ss(parents.to_vec()));
        }
        if let Some((start, end)) = hash_range {
            item.insert(HASH_START.to_owned(), s(&start.to_string()));
            item.insert(HASH_END.to_owned(), s(&end.to_string()));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", KEY)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Takes `shard_id` for `worker`, if its counter is still `seen_counter` (nobody renewed,
    /// checkpointed or took it since it was listed).
    pub async fn take(
        &self,
        shard_id: &str,
        seen_counter: u64,
        worker: &str,
    ) -> Result<Written, LeaseError> {
        self.update(
            shard_id,
            seen_counter,
            (None, Some(worker)),
            "SET #owner = :worker, #switches = if_not_exists(#switches, :zero) + :one REMOVE #handoff",
            vec![
                ("#owner", OWNER),
                ("#switches", OWNER_SWITCHES),
                ("#handoff", HANDOFF_TO),
            ],
            vec![(":worker", s(worker)), (":zero", n(0)), (":one", n(1))],
        )
        .await
    }

    /// Asks `owner` to hand its live lease over to `worker`. The counter is not bumped (the
    /// owner's renewals go on); refused if someone asked first or the owner changed.
    pub async fn request_handoff(
        &self,
        shard_id: &str,
        owner: &str,
        worker: &str,
    ) -> Result<bool, LeaseError> {
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(shard_id))
            .update_expression("SET #handoff = :worker")
            .condition_expression("#owner = :owner AND attribute_not_exists(#handoff)")
            .expression_attribute_names("#handoff", HANDOFF_TO)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_values(":worker", s(worker))
            .expression_attribute_values(":owner", s(owner))
            .send()
            .await;
        match updated {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Makes `to` the owner of `worker`'s lease (the second half of a hand-off).
    pub async fn transfer(
        &self,
        shard_id: &str,
        counter: u64,
        worker: &str,
        to: &str,
    ) -> Result<Written, LeaseError> {
        self.update(
            shard_id,
            counter,
            (Some(worker), Some(to)),
            "SET #owner = :to, #switches = if_not_exists(#switches, :zero) + :one REMOVE #handoff",
            vec![("#switches", OWNER_SWITCHES), ("#handoff", HANDOFF_TO)],
            vec![(":to", s(to)), (":zero", n(0)), (":one", n(1))],
        )
        .await
    }

    /// Renews `worker`'s lease.
    pub async fn renew(
        &self,
        shard_id: &str,
        counter: u64,
        worker: &str,
    ) -> Result<Written, LeaseError> {
        self.update(
            shard_id,
            counter,
            (Some(worker), Some(worker)),
            "",
            vec![],
            vec![],
        )
        .await
    }

    /// Records `checkpoint` in `worker`'s lease.
    pub async fn checkpoint(
        &self,
        shard_id: &str,
        counter: u64,
        worker: &str,
        checkpoint: &Checkpoint,
    ) -> Result<Written, LeaseError> {
        let mut names = vec![
            ("#checkpoint", CHECKPOINT),
            ("#sub", SUB_SEQUENCE),
            ("#switches", OWNER_SWITCHES),
            ("#offset", OFFSET),
        ];
        let attributes = checkpoint_attributes(checkpoint);
        let mut values = vec![
            (":checkpoint", attributes[CHECKPOINT].clone()),
            (":zero", n(0)),
            (":offset", n(checkpoint.next_offset())),
        ];
        let mut expression =
            "SET #checkpoint = :checkpoint, #sub = :zero, #switches = :zero, #offset = :offset"
                .to_owned();
        if let Some(start) = attributes.get(START_SEQUENCE) {
            names.push(("#start", START_SEQUENCE));
            values.push((":start", start.clone()));
            expression.push_str(", #start = :start");
        }
        self.update(
            shard_id,
            counter,
            (Some(worker), Some(worker)),
            &expression,
            names,
            values,
        )
        .await
    }

    /// Gives the lease up (graceful hand-off): it is free for any worker at once.
    pub async fn release(
        &self,
        shard_id: &str,
        counter: u64,
        worker: &str,
    ) -> Result<Written, LeaseError> {
        self.update(
            shard_id,
            counter,
            (Some(worker), None),
            "REMOVE #owner, #handoff",
            vec![("#handoff", HANDOFF_TO)],
            vec![],
        )
        .await
    }

    /// One conditional update: `leaseCounter` must still be `counter` (and `leaseOwner` be
    /// the first of `owners`, when given); `clause` runs along with the counter's bump and
    /// leaves the second of `owners` as the owner.
    async fn update(
        &self,
        shard_id: &str,
        counter: u64,
        (owner, owner_after): (Option<&str>, Option<&str>),
        clause: &str,
        names: Vec<(&str, &str)>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Written, LeaseError> {
        // `SET a = ..., b = ... REMOVE c`: the counter's bump joins the clause's SET, if any.
        let bump = "#counter = :next";
        let expression = if let Some(rest) = clause.strip_prefix("SET ") {
            format!("SET {bump}, {rest}")
        } else if clause.is_empty() {
            format!("SET {bump}")
        } else {
            format!("SET {bump} {clause}")
        };
        let mut condition = "#counter = :counter".to_owned();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, s(shard_id))
            .update_expression(expression)
            .expression_attribute_names("#counter", COUNTER)
            .expression_attribute_values(":counter", n(counter))
            .expression_attribute_values(":next", n(counter + 1));
        if let Some(owner) = owner {
            condition.push_str(" AND #owner = :owner");
            request = request
                .expression_attribute_names("#owner", OWNER)
                .expression_attribute_values(":owner", s(owner));
        }
        for (placeholder, name) in names {
            request = request.expression_attribute_names(placeholder, name);
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        match request.condition_expression(condition).send().await {
            Ok(_) => Ok(Some(counter + 1)),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                // An attempt whose answer was lost (a reset, a cut-short answer, a timeout)
                // may have been applied; the SDK's retry of it is then refused. The lease
                // shows it: the next counter with the owner this update leaves. Nobody else
                // writes that pair (a taker writes itself as owner), so it is this update's.
                let now = self.read(shard_id).await?;
                let applied = now.as_ref().is_some_and(|lease| {
                    lease.counter == counter + 1 && lease.owner.as_deref() == owner_after
                });
                if applied {
                    tracing::debug!(shard = %shard_id, counter = counter + 1, "lease update applied before its retry was refused");
                }
                Ok(applied.then_some(counter + 1))
            }
            Err(e) => Err(self.error(e)),
        }
    }

    /// The lease of `shard_id` as it is now (a strongly consistent read), if there is one.
    async fn read(&self, shard_id: &str) -> Result<Option<Lease>, LeaseError> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(KEY, s(shard_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        got.item()
            .map(|item| {
                from_item(item).map_err(|detail| LeaseError::Fatal {
                    table: self.table.clone(),
                    detail,
                })
            })
            .transpose()
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(number: u64) -> AttributeValue {
    AttributeValue::N(number.to_string())
}

/// The stored form of a checkpoint.
fn checkpoint_attributes(checkpoint: &Checkpoint) -> HashMap<&'static str, AttributeValue> {
    let mut attributes = HashMap::new();
    let (text, offset) = match checkpoint {
        Checkpoint::TrimHorizon => (TRIM_HORIZON.to_owned(), 0),
        Checkpoint::Latest => (LATEST.to_owned(), 0),
        Checkpoint::AtTimestamp(ms) => {
            attributes.insert(START_TIMESTAMP, AttributeValue::N(ms.to_string()));
            (AT_TIMESTAMP.to_owned(), 0)
        }
        Checkpoint::At(sequence) => {
            attributes.insert(START_SEQUENCE, s(sequence));
            // The KCL would read a sentinel as "not started"; so does classpulse, and then
            // resolves it to `startSequence`.
            (LATEST.to_owned(), 0)
        }
        Checkpoint::After { sequence, offset } => (sequence.clone(), *offset),
        Checkpoint::ShardEnd { offset } => (SHARD_END.to_owned(), *offset),
    };
    attributes.insert(CHECKPOINT, s(&text));
    attributes.insert(OFFSET, n(offset));
    attributes
}

/// Reads a lease item; the error names the attribute that is wrong.
fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Lease, String> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    let number = |name: &str| -> Result<Option<i64>, String> {
        match item.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_n()
                .ok()
                .and_then(|n| n.parse().ok())
                .map(Some)
                .ok_or_else(|| format!("lease attribute {name} is not a number: {value:?}")),
        }
    };
    let shard_id = text(KEY).ok_or("a lease item without a string leaseKey")?;
    let counter = number(COUNTER)?.unwrap_or(0).max(0) as u64;
    let offset = number(OFFSET)?.unwrap_or(0).max(0) as u64;
    let raw = text(CHECKPOINT).unwrap_or_else(|| TRIM_HORIZON.to_owned());
    let checkpoint = match raw.as_str() {
        TRIM_HORIZON => Checkpoint::TrimHorizon,
        SHARD_END => Checkpoint::ShardEnd { offset },
        LATEST | AT_TIMESTAMP if text(START_SEQUENCE).is_some() => {
            Checkpoint::At(text(START_SEQUENCE).unwrap_or_default())
        }
        LATEST => Checkpoint::Latest,
        AT_TIMESTAMP => Checkpoint::AtTimestamp(
            number(START_TIMESTAMP)?
                .ok_or_else(|| format!("lease {shard_id}: AT_TIMESTAMP without startTimestamp"))?,
        ),
        sequence if sequence.bytes().all(|b| b.is_ascii_digit()) && !sequence.is_empty() => {
            Checkpoint::After {
                sequence: sequence.to_owned(),
                offset,
            }
        }
        other => return Err(format!("lease {shard_id}: unknown checkpoint {other:?}")),
    };
    let parents = item
        .get(PARENTS)
        .and_then(|v| v.as_ss().ok())
        .cloned()
        .unwrap_or_default();
    let hash_key = |name: &str| text(name).and_then(|key| key.parse::<u128>().ok());
    let hash_range = hash_key(HASH_START).zip(hash_key(HASH_END));
    Ok(Lease {
        hash_range,
        shard_id,
        owner: text(OWNER),
        counter,
        checkpoint,
        parents,
        handoff_to: text(HANDOFF_TO),
    })
}

/// What one worker observed of every lease's counter: a lease is expired when its counter has
/// not moved for the lease duration on this worker's clock.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observations {
    /// Records the counters of `leases` seen at `now`; returns the leases that are free to
    /// take: no owner, or an owner whose counter has not moved for `lease_duration`.
    pub fn expired(
        &mut self,
        leases: &[Lease],
        now: Instant,
        lease_duration: Duration,
    ) -> Vec<String> {
        let mut expired = Vec::new();
        self.seen
            .retain(|shard, _| leases.iter().any(|lease| &lease.shard_id == shard));
        for lease in leases {
            let entry = self
                .seen
                .entry(lease.shard_id.clone())
                .or_insert((lease.counter, now));
            if entry.0 != lease.counter {
                *entry = (lease.counter, now);
            }
            if lease.owner.is_none() || now.duration_since(entry.1) >= lease_duration {
                expired.push(lease.shard_id.clone());
            }
        }
        expired
    }
}

/// Whether `lease` may be read now: not finished, and every parent finished (or gone from the
/// table and the stream: trimmed past retention).
pub fn is_ready(lease: &Lease, by_shard: &BTreeMap<&str, &Lease>) -> bool {
    !lease.is_finished()
        && lease.parents.iter().all(|parent| {
            by_shard
                .get(parent.as_str())
                .is_none_or(|parent| parent.is_finished())
        })
}

/// Which leases `worker` should take (free or expired ones) or ask for (a live one, by
/// hand-off) this round, KCL-style: count the workers holding live
/// leases (and this one), aim at an even share of the readable leases, take expired or free
/// ones first (at most `max_per_round`), and only when none is left steal one from the most
/// loaded worker if it holds more than the share (or the share while this one is two short).
pub fn plan_takes(
    leases: &[Lease],
    expired: &[String],
    worker: &str,
    max_per_round: usize,
) -> Vec<String> {
    let by_shard: BTreeMap<&str, &Lease> = leases
        .iter()
        .map(|lease| (lease.shard_id.as_str(), lease))
        .collect();
    let readable: Vec<&Lease> = leases
        .iter()
        .filter(|lease| is_ready(lease, &by_shard))
        .collect();
    if readable.is_empty() {
        return Vec::new();
    }
    let is_expired = |lease: &Lease| expired.contains(&lease.shard_id);
    let mut held: BTreeMap<&str, usize> = BTreeMap::from([(worker, 0)]);
    for lease in &readable {
        // A lease being handed over counts for the worker it goes to.
        if let (Some(owner), false) = (&lease.owner, is_expired(lease)) {
            let holder = lease.handoff_to.as_deref().unwrap_or(owner);
            *held.entry(holder).or_default() += 1;
        }
    }
    let target = readable.len().div_ceil(held.len());
    let mine = held[worker];
    if mine >= target {
        return Vec::new();
    }
    let wanted = (target - mine).min(max_per_round);
    let mut takes: Vec<String> = readable
        .iter()
        .filter(|lease| is_expired(lease) && lease.owner.as_deref() != Some(worker))
        .map(|lease| lease.shard_id.clone())
        .take(wanted)
        .collect();
    if takes.is_empty() {
        // Steal one from the most loaded worker, only if it has more than its share.
        let busiest = held
            .iter()
            .filter(|(owner, _)| **owner != worker)
            .max_by_key(|(owner, count)| (**count, std::cmp::Reverse(**owner)));
        if let Some((owner, count)) = busiest {
            // As the KCL: from a worker above the share, or at it when this one is two or
            // more short (else 7/7/5 of 19 leases would stay so).
            if *count > target || (*count == target && target - mine > 1) {
                if let Some(lease) = readable.iter().rev().find(|lease| {
                    lease.owner.as_deref() == Some(owner)
                        && lease.handoff_to.is_none()
                        && !is_expired(lease)
                }) {
                    takes.push(lease.shard_id.clone());
                }
            }
        }
    }
    takes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease(shard: &str, owner: Option<&str>) -> Lease {
        Lease {
            shard_id: shard.to_owned(),
            owner: owner.map(str::to_owned),
            counter: 1,
            checkpoint: Checkpoint::TrimHorizon,
            parents: Vec::new(),
            hash_range: None,
            handoff_to: None,
        }
    }

    #[test]
    fn checkpoints_survive_the_stored_form() {
        for checkpoint in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::AtTimestamp(1_764_000_000_000),
            Checkpoint::At("4959".to_owned()),
            Checkpoint::After {
                sequence: "49590338271490256608559692538361571095921575989136588898".to_owned(),
                offset: 1234,
            },
            Checkpoint::ShardEnd { offset: 99 },
        ] {
            let mut item: HashMap<String, AttributeValue> = checkpoint_attributes(&checkpoint)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            item.insert(KEY.to_owned(), s("shardId-000000000001"));
            item.insert(COUNTER.to_owned(), n(7));
            item.insert(PARENTS.to_owned(), AttributeValue::Ss(vec!["p".to_owned()]));
            let read = from_item(&item).unwrap();
            assert_eq!(read.checkpoint, checkpoint);
            assert_eq!(read.counter, 7);
            assert_eq!(read.parents, vec!["p".to_owned()]);
        }
    }

    #[test]
    fn a_malformed_lease_names_what_is_wrong() {
        let item = HashMap::from([
            (KEY.to_owned(), s("shardId-1")),
            (CHECKPOINT.to_owned(), s("garbage")),
        ]);
        let error = from_item(&item).unwrap_err();
        assert!(
            error.contains("shardId-1") && error.contains("garbage"),
            "{error}"
        );
        let item = HashMap::from([(KEY.to_owned(), s("x")), (COUNTER.to_owned(), s("seven"))]);
        assert!(from_item(&item).unwrap_err().contains("leaseCounter"));
    }

    #[test]
    fn a_lease_expires_when_its_counter_stands_still() {
        let start = Instant::now();
        let mut observations = Observations::default();
        let mut leases = vec![lease("a", Some("w1")), lease("b", None)];
        let duration = Duration::from_secs(10);
        assert_eq!(observations.expired(&leases, start, duration), vec!["b"]);
        leases[0].counter = 2; // renewed
        let later = start + Duration::from_secs(9);
        assert_eq!(observations.expired(&leases, later, duration), vec!["b"]);
        // Not renewed for 10 s after the last change.
        let much_later = later + Duration::from_secs(10);
        assert_eq!(
            observations.expired(&leases, much_later, duration),
            vec!["a", "b"]
        );
    }

    #[test]
    fn children_wait_for_every_parent() {
        let mut parent_a = lease("a", None);
        let parent_b = lease("b", None);
        let mut child = lease("c", None);
        child.parents = vec!["a".to_owned(), "b".to_owned()];
        parent_a.checkpoint = Checkpoint::ShardEnd { offset: 3 };
        let leases = [parent_a.clone(), parent_b.clone(), child.clone()];
        let by_shard = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        assert!(!is_ready(&child, &by_shard), "b is not finished");
        assert!(!is_ready(&parent_a, &by_shard), "a is finished");
        let mut done_b = parent_b;
        done_b.checkpoint = Checkpoint::ShardEnd { offset: 0 };
        let leases = [parent_a, done_b, child.clone()];
        let by_shard = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        assert!(is_ready(&child, &by_shard));
        // A parent trimmed away (no lease) does not block.
        let leases = [child.clone()];
        let by_shard = leases.iter().map(|l| (l.shard_id.as_str(), l)).collect();
        assert!(is_ready(&child, &by_shard));
    }

    #[test]
    fn a_new_worker_takes_free_leases_then_steals_one_at_a_time() {
        let free: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None)).collect();
        let expired: Vec<String> = free.iter().map(|l| l.shard_id.clone()).collect();
        assert_eq!(plan_takes(&free, &expired, "w1", 2), vec!["s0", "s1"]);
        assert_eq!(plan_takes(&free, &expired, "w1", 10).len(), 4);

        // w1 holds all four; w2 arrives: it steals one, then (next round) another.
        let held: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("w1")))
            .collect();
        assert_eq!(plan_takes(&held, &[], "w2", 2), vec!["s3"]);
        let mut after = held.clone();
        after[3].owner = Some("w2".to_owned());
        assert_eq!(plan_takes(&after, &[], "w2", 2), vec!["s2"]);
        after[2].owner = Some("w2".to_owned());
        assert!(plan_takes(&after, &[], "w2", 2).is_empty(), "balanced 2/2");
        assert!(plan_takes(&after, &[], "w1", 2).is_empty());
    }

    proptest! {
        /// Whatever the starting assignment, workers planning in turn end balanced (each within
        /// one of the others), with every readable lease held by exactly one worker.
        #[test]
        fn rounds_of_planning_converge_to_an_even_share(
            owners in proptest::collection::vec(proptest::option::of(0usize..3), 1..24),
            workers in 1usize..4,
        ) {
            let names: Vec<String> = (0..workers).map(|w| format!("w{w}")).collect();
            let mut leases: Vec<Lease> = owners.iter().enumerate().map(|(i, owner)| {
                lease(&format!("s{i:02}"), owner.filter(|o| *o < workers).map(|o| names[o].as_str()))
            }).collect();
            for _round in 0..60 {
                for name in &names {
                    let expired: Vec<String> = leases.iter().filter(|l| l.owner.is_none()).map(|l| l.shard_id.clone()).collect();
                    for shard in plan_takes(&leases, &expired, name, 3) {
                        let lease = leases.iter_mut().find(|l| l.shard_id == shard).unwrap();
                        lease.owner = Some(name.clone());
                    }
                }
            }
            let counts: Vec<usize> = names.iter().map(|n| leases.iter().filter(|l| l.owner.as_ref() == Some(n)).count()).collect();
            prop_assert!(leases.iter().all(|l| l.owner.is_some()));
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "{counts:?}");
        }
    }
}
