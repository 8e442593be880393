//! The request flow, one stage after the other:
//!
//!     route (pure) → forward → stream back
//!
//! (identity, permit and audit slot in between route and forward in later stages.)
//! [`handle`] is the outer function: it never fails, it renders every error through
//! `response.rs` and attaches the access record. [`forward`] is the inner one and
//! returns `Result<Response, ProxyError>`.

use crate::error::ProxyError;
use crate::log::{next_request_id, AccessRecord, ConnActivity, InFlight};
use crate::proxy::body::{RequestBody, ResponseBody};
use crate::proxy::headers::{self, ForwardContext};
use crate::proxy::upstream::Upstream;
use crate::registry::{self, Route, Target};
use crate::response;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// What every request needs, built once at start-up.
#[derive(Debug)]
pub struct State {
    pub upstream: Upstream,
    /// Configured public origin; `None`: from each request's Host.
    pub public_origin: Option<String>,
    /// `https`, or `http` in plaintext mode.
    pub proto: &'static str,
    pub max_manifest_bytes: u64,
    pub local_addr: SocketAddr,
}

/// The client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub activity: Arc<ConnActivity>,
}

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let request_id = next_request_id();
    let method = req.method().clone();
    let mut record = AccessRecord::new(
        request_id.clone(),
        method.clone(),
        req.uri().path(),
        conn.peer.ip(),
    );
    record.in_flight = Some(InFlight::new(conn.activity.clone()));

    let result = match registry::parse(&method, req.uri().path(), req.uri().query()) {
        Ok(route) => {
            record.route = route.kind();
            record.repo = route.repo().map(str::to_owned);
            forward(&state, &conn, &route, req).await
        }
        Err(e) => Err(e.into()),
    };
    let mut resp = match result {
        Ok(resp) => {
            record.upstream_status = Some(resp.status().as_u16());
            resp
        }
        Err(e) => {
            if matches!(
                e,
                ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamTimeout(_)
            ) {
                tracing::warn!(request_id = %request_id, error = %e, "upstream failed");
            }
            record.error = Some(e.to_string());
            response::refusal(&e, &method)
        }
    };
    record.status = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp.map(|b| b.metered(record))
}

/// Forwards a routed request and streams the upstream's answer back.
async fn forward(
    state: &State,
    conn: &ConnInfo,
    route: &Route,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let public = public_origin(state, &parts);
    let public_host = public.split_once("://").map(|(_, h)| h);
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = state.upstream.uri(path_and_query)?;
    parts.version = Version::HTTP_11;
    headers::forward_request(
        &mut parts.headers,
        &ForwardContext {
            client_ip: conn.peer.ip(),
            proto: state.proto,
            public_host,
            upstream_authorization: state.upstream.authorization.as_ref(),
        },
    );

    let limit = state.max_manifest_bytes;
    let body: RequestBody = if is_manifest_put(route) {
        // Refuse by the announced length before a byte is read; cap what is streamed.
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(ProxyError::ManifestTooLarge { limit });
        }
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed()
    } else {
        body.map_err(Into::into).boxed()
    };

    let resp = state
        .upstream
        .send(Request::from_parts(parts, body))
        .await
        .map_err(|e| match e {
            ProxyError::ManifestTooLarge { .. } => ProxyError::ManifestTooLarge { limit },
            other => other,
        })?;
    let (mut parts, body) = resp.into_parts();
    headers::forward_response(&mut parts.headers, &state.upstream.origin, &public);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body)))
}

fn is_manifest_put(route: &Route) -> bool {
    route.method == Method::PUT && matches!(route.target, Target::Manifest { .. })
}

/// The origin clients used: the configured one, else the request's own authority (h2) or
/// Host (h1) when it is a plausible host, else the listening address.
fn public_origin(state: &State, parts: &http::request::Parts) -> String {
    if let Some(o) = &state.public_origin {
        return o.clone();
    }
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .filter(|h| is_plausible_host(h));
    match host {
        Some(h) => format!("{}://{h}", state.proto),
        None => format!("{}://{}", state.proto, state.local_addr),
    }
}

fn is_plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}
