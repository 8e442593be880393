//! The hash chain: complete and verifiable after kill -9, across rotations; edited,
//! removed, rewritten or cut lines fail `audit verify` naming file and line.

use super::*;

// ---- 5. kill -9 during a burst ---------------------------------------------------------

/// 200 distinct manifests, deleted through the proxy by 4 concurrent curl clients; the
/// proxy is killed with SIGKILL in the middle. `audit verify` passes (intents without
/// outcome are reported as unknown, and counted right), every manifest the registry no
/// longer has has an intent record, and every one recorded as deleted is gone. A restarted
/// proxy continues the same chain.
#[test]
fn kill_9_during_a_burst_of_deletes_leaves_a_verifiable_complete_log() {
    const N: usize = 200;
    const CLIENTS: usize = 4;
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let img = mkimage(&work.path().join("img"), 0, "base", 1);
    push_direct(&reg, &img, "alice/burst:base");
    let digests = put_variants(&reg, &img, "alice/burst", N);
    assert_eq!(digests.iter().collect::<HashSet<_>>().len(), N);

    let mut proxy = start_proxy(&reg, &audit, "");
    let pid = proxy.pid();
    let clients: Vec<_> = digests
        .chunks(N / CLIENTS)
        .map(|chunk| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--cacert"])
                .arg(&proxy.ca)
                .args(["-u", "alice:pw", "-X", "DELETE", "-w", "%{http_code}\\n"]);
            for d in chunk {
                cmd.arg(format!("{}/v2/alice/burst/manifests/{d}", proxy.base))
                    .args(["-o", "/dev/null"]);
            }
            std::thread::spawn(move || run(&mut cmd, STEP))
        })
        .collect();
    // Kill once a fifth of the deletes have their intent on disk.
    let start = Instant::now();
    loop {
        let n = std::fs::read(&audit)
            .map(|c| c.iter().filter(|&&b| b == b'\n').count())
            .unwrap_or(0);
        if n >= N / 5 * 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the burst did not get going: {n} lines\n{}",
            proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    signal(pid, "KILL");
    let codes: Vec<String> = clients
        .into_iter()
        .flat_map(|c| {
            let out = c.join().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let answered = codes.iter().filter(|c| *c == "202").count();
    assert!(
        codes.iter().all(|c| c == "202" || c == "000"),
        "answers other than 202 or none: {codes:?}"
    );
    let _ = proxy.terminate(Duration::from_secs(5)); // reaps the killed child

    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "audit verify after kill -9:\n{report}");
    let recs = records(&audit);
    let intents: HashMap<&str, &str> = recs
        .iter()
        .filter(|r| r["phase"] == "intent")
        .map(|r| {
            (
                r["digest"].as_str().unwrap(),
                r["request_id"].as_str().unwrap(),
            )
        })
        .collect();
    let outcomes: HashMap<&str, &Value> = recs
        .iter()
        .filter(|r| r["phase"] == "outcome")
        .map(|r| (r["request_id"].as_str().unwrap(), r))
        .collect();
    let unknown = intents
        .values()
        .filter(|id| !outcomes.contains_key(*id))
        .count();
    assert_eq!(
        report_field(&report, "unknown outcomes"),
        unknown.to_string(),
        "{report}"
    );
    let gone: Vec<&String> = digests
        .iter()
        .filter(|d| !reg_has(&reg, "alice/burst", d))
        .collect();
    for d in &gone {
        assert!(
            intents.contains_key(d.as_str()),
            "{d} was deleted from the registry but has no intent record"
        );
    }
    for (d, id) in &intents {
        if outcomes.get(id).is_some_and(|o| o["outcome"] == "deleted") {
            assert!(
                !reg_has(&reg, "alice/burst", d),
                "{d} recorded deleted but present"
            );
        }
    }
    assert!(
        answered <= gone.len(),
        "{answered} answered 202, {} gone",
        gone.len()
    );
    assert!(
        !gone.is_empty() && gone.len() < N,
        "the kill was not in the middle of the burst: {} of {N} gone",
        gone.len()
    );
    eprintln!(
        "kill -9 after {:?}: {} of {N} deleted, {} answered 202, {} intents, {unknown} unknown outcomes",
        start.elapsed(),
        gone.len(),
        answered,
        intents.len()
    );

    // A restart reads where the chain ended and continues it.
    let proxy = start_proxy(&reg, &audit, "");
    let left = digests
        .iter()
        .find(|d| reg_has(&reg, "alice/burst", d))
        .unwrap();
    let r = delete(&proxy, "alice:pw", "alice/burst", left);
    assert_eq!(r.status, 202, "{r:?}");
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "audit verify after the restart:\n{report}");
    // A kill between a batch and its sidecar leaves the file ahead of the sidecar: the
    // restart records that (a `chain_head` record) before the delete's two.
    let heads = records(&audit)
        .iter()
        .filter(|r| r["phase"] == "chain_head")
        .count();
    assert!(heads <= 1, "{heads} chain heads");
    assert_eq!(
        report_field(&report, "records"),
        (recs.len() + heads + 2).to_string(),
        "{report}"
    );
}

