//! Operating the proxy (issue 11, points 2 and 3), against Debian's real docker-registry
//! behind the registry-guard binary: liveness and readiness on the metrics listener
//! (`health`), and the Prometheus series a request, a login, an upload, an audited
//! delete and a failed TLS handshake leave behind (`series`).
#[path = "../common/mod.rs"]
mod common;
use common::curl::call;
use common::metrics::{http_get, scrape};
use common::process::run;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod health;
mod series;

const ALICE: (&str, &str) = ("alice", "pw-alice");

/// The registry and registry-guard in front of it, with a metrics listener and an audit
/// log (`audit_more`: further `audit:` keys).
struct Setup {
    reg: Registry,
    proxy: Proxy,
    metrics: SocketAddr,
    audit_file: PathBuf,
    _work: tempfile::TempDir,
}

fn start(audit_more: &str) -> Option<Setup> {
    let reg = Registry::start()?;
    let work = tempfile::tempdir().unwrap();
    let audit_file = work.path().join("audit.jsonl");
    let key = work.path().join("audit.key");
    let out = run(
        Command::new(bin()).args(["audit", "keygen", &key.display().to_string()]),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "audit keygen: {out:?}");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::builder(&reg.url)
        .users(vec![user(ALICE.0, ALICE.1, &[])])
        .extra_yaml(&format!(
            "audit:\n  file: {}\n  key_file: {}\n{audit_more}metrics:\n  listen: {metrics}\n",
            audit_file.display(),
            key.display()
        ))
        .start();
    let up = wait_for(Duration::from_secs(10), || {
        http_status(metrics, "/healthz").filter(|s| *s == 200)
    });
    assert_eq!(up, Some(200), "metrics listener: {}", proxy.logs());
    Some(Setup {
        reg,
        proxy,
        metrics,
        audit_file,
        _work: work,
    })
}

/// `GET /readyz`: status and JSON body.
fn readyz(metrics: SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = http_get(metrics, "/readyz");
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (status, json)
}

/// Polls `/readyz` until it answers `want` (up to `limit`); the last answer.
fn readyz_until(metrics: SocketAddr, want: u16, limit: Duration) -> (u16, serde_json::Value) {
    let mut last = None;
    let hit = wait_for(limit, || {
        let r = readyz(metrics);
        let done = r.0 == want;
        last = Some(r.clone());
        done.then_some(r)
    });
    hit.unwrap_or_else(|| last.unwrap())
}

fn remove(p: &Path) {
    std::fs::remove_file(p).unwrap_or_else(|e| panic!("remove {}: {e}", p.display()));
}
