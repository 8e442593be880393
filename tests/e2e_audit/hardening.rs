//! The audit's hardening, against the fake upstream: denials limited per user and
//! summarized, `/ready` while the disk is low, a full disk, a client that leaves after
//! the intent.

use super::*;

/// Item 5: an authenticated user's denials are written up to `max_denials_per_minute`;
/// the rest are counted into one `denials_summary` record (here at shutdown), which
/// `audit verify` counts and `audit show` prints. Another user is not limited by bob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_records_are_limited_per_user_and_summarized() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(&upstream.url, &audit, "  max_denials_per_minute: 3\n", "");
    for i in 0..10 {
        assert_eq!(delete_blob(&proxy, "bob:pw2", "alice/app", i).status, 403);
    }
    assert_eq!(delete_blob(&proxy, "alice:pw", "bob/app", 0).status, 403);
    let recs = records(&audit);
    let denied = |u: &str| {
        recs.iter()
            .filter(|r| r["phase"] == "denied" && r["user"] == u)
            .count()
    };
    assert_eq!((denied("bob"), denied("alice")), (3, 1), "{recs:#?}");
    assert!(proxy
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let recs = records(&audit);
    let summaries: Vec<&Value> = recs
        .iter()
        .filter(|r| r["phase"] == "denials_summary")
        .collect();
    // The first one over the limit on disk at once (a summary of one), the rest at the
    // end of the window (here at shutdown).
    assert_eq!(summaries.len(), 2, "{recs:#?}");
    assert!(
        summaries.iter().all(|s| s["user"] == "bob"),
        "{summaries:?}"
    );
    assert_eq!(
        (&summaries[0]["count"], &summaries[1]["count"]),
        (&Value::from(1), &Value::from(6)),
        "{summaries:?}"
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "denials"), "11", "{report}");
    let rows = show(&[&audit], &["--user", "bob"]);
    assert!(
        rows.iter()
            .any(|r| r[1] == "denials_summary" && r.join(" ").contains("6 more denials of bob")),
        "{rows:?}"
    );
    assert_eq!(deletes_seen(&upstream), 0);
}

/// F8: bob's denials over `max_denials_per_minute`, then kill -9 inside the minute: the
/// file already says that denials were suppressed (the first one over the limit was
/// written, as a summary of one, before it was answered), so the suppression is never
/// lost; only the count of the ones after it is, until the window's summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_denials_leave_a_trace_that_survives_kill_9() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(&upstream.url, &audit, "  max_denials_per_minute: 2\n", "");
    for i in 0..10 {
        assert_eq!(delete_blob(&proxy, "bob:pw2", "alice/app", i).status, 403);
    }
    signal(proxy.pid(), "KILL");
    let _ = proxy.terminate(Duration::from_secs(5)); // reaps the killed child
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "denials"), "3", "{report}");
    assert!(
        report.contains("denial summaries: 1 (for 1 denials not recorded one by one)"),
        "{report}"
    );
    let recs = records(&audit);
    let s = recs
        .iter()
        .find(|r| r["phase"] == "denials_summary")
        .unwrap();
    assert_eq!(
        (&s["user"], &s["count"]),
        (&Value::from("bob"), &Value::from(1)),
        "{s}"
    );
    assert_eq!(deletes_seen(&upstream), 0);
}

/// Item 5: `GET /ready` on the metrics listener is 503 with the reason while the audit
/// folder has less than `audit.min_free_bytes` free (and the gauge says so), 200 when it
/// has enough; `GET /healthz` is 200 either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_while_the_audit_disk_is_low() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    for (min, want) in [("1152921504606846976", 503), ("1", 200)] {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let audit = work.path().join(format!("audit-{want}.jsonl"));
        let proxy = proxy_for(
            &upstream.url,
            &audit,
            &format!("  min_free_bytes: {min}\n"),
            &format!("metrics:\n  listen: {metrics}\n"),
        );
        let (status, body) = http_get(metrics, "/ready");
        assert_eq!(status, want, "{body}");
        if want == 503 {
            assert!(body.contains("audit.min_free_bytes"), "{body}");
        }
        assert_eq!(http_get(metrics, "/healthz").0, 200);
        let (_, text) = http_get(metrics, "/metrics");
        let low = u8::from(want == 503);
        assert!(
            text.contains(&format!("\nregistry_guard_audit_disk_low {low}\n")),
            "{text}"
        );
        drop(proxy);
    }
}