// ---- 6. tampering ----------------------------------------------------------------------

/// F4, the review's attack on the real binary: alice deletes a blob, the proxy is killed
/// (kill -9), and without the key her outcome (the last line) becomes `failed`/404, `seq`
/// and `prev` untouched. `audit verify` names that line (before, it said intact, as no
/// `prev` covers a last line), and the proxy refuses to start on the file rather than
/// chain new records onto the forgery; with the sidecar removed too. The untouched file
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_last_line_fails_verify_and_the_next_start() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(&upstream.url, &audit, "", "");
    assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", 1).status, 202);
    signal(proxy.pid(), "KILL");
    let _ = proxy.terminate(Duration::from_secs(5)); // reaps the killed child
    let good = std::fs::read_to_string(&audit).unwrap();
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    let forged = good
        .replace("\"outcome\":\"deleted\"", "\"outcome\":\"failed\"")
        .replace("\"upstream_status\":202", "\"upstream_status\":404");
    assert_ne!(forged, good);
    std::fs::write(&audit, &forged).unwrap();
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "BROKEN: {}:2: the record's own MAC does not match",
            audit.display()
        )),
        "{report}"
    );
    let config = proxy.config_path.display().to_string();
    let serve = || run_cli_for(&["serve", "--config", &config], work.path(), STEP);
    let (out, exited) = serve();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        exited && !out.status.success(),
        "started on a forged file: {err}"
    );
    assert!(err.contains("the record's own MAC does not match"), "{err}");
    let side = audit.with_file_name(".audit.jsonl.last");
    std::fs::remove_file(&side).unwrap();
    let (out, exited) = serve();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        exited && !out.status.success(),
        "started on a forged file: {err}"
    );
    assert!(err.contains("the record's own MAC does not match"), "{err}");
    assert_eq!(std::fs::read_to_string(&audit).unwrap(), forged);
    // The file as the proxy left it starts (the server runs until the deadline).
    std::fs::write(&audit, &good).unwrap();
    let (_, exited) = run_cli_for(
        &["serve", "--config", &config],
        work.path(),
        Duration::from_secs(3),
    );
    assert!(!exited, "the untouched file did not start");
}

/// One edited line, one removed line: `audit verify` exits 1 and names file:line where
/// the chain breaks (the edited line, by its own MAC; the line that now follows the gap).
/// The untouched file passes.
#[test]
fn edited_and_removed_lines_fail_verify_naming_file_and_line() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    for t in ["one", "two", "three"] {
        let img = mkimage(&work.path().join("img"), 0, t, 1);
        push_direct(&reg, &img, &format!("alice/app:{t}"));
        let r = delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest);
        assert_eq!(r.status, 202, "{r:?}");
    }
    let lines = lines_of(&audit);
    assert_eq!(lines.len(), 6);
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");

    let edited = work.path().join("edited.jsonl");
    let mut l = lines.clone();
    assert!(l[1].contains("\"user\":\"alice\""));
    l[1] = l[1].replace("\"user\":\"alice\"", "\"user\":\"mallory\"");
    std::fs::write(&edited, l.join("\n") + "\n").unwrap();
    let (code, report) = verify(&[&edited]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!(
            "BROKEN: {}:2: the record's own MAC does not match",
            edited.display()
        )),
        "{report}"
    );

    let removed = work.path().join("removed.jsonl");
    let mut l = lines.clone();
    l.remove(2);
    std::fs::write(&removed, l.join("\n") + "\n").unwrap();
    let (code, report) = verify(&[&removed]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("BROKEN: {}:3: chain broken", removed.display())),
        "{report}"
    );
}

