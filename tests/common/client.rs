//! Clients the integration tests talk to the proxy with: hyper (HTTP/1.1 through
//! hyper-util's legacy client, HTTP/2 through a direct connection), a blocking HTTP/2
//! request for synchronous tests, and, where exact bytes matter, raw TLS sockets.

use super::fake::TestBody;
use super::Proxy;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

pub fn tls_config(ca: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        registry_guard::tls::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(ca))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

pub type LegacyClient =
    hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, TestBody>;

/// hyper-util's pooled client over HTTP/1.1, trusting the proxy's CA.
pub fn h1_client(proxy: &Proxy) -> LegacyClient {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(&proxy.ca, &[]))
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https)
}

/// A TLS connection to the proxy offering `alpn`.
pub async fn tls_connect(proxy: &Proxy, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls_config(&proxy.ca, alpn)))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends one request over HTTP/1.1 (legacy client) or HTTP/2 (ALPN h2, one connection).
pub async fn send(
    proxy: &Proxy,
    version: Version,
    req: Request<TestBody>,
) -> Result<Response<Incoming>, String> {
    if version == Version::HTTP_2 {
        let tls = tls_connect(proxy, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("h2 handshake: {e:?}"))?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| format!("{e:?}"))
    } else {
        h1_client(proxy)
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

/// One request over HTTP/2 (ALPN h2) to `addr`, trusting `ca`, with header values as raw
/// bytes (curl normalises some; HTTP/2 carries them as given), from a synchronous test.
/// Returns the status and the body. Bounded by 20 s.
pub fn h2_request(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &str,
) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let exchange = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(ca, &[b"h2"])))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = Request::builder()
                .method(method)
                .uri(format!("https://{addr}{path}"));
            for (k, v) in headers {
                req = req.header(*k, http::HeaderValue::from_bytes(v).unwrap());
            }
            let req = req
                .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("HTTP/2 exchange within 20 s")
    })
}

pub fn request(proxy: &Proxy, method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("{}{path}", proxy.base))
}

/// Status, headers and the whole body.
pub async fn collect(resp: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

pub fn header<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Asserts a registry JSON error made by the proxy.
pub fn assert_registry_error(
    status: StatusCode,
    h: &HeaderMap,
    body: &[u8],
    want: u16,
    code: &str,
) {
    assert_eq!(status.as_u16(), want, "{}", String::from_utf8_lossy(body));
    assert_eq!(
        header(h, "docker-distribution-api-version"),
        ["registry/2.0"]
    );
    assert_eq!(
        header(h, "content-type"),
        ["application/json; charset=utf-8"]
    );
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["errors"][0]["code"], code, "{v}");
    assert!(v["errors"][0]["detail"].is_null(), "{v}");
}

/// How a [`read_until`] ended.
#[derive(Debug, PartialEq)]
pub enum End {
    Done,
    Eof,
    Error(std::io::ErrorKind),
    Timeout,
}

/// Reads from a raw stream until `done(bytes so far)`, EOF, an error or `limit`.
/// Returns the bytes and how the reading ended.
pub async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if done(&out) {
            return (out, End::Done);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (out, End::Timeout),
            Ok(Ok(0)) => return (out, End::Eof),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, End::Error(e.kind())),
        }
    }
}

/// Whether `b` holds a complete HTTP/1.1 response with a Content-Length body.
pub fn complete_response(b: &[u8]) -> bool {
    let Some(end) = b.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&b[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    b.len() >= end + 4 + len
}

/// The first line of a raw response.
pub fn status_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A raw HTTP/1.1 exchange on a fresh TLS connection: writes `head`, reads one response.
pub async fn raw_exchange(proxy: &Proxy, head: &str) -> Vec<u8> {
    let mut tls = tls_connect(proxy, &[b"http/1.1"]).await;
    tls.write_all(head.as_bytes()).await.unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(10), complete_response).await;
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    out
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// How long until the server closes `s` (reading whatever it sends), and how the reading
/// ended within `limit`.
pub async fn time_to_close<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Duration, End) {
    let started = std::time::Instant::now();
    let (_, end) = read_until(s, limit, |_| false).await;
    (started.elapsed(), end)
}

/// Whether a [`read_until`] ended because the peer closed or reset the connection.
pub fn closed(end: &End) -> bool {
    matches!(end, End::Eof | End::Error(_))
}
