//! Forwarding: the pure header rules (`headers`), what the upstream could read as a
//! form (`form`), the body types that stream and meter
//! (`body`), the lookups the proxy makes itself (`lookup`, its shared rounds in
//! `coalesce`), the upstream client (`upstream`) and its own authentication towards the
//! upstream (`challenge`, pure, and `upstream_token`).

pub(crate) mod body;
pub mod challenge;
pub(crate) mod coalesce;
pub(crate) mod form;
pub mod headers;
pub(crate) mod lookup;
pub(crate) mod upstream;
pub(crate) mod upstream_token;
