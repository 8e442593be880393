//! Connection limits end to end: the registry-guard binary in
//! front of the fake upstream (and of Debian's docker-registry), driven by raw clients.
//!
//! - Idleness is counted in requests, not bytes: an HTTP/2 connection that only exchanges
//!   PINGs is closed after `idle_timeout`.
//! - `limits.max_connections_per_address` caps the unauthenticated connections of one
//!   address; a connection that authenticated stops counting.
//! - A kept-alive HTTP/1.1 connection waits `idle_timeout` for the next request (not
//!   `header_read_timeout`), and a trickled head is still cut after `header_read_timeout`.

use super::*;

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

// ---------------------------------------------------------------------------------------
// Clients.

/// A raw HTTP/2 client (the h2 crate) over TLS with ALPN h2: the request sender, the
/// handle to send PINGs, and the connection task (it ends when the server closes).
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    pings: h2::PingPong,
    conn: JoinHandle<Result<(), h2::Error>>,
    base: String,
}

async fn h2_connect(proxy: &Proxy) -> H2 {
    let tls = tls_connect(proxy, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, mut conn) = h2::client::handshake(tls).await.expect("h2 handshake");
    let pings = conn.ping_pong().expect("the ping handle");
    H2 {
        send,
        pings,
        conn: tokio::spawn(conn),
        base: proxy.base.clone(),
    }
}

impl H2 {
    /// `GET path`, with Basic credentials or none; returns the status and the whole body.
    async fn get(&mut self, path: &str, auth: Option<&str>) -> (u16, Bytes) {
        let mut req = http::Request::get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let mut send = self.send.clone().ready().await.expect("h2 ready");
        let (resp, _) = send
            .send_request(req.body(()).unwrap(), true)
            .expect("h2 send");
        let resp = resp.await.expect("h2 response");
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("h2 body");
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, Bytes::from(out))
    }

    /// Sends PINGs every 250 ms (each answered by the server's ACK; the h2 crate also
    /// ACKs the server's own PINGs) until the connection ends, never a request. Returns
    /// how long after the call the connection ended, and how many PINGs were answered.
    async fn only_ping_until_closed(self, limit: Duration) -> (Option<Duration>, usize) {
        let H2 {
            send,
            mut pings,
            mut conn,
            ..
        } = self;
        let started = Instant::now();
        let mut pongs = 0;
        let ended = loop {
            tokio::select! {
                _ = &mut conn => break Some(started.elapsed()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if started.elapsed() > limit {
                        break None;
                    }
                    // An error: the server closed, the connection task ends next.
                    let pong = tokio::time::timeout(Duration::from_secs(2), pings.ping(h2::Ping::opaque())).await;
                    if let Ok(Ok(_)) = pong {
                        pongs += 1;
                    }
                }
            }
        };
        drop(send);
        conn.abort();
        (ended, pongs)
    }
}

fn get_head(proxy: &Proxy, auth: Option<&str>) -> String {
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n{auth}\r\n", proxy.addr)
}

/// One HTTP/1.1 request on an open connection; returns the status line.
async fn h1_get<S>(s: &mut S, proxy: &Proxy, auth: Option<&str>) -> String
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(get_head(proxy, auth).as_bytes()).await.unwrap();
    let (out, end) = read_until(s, Duration::from_secs(10), complete_response).await;
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    status_line(&out)
}

// ---------------------------------------------------------------------------------------
// Item 2: HTTP/2 connections go idle whatever PINGs they exchange.

