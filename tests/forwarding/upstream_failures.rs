//! An upstream that never answers (504) or cannot be reached (502).

use super::*;

// ---------------------------------------------------------------------------------------
// 9. Upstream failures.

async fn get_base(proxy: &Proxy) -> (StatusCode, HeaderMap, Bytes) {
    let req = request(proxy, "GET", "/v2/")
        .body(TestBody::empty())
        .unwrap();
    collect(send(proxy, Version::HTTP_11, req).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gives_504_after_the_response_header_timeout() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).delay(Duration::from_secs(3600))).await;
    let proxy = Proxy::builder(&upstream.url)
        .response_header_timeout("1s")
        .start();
    for _ in 0..2 {
        let started = Instant::now();
        let (status, h, body) = get_base(&proxy).await;
        let took = started.elapsed();
        assert_registry_error(status, &h, &body, 504, "UNAVAILABLE");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }
    assert_eq!(upstream.started(), 2);
    assert!(!proxy.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gives_502_and_the_proxy_survives() {
    let port = free_port();
    let proxy = Proxy::start(&format!("http://127.0.0.1:{port}"));
    for version in [Version::HTTP_11, Version::HTTP_2, Version::HTTP_11] {
        let req = request(&proxy, "GET", "/v2/a/tags/list")
            .body(TestBody::empty())
            .unwrap();
        let (status, h, body) = collect(send(&proxy, version, req).await.unwrap()).await;
        assert_registry_error(status, &h, &body, 502, "UNAVAILABLE");
        // Upstream details stay in the log.
        assert!(!String::from_utf8_lossy(&body).contains(&port.to_string()));
    }
    // An upstream that accepts and closes without answering.
    let closer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closer_addr = closer.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = closer.accept().await {
            drop(s);
        }
    });
    let proxy2 = Proxy::start(&format!("http://{closer_addr}"));
    let (status, h, body) = get_base(&proxy2).await;
    assert_registry_error(status, &h, &body, 502, "UNAVAILABLE");
    for p in [&proxy, &proxy2] {
        assert!(proc_status_kib(p.pid(), "VmRSS").is_some(), "proxy died");
        assert!(!p.logs().contains("panicked"));
        assert!(p.logs().contains("upstream failed"));
    }
}
