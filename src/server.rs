//! The listener: TCP accept under a connection cap and a per-address cap on
//! unauthenticated connections, TLS handshake (with a deadline), one HTTP/1.1 or HTTP/2
//! connection per socket chosen by ALPN, a watchdog for idle connections and slow request
//! heads, and a graceful drain on shutdown (stop accepting, let in-flight requests finish
//! up to `limits.shutdown_grace`, then close what is left). From the first SIGTERM or
//! SIGINT, a watchdog thread ends the process `shutdown_grace` + [`SHUTDOWN_MARGIN`] later
//! whatever hangs (a stuck write, a blocked thread the runtime would wait for at exit).
//!
//! Idleness is counted in requests, never in bytes (see [`ConnActivity`]): a connection
//! with no request open for `idle_timeout` is closed, whatever PINGs or other protocol
//! frames it exchanges. An HTTP/1.1 connection then has `header_read_timeout` from the
//! first byte of a request head to its end; the first request's head has to be complete
//! within `min(idle_timeout, header_read_timeout)` of the accept.
//!
//! Behind a TCP load balancer (`server.proxy_protocol`), a connection from a peer in
//! `server.trusted_proxies` must open with a PROXY protocol header (v1 or v2), read
//! right after accept and before TLS, within the same deadline; the address it declares
//! becomes the connection's client address ([`ConnInfo::peer`]), so the per-address cap,
//! the throttle, the logs and the audit all see the client, never the balancer. A v2
//! `LOCAL` header (the balancer's health check) keeps the balancer's address. A PROXY
//! header from any other peer, or with the option off, closes the connection: only a
//! trusted balancer may speak for a client.

use crate::config::{Config, ConfigError, Limits, Tls};
use crate::handler::{self, ConnInfo, State};
use crate::log::{now_ms, ConnActivity};
use crate::metrics::{Metrics, Protocol, TlsFailure};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("server.listen: cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot write the address file {path}: {source}")]
    AddrFile { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Users(#[from] crate::auth::users::UsersError),
    #[error(transparent)]
    Tokens(#[from] crate::auth::access_tokens::TokensError),
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    MetricsBind { addr: SocketAddr, source: io::Error },
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: Arc<State>,
    /// The configuration started with: what a reload cannot change stays as it says.
    config: Config,
    /// The file to reload from (SIGHUP, or a change of it or of a file it names).
    config_path: Option<PathBuf>,
    /// `server.proxy_protocol`: trusted proxies open with a PROXY header.
    proxy_protocol: bool,
}

/// Reads `auth.token_key_file`: like the audit key, no one else may read it and no
/// group member may write it (whoever holds it can mint any user's token).
pub(crate) fn token_key(path: &Path) -> Result<crate::auth::token::TokenKey, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let key = "auth.token_key_file";
    let fail = |m: String| ConfigError::new(key, format!("{}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(fail(format!(
            "mode {mode:o} lets others read or group members write it: chmod 600 (or 640)"
        )));
    }
    let text = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    crate::auth::token::TokenKey::from_file_text(&text).map_err(fail)
}

