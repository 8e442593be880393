//! Connection timeouts, `max_connections`, and SIGTERM with requests in flight.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_cut_after_header_read_timeout() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  header_read_timeout: 1s\n  idle_timeout: 30s\n")
        .start();
    let bound = Duration::from_millis(2500);

    // TCP only: no ClientHello.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (took, end) = time_to_close(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        closed(&end) && took < bound,
        "silent TCP: {end:?} after {took:?}"
    );

    // TLS done, HTTP/1.1, no request.
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    let (took, end) = time_to_close(&mut tls, Duration::from_secs(10)).await;
    assert!(
        closed(&end) && took < bound,
        "silent TLS h1: {end:?} after {took:?}"
    );

    // A head trickling in a byte every 200 ms.
    let tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        wr.write_all(b"GET /v2/ HTTP/1.1\r\nX-Slow: ").await?;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wr.write_all(b"a").await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    let (out, end) = read_until(&mut rd, Duration::from_secs(10), |_| false).await;
    let took = started.elapsed();
    trickle.abort();
    eprintln!(
        "slow head: {end:?} after {took:?}: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        closed(&end) && took < bound,
        "trickled head: {end:?} after {took:?}"
    );

    assert_eq!(upstream.started(), 0);
}

/// BUG (server.rs): a client that negotiates h2 and then sends nothing, not even the
/// connection preface, is never disconnected: hyper's HTTP/2 server ignores
/// `graceful_shutdown` while it waits for the preface (it only sets `close_pending`), and
/// `drive` waits for the connection to end after asking it to. Each such connection holds
/// one of `max_connections` slots for good, so a handful lock every client out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_connection_is_cut_after_header_read_timeout_and_frees_its_slot() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml(
            "limits:\n  header_read_timeout: 1s\n  idle_timeout: 2s\n  max_connections: 1\n",
        )
        .start();
    // TLS done, ALPN h2, then not a byte.
    let mut tls = tls_connect(&proxy, &[b"h2"]).await;
    let (took, end) = time_to_close(&mut tls, Duration::from_secs(5)).await;
    let cut = closed(&end);
    // Whether the only slot is free again.
    let next = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::spawn({
            let (ca, addr) = (proxy.ca.clone(), proxy.addr);
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                tokio_rustls::TlsConnector::from(Arc::new(tls_config(&ca, &[b"http/1.1"])))
                    .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                    .await
                    .is_ok()
            }
        }),
    )
    .await;
    assert!(
        cut && took < Duration::from_millis(2500),
        "silent h2 connection: {end:?} after {took:?} (header_read_timeout 1s, idle_timeout 2s)"
    );
    assert!(
        matches!(next, Ok(Ok(true))),
        "the next client was not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  header_read_timeout: 10s\n  idle_timeout: 1s\n")
        .start();

    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    for _ in 0..2 {
        tls.write_all(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr).as_bytes())
            .await
            .unwrap();
        let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
        assert_eq!(end, End::Done);
        assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
        // Activity within the idle period keeps the connection.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (took, end) = time_to_close(&mut tls, Duration::from_secs(10)).await;
    assert!(closed(&end), "{end:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
        "h1 closed {took:?} after the last response (+500 ms)"
    );

    // HTTP/2: the connection task ends (GOAWAY + close) once idle.
    let tls = tls_connect(&proxy, &[b"h2"]).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = request(&proxy, "GET", "/v2/")
        .body(TestBody::empty())
        .unwrap();
    let (status, _, _) = collect(sender.send_request(req).await.unwrap()).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), conn).await;
    let took = started.elapsed();
    assert!(r.is_ok(), "h2 connection still open after 10 s");
    assert!(
        took < Duration::from_millis(2500),
        "h2 closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_further_connections_until_one_closes() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml(
            "limits:\n  max_connections: 2\n  header_read_timeout: 10s\n  idle_timeout: 30s\n",
        )
        .start();
    let get = format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
        tls.write_all(get.as_bytes()).await.unwrap();
        let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
        assert_eq!(
            (end, status_line(&out).as_str()),
            (End::Done, "HTTP/1.1 200 OK")
        );
        held.push(tls);
    }
    let ca = proxy.ca.clone();
    let addr = proxy.addr;
    let get2 = get.clone();
    let third = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(tls_config(&ca, &[b"http/1.1"])))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let handshaken = Instant::now();
        tls.write_all(get2.as_bytes()).await.unwrap();
        let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
        (handshaken, status_line(&out), end)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served at the cap"
    );
    assert_eq!(upstream.started(), 2);
    let released = Instant::now();
    drop(held.pop());
    let (handshaken, status, end) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is served once one closes")
        .unwrap();
    assert!(
        handshaken >= released,
        "TLS completed before a slot was free"
    );
    assert_eq!((status.as_str(), end), ("HTTP/1.1 200 OK", End::Done));
    assert_eq!(upstream.started(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_response_finish_then_exits_0() {
    // 5 chunks, one every 400 ms: the body takes 2 s to arrive.
    let upstream = FakeUpstream::start(|_| {
        Reply::new(200).body(TestBody::slow(b"0123456789", 5, Duration::from_millis(400)))
    })
    .await;
    let mut proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  shutdown_grace: 5s\n")
        .start();
    let addr = proxy.addr;
    let req = request(&proxy, "GET", &format!("/v2/a/blobs/{DIGEST}"))
        .body(TestBody::empty())
        .unwrap();
    let resp = send(&proxy, Version::HTTP_11, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(resp.headers(), "content-length"), ["50"]);
    let term_sent = Instant::now();
    let exit = tokio::task::spawn_blocking(move || {
        let st = proxy.terminate(Duration::from_secs(10));
        (st, Instant::now(), proxy)
    });
    // The listener is gone at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted while draining"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body_done = Instant::now();
    assert_eq!(&body[..], "0123456789".repeat(5).as_bytes());
    let (status, exited, proxy) = exit.await.unwrap();
    let status = status.expect("the proxy did not exit within 10 s");
    assert!(status.success(), "{status:?}\n{}", proxy.logs());
    assert!(exited >= body_done - Duration::from_millis(50));
    assert!(
        exited - term_sent < Duration::from_secs(5),
        "exit {:?} after SIGTERM",
        exited - term_sent
    );
    let logs = proxy.logs();
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("complete=true"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cuts_what_is_still_running_after_the_grace_period() {
    let upstream = FakeUpstream::start(|_| {
        Reply::new(200).body(TestBody::slow(b"x", 100, Duration::from_millis(100)))
    })
    .await;
    let mut proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  shutdown_grace: 1s\n")
        .start();
    let req = request(&proxy, "GET", &format!("/v2/a/blobs/{DIGEST}"))
        .body(TestBody::empty())
        .unwrap();
    let resp = send(&proxy, Version::HTTP_11, req).await.unwrap();
    let term_sent = Instant::now();
    let exit =
        tokio::task::spawn_blocking(move || (proxy.terminate(Duration::from_secs(10)), proxy));
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "a 10 s body finished within a 1 s grace");
    let (status, proxy) = exit.await.unwrap();
    let took = term_sent.elapsed();
    let status = status.expect("no exit within 10 s");
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(proxy.logs().contains("shutdown grace period over"));
}
