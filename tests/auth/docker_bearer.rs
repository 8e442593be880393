//! docker and anonymous pulls: the Bearer challenge for docker clients, the proxy's own
//! token route, and tokens honoured while their user is unchanged (see `auth::token`).

use super::*;
use registry_guard::auth::token::{mint, Subject, TokenKey, LIFETIME};

const DOCKER_UA: &str = "docker/20.10.24 go/go1.19.8 git-commit/5d6db84 kernel/6.1.0 os/linux arch/amd64 UpstreamClient(Docker-Client/20.10.24 \\(linux\\))";

/// alice may do everything; anonymous may pull `public/**`.
const ACCESS: &str = "  rules:
    - repos: ['**']
      users: ['*']
      actions: [pull, push, delete]
    - repos: ['public/**']
      anonymous: true
      actions: [pull]
";

/// One HTTP/1.1 request on a fresh connection with exactly these headers (a `host`
/// among them replaces the proxy's address).
async fn ask_with(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let exchange = async {
        let tls = tls_from(proxy, loopback(1), &[b"http/1.1"]).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            req = req.header("host", proxy.addr.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(TestBody::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 20 s"))
}

/// A proxy with alice, `auth_extra` under `auth:` and the rules above.
fn proxy(upstream: &FakeUpstream, auth_extra: &str, server: &str) -> Proxy {
    let (b, _) = proxy_builder(upstream, vec![user("alice", "alice-pw", &[])]);
    b.auth_yaml(auth_extra)
        .access_yaml(ACCESS)
        .server_yaml(server)
        .start()
}

fn bearer_challenge(origin: &str) -> String {
    format!("Bearer realm=\"{origin}/auth/token\",service=\"registry-guard\"")
}

/// A 401 with the Bearer challenge and otherwise exactly the Basic one's answer.
fn assert_bearer(a: &Answer, origin: &str, what: &str) {
    assert_eq!(a.status, 401, "{what}: {}", a.text());
    assert_eq!(
        a.header("www-authenticate"),
        [bearer_challenge(origin)],
        "{what}"
    );
    assert_eq!(
        a.header("docker-distribution-api-version"),
        ["registry/2.0"],
        "{what}"
    );
    assert_eq!(a.code(), "UNAUTHORIZED", "{what}");
}

/// The token of a token answer, after checking the answer's form.
fn token_of(a: &Answer, what: &str) -> String {
    assert_eq!(a.status, 200, "{what}: {}", a.text());
    assert_eq!(a.header("cache-control"), ["no-store"], "{what}");
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    let t = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["access_token"], t.as_str(), "{what}");
    assert_eq!(v["expires_in"], LIFETIME.as_secs(), "{what}");
    let issued = v["issued_at"].as_str().unwrap();
    assert!(
        issued.len() >= 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{what}: {issued}"
    );
    assert!(t.starts_with("rgb1."), "{what}: {t}");
    t
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_without_credentials_gets_a_bearer_challenge_for_the_host_it_used_and_others_keep_basic(
) {
    let upstream = registry_like().await;
    let p = proxy(&upstream, "  anonymous: true\n", "");
    let origin = format!("https://{}", p.addr);
    let ua = ("user-agent", DOCKER_UA);
    for (method, path) in [
        ("GET", "/v2/"),
        ("HEAD", "/v2/"),
        ("PUT", "/v2/public/app/manifests/1"),
        ("POST", "/v2/public/app/blobs/uploads/"),
        ("GET", "/v2/private/app/manifests/1"),
    ] {
        let a = ask_with(&p, method, path, &[ua]).await;
        if method == "HEAD" {
            assert_eq!(a.status, 401);
            assert_eq!(a.header("www-authenticate"), [bearer_challenge(&origin)]);
        } else {
            assert_bearer(&a, &origin, &format!("docker {method} {path}"));
        }
    }
    // The Host the client used, port included.
    let a = ask_with(&p, "GET", "/v2/", &[ua, ("host", "registry.example:8443")]).await;
    assert_bearer(
        &a,
        "https://registry.example:8443",
        "docker via another Host",
    );
    // A refused token: the same Bearer challenge, so docker fetches a new one.
    let a = ask_with(
        &p,
        "GET",
        "/v2/",
        &[ua, ("authorization", "Bearer rgb1.x.y")],
    )
    .await;
    assert_bearer(&a, &origin, "docker with a bad token");

    // Everyone else: exactly the Basic challenge of checklist D.1.
    for agent in [
        None,
        Some("containers/5.24.1 (github.com/containers/image)"),
        Some("containerd/1.6.20+unknown"),
        Some("go-containerregistry/v0.19.0"),
        Some("curl/7.88.1"),
    ] {
        let headers: Vec<(&str, &str)> = agent.map(|a| ("user-agent", a)).into_iter().collect();
        let a = ask_with(&p, "GET", "/v2/", &headers).await;
        assert_challenge(&a, "GET", &format!("{agent:?}"));
        let a = ask_with(&p, "PUT", "/v2/public/app/manifests/1", &headers).await;
        assert_challenge(&a, "PUT", &format!("{agent:?} push"));
    }
    // The token route itself answers a refused login with Basic, whoever asks.
    let a = ask_with(
        &p,
        "GET",
        "/auth/token?service=registry-guard&scope=repository:public/app:pull",
        &[ua, ("authorization", &basic("alice", "wrong"))],
    )
    .await;
    assert_refused(&a, "token route, wrong password");
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());

    // server.public_url wins over the Host.
    let p = proxy(
        &upstream,
        "  anonymous: true\n",
        "  public_url: https://registry.example\n",
    );
    let a = ask_with(&p, "GET", "/v2/", &[ua]).await;
    assert_bearer(&a, "https://registry.example", "docker with public_url");

    // Anonymous off (auto), or docker_bearer off: Basic for docker too, no token route.
    for extra in ["", "  anonymous: true\n  docker_bearer: off\n"] {
        let p = proxy(&upstream, extra, "");
        let a = ask_with(&p, "GET", "/v2/", &[ua]).await;
        assert_challenge(&a, "GET", &format!("docker, {extra:?}"));
        let a = ask_with(
            &p,
            "GET",
            "/auth/token",
            &[("authorization", &basic("alice", "alice-pw"))],
        )
        .await;
        assert_eq!(a.status, 404, "{extra:?}: {}", a.text());
    }
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_issued_for_logins_and_to_anonymous_only_while_it_is_on() {
    let upstream = registry_like().await;
    let p = proxy(&upstream, "  anonymous: true\n", "");
    let path = "/auth/token?account=alice&scope=repository%3Apublic%2Fapp%3Apull%2Cpush&service=registry-guard";
    let a = ask_with(
        &p,
        "GET",
        path,
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    let alice = token_of(&a, "alice's token");
    let a = ask_with(
        &p,
        "GET",
        path,
        &[("authorization", &basic("alice", "nope"))],
    )
    .await;
    assert_refused(&a, "wrong password");
    let a = ask_with(
        &p,
        "GET",
        path,
        &[("authorization", &basic("mallory", "x"))],
    )
    .await;
    assert_refused(&a, "unknown user");
    let a = ask_with(&p, "GET", path, &[]).await;
    let anon = token_of(&a, "anonymous token");
    let a = ask_with(&p, "GET", path, &[("authorization", "Basic Og==")]).await;
    token_of(&a, "anonymous token for containers/image's no-login");
    assert_ne!(alice, anon);
    // A token is not exchanged for a token; only GET is served.
    let a = ask_with(&p, "GET", path, &[("authorization", &bearer(&alice))]).await;
    assert_refused(&a, "token for a token");
    let a = ask_with(
        &p,
        "POST",
        "/auth/token",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.text());
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
    let logs = p.logs();
    assert!(
        !logs.contains(&alice) && !logs.contains(&anon) && !logs.contains("rgb1."),
        "{logs}"
    );

    // Anonymous off but tokens forced on: logins get tokens, nobody else does.
    let p = proxy(&upstream, "  docker_bearer: on\n", "");
    let a = ask_with(
        &p,
        "GET",
        "/auth/token",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    token_of(&a, "alice's token, anonymous off");
    let a = ask_with(&p, "GET", "/auth/token", &[]).await;
    assert_challenge(&a, "GET", "anonymous token while anonymous is off");
    // The anonymous token of a proxy where it was on is refused here.
    let a = ask_with(
        &p,
        "GET",
        "/v2/public/app/manifests/1",
        &[("authorization", &bearer(&anon))],
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.text());
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stands_for_its_user_until_it_is_tampered_expired_or_the_password_changes() {
    let upstream = registry_like().await;
    // A shared key, as replicas behind one balancer have it: tokens minted elsewhere with
    // it are good here.
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("token.key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let p = proxy(
        &upstream,
        &format!(
            "  anonymous: true\n  token_key_file: {}\n",
            key_file.display()
        ),
        "",
    );
    let ua = ("user-agent", DOCKER_UA);
    let a = ask_with(
        &p,
        "GET",
        "/auth/token",
        &[("authorization", &basic("alice", "alice-pw"))],
    )
    .await;
    let alice = token_of(&a, "alice's token");

    // alice's token: /v2/ and a push route are forwarded, as alice, without the token.
    let a = ask_with(&p, "GET", "/v2/", &[ua, ("authorization", &bearer(&alice))]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = ask_with(
        &p,
        "PUT",
        "/v2/alice/app/manifests/1",
        &[ua, ("authorization", &bearer(&alice))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = upstream.take();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(seen.iter().all(|s| !s.has("authorization")), "{seen:#?}");
    assert!(p.logs().contains("user=alice"));

    // The anonymous token pulls public/, and cannot push there.
    let a = ask_with(&p, "GET", "/auth/token", &[ua]).await;
    let anon = token_of(&a, "anonymous token");
    let a = ask_with(
        &p,
        "GET",
        "/v2/public/app/manifests/1",
        &[ua, ("authorization", &bearer(&anon))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = ask_with(
        &p,
        "PUT",
        "/v2/public/app/manifests/1",
        &[ua, ("authorization", &bearer(&anon))],
    )
    .await;
    assert_bearer(&a, &format!("https://{}", p.addr), "anonymous push");
    assert_eq!(upstream.take().len(), 1);

    // Tampered (each part), malformed, expired: 401, nothing forwarded.
    let key = TokenKey::from_file_text(&std::fs::read(&key_file).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // alice's hash as the user file holds it.
    let users = std::fs::read_to_string(p.users_file()).unwrap();
    let hash = users
        .lines()
        .find_map(|l| l.trim().strip_prefix("hash: "))
        .unwrap()
        .trim_matches('\'');
    let as_alice = Subject::User {
        name: "alice".into(),
        fingerprint: key.fingerprint(hash),
    };
    let expired = mint(&key, &as_alice, now - 3600, LIFETIME);
    let minted = mint(&key, &as_alice, now, LIFETIME);
    let (head, mac) = alice.rsplit_once('.').unwrap();
    let mut flipped = mac.to_owned().into_bytes();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    let other_key = mint(&TokenKey::new(&[9; 32]), &as_alice, now, LIFETIME);
    let bob = mint(
        &key,
        &Subject::User {
            name: "bob".into(),
            fingerprint: key.fingerprint(hash),
        },
        now,
        LIFETIME,
    );
    for (what, t) in [
        (
            "MAC changed",
            format!("{head}.{}", String::from_utf8(flipped).unwrap()),
        ),
        (
            "payload of another token",
            format!("{}.{mac}", anon.rsplit_once('.').unwrap().0),
        ),
        ("expired", expired),
        ("another key", other_key),
        ("a user not in the file", bob),
        ("not a token", "not-a-token".to_owned()),
        ("empty", String::new()),
    ] {
        let a = ask_with(
            &p,
            "GET",
            "/v2/alice/app/manifests/1",
            &[ua, ("authorization", &bearer(&t))],
        )
        .await;
        assert_bearer(&a, &format!("https://{}", p.addr), what);
        let a = ask_with(
            &p,
            "GET",
            "/v2/alice/app/manifests/1",
            &[("authorization", &bearer(&t))],
        )
        .await;
        assert_refused(&a, what);
    }
    let seen = upstream.seen();
    assert!(seen.is_empty(), "{seen:#?}");
    // One minted with the shared key by someone else (another replica) is good here.
    let a = ask_with(
        &p,
        "GET",
        "/v2/alice/app/manifests/1",
        &[ua, ("authorization", &bearer(&minted))],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(upstream.take().len(), 1);

    // A new password for alice: her token stops working at the reload.
    std::fs::write(p.users_file(), users_yaml(&[user("alice", "new-pw", &[])])).unwrap();
    let refused = wait_until(Duration::from_millis(3500), || async {
        let a = ask_with(&p, "GET", "/v2/", &[ua, ("authorization", &bearer(&alice))]).await;
        (a.status == 401).then_some(a)
    })
    .await;
    let a = refused.expect("alice's token still works 3.5 s after her password changed");
    assert_bearer(
        &a,
        &format!("https://{}", p.addr),
        "token after a password change",
    );
    let a = ask_with(
        &p,
        "GET",
        "/v2/",
        &[ua, ("authorization", &bearer(&minted))],
    )
    .await;
    assert_eq!(a.status, 401);
    // A new login gets a token that works.
    let a = ask_with(
        &p,
        "GET",
        "/auth/token",
        &[("authorization", &basic("alice", "new-pw"))],
    )
    .await;
    let fresh = token_of(&a, "token after the new password");
    let a = ask_with(&p, "GET", "/v2/", &[ua, ("authorization", &bearer(&fresh))]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let logs = p.logs();
    assert!(!logs.contains("rgb1."), "a token was logged:\n{logs}");
}

/// Polls `f` every 100 ms until it returns Some or `limit` passes.
async fn wait_until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Option<T> {
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