impl Server {
    /// Loads TLS material, builds the upstream client and binds the listener. Every
    /// failure here is a start-up failure with a message naming the key.
    pub async fn bind(cfg: &Config) -> Result<Server, ServeError> {
        let metrics = Arc::new(Metrics::default());
        let snapshot = crate::reload::build(cfg, cfg, None, &metrics).map_err(|e| match e {
            crate::reload::ReloadError::Config(e) => ServeError::Config(e),
            crate::reload::ReloadError::Users(e) => ServeError::Users(e),
            crate::reload::ReloadError::Tokens(e) => ServeError::Tokens(e),
        })?;
        match (&cfg.auth, &snapshot.auth) {
            (Some(a), Some(auth)) => {
                if let Some(access) = &cfg.access {
                    for w in &access.warnings {
                        tracing::warn!("{w}");
                    }
                }
                tracing::info!(users = auth.users().len(), file = %a.users_file.display(), "user file loaded");
                if let Some(t) = &a.tokens {
                    tracing::info!(tokens = auth.access_tokens().len(), file = %t.file.display(), last_used = %t.last_used_file.display(), "tokens file loaded");
                }
                if let Some(l) = &a.ldap {
                    tracing::info!(url = %l.url, user_base = %l.user_base, "names not in the user file are looked up in the directory");
                    if l.transport == crate::config::LdapTransport::Plaintext {
                        tracing::warn!(url = %l.url, "auth.ldap.allow_plaintext: passwords go to the directory unencrypted");
                    }
                }
                if a.token_key_file.is_none() && auth.issues_tokens() {
                    tracing::info!("docker bearer tokens signed with a random key of this process (replicas behind one address need auth.token_key_file)");
                }
            }
            _ => {
                tracing::warn!("auth.disabled: true: every well-formed request is forwarded without a credential check");
            }
        }
        let addr = cfg.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        if matches!(cfg.server.tls, Tls::Plaintext) {
            tracing::warn!(
                "serving plain HTTP (server.plaintext: true): credentials cross the network in clear unless a TLS terminator sits in front"
            );
        }
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::MetricsBind { addr, source })?,
            ),
            None => None,
        };
        let audit_log = match &cfg.audit {
            Some(a) => {
                let log = crate::audit::AuditLog::start(a.settings.clone(), metrics.clone())
                    .map_err(|e| ConfigError::new(e.config_key(), e.to_string()))?;
                tracing::info!(file = %a.settings.file.display(), "audit log open");
                Some(log)
            }
            None => None,
        };
        let scheme = if snapshot.tls.is_some() {
            handler::Scheme::Https
        } else {
            handler::Scheme::Http
        };
        metrics
            .config_last_reload_success
            .set(crate::reload::unix_now());
        let state = Arc::new(State {
            snapshot: arc_swap::ArcSwap::from_pointee(snapshot),
            audit_log,
            user_connections: handler::UserConnections::new(cfg.limits.max_connections_per_user),
            metrics,
            scheme,
            local_addr,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
        });
        Ok(Server {
            listener,
            metrics_listener,
            state,
            config: cfg.clone(),
            config_path: None,
            proxy_protocol: cfg.server.proxy_protocol,
        })
    }

    /// Reloads from `path` (the file `cfg` was loaded from) on SIGHUP and whenever it or
    /// a file it names changes. Without it, SIGHUP only reopens the audit file.
    pub fn reload_from(mut self, path: &Path) -> Self {
        self.config_path = Some(path.to_owned());
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
    }

    /// Writes the bound address to `path` (temporary file + rename), for scripts and
    /// tests that listen on port 0.
    pub fn write_addr_file(&self, path: &Path) -> Result<(), ServeError> {
        let err = |source| ServeError::AddrFile {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", self.local_addr())).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listener,
            metrics_listener,
            state,
            config,
            config_path,
            proxy_protocol,
        } = self;
        if let Some(l) = metrics_listener {
            tokio::spawn(crate::admin::serve(l, state.clone()));
        }
        let limits = Arc::new(config.limits.clone());
        let tls = !matches!(config.server.tls, Tls::Plaintext);
        // With auth on, always: a reload may add a tokens file.
        if let Some(a) = &config.auth {
            tokio::spawn(flush_token_usage_every(
                a.token_flush_interval(),
                state.clone(),
            ));
        }
        shutdown_watchdog(limits.shutdown_grace, state.audit_log.clone());
        match config_path {
            Some(path) => tokio::spawn(crate::reload::watch(path, config, state.clone())),
            None => tokio::spawn(reopen_on_hangup(state.clone())),
        };
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let per_address = Arc::new(AddressCap::new(
            limits.max_connections_per_address,
            state.trusted_proxies.clone(),
        ));
        // Each connection holds a receiver; `closed()` resolves when the last is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        tracing::info!(addr = %state.local_addr, tls, tls_provider = crate::tls::PROVIDER_NAME, upstream = %state.snapshot.load().upstream.origin, "listening");
        let snap = state.snapshot.load_full();
        tokio::spawn(async move {
            if let Some(auth) = &snap.auth {
                auth.report_shadowed_names().await;
            }
        });
        let mut shutdown = pin!(shutdown);
        loop {
            // Take a connection slot before accepting: at the cap, new connections wait
            // in the kernel's backlog instead of being accepted and starved.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.as_mut() => break,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.as_mut() => break,
            };
            // A trusted balancer's connection is admitted under the address its PROXY
            // header declares, once read (in the connection's task: a slow balancer
            // must not hold up the accept loop); any other right away, before TLS:
            // refusing costs the proxy no handshake.
            let proxied = proxy_protocol && per_address.is_exempt(peer.ip());
            let activity = Arc::new(ConnActivity::new());
            let early = if proxied {
                None
            } else {
                let conn = ConnInfo::new(peer, activity.clone());
                let Ok(slot) = per_address.admit(&conn) else {
                    state.metrics.connections_refused_per_address.inc();
                    tracing::debug!(%peer, max = limits.max_connections_per_address, "unauthenticated connections per address at limits.max_connections_per_address: connection closed");
                    drop(tcp);
                    continue;
                };
                Some((conn, slot))
            };
            // The certificate of the snapshot in force at accept: a reload's new one
            // serves the next handshake.
            let acceptor = state.snapshot.load().tls.clone().map(TlsAcceptor::from);
            let (state, limits, stop_rx, per_address) = (
                state.clone(),
                limits.clone(),
                stop_rx.clone(),
                per_address.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                let mut tcp = tcp;
                let mut stop_rx = stop_rx;
                let _ = tcp.set_nodelay(true);
                let deadline = limits.header_read_timeout.min(limits.idle_timeout);
                let first = tokio::time::timeout(deadline, read_preface(&mut tcp, proxied));
                let first = tokio::select! {
                    r = first => r,
                    // Nothing to drain yet: a shutdown closes it at once.
                    _ = stop_rx.changed() => return,
                };
                let preface = match first {
                    Ok(Ok(p)) => p,
                    Ok(Err(Refused::Untrusted)) => {
                        tracing::debug!(%peer, "a PROXY protocol header from a peer not allowed to send one (server.trusted_proxies with server.proxy_protocol: true): connection closed");
                        return;
                    }
                    Ok(Err(Refused::Header(e))) => {
                        tracing::warn!(%peer, error = %e, "server.proxy_protocol: a trusted proxy's connection without a valid PROXY header: closed");
                        return;
                    }
                    Ok(Err(Refused::Io(e))) => {
                        tracing::debug!(%peer, error = %e, "connection failed before its first bytes");
                        return;
                    }
                    Err(_) => {
                        if proxied {
                            tracing::warn!(%peer, "server.proxy_protocol: no PROXY header from a trusted proxy within limits.header_read_timeout: connection closed");
                        } else {
                            tracing::debug!(%peer, "no first bytes in time: connection closed");
                        }
                        return;
                    }
                };
                let (conn, slot) = match early {
                    Some(admitted) => admitted,
                    None => {
                        let client = preface.source.unwrap_or(peer);
                        let conn = ConnInfo::new(client, activity);
                        let Ok(slot) = per_address.admit(&conn) else {
                            state.metrics.connections_refused_per_address.inc();
                            tracing::debug!(%client, via = %peer, max = limits.max_connections_per_address, "unauthenticated connections per address at limits.max_connections_per_address: connection closed");
                            return;
                        };
                        (conn, slot)
                    }
                };
                let _slot = slot;
                let io = Rewind::new(preface.rest, tcp);
                serve_connection(io, conn, acceptor, state, &limits, stop_rx).await;
            });
        }
        drop(listener);
        drop(stop_rx);
        tracing::info!(grace = ?limits.shutdown_grace, "shutting down: draining connections");
        let _ = stop_tx.send(true);
        if tokio::time::timeout(limits.shutdown_grace, stop_tx.closed())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over: closing the remaining connections");
        }
        if let Some(log) = &state.audit_log {
            // Pending denial summaries and a last checkpoint: the log's last checkpoint
            // is then the file's end.
            log.close().await;
        }
        // What the last interval saw of the access tokens' use.
        flush_token_usage(&state).await;
    }
}

