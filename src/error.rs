//! Typed errors of the request path. `response.rs` is the one place that turns them into
//! HTTP responses; nothing else chooses a status for an error.

use crate::registry::RouteError;
use std::time::Duration;

/// Why a request was not (fully) served by the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is not a well-formed v2 route; never forwarded.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A manifest body over `limits.max_manifest_bytes`.
    #[error("manifest body larger than {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    /// The client's request body failed (aborted upload, bad framing).
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream accepted the request but sent no response head in time.
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
}
