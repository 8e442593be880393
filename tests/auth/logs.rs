//! Logs: no credential reaches them, and a control character cannot forge a line.

use super::*;

// ---------------------------------------------------------------------------------------
// 8. Logs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_reach_the_log_even_at_trace_level() {
    const GOOD: &str = "Qz7-distinctive-Pw-31337";
    const BAD: &str = "Wv4-distinctive-Guess-27182";
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(&upstream, vec![user("alice", GOOD, &[])]);
    let proxy = b.env("RUST_LOG", "trace").start();

    assert_eq!(login(&proxy, "alice", BAD).await, 401);
    assert_eq!(login(&proxy, "alice", GOOD).await, 200);
    assert_eq!(login(&proxy, "alice", GOOD).await, 200); // a cache hit too
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = proxy.logs();
    assert!(logs.contains(" TRACE "), "RUST_LOG=trace was not in force");
    for secret in [
        GOOD.to_owned(),
        BAD.to_owned(),
        basic("alice", GOOD),
        basic("alice", BAD),
        basic("alice", GOOD)["Basic ".len()..].to_owned(),
        basic("alice", BAD)["Basic ".len()..].to_owned(),
        "distinctive".to_owned(),
    ] {
        assert!(!logs.contains(&secret), "the log holds {secret:?}:\n{logs}");
    }
    // It does name the user: in the failure and in the access lines.
    assert!(
        logs.lines()
            .any(|l| l.contains("login failed") && l.contains("alice")),
        "{logs}"
    );
    assert!(
        logs.lines()
            .filter(|l| l.contains("registry_guard::access") && l.contains("alice"))
            .count()
            >= 2,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_the_user_name_is_refused_counted_and_forges_no_log_line() {
    // Regression: a newline in the Basic user name was written as is into the text
    // log and forged an access line.
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let upstream = registry_like().await;
    let (b, metrics) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b.auth_yaml(THROTTLE).start();
    let forged =
        "2030-01-01T00:00:00.000000Z  INFO registry_guard::access: user=admin status=200 FORGED";
    let names = [
        format!("x\n{forged}"),
        format!("x\r{forged}"),
        format!("x\u{1b}[2K\r{forged}"),
    ];
    let c0 = counts(metrics).await;
    for n in &names {
        let value = format!("Basic {}", b64(format!("{n}:pw").as_bytes()));
        let a = ask(&proxy, "GET", "/v2/", &[&value]).await;
        assert_refused(&a, &format!("{n:?}"));
    }
    let c1 = counts(metrics).await;
    assert_eq!(c1.argon2, c0.argon2, "a refused name ran argon2");
    assert_eq!(c1.failures - c0.failures, 3, "not counted as failures");
    // Counted through the throttle: the 4th from the same address is throttled.
    let value = format!("Basic {}", b64(format!("{}:pw", names[0]).as_bytes()));
    let a = ask(&proxy, "GET", "/v2/", &[&value]).await;
    assert_eq!(a.status, 429, "{}", a.text());
    // alice, from the same address, is not bothered by it.
    assert_eq!(login(&proxy, "alice", "alice-pw").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = proxy.logs();
    assert!(!logs.contains("FORGED"), "{logs}");
    assert!(!logs.contains('\u{1b}') && !logs.contains('\r'), "{logs:?}");
    // Every line is one event: it opens with the timestamp and the level.
    for line in logs.lines() {
        let level = line.get(27..34).unwrap_or_default();
        let stamped = line.len() > 30
            && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && line.as_bytes()[4] == b'-'
            && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"]
                .iter()
                .any(|l| level.contains(l));
        assert!(stamped, "a line without the event prefix: {line:?}\n{logs}");
    }
}
