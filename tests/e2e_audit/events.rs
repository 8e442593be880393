//! Access events (issue 13, point 1): `audit.events: [push, pull, login]` against the
//! real registry, with skopeo and curl: what each kind records, what is not an event
//! (HEAD, blob GETs, requests a cached verification lets through), that they share the
//! chain with deletes (`audit verify`), and that a queue that cannot keep up or a write
//! that fails drops them — counted, summarized — while deletes are never dropped.

use super::*;
use common::metrics::scrape;

const EVENTS: &str = "  events: [push, pull, login]\n";

/// Access records of `target` (`manifest_push`, `manifest_pull`, `login`).
fn access<'a>(recs: &'a [Value], target: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["phase"] == "access" && r["target"] == target)
        .collect()
}

/// Every access record names user, client, request id, time, and continues the chain.
#[test]
fn push_pull_and_login_events_with_skopeo_and_curl() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, EVENTS);
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    let manifest = img.manifest();
    let media_type = serde_json::from_slice::<Value>(&manifest).unwrap()["mediaType"]
        .as_str()
        .unwrap()
        .to_owned();

    // A push: skopeo puts the manifest by tag.
    push_through(&proxy, &img, "alice/app:v1", Some("alice:pw"));
    let recs = records(&audit);
    let pushes = access(&recs, "manifest_push");
    assert_eq!(pushes.len(), 1, "{recs:#?}");
    let p = pushes[0];
    assert_eq!(
        (
            &p["user"],
            &p["client"],
            &p["method"],
            &p["repo"],
            &p["reference"]
        ),
        (
            &Value::from("alice"),
            &Value::from("127.0.0.1"),
            &Value::from("PUT"),
            &Value::from("alice/app"),
            &Value::from("v1")
        ),
        "{p:#}"
    );
    assert_eq!(p["digest"], img.manifest_digest.as_str(), "{p:#}");
    assert_eq!(p["size"], manifest.len() as u64, "{p:#}");
    assert_eq!(p["media_type"], media_type.as_str(), "{p:#}");
    assert_eq!(
        (&p["upstream_status"], &p["outcome"]),
        (&Value::from(201), &Value::from("pushed"))
    );
    assert!(
        p["user_agent"].as_str().unwrap().contains("skopeo"),
        "{p:#}"
    );
    // skopeo's many requests as alice from one address: one login.
    let logins = access(&recs, "login");
    assert_eq!(logins.len(), 1, "{logins:#?}");
    assert_eq!(
        (
            &logins[0]["user"],
            &logins[0]["outcome"],
            &logins[0]["decision"]
        ),
        (
            &Value::from("alice"),
            &Value::from("logged_in"),
            &Value::from("allowed")
        )
    );
    // Blob uploads, HEADs: no events.
    assert_eq!(recs.len(), 2, "{recs:#?}");

    // A pull by tag (skopeo) and by digest (curl); HEAD and a blob GET are no events.
    let out = skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        "--src-cert-dir",
        proxy.cert_dir.to_str().unwrap(),
        "--src-creds",
        "alice:pw",
        &format!("docker://{}/alice/app:v1", proxy.addr),
        &format!("oci:{}:pulled", work.path().join("pulled").display()),
    ]);
    ok(&out, "skopeo copy (pull)");
    let by_digest = format!(
        "{}/v2/alice/app/manifests/{}",
        proxy.base, img.manifest_digest
    );
    let accept = format!("Accept: {ACCEPT}");
    assert_eq!(
        pcurl(&proxy, &["-u", "alice:pw", "-H", &accept, &by_digest]).status,
        200
    );
    assert_eq!(
        pcurl(&proxy, &["-u", "alice:pw", "-I", "-H", &accept, &by_digest]).status,
        200
    );
    let blob = format!("{}/v2/alice/app/blobs/{}", proxy.base, img.layer_digest);
    assert_eq!(pcurl(&proxy, &["-u", "alice:pw", &blob]).status, 200);
    let recs = records(&audit);
    let pulls = access(&recs, "manifest_pull");
    assert_eq!(pulls.len(), 2, "{pulls:#?}");
    for (pull, reference) in pulls.iter().zip(["v1", img.manifest_digest.as_str()]) {
        assert_eq!(pull["method"], "GET");
        assert_eq!(pull["reference"], reference, "{pull:#}");
        assert_eq!(pull["digest"], img.manifest_digest.as_str(), "{pull:#}");
        assert_eq!(pull["size"], manifest.len() as u64, "{pull:#}");
        assert_eq!(pull["media_type"], media_type.as_str(), "{pull:#}");
        assert_eq!(
            (&pull["outcome"], &pull["upstream_status"]),
            (&Value::from("pulled"), &Value::from(200))
        );
    }
    // curl's request id is the one it was answered with.
    assert_eq!(
        access(&recs, "login").len(),
        1,
        "alice's later requests are no logins"
    );

    // A wrong password: a failed login (every one: the throttle bounds them). bob's
    // first request is his login; his pull of alice's repository is denied.
    let v2 = format!("{}/v2/", proxy.base);
    assert_eq!(pcurl(&proxy, &["-u", "alice:wrong", &v2]).status, 401);
    let by_tag = format!("{}/v2/alice/app/manifests/v1", proxy.base);
    assert_eq!(
        pcurl(&proxy, &["-u", "bob:pw2", "-H", &accept, &by_tag]).status,
        403
    );
    // No credentials: no login event, no record.
    assert_eq!(pcurl(&proxy, &[&by_tag]).status, 401);
    let recs = records(&audit);
    let logins = access(&recs, "login");
    assert_eq!(logins.len(), 3, "{logins:#?}");
    assert_eq!(
        (
            &logins[1]["user"],
            &logins[1]["outcome"],
            &logins[1]["decision"]
        ),
        (
            &Value::from("alice"),
            &Value::from("failed"),
            &Value::from("denied")
        )
    );
    assert_eq!(
        (&logins[2]["user"], &logins[2]["outcome"]),
        (&Value::from("bob"), &Value::from("logged_in"))
    );
    let denied = access(&recs, "manifest_pull");
    let denied = denied.last().unwrap();
    assert_eq!(
        (&denied["user"], &denied["decision"], &denied["outcome"]),
        (
            &Value::from("bob"),
            &Value::from("denied"),
            &Value::from("denied")
        ),
        "{denied:#}"
    );

    // A delete is still fail-closed, in the same chain; `audit verify` counts it all.
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest).status,
        202
    );
    let recs = records(&audit);
    assert_eq!(recs.iter().filter(|r| r["phase"] == "intent").count(), 1);
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "deletes"), "1");
    assert_eq!(report_field(&report, "pushes"), "1");
    assert_eq!(report_field(&report, "denials"), "1");
    assert_eq!(
        report_field(&report, "access events"),
        "2 pulls, 2 logins, 1 failed logins, 0 dropped"
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "{r:#}");
    }
    if let Ok(to) = std::env::var("RG_SAMPLE_AUDIT") {
        std::fs::copy(&audit, to).unwrap();
    }
}

