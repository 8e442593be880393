//! Manifest pushes, the seed's delete flow, blob deletes, an unreachable registry, and
//! X-Forwarded-For from trusted proxies.

use super::*;

// ---- 10. manifest pushes ---------------------------------------------------------------

/// `audit.manifest_pushes: true`: a skopeo push through the proxy gives an intent and an
/// outcome for the manifest PUT: target manifest_push, the tag, outcome pushed, 201 and
/// the digest the registry stored.
#[test]
fn manifest_pushes_are_audited_when_asked() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "  manifest_pushes: true\n");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    let before = now_utc();
    push_through(&proxy, &img, "alice/app:p1", Some("alice:pw"));
    let after = now_utc();
    assert!(reg_has(&reg, "alice/app", "p1"));

    let recs = records(&audit);
    let pushes: Vec<&Value> = recs
        .iter()
        .filter(|r| r["target"] == "manifest_push")
        .collect();
    assert_eq!(pushes.len(), 2, "{recs:#?}");
    let (intent, outcome) = pair(&recs, pushes[0]["request_id"].as_str().unwrap());
    for r in [intent, outcome] {
        assert_eq!(r["user"], "alice", "{r}");
        assert_eq!(r["method"], "PUT", "{r}");
        assert_eq!(r["repo"], "alice/app", "{r}");
        assert_eq!(r["reference"], "p1", "{r}");
        assert_eq!(r["client"], "127.0.0.1", "{r}");
        assert!(
            r["user_agent"]
                .as_str()
                .unwrap_or("")
                .starts_with("skopeo/"),
            "{r}"
        );
        assert_time(r, &before, &after);
    }
    assert_eq!(outcome["outcome"], "pushed", "{outcome}");
    assert_eq!(outcome["upstream_status"], 201, "{outcome}");
    assert_eq!(outcome["digest"], img.manifest_digest.as_str(), "{outcome}");
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "pushes"), "1", "{report}");
}

// ---- 11. the seed's flow -----------------------------------------------------------------

/// The seed's Python flow (pre-emptive Basic header, browser User-Agent; tags, catalog,
/// manifest GET/HEAD, DELETE by digest) passes through the proxy with audit on; the
/// registry no longer has the image; the audit says alice deleted it, with the seed
/// script's user agent and tag v1.
#[test]
fn seed_delete_flow_is_audited() {
    let Some(reg) = tools() else { return };
    if !have_python(true) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "v1", 1);
    push_through(&proxy, &img, "alice/seed:v1", Some("alice:pw"));
    let out = run(
        Command::new(PYTHON)
            .arg(e2e_script("seed_flows.py"))
            .args(["--base", &proxy.base])
            .arg("--cacert")
            .arg(&proxy.ca)
            .args(["--user", "alice", "--password", "pw"])
            .args(["--repo", "alice/seed", "--tag", "v1"]),
        STEP,
    );
    let stdout = ok(&out, "seed_flows.py");
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        steps.iter().any(|s| s["step"] == "delete_manifest"),
        "{stdout}"
    );
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
    assert!(!reg_has(&reg, "alice/seed", &img.manifest_digest));
    assert!(!reg_has(&reg, "alice/seed", "v1"));

    let recs = records(&audit);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let (intent, outcome) = pair(&recs, recs[0]["request_id"].as_str().unwrap());
    for r in [intent, outcome] {
        assert_eq!(r["user"], "alice", "{r}");
        assert_eq!(r["repo"], "alice/seed", "{r}");
        assert_eq!(r["digest"], img.manifest_digest.as_str(), "{r}");
        assert_eq!(tags_of(r), ["v1"], "{r}");
        assert!(
            r["user_agent"]
                .as_str()
                .unwrap_or("")
                .starts_with("Mozilla/5.0"),
            "{r}"
        );
    }
    assert_eq!(outcome["outcome"], "deleted");
    assert_eq!(outcome["upstream_status"], 202);
    let rows = show(&[&audit], &["--user", "alice", "--repo", "alice/seed"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][7], "deleted", "{rows:?}");
}

// ---- 12. blobs, upstream failures, forwarded addresses ----------------------------------

