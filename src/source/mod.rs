//! Sources: where messages come from, and where durable positions are committed back to.
//!
//! A source hands the pipeline [`RawBatch`]es, each holding messages of one partition in offset
//! order, and later receives the frontier of each partition (the next offset to read after a
//! restart) through [`Source::commit`]. The pipeline commits only positions whose events every
//! sink has made durable (see [`crate::ack`]).

pub mod kafka;
pub mod kinesis;
pub mod simulator;

use async_trait::async_trait;

use crate::ack::PartitionId;
use crate::decode::RawMessage;
use crate::partitions::Partitions;

/// Messages of one partition, in offset order.
#[derive(Debug, Clone)]
pub struct RawBatch {
    /// The partition they came from.
    pub partition: PartitionId,
    /// The partition's turn of ownership when they were read ([`Partitions::generation`]):
    /// batches read before a rebalance are told apart from the replay after it.
    pub generation: u64,
    /// The messages; never empty.
    pub messages: Vec<RawMessage>,
}

/// A source failure.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source's backend is unreachable or refused a request; retrying may help.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// A setting or permission problem that retrying will not fix.
    #[error("source misconfigured: {0}")]
    Fatal(String),
}

impl SourceError {
    /// Whether trying again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Unavailable(_))
    }
}

/// A stream of messages with committable positions.
#[async_trait]
pub trait Source: Send {
    /// Short fixed name: metric label and lake object name prefix.
    fn kind(&self) -> &'static str;

    /// The next batch. `Ok(None)` means a bounded source has ended.
    ///
    /// Cancel-safe: the pipeline may drop the future when a shutdown starts.
    async fn next_batch(&mut self) -> Result<Option<RawBatch>, SourceError>;

    /// Records that every message below `next_offset` of each partition is durable.
    async fn commit(&mut self, frontiers: &[(PartitionId, u64)]) -> Result<(), SourceError>;

    /// Called once after the last commit: make the commits durable and release the
    /// partitions, within a bounded time.
    async fn shutdown(&mut self) {}

    /// Gives the source the pipeline's partition registry before the first batch. A source
    /// whose partitions move between tasks (a consumer group, shard leases) reports each
    /// change with [`Partitions::assign`] and [`Partitions::revoke`], stamps batches with
    /// [`Partitions::generation`], may commit the durable frontier of a partition it gives
    /// up, and says where it stands against each partition's end.
    fn attach(&mut self, _partitions: Partitions) {}

    /// The pipeline is full: stop fetching until [`Source::resume`]. Meanwhile the pipeline
    /// calls [`Source::keep_alive`] every second.
    fn pause(&mut self) {}

    /// The pipeline has room again: fetch as before.
    fn resume(&mut self) {}

    /// Called while paused: do what keeps the source's session alive (a Kafka consumer must
    /// poll within `max.poll.interval.ms` or it is put out of its group, however slow a sink
    /// is). Anything read meanwhile is kept for the next [`Source::next_batch`].
    async fn keep_alive(&mut self) {}
}
