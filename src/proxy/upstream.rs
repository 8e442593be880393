//! The upstream client: pooled HTTP/1.1 connections to the registry (plain or TLS),
//! connect and response-header timeouts, and the proxy's own optional credentials.
//! Redirects are never followed (hyper's client has no such feature, by design): a 3xx
//! goes back to the client as it came, Location rewritten by `headers`.

use super::body::RequestBody;
use crate::config::{self, ConfigError, SecretSource, UpstreamScheme};
use crate::error::ProxyError;
use base64::Engine;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::time::Duration;

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
            .map_err(|e| ProxyError::UpstreamUnavailable(format!("cannot build upstream URI: {e}")))
    }

    /// Sends a request and waits for the response head (not the body).
    pub async fn send(&self, req: Request<RequestBody>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_header_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.response_header_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Tells a client-side body failure (cap exceeded, aborted upload) from an upstream one.
fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    let mut client_body = false;
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            // The caller knows the limit it set and fills it in.
            return ProxyError::ManifestTooLarge { limit: 0 };
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                client_body = true;
            }
        }
        source = s.source();
    }
    let detail = error_chain(e);
    if client_body && !e.is_connect() {
        ProxyError::ClientBody(detail)
    } else {
        ProxyError::UpstreamUnavailable(detail)
    }
}

/// `outer: inner: innermost`, for logs.
pub fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
