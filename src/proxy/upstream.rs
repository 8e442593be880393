//! The upstream client: pooled HTTP/1.1 connections to the registry (plain or TLS),
//! connect and response-header timeouts, and the proxy's own authentication towards it
//! ([`Upstream::send_authorized`]: Basic credentials, or tokens from the realm of a
//! `Bearer` challenge, kept by `upstream_token`). Redirects are never followed (hyper's
//! client has no such feature, by design): a 3xx goes back to the client as it came,
//! Location rewritten by `headers`; a realm's redirect is a failed fetch.
//!
//! A `401` from the upstream never reaches the client: it is answered with a token and
//! one retry when the request can be sent again, else it becomes
//! `ProxyError::UpstreamAuth` (502), without the upstream's challenge.

use super::body::RequestBody;
use super::challenge::{self, TokenAnswer};
use super::upstream_token::{Key, Mode, Need, Tokens};
use crate::config::{self, ConfigError, SecretSource, UpstreamScheme};
use crate::error::ProxyError;
use crate::log::now_ms;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Limited};
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
    /// The scheme and authority of every upstream URI, parsed once.
    uri_scheme: http::uri::Scheme,
    uri_authority: http::uri::Authority,
    /// Normalised `scheme://host:port`, for recognising its own `Location`s.
    pub origin: String,
    /// The proxy's credentials (`Basic ...`, sensitive, never logged) and what it
    /// learned of the upstream's token service.
    tokens: Tokens,
    response_header_timeout: Duration,
    /// SHA-256 of what this client was built from: the `upstream:` settings, the
    /// credentials read and the CA file's bytes (see [`Upstream::same_settings`]).
    settings_id: Vec<u8>,
    /// The tag snapshots audited deletes share (`lookup::tag_snapshot`): one per
    /// repository at a time. Kept with the client, so a reload that keeps the upstream
    /// keeps them and one that changes it never mixes the two registries.
    pub(crate) tag_snapshots: super::lookup::Snapshots,
    /// HEADs of all tag snapshots in flight at once (`lookup::ALL_TAG_LOOKUPS`).
    pub(crate) tag_lookups: tokio::sync::Semaphore,
}

/// A request body as the upstream client sees it: whether it can be sent twice. Bodies
/// are never buffered to be sent again (manifests included): a streamed one gets its
/// token before it is sent instead.
pub enum OutBody {
    /// Nothing (GET, HEAD, DELETE, upload starts, a PUT with `Content-Length: 0`).
    Empty,
    /// A client's body streamed through: it can be sent once.
    Streamed(RequestBody),
}

impl OutBody {
    fn replayable(&self) -> bool {
        !matches!(self, OutBody::Streamed(_))
    }
    /// The body to send; a streamed one is given away (then `Empty` is left).
    fn take(&mut self) -> RequestBody {
        match std::mem::replace(self, OutBody::Empty) {
            OutBody::Empty => empty(),
            OutBody::Streamed(b) => b,
        }
    }
}

