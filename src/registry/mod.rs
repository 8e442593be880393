//! The Registry HTTP API v2 as the proxy understands it: the grammar of names, tags,
//! digests and upload ids, the routes built from them, what a manifest references, and
//! one page of a tag list. Everything here is pure: no I/O, no async, so it is
//! unit-tested, property-tested and fuzzed directly.

pub mod grammar;
pub(crate) mod manifest;
pub mod route;
pub mod tags;

pub use route::{parse, Actions, Reference, Route, RouteError, Target};