/// How long after `limits.shutdown_grace` a shutdown may still take (the last audit
/// records and checkpoint, the access tokens' last use) before the watchdog ends it.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(10);
/// How long the watchdog waits for the audit writer's last records before it exits.
const WATCHDOG_FLUSH: Duration = Duration::from_secs(2);

/// Ends the process `grace` + [`SHUTDOWN_MARGIN`] after the first SIGTERM or SIGINT
/// unless it has exited by then: a drain bounded by `grace` must not become an exit
/// bounded by nothing (a file read that never returns, a write stuck on a dead disk: the
/// runtime waits for its threads at exit, and a runtime thread that hangs can keep tokio
/// from even delivering the signal). So the signal is seen by a thread of its own, outside
/// the runtime (signal-hook, beside tokio's handler, which runs the graceful drain). Once
/// the time is up it asks the audit writer for its last records (waiting at most
/// [`WATCHDOG_FLUSH`]), says why in the log, and exits with
/// [`crate::cli::EXIT_SHUTDOWN_HUNG`].
fn shutdown_watchdog(grace: Duration, audit_log: Option<crate::audit::AuditLog>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let limit = grace.saturating_add(SHUTDOWN_MARGIN);
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the shutdown watchdog: a hanging shutdown will not be ended");
            return;
        }
    };
    let started = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            std::thread::sleep(limit);
            tracing::error!(
                limit = ?limit,
                "shutdown did not finish within limits.shutdown_grace + {} s: something hangs (see the log above); exiting now",
                SHUTDOWN_MARGIN.as_secs()
            );
            if let Some(log) = audit_log {
                if !log.close_within(WATCHDOG_FLUSH) {
                    tracing::error!("the audit writer did not write its last records in time (pending summaries and the last checkpoint may be missing)");
                }
            }
            std::process::exit(i32::from(crate::cli::EXIT_SHUTDOWN_HUNG));
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the shutdown watchdog: a hanging shutdown will not be ended");
    }
}

