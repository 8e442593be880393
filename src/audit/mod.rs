//! The delete audit trail: who deleted what, when, from where — complete (allowed
//! deletes, authenticated users' denied attempts, failures), durable (an intent is
//! fsync'd before a delete is forwarded, fail-closed), tamper-evident (an HMAC-SHA-256
//! chain across lines and files, under a key the log's writers need not read, with
//! periodic checkpoints logged outside the file).
//!
//! `record` and `verify` are pure; `writer` owns the file (one writer per file: `lock`);
//! `key` makes and reads the key.

pub mod access;
pub mod key;
pub mod lock;
pub mod query;
pub mod record;
pub mod syslog;
pub(crate) mod verify;
pub(crate) mod writer;

pub use record::{Chain, Decision, Entry, Event, Kind, Outcome, Phase, Position, Record, Target};
pub use writer::{AuditLog, AuditSettings, StartError};