/// Without `audit.events` nothing but deletes is recorded (pushes, pulls, logins not).
#[test]
fn without_events_only_deletes_are_recorded() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_through(&proxy, &img, "alice/app:v1", Some("alice:pw"));
    let by_tag = format!("{}/v2/alice/app/manifests/v1", proxy.base);
    assert_eq!(
        pcurl(
            &proxy,
            &[
                "-u",
                "alice:pw",
                "-H",
                &format!("Accept: {ACCEPT}"),
                &by_tag
            ]
        )
        .status,
        200
    );
    assert_eq!(pcurl(&proxy, &["-u", "alice:wrong", &by_tag]).status, 401);
    assert_eq!(std::fs::metadata(&audit).unwrap().len(), 0);
}

/// 8 curl clients pull 400 times through a queue of one event: whatever the queue could
/// not take is dropped, never waited for — and accounted for exactly: the pull records
/// plus the counts of the `dropped_summary` records equal the pulls made, and so does
/// `registry_guard_audit_dropped_total{kind="pull"}` with the records. Then the audit
/// file is removed: pulls still answer 200 (never fail-closed), their events count as
/// dropped, a delete is refused 503 (fail-closed, never dropped); once the file is back
/// the summary of the lost pulls is written, and the chain verifies.
#[test]
fn pull_events_are_dropped_and_counted_never_waited_for() {
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 50;
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut proxy = proxy_for(
        &reg.url,
        &audit,
        "  events: [pull]\n  queue: 1\n",
        &format!("metrics:\n  listen: {metrics}\n"),
    );
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_through(&proxy, &img, "alice/app:v1", Some("alice:pw"));
    let url = format!("{}/v2/alice/app/manifests/v1", proxy.base);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--cacert"])
                .arg(&proxy.ca)
                .args([
                    "-u",
                    "alice:pw",
                    "-H",
                    &format!("Accept: {ACCEPT}"),
                    "-w",
                    "%{http_code}\\n",
                ]);
            for _ in 0..PER_CLIENT {
                cmd.arg(&url).args(["-o", "/dev/null"]);
            }
            std::thread::spawn(move || run(&mut cmd, STEP))
        })
        .collect();
    for c in clients {
        let out = c.join().unwrap();
        let codes = ok(&out, "pulls");
        assert!(codes.lines().all(|c| c == "200"), "{codes}");
    }
    let dropped_metric = || {
        let m = scrape(metrics);
        m.text
            .lines()
            .find_map(|l| l.strip_prefix("registry_guard_audit_dropped_total{kind=\"pull\"} "))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let dropped = dropped_metric();

    // The file goes away: pulls still work, their events are lost and counted; a
    // delete is refused.
    let aside = work.path().join("aside.jsonl");
    std::fs::rename(&audit, &aside).unwrap();
    for _ in 0..3 {
        let r = pcurl(
            &proxy,
            &["-u", "alice:pw", "-H", &format!("Accept: {ACCEPT}"), &url],
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest).status,
        503
    );
    // The three batches failed (each pull woke the writer): counted by the writer.
    wait_for(Duration::from_secs(10), || {
        (dropped_metric() == dropped + 3).then_some(())
    })
    .unwrap_or_else(|| panic!("dropped {} after 3 lost, was {dropped}", dropped_metric()));
    std::fs::rename(&aside, &audit).unwrap();
    let r = pcurl(
        &proxy,
        &["-u", "alice:pw", "-H", &format!("Accept: {ACCEPT}"), &url],
    );
    assert_eq!(r.status, 200);
    let _ = proxy.terminate(Duration::from_secs(10)); // the last summaries at shutdown

    let recs = records(&audit);
    let pulls = access(&recs, "manifest_pull").len() as u64;
    let summarized: u64 = recs
        .iter()
        .filter(|r| r["phase"] == "dropped_summary")
        .inspect(|r| assert_eq!(r["kind"], "pull", "{r:#}"))
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    let made = (CLIENTS * PER_CLIENT + 4) as u64;
    assert_eq!(
        pulls + summarized,
        made,
        "{pulls} recorded, {summarized} summarized"
    );
    assert_eq!(summarized, dropped + 3);
    eprintln!("{pulls} pull events recorded, {summarized} dropped (queue of 1, {CLIENTS} clients)");
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains(&format!("{summarized} dropped")),
        "{report}"
    );
}

