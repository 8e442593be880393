//! The request flow, one stage after the other:
//!
//! ```text
//! route (pure) → identity (auth) → permit (acl) → audit → forward → stream back
//! ```
//!
//! Two routes the proxy answers itself from upstream lookups: the catalog, filtered to
//! what the identity may pull (`catalog`), and tag lists, read whole, sorted and paged
//! as the OCI spec says whatever the upstream does with `n` and `last` (`tags_list`).
//! The token route (`/auth/token`, for docker: see `auth::token`) is answered by the
//! proxy alone, right after the identity stage (`issue_token`).
//!
//! [`handle`] is the outer function: it never fails; it renders every error through
//! `response.rs`, drains an unwanted request body when that lets the client read the
//! refusal, and attaches the access record. [`serve`] is the inner one and returns
//! `Result<Response, ProxyError>`.

use crate::acl::{self, Check, Policy, Verdict};
use crate::audit::{self, AuditLog, Outcome, Phase};
use crate::auth::token::{self, Challenge};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::error::{Fault, ProxyError};
use crate::log::{next_request_id, AccessRecord, ConnActivity, InFlight};
use crate::metrics::Metrics;
use crate::proxy::body::ResponseBody;
use crate::proxy::form;
use crate::proxy::headers::{self, ForwardContext};
use crate::proxy::lookup;
use crate::proxy::upstream::{OutBody, Upstream};
use crate::proxy::upstream_token::Need;
use crate::registry::{self, Actions, Reference, Route, Target};
use crate::response;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// What every request needs. The parts a reload may change live in one [`Snapshot`],
/// swapped whole; the rest is fixed at start-up (changing it needs a restart).
#[derive(Debug)]
pub struct State {
    /// The reloadable configuration: each request loads it once and keeps it to its end,
    /// so a reload never changes the rules, users or upstream under a request.
    pub snapshot: ArcSwap<Snapshot>,
    /// The delete audit trail's writer, if configured (its file and key need a restart).
    pub audit_log: Option<AuditLog>,
    pub metrics: Arc<Metrics>,
    /// How clients reach the proxy: `https`, or `http` in plaintext mode.
    pub scheme: Scheme,
    pub local_addr: SocketAddr,
    /// Peers whose `X-Forwarded-For` gives the client address (`server.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections per user (`limits.max_connections_per_user`).
    pub user_connections: Arc<UserConnections>,
}

/// The configuration a reload replaces in one swap (see `crate::reload`): everything a
/// request decides by, built and validated whole before it is stored.
#[derive(Debug)]
pub struct Snapshot {
    /// Shared with the previous snapshot when `upstream:` and its files did not change
    /// (its connection pool and tokens are kept).
    pub upstream: Arc<Upstream>,
    /// `None`: `auth.disabled`, every well-formed request is forwarded.
    pub auth: Option<Authenticator>,
    /// The access rules; present exactly when `auth` is.
    pub policy: Option<Policy>,
    /// What is audited, present exactly when [`State::audit_log`] is.
    pub audit: Option<crate::config::Audit>,
    /// Largest catalog page (`n`) served.
    pub catalog_max_n: usize,
    /// Most tags read to answer a tag list (`limits.max_tags`).
    pub max_tags: usize,
    pub realm: String,
    /// Bytes of an unwanted request body read (and discarded) so the client sees the
    /// refusal; see [`drain`].
    pub max_unauthenticated_body: u64,
    /// Configured public origin; `None`: from each request's Host.
    pub public_origin: Option<PublicOrigin>,
    pub max_manifest_bytes: u64,
    /// The TLS server config new handshakes use (`None`: plaintext).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The origin clients use (`https://host[:port]`) and its host part, split once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    pub origin: String,
    /// `host[:port]`, for `X-Forwarded-Host`.
    pub host: String,
}

impl PublicOrigin {
    pub fn new(scheme: Scheme, host: &str) -> Self {
        PublicOrigin {
            origin: format!("{}://{host}", scheme.as_str()),
            host: host.to_owned(),
        }
    }

    /// From a validated origin (`server.public_url`), `scheme://host[:port]`.
    pub fn parse(origin: &str) -> Self {
        PublicOrigin {
            origin: origin.to_owned(),
            host: origin
                .split_once("://")
                .map_or(origin, |(_, h)| h)
                .to_owned(),
        }
    }
}

/// How clients reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    /// `server.plaintext: true`, behind a TLS terminator.
    Http,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
        }
    }
}

/// The client connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client's address: the TCP peer, or, behind a trusted load balancer speaking
    /// the PROXY protocol, the address its header declares (see `server`). Every
    /// consumer (per-address cap, throttle, logs, audit) starts from this one.
    pub peer: SocketAddr,
    pub activity: Arc<ConnActivity>,
    /// Set once a request on this connection carried valid credentials: the server's
    /// per-address cap counts only connections that never did.
    pub authenticated: std::sync::atomic::AtomicBool,
    /// The user the connection is counted for (`limits.max_connections_per_user`): the
    /// first whose credentials it carried. Released when the connection ends.
    pub user: std::sync::OnceLock<UserSlot>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, activity: Arc<ConnActivity>) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            peer,
            activity,
            authenticated: Default::default(),
            user: Default::default(),
        })
    }
}