// ---- 7. rotation -------------------------------------------------------------------------

/// DELETEs every digest of `repo` through the proxy as alice: `clients` concurrent curl
/// processes (keep-alive), each taking its share in order; asserts every answer is 202.
fn delete_concurrently(proxy: &Proxy, repo: &str, digests: &[String], clients: usize) {
    let handles: Vec<_> = digests
        .chunks(digests.len().div_ceil(clients))
        .map(|chunk| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--max-time", "60", "--cacert"])
                .arg(&proxy.ca)
                .args(["-u", "alice:pw", "-X", "DELETE", "-w", "%{http_code}\\n"]);
            for d in chunk {
                cmd.arg(format!("{}/v2/{repo}/manifests/{d}", proxy.base))
                    .args(["-o", "/dev/null"]);
            }
            std::thread::spawn(move || run(&mut cmd, STEP))
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        let codes = ok(&out, "concurrent deletes");
        assert!(codes.lines().all(|c| c == "202"), "{codes}");
    }
}

/// Rotated files `audit.jsonl.*` in `dir`, oldest first (name order).
fn rotated_files(dir: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.jsonl.")
        })
        .collect();
    rotated.sort();
    rotated
}

/// Runs `sequential` deletes one at a time, then the rest with 8 clients at once, with
/// `rotate_bytes`; checks the files together: every delete's two records are there, the
/// chain is intact from genesis across them. Returns the folder (kept alive) and the
/// rotated files, oldest first.
fn rotation_run(
    rotate_bytes: u64,
    sequential: usize,
    concurrent: usize,
    log_in: Option<&Path>,
) -> Option<(tempfile::TempDir, Vec<PathBuf>)> {
    let reg = tools()?;
    let work = match log_in {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let dir = work.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let img = mkimage(&work.path().join("img"), 0, "base", 1);
    push_direct(&reg, &img, "alice/rot:base");
    let digests = put_variants(&reg, &img, "alice/rot", sequential + concurrent);
    let proxy = start_proxy(&reg, &audit, &format!("  rotate_bytes: {rotate_bytes}\n"));

    for d in &digests[..sequential] {
        let r = delete(&proxy, "alice:pw", "alice/rot", d);
        assert_eq!(r.status, 202, "{r:?}");
    }
    delete_concurrently(&proxy, "alice/rot", &digests[sequential..], 8);
    for d in &digests {
        assert!(!reg_has(&reg, "alice/rot", d));
    }

    let rotated = rotated_files(&dir);
    let mut all: Vec<&Path> = rotated.iter().map(PathBuf::as_path).collect();
    if audit.exists() {
        all.push(&audit);
    }
    // Checkpoints come every 1000 records by default: count the requests' records.
    let total: usize = all
        .iter()
        .flat_map(|f| records(f))
        .filter(|r| r["phase"] == "intent" || r["phase"] == "outcome")
        .count();
    let (code, report) = verify(&all);
    assert_eq!(
        total,
        2 * digests.len(),
        "records lost in rotation ({} rotated files): {report}",
        rotated.len()
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report_field(&report, "chain starts at"),
        "genesis",
        "{report}"
    );
    assert_eq!(
        report_field(&report, "deletes"),
        digests.len().to_string(),
        "{report}"
    );
    // The sidecar keeps where the chain ends (for a restart after rotation): `SEQ HASH MAC`.
    let sidecar = std::fs::read_to_string(dir.join(".audit.jsonl.last")).unwrap();
    let fields: Vec<&str> = sidecar.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "{sidecar}");
    assert_eq!(
        format!("{}:{}", fields[0], fields[1]),
        end_of(all.last().unwrap())
    );
    drop(proxy);
    Some((work, rotated))
}

/// `rotate_bytes: 2000`: deletes one at a time and then 8 at once leave rotated files
/// `audit.jsonl.<timestamp>` next to the file; each went past 2000 bytes before it was
/// rotated; together (oldest first) they verify from genesis and hold every record; one
/// file alone verifies only when told it continues from where its predecessor ends.
#[test]
fn rotation_by_size_keeps_one_chain_and_every_record() {
    let Some((_work, rotated)) = rotation_run(2000, 6, 24, None) else {
        return;
    };
    assert!(rotated.len() >= 3, "rotated files: {rotated:?}");
    for f in &rotated {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len >= 2000, "{} rotated at {len} bytes", f.display());
    }
    let (code, report) = verify(&[&rotated[1]]);
    assert_eq!(code, 1, "a file without its predecessor passed: {report}");
    let (code, report) = verify_with(&[&rotated[1]], &["--start", &end_of(&rotated[0])]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report_field(&report, "chain starts at"),
        end_of(&rotated[0])
    );
}

