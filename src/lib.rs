//! classpulse: the horizontally scaled consumer of fitness-studio performance events.
//!
//! # Layout
//!
//! An event's path, in order:
//!
//! - [`source`]: where messages come from: [`source::simulator`] (built in),
//!   [`source::kafka`] (a consumer group; [`kafka`] holds the client settings it shares with the
//!   dead-letter topic, and [`kafka::msk_iam`] signs MSK IAM tokens) and
//!   [`source::kinesis`] (shard leases in DynamoDB, KPL de-aggregation). A source yields
//!   [`source::RawBatch`]es, one partition each, and takes back committed positions.
//! - [`decode`]: the hot path. Splits a message into events (object, array or NDJSON),
//!   validates each against the contract in [`event`], and sorts them into valid events and
//!   rejected inputs with a reason code.
//! - [`pipeline`]: wires source -> decode -> aggregate stage -> every sink with bounded
//!   channels, commits positions, drains on shutdown.
//! - [`aggregate`]: the aggregate stage. Judges each event (duplicate, late), counts it into
//!   its class, checkpoints each partition's state, and writes results (the lake's
//!   `aggregates/`, the DynamoDB aggregates table) once final.
//! - [`sink`]: destinations. [`sink::object`] batches records into objects per partition and
//!   hour for [`sink::lake`] (Parquet) and [`sink::dead_letter`] (zstd NDJSON); [`sink::dead_letter_topic`] also produces rejected inputs to Kafka;
//!   [`sink::dynamodb`] writes the events table (packed items) and the aggregates table
//!   (conditional puts, fed by the aggregate stage).
//! - [`ack`]: the acknowledgement path back. Each decoded batch carries an
//!   [`ack::AckToken`]; the aggregate stage and the sinks hold clones until durable; the
//!   source commits only the contiguous durable prefix. The tracker also knows each
//!   partition's turns of ownership and whether it is read to its end.
//!
//! Around it: [`store`] (the object store client: a local directory or S3, keys, the replay
//! index, writes retried until durable), [`config`] (every `CLASSPULSE_*` variable, validated
//! up front), [`aws`] (SDK clients with local endpoint overrides, DynamoDB error classes), [`metrics`] (every metric, declared once),
//! [`http`] (`/metrics`, `/healthz`, `/readyz`), [`health`] (readiness), [`shutdown`]
//! (signals), [`retry`] (backoff with jitter), [`log_limit`] (repeated warnings once per
//! interval), [`memory`] (glibc arenas and trimming), [`schema`] (the JSON Schema of the
//! contract), [`stats`] (totals for the progress line and summary), and [`redrive`] (dead
//! letters sent through the pipeline again once their cause is fixed).

pub mod ack;
pub mod aggregate;
pub mod aws;
pub mod config;
pub mod decode;
pub mod event;
pub mod health;
pub mod http;
pub mod kafka;
pub mod log_limit;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod redrive;
pub mod retry;
pub mod schema;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod stats;
pub mod store;
