//! classpulse: the horizontally scaled consumer of fitness-studio performance events.
//!
//! # Layout
//!
//! An event's path, in order:
//!
//! - [`source`]: where messages come from ([`source::simulator`] built in, [`source::kafka`]; Kinesis
//!   plug in behind the same [`source::Source`] trait). A source yields [`source::RawBatch`]es,
//!   one partition each, and takes back committed positions.
//! - [`decode`]: the hot path. Splits a message into events (object, array or NDJSON), validates
//!   each against the contract in [`event`], and sorts them into valid events and rejected
//!   inputs with a reason code.
//! - [`pipeline`]: wires source -> decode -> every sink with bounded channels, commits positions,
//!   drains on shutdown.
//! - [`ack`]: the acknowledgement path. Each decoded batch carries an [`ack::AckToken`]; sinks
//!   hold clones until durable; the source commits only the contiguous durable prefix.
//! - [`sink`]: destinations. [`sink::object`] is the shared object writer (one code path for a
//!   local directory and S3) behind [`sink::lake`] (Parquet) and [`sink::dead_letter`] (zstd
//!   NDJSON); [`sink::dynamodb`] writes the events table (packed items, a sink) and the
//!   aggregates table (conditional puts, fed by the aggregate stage).
//!
//! Around it: [`config`] (every `CLASSPULSE_*` variable, validated up front), [`aws`] (SDK
//! clients with local endpoint overrides), [`metrics`]
//! (every metric, declared once), [`http`] (`/metrics`, `/healthz`, `/readyz`), [`health`]
//! (readiness), [`shutdown`] (signals), [`retry`] (backoff with jitter), [`schema`] (the JSON
//! Schema of the contract), [`stats`] (totals for the progress line and summary).

pub mod ack;
pub mod aggregate;
pub mod aws;
pub mod config;
pub mod decode;
pub mod event;
pub mod health;
pub mod http;
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
