//! Live class screens: what the walls of a studio show while its classes run.
//!
//! ```text
//!  aggregate stage ──every CLASSPULSE_LIVE_INTERVAL──▶ Publisher ──▶ live topic ──▶ classpulse screens
//!   (record.rs: a class as tiles, versioned)          (publish.rs)                  (crate::screens)
//!                                                        └── embedded default: the Board (board.rs)
//! ```
//!
//! `record.rs` is the record and its version, `publish.rs` hands records to the topic (or to
//! the board) without ever slowing the pipeline, `board.rs` keeps the newest record of every
//! class for the walls.

pub mod board;
pub mod publish;
pub mod record;

pub use board::Board;
pub use publish::Publisher;
pub use record::{LiveRecord, Tiles, Version};
