//! What a delete leaves in the audit file: by digest (user, client, digest, every tag),
//! by tag (failed, with the registry's answer), refused (one denied record, none when
//! unauthenticated), and none forwarded while the file cannot be written.

use super::*;

// ---- 1. deletes by digest ----------------------------------------------------------------

/// skopeo and curl delete by digest as alice. Each delete gets one intent and one outcome
/// naming alice, 127.0.0.1, her user agent, the digest and every tag that pointed at it
/// (and no other), 202, deleted, an RFC 3339 UTC millisecond time; curl's records carry
/// the X-Request-Id it was answered with. The registry itself no longer has the manifest
/// or any of its tags. Pushes are not audited unless `manifest_pushes` is on.
#[test]
fn deletes_by_digest_record_user_client_digest_and_every_tag() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let one = mkimage(&work.path().join("img"), 0, "one", 1);
    let two = mkimage(&work.path().join("img"), 0, "two", 1);
    let other = mkimage(&work.path().join("img"), 0, "other", 1);
    for t in ["a", "b", "c"] {
        push_through(&proxy, &one, &format!("alice/app:{t}"), Some("alice:pw"));
    }
    assert_eq!(
        std::fs::metadata(&audit).unwrap().len(),
        0,
        "pushes were audited without manifest_pushes"
    );

    // skopeo resolves the tag to its digest and deletes by digest.
    let before = now_utc();
    let out = skopeo(&[
        "delete",
        "--creds",
        "alice:pw",
        "--cert-dir",
        proxy.cert_dir.to_str().unwrap(),
        &format!("docker://{}/alice/app:a", proxy.addr),
    ]);
    ok(&out, "skopeo delete");
    let after = now_utc();
    for reference in [one.manifest_digest.as_str(), "a", "b", "c"] {
        assert!(
            !reg_has(&reg, "alice/app", reference),
            "the registry still has alice/app {reference} after the delete by digest"
        );
    }
    let recs = records(&audit);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let id = recs[0]["request_id"].as_str().unwrap().to_owned();
    // The same request id as the proxy's access log line of skopeo's DELETE.
    wait_log(&proxy, &format!("request_id={id} "));
    let (intent, outcome) = pair(&recs, &id);
    assert_delete_pair(
        intent,
        outcome,
        &Delete {
            repo: "alice/app",
            digest: &one.manifest_digest,
            tags: &["a", "b", "c"],
            ua_prefix: "skopeo/",
            window: (&before, &after),
        },
    );

    // curl: the digest from Docker-Content-Digest, like the seed's guide. Tag d points at
    // another image and must neither be listed nor removed.
    for t in ["a", "b", "c"] {
        push_through(&proxy, &two, &format!("alice/app:{t}"), Some("alice:pw"));
    }
    push_through(&proxy, &other, "alice/app:d", Some("alice:pw"));
    let head = pcurl(
        &proxy,
        &[
            "-I",
            "-u",
            "alice:pw",
            "-H",
            &format!("Accept: {ACCEPT}"),
            &format!("{}/v2/alice/app/manifests/b", proxy.base),
        ],
    );
    assert_eq!(head.status, 200, "{head:?}");
    let digest = head.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(digest, two.manifest_digest);
    let before = now_utc();
    let r = delete(&proxy, "alice:pw", "alice/app", &digest);
    let after = now_utc();
    assert_eq!(r.status, 202, "{r:?}");
    for reference in [two.manifest_digest.as_str(), "a", "b", "c"] {
        assert!(
            !reg_has(&reg, "alice/app", reference),
            "the registry still has alice/app {reference} after the delete by digest"
        );
    }
    assert!(
        reg_has(&reg, "alice/app", "d"),
        "tag d went with the wrong digest"
    );
    let recs = records(&audit);
    assert_eq!(recs.len(), 4, "{recs:#?}");
    let (intent, outcome) = pair(&recs, &r.request_id());
    assert_delete_pair(
        intent,
        outcome,
        &Delete {
            repo: "alice/app",
            digest: &two.manifest_digest,
            tags: &["a", "b", "c"],
            ua_prefix: "curl/",
            window: (&before, &after),
        },
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "deletes"), "2", "{report}");
    assert_eq!(
        report_field(&report, "chain starts at"),
        "genesis",
        "{report}"
    );
}