/// Connections per user, from any address (`limits.max_connections_per_user`): one
/// account cannot take every connection slot once authenticated connections leave the
/// per-address cap.
#[derive(Debug)]
pub struct UserConnections {
    max: usize,
    counts: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One connection counted for a user; dropping it gives the place back.
#[derive(Debug)]
pub struct UserSlot {
    owner: Arc<UserConnections>,
    user: String,
}

impl UserConnections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(UserConnections {
            max,
            counts: Default::default(),
        })
    }

    /// Counts one more connection for `user`; `None` when it already holds `max`.
    pub fn claim(self: &Arc<Self>, user: &str) -> Option<UserSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(user.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            owner: self.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

/// Proof that a request may be forwarded: only [`permit`] makes one. It carries what
/// the decision changes about forwarding.
pub struct Permit {
    /// The query to forward instead of the client's (a cross-repository mount without
    /// pull on `from`, stripped to a plain upload start).
    query: Option<String>,
    /// Why the request is allowed, for its audit record.
    reason: String,
}

/// What every stage after routing shares about one request, built once and passed by
/// reference (as pingora passes its per-request context through its phases); each
/// stage's signature then shows only what it adds. Owned, so an audited request can move
/// it into the task that must outlive the client.
#[derive(Clone)]
struct Ctx {
    state: Arc<State>,
    /// The configuration this request started with (the same for all its stages).
    snap: Arc<Snapshot>,
    /// The one client address (see [`client_of`]).
    client: IpAddr,
    request_id: String,
    parts: http::request::Parts,
    route: Route,
    /// `None`: `auth.disabled`.
    identity: Option<Identity>,
    /// The audited delete's tag snapshot, once taken (see [`Ctx::tag_snapshot`]).
    tag_snapshot: tokio::sync::OnceCell<lookup::SharedSnapshot>,
}

impl Ctx {
    fn repo(&self) -> &str {
        self.route.repo().unwrap_or_default()
    }

    /// The tag→digest snapshot of the request's repository (at most `audit.max_tags`
    /// tags; `None` without an audit log), taken once per request by a round that
    /// started after the request arrived and shared with the other deletes of the
    /// repository (`lookup::tag_snapshot`). Taken after arrival and before forwarding, it
    /// serves every decision of the request: the protected-tag check and the audit
    /// record of the same delete.
    async fn tag_snapshot(&self) -> Option<&lookup::SharedSnapshot> {
        let max = self.snap.audit.as_ref()?.max_tags;
        let upstream = &self.snap.upstream;
        Some(
            self.tag_snapshot
                .get_or_init(|| lookup::tag_snapshot(upstream, self.repo(), max))
                .await,
        )
    }
}

/// What the outer function needs of a request head to drain a refused body.
struct DrainHint {
    http2: bool,
    expects_continue: bool,
}

impl DrainHint {
    fn of(parts: &http::request::Parts) -> Self {
        DrainHint {
            http2: parts.version == Version::HTTP_2,
            expects_continue: parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue")),
        }
    }
}

pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    state.metrics.requests.inc();
    let request_id = next_request_id();
    let method = req.method().clone();
    let client = client_of(&state, &conn, req.headers());
    let mut record = AccessRecord::new(
        request_id.clone(),
        method.clone(),
        req.uri().path(),
        client,
        state.metrics.clone(),
    );
    record.in_flight = Some(InFlight::new(conn.activity.clone()));
    let (parts, body) = req.into_parts();
    let hint = DrainHint::of(&parts);
    let snap = state.snapshot.load_full();
    let challenge = challenge_for(&state, &snap, &parts);

    let mut body = Some(body);
    let result = serve(&state, &snap, &conn, client, parts, &mut body, &mut record).await;
    let mut resp = match result {
        Ok(resp) => {
            record.upstream_status = Some(resp.status().as_u16());
            resp
        }
        Err(e) => {
            let chain = e.chain();
            match e.fault() {
                Fault::Upstream => {
                    state.metrics.upstream_errors.inc();
                    tracing::warn!(request_id = %request_id, error = %crate::log::Escaped(&chain), "upstream failed");
                }
                Fault::Proxy => {
                    tracing::error!(request_id = %request_id, error = %crate::log::Escaped(&chain), "request failed")
                }
                Fault::Client => {}
            }
            state.metrics.refused.inc();
            record.error = Some(chain);
            // The body was never forwarded: read it away where that lets the client see
            // this answer, else the connection closes after it.
            let body_left = match body.take() {
                Some(b) => !drain(&hint, b, snap.max_unauthenticated_body).await,
                None => false,
            };
            response::refusal(&e, &method, &challenge, body_left)
        }
    };
    record.status = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp.map(|b| b.metered(record))
}

/// The `WWW-Authenticate` challenge should this request get a 401: see
/// [`token::choose`].
fn challenge_for(state: &State, snap: &Snapshot, parts: &http::request::Parts) -> Challenge {
    token::choose(
        snap.auth.as_ref().is_some_and(Authenticator::issues_tokens),
        parts.uri.path() == token::TOKEN_PATH,
        parts
            .headers
            .get(header::USER_AGENT)
            .map(HeaderValue::as_bytes),
        &snap.realm,
        || public_origin(state, snap, parts).into_owned().origin,
    )
}

/// The one client address of a request, used by the throttle, the logs, the audit and
/// the forwarded headers alike: the TCP peer, or, when the peer is a trusted proxy, the
/// address it reports in `X-Forwarded-For` (never a header from an untrusted peer).
fn client_of(state: &State, conn: &ConnInfo, headers: &http::HeaderMap) -> IpAddr {
    let peer = conn.peer.ip().to_canonical();
    if state.trusted_proxies.is_empty() {
        return peer;
    }
    let xff: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    audit::record::client_address(peer, &xff, &state.trusted_proxies)
}