/// Writes the access tokens' last use every `every` (when it changed): one write per
/// interval whatever the request rate, never one per request.
async fn flush_token_usage_every(every: Duration, state: Arc<State>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush_token_usage(&state).await;
    }
}

async fn flush_token_usage(state: &Arc<State>) {
    let snap = state.snapshot.load_full();
    let done = tokio::task::spawn_blocking(move || {
        snap.auth.as_ref().map_or(Ok(()), |a| a.flush_token_usage())
    })
    .await;
    if let Ok(Err(e)) = done {
        tracing::warn!(error = %e, "cannot write the access tokens' last use (tokens.last_used_file); retried at the next flush");
    }
}

/// Why a connection is closed before TLS or HTTP.
enum Refused {
    /// A PROXY header from a peer that may not send one.
    Untrusted,
    /// No valid PROXY header from a trusted proxy that must send one.
    Header(crate::proxy_protocol::Error),
    Io(io::Error),
}

/// What arrived before TLS or HTTP: the client's address if a PROXY header declared one,
/// and the bytes read past the header (replayed to TLS or HTTP by [`Rewind`]).
struct Preface {
    source: Option<SocketAddr>,
    rest: Vec<u8>,
}

/// Reads a connection's first bytes: the PROXY header a trusted proxy must send
/// (`expect`), or, from anyone else, just enough to tell that it is none (the first
/// byte, for TLS and HTTP). Bounded: a header is at most
/// [`crate::proxy_protocol::V2_MAX`] bytes, and what was read past it is kept.
async fn read_preface(tcp: &mut TcpStream, expect: bool) -> Result<Preface, Refused> {
    use crate::proxy_protocol::{self as pp, Sniff};
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        if expect {
            match pp::parse(&buf) {
                Ok(Some(h)) => {
                    return Ok(Preface {
                        source: h.source,
                        rest: buf.split_off(h.len),
                    })
                }
                Ok(None) => {}
                Err(e) => return Err(Refused::Header(e)),
            }
        } else {
            match pp::sniff(&buf) {
                Sniff::Proxy => return Err(Refused::Untrusted),
                Sniff::NotProxy => {
                    return Ok(Preface {
                        source: None,
                        rest: buf,
                    })
                }
                Sniff::NeedMore => {}
            }
        }
        let n = tcp.read(&mut chunk).await.map_err(Refused::Io)?;
        if n == 0 {
            return Err(Refused::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A socket whose first bytes were read already (to look for a PROXY header): they are
/// read again first, then the socket.
struct Rewind<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Rewind<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl Rewind<TcpStream> {
    /// The first byte not read yet, waiting for it if need be (`None`: the peer closed).
    async fn peek_byte(&self) -> io::Result<Option<u8>> {
        if let Some(&b) = self.prefix.get(self.at) {
            return Ok(Some(b));
        }
        let mut first = [0u8; 1];
        let n = self.inner.peek(&mut first).await?;
        Ok((n > 0).then_some(first[0]))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve_connection(
    tcp: Rewind<TcpStream>,
    conn: Arc<ConnInfo>,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) {
    let peer = conn.peer;
    let activity = conn.activity.clone();
    let metrics = state.metrics.clone();
    let svc = service_fn(move |req| {
        let (state, conn) = (state.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handler::handle(state, conn, req).await) }
    });
    match acceptor {
        None => {
            let _open = metrics.connection_open(Protocol::H1);
            let io = TokioIo::new(HeadWatchIo::new(tcp, activity.clone()));
            let c = http1_builder(limits).serve_connection(io, svc);
            drive(c, stop, &activity, limits).await;
        }
        Some(acceptor) => {
            let mut tcp = tcp;
            match tokio::time::timeout(limits.header_read_timeout, starts_with_tls(&tcp)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    metrics.tls_failure(TlsFailure::PlainHttp);
                    tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
                    answer_plain_http(&mut tcp).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection failed before TLS");
                    return;
                }
                Err(_) => {
                    metrics.tls_failure(TlsFailure::Timeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
            let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.tls_failure(TlsFailure::Error);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics.tls_failure(TlsFailure::Timeout);
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let _open = metrics.connection_open(if h2 { Protocol::H2 } else { Protocol::H1 });
            if h2 {
                // No byte counts as activity here: only streams do (through InFlight).
                let io = TokioIo::new(tls);
                let c = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(
                        u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .adaptive_window(true)
                    // Dead-peer detection during long responses; an idle connection is
                    // closed by the watchdog whatever PINGs it answers.
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .serve_connection(io, svc);
                drive(c, stop, &activity, limits).await;
            } else {
                let io = TokioIo::new(HeadWatchIo::new(tls, activity.clone()));
                let c = http1_builder(limits).serve_connection(io, svc);
                drive(c, stop, &activity, limits).await;
            }
        }
    }
}

fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        // hyper starts its header timer as soon as a kept-alive connection goes idle, so
        // it would close every idle connection after `header_read_timeout` whatever
        // `idle_timeout` says. `drive` runs both deadlines instead (via HeadWatchIo).
        .header_read_timeout(None)
        // The read buffer bounds the request head: a larger head gets 431.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b
}

/// Whether the client's first byte opens a TLS handshake record (0x16). Anything else on
/// the TLS port is plain text: an HTTP request from a client that fell back to `http://`
/// (docker and containerd do for registries they take for insecure).
async fn starts_with_tls(tcp: &Rewind<TcpStream>) -> io::Result<bool> {
    Ok(tcp.peek_byte().await?.is_none_or(|b| b == 0x16))
}

/// The answer to plain HTTP on the TLS port, as Go's and nginx's TLS servers give one: an
/// HTTP/1.1 400 in the registry's error format saying the port speaks HTTPS, then the
/// connection closes, instead of a TLS alert that clients print as
/// `malformed HTTP response "\x15\x03\x03..."`. What the client sent is read away
/// (briefly, bounded) so that closing does not reset the answer away.
async fn answer_plain_http(tcp: &mut Rewind<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = crate::response::error_body(
        "UNSUPPORTED",
        "this port speaks HTTPS: use https:// (the client sent plain HTTP)",
    );
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\n{}: registry/2.0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::response::API_VERSION_HEADER,
        body.len()
    );
    let mut sink = [0u8; 4096];
    // The request head, as far as it has arrived.
    let _ = tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut sink)).await;
    let written = async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(&body).await?;
        tcp.shutdown().await
    };
    if tokio::time::timeout(Duration::from_secs(2), written)
        .await
        .is_err()
    {
        return;
    }
    // Linger: read what else comes (up to 64 KiB, 1 s) so the peer sees the answer.
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// How long a connection asked to close gracefully while idle may take to do so.
/// hyper's HTTP/2 server ignores a graceful shutdown while it waits for the client's
/// preface, so a silent client would otherwise keep its connection slot forever.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No request open for the idle limit: close gracefully (GOAWAY for HTTP/2).
    Idle,
    /// A request head begun and not finished in time: drop at once, there is no request
    /// to answer.
    Head,
    /// A response the client stopped taking (HTTP/2 flow control, a full TCP window):
    /// nothing went out for `idle_timeout`. Dropped at once, as nginx's `send_timeout`
    /// does; a graceful shutdown would wait for that very response.
    Stalled,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// When the connection expires, on the process clock ([`now_ms`]), and why; None while a
/// request is open. Before the first request the whole head is due within
/// `min(idle_timeout, header_read_timeout)` of the accept; after one, the next head's
/// first byte is due `idle_timeout` after the last request ended, and its end
/// `header_read_timeout` after that first byte.
fn expiry(a: &ConnActivity, limits: &Limits) -> Option<(u64, Expiry)> {
    if a.in_flight.load(Ordering::Acquire) > 0 {
        // Until its response head, a request is bounded by the handler's own limits
        // (upstream timeouts, a stalled request body); from then on its response must
        // keep moving.
        if a.sending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let last = a.oldest_progress_ms()?;
        return Some((
            last.saturating_add(ms(limits.idle_timeout)),
            Expiry::Stalled,
        ));
    }
    let head = a.head_started_ms.load(Ordering::Acquire);
    let why = if head == ConnActivity::NO_HEAD {
        Expiry::Idle
    } else {
        Expiry::Head
    };
    let idle_since = a.idle_since_ms.load(Ordering::Acquire);
    let at = if a.requests.load(Ordering::Acquire) == 0 {
        idle_since.saturating_add(ms(limits.idle_timeout.min(limits.header_read_timeout)))
    } else if why == Expiry::Head {
        head.saturating_add(ms(limits.header_read_timeout))
    } else {
        idle_since.saturating_add(ms(limits.idle_timeout))
    };
    Some((at, why))
}

/// Runs a connection until it ends, shutting it down gracefully on server shutdown or
/// when it has had no request open for its idle limit (see [`expiry`]), and dropping it
/// when a request head is not complete in time. An idle connection that does not close
/// within [`CLOSE_DEADLINE`] is dropped.
async fn drive<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    activity: &ConnActivity,
    limits: &Limits,
) where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let mut conn = pin!(conn);
    // How soon a change of state (a request ending, a head starting) is looked at; the
    // deadlines themselves are slept to exactly.
    let tick =
        (limits.idle_timeout.min(limits.header_read_timeout) / 4).max(Duration::from_millis(100));
    let mut shutting_down = false;
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let mut wake = now + tick;
        if let Some((at, _)) = expiry(activity, limits) {
            let left = Duration::from_millis(at.saturating_sub(now_ms()));
            wake = wake.min(now + left);
        }
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            changed = stop.changed(), if !shutting_down => {
                let _ = changed;
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    drop_at = Some(tokio::time::Instant::now() + CLOSE_DEADLINE);
                }
            }
            _ = tokio::time::sleep_until(wake), if !shutting_down => {
                match expiry(activity, limits) {
                    Some((at, Expiry::Head)) if now_ms() >= at => {
                        tracing::debug!("request head not complete within limits.header_read_timeout: connection closed");
                        return;
                    }
                    Some((at, Expiry::Stalled)) if now_ms() >= at => {
                        tracing::info!("a response made no progress for limits.idle_timeout (the client stopped reading): connection closed");
                        return;
                    }
                    Some((at, Expiry::Idle)) if now_ms() >= at => {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                        drop_at = Some(tokio::time::Instant::now() + CLOSE_DEADLINE);
                    }
                    _ => {}
                }
            }
            _ = async { match drop_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                tracing::debug!("idle connection did not close in time: dropped");
                return;
            }
        }
    }
}