/// `audit show` picks records by kind, user, repository, digest, address and time, as
/// a table or as the file's own lines (JSON Lines); `--follow` prints records as they
/// are written; `audit stats` counts by user and repository. Against the real registry,
/// with pull, push and login events on.
#[test]
fn show_filters_formats_follow_and_stats() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, EVENTS);
    let layout = work.path().join("img");
    let (x, y) = (mkimage(&layout, 0, "x", 1), mkimage(&layout, 0, "y", 1));
    push_through(&proxy, &x, "alice/app:x", Some("alice:pw"));
    push_direct(&reg, &y, "bob/lib:y");
    let accept = format!("Accept: {ACCEPT}");
    let get = |creds: &str, path: &str| {
        pcurl(
            &proxy,
            &["-u", creds, "-H", &accept, &format!("{}{path}", proxy.base)],
        )
        .status
    };
    assert_eq!(get("alice:pw", "/v2/alice/app/manifests/x"), 200);
    assert_eq!(get("bob:pw2", "/v2/bob/lib/manifests/y"), 200);
    assert_eq!(get("bob:pw2", "/v2/bob/lib/manifests/y"), 200);
    assert_eq!(get("bob:bad", "/v2/"), 401);
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &x.manifest_digest).status,
        202
    );
    let file = audit.display().to_string();
    let show = |args: &[&str]| {
        let mut all = vec!["audit", "show", file.as_str()];
        all.extend(args);
        let (code, out, err) = cli(&all);
        assert_eq!(code, 0, "{args:?}: {err}");
        out
    };
    let jsonl = |args: &[&str]| -> Vec<Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "jsonl"]);
        show(&a)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // JSON Lines are the file's lines, byte for byte.
    assert_eq!(
        show(&["--format", "jsonl"]),
        std::fs::read_to_string(&audit).unwrap()
    );
    let pulls = jsonl(&["--kind", "pull"]);
    assert_eq!(pulls.len(), 3);
    assert!(pulls.iter().all(|r| r["target"] == "manifest_pull"));
    let bobs = jsonl(&["--kind", "pull,login", "--user", "bob"]);
    assert_eq!(
        bobs.iter()
            .map(|r| r["target"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["login", "manifest_pull", "manifest_pull", "login"]
    );
    let of_x = jsonl(&["--digest", &x.manifest_digest]);
    assert_eq!(
        of_x.iter()
            .map(|r| r["phase"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["access", "access", "intent", "outcome"],
        "{of_x:#?}"
    );
    // bob's two pulls, and his login (made on a request for bob/lib).
    assert_eq!(jsonl(&["--repo", "bob/lib"]).len(), 3);
    assert_eq!(
        jsonl(&["--address", "127.0.0.0/8"]).len(),
        records(&audit).len()
    );
    assert!(jsonl(&["--address", "192.0.2.1"]).is_empty());
    let mid = records(&audit)[3]["time"].as_str().unwrap().to_owned();
    let before = jsonl(&["--until", &mid]);
    assert!(before
        .iter()
        .all(|r| r["time"].as_str().unwrap() < mid.as_str()));
    let after = jsonl(&["--since", &mid]);
    assert_eq!(before.len() + after.len(), records(&audit).len());
    // The table: one row per record, the access kind in the PHASE column.
    let table = show(&["--kind", "pull", "--user", "bob"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .all(|r| r.contains(" pull ") && r.contains("bob/lib")),
        "{table}"
    );
    // A wrong filter names itself.
    let (code, _, err) = cli(&["audit", "show", &file, "--kind", "blob"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--kind \"blob\""), "{err}");

    // Stats, by user and repository.
    let (code, out, err) = cli(&["audit", "stats", &file, "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let stats: Value = serde_json::from_str(&out).unwrap();
    let a = &stats["users"]["alice"];
    assert_eq!(
        (&a["pushes"], &a["pulls"], &a["deletes"], &a["logins"]),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{stats:#}"
    );
    let b = &stats["users"]["bob"];
    assert_eq!(
        (&b["pulls"], &b["logins"], &b["failed_logins"]),
        (&2.into(), &1.into(), &1.into()),
        "{stats:#}"
    );
    assert_eq!(stats["repos"]["bob/lib"]["pulls"], 2, "{stats:#}");
    assert_eq!(stats["repos"]["alice/app"]["deletes"], 1, "{stats:#}");
    let (code, out, _) = cli(&["audit", "stats", &file, "--since", &mid]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("USER") && out.contains("REPOSITORY"),
        "{out}"
    );

    // --follow: a record written after it started is printed.
    let mut follower = Command::new(bin())
        .args([
            "audit", "show", &file, "--follow", "--format", "jsonl", "--kind", "pull", "--user",
            "alice",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the existing pull");
    assert!(first.contains("\"manifest_pull\""), "{first}");
    push_through(&proxy, &y, "alice/app:y", Some("alice:pw"));
    assert_eq!(get("alice:pw", "/v2/alice/app/manifests/y"), 200);
    let next = rx.recv_timeout(Duration::from_secs(10));
    let _ = follower.kill();
    let _ = follower.wait();
    let next: Value = serde_json::from_str(&next.expect("--follow printed nothing new")).unwrap();
    assert_eq!(
        (&next["target"], &next["reference"]),
        (&Value::from("manifest_pull"), &Value::from("y"))
    );
}
