//! Typed errors of the request path. `response.rs` is the one place that turns them into
//! HTTP responses; nothing else chooses a status for an error.

use crate::auth::AuthError;
use crate::registry::RouteError;
use std::time::Duration;

/// Why a request was not (fully) served by the upstream.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is not a well-formed v2 route; never forwarded.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// No usable identity: 401 challenge, 400 or 429.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// An authenticated identity the rules refuse: 403, the same whether the
    /// repository exists or not.
    #[error("denied: {0}")]
    Denied(String),
    /// A body the upstream could read as a form (distribution's `FormValue` prefers the
    /// body's `from`, `mount`, `digest` over the query's).
    #[error("form-encoded bodies are not accepted")]
    FormBody,
    /// An upload start with a body or a Content-Type that real clients never send.
    #[error("{0}")]
    UploadStartBody(&'static str),
    /// The audit intent of a delete could not be written: the delete is not forwarded.
    #[error("audit log unavailable: {0}")]
    AuditUnavailable(String),
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
