//! The metrics listener (`metrics.listen`, plain HTTP, for Prometheus, Kubernetes probes
//! and load balancer checks; never the client port):
//!
//! - `GET /metrics`: Prometheus text (`metrics.rs`), the gauges of the auth tables
//!   sampled first;
//! - `GET /healthz`: 200 while the process serves (liveness: checks nothing else);
//! - `GET /readyz` (and `/ready`, its earlier name): 200 or 503 with a JSON body naming
//!   each check, as `health::decide` has it. The upstream probe (`GET /v2/`, any answer
//!   counts) is cached for [`PROBE_CACHE`], and one probe runs at a time, so however
//!   many checkers poll, the registry sees at most about one probe per second.
//!
//! The client listener answers none of these paths: they are not registry routes, so
//! they get the registry's 404 before any credential check.

use crate::handler::State;
use crate::health::{self, AuditCheck, DirectoryCheck, Inputs, UpstreamCheck, UsersCheck};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// How long the upstream has to answer the readiness probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's result is reused.
pub const PROBE_CACHE: Duration = Duration::from_secs(1);

/// The last upstream probe and when it ended. The lock is held across a probe: checks
/// that arrive meanwhile wait for its result instead of probing again.
#[derive(Debug, Default)]
pub struct UpstreamProbe {
    last: tokio::sync::Mutex<Option<(Instant, UpstreamCheck)>>,
    directory: tokio::sync::Mutex<Option<(Instant, DirectoryCheck)>>,
}

impl UpstreamProbe {
    async fn check(&self, state: &State) -> UpstreamCheck {
        let mut last = self.last.lock().await;
        if let Some((at, seen)) = &*last {
            if at.elapsed() < PROBE_CACHE {
                return seen.clone();
            }
        }
        let upstream = state.snapshot.load().upstream.clone();
        let seen = match upstream.answers(PROBE_TIMEOUT).await {
            Ok(status) => UpstreamCheck::Answered(status),
            Err(why) => UpstreamCheck::Failed(why),
        };
        *last = Some((Instant::now(), seen.clone()));
        seen
    }
}

impl UpstreamProbe {
    /// The directory's answer, reused for [`PROBE_CACHE`] like the upstream's.
    async fn directory(&self, dir: &Arc<crate::auth::ldap::Directory>) -> DirectoryCheck {
        let mut last = self.directory.lock().await;
        if let Some((at, seen)) = &*last {
            if at.elapsed() < PROBE_CACHE {
                return seen.clone();
            }
        }
        let seen = match dir.check().await {
            Ok(()) => DirectoryCheck::Answered,
            Err(e) => DirectoryCheck::Failed(e.to_string()),
        };
        *last = Some((Instant::now(), seen.clone()));
        seen
    }
}

/// What the readiness decision needs, gathered from the running proxy.
async fn inputs(state: &State, probe: &UpstreamProbe) -> Inputs {
    let m = &state.metrics;
    let snap = state.snapshot.load_full();
    let directory = match snap.auth.as_ref().and_then(|a| a.directory()) {
        Some(d) => Some(probe.directory(d).await),
        None => None,
    };
    Inputs {
        directory,
        upstream: probe.check(state).await,
        audit: snap.audit.as_ref().map(|a| AuditCheck {
            writer_failing: m.audit_writer_failing.get() == 1,
            disk_low: m.audit_disk_low.get() == 1,
            free_bytes: m.audit_disk_free_bytes.get(),
            min_free_bytes: a.settings.min_free_bytes,
        }),
        users: match &snap.auth {
            Some(auth) => UsersCheck::Loaded(auth.users().len()),
            None => UsersCheck::Disabled,
        },
    }
}

/// Serves the metrics listener until the process ends.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let probe = Arc::new(UpstreamProbe::default());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (state, probe) = (state.clone(), probe.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (state, probe) = (state.clone(), probe.clone());
                async move { Ok::<_, Infallible>(answer(req.uri().path(), &state, &probe).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn answer(path: &str, state: &State, probe: &UpstreamProbe) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => {
            if let Some(auth) = &state.snapshot.load().auth {
                auth.sample_metrics();
            }
            (200, crate::metrics::CONTENT_TYPE, state.metrics.render())
        }
        "/healthz" => (200, "text/plain; charset=utf-8", "ok\n".to_owned()),
        "/readyz" | "/ready" => {
            let r = health::decide(&inputs(state, probe).await);
            if !r.ready() {
                tracing::debug!(failing = ?r.failing(), "readiness check: not ready");
            }
            (r.status(), "application/json", r.body())
        }
        _ => (404, "text/plain; charset=utf-8", "not found\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