fn empty() -> RequestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Largest realm answer read.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;
/// Largest 401 body read away (so its connection goes back to the pool).
const MAX_DISCARDED: usize = 64 * 1024;

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.origin)
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// Reads a secret from its file or environment variable: the upstream password
/// (`upstream.credentials`, keys `password_file`/`password_env`) and the directory's
/// service password (`auth.ldap`, `bind_password_file`/`bind_password_env`). Errors name
/// `key`.`file_key` or `key`.`env_key`, never the value; `what` names the secret when it
/// is empty.
pub(crate) fn read_secret(
    src: &SecretSource,
    key: &str,
    [file_key, env_key]: [&str; 2],
    what: &str,
) -> Result<String, ConfigError> {
    let value = match src {
        SecretSource::File(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigError::new(
                format!("{key}.{file_key}"),
                format!("cannot read {}: {e}", p.display()),
            )
        })?,
        SecretSource::Env(name) => std::env::var(name).map_err(|_| {
            ConfigError::new(
                format!("{key}.{env_key}"),
                format!("environment variable {name} is not set or not UTF-8"),
            )
        })?,
    };
    // A trailing newline from `echo pw > file` is not part of the password.
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value).to_owned();
    if value.is_empty() {
        return Err(ConfigError::new(key, format!("{what} is empty")));
    }
    Ok(value)
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Result<Self, ConfigError> {
        let tls = match cfg.scheme {
            UpstreamScheme::Https => crate::tls::upstream_client_config(cfg.ca_file.as_deref())?,
            // The registry speaks plain HTTP; its token realm may still be https (public
            // roots, when the system has them).
            UpstreamScheme::Http => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                crate::tls::client_config(roots)?
            }
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
        let basic = match &cfg.credentials {
            None => None,
            Some(c) => {
                let pw = read_secret(
                    &c.password,
                    "upstream.credentials",
                    ["password_file", "password_env"],
                    "the upstream password",
                )?;
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
        let mut id = ring::digest::Context::new(&ring::digest::SHA256);
        id.update(format!("{cfg:?}").as_bytes());
        if let Some(b) = &basic {
            id.update(b.as_bytes());
        }
        if let Some(ca) = &cfg.ca_file {
            // Read once more (after the CA was loaded above): a reload compares bytes.
            id.update(&std::fs::read(ca).unwrap_or_default());
        }
        Ok(Upstream {
            settings_id: id.finish().as_ref().to_vec(),
            client,
            scheme: cfg.scheme,
            uri_scheme: cfg.scheme.as_str().parse().map_err(|_| {
                ConfigError::new("upstream.url", "the scheme cannot be part of a URI")
            })?,
            uri_authority: cfg.authority.parse().map_err(|_| {
                ConfigError::new("upstream.url", "the host and port cannot be part of a URI")
            })?,
            origin: cfg.origin.clone(),
            tokens: Tokens::new(cfg.credentials.as_ref().map(|c| c.username.clone()), basic),
            response_header_timeout: cfg.response_header_timeout,
            tag_snapshots: Default::default(),
            tag_lookups: tokio::sync::Semaphore::new(super::lookup::ALL_TAG_LOOKUPS),
        })
    }

    /// Whether `other` was built from the same settings, credentials and CA bytes: a
    /// reload then keeps this client, its pooled connections and the tokens it holds.
    pub fn same_settings(&self, other: &Upstream) -> bool {
        self.settings_id == other.settings_id
    }

    /// The upstream URI for a request's path and query, kept byte for byte.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        let p = path_and_query
            .parse()
            .map_err(|e| ProxyError::internal("cannot build the upstream URI", e))?;
        self.uri_with(p)
    }

    /// [`Upstream::uri`] for a path and query already parsed (the client's own, reused).
    pub fn uri_with(&self, path_and_query: http::uri::PathAndQuery) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.uri_scheme.clone());
        parts.authority = Some(self.uri_authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| ProxyError::internal("cannot build the upstream URI", e))
    }

    /// Sends a request with the proxy's own authentication and waits for the response
    /// head. `need` says what the request needs of a token service (from its route).
    ///
    /// Basic upstreams (or none learned yet): the credentials, if configured, go with
    /// every request, as before token support. Once the upstream has sent a `Bearer`
    /// challenge, a token for the request's scope (learned from challenges, or the
    /// standard one) is sent instead, from the cache or the realm. On a `401` with a
    /// `Bearer` challenge the token for the scope it names is fetched and the request
    /// sent once more, if its body can be sent again; a streamed body is only ever sent
    /// once, so before the first one (with credentials configured and nothing learned
    /// yet) the proxy learns how the upstream authenticates (`GET /v2/`, as clients do).
    /// A `401` that remains is an error, never an answer.
    pub async fn send_authorized(
        &self,
        mut parts: http::request::Parts,
        mut body: OutBody,
        need: &Need,
        body_limit: Option<u64>,
    ) -> Result<Response<Incoming>, ProxyError> {
        // Pushes are what a streamed body is, and a token service grants pushes only to
        // an account: without credentials there is no token to get ahead, and a Basic
        // or open upstream sees exactly the requests it saw before token support.
        if !body.replayable()
            && self.tokens.basic().is_some()
            && self.tokens.mode() == Mode::Unknown
        {
            self.probe().await?;
        }
        let sent = match self.tokens.key_for(need) {
            Some(key) => Some(self.token(&key, None).await?),
            None => self.tokens.basic().cloned(),
        };
        let replayable = body.replayable();
        set_authorization(&mut parts.headers, sent.as_ref());
        let resp = self
            .send(Request::from_parts(parts.clone(), body.take()), body_limit)
            .await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let bearer = challenge::bearer(
            resp.headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        discard(resp).await;
        let Some(bearer) = bearer else {
            self.tokens.learn_basic();
            return Err(ProxyError::UpstreamAuth {
                what: "the upstream answered 401 without a Bearer challenge (check upstream.credentials)".into(),
                source: None,
            });
        };
        self.tokens.learn(need, &bearer);
        if !replayable {
            return Err(ProxyError::UpstreamAuth {
                what: "the upstream asked for another token after the request body was sent, and the body cannot be sent again".into(),
                source: None,
            });
        }
        let key = Key::of(&bearer);
        let token = self.token(&key, sent.as_ref()).await?;
        set_authorization(&mut parts.headers, Some(&token));
        let resp = self
            .send(Request::from_parts(parts, body.take()), body_limit)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            discard(resp).await;
            return Err(ProxyError::UpstreamAuth {
                what: format!(
                    "the upstream refused the token for {:?}",
                    key.scope.as_deref().unwrap_or("")
                ),
                source: None,
            });
        }
        Ok(resp)
    }

    /// `GET /v2/` without credentials, for readiness: the status of whatever HTTP answer
    /// comes within `timeout` (a 401 is an answer: the registry is up), or why none came.
    pub async fn answers(&self, timeout: Duration) -> Result<u16, String> {
        let req = Request::get(self.uri("/v2/").map_err(|e| e.chain())?)
            .body(empty())
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(timeout, self.send(req, None)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(e.chain()),
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                discard(resp).await;
                Ok(status)
            }
        }
    }

    /// `GET /v2/` with the Basic credentials: how does the upstream authenticate?
    async fn probe(&self) -> Result<(), ProxyError> {
        let mut req = Request::get(self.uri("/v2/")?)
            .body(empty())
            .map_err(|e| ProxyError::internal("cannot build the auth probe", e))?;
        set_authorization(req.headers_mut(), self.tokens.basic());
        let resp = self.send(req, None).await?;
        let bearer = (resp.status() == StatusCode::UNAUTHORIZED)
            .then(|| {
                challenge::bearer(
                    resp.headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                )
            })
            .flatten();
        discard(resp).await;
        match bearer {
            Some(b) => self.tokens.learn(&Need::base(), &b),
            None => self.tokens.learn_basic(),
        }
        Ok(())
    }

    /// The token for `key` (cached, or fetched from its realm).
    async fn token(
        &self,
        key: &Key,
        stale: Option<&HeaderValue>,
    ) -> Result<HeaderValue, ProxyError> {
        self.tokens
            .token(key, stale, || self.fetch_token(key))
            .await
    }

    /// Asks the realm for a token: `service`, `scope` and `account` in the query, the
    /// proxy's Basic credentials if configured. Plain-HTTP realms get credentials only
    /// when the upstream itself is plain HTTP.
    async fn fetch_token(&self, key: &Key) -> Result<TokenAnswer, ProxyError> {
        let auth_err = |what: &str| ProxyError::UpstreamAuth {
            what: what.to_owned(),
            source: None,
        };
        let uri = challenge::realm_uri(
            &key.realm,
            key.service.as_deref(),
            key.scope.as_deref(),
            self.tokens.account(),
        )
        .map_err(auth_err)?;
        if uri.scheme_str() == Some("http")
            && self.scheme == UpstreamScheme::Https
            && self.tokens.basic().is_some()
        {
            return Err(auth_err(
                "the token realm is plain http: the proxy's credentials are not sent there",
            ));
        }
        let mut req = Request::get(uri)
            .header(header::ACCEPT, "application/json")
            .body(empty())
            .map_err(|e| ProxyError::internal("cannot build the token request", e))?;
        set_authorization(req.headers_mut(), self.tokens.basic());
        let resp = self
            .send(req, None)
            .await
            .map_err(|e| ProxyError::upstream_auth("the token realm cannot be reached", e))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            discard(resp).await;
            return Err(auth_err(&format!("the token realm answered {status}")));
        }
        let read = Limited::new(resp.into_body(), MAX_TOKEN_ANSWER).collect();
        let body = tokio::time::timeout(self.response_header_timeout, read)
            .await
            .map_err(|_| auth_err("the token realm's answer did not end in time"))?
            .map_err(|e| ProxyError::upstream_auth("reading the token realm's answer", e))?
            .to_bytes();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        challenge::parse_token_answer(&body, now).map_err(auth_err)
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

/// The proxy's `Authorization` for the upstream (or none): replaces whatever was there.
fn set_authorization(headers: &mut http::HeaderMap, value: Option<&HeaderValue>) {
    headers.remove(header::AUTHORIZATION);
    if let Some(v) = value {
        headers.insert(header::AUTHORIZATION, v.clone());
    }
}

/// Reads away a small answer the proxy does not pass on, so its connection is reused.
async fn discard(resp: Response<Incoming>) {
    let read = Limited::new(resp.into_body(), MAX_DISCARDED).collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
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
