//! End to end: the delete audit trail (issue 5), with the registry-guard binary in front
//! of Debian's docker-registry 2.8, driven by skopeo, curl and the seed's Python script.
//!
//! What is checked is the file people read after the fact (`audit.file`, JSON Lines) and
//! the registry itself (asked directly over plain HTTP, never through the proxy): who
//! deleted what, from where, with which tags, what the registry answered; denied and
//! failed attempts; fail-closed when the file cannot be written; a hash chain that
//! survives kill -9, rotation and SIGHUP and that `registry-guard audit verify` checks.
//!
//! Images come from `tests/e2e/mkimage.py` (0 MiB layers: only the manifests matter here).
//! Every external command runs under a deadline and is killed by its pid past it; every
//! process started is stopped by its pid. A missing docker-registry, skopeo or Debian
//! python3(-requests) skips a test, or fails it under `RG_REQUIRE_REAL=1` / `CI=true`.
mod common;
use common::e2e::*;
use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every manifest type, so a HEAD finds whatever a reference points at.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// Everyone may do everything in their own namespace, nothing elsewhere.
const RULES: &str =
    "  rules:\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push, delete]\n";

// ---- processes ---------------------------------------------------------------------

/// docker-registry, skopeo and python3 (for mkimage.py), or skip.
fn tools() -> Option<Registry> {
    let reg = Registry::start()?;
    (have("skopeo") && have("curl") && have_python(false)).then_some(reg)
}

/// `registry-guard ARGS` (bounded); returns (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = run(Command::new(bin()).args(args), STEP);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit key the tests' proxies chain with: `audit.key` in the audit file's folder
/// or the nearest folder above it (copies of a file live below the original's folder).
fn key_for(file: &Path) -> PathBuf {
    file.ancestors()
        .skip(1)
        .map(|d| d.join("audit.key"))
        .find(|k| k.exists())
        .unwrap_or_else(|| panic!("no audit.key above {}", file.display()))
}

/// `audit verify --key-file KEY FILES...`: (exit code, stdout).
fn verify(files: &[&Path]) -> (i32, String) {
    verify_with(files, &[])
}

/// `audit verify --key-file KEY EXTRA... FILES...`: (exit code, stdout).
fn verify_with(files: &[&Path], extra: &[&str]) -> (i32, String) {
    let key = key_for(files[0]);
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--key-file".to_owned(),
        key.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = cli(&args);
    (code, format!("{out}{err}"))
}

/// A `name: value` line of `audit verify`'s report.
fn report_field<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name:?} in the verify report:\n{report}"))
}

// ---- the proxy -----------------------------------------------------------------------

/// alice and bob, each owning their namespace, auditing into `audit_file` with `more`
/// extra keys under `audit:` (two-space indented).
fn start_proxy(reg: &Registry, audit_file: &Path, more: &str) -> Proxy {
    proxy_for(&reg.url, audit_file, more, "")
}

/// The same in front of any upstream, with `extra` top-level YAML. The chain's key is
/// `audit.key` next to the audit file, made with `audit keygen` unless it is there.
fn proxy_for(upstream: &str, audit_file: &Path, more: &str, extra: &str) -> Proxy {
    let key = audit_file.with_file_name("audit.key");
    if !key.exists() {
        let (code, out, err) = cli(&["audit", "keygen", &key.display().to_string()]);
        assert_eq!(code, 0, "audit keygen: {out}{err}");
    }
    Proxy::builder(upstream)
        .users(vec![user("alice", "pw", &[]), user("bob", "pw2", &[])])
        .access_yaml(RULES)
        .extra_yaml(&format!(
            "audit:\n  file: {}\n  key_file: {}\n{more}{extra}",
            audit_file.display(),
            key.display()
        ))
        .start()
}

// ---- plain HTTP straight to the registry ----------------------------------------------