/// One unauthenticated `GET /v2/` (401), then only PINGs: the connection is closed
/// `idle_timeout` (2 s) after the response, not before, and not kept by the PINGs.
async fn assert_pinging_h2_client_is_closed_after_idle_timeout(proxy: &Proxy) {
    let mut c = h2_connect(proxy).await;
    let (status, body) = c.get("/v2/", None).await;
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    let (ended, pongs) = c.only_ping_until_closed(Duration::from_secs(12)).await;
    eprintln!(
        "pinging h2 client: closed {ended:?} after its last response, {pongs} PINGs answered"
    );
    let ended = ended.unwrap_or_else(|| {
        panic!("an HTTP/2 connection answering PINGs was still open 12 s after its last response (idle_timeout 2s); {pongs} PINGs answered")
    });
    assert!(
        ended >= Duration::from_millis(1700),
        "closed {ended:?} after the response, before idle_timeout (2s)"
    );
    assert!(
        ended < Duration::from_secs(8),
        "closed only {ended:?} after the response (idle_timeout 2s)"
    );
    assert!(
        pongs >= 4,
        "the PINGs were not answered ({pongs}): the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_only_exchanges_pings_is_closed_after_idle_timeout() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .extra_yaml("limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n")
        .start();
    assert_pinging_h2_client_is_closed_after_idle_timeout(&proxy).await;
    assert_eq!(upstream.started(), 0);
}

/// The same against Debian's docker-registry: an authenticated client is served by the
/// registry over HTTP/2, and the idle, PINGing, unauthenticated one is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_an_idle_http2_client_is_disconnected() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let proxy = Proxy::builder(&registry.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .extra_yaml("limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n")
        .start();
    let mut c = h2_connect(&proxy).await;
    let (status, body) = c.get("/v2/", Some(&basic(USER, PASSWORD))).await;
    assert_eq!((status, &body[..]), (200, &b"{}"[..]));
    let (status, _) = c.get("/v2/_catalog", Some(&basic(USER, PASSWORD))).await;
    assert_eq!(status, 200);
    assert_pinging_h2_client_is_closed_after_idle_timeout(&proxy).await;
}

/// A client that stops taking a response (HTTP/2 window 0, after one unauthenticated
/// `GET /v2/`; HTTP/1.1 not reading a large blob) holds it open only `idle_timeout`
/// without progress: the response is in flight, but nothing moves (nginx: send_timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_the_client_stops_taking_is_closed_after_idle_timeout() {
    const BLOB: u64 = 64 * 1024 * 1024;
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::zeros(BLOB))).await;
    let proxy = Proxy::builder(&upstream.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .access_yaml(
            "  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      actions: [pull]\n",
        )
        .extra_yaml("limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n")
        .start();

    // HTTP/2 with a zero window: the 401's body can never be sent.
    let tls = tls_connect(&proxy, &[b"h2"]).await;
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    let mut pings = conn.ping_pong().expect("ping handle");
    let mut conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("h2 ready");
    let req = http::Request::get(format!("{}/v2/", proxy.base))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).expect("h2 send");
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("the response head arrives")
        .expect("h2 response");
    assert_eq!(resp.status(), 401);
    let started = Instant::now();
    let ended = loop {
        tokio::select! {
            _ = &mut conn => break Some(started.elapsed()),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if started.elapsed() > Duration::from_secs(15) {
                    break None;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), pings.ping(h2::Ping::opaque())).await;
            }
        }
    };
    let ended = ended
        .expect("an HTTP/2 client with a zero window kept its connection 15 s (idle_timeout 2s)");
    assert!(
        ended >= Duration::from_millis(1500),
        "closed after {ended:?}, before idle_timeout"
    );
    assert!(
        ended < Duration::from_secs(8),
        "closed only after {ended:?}"
    );
    drop(resp);

    // The same while other streams keep starting: their heads must not hide the stalled
    // response (stall is counted per response, not per connection).
    let tls = tls_connect(&proxy, &[b"h2"]).await;
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    let mut conn = tokio::spawn(conn);
    let started = Instant::now();
    let mut heads = 0;
    let mut held = Vec::new();
    let ended = loop {
        tokio::select! {
            _ = &mut conn => break Some(started.elapsed()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if started.elapsed() > Duration::from_secs(15) {
                    break None;
                }
                let Ok(mut s) = send.clone().ready().await else { continue };
                let req = http::Request::get(format!("{}/v2/", proxy.base)).body(()).unwrap();
                if let Ok((resp, _)) = s.send_request(req, true) {
                    if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), resp).await {
                        heads += 1;
                        held.push(r);
                    }
                }
            }
        }
    };
    let ended = ended.unwrap_or_else(|| {
        panic!("a stalled response was hidden by {heads} newer streams for 15 s (idle_timeout 2s)")
    });
    assert!(
        heads >= 2,
        "only {heads} response heads: the test proves nothing"
    );
    assert!(
        ended < Duration::from_secs(8),
        "closed only after {ended:?}"
    );
    drop(held);

    // HTTP/1.1: a 64 MiB blob, of which the client reads nothing after the head.
    let mut s = tls_connect(&proxy, &[b"http/1.1"]).await;
    let head = format!(
        "GET /v2/alice/app/blobs/sha256:{} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
        "a".repeat(64),
        proxy.addr,
        basic(USER, PASSWORD)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Not reading: the proxy's writes stop once the socket buffers are full.
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Closed meanwhile: what was buffered arrives, then the end, far short of the blob.
    let (got, end) = read_until(&mut s, Duration::from_secs(30), |_| false).await;
    assert!(closed(&end), "{end:?} after {} bytes", got.len());
    assert!(
        (got.len() as u64) < BLOB / 2,
        "{} of {BLOB} bytes arrived: the connection was not closed while stalled",
        got.len()
    );
    assert!(
        upstream.started() >= 1,
        "the blob request never reached the upstream"
    );
}