/// Route, identity, permit, forward.
async fn serve(
    state: &Arc<State>,
    snap: &Arc<Snapshot>,
    conn: &ConnInfo,
    client: IpAddr,
    parts: http::request::Parts,
    body: &mut Option<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ResponseBody>, ProxyError> {
    let route = registry::parse(&parts.method, parts.uri.path(), parts.uri.query())?;
    record.route = route.kind();
    record.repo = route.repo().map(str::to_owned);
    if route.target == Target::Token {
        check_token_request(snap, &parts.headers)?;
    }

    let mut ctx = Ctx {
        state: state.clone(),
        snap: snap.clone(),
        client,
        request_id: record.request_id.clone(),
        parts,
        route,
        identity: None,
        tag_snapshot: tokio::sync::OnceCell::new(),
    };
    // No credentials, bad ones, throttled: answered without a delete's audit record, so
    // requests nobody vouches for cannot fill the audit disk (failed logins are access
    // events, bounded by the throttle and the event queue).
    if let Some(auth) = &snap.auth {
        let result = auth.identify(&ctx.parts.headers, client).await;
        login_event(&ctx, &result);
        ctx.identity = Some(result?);
    }
    if let Some(id) = &ctx.identity {
        record.user = Some(id.name().to_owned());
        record.owner = id.owner().map(str::to_owned);
        // A token holds connections under its own name, as a user does.
        if !matches!(id, Identity::Anonymous) {
            let name = id.name();
            if conn.user.get().is_none() {
                let slot =
                    state
                        .user_connections
                        .claim(name)
                        .ok_or(ProxyError::UserConnections {
                            max: state.user_connections.max,
                        })?;
                let _ = conn.user.set(slot);
            }
            conn.authenticated
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    if ctx.route.target == Target::Token {
        return issue_token(&ctx);
    }
    let audited = audit_target(&ctx);
    let permit = match permit(&ctx).await {
        Ok(p) => p,
        Err(e) => {
            // Only authenticated users' denials are recorded (rate-limited per user); an
            // anonymous request refused here gets the 401 challenge and no record.
            let authenticated = ctx
                .identity
                .as_ref()
                .is_some_and(|i| !matches!(i, Identity::Anonymous));
            if let (Some(target), true) = (audited, authenticated) {
                audit_refusal(&ctx, target, &e).await;
            }
            if let (Some(target), Some(Identity::User { .. })) =
                (access_target(&ctx), &ctx.identity)
            {
                access_refusal(&ctx, target, &e);
            }
            return Err(e);
        }
    };
    check_body_headers(&ctx.route, &ctx.parts.headers)?;
    match &ctx.route.target {
        Target::Catalog { n, last } if ctx.snap.policy.is_some() => {
            return catalog(&ctx, *n, last.as_deref()).await;
        }
        Target::TagsList { repo, n, last } => {
            return tags_list(&ctx, repo, *n, last.as_deref()).await;
        }
        _ => {}
    }
    let body = body
        .take()
        .ok_or_else(|| ProxyError::internal("the request body", "already used"))?;
    match (audited, access_target(&ctx)) {
        (Some(target), _) => audited_forward(ctx, body, permit, target).await,
        (None, Some(target)) => {
            let started = std::time::Instant::now();
            let reason = permit.reason.clone();
            let result = forward(&ctx, body, permit).await;
            access_event(&ctx, target, reason, started, &result);
            result
        }
        (None, None) => forward(&ctx, body, permit).await,
    }
}

/// Refuses a token request the proxy does not answer: no tokens issued (`auth.disabled`,
/// `auth.docker_bearer` off), or a token offered for a token (only a login, or no
/// credentials for an anonymous token, can get one: a token cannot renew itself).
fn check_token_request(snap: &Snapshot, headers: &http::HeaderMap) -> Result<(), ProxyError> {
    if !snap.auth.as_ref().is_some_and(Authenticator::issues_tokens) {
        return Err(registry::RouteError::NotFound("this proxy issues no tokens").into());
    }
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| token::bearer(v.as_bytes()).is_some());
    if bearer {
        return Err(AuthError::Invalid("a token is not exchanged for a token: log in").into());
    }
    Ok(())
}

/// Answers `GET /auth/token` for the identity just established (a login, or anonymous
/// when `auth.anonymous` is on): the token format docker reads. Never logged.
fn issue_token(ctx: &Ctx) -> Result<Response<ResponseBody>, ProxyError> {
    let (Some(auth), Some(id)) = (&ctx.snap.auth, &ctx.identity) else {
        return Err(registry::RouteError::NotFound("this proxy issues no tokens").into());
    };
    let now = crate::auth::unix_now();
    let token = auth
        .issue_token(id, now)
        .ok_or(AuthError::Invalid("the user left the user file"))?;
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": token::LIFETIME.as_secs(),
        "issued_at": audit::record::now_rfc3339(),
    });
    let mut resp = response::own(
        http::StatusCode::OK,
        &ctx.parts.method,
        Bytes::from(body.to_string()),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Refuses what the upstream could read differently from what was decided: a body on
/// an upload start, a body it would parse as a form (see `proxy::form`), or any body on
/// a GET, HEAD or DELETE (distribution deletes first and reads such a body after, so a
/// client that never sends it turns a done delete into a failed one in the audit).
fn check_body_headers(route: &Route, headers: &http::HeaderMap) -> Result<(), ProxyError> {
    if matches!(route.target, Target::UploadStart { .. }) {
        return form::check_upload_start(headers)
            .map_err(|r| ProxyError::UploadStartBody(r.message()));
    }
    let has_body = matches!(route.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body && form::is_form(headers) {
        return Err(ProxyError::FormBody);
    }
    let announced = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if !has_body && announced {
        return Err(ProxyError::UnexpectedBody(route.method.clone()));
    }
    Ok(())
}

/// What an audited request is, if it is one: deletes of manifests and blobs, and
/// manifest pushes when `audit.manifest_pushes` is on.
fn audit_target(ctx: &Ctx) -> Option<audit::Target> {
    let settings = ctx.snap.audit.as_ref()?;
    match (&ctx.route.method, &ctx.route.target) {
        (
            &Method::DELETE,
            Target::Manifest {
                reference: Reference::Digest(_),
                ..
            },
        ) => Some(audit::Target::ManifestByDigest),
        (
            &Method::DELETE,
            Target::Manifest {
                reference: Reference::Tag(_),
                ..
            },
        ) => Some(audit::Target::ManifestByTag),
        (&Method::DELETE, Target::Blob { .. }) => Some(audit::Target::Blob),
        (&Method::PUT, Target::Manifest { .. }) if settings.manifest_pushes => {
            Some(audit::Target::ManifestPush)
        }
        _ => None,
    }
}

/// The parts of an audit record every phase shares.
fn audit_record(ctx: &Ctx, target: audit::Target) -> audit::Record {
    let route = &ctx.route;
    let reference = match &route.target {
        Target::Manifest { reference, .. } => reference.as_str().to_owned(),
        Target::Blob { digest, .. } => digest.clone(),
        _ => String::new(),
    };
    audit::Record {
        time: audit::record::now_rfc3339(),
        // The writer names the replica.
        instance: None,
        phase: Phase::Intent,
        request_id: ctx.request_id.clone(),
        user: ctx
            .identity
            .as_ref()
            .map_or_else(|| "-".to_owned(), |i| i.name().to_owned()),
        owner: ctx
            .identity
            .as_ref()
            .and_then(Identity::owner)
            .map(str::to_owned),
        token: ctx
            .identity
            .as_ref()
            .is_some_and(|i| i.owner().is_some())
            .then_some(true),
        client: ctx.client.to_string(),
        user_agent: ctx
            .parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect()),
        method: route.method.to_string(),
        path: route.path(),
        repo: ctx.repo().to_owned(),
        target,
        digest: matches!(
            target,
            audit::Target::ManifestByDigest | audit::Target::Blob
        )
        .then(|| reference.clone()),
        reference,
        size: None,
        media_type: None,
        tags: None,
        tags_complete: None,
        decision: audit::Decision::Allowed,
        reason: String::new(),
        upstream_status: None,
        outcome: None,
        duration_ms: None,
        seq: 0,
        prev: String::new(),
        mac: String::new(),
    }
}

/// Records an authenticated user's refused audited request, within the user's
/// `audit.max_denials_per_minute` (the rest are summarized by the writer).
async fn audit_refusal(ctx: &Ctx, target: audit::Target, error: &ProxyError) {
    let Some(log) = &ctx.state.audit_log else {
        return;
    };
    let mut r = audit_record(ctx, target);
    r.phase = Phase::Denied;
    r.decision = audit::Decision::Denied;
    r.reason = error.to_string();
    r.outcome = Some(Outcome::Denied);
    r.duration_ms = Some(0);
    if let Err(e) = log.write_denial(r).await {
        tracing::error!(error = %e, request_id = ctx.request_id, "audit record of a refusal not written");
    }
}

/// What an access event (`audit.events`) a request is, if it is one and its kind is on:
/// a manifest GET (pull; HEAD and blob GETs are not events, to keep the volume sane) or
/// a manifest PUT (push; unless `audit.manifest_pushes` audits it fail-closed already).
fn access_target(ctx: &Ctx) -> Option<audit::Target> {
    let settings = ctx.snap.audit.as_ref()?;
    ctx.state.audit_log.as_ref()?;
    match (&ctx.route.method, &ctx.route.target) {
        (&Method::GET, Target::Manifest { .. }) if settings.records(audit::Kind::Pull) => {
            Some(audit::Target::ManifestPull)
        }
        (&Method::PUT, Target::Manifest { .. })
            if settings.records(audit::Kind::Push) && !settings.manifest_pushes =>
        {
            Some(audit::Target::ManifestPush)
        }
        _ => None,
    }
}

/// The digest a manifest request names, when it names one.
fn reference_digest(route: &Route) -> Option<String> {
    match &route.target {
        Target::Manifest {
            reference: Reference::Digest(d),
            ..
        } => Some(d.clone()),
        _ => None,
    }
}

fn header_str(headers: &http::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(256).collect())
}

/// Queues the access event of a forwarded pull or push (never waits: see
/// `audit::access`): the upstream's status, the digest it names (else the request's),
/// and the manifest's size and media type — the upstream's answer for a pull, the
/// request's for a push.
fn access_event(
    ctx: &Ctx,
    target: audit::Target,
    reason: String,
    started: std::time::Instant,
    result: &Result<Response<ResponseBody>, ProxyError>,
) {
    let Some(log) = &ctx.state.audit_log else {
        return;
    };
    let mut r = audit_record(ctx, target);
    r.phase = Phase::Access;
    r.reason = reason;
    r.duration_ms = Some(started.elapsed().as_millis() as u64);
    r.digest = reference_digest(&ctx.route);
    match result {
        Ok(resp) => {
            let ok = resp.status().is_success();
            r.upstream_status = Some(resp.status().as_u16());
            r.outcome = Some(match (ok, target) {
                (true, audit::Target::ManifestPull) => Outcome::Pulled,
                (true, _) => Outcome::Pushed,
                (false, _) => Outcome::Failed,
            });
            if let Some(d) = header_str(
                resp.headers(),
                header::HeaderName::from_static("docker-content-digest"),
            ) {
                r.digest = Some(d);
            }
            let described = match target {
                audit::Target::ManifestPull if ok => Some(resp.headers()),
                audit::Target::ManifestPush => Some(&ctx.parts.headers),
                _ => None,
            };
            if let Some(h) = described {
                r.size = header_str(h, header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
                r.media_type = header_str(h, header::CONTENT_TYPE);
            }
        }
        Err(e) => {
            r.outcome = Some(Outcome::Failed);
            r.reason = e.to_string();
        }
    }
    log.event(r);
}

/// Queues the access event of an authenticated user's refused pull or push.
fn access_refusal(ctx: &Ctx, target: audit::Target, error: &ProxyError) {
    let Some(log) = &ctx.state.audit_log else {
        return;
    };
    let mut r = audit_record(ctx, target);
    r.phase = Phase::Access;
    r.decision = audit::Decision::Denied;
    r.reason = error.to_string();
    r.outcome = Some(Outcome::Denied);
    r.duration_ms = Some(0);
    r.digest = reference_digest(&ctx.route);
    log.event(r);
}

/// Queues a login event (`audit.events: [login]`): a Basic credential check that failed,
/// or the first that succeeded for the user from this address within
/// `audit.login_window` — not every request a cached verification lets through; and a
/// bearer token of the proxy's that was refused (forged, expired, its user changed),
/// named by its user when the token names one. A valid bearer token is no login (its
/// login was the token request's). Throttled and malformed attempts never reach a check.
/// Failed ones are bounded per address by the throttle and across addresses by
/// `audit.max_failed_logins_per_minute` (see `audit::access`).
fn login_event(ctx: &Ctx, result: &Result<Identity, AuthError>) {
    let (Some(log), Some(settings), Some(auth)) =
        (&ctx.state.audit_log, &ctx.snap.audit, &ctx.snap.auth)
    else {
        return;
    };
    if !settings.records(audit::Kind::Login) {
        return;
    }
    let mut values = ctx.parts.headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return;
    };
    let (user, ok, refused) = match auth.bearer_subject(value.as_bytes()) {
        Some(subject) => match result {
            Err(AuthError::Invalid(why)) => {
                (subject.unwrap_or_else(|| "-".to_owned()), false, *why)
            }
            _ => return,
        },
        None => {
            let Ok(creds) = crate::auth::basic::parse(value.as_bytes()) else {
                return;
            };
            let ok = match result {
                Ok(Identity::User { .. } | Identity::Token { .. }) => true,
                Err(AuthError::Invalid(_)) => false,
                _ => return,
            };
            if ok && !log.first_login(&creds.user, ctx.client) {
                return;
            }
            (creds.user, ok, "invalid username or password")
        }
    };
    let mut r = audit_record(ctx, audit::Target::Login);
    r.phase = Phase::Access;
    r.user = crate::log::shown_user(&user).into_owned();
    r.reference = String::new();
    r.duration_ms = Some(0);
    if ok {
        r.outcome = Some(Outcome::LoggedIn);
        r.reason = "credentials verified".into();
    } else {
        r.decision = audit::Decision::Denied;
        r.outcome = Some(Outcome::Failed);
        r.reason = refused.into();
    }
    log.event(r);
}

/// Forwards an audited request: resolves what it removes, writes the intent (fsync'd:
/// no intent on disk, no forwarding), forwards, then writes the outcome. From the intent
/// on, all of it runs in a task of its own: a client that goes away once its intent is
/// handed to the writer cancels neither the forward nor the outcome record.
async fn audited_forward(
    ctx: Ctx,
    body: Incoming,
    permit: Permit,
    target: audit::Target,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (Some(log), Some(_)) = (&ctx.state.audit_log, &ctx.snap.audit) else {
        return forward(&ctx, body, permit).await;
    };
    let log = log.clone();
    let started = std::time::Instant::now();
    let mut rec = audit_record(&ctx, target);
    rec.reason = permit.reason.clone();
    let (upstream, repo) = (&*ctx.snap.upstream, ctx.repo());
    if target == audit::Target::ManifestByTag {
        match lookup::manifest_digest(upstream, repo, &rec.reference).await {
            Ok(d) => rec.digest = d,
            Err(e) => tracing::warn!(error = %e, "audit: digest of the tag not resolved"),
        }
    }
    if matches!(
        target,
        audit::Target::ManifestByTag | audit::Target::ManifestByDigest
    ) {
        if let Some(d) = rec.digest.clone() {
            match ctx.tag_snapshot().await {
                Some(Ok(snapshot)) => {
                    rec.tags = Some(snapshot.pointing_at(&d));
                    rec.tags_complete = Some(snapshot.complete);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "audit: tags of the digest not found");
                    rec.tags_complete = Some(false);
                }
                None => {}
            }
        }
    }
    let task = tokio::spawn(async move {
        log.write(rec.clone())
            .await
            .map_err(ProxyError::AuditUnavailable)?;
        let result = forward(&ctx, body, permit).await;
        rec.phase = Phase::Outcome;
        rec.time = audit::record::now_rfc3339();
        match &result {
            Ok(resp) => {
                let ok = resp.status().is_success();
                rec.upstream_status = Some(resp.status().as_u16());
                rec.outcome = Some(match (ok, target) {
                    (true, audit::Target::ManifestPush) => Outcome::Pushed,
                    (true, _) => Outcome::Deleted,
                    (false, _) => Outcome::Failed,
                });
                if target == audit::Target::ManifestPush {
                    if let Some(d) = resp
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                    {
                        rec.digest = Some(d.to_owned());
                    }
                }
            }
            Err(e) => {
                rec.outcome = Some(Outcome::Failed);
                rec.reason = e.to_string();
            }
        }
        rec.duration_ms = Some(started.elapsed().as_millis() as u64);
        if let Err(e) = log.write(rec).await {
            // The delete happened (or failed) upstream: the intent is on disk, and
            // `audit verify` reports the missing outcome as unknown.
            tracing::error!(error = %e, request_id = ctx.request_id, "audit outcome not written");
        }
        result
    });
    task.await
        .unwrap_or_else(|e| Err(ProxyError::internal("the audited request's task failed", e)))
}