/// One HTTP/1.1 exchange with the registry (`Connection: close`): status and body.
fn reg_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Whether the registry itself has `repo`'s manifest `reference` (tag or digest).
fn reg_has(reg: &Registry, repo: &str, reference: &str) -> bool {
    let path = format!("/v2/{repo}/manifests/{reference}");
    match reg_http(reg.addr, "HEAD", &path, &[("Accept", ACCEPT)], b"") {
        (200, _) => true,
        (404, _) => false,
        (s, b) => panic!("HEAD {path} on the registry: {s} {b}"),
    }
}

/// PUTs `n` distinct manifests into `repo` by digest, straight into the registry: the
/// image's manifest with an annotation `n`, so all share its (already pushed) blobs.
fn put_variants(reg: &Registry, img: &Image, repo: &str, n: usize) -> Vec<String> {
    let base: Value = serde_json::from_slice(&img.manifest()).unwrap();
    let media_type = base["mediaType"].as_str().unwrap().to_owned();
    (0..n)
        .map(|i| {
            let mut m = base.clone();
            m["annotations"] = serde_json::json!({ "audit.test/n": i.to_string() });
            let bytes = serde_json::to_vec(&m).unwrap();
            let digest = sha256_digest(&bytes);
            let path = format!("/v2/{repo}/manifests/{digest}");
            let (status, body) = reg_http(
                reg.addr,
                "PUT",
                &path,
                &[("Content-Type", media_type.as_str())],
                &bytes,
            );
            assert_eq!(status, 201, "PUT {path}: {body}");
            digest
        })
        .collect()
}

// ---- curl through the proxy ------------------------------------------------------------

/// curl through the proxy (trusting its CA), one request; `args` are curl's.
fn pcurl(proxy: &Proxy, args: &[&str]) -> Resp {
    curl_with(Some(&proxy.ca), 30, args, None)
}

/// DELETE `/v2/{repo}/manifests/{reference}` through the proxy as `creds` (`user:pw`, or
/// "" for none).
fn delete(proxy: &Proxy, creds: &str, repo: &str, reference: &str) -> Resp {
    let url = format!("{}/v2/{repo}/manifests/{reference}", proxy.base);
    let mut args = vec!["-X", "DELETE"];
    if !creds.is_empty() {
        args.extend(["-u", creds]);
    }
    args.push(&url);
    pcurl(proxy, &args)
}

// ---- the audit file ----------------------------------------------------------------------

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn records(path: &Path) -> Vec<Value> {
    lines_of(path)
        .iter()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// The records of one request, in file order.
fn of_request<'a>(recs: &'a [Value], id: &str) -> Vec<&'a Value> {
    recs.iter().filter(|r| r["request_id"] == id).collect()
}

/// The intent and outcome of one allowed request (exactly those two, in that order).
fn pair<'a>(recs: &'a [Value], id: &str) -> (&'a Value, &'a Value) {
    let rs = of_request(recs, id);
    assert_eq!(rs.len(), 2, "request {id}: want intent + outcome: {rs:#?}");
    assert_eq!(rs[0]["phase"], "intent", "{rs:#?}");
    assert_eq!(rs[1]["phase"], "outcome", "{rs:#?}");
    (rs[0], rs[1])
}

