//! Replicas behind a load balancer (issue 11 point 5): the PROXY protocol and per-replica
//! audit.
//!
//! - `proxy_header`: hand-made PROXY v1/v2 headers against one registry-guard binary
//!   (fake upstream): the declared client is the one the access log, the throttle and
//!   the per-address cap see; a header from a peer outside `server.trusted_proxies` is
//!   refused by closing the connection, and one is required from a trusted peer.
//! - `haproxy`: three replicas behind a real HAProxy (TCP mode, `send-proxy-v2`,
//!   round-robin, health checks on `/ready`) in front of one docker-registry, driven by
//!   skopeo and curl: a 64 MiB push during which a replica is killed, a pull, an upload
//!   that moves between replicas, the client's address in every replica's log, and the
//!   audit of every replica verified and merged.
//!
//! Every process is started on ephemeral loopback ports and stopped by its PID. A missing
//! docker-registry, skopeo, haproxy or python3 skips a test, or fails it under
//! `RG_REQUIRE_REAL=1` / `CI=true`.
#[path = "../common/mod.rs"]
mod common;

mod haproxy;
mod proxy_header;

use common::client::{complete_response, read_until, status_line, End};
use common::*;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A PROXY v2 header (PROXY command, TCP over IPv4) declaring `src`.
fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// A PROXY v2 LOCAL header (a balancer's health check: no client).
fn v2_local() -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// Connects from `from` (any 127.0.0.0/8 address on Linux), writes `bytes`, and reads
/// one response or until the server closes. Returns what came back and how it ended.
async fn exchange_from(from: IpAddr, to: SocketAddr, bytes: &[u8]) -> (Vec<u8>, End) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = sock.connect(to).await.unwrap();
    // The server may close before taking it all: that is an answer too.
    let _ = s.write_all(bytes).await;
    read_until(&mut s, Duration::from_secs(10), complete_response).await
}

/// `GET /v2/` as `user:password`, HTTP/1.1, closing after.
fn get_v2(user: &str, password: &str) -> Vec<u8> {
    format!(
        "GET /v2/ HTTP/1.1\r\nHost: registry.example\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        basic(user, password)
    )
    .into_bytes()
}

/// The status of a raw response, or 0 when none came.
fn status(out: &[u8]) -> u16 {
    status_line(out)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The access lines of a proxy's log.
fn access_lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .logs()
        .lines()
        .filter(|l| l.contains("registry_guard::access"))
        .map(str::to_owned)
        .collect()
}