/// Decides whether the identity may make the request: the pure decision of
/// `acl::decide` (the same one `explain` prints), then the upstream lookups it asks for.
async fn permit(ctx: &Ctx) -> Result<Permit, ProxyError> {
    let (snap, route, identity) = (&ctx.snap, &ctx.route, ctx.identity.as_ref());
    let query = ctx.parts.uri.query();
    let refusal = |verdict: Verdict| -> ProxyError {
        match verdict {
            Verdict::Challenge { .. } => AuthError::Missing.into(),
            Verdict::Deny { reason } => ProxyError::Denied(reason),
            Verdict::Allow(_) => ProxyError::Denied(String::new()),
        }
    };
    let allowance = match acl::decide(snap.policy.as_ref(), identity, route, query) {
        Verdict::Allow(a) => a,
        refused => {
            if let (Some(id), Some(policy), Some(repo)) = (identity, &snap.policy, route.repo()) {
                let why = policy.decide(id, repo, route.actions()).reason();
                tracing::debug!(user = %crate::log::Escaped(id.name()), repo, reason = %why, "refused");
            }
            return Err(refusal(refused));
        }
    };
    // The explained reason only where it is kept (an audit record, an access event).
    let reason = match (identity, &snap.policy) {
        (Some(id), Some(policy)) if audit_target(ctx).is_some() || access_target(ctx).is_some() => {
            acl::verdict::explained_reason(policy, id, route)
        }
        _ => allowance.reason,
    };
    if let (Some(id), Some(policy), Some(repo)) = (identity, &snap.policy, route.repo()) {
        for check in &allowance.checks {
            let failed = match check {
                Check::TagAbsent { tag, protection } => {
                    lookup::manifest_digest(&snap.upstream, repo, tag)
                        .await?
                        .map(|_| {
                            format!(
                                "tag {tag:?} is protected ({protection}): it cannot be overwritten"
                            )
                        })
                }
                Check::NotProtected { digest } => {
                    // An audited manifest delete takes its repository's tag snapshot
                    // anyway: a complete one serves the check too (taken after the
                    // request arrived, like the check's own listing). Otherwise, and for
                    // blob deletes, the check lists the tags itself.
                    let shared = match audit_target(ctx) {
                        Some(audit::Target::ManifestByDigest) => ctx.tag_snapshot().await,
                        _ => None,
                    };
                    let known = shared
                        .and_then(|s| s.as_ref().ok())
                        .filter(|s| s.complete)
                        .map(|s| &**s);
                    match protected_references(&snap.upstream, policy, id, repo, digest, known)
                        .await
                    {
                        Ok(()) => None,
                        Err(ProxyError::Denied(r)) => Some(r),
                        Err(other) => return Err(other),
                    }
                }
            };
            if let Some(reason) = failed {
                return Err(refusal(Verdict::refusal(id, reason)));
            }
        }
    }
    let query = allowance.strip_mount.then(|| {
        // Without pull on `from`, a plain upload start: every client falls back to
        // uploading the blob, and nothing of `from` is read.
        registry::route::strip_query_params(query.unwrap_or(""), &["mount", "from"])
    });
    Ok(Permit { query, reason })
}