fn tags_of(r: &Value) -> Vec<String> {
    let mut t: Vec<String> = r["tags"]
        .as_array()
        .unwrap_or_else(|| panic!("no tags in {r}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

/// Now, as the records write time: RFC 3339 UTC with milliseconds.
fn now_utc() -> String {
    let n = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        n.year(),
        u8::from(n.month()),
        n.day(),
        n.hour(),
        n.minute(),
        n.second(),
        n.millisecond()
    )
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, between `before` and `after` (same format, so string order
/// is time order).
fn assert_time(r: &Value, before: &str, after: &str) {
    let t = r["time"].as_str().unwrap_or_else(|| panic!("no time: {r}"));
    let b = t.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(
        shape_ok,
        "time {t:?} is not RFC 3339 UTC with milliseconds: {r}"
    );
    assert!(
        before <= t && t <= after,
        "time {t} not between {before} and {after} (not UTC?): {r}"
    );
}

/// What every record of one of alice's allowed deletes carries.
#[allow(clippy::too_many_arguments)]
fn assert_delete_pair(
    intent: &Value,
    outcome: &Value,
    repo: &str,
    digest: &str,
    tags: &[&str],
    ua_prefix: &str,
    window: (&str, &str),
) {
    for r in [intent, outcome] {
        assert_eq!(r["user"], "alice", "{r}");
        assert_eq!(r["client"], "127.0.0.1", "{r}");
        assert_eq!(r["method"], "DELETE", "{r}");
        assert_eq!(r["repo"], repo, "{r}");
        assert_eq!(r["target"], "manifest_by_digest", "{r}");
        assert_eq!(r["reference"], digest, "{r}");
        assert_eq!(r["digest"], digest, "{r}");
        assert_eq!(r["path"], format!("/v2/{repo}/manifests/{digest}"), "{r}");
        assert_eq!(tags_of(r), tags, "{r}");
        assert_eq!(r["tags_complete"], true, "{r}");
        assert_eq!(r["decision"], "allowed", "{r}");
        let ua = r["user_agent"].as_str().unwrap_or_else(|| panic!("{r}"));
        assert!(ua.starts_with(ua_prefix), "user agent {ua:?}: {r}");
        assert_time(r, window.0, window.1);
        assert_eq!(r["prev"].as_str().map(str::len), Some(64), "{r}");
    }
    assert!(intent.get("upstream_status").is_none(), "{intent}");
    assert!(intent.get("outcome").is_none(), "{intent}");
    assert_eq!(outcome["upstream_status"], 202, "{outcome}");
    assert_eq!(outcome["outcome"], "deleted", "{outcome}");
    assert!(outcome["duration_ms"].is_u64(), "{outcome}");
    assert!(intent["time"].as_str() <= outcome["time"].as_str());
}

/// The hash the next line must name as `prev`: the HMAC of the file's last line under
/// the tests' audit key.
fn last_hash(path: &Path) -> String {
    let lines = lines_of(path);
    let chain = registry_guard::audit::key::load(&key_for(path)).unwrap();
    chain.hash(lines.last().expect("an empty audit file").as_bytes())
}

/// Where the file's chain ends, `SEQ:HASH` (what `audit verify --start` takes for the
/// next file).
fn end_of(path: &Path) -> String {
    let recs = records(path);
    let seq = recs.last().expect("an empty audit file")["seq"]
        .as_u64()
        .unwrap();
    format!("{seq}:{}", last_hash(path))
}

/// Waits (bounded) for the proxy's log to contain `needle`.
fn wait_log(proxy: &Proxy, needle: &str) {
    wait_for(Duration::from_secs(10), || {
        proxy.logs().contains(needle).then_some(())
    })
    .unwrap_or_else(|| panic!("no {needle:?} in the proxy log:\n{}", proxy.logs()));
}

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
        "alice/app",
        &one.manifest_digest,
        &["a", "b", "c"],
        "skopeo/",
        (&before, &after),
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
        "alice/app",
        &two.manifest_digest,
        &["a", "b", "c"],
        "curl/",
        (&before, &after),
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
    assert_eq!(
        report_field(&report, "records"),
        (recs.len() + 2).to_string(),
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

// ---- 8. stdout ---------------------------------------------------------------------------

/// `audit.stdout: true`: every line of the audit file also appears, whole, on the proxy's
/// standard output (the harness's log holds stdout and stderr).
#[test]
fn stdout_carries_the_same_lines() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "  stdout: true\n");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:v1");
    assert_eq!(
        delete(&proxy, "bob:pw2", "alice/app", &img.manifest_digest).status,
        403
    );
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest).status,
        202
    );
    let lines = lines_of(&audit);
    assert_eq!(lines.len(), 3);
    let logs = proxy.logs();
    let out: HashSet<&str> = logs.lines().collect();
    for l in &lines {
        assert!(
            out.contains(l.as_str()),
            "not on stdout: {l}\n--- log:\n{logs}"
        );
    }
}

// ---- 9. audit show -----------------------------------------------------------------------

/// The rows of `audit show`, split into columns (TIME PHASE USER CLIENT STATUS REPOSITORY
/// REFERENCE DETAIL...), header checked and dropped.
fn show(files: &[&Path], filters: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec!["audit".to_owned(), "show".to_owned()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(filters.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = cli(&args);
    assert_eq!(code, 0, "audit show {filters:?}: {out}{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TIME",
            "PHASE",
            "USER",
            "CLIENT",
            "STATUS",
            "REPOSITORY",
            "REFERENCE",
            "DETAIL"
        ],
        "{out}"
    );
    lines
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A hand-edited file whose reference holds multi-byte characters across the column's
/// cut (byte 19 inside `é`): `audit show` shortens it by characters instead of
/// panicking, and the line is shown.
#[test]
fn show_shortens_a_non_ascii_reference_by_characters() {
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("edited.jsonl");
    let reference = "ééééééééééééééééééééééé";
    let line = format!(
        "{{\"time\":\"2026-11-23T19:00:00.000Z\",\"phase\":\"denied\",\"request_id\":\"r1\",\"user\":\"bob\",\"client\":\"192.0.2.7\",\"method\":\"DELETE\",\"path\":\"/v2/a/b/manifests/x\",\"repo\":\"a/b\",\"target\":\"manifest_by_tag\",\"reference\":\"{reference}\",\"decision\":\"denied\",\"reason\":\"no\",\"seq\":1,\"prev\":\"{}\"}}\n",
        "0".repeat(64)
    );
    std::fs::write(&f, line).unwrap();
    let rows = show(&[&f], &[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0][6], format!("{}…", "é".repeat(19)), "{rows:?}");
}

/// `audit show --user alice --repo alice/app` prints only alice's records in alice/app
/// (not bob's, not her other repository, not bob's refusal in alice/app); `--since` keeps
/// records at or after the time given: a record's own time (as printed) and the day; a
/// later time keeps none.
#[test]
fn show_filters_by_user_repository_and_time() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let layout = work.path().join("img");
    let (x, w, y, z) = (
        mkimage(&layout, 0, "x", 1),
        mkimage(&layout, 0, "w", 1),
        mkimage(&layout, 0, "y", 1),
        mkimage(&layout, 0, "z", 1),
    );
    push_direct(&reg, &x, "alice/app:x");
    push_direct(&reg, &w, "alice/app:w");
    push_direct(&reg, &y, "alice/other:y");
    push_direct(&reg, &z, "bob/app:z");

    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &x.manifest_digest).status,
        202
    );
    assert_eq!(
        delete(&proxy, "bob:pw2", "bob/app", &z.manifest_digest).status,
        202
    );
    assert_eq!(
        delete(&proxy, "bob:pw2", "alice/app", &w.manifest_digest).status,
        403
    );
    // The next group starts in a later second than every record above.
    let last = records(&audit).last().unwrap()["time"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(Duration::from_secs(3), || {
        (now_utc()[..19] > last[..19]).then_some(())
    })
    .unwrap();
    let second_group = records(&audit).len();
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &w.manifest_digest).status,
        202
    );
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/other", &y.manifest_digest).status,
        202
    );
    let recs = records(&audit);
    assert_eq!(recs.len(), 9, "{recs:#?}");

    let all = show(&[&audit], &[]);
    assert_eq!(all.len(), 9, "{all:?}");
    let rows = show(&[&audit], &["--user", "alice", "--repo", "alice/app"]);
    assert_eq!(rows.len(), 4, "{rows:?}");
    for (row, digest) in rows.iter().zip([
        &x.manifest_digest,
        &x.manifest_digest,
        &w.manifest_digest,
        &w.manifest_digest,
    ]) {
        assert_eq!(row[2], "alice", "{row:?}");
        assert_eq!(row[3], "127.0.0.1", "{row:?}");
        assert_eq!(row[5], "alice/app", "{row:?}");
        assert!(digest.starts_with(row[6].trim_end_matches('…')), "{row:?}");
    }
    assert_eq!(
        rows.iter().map(|r| r[1].as_str()).collect::<Vec<_>>(),
        ["intent", "outcome", "intent", "outcome"]
    );
    assert_eq!(rows[1][4], "202");
    assert_eq!(rows[1][7], "deleted");
    let bobs = show(&[&audit], &["--user", "bob"]);
    assert_eq!(bobs.len(), 3, "{bobs:?}");
    assert!(
        bobs.iter().any(|r| r[1] == "denied" && r[5] == "alice/app"),
        "{bobs:?}"
    );

    let t = recs[second_group]["time"].as_str().unwrap();
    let since_exact = show(
        &[&audit],
        &["--user", "alice", "--repo", "alice/app", "--since", t],
    );
    assert_eq!(since_exact.len(), 2, "--since {t}: {since_exact:?}");
    assert!(since_exact.iter().all(|r| r[0].as_str() >= t));
    let day = &t[..10];
    assert_eq!(show(&[&audit], &["--since", day]).len(), 9, "--since {day}");
    assert_eq!(
        show(&[&audit], &["--since", "2999-01-01T00:00:00Z"]).len(),
        0
    );
}

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

