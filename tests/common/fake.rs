//! An in-process fake upstream that records every request it receives and answers with a
//! scripted response, plus the clients the integration tests talk to the proxy with:
//! hyper (HTTP/1.1 through hyper-util's legacy client, HTTP/2 through a direct
//! connection) and, where exact bytes matter, raw TLS sockets.

use super::Proxy;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

// ---------------------------------------------------------------------------------------
// Bodies: small buffers, zeros streamed 64 KiB at a time, or slow chunks.

pub static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub enum TestBody {
    Full(Option<Bytes>),
    /// `left` zero bytes; `exact`: announce the length (else: chunked on HTTP/1.1).
    Zeros {
        left: u64,
        exact: bool,
    },
    /// `left` copies of `chunk`, each after `delay`.
    Slow {
        chunk: Bytes,
        left: usize,
        delay: Duration,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    },
}

impl TestBody {
    pub fn empty() -> Self {
        TestBody::Full(None)
    }
    pub fn bytes(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        TestBody::Full((!b.is_empty()).then_some(b))
    }
    pub fn zeros(n: u64) -> Self {
        TestBody::Zeros {
            left: n,
            exact: true,
        }
    }
    pub fn chunked_zeros(n: u64) -> Self {
        TestBody::Zeros {
            left: n,
            exact: false,
        }
    }
    pub fn slow(chunk: &'static [u8], count: usize, delay: Duration) -> Self {
        TestBody::Slow {
            chunk: Bytes::from_static(chunk),
            left: count,
            delay,
            sleep: None,
        }
    }
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            TestBody::Full(b) => b.take(),
            TestBody::Zeros { left, .. } => {
                let n = (*left).min(ZEROS.len() as u64);
                *left -= n;
                (n > 0).then(|| Bytes::from_static(&ZEROS[..n as usize]))
            }
            TestBody::Slow {
                chunk,
                left,
                delay,
                sleep,
            } => {
                if *left == 0 {
                    None
                } else {
                    let s = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*delay)));
                    ready!(s.as_mut().poll(cx));
                    *sleep = None;
                    *left -= 1;
                    Some(chunk.clone())
                }
            }
        };
        Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(b) => b.is_none(),
            TestBody::Zeros { left, .. } => *left == 0,
            TestBody::Slow { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Zeros { left, exact: true } => SizeHint::with_exact(*left),
            TestBody::Zeros { exact: false, .. } => SizeHint::new(),
            TestBody::Slow { chunk, left, .. } => {
                SizeHint::with_exact(chunk.len() as u64 * *left as u64)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The fake upstream.

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// Whether the body ended cleanly (false: the connection broke mid-body).
    pub body_complete: bool,
}

impl Seen {
    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// What the upstream answers.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: TestBody,
    /// Wait this long before sending the response head.
    pub delay: Duration,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: TestBody::empty(),
            delay: Duration::ZERO,
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    pub fn body(mut self, b: TestBody) -> Self {
        self.body = b;
        self
    }
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

pub type Script = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Request heads received (a request is counted here before its body is read).
    pub started: Arc<AtomicUsize>,
}

impl FakeUpstream {
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        FakeUpstream::serve(script, None).await
    }

    /// The same over TLS, with a certificate for 127.0.0.1 signed by a throw-away CA;
    /// returns the upstream (`https://` URL) and the CA's PEM.
    pub async fn start_tls(
        script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> (FakeUpstream, String) {
        let made = registry_guard::tls::make_self_signed(&["127.0.0.1".to_owned()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(registry_guard::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(made.chain, made.key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        (
            FakeUpstream::serve(script, Some(acceptor)).await,
            made.ca_pem,
        )
    }

    async fn serve(
        script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let (seen2, started2) = (seen.clone(), started.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, started, script) = (seen2.clone(), started2.clone(), script.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, started, script) =
                            (seen.clone(), started.clone(), script.clone());
                        async move {
                            started.fetch_add(1, Ordering::SeqCst);
                            let (parts, mut body) = req.into_parts();
                            let (mut body_len, mut body_complete) = (0u64, true);
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
                                    Err(_) => {
                                        body_complete = false;
                                        break;
                                    }
                                }
                            }
                            let s = Seen {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map_or(String::new(), |p| p.as_str().to_owned()),
                                version: parts.version,
                                headers: parts.headers,
                                body_len,
                                body_complete,
                            };
                            let reply = script(&s);
                            seen.lock().unwrap().push(s);
                            tokio::time::sleep(reply.delay).await;
                            let mut resp = Response::new(reply.body);
                            *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
                            for (k, v) in reply.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let h1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = h1.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = h1.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        FakeUpstream {
            addr,
            url: format!("{scheme}://{addr}"),
            seen,
            started,
        }
    }

    /// Answers every request with `status` and no body.
    pub async fn status(status: u16) -> FakeUpstream {
        FakeUpstream::start(move |_| Reply::new(status)).await
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    /// Waits until `n` requests were recorded (bodies read), then returns them all.
    pub async fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let start = Instant::now();
        loop {
            let s = self.seen();
            if s.len() >= n || start.elapsed() > Duration::from_secs(10) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The only request received.
    pub async fn only(&self) -> Seen {
        let s = self.wait_seen(1).await;
        assert_eq!(s.len(), 1, "upstream requests: {s:#?}");
        s.into_iter().next().unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

pub fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

pub fn tls_config(ca: &Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
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
