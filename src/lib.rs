//! classpulse: the horizontally scaled consumer of fitness-studio performance events.
//!
//! # Layout
//!
//! An event's path, in order:
//!
//! - [`source`]: where messages come from: [`source::simulator`] (built in),
//!   [`source::kafka`] (a consumer group) and [`source::kinesis`] (shard leases in DynamoDB,
//!   KPL de-aggregation). A source yields [`source::RawBatch`]es, one partition each, and takes
//!   back committed positions.
//! - [`decode`]: the hot path. Splits a message into events (object, array or NDJSON),
//!   validates each against the contract in [`event`], and cuts the outcome into
//!   [`decode::DecodedBatch`]es of valid events and rejected inputs with a reason code.
//! - [`pipeline`]: wires source -> decode -> aggregate stage -> every sink with bounded
//!   channels, commits positions, drains on shutdown.
//! - [`aggregate`]: the aggregate stage. Judges each event (duplicate, late), counts it into
//!   its class, checkpoints each partition's state ([`aggregate::checkpoint`], a versioned
//!   format), and writes results (the lake's `aggregates/`, the DynamoDB aggregates table) once
//!   final. Zones and effort are each member's own ([`aggregate::heart`]), from the
//!   [`profile`] bound to their class state when it comes (a file, or the members table read in
//!   the background: a lookup never waits).
//! - [`sink`]: destinations. [`sink::object`] batches records into objects per partition and
//!   hour for [`sink::lake`] (Parquet) and [`sink::dead_letter`] (zstd NDJSON);
//!   [`sink::dead_letter_topic`] also produces rejected inputs to Kafka; [`sink::dynamodb`]
//!   writes the events table (packed items) and the aggregates table (conditional puts, fed by
//!   the aggregate stage).
//! - [`live`]: what the studios' walls show. The aggregate stage publishes a versioned record
//!   of every class that changed, every second, to the live topic (or, in the embedded
//!   default, straight to the board); [`screens`] is the server that reads the topic and
//!   streams each studio's records to its walls (Server-Sent Events, a page of its own).
//! - [`ack`]: the acknowledgement path back. Each decoded batch carries an
//!   [`ack::AckToken`]; the aggregate stage and the sinks hold clones until durable; the
//!   source commits only the contiguous durable prefix.
//! - [`partitions`]: what the sources know of each partition and the rest reads: its turn of
//!   ownership, whether it is read to its end (when the wall clock may make a class final),
//!   and what it continues (Kinesis lineage).
//!
//! Around it: [`store`] (the object store client: a local directory or S3, keys, the replay
//! index, writes retried until durable), [`kafka`] (the Kafka client settings the source and
//! the dead-letter topic share; [`kafka::msk_iam`] signs MSK IAM tokens), [`aws`] (SDK clients
//! with local endpoint overrides, their error classes), [`config`] (every `CLASSPULSE_*`
//! variable, validated up front), [`metrics`] (every metric, declared once), [`http`]
//! (`/metrics`, `/healthz`, `/readyz`), [`health`] (readiness), [`shutdown`] (signals),
//! [`retry`] (backoff with jitter), [`log_limit`] (repeated warnings once per interval),
//! [`schema`] (the JSON Schema of the contract), [`stats`] (totals for the progress line and
//! summary), [`redrive`] (dead letters sent through the pipeline again once their cause is
//! fixed), and [`erasure`] (the erasure list every stage consults, and `classpulse erase`,
//! which removes an erased member's data from the store and the tables).

pub mod ack;
pub mod aggregate;
pub mod aws;
pub mod config;
pub mod decode;
pub mod erasure;
pub mod event;
pub mod health;
pub mod http;
pub mod kafka;
pub mod live;
pub mod log_limit;
pub mod metrics;
pub mod partitions;
pub mod pipeline;
pub mod profile;
pub mod redrive;
pub mod retry;
pub mod schema;
pub mod screens;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;
