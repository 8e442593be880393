//! Protocols (HTTP/2 and HTTP/1.1 to clients, HTTP/1.1 upstream), TLS versions, and an
//! HTTPS upstream verified against its CA file.

use super::*;

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

/// Plain HTTP sent to the TLS port (docker and containerd fall back to `http://` for
/// registries they take for insecure) gets an HTTP/1.1 400 in the registry's format that
/// says the port speaks HTTPS, then the connection closes: no TLS alert for the client to
/// print as a malformed response. Nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_gets_a_400_that_says_https() {
    let upstream = FakeUpstream::start(|_| Reply::new(200).body(TestBody::bytes("{}"))).await;
    let proxy = Proxy::start(&upstream.url);
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut tcp,
        format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", proxy.addr).as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut tcp, Duration::from_secs(10), |_| false).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(end, End::Eof, "{text}");
    assert_eq!(status_line(&out), "HTTP/1.1 400 Bad Request", "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("docker-distribution-api-version: registry/2.0"),
        "{text}"
    );
    assert!(lower.contains("connection: close"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{body}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("HTTPS"),
        "{body}"
    );
    // curl, as a client that fell back to http:// would: it reads the answer.
    let addr = proxy.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("http://{addr}/v2/"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "{out:?}");
    // TLS clients are unaffected.
    let req = request(&proxy, "GET", "/v2/")
        .body(TestBody::empty())
        .unwrap();
    let resp = send(&proxy, Version::HTTP_11, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.started(), 1, "plain HTTP reached the upstream");
}
