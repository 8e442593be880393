//! What an attacker could do to the audit trail itself (issue 13's review): fill the disk
//! with failed logins from many addresses (F3: a budget across addresses), hide behind
//! bearer tokens (F5: refused tokens are failed logins), run a second writer on the same
//! file (F4: the lock), or make a shutdown hang (F4: the watchdog). Against the fake
//! upstream: only the proxy's answers and the audit file matter here.

use super::*;

const LOGINS: &str = "  events: [login]\n";

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Failed-login records, and the failed logins the budget's summaries stand for.
fn failed_logins(recs: &[Value]) -> (Vec<&Value>, u64) {
    let written = recs
        .iter()
        .filter(|r| r["target"] == "login" && r["outcome"] == "failed")
        .collect();
    let summarized = recs
        .iter()
        .filter(|r| {
            r["phase"] == "dropped_summary"
                && r["kind"] == "login"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("audit.max_failed_logins_per_minute"))
        })
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    (written, summarized)
}

/// F3: more failed logins than `audit.max_failed_logins_per_minute`, each under another
/// name (as from many addresses: the budget does not look at them): the budget's worth
/// are written, the rest counted into `dropped_summary` records of kind login that say
/// how many; `audit verify` passes and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_over_the_budget_are_counted_not_written() {
    const BUDGET: u64 = 2;
    const SENT: u64 = 9;
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(
        &upstream.url,
        &audit,
        &format!("{LOGINS}  max_failed_logins_per_minute: {BUDGET}\n"),
        "",
    );
    let started = Instant::now();
    for i in 0..SENT {
        let creds = format!("guess{i}:wrong");
        let r = pcurl(&proxy, &["-u", &creds, &format!("{}/v2/", proxy.base)]);
        assert_eq!(r.status, 401, "{i}");
    }
    // The bucket refills BUDGET a minute: one more record per 60 / BUDGET s of the run.
    let refilled = started.elapsed().as_secs() * BUDGET / 60;
    assert!(proxy
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let recs = records(&audit);
    let (written, summarized) = failed_logins(&recs);
    assert!(
        (BUDGET..=BUDGET + refilled).contains(&(written.len() as u64)),
        "{} written, budget {BUDGET} (+{refilled} refilled): {recs:#?}",
        written.len()
    );
    assert_eq!(
        written.len() as u64 + summarized,
        SENT,
        "every failed login is written or counted: {recs:#?}"
    );
    assert!(written
        .iter()
        .all(|r| r["user"].as_str().is_some_and(|u| u.starts_with("guess"))));
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report_field(&report, "access events"),
        format!(
            "0 pulls, 0 logins, {} failed logins, {summarized} dropped",
            written.len()
        ),
        "{report}"
    );
}

