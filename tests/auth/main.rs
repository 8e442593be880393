//! Authentication (the 401 challenge, credentials, throttling) end to end: the registry-guard binary in
//! front of the in-process fake upstream (`common::fake`), its metrics listener read for
//! the argon2 and cache counters, raw TLS sockets where the bytes on the wire matter, and
//! the `hash-password` / `user` / `check` / `serve` commands.
//!
//! Clients connect from chosen loopback addresses (127.0.0.N) where the throttle's
//! per-address and per-name tables must be told apart.
//!
//! Topics: `challenge` (the challenge, valid and refused credentials, Basic parsing),
//! `throttle` (failures per pair and per address, cancelled requests), `docker_bearer`
//! (the Bearer challenge for docker, the token route, tokens), `cache_and_reload`
//! (the verification cache, user file reloads, argon2 memory), `bodies` (refused bodies
//! read away or cut), `logs` (no credential in any log line), `e2e` (skopeo, curl and
//! the seed flows against Debian's docker-registry), and `htpasswd` (files of Debian's
//! `htpasswd -B` imported, logged in with, upgraded to argon2id; `user import-htpasswd`).
//! The `hash-password` / `user` / `check` commands are in `tests/cli.rs`.
#[path = "../common/mod.rs"]
mod common;
use common::client::*;
use common::fake::*;
use common::metrics::scrape_async;
use common::process::*;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

mod bodies;
mod cache_and_reload;
mod challenge;
mod docker_bearer;
mod e2e;
mod htpasswd;
mod logs;
mod throttle;

const REALM: &str = "Test Registry";
const CHALLENGE_BODY: &str =
    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#;
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const KIB: usize = 1024;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---------------------------------------------------------------------------------------
// Upstream, proxy, metrics.

/// Answers `/v2/` like distribution (200 `{}`), everything else 200 without a body.
async fn registry_like() -> FakeUpstream {
    FakeUpstream::start(|s| {
        if s.target == "/v2/" {
            Reply::new(200)
                .header("content-type", "application/json; charset=utf-8")
                .header("docker-distribution-api-version", "registry/2.0")
                .body(TestBody::bytes("{}"))
        } else {
            Reply::new(200)
        }
    })
    .await
}

/// A proxy in front of `upstream` with `users`, the test realm and a metrics listener.
fn proxy_builder(upstream: &FakeUpstream, users: Vec<TestUser>) -> (ProxyBuilder, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let b = Proxy::builder(&upstream.url)
        .users(users)
        .auth_yaml(&format!("  realm: {REALM}\n"))
        .extra_yaml(&format!("metrics:\n  listen: {metrics}\n"));
    (b, metrics)
}

/// The auth counters of the metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    argon2: u64,
    cache_hits: u64,
    failures: u64,
    throttled: u64,
}

async fn counts(metrics: SocketAddr) -> Counts {
    let m = scrape_async(metrics).await;
    Counts {
        argon2: m.get("registry_guard_auth_argon2_runs_total"),
        cache_hits: m.get("registry_guard_auth_cache_hits_total"),
        failures: m.get("registry_guard_auth_failures_total"),
        throttled: m.get("registry_guard_auth_throttled_total"),
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

/// A TLS connection to the proxy from `src` (any 127.0.0.N works on Linux).
async fn tls_from(proxy: &Proxy, src: IpAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let tcp = sock.connect(proxy.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls_config(&proxy.ca, alpn)))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// One response, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<&str> {
        header(&self.headers, name)
    }
    fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", self.body));
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a fresh connection from `src`, with these Authorization values.
async fn ask_from(
    proxy: &Proxy,
    src: IpAddr,
    method: &str,
    path: &str,
    authorization: &[&str],
) -> Answer {
    let exchange = async {
        let tls = tls_from(proxy, src, &[b"http/1.1"]).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", proxy.addr.to_string());
        for a in authorization {
            req = req.header("authorization", *a);
        }
        let resp = sender
            .send_request(req.body(TestBody::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 20 s"))
}

async fn ask(proxy: &Proxy, method: &str, path: &str, authorization: &[&str]) -> Answer {
    ask_from(proxy, loopback(1), method, path, authorization).await
}

/// `GET /v2/` with Basic credentials from `src`; returns the status.
async fn login_from(proxy: &Proxy, src: IpAddr, user: &str, password: &str) -> u16 {
    ask_from(proxy, src, "GET", "/v2/", &[&basic(user, password)])
        .await
        .status
}

async fn login(proxy: &Proxy, user: &str, password: &str) -> u16 {
    login_from(proxy, loopback(1), user, password).await
}

/// The proxy's challenge, exactly: 401, `Basic realm="…"`, the API header, the JSON body
/// (none for HEAD).
fn assert_challenge(a: &Answer, method: &str, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        [format!("Basic realm=\"{REALM}\"")],
        "{what}"
    );
    assert_eq!(
        a.header("docker-distribution-api-version"),
        ["registry/2.0"],
        "{what}"
    );
    assert_eq!(
        a.header("content-type"),
        ["application/json; charset=utf-8"],
        "{what}"
    );
    if method == "HEAD" {
        assert!(a.body.is_empty(), "{what}: HEAD with a body: {}", a.text());
    } else {
        assert_eq!(a.text(), CHALLENGE_BODY, "{what}");
    }
}

/// A refused login: 401 with the challenge and the UNAUTHORIZED code.
fn assert_refused(a: &Answer, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        [format!("Basic realm=\"{REALM}\"")],
        "{what}"
    );
    assert_eq!(
        a.header("docker-distribution-api-version"),
        ["registry/2.0"],
        "{what}"
    );
    assert_eq!(a.code(), "UNAUTHORIZED", "{what}: {}", a.text());
}

/// The proxy process is still there and answers.
async fn assert_alive(proxy: &Proxy, user: &str, password: &str) {
    assert!(
        Path::new(&format!("/proc/{}", proxy.pid())).exists(),
        "the proxy exited:\n{}",
        proxy.logs()
    );
    assert_eq!(login(proxy, user, password).await, 200);
    let logs = proxy.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

// ---------------------------------------------------------------------------------------
// Shared by several topics.

const THROTTLE: &str = "  throttle:\n    max_failures: 3\n    window: 1m\n";

/// The proxy process is still there and did not panic.
fn assert_alive_quietly(proxy: &Proxy) {
    assert!(
        Path::new(&format!("/proc/{}", proxy.pid())).exists(),
        "the proxy exited:\n{}",
        proxy.logs()
    );
    assert!(!proxy.logs().contains("panicked"), "{}", proxy.logs());
}
