//! The upstream client: pooled HTTP/1.1 connections to the registry (plain or TLS),
//! connect and response-header timeouts, and the proxy's own optional credentials.
//! Redirects are never followed (hyper's client has no such feature, by design): a 3xx
//! goes back to the client as it came, Location rewritten by `headers`.

use super::body::RequestBody;
use crate::config::{self, ConfigError, SecretSource, UpstreamScheme};
use crate::error::ProxyError;
use crate::log::now_ms;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// How far the request body has got: when it last moved, whether it ended.
#[derive(Debug)]
struct Progress {
    last_ms: AtomicU64,
    done: AtomicBool,
    /// The last poll of the body returned Pending: the proxy waits on the client (as
    /// opposed to the upstream not reading).
    waiting_for_client: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            last_ms: AtomicU64::new(now_ms()),
            done: AtomicBool::new(false),
            waiting_for_client: AtomicBool::new(false),
        }
    }
}

/// The request body, reporting its progress.
struct Tracked {
    inner: RequestBody,
    progress: Arc<Progress>,
}

impl Tracked {
    fn new(inner: RequestBody, progress: Arc<Progress>) -> Self {
        if inner.is_end_stream() {
            progress.done.store(true, Ordering::Release);
        }
        Tracked { inner, progress }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.progress
            .waiting_for_client
            .store(polled.is_pending(), Ordering::Release);
        if let Poll::Ready(r) = &polled {
            self.progress.last_ms.store(now_ms(), Ordering::Release);
            if r.is_none() || self.inner.is_end_stream() {
                self.progress.done.store(true, Ordering::Release);
            }
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, RequestBody>,
    scheme: UpstreamScheme,
    authority: String,
    /// Normalised `scheme://host:port`, for recognising its own `Location`s.
    pub origin: String,
    /// `Basic ...` for the upstream, marked sensitive; never logged.
    pub authorization: Option<HeaderValue>,
    response_header_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.origin)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Reads the proxy's upstream password from its file or environment variable.
fn read_secret(src: &SecretSource) -> Result<String, ConfigError> {
    let key = "upstream.credentials";
    let value = match src {
        SecretSource::File(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::new(
                format!("{key}.password_file"),
                format!("cannot read {}: {e}", p.display()),
            )
        })?,
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            ConfigError::new(
                format!("{key}.password_env"),
                format!("environment variable {name} is not set or not UTF-8"),
            )
        })?,
    };
    // A trailing newline from `echo pw > file` is not part of the password.
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
    if value.is_empty() {
        return Err(ConfigError::new(key, "the upstream password is empty"));
    }
    Ok(value)
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Result<Self, ConfigError> {
        let tls = match cfg.scheme {
            UpstreamScheme::Https => crate::tls::upstream_client_config(cfg.ca_file.as_deref())?,
            UpstreamScheme::Http => crate::tls::client_config(rustls::RootCertStore::empty())?,
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .build(connector);
        let authorization = match &cfg.credentials {
            None => None,
            Some(c) => {
                let pw = read_secret(&c.password)?;
                let token = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{pw}", c.username));
                let mut v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    ConfigError::new(
                        "upstream.credentials",
                        "password holds bytes not allowed in a header",
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Upstream {
            client,
            scheme: cfg.scheme,
            authority: cfg.authority.clone(),
            origin: cfg.origin.clone(),
            authorization,
            response_header_timeout: cfg.response_header_timeout,
        })
    }

    /// The upstream URI for a request's path and query, kept byte for byte.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.as_str())
            .authority(self.authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::internal("cannot build the upstream URI", e))
    }

    /// Sends a request and waits for the response head (not the body).
    ///
    /// `response_header_timeout` runs from the end of the request body, not from its
    /// start: a registry answers an upload only once it has all of it, so a long upload
    /// is no upstream fault. While the body is being sent, the same duration bounds the
    /// gap between two of its frames instead (a stalled client, not a slow one).
    ///
    /// `body_limit`: the cap the caller set on the request body (`Limited`), reported in
    /// the error when the body goes over it.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        body_limit: Option<u64>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (parts, body) = req.into_parts();
        let progress = Arc::new(Progress::default());
        let body = Tracked::new(body, progress.clone()).boxed();
        let fut = self.client.request(Request::from_parts(parts, body));
        let mut fut = std::pin::pin!(fut);
        let limit = self.response_header_timeout;
        loop {
            let deadline = progress.last_ms.load(Ordering::Acquire) + limit.as_millis() as u64;
            let wait = Duration::from_millis(deadline.saturating_sub(now_ms()))
                .max(Duration::from_millis(10));
            tokio::select! {
                r = fut.as_mut() => return r.map_err(|e| classify(e, body_limit)),
                _ = tokio::time::sleep(wait) => {
                    if now_ms() < progress.last_ms.load(Ordering::Acquire) + limit.as_millis() as u64 {
                        continue; // the body moved meanwhile
                    }
                    let client_stalled = !progress.done.load(Ordering::Acquire)
                        && progress.waiting_for_client.load(Ordering::Acquire);
                    return Err(if client_stalled {
                        ProxyError::client_body(format!("request body stalled for {limit:?}"))
                    } else {
                        ProxyError::UpstreamTimeout(limit)
                    });
                }
            }
        }
    }
}

/// Tells a client-side body failure (cap exceeded, aborted upload) from an upstream one.
fn classify(e: hyper_util::client::legacy::Error, body_limit: Option<u64>) -> ProxyError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(&e);
    let mut client_body = false;
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return ProxyError::ManifestTooLarge {
                limit: body_limit.unwrap_or_default(),
            };
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                client_body = true;
            }
        }
        source = s.source();
    }
    if client_body && !e.is_connect() {
        ProxyError::ClientBody {
            what: "the upstream request's body failed".into(),
            source: Some(e.into()),
        }
    } else {
        ProxyError::upstream("the upstream request failed", e)
    }
}