/// F5: refused bearer tokens are failed logins: a forged one and garbage name nobody
/// (`-`), an expired one of the proxy's key names its user; a valid token's requests
/// are no logins (the token request's Basic login is the one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bearer_tokens_are_failed_logins() {
    use registry_guard::auth::token::{mint, Subject, TokenKey};
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let key_file = work.path().join("token.key");
    let key_text = "k".repeat(64);
    std::fs::write(&key_file, &key_text).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let audit_key = audit.with_file_name("audit.key");
    let (code, out, err) = cli(&["audit", "keygen", &audit_key.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut proxy = Proxy::builder(&upstream.url)
        .users(vec![user("alice", "pw", &[])])
        .auth_yaml(&format!(
            "  docker_bearer: on\n  token_key_file: {}\n",
            key_file.display()
        ))
        .access_yaml(RULES)
        .extra_yaml(&format!(
            "audit:\n  file: {}\n  key_file: {}\n{LOGINS}",
            audit.display(),
            audit_key.display()
        ))
        .start();
    let base = &proxy.base;
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    // A token, by alice's login at the token endpoint: one (successful) login record.
    let r = pcurl(
        &proxy,
        &[
            "-u",
            "alice:pw",
            &format!("{base}/auth/token?service=registry-guard&scope=repository:alice/app:pull"),
        ],
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let token = serde_json::from_slice::<Value>(&r.body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Its requests (forwarded: the fake registry answers 404): no logins.
    for _ in 0..3 {
        let r = pcurl(&proxy, &["-H", &bearer(&token), &format!("{base}/v2/")]);
        assert_eq!(r.status, 404);
    }
    // Garbage, a forged MAC, a token of another key: nobody.
    let (signed, _) = token.rsplit_once('.').unwrap();
    let forged = format!("{signed}.AAAA");
    let foreign = mint(
        &TokenKey::new(&[9; 32]),
        &Subject::User {
            name: "alice".into(),
            fingerprint: "00".into(),
        },
        unix_now(),
        Duration::from_secs(300),
    );
    // Expired, of the proxy's key: alice's.
    let tk = TokenKey::from_file_text(key_text.as_bytes()).unwrap();
    let expired = mint(
        &tk,
        &Subject::User {
            name: "alice".into(),
            fingerprint: tk.fingerprint("any"),
        },
        unix_now() - 3600,
        Duration::from_secs(300),
    );
    for t in ["rgb1.garbage", &forged, &foreign, &expired] {
        let r = pcurl(&proxy, &["-H", &bearer(t), &format!("{base}/v2/")]);
        assert_eq!(r.status, 401, "{t}");
    }
    assert!(proxy
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let recs = records(&audit);
    let logins: Vec<(&str, &str, &str)> = recs
        .iter()
        .filter(|r| r["target"] == "login")
        .map(|r| {
            (
                r["user"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        logins,
        [
            ("alice", "logged_in", "credentials verified"),
            ("-", "failed", "invalid or expired token"),
            ("-", "failed", "invalid or expired token"),
            ("-", "failed", "invalid or expired token"),
            ("alice", "failed", "invalid or expired token"),
        ],
        "{recs:#?}"
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert!(!proxy.logs().contains(&token), "a token in the log");
}

/// F4: a second proxy on the same audit file refuses to start (exit 64) naming the file
/// and saying another process holds it; the first one goes on writing, and its chain
/// verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_on_the_same_audit_file_refuses_to_start() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut first = proxy_for(&upstream.url, &audit, "", "");
    assert_eq!(delete_blob(&first, "alice:pw", "alice/app", 1).status, 202);
    // The same configuration, but its own CA file (the first one's clients trust theirs).
    let second_dir = tempfile::tempdir().unwrap();
    let yaml = std::fs::read_to_string(&first.config_path)
        .unwrap()
        .replace(
            &first.ca.display().to_string(),
            &second_dir.path().join("ca.pem").display().to_string(),
        );
    let second_config = second_dir.path().join("registry-guard.yaml");
    std::fs::write(&second_config, yaml).unwrap();
    let (code, out, err) = cli(&["serve", "--config", &second_config.display().to_string()]);
    assert_eq!(code, 64, "{out}{err}");
    let lock = work.path().join(".audit.jsonl.lock");
    assert!(
        err.contains("audit.file")
            && err.contains(&lock.display().to_string())
            && err.contains(&audit.display().to_string())
            && err.contains(&format!("another process (pid {})", first.pid())),
        "{err}"
    );
    assert_eq!(delete_blob(&first, "alice:pw", "alice/app", 2).status, 202);
    assert!(first
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "deletes"), "2", "{report}");
    // Gone with its process: the next one starts.
    let mut next = proxy_for(&upstream.url, &audit, "", "");
    assert!(next
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
}

/// F4: a shutdown that hangs is ended: here the config watcher blocked reading its
/// config file, which was replaced by a FIFO that the test holds open without writing (a
/// runtime thread stuck in a read: the old code then never even logged the SIGTERM, and
/// the runtime would wait for that thread at exit). The process exits `shutdown_grace` +
/// the margin after SIGTERM, non-zero (70), saying why; the audit file still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shutdown_is_ended_by_the_watchdog() {
    use std::os::unix::fs::OpenOptionsExt;
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(&upstream.url, &audit, "", "limits:\n  shutdown_grace: 1s\n");
    assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", 1).status, 202);
    let fifo = proxy.dir.path().join("config.fifo");
    let out = run(Command::new("mkfifo").arg(&fifo), STEP);
    assert!(out.status.success(), "mkfifo: {out:?}");
    std::fs::rename(&fifo, &proxy.config_path).unwrap();
    // The proxy polls its config (every 2 s) and opens it to read: once it has the FIFO
    // open, a writer can open it too; held open and silent, the read never ends.
    let writer = wait_for(Duration::from_secs(30), || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(&proxy.config_path)
            .ok()
    })
    .expect("the proxy never opened its config FIFO to read");
    // The hung read holds a blocking thread, not a runtime worker: the proxy still
    // serves, and sees SIGTERM (its drain starts; only the exit then hangs).
    assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", 2).status, 202);
    assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", 3).status, 202);
    let status = proxy.terminate(Duration::from_secs(60));
    drop(writer);
    let status = status.unwrap_or_else(|| {
        panic!(
            "the proxy did not exit within 60 s of SIGTERM:\n{}",
            proxy.logs()
        )
    });
    assert_eq!(status.code(), Some(70), "{}", proxy.logs());
    assert!(
        proxy.logs().contains("shutdown did not finish within"),
        "{}",
        proxy.logs()
    );
    assert!(
        proxy.logs().contains("shutting down: draining connections"),
        "SIGTERM was seen: {}",
        proxy.logs()
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
}
