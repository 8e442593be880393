//! The challenge (checklist D1, D2, D8), valid credentials on /v2/ (D3, D5), refused
//! credentials (D6), and Basic parsing on the wire (D4).

use super::*;

// ---------------------------------------------------------------------------------------
// 1. The challenge (checklist D1, D2, D8).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_get_the_exact_challenge_on_every_route_before_any_body_is_read() {
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(&upstream, vec![user("alice", "pw", &["team-a"])]);
    let proxy = b.start();

    for (method, path) in [
        ("GET", "/v2/".to_owned()),
        ("HEAD", "/v2/".to_owned()),
        ("GET", "/v2/alice/app/manifests/v1".to_owned()),
        ("HEAD", format!("/v2/alice/app/blobs/{DIGEST}")),
        ("POST", "/v2/alice/app/blobs/uploads/".to_owned()),
        ("GET", "/v2/_catalog".to_owned()),
    ] {
        let a = ask(&proxy, method, &path, &[]).await;
        assert_challenge(&a, method, &format!("{method} {path}"));
    }

    // A PUT announcing a body with Expect: 100-continue: the 401 comes without a
    // 100 Continue (the client never sends its body), and the connection is closed after
    // it since the unsent body would otherwise be read as the next request.
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    tls.write_all(
        format!(
            "PUT /v2/alice/app/manifests/v1 HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             Content-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(end, End::Done, "{text}");
    assert_eq!(status_line(&out), "HTTP/1.1 401 Unauthorized", "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(!lower.contains("100 continue"), "{text}");
    assert!(
        text.contains(&format!(
            "\r\nwww-authenticate: Basic realm=\"{REALM}\"\r\n"
        )),
        "{text}"
    );
    assert!(
        lower.contains("\r\ndocker-distribution-api-version: registry/2.0\r\n"),
        "{text}"
    );
    assert!(lower.contains("\r\nconnection: close\r\n"), "{text}");
    assert!(text.ends_with(CHALLENGE_BODY), "{text}");
    let (rest, end) = read_until(&mut tls, Duration::from_secs(5), |_| false).await;
    assert!(
        rest.is_empty() && matches!(end, End::Eof | End::Error(_)),
        "{end:?}: {}",
        String::from_utf8_lossy(&rest)
    );

    // Nothing of any of these reached the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
}

// ---------------------------------------------------------------------------------------
// 2. Valid credentials on /v2/ (checklist D3, D5).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_credentials_on_the_base_route_are_forwarded_even_for_a_user_no_rule_grants() {
    let upstream = registry_like().await;
    // alice is in no rule: only bob may do anything, and only in bob/**.
    let (b, _) = proxy_builder(
        &upstream,
        vec![user("alice", "alice-pw", &[]), user("bob", "bob-pw", &[])],
    );
    let proxy = b
        .access_yaml(
            "  rules:\n    - repos: ['bob/**']\n      users: [bob]\n      actions: [pull]\n",
        )
        .start();

    let a = ask(&proxy, "GET", "/v2/", &[&basic("alice", "alice-pw")]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.text(), "{}");
    assert_eq!(
        a.header("docker-distribution-api-version"),
        ["registry/2.0"]
    );
    let seen = upstream.only().await;
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/v2/")
    );
    assert!(!seen.has("authorization"), "{seen:#?}");

    // The same user is denied a repository: 403 DENIED, no challenge, nothing forwarded.
    let a = ask(
        &proxy,
        "GET",
        "/v2/alice/app/tags/list",
        &[&basic("alice", "alice-pw")],
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert_eq!(a.code(), "DENIED");
    assert!(a.header("www-authenticate").is_empty());
    assert_eq!(upstream.started(), 1);
}

// ---------------------------------------------------------------------------------------
// 3. Refused credentials (checklist D6).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_unknown_and_disabled_users_get_401_after_one_argon2_run_each() {
    let upstream = registry_like().await;
    // carol is disabled: her entry is written by hand.
    let file = format!(
        "{}    disabled: true\n",
        users_yaml(&[
            user("alice", "alice-pw", &[]),
            user("carol", "carol-pw", &[])
        ])
    );
    assert!(file.contains("name: \"carol\"\n    hash: '$argon2id$"));
    let (b, metrics) = proxy_builder(&upstream, vec![]);
    let proxy = b.users_file_yaml(&file).start();

    let before = counts(metrics).await;
    let mut bodies = Vec::new();
    for (who, pw, what) in [
        ("alice", "wrong-pw", "wrong password"),
        ("mallory", "alice-pw", "unknown user"),
        ("carol", "carol-pw", "disabled user, right password"),
        ("carol", "wrong-pw", "disabled user, wrong password"),
    ] {
        let c0 = counts(metrics).await;
        let a = ask(&proxy, "GET", "/v2/", &[&basic(who, pw)]).await;
        assert_refused(&a, what);
        let c1 = counts(metrics).await;
        assert_eq!(c1.argon2, c0.argon2 + 1, "{what}: one argon2 run");
        assert_eq!(c1.failures, c0.failures + 1, "{what}");
        assert_eq!(c1.cache_hits, c0.cache_hits, "{what}");
        bodies.push(a.body);
    }
    // The same answer whoever it is: no way to tell the cases apart from the response.
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(upstream.started(), 0);

    // Control: the right password works, after one more argon2 run.
    assert_eq!(login(&proxy, "alice", "alice-pw").await, 200);
    let after = counts(metrics).await;
    assert_eq!(after.argon2, before.argon2 + 5);
    assert_eq!(after.failures, before.failures + 4);
    // The reason is not logged at info level; the name is.
    let logs = proxy.logs();
    assert!(logs.contains("login failed"), "{logs}");
    assert!(!logs.contains("disabled user"), "{logs}");
}

