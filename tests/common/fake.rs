//! The one fake upstream of the integration tests: an in-process HTTP/1.1 server (plain or
//! TLS) on 127.0.0.1:0 that records every request it receives ([`Seen`]) and answers from a
//! script ([`Reply`]). Async tests start it on their own runtime ([`FakeUpstream::start`]);
//! synchronous tests that drive curl start it on a thread of its own
//! ([`FakeUpstream::on_thread`]), stopped and joined when it is dropped.
//!
//! Bodies are counted whole but kept only up to [`BODY_KEPT`] bytes, so the streaming
//! tests can push gigabytes through it in bounded memory.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

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

/// How much of a request body [`Seen::body`] keeps (the length is always counted whole).
pub const BODY_KEPT: usize = 1 << 20;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body's first [`BODY_KEPT`] bytes.
    pub body: Vec<u8>,
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
    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
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
    /// A JSON body, with its Content-Type.
    pub fn json(mut self, v: serde_json::Value) -> Self {
        self.body = TestBody::bytes(v.to_string());
        self.header("content-type", "application/json; charset=utf-8")
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
    /// Set by [`FakeUpstream::on_thread`]: the thread serving, and what stops it.
    thread: Option<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl FakeUpstream {
    /// Serves on the caller's tokio runtime, for as long as that runtime runs.
    pub async fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        FakeUpstream::serve(listener, Arc::new(script), None)
    }

    /// Serves on a thread and runtime of its own, for synchronous tests; stopped and
    /// joined on drop.
    pub fn on_thread(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let script: Script = Arc::new(script);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (made, made_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let fake = FakeUpstream::serve(listener, script, None);
                let _ = made.send((fake.addr, fake.seen.clone(), fake.started.clone()));
                // Dropping the runtime at the end of the thread ends every task it serves.
                let _ = stopped.await;
            });
        });
        let (addr, seen, started) = made_rx.recv().unwrap();
        FakeUpstream {
            addr,
            url: format!("http://{addr}"),
            seen,
            started,
            thread: Some((stop, thread)),
        }
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (
            FakeUpstream::serve(listener, Arc::new(script), Some(acceptor)),
            made.ca_pem,
        )
    }

    /// Spawns the accept loop on the current runtime.
    fn serve(
        listener: TcpListener,
        script: Script,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> FakeUpstream {
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let started = Arc::new(AtomicUsize::new(0));
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
                            let (mut kept, mut body_len, mut body_complete) =
                                (Vec::new(), 0u64, true);
                            while let Some(frame) = body.frame().await {
                                match frame {
                                    Ok(f) => {
                                        if let Some(d) = f.data_ref() {
                                            body_len += d.len() as u64;
                                            let room = BODY_KEPT.saturating_sub(kept.len());
                                            kept.extend_from_slice(&d[..d.len().min(room)]);
                                        }
                                    }
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
                                body: kept,
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
            thread: None,
        }
    }

    /// Answers every request with `status` and no body.
    pub async fn status(status: u16) -> FakeUpstream {
        FakeUpstream::start(move |_| Reply::new(status)).await
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets what was seen so far; returns it.
    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock().unwrap())
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

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.thread.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}
