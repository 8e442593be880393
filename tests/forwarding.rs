//! Forwarding rules (checklist sections E and I) end to end: the registry-guard binary in
//! front of an in-process fake upstream (`common::fake`) that records every request it
//! receives and answers with a scripted response. Clients are hyper (HTTP/1.1 through
//! hyper-util's legacy client, HTTP/2 through a direct connection) and, where exact
//! bytes matter, raw TLS sockets.
mod common;
use common::fake::*;
use common::*;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: u64 = 1024 * 1024;
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------
// 1. Hop-by-hop headers and credentials.

const CLIENT_TOKEN_USER: &str = "client:client-secret-pw";
const PROXY_AUTH_USER: &str = "hop:proxy-auth-secret";
const UPSTREAM_USER: &str = "rg-upstream";
const UPSTREAM_PW: &str = "up:str3am pw!#s3cret";

/// Sends a request full of hop-by-hop headers and client credentials over HTTP/1.1 (raw),
/// and one with client credentials over HTTP/2; returns what the upstream saw of each.
async fn send_hop_by_hop(proxy: &Proxy, upstream: &FakeUpstream) -> [Seen; 2] {
    let head = format!(
        "GET /v2/a/tags/list HTTP/1.1\r\n\
         Host: {}\r\n\
         Connection: keep-alive, X-Named-Hop\r\n\
         X-Named-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: trailers\r\n\
         Trailer: X-Trailing\r\n\
         Upgrade: websocket\r\n\
         Proxy-Authorization: Basic {}\r\n\
         Authorization: Basic {}\r\n\
         X-End-To-End: kept\r\n\
         \r\n",
        proxy.addr,
        b64(PROXY_AUTH_USER),
        b64(CLIENT_TOKEN_USER)
    );
    let out = raw_exchange(proxy, &head).await;
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    let seen = upstream.only().await;
    for gone in [
        "connection",
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(!seen.has(gone), "{gone} reached the upstream: {seen:#?}");
    }
    assert_eq!(seen.all("x-end-to-end"), ["kept"]);

    // HTTP/2 forbids connection-specific headers; TE: trailers is the one allowed.
    let req = request(proxy, "GET", "/v2/a/tags/list")
        .header("te", "trailers")
        .header(
            "proxy-authorization",
            format!("Basic {}", b64(PROXY_AUTH_USER)),
        )
        .header("authorization", format!("Basic {}", b64(CLIENT_TOKEN_USER)))
        .header("x-end-to-end", "kept")
        .body(TestBody::empty())
        .unwrap();
    let resp = send(proxy, Version::HTTP_2, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen2 = upstream.wait_seen(2).await[1].clone();
    for gone in ["te", "proxy-authorization"] {
        assert!(!seen2.has(gone), "{gone} reached the upstream over h2");
    }
    assert_eq!(seen2.all("x-end-to-end"), ["kept"]);
    [seen, seen2]
}

/// The proxy runs with RUST_LOG=trace: not even rustls', h2's or hyper's traces may
/// carry a credential.
fn assert_no_secret_in_logs(proxy: &Proxy) {
    let logs = proxy.logs();
    assert!(
        logs.contains("registry_guard::access"),
        "no access line: {logs}"
    );
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was not in force");
    for secret in [
        b64(CLIENT_TOKEN_USER),
        "client-secret-pw".to_owned(),
        b64(PROXY_AUTH_USER),
        "proxy-auth-secret".to_owned(),
        b64(&format!("{UPSTREAM_USER}:{UPSTREAM_PW}")),
        UPSTREAM_PW.to_owned(),
        "s3cret".to_owned(),
    ] {
        assert!(!logs.contains(&secret), "the log holds {secret:?}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_and_client_credentials_are_not_forwarded() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .env("RUST_LOG", "trace")
        .start();
    for seen in send_hop_by_hop(&proxy, &upstream).await {
        assert!(!seen.has("authorization"), "{seen:#?}");
    }
    assert_no_secret_in_logs(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_from_a_password_file_replace_the_clients() {
    let upstream = FakeUpstream::status(200).await;
    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("upstream-password");
    // A trailing newline (echo pw > file) is not part of the password.
    std::fs::write(&pw_file, format!("{UPSTREAM_PW}\n")).unwrap();
    let proxy = Proxy::builder(&upstream.url)
        .upstream_yaml(&format!(
            "  credentials:\n    username: {UPSTREAM_USER}\n    password_file: {}\n",
            pw_file.display()
        ))
        .env("RUST_LOG", "trace")
        .start();
    for seen in send_hop_by_hop(&proxy, &upstream).await {
        assert_eq!(
            seen.all("authorization"),
            [format!(
                "Basic {}",
                b64(&format!("{UPSTREAM_USER}:{UPSTREAM_PW}"))
            )]
        );
    }
    assert_no_secret_in_logs(&proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_from_an_environment_variable_replace_the_clients() {
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::builder(&upstream.url)
        .upstream_yaml(&format!(
            "  credentials:\n    username: {UPSTREAM_USER}\n    password_env: RG_TEST_UPSTREAM_PW\n"
        ))
        .env("RG_TEST_UPSTREAM_PW", UPSTREAM_PW)
        .env("RUST_LOG", "trace")
        .start();
    for seen in send_hop_by_hop(&proxy, &upstream).await {
        assert_eq!(
            seen.all("authorization"),
            [format!(
                "Basic {}",
                b64(&format!("{UPSTREAM_USER}:{UPSTREAM_PW}"))
            )]
        );
    }
    assert_no_secret_in_logs(&proxy);
}

// ---------------------------------------------------------------------------------------
// 2. Forwarded / X-Forwarded-*.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_claims_are_replaced_by_the_proxys_own() {
    let upstream = FakeUpstream::status(202).await;
    let proxy = Proxy::start(&upstream.url);
    for (i, version) in [Version::HTTP_11, Version::HTTP_2].into_iter().enumerate() {
        let req = request(&proxy, "POST", "/v2/a/blobs/uploads/")
            .header("forwarded", "for=10.9.9.9;host=evil.example;proto=http")
            .header("x-forwarded-for", "10.9.9.9")
            .header("x-forwarded-for", "10.8.8.8")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-port", "80")
            .header("x-real-ip", "10.9.9.9")
            .body(TestBody::empty())
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        assert_eq!(resp.status(), 202);
        let seen = upstream.wait_seen(i + 1).await[i].clone();
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{version:?}");
        assert_eq!(seen.all("x-forwarded-proto"), ["https"], "{version:?}");
        assert_eq!(
            seen.all("x-forwarded-host"),
            [proxy.addr.to_string()],
            "{version:?}"
        );
        for gone in ["forwarded", "x-forwarded-port", "x-real-ip"] {
            assert!(!seen.has(gone), "{gone} forwarded over {version:?}");
        }
        // Host names the upstream, whatever the client said.
        assert_eq!(seen.all("host"), [upstream.addr.to_string()], "{version:?}");
        assert_eq!(seen.version, Version::HTTP_11);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Request headers and query strings that must arrive unchanged.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_headers_conditionals_and_the_query_arrive_unchanged() {
    let upstream = FakeUpstream::status(204).await;
    let proxy = Proxy::start(&upstream.url);
    let accepts = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.index.v1+json",
    ];
    let hex = &DIGEST["sha256:".len()..];
    let target = format!("/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D&digest=sha256%3A{hex}");
    for (i, version) in [Version::HTTP_11, Version::HTTP_2].into_iter().enumerate() {
        let mut req = request(&proxy, "PUT", &target)
            .header("range", "bytes=0-99")
            .header("if-none-match", "\"sha256:abc\"")
            .header("if-match", "W/\"x\"");
        for a in accepts {
            req = req.header("accept", a);
        }
        let resp = send(&proxy, version, req.body(TestBody::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let seen = upstream.wait_seen(i + 1).await[i].clone();
        assert_eq!(seen.method, "PUT");
        assert_eq!(seen.target, target, "{version:?}");
        assert_eq!(seen.all("accept"), accepts, "{version:?}");
        assert_eq!(seen.all("range"), ["bytes=0-99"]);
        assert_eq!(seen.all("if-none-match"), ["\"sha256:abc\""]);
        assert_eq!(seen.all("if-match"), ["W/\"x\""]);
    }
}

// ---------------------------------------------------------------------------------------
// 4. Response headers.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_response_headers_and_head_content_length_come_back() {
    let upstream = FakeUpstream::start(|s| {
        if s.method == "HEAD" {
            Reply::new(200)
                .header("content-length", "123456")
                .header("docker-content-digest", DIGEST)
                .header("content-type", "application/octet-stream")
        } else {
            Reply::new(202)
                .header("docker-content-digest", DIGEST)
                .header("docker-upload-uuid", "u1")
                .header("range", "0-99")
                .header("link", "</v2/a/tags/list?n=1&last=b>; rel=\"next\"")
                .header("oci-subject", DIGEST)
                .header("oci-filters-applied", "artifactType")
                .header("keep-alive", "timeout=5")
                .header("connection", "x-upstream-hop")
                .header("x-upstream-hop", "1")
                .header("proxy-authenticate", "Basic realm=\"up\"")
                .body(TestBody::bytes("{}"))
        }
    })
    .await;
    let proxy = Proxy::start(&upstream.url);
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let req = request(&proxy, "PATCH", "/v2/a/blobs/uploads/u1")
            .body(TestBody::bytes(vec![7u8; 100]))
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        assert_eq!(resp.version(), version);
        let (status, h, body) = collect(resp).await;
        assert_eq!(status, 202);
        assert_eq!(&body[..], b"{}");
        assert_eq!(header(&h, "docker-content-digest"), [DIGEST]);
        assert_eq!(header(&h, "docker-upload-uuid"), ["u1"]);
        assert_eq!(header(&h, "range"), ["0-99"]);
        assert_eq!(
            header(&h, "link"),
            ["</v2/a/tags/list?n=1&last=b>; rel=\"next\""]
        );
        assert_eq!(header(&h, "oci-subject"), [DIGEST]);
        assert_eq!(header(&h, "oci-filters-applied"), ["artifactType"]);
        assert_eq!(header(&h, "content-length"), ["2"]);
        for gone in ["keep-alive", "x-upstream-hop", "proxy-authenticate"] {
            assert!(!h.contains_key(gone), "{gone} came back over {version:?}");
        }

        let req = request(&proxy, "HEAD", &format!("/v2/a/blobs/{DIGEST}"))
            .body(TestBody::empty())
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        let (status, h, body) = collect(resp).await;
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-length"), ["123456"], "{version:?}");
        assert_eq!(header(&h, "docker-content-digest"), [DIGEST]);
        assert!(body.is_empty());
    }
    assert_eq!(upstream.seen().len(), 4);
}

// ---------------------------------------------------------------------------------------
// 5. Location.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_on_the_upstream_origin_are_rewritten_others_pass_and_none_is_followed() {
    let upstream_loc: Arc<Mutex<String>> = Arc::default();
    let loc = upstream_loc.clone();
    let upstream = FakeUpstream::start(move |s| {
        let l = loc.lock().unwrap().clone();
        let status = if s.target.starts_with("/v2/a/blobs/sha256") {
            307
        } else {
            202
        };
        Reply::new(status).header("location", &l)
    })
    .await;
    let proxy = Proxy::start(&upstream.url);
    let cases = [
        (
            "POST",
            "/v2/a/blobs/uploads/".to_owned(),
            format!(
                "http://{}/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D",
                upstream.addr
            ),
            format!(
                "https://{}/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D",
                proxy.addr
            ),
            202,
        ),
        (
            "GET",
            format!("/v2/a/blobs/{DIGEST}"),
            "https://s3.example/bucket/x?X-Amz-Signature=abc".to_owned(),
            "https://s3.example/bucket/x?X-Amz-Signature=abc".to_owned(),
            307,
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".to_owned(),
            "/v2/a/blobs/uploads/u2?_state=x%2By".to_owned(),
            "/v2/a/blobs/uploads/u2?_state=x%2By".to_owned(),
            202,
        ),
        (
            // Same host, another port: not the upstream's origin.
            "POST",
            "/v2/a/blobs/uploads/".to_owned(),
            format!("http://127.0.0.1:{}/v2/x", upstream.addr.port() + 1),
            format!("http://127.0.0.1:{}/v2/x", upstream.addr.port() + 1),
            202,
        ),
    ];
    let mut n = 0;
    for version in [Version::HTTP_11, Version::HTTP_2] {
        for (method, path, from, want, status) in &cases {
            *upstream_loc.lock().unwrap() = from.clone();
            let req = request(&proxy, method, path)
                .body(TestBody::empty())
                .unwrap();
            let resp = send(&proxy, version, req).await.unwrap();
            assert_eq!(resp.status(), *status);
            assert_eq!(
                header(resp.headers(), "location"),
                [want.as_str()],
                "{version:?}"
            );
            n += 1;
            // Exactly one upstream request per client request: the 307 is not followed.
            let seen = upstream.wait_seen(n).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(upstream.started(), n, "{from}");
            assert_eq!(seen[n - 1].target, *path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_public_url_is_used_for_rewritten_locations() {
    let upstream_addr: Arc<Mutex<String>> = Arc::default();
    let a = upstream_addr.clone();
    let upstream = FakeUpstream::start(move |_| {
        let l = format!(
            "http://{}/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D",
            a.lock().unwrap()
        );
        Reply::new(202).header("location", &l)
    })
    .await;
    *upstream_addr.lock().unwrap() = upstream.addr.to_string();
    let proxy = Proxy::builder(&upstream.url)
        .server_yaml("  public_url: https://registry.example\n")
        .start();
    for version in [Version::HTTP_11, Version::HTTP_2] {
        let req = request(&proxy, "POST", "/v2/a/blobs/uploads/")
            .body(TestBody::empty())
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        assert_eq!(resp.status(), 202);
        assert_eq!(
            header(resp.headers(), "location"),
            ["https://registry.example/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D"]
        );
    }
    for s in upstream.wait_seen(2).await {
        assert_eq!(s.all("x-forwarded-host"), ["registry.example"]);
    }
}

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
// Framing (checklist I): hyper refuses the classic tricks before the proxy sees a request,
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
    // hyper's own 400: no body, connection closed.
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
                && text.contains("\r\ncontent-length: 0\r\n"),
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

/// How long until the server closes `s` (reading whatever it sends).
async fn time_to_close<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Duration, End) {
    let started = Instant::now();
    let (_, end) = read_until(s, limit, |_| false).await;
    (started.elapsed(), end)
}

fn closed(end: &End) -> bool {
    matches!(end, End::Eof | End::Error(_))
}

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

// ---------------------------------------------------------------------------------------
// 11. Protocols.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http11_both_work_and_the_upstream_gets_http11() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::start(&upstream.url);
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let req = request(&proxy, "GET", "/v2/")
            .body(TestBody::empty())
            .unwrap();
        let resp = send(&proxy, version, req).await.unwrap();
        assert_eq!(resp.version(), version);
        let (status, h, body) = collect(resp).await;
        assert_eq!((status.as_u16(), &body[..]), (200, &b"{}"[..]));
        assert_eq!(header(&h, "x-request-id").len(), 1);
    }
    // No ALPN at all: HTTP/1.1.
    let out = raw_exchange(
        &proxy,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr),
    )
    .await;
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    let seen = upstream.wait_seen(3).await;
    assert!(seen.iter().all(|s| s.version == Version::HTTP_11));
}

fn s_client(proxy: &Proxy, flags: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &proxy.addr.to_string(), "-CAfile"])
        .arg(&proxy.ca)
        .args(flags)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run openssl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_below_1_2_is_refused() {
    if !have("openssl") {
        return;
    }
    let upstream = FakeUpstream::status(200).await;
    let proxy = Proxy::start(&upstream.url);
    // SECLEVEL=0 so that OpenSSL itself is willing to offer TLS 1.0/1.1: the refusal
    // must come from the proxy. rustls answers a ClientHello without TLS 1.2 or 1.3
    // with a handshake_failure alert (40) and nothing else: no certificate, no cipher.
    for flag in ["-tls1_1", "-tls1"] {
        let (ok, out) = s_client(&proxy, &[flag, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{flag} handshake succeeded:\n{out}");
        assert!(
            out.contains("sslv3 alert handshake failure") && out.contains("SSL alert number 40"),
            "{flag}: not refused by the server:\n{out}"
        );
        assert!(out.contains("no peer certificate available"), "{out}");
        assert!(out.contains("Cipher is (NONE)"), "{out}");
    }
    for (flag, proto) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(&proxy, &[flag, "-brief"]);
        assert!(ok, "{flag}:\n{out}");
        assert!(out.contains(&format!("Protocol version: {proto}")), "{out}");
        assert!(out.contains("Verification: OK"), "{out}");
    }
}

#[tokio::test]
async fn an_https_upstream_is_verified_against_its_ca_file() {
    let (up, ca_pem) = FakeUpstream::start_tls(|_| Reply::new(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();

    // Trusting the upstream's CA: forwarded over TLS.
    let proxy = Proxy::builder(&up.url)
        .upstream_yaml(&format!("  ca_file: {}\n", ca.display()))
        .start();
    let req = request(&proxy, "GET", "/v2/")
        .body(TestBody::empty())
        .unwrap();
    let (status, _, _) = collect(send(&proxy, Version::HTTP_11, req).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(up.seen().len(), 1);
    assert_eq!(up.seen()[0].target, "/v2/");

    // Trusting only the system roots: the self-signed upstream is refused, 502.
    let untrusting = Proxy::builder(&up.url).start();
    let req = request(&untrusting, "GET", "/v2/")
        .body(TestBody::empty())
        .unwrap();
    let (status, headers, body) =
        collect(send(&untrusting, Version::HTTP_11, req).await.unwrap()).await;
    assert_registry_error(status, &headers, &body, 502, "UNAVAILABLE");
    assert_eq!(
        up.seen().len(),
        1,
        "nothing reached the upstream without a verified handshake"
    );
    assert!(
        untrusting.logs().contains("upstream failed"),
        "{}",
        untrusting.logs()
    );
}