/// 8 curl clients at once delete 16 manifests of one repository holding 50 tags (3 tags
/// on each manifest, `keep` — protected — on the first, `base` on the image itself), so
/// the deletes share tag snapshots. Every allowed delete's intent and outcome name
/// exactly its own 3 tags, complete; the delete of the manifest under the protected tag
/// is refused (one denied record, nothing removed); the registry lost exactly the 15
/// manifests and their 45 tags; `audit verify` passes.
#[test]
fn concurrent_deletes_in_a_repository_with_50_tags_record_exactly_their_tags() {
    const MANIFESTS: usize = 16;
    const CLIENTS: usize = 8;
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let img = mkimage(&work.path().join("img"), 0, "base", 1);
    let repo = "alice/many";
    push_direct(&reg, &img, &format!("{repo}:base"));
    let digests: Vec<String> = (0..MANIFESTS)
        .map(|i| put_variant(&reg, &img, repo, i, None))
        .collect();
    let mut tags_on: Vec<Vec<String>> = vec![Vec::new(); MANIFESTS];
    for t in 0..3 * MANIFESTS {
        let tag = format!("t{t:02}");
        assert_eq!(
            put_variant(&reg, &img, repo, t % MANIFESTS, Some(&tag)),
            digests[t % MANIFESTS]
        );
        tags_on[t % MANIFESTS].push(tag);
    }
    assert_eq!(put_variant(&reg, &img, repo, 0, Some("keep")), digests[0]);
    let rules = format!("{RULES}  protected_tags:\n    - repos: ['{repo}']\n      tags: [keep]\n");
    let proxy = proxy_with_rules(&reg.url, &audit, &rules, "", "");

    let before = now_utc();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--cacert"])
                .arg(&proxy.ca)
                .args(["-u", "alice:pw", "-X", "DELETE"])
                .args(["-w", "%{http_code} %header{x-request-id}\\n"]);
            for d in digests.iter().skip(c).step_by(CLIENTS) {
                cmd.arg(format!("{}/v2/{repo}/manifests/{d}", proxy.base))
                    .args(["-o", "/dev/null"]);
            }
            let mine: Vec<String> = digests.iter().skip(c).step_by(CLIENTS).cloned().collect();
            std::thread::spawn(move || (mine, run(&mut cmd, STEP)))
        })
        .collect();
    // digest -> (status, request id)
    let mut answers: HashMap<String, (String, String)> = HashMap::new();
    for c in clients {
        let (mine, out) = c.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), mine.len(), "curl: {text} {out:?}");
        for (d, line) in mine.into_iter().zip(lines) {
            let (status, id) = line.split_once(' ').unwrap();
            answers.insert(d, (status.to_owned(), id.to_owned()));
        }
    }
    let after = now_utc();

    let recs = records(&audit);
    assert_eq!(recs.len(), 2 * (MANIFESTS - 1) + 1, "{recs:#?}");
    for (i, d) in digests.iter().enumerate() {
        let (status, id) = &answers[d];
        if i == 0 {
            assert_eq!(status, "403", "the protected tag's manifest: {answers:?}");
            let rs = of_request(&recs, id);
            assert_eq!(rs.len(), 1, "{rs:#?}");
            assert_eq!(rs[0]["phase"], "denied", "{}", rs[0]);
            let reason = rs[0]["reason"].as_str().unwrap();
            assert!(
                reason.contains("would remove the protected tag \"keep\""),
                "{reason}"
            );
            continue;
        }
        assert_eq!(status, "202", "{d}: {answers:?}");
        let want: Vec<&str> = tags_on[i].iter().map(String::as_str).collect();
        let (intent, outcome) = pair(&recs, id);
        assert_delete_pair(
            intent,
            outcome,
            &Delete {
                repo,
                digest: d,
                tags: &want,
                ua_prefix: "curl/",
                window: (&before, &after),
            },
        );
        assert!(!reg_has(&reg, repo, d), "{d} is still there");
        for t in &tags_on[i] {
            assert!(!reg_has(&reg, repo, t), "tag {t} is still there");
        }
    }
    for reference in ["base", "keep", "t00", "t16", "t32", digests[0].as_str()] {
        assert!(reg_has(&reg, repo, reference), "{reference} was removed");
    }
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report_field(&report, "deletes"),
        (MANIFESTS - 1).to_string(),
        "{report}"
    );
}

