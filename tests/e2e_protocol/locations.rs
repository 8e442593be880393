//! The proxy on a non-default port: every `Location` the registry writes keeps the host
//! and port the client used, so an upload can be driven by following Locations alone;
//! with `server.public_url` the configured origin wins.

use super::*;

/// A blob upload driven only by the Locations the proxy returns: POST, PATCH, PUT.
/// Returns the three Locations (upload, upload, blob).
fn upload_by_locations(
    proxy: &Proxy,
    repo: &str,
    file: &Path,
    digest: &str,
    host: Option<&str>,
    follow: impl Fn(&str) -> String,
) -> [String; 3] {
    let creds = format!("{}:{}", ALICE.0, ALICE.1);
    let host_header = host.map(|h| format!("Host: {h}"));
    let with_host = |mut args: Vec<String>| {
        if let Some(h) = &host_header {
            args.extend(["-H".to_owned(), h.clone()]);
        }
        args
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_with(Some(&proxy.ca), 30, &args, None)
    };
    let post = run(with_host(vec![
        "-u".into(),
        creds.clone(),
        "-X".into(),
        "POST".into(),
        format!("{}/v2/{repo}/blobs/uploads/", proxy.base),
    ]));
    assert_eq!(post.status, 202, "{}", post.describe());
    let l1 = location(&post);
    let patch = run(with_host(vec![
        "-u".into(),
        creds.clone(),
        "-X".into(),
        "PATCH".into(),
        "-H".into(),
        "Content-Type: application/octet-stream".into(),
        "--data-binary".into(),
        format!("@{}", file.display()),
        follow(&l1),
    ]));
    assert_eq!(patch.status, 202, "{}", patch.describe());
    let l2 = location(&patch);
    let put = run(with_host(vec![
        "-u".into(),
        creds,
        "-X".into(),
        "PUT".into(),
        with_digest(&follow(&l2), digest),
    ]));
    assert_eq!(put.status, 201, "{}", put.describe());
    [l1, l2, location(&put)]
}

#[test]
fn every_location_keeps_the_host_and_port_the_client_used() {
    let Some((reg, proxy)) = start("", "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(
        &file,
        b"a blob behind a proxy on a non-default port\n".repeat(999),
    )
    .unwrap();
    let digest = sha256_file(&file);
    let port = proxy.addr.port();
    assert_ne!(port, 443);

    for (host, repo) in [
        (None, "alice/by-ip"),
        (Some(format!("localhost:{port}")), "alice/by-name"),
    ] {
        let origin = format!(
            "https://{}",
            host.clone().unwrap_or_else(|| format!("127.0.0.1:{port}"))
        );
        // Followed exactly as written: the Location must reach this proxy again (the
        // Host header carries the name; the connection goes to 127.0.0.1 either way).
        let follow = |l: &str| {
            assert!(
                l.starts_with(&format!("{origin}/")),
                "{l} is not on {origin}"
            );
            l.replacen(&origin, &proxy.base, 1)
        };
        let [l1, l2, blob] =
            upload_by_locations(&proxy, repo, &file, &digest, host.as_deref(), follow);
        for l in [&l1, &l2] {
            assert!(
                l.starts_with(&format!("{origin}/v2/{repo}/blobs/uploads/")),
                "{l}"
            );
        }
        assert_eq!(blob, format!("{origin}/v2/{repo}/blobs/{digest}"));
        // The blob's Location serves the blob, through the proxy.
        let got = as_alice(&proxy, "GET", &format!("/v2/{repo}/blobs/{digest}")).send();
        assert_eq!(got.status, 200, "{}", got.describe());
        assert_eq!(got.body, std::fs::read(&file).unwrap());
        let r = registry_blob(&reg, repo, &digest);
        assert_eq!(r.status, 200, "{}", r.describe());
    }
}

#[test]
fn the_configured_public_url_wins_over_the_host_the_client_used() {
    let Some((reg, proxy)) = start("  public_url: https://registry.example:8443\n", "") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blob");
    std::fs::write(&file, b"public url\n".repeat(4321)).unwrap();
    let digest = sha256_file(&file);
    let origin = "https://registry.example:8443";
    // The name does not resolve here: follow the path on the proxy's own address.
    let follow = |l: &str| {
        assert!(
            l.starts_with(&format!("{origin}/")),
            "{l} is not on {origin}"
        );
        l.replacen(origin, &proxy.base, 1)
    };
    let host = format!("localhost:{}", proxy.addr.port());
    for host in [None, Some(host.as_str())] {
        let repo = "alice/public-url";
        let [l1, _, blob] = upload_by_locations(&proxy, repo, &file, &digest, host, follow);
        assert!(
            l1.starts_with(&format!("{origin}/v2/{repo}/blobs/uploads/")),
            "{l1}"
        );
        assert_eq!(blob, format!("{origin}/v2/{repo}/blobs/{digest}"));
    }
    assert_eq!(registry_blob(&reg, "alice/public-url", &digest).status, 200);
}
