//! Forwarding: the pure header rules (`headers`), what the upstream could read as a
//! form (`form`), the body types that stream and meter
//! (`body`), and the upstream client (`upstream`).

pub mod body;
pub mod form;
pub mod headers;
pub mod lookup;
pub mod upstream;
