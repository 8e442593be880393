//! Hop-by-hop headers and credentials, forwarding claims, repeated headers and queries,
//! response headers, and Location rewriting.

use super::*;

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
        "GET /v2/a/manifests/latest HTTP/1.1\r\n\
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
    let req = request(proxy, "GET", "/v2/a/manifests/latest")
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