/// A blob delete is audited too: target blob, the digest, 202, deleted; the registry no
/// longer serves the blob.
#[test]
fn a_blob_delete_is_audited() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:v1");
    let manifest: Value = serde_json::from_slice(&img.manifest()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let path = format!("/v2/alice/app/blobs/{config}");
    assert_eq!(reg_http(reg.addr, "HEAD", &path, &[], b"").0, 200);

    let url = format!("{}{path}", proxy.base);
    let r = pcurl(&proxy, &["-X", "DELETE", "-u", "alice:pw", &url]);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(reg_http(reg.addr, "HEAD", &path, &[], b"").0, 404);
    let recs = records(&audit);
    let (intent, outcome) = pair(&recs, &r.request_id());
    for rec in [intent, outcome] {
        assert_eq!(rec["target"], "blob", "{rec}");
        assert_eq!(rec["digest"], config.as_str(), "{rec}");
        assert_eq!(rec["reference"], config.as_str(), "{rec}");
        assert_eq!(rec["path"], path.as_str(), "{rec}");
        assert_eq!(rec["user"], "alice", "{rec}");
        assert!(rec.get("tags").is_none(), "{rec}");
    }
    assert_eq!(outcome["outcome"], "deleted", "{outcome}");
    assert_eq!(outcome["upstream_status"], 202, "{outcome}");
}

/// The registry gone (killed by its pid): the delete is answered 502 UNAVAILABLE, and the
/// trail still has the intent and a `failed` outcome without an upstream status, saying
/// why; the tags could not be looked up, and the intent says the list is incomplete.
#[test]
fn an_unreachable_registry_gives_a_failed_outcome() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:v1");
    signal(reg.pid(), "KILL");
    wait_for(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&reg.addr, Duration::from_millis(200))
            .is_err()
            .then_some(())
    })
    .expect("the registry still accepts connections after SIGKILL");

    let r = delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.error_code(), "UNAVAILABLE", "{r:?}");
    let recs = records(&audit);
    let (intent, outcome) = pair(&recs, &r.request_id());
    assert_eq!(intent["digest"], img.manifest_digest.as_str(), "{intent}");
    assert_eq!(intent["tags_complete"], false, "{intent}");
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    assert!(outcome.get("upstream_status").is_none(), "{outcome}");
    assert!(
        !outcome["reason"].as_str().unwrap_or("").is_empty(),
        "{outcome}"
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "failures"), "1", "{report}");
}

/// The client address: the peer, whatever X-Forwarded-For says, unless the peer is a
/// trusted proxy; then the right-most forwarded address that is not itself trusted.
#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let Some(reg) = Registry::start() else { return };
    let work = tempfile::tempdir().unwrap();
    let digest = format!("sha256:{}", "0".repeat(64));
    let xff = "X-Forwarded-For: 198.51.100.7, 203.0.113.9, 127.0.0.5";
    let url = |p: &Proxy| format!("{}/v2/alice/app/manifests/{digest}", p.base);

    let untrusted = work.path().join("untrusted.jsonl");
    let proxy = start_proxy(&reg, &untrusted, "");
    let r = pcurl(
        &proxy,
        &["-X", "DELETE", "-u", "bob:pw2", "-H", xff, &url(&proxy)],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let recs = records(&untrusted);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["client"], "127.0.0.1", "{}", recs[0]);
    drop(proxy);

    let trusted = work.path().join("trusted.jsonl");
    let proxy = start_proxy(&reg, &trusted, "  trusted_proxies: ['127.0.0.0/8']\n");
    let r = pcurl(
        &proxy,
        &["-X", "DELETE", "-u", "bob:pw2", "-H", xff, &url(&proxy)],
    );
    assert_eq!(r.status, 403, "{r:?}");
    let r2 = pcurl(&proxy, &["-X", "DELETE", "-u", "bob:pw2", &url(&proxy)]);
    assert_eq!(r2.status, 403, "{r2:?}");
    let recs = records(&trusted);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["client"], "203.0.113.9", "{}", recs[0]);
    assert_eq!(recs[1]["client"], "127.0.0.1", "{}", recs[1]);
}