/// Most tags examined to protect a delete by digest; beyond it the delete is refused
/// rather than risk removing a protected tag unseen.
const MAX_TAGS_EXAMINED: usize = 10_000;

/// Most manifests read to protect one delete (the protected tags' own and their index
/// children); past it the delete is refused rather than allowed unchecked.
const MAX_MANIFESTS_WALKED: usize = 256;

/// Refuses a delete by digest (of a manifest or a blob) that would break a protected
/// tag: the tag points at that manifest (a delete by digest removes every tag pointing at
/// it), or its manifest, or a child manifest of its index, references that digest
/// (config, layers, children). Fails closed: when not every tag can be listed or a
/// protected manifest cannot be read, the delete is refused and the reason says why.
/// `known`: a complete tag snapshot of `repo` taken after the request arrived, used
/// instead of listing the tags (and a protected tag it shows on `digest` refuses the
/// delete without reading the manifest).
async fn protected_references(
    upstream: &Upstream,
    policy: &Policy,
    id: &Identity,
    repo: &str,
    digest: &str,
    known: Option<&lookup::TagSnapshot>,
) -> Result<(), ProxyError> {
    let lookup::Tags { tags, complete } = match known {
        Some(s) => lookup::Tags {
            tags: s.tags.iter().map(|(t, _)| t.clone()).collect(),
            complete: s.complete,
        },
        None => lookup::tags(upstream, repo, MAX_TAGS_EXAMINED)
            .await?
            .unwrap_or(lookup::Tags {
                tags: Vec::new(),
                complete: true,
            }),
    };
    if !complete {
        return Err(ProxyError::Denied(format!(
            "{repo} has more than {MAX_TAGS_EXAMINED} tags: protected tags cannot be checked, delete by tag instead"
        )));
    }
    let mut walked = 0;
    for tag in &tags {
        let Some(p) = policy.tag_protection(id, repo, tag) else {
            continue;
        };
        if known.and_then(|s| s.digest_of(tag)) == Some(digest) {
            return Err(ProxyError::Denied(format!(
                "deleting {digest} would remove the protected tag {tag:?} ({})",
                p.label
            )));
        }
        let mut queue = vec![tag.clone()];
        let mut seen = std::collections::HashSet::new();
        while let Some(reference) = queue.pop() {
            walked += 1;
            if walked > MAX_MANIFESTS_WALKED {
                return Err(ProxyError::Denied(format!(
                    "protected tags of {repo} reference more than {MAX_MANIFESTS_WALKED} manifests: they cannot all be checked"
                )));
            }
            let Some((found, body)) = lookup::manifest(upstream, repo, &reference).await? else {
                continue;
            };
            if found == digest {
                return Err(ProxyError::Denied(format!(
                    "deleting {digest} would remove the protected tag {tag:?} ({})",
                    p.label
                )));
            }
            let refs = registry::manifest::references(&body).map_err(|e| {
                ProxyError::Denied(format!(
                    "the manifest {found} of the protected tag {tag:?} cannot be read ({e}): deletes by digest in {repo} are refused"
                ))
            })?;
            if refs.digests.iter().any(|d| d == digest) {
                return Err(ProxyError::Denied(format!(
                    "deleting {digest} would break the protected tag {tag:?} ({}): its manifest {found} references it",
                    p.label
                )));
            }
            queue.extend(refs.children.into_iter().filter(|c| seen.insert(c.clone())));
        }
    }
    Ok(())
}