/// One account cannot take every slot: its credentials hold at most
/// `limits.max_connections_per_user` connections, from any address; one more gets 429
/// and is closed, and a closed one gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::builder(&upstream.url)
        .users(vec![user(USER, PASSWORD, &[]), user("bob", "bob-pw", &[])])
        .extra_yaml("limits:\n  max_connections_per_user: 2\n")
        .start();
    let auth = basic(USER, PASSWORD);
    let mut first = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert!(h1_get(&mut first, &proxy, Some(&auth))
        .await
        .contains(" 200"));
    let mut second = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert!(h1_get(&mut second, &proxy, Some(&auth))
        .await
        .contains(" 200"));
    // A third connection with the same credentials: refused and closed.
    let mut third = tls_connect(&proxy, &[b"http/1.1"]).await;
    let status = h1_get(&mut third, &proxy, Some(&auth)).await;
    assert!(status.contains(" 429"), "{status}");
    let (_, end) = time_to_close(&mut third, Duration::from_secs(5)).await;
    assert!(closed(&end), "{end:?}");
    // Another user is not affected, and the first two keep working.
    let mut bob = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert!(h1_get(&mut bob, &proxy, Some(&basic("bob", "bob-pw")))
        .await
        .contains(" 200"));
    assert!(h1_get(&mut first, &proxy, Some(&auth))
        .await
        .contains(" 200"));
    // Closing one gives its place back.
    drop(first);
    let again = wait_for_async(Duration::from_secs(5), || async {
        let mut c = tls_connect(&proxy, &[b"http/1.1"]).await;
        h1_get(&mut c, &proxy, Some(&auth))
            .await
            .contains(" 200")
            .then_some(c)
    })
    .await;
    assert!(
        again.is_some(),
        "the closed connection's place was not given back"
    );
    drop(second);
}

// ---------------------------------------------------------------------------------------
// Item 2: unauthenticated connections per address.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_per_address_are_capped_and_authenticated_ones_are_not() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = Proxy::builder(&upstream.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .extra_yaml(&format!(
            "limits:\n  max_connections_per_address: 3\n  header_read_timeout: 10s\n  idle_timeout: 60s\nmetrics:\n  listen: {metrics}\n"
        ))
        .start();
    let alice = basic(USER, PASSWORD);
    let refused = || async {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&proxy.ca, &[b"http/1.1"])))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp);
        match tokio::time::timeout(Duration::from_secs(3), tls).await {
            Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("a connection over the cap was neither served nor closed within 3 s"),
        }
    };

    // An authenticated connection, kept open: it does not count.
    let mut authed = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert_eq!(
        h1_get(&mut authed, &proxy, Some(&alice)).await,
        "HTTP/1.1 200 OK"
    );

    // Three unauthenticated ones fill the cap: one answered 401, two silent.
    let mut idle = Vec::new();
    let mut first = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert_eq!(
        h1_get(&mut first, &proxy, None).await,
        "HTTP/1.1 401 Unauthorized"
    );
    idle.push(first);
    for _ in 0..2 {
        idle.push(tls_connect(&proxy, &[b"http/1.1"]).await);
    }
    assert_eq!(
        metric(
            metrics,
            "registry_guard_connections_refused_per_address_total"
        )
        .await,
        0
    );

    // The next one is closed at once, before TLS, and counted.
    assert!(
        refused().await,
        "a 4th unauthenticated connection was served"
    );
    assert_eq!(
        metric(
            metrics,
            "registry_guard_connections_refused_per_address_total"
        )
        .await,
        1
    );

    // The authenticated client still gets through on its connection.
    assert_eq!(
        h1_get(&mut authed, &proxy, Some(&alice)).await,
        "HTTP/1.1 200 OK"
    );

    // A connection that authenticates stops counting: one more fits, then the cap holds.
    assert_eq!(
        h1_get(&mut idle[1], &proxy, Some(&alice)).await,
        "HTTP/1.1 200 OK"
    );
    let mut extra = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert_eq!(
        h1_get(&mut extra, &proxy, Some(&alice)).await,
        "HTTP/1.1 200 OK"
    );
    idle.push(tls_connect(&proxy, &[b"http/1.1"]).await);
    assert!(refused().await, "the cap no longer held");
    assert_eq!(
        metric(
            metrics,
            "registry_guard_connections_refused_per_address_total"
        )
        .await,
        2
    );

    // A closed connection gives its place back.
    let mut gone = idle.remove(0);
    let _ = gone.shutdown().await;
    drop(gone);
    let served = wait_for_async(Duration::from_secs(5), || async {
        let tcp = TcpStream::connect(proxy.addr).await.ok()?;
        let mut tls =
            tokio_rustls::TlsConnector::from(Arc::new(tls_config(&proxy.ca, &[b"http/1.1"])))
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .ok()?;
        Some(h1_get(&mut tls, &proxy, None).await)
    })
    .await;
    assert_eq!(served.as_deref(), Some("HTTP/1.1 401 Unauthorized"));
    assert_eq!(upstream.started(), 4);
}

