//! Forwarding: the pure header rules (`headers`), what the upstream could read as a
//! form (`form`), the body types that stream and meter
//! (`body`), and the upstream client (`upstream`).

pub(crate) mod body;
pub(crate) mod form;
pub mod headers;
pub(crate) mod lookup;
pub(crate) mod upstream;
