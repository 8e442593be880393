//! Forwarding rules (checklist sections E and I) end to end: the registry-guard binary in
//! front of an in-process fake upstream (`common::fake`) that records every request it
//! receives and answers with a scripted response. Clients are hyper (HTTP/1.1 through
//! hyper-util's legacy client, HTTP/2 through a direct connection) and, where exact
//! bytes matter, raw TLS sockets.
//!
//! Topics: `headers` (hop-by-hop, credentials, forwarding claims, locations), `limits`
//! (streaming, the manifest cap, framing, head size), `upstream_failures` (502/504),
//! `connections` (timeouts, max_connections, SIGTERM), `conn_limits` (idle HTTP/2,
//! per-address caps, idle_timeout), `tls` (protocols, TLS versions, an HTTPS upstream)
//! and `upstream_token` (a token-auth upstream: Debian's docker-registry with
//! `auth: token` and a token issuer of the test's own).
#[path = "../common/mod.rs"]
mod common;
use common::client::*;
use common::fake::*;
use common::metrics::metric;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod conn_limits;
mod connections;
mod headers;
mod limits;
mod tls;
mod upstream_failures;
mod upstream_token;

const MIB: u64 = 1024 * 1024;
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