/// Upstream catalog pages requested per client page at most: bounds the time a page
/// takes however few repositories the identity may see.
const MAX_CATALOG_PAGES: usize = 20;
const CATALOG_CHUNK: usize = 1000;

/// The catalog filtered to what `id` may pull, filled from as many upstream pages as
/// needed (up to a bound), with the proxy's own `Link` to the next page.
async fn catalog(
    ctx: &Ctx,
    n: Option<u32>,
    last: Option<&str>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let snap = &ctx.snap;
    let (Some(policy), Some(id)) = (&snap.policy, &ctx.identity) else {
        return Err(AuthError::Missing.into());
    };
    let n = n.map_or(100, |n| n as usize).min(snap.catalog_max_n);
    let mut out: Vec<String> = Vec::new();
    let mut cursor = last.map(str::to_owned);
    let mut more = n > 0;
    let mut pages = 0;
    while more && out.len() < n && pages < MAX_CATALOG_PAGES {
        pages += 1;
        let (names, next) =
            lookup::catalog_page(&snap.upstream, cursor.as_deref(), CATALOG_CHUNK).await?;
        more = next.is_some() && !names.is_empty();
        for name in names {
            cursor = Some(name.clone());
            if policy.allows(id, &name, Actions::PULL) {
                out.push(name);
                if out.len() == n {
                    // Stopped inside an upstream page: the rest of it is still unseen.
                    more = true;
                    break;
                }
            }
        }
    }
    let body = serde_json::json!({ "repositories": out });
    let mut resp = response::own(
        http::StatusCode::OK,
        &Method::GET,
        Bytes::from(body.to_string()),
    );
    if more {
        let next = cursor.unwrap_or_default();
        let link = format!(
            "</v2/_catalog?last={}&n={n}>; rel=\"next\"",
            form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// A tag list as the OCI distribution spec has it, whatever the upstream does with `n`
/// and `last` (distribution 2.8 ignores both and does not sort): the whole list read
/// (up to `limits.max_tags`; past it, an error rather than a list cut short), sorted,
/// paged by `registry::tags::page`, with the proxy's own relative `Link`.
async fn tags_list(
    ctx: &Ctx,
    repo: &str,
    n: Option<u32>,
    last: Option<&str>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let max = ctx.snap.max_tags;
    let listing = lookup::tags(&ctx.snap.upstream, repo, max)
        .await?
        .ok_or(ProxyError::NameUnknown)?;
    if !listing.complete {
        return Err(ProxyError::TagListTooLong { max });
    }
    let page = registry::tags::page(&listing.tags, n, last);
    let body = serde_json::json!({ "name": repo, "tags": page.tags });
    let mut resp = response::own(
        http::StatusCode::OK,
        &Method::GET,
        Bytes::from(body.to_string()),
    );
    if let Some(link) = page.link(repo) {
        let v = HeaderValue::from_str(&link)
            .map_err(|e| ProxyError::internal("the tag list's Link header", e))?;
        resp.headers_mut().insert(header::LINK, v);
    }
    Ok(resp)
}

/// Forwards a permitted request and streams the upstream's answer back.
async fn forward(
    ctx: &Ctx,
    body: Incoming,
    permit: Permit,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (state, snap) = (&ctx.state, &ctx.snap);
    let (route, query) = (&ctx.route, permit.query.as_deref());
    let public = public_origin(state, snap, &ctx.parts);
    let path_and_query = match query {
        // A query the permit stage rewrote (never empty-with-`?`).
        Some("") => ctx.parts.uri.path().parse(),
        Some(q) => format!("{}?{q}", ctx.parts.uri.path()).parse(),
        // The client's own, byte for byte (a cheap clone of its bytes).
        None => Ok(ctx
            .parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))),
    }
    .map_err(|e| ProxyError::internal("cannot build the upstream URI", e))?;
    // The upstream request is built, not cloned from the client's and then pruned: one
    // pass over the client's headers. GET, HEAD, DELETE and POST send no client body
    // (see below), so none of its framing or type either.
    let bodiless = !matches!(route.method, Method::PUT | Method::PATCH);
    let drop: &[header::HeaderName] = if bodiless {
        &[
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
        ]
    } else {
        &[]
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = ctx.parts.method.clone();
    parts.uri = snap.upstream.uri_with(path_and_query)?;
    parts.version = Version::HTTP_11;
    parts.headers = headers::forwarded_request(
        &ctx.parts.headers,
        &ForwardContext {
            client_ip: ctx.client,
            proto: state.scheme.as_str(),
            public_host: Some(public.host.as_str()),
        },
        drop,
    );

    let limit = snap.max_manifest_bytes;
    let body = if bodiless {
        // No client body reaches the upstream, and no type it could parse a form from:
        // GET, HEAD and DELETE have none (an announced one was refused before); an upload
        // start's is read to its end to check it is empty (a chunked one announces no
        // length), and the upload start goes out with an explicit empty length.
        if matches!(route.target, Target::UploadStart { .. }) {
            ensure_empty(body).await?;
        } else {
            std::mem::drop(body);
        }
        if route.method == Method::POST {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        OutBody::Empty
    } else if http_body::Body::is_end_stream(&body) {
        // `Content-Length: 0` (an upload's closing PUT): nothing to stream, so the
        // request can be sent again after a token challenge.
        OutBody::Empty
    } else if is_manifest_put(route) {
        // Refuse by the announced length before a byte is read; cap what is streamed.
        let announced = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit) {
            return Err(ProxyError::ManifestTooLarge { limit });
        }
        let body = counted(body, &state.metrics);
        OutBody::Streamed(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed())
    } else {
        OutBody::Streamed(counted(body, &state.metrics).map_err(Into::into).boxed())
    };

    let body_limit = is_manifest_put(route).then_some(limit);
    let sent = std::time::Instant::now();
    let resp = snap
        .upstream
        .send_authorized(parts, body, &Need::for_route(route), body_limit)
        .await?;
    state
        .metrics
        .observe_upstream(route.kind(), sent.elapsed().as_secs_f64());
    let (mut parts, body) = resp.into_parts();
    headers::forward_response(&mut parts.headers, &snap.upstream.origin, &public.origin);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body)))
}

