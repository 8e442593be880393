//! Throttling: failures counted per name and
//! address pair and per address, in parallel, and for requests cancelled mid-argon2.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_failures_the_pair_gets_429_even_with_the_right_password_and_no_one_else_does() {
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(
        &upstream,
        vec![user("alice", "alice-pw", &[]), user("bob", "bob-pw", &[])],
    );
    let proxy = b.auth_yaml(THROTTLE).start();
    let attacker = loopback(1);

    for i in 0..3 {
        let a = ask_from(&proxy, attacker, "GET", "/v2/", &[&basic("alice", "guess")]).await;
        assert_refused(&a, &format!("failure {}", i + 1));
    }
    let c0 = counts(metrics).await;
    let a = ask_from(
        &proxy,
        attacker,
        "GET",
        "/v2/",
        &[&basic("alice", "alice-pw")],
    )
    .await;
    assert_eq!(a.status, 429, "4th attempt, right password: {}", a.text());
    assert_eq!(a.code(), "TOOMANYREQUESTS");
    assert_eq!(
        a.header("docker-distribution-api-version"),
        ["registry/2.0"]
    );
    assert!(a.header("www-authenticate").is_empty());
    let retry = a.header("retry-after");
    assert_eq!(retry.len(), 1, "{:?}", a.headers);
    let secs: u64 = retry[0].parse().expect("Retry-After is whole seconds");
    assert!((1..=60).contains(&secs), "Retry-After {secs}");
    let c1 = counts(metrics).await;
    assert_eq!(c1.argon2, c0.argon2, "a throttled attempt ran argon2");
    assert_eq!(c1.throttled, c0.throttled + 1);

    // The failures count for (address, alice) only: bob from the same address and alice
    // from another address log in.
    assert_eq!(login_from(&proxy, attacker, "bob", "bob-pw").await, 200);
    assert_eq!(
        login_from(&proxy, loopback(2), "alice", "alice-pw").await,
        200
    );
    assert_eq!(upstream.started(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_for_a_name_never_locks_its_owner_out() {
    // Regression: a name alone never blocks its owner.
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b.auth_yaml(THROTTLE).start();
    let c0 = counts(metrics).await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        statuses.push(login_from(&proxy, loopback(1), "alice", &format!("guess-{i}")).await);
    }
    assert_eq!(statuses[..3], [401; 3], "{statuses:?}");
    assert!(statuses[3..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(counts(metrics).await.argon2 - c0.argon2, 3);
    // alice, from her own address, with her password.
    assert_eq!(
        login_from(&proxy, loopback(2), "alice", "alice-pw").await,
        200,
        "alice is locked out by someone else's guesses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misconfigured_client_does_not_lock_out_the_users_behind_the_same_address() {
    // An office NAT or a load balancer: one address, many users; one client there keeps
    // failing with the default limits (10 per name and address, 100 per address).
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(
        &upstream,
        vec![
            user("alice", "alice-pw", &[]),
            user("ci-bot", "bot-pw", &[]),
        ],
    );
    let proxy = b.start();
    let nat = loopback(1);
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(login_from(&proxy, nat, "ci-bot", "expired-token").await);
    }
    assert_eq!(statuses[..10], [401; 10], "{statuses:?}");
    assert!(statuses[10..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(
        login_from(&proxy, nat, "alice", "alice-pw").await,
        200,
        "a user behind the same address is locked out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_names_from_one_address_stop_at_the_per_address_limit() {
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b
        .auth_yaml("  throttle:\n    max_failures: 3\n    max_failures_per_address: 6\n")
        .start();
    let c0 = counts(metrics).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(login_from(&proxy, loopback(1), &format!("name{i}"), "pw").await);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 429, 429, 429, 429]);
    assert_eq!(counts(metrics).await.argon2 - c0.argon2, 6);
    // The address is spent, for every name; other addresses are not.
    assert_eq!(
        login_from(&proxy, loopback(1), "alice", "alice-pw").await,
        429
    );
    assert_eq!(
        login_from(&proxy, loopback(2), "alice", "alice-pw").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_clears_the_pairs_count_but_gives_the_address_back_only_its_own_attempt() {
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(
        &upstream,
        vec![user("alice", "alice-pw", &[]), user("bob", "bob-pw", &[])],
    );
    let proxy = b
        .auth_yaml("  throttle:\n    max_failures: 3\n    max_failures_per_address: 5\n")
        .start();
    let one = loopback(1);
    // 2 failures, 1 success, 2 failures: the pair is at 2, not 4.
    assert_eq!(login_from(&proxy, one, "alice", "x").await, 401);
    assert_eq!(login_from(&proxy, one, "alice", "x").await, 401);
    assert_eq!(login_from(&proxy, one, "alice", "alice-pw").await, 200);
    assert_eq!(login_from(&proxy, one, "alice", "x").await, 401);
    assert_eq!(login_from(&proxy, one, "alice", "x").await, 401);
    // The address holds all 4 failures (the success excused none of them): one left.
    assert_eq!(login_from(&proxy, one, "bob", "x").await, 401);
    assert_eq!(login_from(&proxy, one, "bob", "bob-pw").await, 429);
    assert_eq!(login_from(&proxy, loopback(2), "bob", "bob-pw").await, 200);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_spraying_names_behind_a_shared_address_does_not_lock_out_the_users_there() {
    // Regression (outside review): 110 made-up names from 127.0.0.1 spent the address's
    // limit (100 by default), and then alice's and bob's right passwords from there got
    // 429. Pairs that logged in from the address lately are exempt from its limit.
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(
        &upstream,
        vec![
            user("alice", "alice-pw", &[]),
            user("bob", "bob-pw", &[]),
            user("carol", "carol-pw", &[]),
        ],
    );
    // No cache: every login below runs argon2 and meets the throttle.
    let proxy = b.auth_yaml("  cache_ttl: 1ms\n").start();
    let nat = loopback(1);
    assert_eq!(login_from(&proxy, nat, "alice", "alice-pw").await, 200);
    assert_eq!(login_from(&proxy, nat, "bob", "bob-pw").await, 200);
    let c0 = counts(metrics).await;
    let mut statuses = Vec::new();
    for i in 0..110 {
        statuses.push(login_from(&proxy, nat, &format!("junk{i}"), "x").await);
    }
    assert_eq!(statuses[..100], [401; 100], "{statuses:?}");
    assert!(statuses[100..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(counts(metrics).await.argon2 - c0.argon2, 100);
    for (name, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        assert_eq!(
            login_from(&proxy, nat, name, password).await,
            200,
            "{name} is locked out by another client behind her address"
        );
    }
    // The documented trade-off: a name that has not logged in from the address waits for
    // the window there (a sprayer is one too); from elsewhere it is not held.
    assert_eq!(login_from(&proxy, nat, "carol", "carol-pw").await, 429);
    assert_eq!(
        login_from(&proxy, loopback(2), "carol", "carol-pw").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_for_a_name_in_flight_from_other_addresses_never_keep_its_owner_out() {
    // Regression (outside review): with the argon2 queue busy, four different wrong
    // passwords for alice from two addresses made her right password from a third
    // address 429 ("too many attempts in flight"): the cap counted the name alone.
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![]);
    let proxy = Arc::new(
        b.users_file_yaml(&slow_users_yaml("alice", "alice-pw"))
            .auth_yaml("  verify_concurrency: 1\n")
            .start(),
    );
    let c0 = counts(metrics).await;
    let mut set = tokio::task::JoinSet::new();
    for (n, src) in [loopback(1), loopback(2)].into_iter().enumerate() {
        for i in 0..4 {
            let proxy = proxy.clone();
            set.spawn(async move { login_from(&proxy, src, "alice", &format!("g{n}{i}")).await });
        }
    }
    // One guess is being verified; the others wait in the queue (one slow run at a time).
    let started = wait_until(Duration::from_secs(10), || async {
        counts(metrics).await.argon2 > c0.argon2
    })
    .await;
    assert!(started, "no guess reached argon2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        login_from(&proxy, loopback(3), "alice", "alice-pw").await,
        200,
        "alice was refused because of guesses from other addresses"
    );
    while let Some(s) = set.join_next().await {
        assert_eq!(s.unwrap(), 401, "a guess within the pair's limits");
    }
}

/// Polls `f` every 20 ms until it is true or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_without_argon2_cannot_flush_a_blocked_pair_from_the_throttle() {
    // Regression (outside review): with max_tracked 300, one request from each of 330
    // addresses with a control character in the user name (401, no argon2) pushed the
    // blocked pair out of the table, and the guesser got three more argon2 runs in the
    // same window.
    use base64::Engine;
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b
        .auth_yaml("  throttle:\n    max_failures: 3\n    window: 1m\n    max_tracked: 300\n")
        .start();
    let attacker = loopback(1);
    let c0 = counts(metrics).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        statuses.push(login_from(&proxy, attacker, "alice", &format!("g{i}")).await);
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    let evil = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(b"ev\x01il:x")
    );
    for i in 0..330u32 {
        let src = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        let a = ask_from(&proxy, src, "GET", "/v2/", &[&evil]).await;
        assert_eq!(a.status, 401, "{src}: {}", a.text());
    }
    let mut statuses = Vec::new();
    for i in 5..10 {
        statuses.push(login_from(&proxy, attacker, "alice", &format!("g{i}")).await);
    }
    assert_eq!(statuses, [429; 5], "the blocked pair was flushed");
    assert_eq!(counts(metrics).await.argon2 - c0.argon2, 3);
    assert_eq!(
        login_from(&proxy, loopback(2), "alice", "alice-pw").await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_parallel_wrong_passwords_run_argon2_at_most_max_failures_times() {
    // Regression: the check ran before argon2 and the count after it, so 40 parallel
    // guesses all got 401 (40 argon2 runs) and none 429.
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = std::sync::Arc::new(b.auth_yaml(THROTTLE).start());
    // Distinct wrong passwords, one shared wrong password (the single-flight path), an
    // unknown name (the dummy hash): each from its own address.
    for (src, name, same) in [
        (loopback(1), "alice", false),
        (loopback(2), "alice", true),
        (loopback(3), "mallory", false),
    ] {
        let c0 = counts(metrics).await;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..40 {
            let proxy = proxy.clone();
            let pw = if same {
                "guess".to_owned()
            } else {
                format!("guess-{i}")
            };
            set.spawn(async move { login_from(&proxy, src, name, &pw).await });
        }
        let mut statuses = Vec::new();
        while let Some(s) = set.join_next().await {
            statuses.push(s.unwrap());
        }
        let c1 = counts(metrics).await;
        let refused = statuses.iter().filter(|&&s| s == 401).count();
        let throttled = statuses.iter().filter(|&&s| s == 429).count();
        let what = format!("{name} from {src} (same password: {same}): {statuses:?}");
        assert_eq!(refused + throttled, 40, "{what}");
        assert!((1..=3).contains(&refused), "{what}");
        assert!(
            c1.argon2 - c0.argon2 <= 3,
            "{} argon2 runs: {what}",
            c1.argon2 - c0.argon2
        );
        assert_eq!(c1.failures - c0.failures, refused as u64, "{what}");
    }
    assert_eq!(
        login_from(&proxy, loopback(4), "alice", "alice-pw").await,
        200
    );
}

/// A user file whose hash has the default (slow) parameters: argon2 then takes long
/// enough for a request to be cancelled while it runs.
fn slow_users_yaml(name: &str, password: &str) -> String {
    let hash = registry_guard::auth::users::hash_password(password, 19456, 2, 1).unwrap();
    format!("users:\n  - name: {name}\n    hash: '{hash}'\n")
}

/// Sends `GET /v2/` with `authorization` over HTTP/1.1 from `src` and closes the
/// connection after `after`, before the answer.
async fn h1_cancelled(proxy: &Proxy, src: IpAddr, authorization: &str, after: Duration) {
    let mut tls = tls_from(proxy, src, &[b"http/1.1"]).await;
    tls.write_all(
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\n\r\n",
            proxy.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(after).await;
    drop(tls);
}

/// Opens one HTTP/2 connection from `src` and sends `GET /v2/` with each of
/// `authorizations`, dropping each request after `after` (HEADERS, then RST_STREAM).
async fn h2_cancelled(proxy: &Proxy, src: IpAddr, authorizations: &[String], after: Duration) {
    use hyper_util::rt::TokioExecutor;
    let tls = tls_from(proxy, src, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    for a in authorizations {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .uri(format!("https://{}/v2/", proxy.addr))
            .header("authorization", a)
            .body(TestBody::empty())
            .unwrap();
        let answered = tokio::time::timeout(after, sender.send_request(req)).await;
        if let Ok(r) = answered {
            // Answered before the cancel (argon2 was quicker than `after`, or a 429):
            // a refusal either way; what counts is checked through the metrics.
            let status = r.unwrap().status();
            assert!(matches!(status.as_u16(), 401 | 429), "{status}");
        }
    }
    drop(sender);
    conn.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cancelled_while_argon2_runs_still_count_as_failures() {
    // Regression: 150 HTTP/2 HEADERS + RST_STREAM pairs ran argon2 150 times and
    // counted one failure: the count came after argon2, in a future that was dropped.
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![]);
    let proxy = b
        .users_file_yaml(&slow_users_yaml("alice", "alice-pw"))
        .auth_yaml(THROTTLE)
        .start();
    let wait = Duration::from_millis(40);
    for (protocol, src) in [("HTTP/1.1", loopback(1)), ("HTTP/2", loopback(2))] {
        let c0 = counts(metrics).await;
        let guesses: Vec<String> = (0..12).map(|i| basic("alice", &format!("g{i}"))).collect();
        if protocol == "HTTP/2" {
            h2_cancelled(&proxy, src, &guesses, wait).await;
        } else {
            for g in &guesses {
                h1_cancelled(&proxy, src, g, wait).await;
            }
        }
        // Let the verifications already started end.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let c1 = counts(metrics).await;
        assert!(
            c1.argon2 - c0.argon2 <= 3,
            "{protocol}: {} argon2 runs for 12 cancelled guesses (max_failures 3)",
            c1.argon2 - c0.argon2
        );
        // The guesses counted: the pair is spent, even for the right password.
        assert_eq!(
            login_from(&proxy, src, "alice", "alice-pw").await,
            429,
            "{protocol}: cancelled guesses were not counted"
        );
    }
    assert_eq!(
        login_from(&proxy, loopback(3), "alice", "alice-pw").await,
        200
    );
    assert_alive_quietly(&proxy);
}