/// A rotation after every batch (`rotate_bytes: 1`) under 8 concurrent clients: batches
/// land in the same millisecond, and a rotated file must never replace an earlier one
/// (same timestamp name): no record is lost, the chain stays intact. The audit folder is
/// on tmpfs when there is one.
#[test]
fn rotations_in_the_same_millisecond_lose_nothing() {
    // On tmpfs an fsync costs nothing, so consecutive batches (and their rotations) come
    // well within one millisecond; on a disk they do sometimes.
    let shm = Path::new("/dev/shm");
    let log_in = shm.is_dir().then_some(shm);
    let Some((_work, rotated)) = rotation_run(1, 0, 120, log_in) else {
        return;
    };
    assert!(rotated.len() >= 10, "rotated files: {rotated:?}");
}

/// Item 7, the forgery of the issue: drop the first 150 lines, turn bob's delete into
/// alice's from another address, recompute every `prev` (plain SHA-256, or an HMAC
/// under a guessed key) from genesis: `audit verify --key-file` fails each, as it does
/// the head cut alone. And a checkpoint from the proxy's log finds a cut tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_or_cut_chain_fails_verify() {
    let upstream = fake_registry(Duration::ZERO).await;
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let mut proxy = proxy_for(&upstream.url, &audit, "  checkpoint_every: 50\n", "");
    for i in 0..80 {
        assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", i).status, 202);
    }
    assert_eq!(delete_blob(&proxy, "bob:pw2", "bob/app", 1).status, 202);
    for i in 80..85 {
        assert_eq!(delete_blob(&proxy, "alice:pw", "alice/app", i).status, 202);
    }
    assert!(proxy.terminate(Duration::from_secs(20)).is_some());
    let (code, report) = verify(&[&audit]);
    assert_eq!(code, 0, "{report}");
    let lines = lines_of(&audit);

    let forge = |hash: &dyn Fn(&str) -> String| -> String {
        let mut prev = "0".repeat(64);
        let mut out = String::new();
        for (n, l) in lines[150..].iter().enumerate() {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v["user"] == "bob" {
                v["user"] = "alice".into();
                v["client"] = "198.51.100.4".into();
            }
            v["seq"] = (n as u64 + 1).into();
            v["prev"] = prev.clone().into();
            let line = v.to_string();
            prev = hash(&line);
            out.push_str(&line);
            out.push('\n');
        }
        out
    };
    let sha = |l: &str| sha256_hex(l.as_bytes());
    let guessed = registry_guard::audit::Chain::keyed(b"a guess at the audit key........");
    let wrong_key = |l: &str| guessed.hash(l.as_bytes());
    let head_cut: String = lines[150..].iter().map(|l| format!("{l}\n")).collect();
    for (name, text) in [
        ("sha256.jsonl", forge(&sha)),
        ("wrong-key.jsonl", forge(&wrong_key)),
        ("head-cut.jsonl", head_cut),
    ] {
        assert!(text.contains("198.51.100.4") || name == "head-cut.jsonl");
        let f = work.path().join(name);
        std::fs::write(&f, text).unwrap();
        let (code, report) = verify(&[&f]);
        assert_eq!(code, 1, "{name} passed:\n{report}");
        assert!(
            report.contains(&format!("BROKEN: {}:", f.display())),
            "{report}"
        );
    }

    // The checkpoints the proxy logged: the last one (at shutdown) is the file's end.
    let logged: Vec<String> = proxy
        .logs()
        .lines()
        .filter(|l| l.contains("audit checkpoint"))
        .filter_map(|l| l.split("checkpoint=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(
        logged.len() >= 4,
        "checkpoints logged: {logged:?}\n{}",
        proxy.logs()
    );
    let last = logged.last().unwrap();
    assert_eq!(*last, end_of(&audit));
    let (code, report) = verify_with(
        &[&audit],
        &["--checkpoint", last, "--checkpoint", &logged[0]],
    );
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        report_field(&report, "checkpoints matched"),
        "2 of 2",
        "{report}"
    );
    let cut = work.path().join("tail-cut.jsonl");
    let kept: String = lines[..lines.len() - 4]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cut, kept).unwrap();
    let (code, report) = verify(&[&cut]);
    assert_eq!(
        code, 0,
        "without a checkpoint a cut tail is a shorter valid chain: {report}"
    );
    let (code, report) = verify_with(&[&cut], &["--checkpoint", last]);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("records were cut from the end"), "{report}");
}