/// HTTP/1.1 IO that tells the watchdog when bytes arrive with no request open (the first
/// byte of the next request head starts its `header_read_timeout`), and turns hyper's own
/// bare refusal of a head it cannot parse into the registry's error format
/// ([`crate::response::parser_refusal`]): hyper offers no hook for that answer, so it is
/// recognised where it is written. Only a write made while no request is open can be
/// hyper's own answer (every other response belongs to a request the handler holds).
struct HeadWatchIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
    /// The registry-format answer replacing hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<T> HeadWatchIo<T> {
    fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        HeadWatchIo {
            inner,
            activity,
            replacement: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> HeadWatchIo<T> {
    /// Writes out what is left of the replacement; Ready(Ok) once it is all out.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replacement {
            if *done == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadWatchIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadWatchIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        if self.activity.in_flight.load(Ordering::Acquire) == 0 {
            if let Some(answer) = crate::response::parser_refusal(data) {
                // hyper's answer counts as written; the replacement goes out instead.
                self.replacement = Some((answer, 0));
                let _ = self.poll_replacement(cx)?;
                return Poll::Ready(Ok(data.len()));
            }
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_replacement(cx))?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        // Over plain TCP hyper writes vectored, its own answer included (a few hundred
        // bytes at most: larger writes need no look).
        if total <= 256 && self.activity.in_flight.load(Ordering::Acquire) == 0 {
            let data: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if let Some(answer) = crate::response::parser_refusal(&data) {
                self.replacement = Some((answer, 0));
                let _ = self.poll_replacement(cx)?;
                return Poll::Ready(Ok(total));
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The open connections per client address that may count against
/// `limits.max_connections_per_address`: those that have not carried an authenticated
/// request. Addresses are keyed like the login throttle's (IPv6 by its /64: one host
/// usually holds a whole /64). Peers in `server.trusted_proxies` are exempt.
struct AddressCap {
    max: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<HashMap<IpAddr, Vec<Arc<ConnInfo>>>>,
}

/// A new connection's address has `limits.max_connections_per_address` unauthenticated
/// connections open already.
struct AtCap;

/// A connection's place in [`AddressCap`], given back when dropped.
struct AddressSlot {
    cap: Arc<AddressCap>,
    key: IpAddr,
    conn: Arc<ConnInfo>,
}

impl AddressCap {
    fn new(max: usize, exempt: Vec<ipnet::IpNet>) -> Self {
        AddressCap {
            max,
            exempt,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an address is a trusted proxy's (not capped; may send a PROXY header).
    fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Takes a place for a new connection (none for an exempt peer), or refuses it when
    /// its address already has `max` unauthenticated connections open. Connections that
    /// have authenticated meanwhile leave the count here, so it is exact at every decision.
    fn admit(self: &Arc<Self>, conn: &Arc<ConnInfo>) -> Result<Option<AddressSlot>, AtCap> {
        let ip = conn.peer.ip().to_canonical();
        if self.is_exempt(ip) {
            return Ok(None);
        }
        let key = crate::auth::throttle::addr_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let list = open.entry(key).or_default();
        list.retain(|c| !c.authenticated.load(Ordering::Relaxed));
        if list.len() >= self.max {
            return Err(AtCap);
        }
        list.push(conn.clone());
        Ok(Some(AddressSlot {
            cap: self.clone(),
            key,
            conn: conn.clone(),
        }))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.cap.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = open.get_mut(&self.key) {
            list.retain(|c| !Arc::ptr_eq(c, &self.conn));
            if list.is_empty() {
                open.remove(&self.key);
            }
        }
    }
}

/// Without a config file to reload from: SIGHUP has the audit writer start a new file
/// (after logrotate moved it).
async fn reopen_on_hangup(state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Some(log) = &state.audit_log {
            log.reopen().await;
            tracing::info!("SIGHUP: the audit log starts a new file at its next record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::InFlight;

    fn limits(idle: u64, head: u64) -> Limits {
        let mut l = crate::config::Config::from_yaml(
            "server:\n  listen: 127.0.0.1:0\n  plaintext: true\nupstream:\n  url: http://127.0.0.1:5000\nauth:\n  disabled: true\n",
        )
        .unwrap()
        .limits;
        l.idle_timeout = Duration::from_secs(idle);
        l.header_read_timeout = Duration::from_secs(head);
        l
    }

    fn at(a: &ConnActivity, since: u64, head: u64) {
        a.idle_since_ms.store(since, Ordering::Relaxed);
        a.head_started_ms.store(head, Ordering::Relaxed);
    }

    #[test]
    fn idleness_is_counted_in_requests_and_heads_get_header_read_timeout() {
        let l = limits(20, 10);
        let a = Arc::new(ConnActivity::new());
        // Before the first request: the whole head within min(idle, header) of the accept.
        at(&a, 1_000, ConnActivity::NO_HEAD);
        assert_eq!(expiry(&a, &l), Some((11_000, Expiry::Idle)));
        at(&a, 1_000, 5_000);
        assert_eq!(expiry(&a, &l), Some((11_000, Expiry::Head)));
        // A request open: no deadline, and its head is no longer pending.
        let req = InFlight::new(a.clone());
        assert_eq!(expiry(&a, &l), None);
        assert_eq!(
            a.head_started_ms.load(Ordering::Relaxed),
            ConnActivity::NO_HEAD
        );
        a.bytes_read(); // body bytes
        assert_eq!(expiry(&a, &l), None);
        drop(req);
        // After it: idle_timeout for the next head's first byte...
        at(&a, 2_000, ConnActivity::NO_HEAD);
        assert_eq!(expiry(&a, &l), Some((22_000, Expiry::Idle)));
        // ...then header_read_timeout from that byte, even late in the idle period.
        at(&a, 2_000, 21_000);
        assert_eq!(expiry(&a, &l), Some((31_000, Expiry::Head)));
        // Bytes with no request open start a head once.
        at(&a, 2_000, ConnActivity::NO_HEAD);
        a.bytes_read();
        assert_ne!(
            a.head_started_ms.load(Ordering::Relaxed),
            ConnActivity::NO_HEAD
        );
        a.head_started_ms.store(7, Ordering::Relaxed);
        a.bytes_read();
        assert_eq!(a.head_started_ms.load(Ordering::Relaxed), 7);
    }

    fn conn(ip: &str) -> Arc<ConnInfo> {
        Arc::new(ConnInfo {
            peer: SocketAddr::new(ip.parse().unwrap(), 40_000),
            activity: Arc::new(ConnActivity::new()),
            authenticated: Default::default(),
            user: Default::default(),
        })
    }

    #[test]
    fn the_address_cap_counts_unauthenticated_connections_per_address() {
        let cap = Arc::new(AddressCap::new(2, vec!["10.9.0.0/16".parse().unwrap()]));
        let a1 = conn("192.0.2.1");
        let s1 = cap.admit(&a1).ok().flatten().expect("first");
        let _s2 = cap
            .admit(&conn("192.0.2.1"))
            .ok()
            .flatten()
            .expect("second");
        assert!(cap.admit(&conn("192.0.2.1")).is_err(), "third");
        // Another address has its own count; IPv4-mapped IPv6 is the same address.
        assert!(cap.admit(&conn("192.0.2.2")).is_ok());
        assert!(cap.admit(&conn("::ffff:192.0.2.1")).is_err());
        // A connection that authenticated stops counting.
        a1.authenticated.store(true, Ordering::Relaxed);
        let s3 = cap
            .admit(&conn("192.0.2.1"))
            .ok()
            .flatten()
            .expect("after auth");
        assert!(cap.admit(&conn("192.0.2.1")).is_err());
        // A closed connection gives its place back (dropping an already uncounted one
        // changes nothing).
        drop(s1);
        assert!(cap.admit(&conn("192.0.2.1")).is_err());
        drop(s3);
        let _s4 = cap
            .admit(&conn("192.0.2.1"))
            .ok()
            .flatten()
            .expect("after close");
        // IPv6 by /64.
        let _v1 = cap.admit(&conn("2001:db8:1:2::1")).ok().flatten().unwrap();
        let _v2 = cap
            .admit(&conn("2001:db8:1:2:ffff::9"))
            .ok()
            .flatten()
            .unwrap();
        assert!(cap.admit(&conn("2001:db8:1:2::77")).is_err());
        assert!(cap.admit(&conn("2001:db8:1:3::1")).is_ok());
        // Trusted proxies are not capped.
        for _ in 0..5 {
            assert!(matches!(cap.admit(&conn("10.9.3.4")), Ok(None)));
        }
    }

    /// A loopback pair: the accepted side and the client's.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        (l.accept().await.unwrap().0, c)
    }

    #[tokio::test]
    async fn the_preface_is_a_proxy_header_from_trusted_proxies_only() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5443\r\n".as_slice();
        // Trusted: the header, trickled, is taken; what follows is replayed.
        let (mut server, mut client) = pair().await;
        tokio::spawn(async move {
            for b in v1.iter().chain(b"GET /") {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        });
        let Ok(p) = read_preface(&mut server, true).await else {
            panic!("refused")
        };
        assert_eq!(p.source, Some("203.0.113.7:40000".parse().unwrap()));
        let mut io = Rewind::new(p.rest, server);
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /");
        // Trusted, without a header: refused.
        let (mut server, mut client) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(matches!(
            read_preface(&mut server, true).await,
            Err(Refused::Header(crate::proxy_protocol::Error::Missing))
        ));
        // Anyone else: a header is refused, TLS or HTTP pass untouched.
        let (mut server, mut client) = pair().await;
        client.write_all(v1).await.unwrap();
        assert!(matches!(
            read_preface(&mut server, false).await,
            Err(Refused::Untrusted)
        ));
        let (mut server, mut client) = pair().await;
        client
            .write_all(crate::proxy_protocol::V2_SIGNATURE)
            .await
            .unwrap();
        assert!(matches!(
            read_preface(&mut server, false).await,
            Err(Refused::Untrusted)
        ));
        let (mut server, mut client) = pair().await;
        client.write_all(&[0x16, 3, 1]).await.unwrap();
        let Ok(p) = read_preface(&mut server, false).await else {
            panic!("refused")
        };
        assert_eq!(
            (p.source, p.rest.as_slice()),
            (None, [0x16, 3, 1].as_slice())
        );
        let io = Rewind::new(p.rest, server);
        assert!(starts_with_tls(&io).await.unwrap());
    }
}
