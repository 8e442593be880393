//! registry-guard: a TLS-terminating proxy in front of a Docker/OCI registry
//! (Registry HTTP API v2). One request flows one way:
//!
//! ```text
//! TLS accept (server) → route (registry) → identity (auth) → permit (acl)
//!   → audit → forward (handler, proxy) → stream back
//! ```
//!
//! The pure cores (`registry`, `auth::basic`, `acl`, `audit::verify`, `proxy::headers`,
//! `proxy_protocol`, `response`, `config` validation) do no I/O and are unit-tested,
//! property-tested and fuzzed; only `server`, `proxy::upstream`, `proxy::lookup`, `audit::writer`, `tls`,
//! `edit` (the locked rewrite of the user, tokens and last-use files) and `cli` touch
//! the outside world.
//!
//! Public are the modules that tests, benches and fuzz targets use (the pure cores, the
//! CLI entry, `fuzzing`); the serving machinery (`server`, `handler`, `config`,
//! `response`, `error`, `log`) is `pub(crate)`; `metrics` is public for its benchmark.
#![forbid(unsafe_code)]

pub mod acl;
pub(crate) mod admin;
pub mod audit;
pub mod auth;
pub mod cli;
pub(crate) mod config;
pub mod edit;
pub(crate) mod error;
pub mod fuzzing;
pub(crate) mod handler;
pub(crate) mod health;
pub(crate) mod log;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod registry;
pub(crate) mod reload;
pub(crate) mod response;
pub(crate) mod server;
pub mod tls;