// ---- 8. the chain across restarts (issue 13, point 4) ----------------------------------

/// logrotate without SIGHUP, twice. While the proxy runs, `audit.jsonl` is renamed to
/// `audit.jsonl.1` and an empty one created (logrotate's `create`): the next deletes go
/// into the new file, continuing the chain. The proxy is killed; logrotate rotates again
/// (`.1` → `.2`, the file → `.1`, a new empty one), and the sidecar is an older one (a
/// crash between a batch and its sidecar; a restore). At the restart the chain continues
/// from the newest rotated file's last record, not from the sidecar, and a `chain_head`
/// record says so (file, its end, the sidecar's, where it continues); the three files
/// verify as one chain from genesis. A second restart, with file and sidecar agreeing,
/// records nothing.
#[test]
fn a_restart_after_logrotate_without_sighup_continues_from_the_files() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let audit = dir.join("audit.jsonl");
    let side = dir.join(".audit.jsonl.last");
    let img = mkimage(&work.path().join("img"), 0, "base", 1);
    push_direct(&reg, &img, "alice/lr:base");
    let digests = put_variants(&reg, &img, "alice/lr", 5);
    let mut proxy = start_proxy(&reg, &audit, "");
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/lr", &digests[0]).status,
        202
    );
    let stale = std::fs::read(&side).unwrap();
    // logrotate (create, no postrotate SIGHUP) while the proxy runs.
    let (one, two) = (dir.join("audit.jsonl.1"), dir.join("audit.jsonl.2"));
    std::fs::rename(&audit, &one).unwrap();
    std::fs::write(&audit, "").unwrap();
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/lr", &digests[1]).status,
        202
    );
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/lr", &digests[2]).status,
        202
    );
    signal(proxy.pid(), "KILL");
    let _ = proxy.terminate(Duration::from_secs(5));
    let end = end_of(&audit);
    // The next rotation, with the proxy down; an older sidecar put back.
    std::fs::rename(&one, &two).unwrap();
    std::fs::rename(&audit, &one).unwrap();
    std::fs::write(&audit, "").unwrap();
    std::fs::write(&side, &stale).unwrap();

    let proxy = start_proxy(&reg, &audit, "");
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/lr", &digests[3]).status,
        202
    );
    let recs = records(&audit);
    assert_eq!(recs[0]["phase"], "chain_head", "{recs:#?}");
    assert_eq!(recs[0]["file"], one.display().to_string());
    assert_eq!(recs[0]["file_end"], end);
    assert_eq!(recs[0]["continues_from"], end);
    assert_eq!(
        recs[0]["sidecar_end"],
        format!("2:{}", &end_of_bytes(&stale))
    );
    assert!(
        recs[0]["reason"]
            .as_str()
            .unwrap()
            .contains("after the sidecar's record 2"),
        "{:#?}",
        recs[0]
    );
    let (code, report) = verify(&[&two, &one, &audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "chain starts at"), "genesis");
    assert_eq!(report_field(&report, "deletes"), "4");
    assert!(report.contains("chain heads: 1"), "{report}");
    drop(proxy);

    // File and sidecar agree now: the next start records no chain head.
    let proxy = start_proxy(&reg, &audit, "");
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/lr", &digests[4]).status,
        202
    );
    let heads = records(&audit)
        .iter()
        .filter(|r| r["phase"] == "chain_head")
        .count();
    assert_eq!(heads, 1);
    let (code, report) = verify(&[&two, &one, &audit]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report_field(&report, "deletes"), "5");
}

/// The `SEQ:HASH` hash part of a sidecar's bytes (`SEQ HASH MAC`).
fn end_of_bytes(sidecar: &[u8]) -> String {
    let text = String::from_utf8_lossy(sidecar);
    text.split_whitespace().nth(1).unwrap().to_owned()
}