// ---- 2. delete by tag ----------------------------------------------------------------------

/// Distribution 2.8 refuses a delete by tag: 400 DIGEST_INVALID, passed through. The intent
/// still names the target as manifest_by_tag, the digest the tag resolved to and every tag
/// pointing at it; the outcome is `failed` with upstream_status 400; nothing is removed.
#[test]
fn delete_by_tag_is_recorded_as_failed_with_the_registry_answer() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:t1");
    push_direct(&reg, &img, "alice/app:t2");

    let r = delete(&proxy, "alice:pw", "alice/app", "t1");
    assert_eq!(
        r.status, 400,
        "distribution 2.8 answers a delete by tag with 400: {r:?}"
    );
    assert_eq!(r.error_code(), "DIGEST_INVALID", "{r:?}");
    assert!(reg_has(&reg, "alice/app", "t1") && reg_has(&reg, "alice/app", &img.manifest_digest));

    let recs = records(&audit);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let (intent, outcome) = pair(&recs, &r.request_id());
    for rec in [intent, outcome] {
        assert_eq!(rec["target"], "manifest_by_tag", "{rec}");
        assert_eq!(rec["reference"], "t1", "{rec}");
        assert_eq!(rec["digest"], img.manifest_digest.as_str(), "{rec}");
        assert_eq!(tags_of(rec), ["t1", "t2"], "{rec}");
        assert_eq!(rec["user"], "alice", "{rec}");
        assert_eq!(rec["decision"], "allowed", "{rec}");
    }
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    assert_eq!(outcome["upstream_status"], 400, "{outcome}");
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "failures"), "1", "{report}");
    assert_eq!(report_field(&report, "deletes"), "0", "{report}");
}

// ---- 3. refused deletes --------------------------------------------------------------------

/// bob may not delete in alice's namespace: 403, and exactly one `denied` record naming
/// bob, the reason, outcome denied, no upstream status. DELETEs without valid credentials
/// (none, a wrong password, an unknown user, a malformed header, throttled) get
/// 401/400/429 and no record at all: nobody can fill the audit disk without an account. The manifest stays.
#[test]
fn refused_deletes_get_one_denied_record_unauthenticated_ones_none() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:v1");

    let before = now_utc();
    let r = delete(&proxy, "bob:pw2", "alice/app", &img.manifest_digest);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "DENIED", "{r:?}");
    let after = now_utc();
    for creds in ["", "alice:wrong", "mallory:pw", "alice:"] {
        for _ in 0..5 {
            // 401, or 429 once the throttle holds the wrong passwords back.
            let anon = delete(&proxy, creds, "alice/app", &img.manifest_digest);
            let want = if anon.status == 429 {
                "TOOMANYREQUESTS"
            } else {
                "UNAUTHORIZED"
            };
            assert!(matches!(anon.status, 401 | 429), "{creds:?}: {anon:?}");
            assert_eq!(anon.error_code(), want, "{anon:?}");
        }
    }
    let url = format!(
        "{}/v2/alice/app/manifests/{}",
        proxy.base, img.manifest_digest
    );
    let garbage = pcurl(
        &proxy,
        &[
            "-X",
            "DELETE",
            "-H",
            "Authorization: Basic !!!",
            "-A",
            &"x".repeat(200),
            &url,
        ],
    );
    assert!(matches!(garbage.status, 400 | 401), "{garbage:?}");
    assert!(reg_has(&reg, "alice/app", &img.manifest_digest) && reg_has(&reg, "alice/app", "v1"));

    let recs = records(&audit);
    assert_eq!(
        recs.len(),
        1,
        "unauthenticated requests were audited: {recs:#?}"
    );
    let rs = of_request(&recs, &r.request_id());
    assert_eq!(rs.len(), 1, "{rs:#?}");
    let d = rs[0];
    assert_eq!(d["phase"], "denied", "{d}");
    assert_eq!(d["decision"], "denied", "{d}");
    assert_eq!(d["outcome"], "denied", "{d}");
    assert_eq!(d["user"], "bob", "{d}");
    assert_eq!(d["client"], "127.0.0.1", "{d}");
    assert_eq!(d["repo"], "alice/app", "{d}");
    assert_eq!(d["target"], "manifest_by_digest", "{d}");
    assert_eq!(d["digest"], img.manifest_digest.as_str(), "{d}");
    assert!(d.get("upstream_status").is_none(), "{d}");
    assert_time(d, &before, &after);
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("denied:") && reason.contains("delete"),
        "the reason does not say what was refused: {reason}"
    );
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "denials"), "1", "{report}");
}

