//! Bodies and heads within bounds: streaming in bounded memory, the manifest cap, framing
//! that could smuggle a request, `Expect: 100-continue`, and `max_header_bytes`.

use super::*;

// ---------------------------------------------------------------------------------------
// 6. Streaming.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_and_a_large_download_stream_through_in_bounded_memory() {
    const UP: u64 = 32 * MIB;
    const DOWN: u64 = 200 * MIB;
    let upstream = FakeUpstream::start(|s| {
        if s.method == "PATCH" {
            Reply::new(202).header("range", &format!("0-{}", s.body_len - 1))
        } else {
            Reply::new(200)
                .header("content-type", "application/octet-stream")
                .body(TestBody::zeros(DOWN))
        }
    })
    .await;
    let proxy = Proxy::start(&upstream.url);

    let req = request(&proxy, "PATCH", "/v2/a/blobs/uploads/u1")
        .header("content-type", "application/octet-stream")
        .body(TestBody::chunked_zeros(UP))
        .unwrap();
    let resp = send(&proxy, Version::HTTP_11, req).await.unwrap();
    assert_eq!(resp.status(), 202);
    assert_eq!(
        header(resp.headers(), "range"),
        [format!("0-{}", UP - 1).as_str()]
    );
    let seen = upstream.only().await;
    assert_eq!((seen.body_len, seen.body_complete), (UP, true));
    assert!(!seen.has("content-length"), "{seen:#?}");
    assert_eq!(seen.all("transfer-encoding"), ["chunked"]);

    let started = Instant::now();
    let req = request(&proxy, "GET", &format!("/v2/a/blobs/{DIGEST}"))
        .body(TestBody::empty())
        .unwrap();
    let resp = send(&proxy, Version::HTTP_11, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(resp.headers(), "content-length"),
        [DOWN.to_string().as_str()]
    );
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, DOWN);
    let peak_kib = proc_status_kib(proxy.pid(), "VmHWM").unwrap();
    eprintln!(
        "200 MiB through the proxy in {:?}; proxy peak RSS {} KiB",
        started.elapsed(),
        peak_kib
    );
    assert!(peak_kib < 64 * 1024, "proxy peak RSS {peak_kib} KiB");
}

// ---------------------------------------------------------------------------------------
// 7. Manifest cap.

const CAP: u64 = 4 * MIB;

