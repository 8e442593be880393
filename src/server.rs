//! The listener: TCP accept under a connection cap, TLS handshake (with a deadline), one
//! HTTP/1.1 or HTTP/2 connection per socket chosen by ALPN, an idle watchdog, and a
//! graceful drain on shutdown (stop accepting, let in-flight requests finish up to
//! `limits.shutdown_grace`, then close what is left).

use crate::auth::users::Users;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Limits, Tls};
use crate::handler::{self, ConnInfo, State};
use crate::log::{now_ms, ConnActivity};
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    MetricsBind { addr: SocketAddr, source: io::Error },
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
    limits: Limits,
    users_file: Option<PathBuf>,
}

impl Server {
    /// Loads TLS material, builds the upstream client and binds the listener. Every
    /// failure here is a start-up failure with a message naming the key.
    pub async fn bind(cfg: &Config) -> Result<Server, ServeError> {
        let tls = crate::tls::server_config(&cfg.server.tls)?;
        let upstream = Upstream::new(&cfg.upstream)?;
        let metrics = Arc::new(Metrics::default());
        let auth = match &cfg.auth {
            Some(a) => {
                let users = Users::load(&a.users_file)?;
                if let Some(access) = &cfg.access {
                    access.check_groups(&users)?;
                    for w in &access.warnings {
                        tracing::warn!("{w}");
                    }
                }
                tracing::info!(users = users.len(), file = %a.users_file.display(), "user file loaded");
                Some(Authenticator::new(users, &a.settings, metrics.clone()))
            }
            None => {
                tracing::warn!("auth.disabled: true: every well-formed request is forwarded without a credential check");
                None
            }
        };
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
        let audit = match &cfg.audit {
            Some(a) => {
                let log = crate::audit::AuditLog::start(a.settings.clone(), metrics.clone())
                    .map_err(|e| ConfigError::new(e.config_key(), e.to_string()))?;
                tracing::info!(file = %a.settings.file.display(), "audit log open");
                Some((log, a.clone()))
            }
            None => None,
        };
        let state = Arc::new(State {
            upstream,
            auth,
            policy: cfg.access.as_ref().map(|a| a.policy.clone()),
            audit,
            catalog_max_n: cfg.limits.catalog_max_n,
            realm: cfg
                .auth
                .as_ref()
                .map_or_else(|| "registry-guard".to_owned(), |a| a.realm.clone()),
            max_unauthenticated_body: cfg
                .auth
                .as_ref()
                .map_or(1024 * 1024, |a| a.max_unauthenticated_body),
            metrics,
            public_origin: cfg.server.public_origin.clone(),
            proto: if tls.is_some() { "https" } else { "http" },
            max_manifest_bytes: cfg.limits.max_manifest_bytes,
            local_addr,
            trusted_proxies: cfg.server.trusted_proxies.clone(),
        });
        Ok(Server {
            listener,
            metrics_listener,
            acceptor: tls.map(TlsAcceptor::from),
            state,
            limits: cfg.limits.clone(),
            users_file: cfg.auth.as_ref().map(|a| a.users_file.clone()),
        })
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
            acceptor,
            state,
            limits,
            users_file,
        } = self;
        if let Some(l) = metrics_listener {
            tokio::spawn(serve_metrics(l, state.metrics.clone()));
        }
        tokio::spawn(reload(users_file, state.clone()));
        let limits = Arc::new(limits);
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        // Each connection holds a receiver; `closed()` resolves when the last is gone.
        let (stop_tx, stop_rx) = watch::channel(false);
        tracing::info!(addr = %state.local_addr, tls = acceptor.is_some(), upstream = %state.upstream.origin, "listening");
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
            let (state, acceptor, limits, stop_rx) = (
                state.clone(),
                acceptor.clone(),
                limits.clone(),
                stop_rx.clone(),
            );
            tokio::spawn(async move {
                let _permit = permit;
                serve_connection(tcp, peer, acceptor, state, &limits, stop_rx).await;
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
        if let Some((log, _)) = &state.audit {
            // Pending denial summaries and a last checkpoint: the log's last checkpoint
            // is then the file's end.
            log.close().await;
        }
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(ConnActivity::default());
    activity.last_io_ms.store(now_ms(), Ordering::Release);
    let conn = Arc::new(ConnInfo {
        peer,
        activity: activity.clone(),
        authenticated: Default::default(),
    });
    let svc = service_fn(move |req| {
        let (state, conn) = (state.clone(), conn.clone());
        async move { Ok::<_, Infallible>(handler::handle(state, conn, req).await) }
    });
    match acceptor {
        None => {
            let io = TokioIo::new(ActivityIo::new(tcp, activity.clone()));
            let c = http1_builder(limits).serve_connection(io, svc);
            drive(c, stop, &activity, limits).await;
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(ActivityIo::new(tls, activity.clone()));
            if h2 {
                let c = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_header_list_size(
                        u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX),
                    )
                    .adaptive_window(true)
                    .keep_alive_interval(Some(Duration::from_secs(30)))
                    .serve_connection(io, svc);
                drive(c, stop, &activity, limits).await;
            } else {
                let c = http1_builder(limits).serve_connection(io, svc);
                drive(c, stop, &activity, limits).await;
            }
        }
    }
}

fn http1_builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer bounds the request head: a larger head gets 431.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    b
}