// ---- 4. fail-closed ----------------------------------------------------------------------

/// The audit file removed (the writer never creates it behind the operator's back), and
/// later replaced by a directory: DELETE gets 503 UNAVAILABLE and is not forwarded (the
/// registry still has the manifest). After SIGHUP deletes work again, in a new file whose
/// chain starts at the old file's last hash: `audit verify old new` passes over all files.
#[test]
fn an_unwritable_audit_file_refuses_deletes_until_sighup() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let imgs: Vec<Image> = ["one", "two", "three"]
        .iter()
        .map(|t| mkimage(&work.path().join("img"), 0, t, 1))
        .collect();
    for i in &imgs {
        push_direct(&reg, i, &format!("alice/app:{}", i.tag));
    }
    let r = delete(&proxy, "alice:pw", "alice/app", &imgs[0].manifest_digest);
    assert_eq!(r.status, 202, "{r:?}");
    let kept = work.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    let first = kept.join("audit.1.jsonl");
    std::fs::copy(&audit, &first).unwrap();

    // Gone (moved away by someone who did not signal the proxy).
    std::fs::remove_file(&audit).unwrap();
    let r = delete(&proxy, "alice:pw", "alice/app", &imgs[1].manifest_digest);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "UNAVAILABLE", "{r:?}");
    assert!(
        reg_has(&reg, "alice/app", &imgs[1].manifest_digest),
        "a delete whose intent could not be written was forwarded"
    );
    assert!(
        !audit.exists(),
        "the writer created a new audit file without SIGHUP"
    );

    signal(proxy.pid(), "HUP");
    wait_log(&proxy, "SIGHUP: the audit log starts a new file");
    let r = delete(&proxy, "alice:pw", "alice/app", &imgs[1].manifest_digest);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(!reg_has(&reg, "alice/app", &imgs[1].manifest_digest));
    let recs = records(&audit);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[0]["prev"].as_str().unwrap(), last_hash(&first));
    // Alone, the new file is a chain without its head: refused, unless told where it
    // continues from (the old file's end).
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(":1: the chain does not start at genesis"),
        "{report}"
    );
    let (code, report) = verify_with(&[&audit], &["--start", &end_of(&first)]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "chain starts at"), end_of(&first));
    let second = kept.join("audit.2.jsonl");
    std::fs::copy(&audit, &second).unwrap();

    // A directory where the file was.
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap();
    let r = delete(&proxy, "alice:pw", "alice/app", &imgs[2].manifest_digest);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.error_code(), "UNAVAILABLE", "{r:?}");
    assert!(reg_has(&reg, "alice/app", &imgs[2].manifest_digest));
    std::fs::remove_dir(&audit).unwrap();
    let hups = proxy.logs().matches("SIGHUP: the audit log").count();
    signal(proxy.pid(), "HUP");
    wait_for(Duration::from_secs(10), || {
        (proxy.logs().matches("SIGHUP: the audit log").count() > hups).then_some(())
    })
    .expect("the second SIGHUP was not taken");
    let r = delete(&proxy, "alice:pw", "alice/app", &imgs[2].manifest_digest);
    assert_eq!(r.status, 202, "{r:?}");
    assert!(!reg_has(&reg, "alice/app", &imgs[2].manifest_digest));

    let (code, report) = verify(&[&first, &second, &audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "records"), "6", "{report}");
    assert_eq!(report_field(&report, "deletes"), "3", "{report}");
    assert_eq!(
        report_field(&report, "chain starts at"),
        "genesis",
        "{report}"
    );
    // Out of order, the chain breaks where the files meet.
    let (code, report) = verify(&[&second, &first, &audit]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "{}:1: the chain does not start at genesis",
            second.display()
        )),
        "{report}"
    );
}