/// Polls `f` every 100 ms until it returns Some or `limit` passes.
async fn wait_for_async<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Item 13: idle_timeout for HTTP/1.1 and HTTP/2.

/// `idle_timeout: 20s` with the default 10 s `header_read_timeout`: a kept-alive
/// connection of either protocol still serves a request after 12 s idle, and is closed
/// about 20 s after its last response. Both protocols run at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_of_20s_is_honoured_for_http1_and_http2() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  header_read_timeout: 10s\n  idle_timeout: 20s\n")
        .start();
    let idle = Duration::from_secs(12);
    let (lo, hi) = (Duration::from_secs(18), Duration::from_secs(26));

    let h1 = async {
        let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
        assert_eq!(h1_get(&mut tls, &proxy, None).await, "HTTP/1.1 200 OK");
        tokio::time::sleep(idle).await;
        let (out, end) = {
            tls.write_all(get_head(&proxy, None).as_bytes())
                .await
                .unwrap();
            read_until(&mut tls, Duration::from_secs(10), complete_response).await
        };
        assert_eq!(
            (end, status_line(&out).as_str()),
            (End::Done, "HTTP/1.1 200 OK"),
            "HTTP/1.1 after 12 s idle (idle_timeout 20s)"
        );
        let (took, end) = time_to_close(&mut tls, Duration::from_secs(40)).await;
        assert!(
            closed(&end),
            "HTTP/1.1 still open 40 s after its last response: {end:?}"
        );
        assert!(
            took >= lo && took < hi,
            "HTTP/1.1 closed {took:?} after its last response (idle_timeout 20s)"
        );
    };
    let h2 = async {
        let tls = tls_connect(&proxy, &[b"h2"]).await;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        for round in 0..2 {
            if round == 1 {
                tokio::time::sleep(idle).await;
            }
            let req = request(&proxy, "GET", "/v2/")
                .body(TestBody::empty())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap_or_else(|e| {
                panic!(
                    "HTTP/2 request {round} (after {idle:?} idle: {}): {e:?}",
                    round == 1
                )
            });
            let (status, _, _) = collect(resp).await;
            assert_eq!(status, 200);
        }
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(40), conn).await;
        let took = started.elapsed();
        assert!(r.is_ok(), "HTTP/2 still open 40 s after its last response");
        assert!(
            took >= lo && took < hi,
            "HTTP/2 closed {took:?} after its last response (idle_timeout 20s)"
        );
    };
    tokio::join!(h1, h2);
    assert_eq!(upstream.started(), 4);
}

/// After a kept-alive request, a long idle wait is fine but a head trickling in a byte
/// every 200 ms is still cut `header_read_timeout` (1 s) after its first byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_on_a_kept_alive_connection_is_cut_after_header_read_timeout() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  header_read_timeout: 1s\n  idle_timeout: 30s\n")
        .start();
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    assert_eq!(h1_get(&mut tls, &proxy, None).await, "HTTP/1.1 200 OK");
    // Idle for longer than header_read_timeout: still open.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h1_get(&mut tls, &proxy, None).await, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (mut rd, mut wr) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        wr.write_all(b"GET /v2/ HTTP/1.1\r\nX-Slow: ").await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wr.write_all(b"a").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let (took, end) = time_to_close(&mut rd, Duration::from_secs(10)).await;
    trickle.abort();
    assert!(closed(&end), "a trickled head was not cut: {end:?}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(3000),
        "trickled head cut {took:?} after its first byte (header_read_timeout 1s)"
    );
    assert_eq!(upstream.started(), 2);
}