/// A tmpfs mounted for the test, unmounted on drop; None (with a message) where mounting
/// is not permitted.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(size: &str) -> Option<TinyFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path()),
            STEP,
        );
        if !out.status.success() {
            eprintln!(
                "SKIPPING: cannot mount a tmpfs here ({}); the fault-injection unit tests of audit::writer still run",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(TinyFs { dir })
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = run(Command::new("umount").arg(self.dir.path()), STEP);
    }
}

/// Item 6 on a real full disk (a 64 KiB tmpfs): deletes are forwarded while their intent
/// fits and refused 503 (not forwarded) once it does not; the file never keeps a partial
/// line, so after space is freed the next deletes continue one intact chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_neither_tears_the_chain_nor_forwards_unrecorded_deletes() {
    let Some(fs) = TinyFs::mount("64k") else {
        return;
    };
    let upstream = fake_registry(Duration::ZERO).await;
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 16 << 10]).unwrap();
    let audit = fs.path().join("audit.jsonl");
    let proxy = proxy_for(&upstream.url, &audit, "", "");
    let (mut ok, mut refused, mut i) = (0, 0, 0);
    while refused < 5 {
        assert!(i < 1000, "the disk never filled: {ok} deletes");
        let r = delete_blob(&proxy, "alice:pw", "alice/app", i);
        i += 1;
        match r.status {
            202 => ok += 1,
            503 => {
                assert_eq!(r.error_code(), "UNAVAILABLE", "{r:?}");
                refused += 1;
            }
            s => panic!("DELETE answered {s}: {r:?}"),
        }
    }
    assert!(ok > 0, "no delete fitted");
    let content = std::fs::read(&audit).unwrap();
    assert!(
        content.ends_with(b"\n"),
        "a partial line was left: {:?}",
        String::from_utf8_lossy(&content[content.len().saturating_sub(80)..])
    );
    let intents = records(&audit)
        .iter()
        .filter(|r| r["phase"] == "intent")
        .count();
    assert_eq!(
        deletes_seen(&upstream),
        ok,
        "refused deletes were forwarded"
    );
    assert_eq!(
        intents, ok,
        "a forwarded delete without its intent, or an intent of a refused one"
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");

    std::fs::remove_file(&filler).unwrap();
    for j in 0..3 {
        let r = delete_blob(&proxy, "alice:pw", "alice/app", i + j);
        assert_eq!(r.status, 202, "{r:?}");
    }
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(deletes_seen(&upstream), ok + 3);
    drop(proxy);
}

/// Item 11: the client sends a DELETE and goes away once its intent is on disk, while
/// the upstream still works on it; the delete still completes and its outcome is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_the_intent_still_gets_an_outcome_record() {
    use tokio::io::AsyncWriteExt;
    let upstream = fake_registry(Duration::from_secs(2)).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = proxy_for(&upstream.url, &audit, "", "");
    let mut tls = common::client::tls_connect(&proxy, &[b"http/1.1"]).await;
    let head = format!(
        "DELETE /v2/alice/app/blobs/{} HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\r\n",
        blob_digest(1),
        basic("alice", "pw")
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let has = |phase: &str| records(&audit).iter().any(|r| r["phase"] == phase);
    wait_for(Duration::from_secs(10), || has("intent").then_some(())).expect("no intent written");
    assert!(!has("outcome"));
    drop(tls); // the client is gone before the upstream answered
    wait_for(Duration::from_secs(15), || has("outcome").then_some(()))
        .unwrap_or_else(|| panic!("no outcome after the client left: {:#?}", records(&audit)));
    let recs = records(&audit);
    let outcome = recs.iter().find(|r| r["phase"] == "outcome").unwrap();
    assert_eq!(outcome["upstream_status"], 202, "{outcome}");
    assert_eq!(outcome["outcome"], "deleted", "{outcome}");
    assert_eq!(deletes_seen(&upstream), 1);
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "unknown outcomes"), "0", "{report}");
}
