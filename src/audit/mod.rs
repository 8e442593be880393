//! The delete audit trail: who deleted what, when, from where — complete (allowed,
//! denied and failed attempts), durable (an intent is fsync'd before a delete is
//! forwarded, fail-closed), tamper-evident (a SHA-256 chain across lines and files).
//!
//! `record` and `verify` are pure; `writer` owns the file.

pub mod record;
pub mod verify;
pub mod writer;

pub use record::{Outcome, Phase, Record, Target};
pub use writer::{AuditLog, AuditSettings};