/// A client's request body as forwarded, its bytes counted as they pass.
fn counted(
    body: Incoming,
    metrics: &Metrics,
) -> impl http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + 'static {
    let received = metrics.received_bytes.clone();
    body.map_frame(move |f| {
        if let Some(d) = f.data_ref() {
            received.add(d.len() as u64);
        }
        f
    })
}

/// Reads a body that must be empty to its end: any byte refuses the request.
async fn ensure_empty(mut body: Incoming) -> Result<(), ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(());
    }
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ProxyError::ClientBody {
                what: "the upload start's body".into(),
                source: Some(e.into()),
            })?;
            if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                return Err(ProxyError::UploadStartBody(
                    form::UploadStartRefusal::Body.message(),
                ));
            }
        }
        Ok(())
    };
    tokio::time::timeout(EMPTY_BODY_WAIT, read)
        .await
        .unwrap_or_else(|_| Err(ProxyError::client_body("the request body did not end")))
}

/// How long the end of a body that must be empty is waited for.
const EMPTY_BODY_WAIT: Duration = Duration::from_secs(10);

fn is_manifest_put(route: &Route) -> bool {
    route.method == Method::PUT && matches!(route.target, Target::Manifest { .. })
}

/// Reads and discards the body of a refused HTTP/1.1 request, as nginx's lingering close
/// does: clients that send a body before seeing a challenge (oras-py PUT/PATCH) then read
/// the refusal instead of a reset connection. Returns whether the connection can stay
/// open. Nothing is read when the client asked `Expect: 100-continue` (it has not sent
/// the body and will not), on HTTP/2 (the stream is reset on its own) or past the bounds.
async fn drain(hint: &DrainHint, mut body: Incoming, max_bytes: u64) -> bool {
    use http_body::Body as _;
    if body.is_end_stream() || hint.http2 {
        return true;
    }
    if hint.expects_continue {
        return false;
    }
    let announced = body.size_hint().exact();
    if announced.is_some_and(|n| n > max_bytes) {
        return false;
    }
    let read = async {
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    seen += f.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > max_bytes {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .unwrap_or(false)
}

/// The origin clients used: the configured one, else the request's own authority (h2) or
/// Host (h1) when it is a plausible host, else the listening address.
fn public_origin<'a>(
    state: &State,
    snap: &'a Snapshot,
    parts: &http::request::Parts,
) -> std::borrow::Cow<'a, PublicOrigin> {
    if let Some(o) = &snap.public_origin {
        return std::borrow::Cow::Borrowed(o);
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
    std::borrow::Cow::Owned(match host {
        Some(h) => PublicOrigin::new(state.scheme, h),
        None => PublicOrigin::new(state.scheme, &state.local_addr.to_string()),
    })
}

fn is_plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}