async fn manifest_proxy() -> (FakeUpstream, Proxy) {
    let upstream = FakeUpstream::start(|_| Reply::new(201)).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml(&format!("limits:\n  max_manifest_bytes: {CAP}\n"))
        .start();
    (upstream, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_announced_over_the_cap_is_refused_before_its_body() {
    let (upstream, proxy) = manifest_proxy().await;
    // Only the head is sent, with Expect: 100-continue: the answer comes without the
    // body and without a 100 Continue.
    let out = raw_exchange(
        &proxy,
        &format!(
            "PUT /v2/a/manifests/t HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            proxy.addr,
            CAP + 1
        ),
    )
    .await;
    assert_eq!(status_line(&out), "HTTP/1.1 413 Payload Too Large");
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("100 Continue"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["errors"][0]["code"], "SIZE_INVALID");
    assert!(text
        .to_ascii_lowercase()
        .contains("\r\ndocker-distribution-api-version: registry/2.0\r\n"));

    // Over HTTP/2, with the whole body sent.
    let req = request(&proxy, "PUT", "/v2/a/manifests/t")
        .body(TestBody::zeros(CAP + 1))
        .unwrap();
    let (status, h, body) = collect(send(&proxy, Version::HTTP_2, req).await.unwrap()).await;
    assert_registry_error(status, &h, &body, 413, "SIZE_INVALID");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_manifest_over_the_cap_never_reaches_the_upstream_whole() {
    let (upstream, proxy) = manifest_proxy().await;
    let tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "PUT /v2/a/manifests/t HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        proxy.addr
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < CAP + MIB {
            wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            wr.write_all(&chunk).await?;
            wr.write_all(b"\r\n").await?;
            sent += chunk.len() as u64;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        wr.flush().await?;
        Ok::<u64, std::io::Error>(sent)
    });
    let (out, end) = read_until(&mut rd, Duration::from_secs(15), complete_response).await;
    let written = writer.await.unwrap();
    eprintln!("chunked over the cap: client wrote {written:?}");
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    assert_eq!(status_line(&out), "HTTP/1.1 413 Payload Too Large");
    let text = String::from_utf8_lossy(&out);
    let v: serde_json::Value =
        serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(v["errors"][0]["code"], "SIZE_INVALID");

    // hyper answers at once and closes: the rest of the body is not read.
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    let (_, end) = read_until(&mut rd, Duration::from_secs(5), |_| false).await;
    assert!(matches!(end, End::Eof | End::Error(_)), "{end:?}");

    // The upstream got the request with at most the cap's worth of body, then a broken
    // connection: never a complete oversized manifest.
    let seen = upstream.only().await;
    assert_eq!(seen.target, "/v2/a/manifests/t");
    assert!(!seen.body_complete, "{seen:#?}");
    assert!(seen.body_len <= CAP, "{} bytes upstream", seen.body_len);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_of_exactly_the_cap_passes() {
    let (upstream, proxy) = manifest_proxy().await;
    for (version, body) in [
        (Version::HTTP_11, TestBody::zeros(CAP)),
        (Version::HTTP_11, TestBody::chunked_zeros(CAP)),
        (Version::HTTP_2, TestBody::zeros(CAP)),
    ] {
        let req = request(&proxy, "PUT", "/v2/a/manifests/t")
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        assert_eq!(resp.status(), 201, "{version:?}");
    }
    let seen = upstream.wait_seen(3).await;
    assert_eq!(
        seen.iter()
            .map(|s| (s.body_len, s.body_complete))
            .collect::<Vec<_>>(),
        [(CAP, true); 3]
    );
}

// ---------------------------------------------------------------------------------------
// Framing: hyper refuses the classic tricks before the proxy sees a request,
// and what it accepts is re-framed towards the upstream.

/// Sends raw bytes on a fresh connection and reads until the proxy closes it.
async fn raw_until_close(proxy: &Proxy, bytes: &str) -> Vec<u8> {
    let mut tls = tls_connect(proxy, &[b"http/1.1"]).await;
    tls.write_all(bytes.as_bytes()).await.unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), |_| false).await;
    assert!(
        matches!(end, End::Eof | End::Error(_)),
        "still open: {end:?}: {}",
        String::from_utf8_lossy(&out)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_is_refused_and_nothing_is_smuggled() {
    let upstream = FakeUpstream::status(202).await;
    let proxy = Proxy::start(&upstream.url);
    let h = proxy.addr;
    let patch = "PATCH /v2/a/blobs/uploads/u1 HTTP/1.1";
    // hyper's own 400, in the registry's format; the connection closed.
    for (what, bytes) in [
        (
            "two different Content-Lengths",
            format!("{patch}\r\nHost: {h}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
        ),
        (
            "a signed Content-Length",
            format!("{patch}\r\nHost: {h}\r\nContent-Length: +3\r\n\r\nabc"),
        ),
        (
            "a space before the colon",
            format!("{patch}\r\nHost: {h}\r\nContent-Length : 3\r\n\r\nabc"),
        ),
        (
            "an obsolete line folding",
            format!("{patch}\r\nHost: {h}\r\nX-Fold: a\r\n b\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "a final coding other than chunked",
            format!("{patch}\r\nHost: {h}\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
        ),
        (
            "chunked, then identity",
            format!("{patch}\r\nHost: {h}\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("PATCH /v2/a/blobs/uploads/u1 HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
    ] {
        let out = raw_until_close(&proxy, &bytes).await;
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        assert!(
            text.starts_with("http/1.1 400 bad request\r\n")
                && text.contains("\r\nconnection: close\r\n")
                && text.contains("\r\ndocker-distribution-api-version: registry/2.0\r\n")
                && text.contains(r#"{"errors":[{"code":"unsupported","#),
            "{what}: {text}"
        );
        assert_eq!(text.matches("http/1.1 ").count(), 1, "{what}: {text}");
    }
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());

    // A chunk size that overflows: the body fails while being forwarded; the proxy answers
    // 400 BLOB_UPLOAD_INVALID and the upstream gets no request.
    let out = raw_until_close(
        &proxy,
        &format!("{patch}\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_line(&out), "HTTP/1.1 400 Bad Request", "{text}");
    assert!(text.contains("\"code\":\"BLOB_UPLOAD_INVALID\""), "{text}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.started(), 0);

    // Content-Length and chunked together: chunked wins (RFC 9112 6.3), the response
    // closes the connection, and the bytes after the last chunk are never read as a
    // second request.
    let out = raw_until_close(
        &proxy,
        &format!(
            "{patch}\r\nHost: {h}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\nGET /v1/_ping HTTP/1.1\r\nHost: {h}\r\n\r\n"
        ),
    )
    .await;
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 202 accepted\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert_eq!(text.matches("http/1.1 ").count(), 1, "{text}");
    let seen = upstream.only().await;
    assert_eq!(
        (seen.target.as_str(), seen.body_len, seen.body_complete),
        ("/v2/a/blobs/uploads/u1", 3, true)
    );
    assert!(!seen.has("content-length"));
    assert_eq!(seen.all("transfer-encoding"), ["chunked"]);
}

// ---------------------------------------------------------------------------------------
// 8. Expect: 100-continue.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_with_expect_100_continue_never_transfers_its_body() {
    let upstream = FakeUpstream::status(201).await;
    let proxy = Proxy::start(&upstream.url);
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    tls.write_all(
        format!(
            "PUT /v2/a/..%2Fb/manifests/t HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_line(&out), "HTTP/1.1 404 Not Found", "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text
        .to_ascii_lowercase()
        .contains("\r\ndocker-distribution-api-version: registry/2.0\r\n"));

    // Control: an allowed PUT gets its 100 Continue, then the body goes upstream.
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    tls.write_all(
        format!(
            "PUT /v2/a/manifests/t HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), |b| {
        b.windows(4).any(|w| w == b"\r\n\r\n")
    })
    .await;
    assert_eq!(end, End::Done);
    assert_eq!(status_line(&out), "HTTP/1.1 100 Continue");
    tls.write_all(b"{}").await.unwrap();
    let (out, _) = read_until(&mut tls, Duration::from_secs(5), |b| {
        String::from_utf8_lossy(b).contains("201 Created")
    })
    .await;
    assert!(String::from_utf8_lossy(&out).contains("HTTP/1.1 201 Created"));
    let seen = upstream.only().await;
    assert_eq!((seen.body_len, seen.body_complete), (2, true));
    assert!(!seen.has("expect"));
}

// ---------------------------------------------------------------------------------------
// 10. Limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_over_max_header_bytes_is_refused() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  max_header_bytes: 16384\n")
        .start();
    let big = "a".repeat(20_000);
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    tls.write_all(
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), |_| false).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        status_line(&out),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{text}"
    );
    assert_eq!(end, End::Eof, "the connection stays open after a 431");

    // HTTP/2: the same cap on the header list.
    let req = request(&proxy, "GET", "/v2/")
        .header("x-big", &big)
        .body(TestBody::empty())
        .unwrap();
    match send(&proxy, Version::HTTP_2, req).await {
        Ok(resp) => assert_eq!(resp.status(), 431),
        Err(e) => panic!("HTTP/2 oversized head: {e:?}"),
    }

    // A head under the cap passes.
    let ok = raw_exchange(
        &proxy,
        &format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
            proxy.addr,
            &big[..8000]
        ),
    )
    .await;
    assert_eq!(status_line(&ok), "HTTP/1.1 200 OK");
    assert_eq!(upstream.started(), 1);
}

// ---------------------------------------------------------------------------------------
// 11. Requests the HTTP parser itself refuses.

/// Status line, lower-cased headers and body of one raw HTTP/1.1 answer.
fn split_answer(out: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, out[end + 4..].to_vec())
}

/// Sends `raw` on a new HTTP/1.1 connection (TLS, or plain TCP for a plaintext proxy)
/// and reads the answer until the proxy closes.
async fn raw_answer(proxy: &Proxy, raw: &[u8]) -> (Vec<u8>, End) {
    if proxy.base.starts_with("https://") {
        let mut tls = tls_connect(proxy, &[b"http/1.1"]).await;
        let _ = tls.write_all(raw).await;
        read_until(&mut tls, Duration::from_secs(5), |_| false).await
    } else {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = tcp.write_all(raw).await;
        read_until(&mut tcp, Duration::from_secs(5), |_| false).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_http_parser_refuses_get_registry_errors_then_the_connection_closes() {
    let upstream = FakeUpstream::status(200).await;
    let tls = Proxy::builder(&upstream.url)
        .extra_yaml("limits:\n  max_header_bytes: 131072\n")
        .start();
    let plain = Proxy::builder(&upstream.url)
        .tls(TlsMode::Plaintext)
        .extra_yaml("limits:\n  max_header_bytes: 131072\n")
        .start();
    let host = "Host: registry.example\r\n";
    let long_target = format!("/v2/{}", "a".repeat(70_000));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            format!("GET /v2/\0 HTTP/1.1\r\n{host}\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET /v2/\x01x HTTP/1.1\r\n{host}\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET /v2/ HTTP/1.1\r\n{host}Bad\x01Name: y\r\n\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET /v2/ HTTP/1.1\r\n{host}X: a\0b\r\n\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("G@T /v2/ HTTP/1.1\r\n{host}\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET /v2/ HTTP/3.0\r\n{host}\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            format!("GET {long_target} HTTP/1.1\r\n{host}\r\n").into_bytes(),
            "HTTP/1.1 414 URI Too Long",
        ),
        (
            format!(
                "GET /v2/ HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
                "b".repeat(300_000)
            )
            .into_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ];
    for proxy in [&tls, &plain] {
        for (raw, want) in &cases {
            let what = format!(
                "{} {:?}",
                proxy.base,
                String::from_utf8_lossy(&raw[..raw.len().min(40)])
            );
            let (out, end) = raw_answer(proxy, raw).await;
            assert!(closed(&end), "{what}: the connection stays open ({end:?})");
            let (status, headers, body) = split_answer(&out);
            assert_eq!(status, *want, "{what}");
            let h = |name: &str| {
                headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                h("docker-distribution-api-version"),
                ["registry/2.0"],
                "{what}"
            );
            assert_eq!(
                h("content-type"),
                ["application/json; charset=utf-8"],
                "{what}"
            );
            assert_eq!(h("connection"), ["close"], "{what}");
            assert_eq!(h("content-length"), [body.len().to_string()], "{what}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "{what}: body not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                )
            });
            assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{what}");
            assert!(v["errors"][0]["detail"].is_null(), "{what}");
        }
        // A bad request after a good one on the same kept-alive connection: the good
        // answer untouched, the bad one in the registry's format.
        let mut raw = format!("GET /v2/ HTTP/1.1\r\n{host}\r\n").into_bytes();
        raw.extend_from_slice(format!("GET /v2/\0 HTTP/1.1\r\n{host}\r\n").as_bytes());
        let (out, _) = raw_answer(proxy, &raw).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        let second = text.find("HTTP/1.1 400 Bad Request\r\n").expect(&text);
        assert!(
            text[second..].contains("docker-distribution-api-version: registry/2.0"),
            "{text}"
        );
        assert!(text[second..].contains(r#""code":"UNSUPPORTED""#), "{text}");
    }
    assert_eq!(
        upstream.started(),
        2,
        "only the two good requests are forwarded"
    );
}