/// `--since` in the documented RFC 3339 forms means an instant: a time to the second
/// (`...T10:00:00Z`) keeps the records of that very second (`...T10:00:00.123Z` is after
/// it), and the same instant written with an offset keeps the same records.
/// FAILS today: `audit show` compares `since` to the record's time as strings.
#[test]
fn show_since_is_a_time_not_a_string_prefix() {
    let Some(reg) = tools() else { return };
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.jsonl");
    let proxy = start_proxy(&reg, &audit, "");
    let img = mkimage(&work.path().join("img"), 0, "one", 1);
    push_direct(&reg, &img, "alice/app:v1");
    assert_eq!(
        delete(&proxy, "alice:pw", "alice/app", &img.manifest_digest).status,
        202
    );
    let recs = records(&audit);
    assert_eq!(recs.len(), 2);
    let t = recs[0]["time"].as_str().unwrap().to_owned();
    // Both records are at or after the start of the intent's second.
    let second = format!("{}Z", &t[..19]);
    // The same instant as `second`, written as local time two hours east of UTC.
    let h: u32 = t[11..13].parse().unwrap();
    let offset = (h < 22).then(|| format!("{}{:02}{}+02:00", &t[..11], h + 2, &t[13..19]));
    let mut wrong = Vec::new();
    for since in [Some(second), offset].into_iter().flatten() {
        let rows = show(&[&audit], &["--since", &since]);
        if rows.len() != 2 {
            wrong.push(format!(
                "--since {since}: {} of 2 records (at {t})",
                rows.len()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---- 10. issue 8: audit hardening (fake upstream) ----------------------------------------

/// A blob digest for request `i`.
fn blob_digest(i: usize) -> String {
    format!("sha256:{}", sha256_hex(i.to_string().as_bytes()))
}

/// DELETE `/v2/{repo}/blobs/<digest i>` through the proxy as `creds`.
fn delete_blob(proxy: &Proxy, creds: &str, repo: &str, i: usize) -> Resp {
    let url = format!("{}/v2/{repo}/blobs/{}", proxy.base, blob_digest(i));
    pcurl(proxy, &["-u", creds, "-X", "DELETE", &url])
}

/// A plain HTTP/1.0 GET: status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Deletes of blobs answer 202, anything else 404 (the tag lookups of manifest deletes).
async fn fake_registry(delete_delay: Duration) -> common::fake::FakeUpstream {
    use common::fake::{FakeUpstream, Reply};
    FakeUpstream::start(move |seen| match seen.method.as_str() {
        "DELETE" => Reply::new(202).delay(delete_delay),
        _ => Reply::new(404),
    })
    .await
}

fn deletes_seen(upstream: &common::fake::FakeUpstream) -> usize {
    upstream
        .seen()
        .iter()
        .filter(|s| s.method == "DELETE")
        .count()
}

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
    let mut tls = common::fake::tls_connect(&proxy, &[b"http/1.1"]).await;
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
