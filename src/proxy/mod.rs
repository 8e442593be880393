//! Forwarding: the pure header rules (`headers`), the body types that stream and meter
//! (`body`), and the upstream client (`upstream`).

pub mod body;
pub mod headers;
pub mod lookup;
pub mod upstream;