/// How long a connection asked to close gracefully while idle may take to do so.
/// hyper's HTTP/2 server ignores a graceful shutdown while it waits for the client's
/// preface, so a silent client would otherwise keep its connection slot forever.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// Runs a connection until it ends, shutting it down gracefully on server shutdown or
/// when it has been idle (no request in flight, no byte moved) for `idle_timeout` —
/// or for `header_read_timeout` before its first request. An idle connection that does
/// not close within [`CLOSE_DEADLINE`] is dropped.
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
    let first = limits.idle_timeout.min(limits.header_read_timeout);
    let tick = (first / 4).max(Duration::from_millis(100));
    let mut shutting_down = false;
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
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
            _ = tokio::time::sleep(tick), if !shutting_down => {
                let limit = if activity.requests.load(Ordering::Relaxed) == 0 { first } else { limits.idle_timeout };
                let quiet_ms = now_ms().saturating_sub(activity.last_io_ms.load(Ordering::Acquire));
                if activity.in_flight.load(Ordering::Acquire) == 0 && quiet_ms >= limit.as_millis() as u64 {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                    drop_at = Some(tokio::time::Instant::now() + CLOSE_DEADLINE);
                }
            }
            _ = async { match drop_at { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                tracing::debug!("idle connection did not close in time: dropped");
                return;
            }
        }
    }
}

/// Records the time of the last byte read or written, for the idle watchdog.
struct ActivityIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
}

impl<T> ActivityIo<T> {
    fn new(inner: T, activity: Arc<ConnActivity>) -> Self {
        ActivityIo { inner, activity }
    }
    fn touch(&self) {
        self.activity.last_io_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
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

/// Reloads the user file when it changes (checked every 2 s, and at once on SIGHUP), and
/// on SIGHUP has the audit writer start a new file (after logrotate moved it). A user
/// file that fails to load keeps the previous snapshot and says why.
async fn reload(users: Option<PathBuf>, state: Arc<State>) {
    use tokio::signal::unix::{signal, SignalKind};
    let stamp = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| {
            (
                m.modified().ok(),
                m.len(),
                std::os::unix::fs::MetadataExt::ino(&m),
            )
        })
    };
    let mut last = users.as_deref().and_then(stamp);
    let mut hup = signal(SignalKind::hangup()).ok();
    loop {
        let forced = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => false,
            Some(_) = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if forced {
            if let Some((log, _)) = &state.audit {
                log.reopen().await;
                tracing::info!("SIGHUP: the audit log starts a new file at its next record");
            }
        }
        let (Some(path), Some(auth)) = (&users, &state.auth) else {
            continue;
        };
        let now = stamp(path);
        if !forced && now == last {
            continue;
        }
        last = now;
        let p = path.clone();
        match tokio::task::spawn_blocking(move || Users::load(&p)).await {
            Ok(Ok(users)) => {
                tracing::info!(users = users.len(), file = %path.display(), "user file reloaded");
                auth.replace_users(users);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "user file not reloaded; the previous one stays in force")
            }
            Err(e) => tracing::error!(error = %e, "user file reload failed"),
        }
    }
}

/// The metrics listener (plain HTTP): `GET /metrics` (Prometheus text), `GET /healthz` (200 while
/// the process serves) and `GET /ready` (503 with the reason while the audit folder is
/// below `audit.min_free_bytes` or audit writes fail: deletes would be refused).
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (200, metrics.render()),
                        "/healthz" => (200, "ok\n".to_owned()),
                        "/ready" => match metrics.not_ready() {
                            None => (200, "ready\n".to_owned()),
                            Some(why) => (503, format!("not ready: {why}\n")),
                        },
                        _ => (404, "not found\n".to_owned()),
                    };
                    let mut resp =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