// ---------------------------------------------------------------------------------------
// 4. Basic parsing on the wire (checklist D4).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_are_parsed_as_clients_send_them_and_garbage_never_hurts() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(
        &upstream,
        vec![
            user("alice", "alice-pw", &[]),
            user("colon", "pa:ss:wo:rd", &[]),
        ],
    );
    let proxy = b.start();

    // Accepted forms.
    let lower = format!("basic {}", b64(b"alice:alice-pw"));
    let a = ask(&proxy, "GET", "/v2/", &[&lower]).await;
    assert_eq!(a.status, 200, "lower-case scheme: {}", a.text());
    let a = ask(&proxy, "GET", "/v2/", &[&basic("colon", "pa:ss:wo:rd")]).await;
    assert_eq!(a.status, 200, "password holding ':': {}", a.text());

    // Malformed: 401 with the challenge, and no argon2 run for any of them.
    let c0 = counts(metrics).await;
    let garbage = "!@#$%^&*()_+{}|:<>?~`-=[];',./".repeat(8 * KIB / 30 + 1);
    let big_b64 = "QUFB".repeat(8 * KIB / 4);
    for (value, what) in [
        ("Basic Og==".to_owned(), "empty user and password (skopeo)"),
        ("Basic !!!not-base64!!!".to_owned(), "not base64"),
        (format!("Basic {}", b64(b"alice")), "no colon"),
        (format!("Basic {}", b64(b"\xffalice:alice-pw")), "not UTF-8"),
        (format!("Basic {}", b64(b":alice-pw")), "empty user"),
        ("Bearer abc.def.ghi".to_owned(), "another scheme"),
        ("Basic".to_owned(), "no credentials"),
        (format!("Basic {big_b64}"), "8 KiB of base64"),
    ] {
        let a = ask(&proxy, "GET", "/v2/", &[&value]).await;
        assert_refused(&a, what);
    }
    // 8 KiB of garbage (under limits.max_header_bytes): 401, or 431 if it were over.
    for (value, what) in [
        (garbage.clone(), "8 KiB garbage header"),
        (format!("Basic {garbage}"), "Basic + 8 KiB garbage"),
    ] {
        let a = ask(&proxy, "GET", "/v2/", &[&value]).await;
        assert!(
            a.status == 401 || a.status == 431,
            "{what}: {} {}",
            a.status,
            a.text()
        );
    }
    let c1 = counts(metrics).await;
    assert_eq!(c1.argon2, c0.argon2, "malformed credentials ran argon2");
    assert_eq!(c1.throttled, c0.throttled);

    // Two Authorization headers: 400, over HTTP/1.1 and HTTP/2, even two good ones.
    let good = basic("alice", "alice-pw");
    for pair in [
        [good.as_str(), good.as_str()],
        [good.as_str(), "Basic Og=="],
    ] {
        let a = ask(&proxy, "GET", "/v2/", &pair).await;
        assert_eq!(a.status, 400, "{}", a.text());
        assert_eq!(a.code(), "UNAUTHORIZED");
        assert_eq!(
            a.header("docker-distribution-api-version"),
            ["registry/2.0"]
        );
        assert!(a.header("www-authenticate").is_empty());
    }
    let req = request(&proxy, "GET", "/v2/")
        .header("authorization", &good)
        .header("authorization", &good)
        .body(TestBody::empty())
        .unwrap();
    let (status, h, body) = collect(send(&proxy, Version::HTTP_2, req).await.unwrap()).await;
    assert_registry_error(status, &h, &body, 400, "UNAUTHORIZED");

    // Raw bytes an HTTP library would not send: obs-text (non-ASCII) in the value.
    let mut tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    let mut head = format!(
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic ",
        proxy.addr
    )
    .into_bytes();
    head.extend_from_slice(&[0xff, 0xfe, 0x80, b'a', 0xc3]);
    head.extend_from_slice(b"\r\n\r\n");
    tls.write_all(&head).await.unwrap();
    let (out, end) = read_until(&mut tls, Duration::from_secs(5), complete_response).await;
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    let line = status_line(&out);
    assert!(
        line == "HTTP/1.1 401 Unauthorized" || line == "HTTP/1.1 400 Bad Request",
        "{line}"
    );

    assert_eq!(
        upstream.started(),
        2,
        "only the two good logins are forwarded"
    );
    assert_alive(&proxy, "alice", "alice-pw").await;
}
