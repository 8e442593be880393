//! Typed errors of the request path. `response.rs` is the one place that turns them into
//! HTTP responses; nothing else chooses a status for an error, or whether the connection
//! closes after it.
//!
//! Every error says whose fault it is ([`Fault`], as pingora's `ErrorSource`): the
//! client's (4xx), the upstream's (502/504) or the proxy's own (500, 503). Errors that
//! come from somewhere keep it as their `source`, for the log.

use crate::auth::AuthError;
use crate::registry::RouteError;
use std::time::Duration;

/// A cause of any kind, kept for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request: malformed, unauthenticated, refused, its body broken.
    Client,
    /// The registry behind: unreachable, broken exchange, too slow.
    Upstream,
    /// The proxy itself: a resource it needs (the audit log) or a bug.
    Proxy,
}

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
    /// A body on a request that has none (GET, HEAD, DELETE): the registry acts before
    /// it reads such a body, so the outcome the proxy sees would not be what happened.
    #[error("a {0} request carries no body")]
    UnexpectedBody(http::Method),
    /// The audit intent of a delete could not be written: the delete is not forwarded.
    #[error("audit log unavailable")]
    AuditUnavailable(#[from] crate::audit::writer::WriteError),
    /// A manifest body over `limits.max_manifest_bytes`.
    #[error("manifest body larger than {limit} bytes")]
    ManifestTooLarge { limit: u64 },
    /// The client's request body failed (aborted upload, bad framing, stalled).
    #[error("reading the request body failed: {what}")]
    ClientBody {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The upstream could not be reached or broke the exchange.
    #[error("upstream unavailable: {what}")]
    UpstreamUnavailable {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The upstream refused the proxy's own credentials, or its token service (the
    /// realm of a `Bearer` challenge) failed: the proxy's account or the upstream's
    /// auth is broken, not the client's. Nothing of the upstream's challenge or token
    /// goes into it.
    #[error("upstream authentication failed: {what}")]
    UpstreamAuth {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The user's credentials already hold `limits.max_connections_per_user`
    /// connections: 429, and this connection closes.
    #[error("this user already holds {max} connections (limits.max_connections_per_user)")]
    UserConnections { max: usize },
    /// The upstream does not know the repository a tag list was asked of: 404
    /// `NAME_UNKNOWN`, as the upstream itself answers.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// A tag list longer than `limits.max_tags`: refused whole rather than served short.
    #[error(
        "the repository has more than {max} tags (limits.max_tags): the list is not served in part"
    )]
    TagListTooLong { max: usize },
    /// The upstream accepted the request but sent no response head in time.
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(Duration),
    /// The proxy's own failure (an upstream request it cannot build, a task that
    /// panicked): 500.
    #[error("internal error: {what}")]
    Internal {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl ProxyError {
    pub fn client_body(what: impl Into<String>) -> Self {
        ProxyError::ClientBody {
            what: what.into(),
            source: None,
        }
    }

    pub fn upstream(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ProxyError::UpstreamUnavailable {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    pub fn upstream_auth(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ProxyError::UpstreamAuth {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    pub fn internal(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        ProxyError::Internal {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// Whose fault it is.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Auth(crate::auth::AuthError::Unavailable) => Fault::Proxy,
            ProxyError::Route(_)
            | ProxyError::Auth(_)
            | ProxyError::Denied(_)
            | ProxyError::FormBody
            | ProxyError::UploadStartBody(_)
            | ProxyError::UnexpectedBody(_)
            | ProxyError::ManifestTooLarge { .. }
            | ProxyError::ClientBody { .. }
            | ProxyError::UserConnections { .. }
            | ProxyError::NameUnknown => Fault::Client,
            ProxyError::UpstreamUnavailable { .. }
            | ProxyError::UpstreamAuth { .. }
            | ProxyError::UpstreamTimeout(_) => Fault::Upstream,
            ProxyError::AuditUnavailable(_)
            | ProxyError::Internal { .. }
            | ProxyError::TagListTooLong { .. } => Fault::Proxy,
        }
    }

    /// The error and its causes, `outer: inner: innermost`, for the log.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = s.source();
        }
        out
    }
}
