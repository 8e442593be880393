//! End to end: the delete audit trail, with the registry-guard binary in front
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
//!
//! Topics: `deletes` (what a delete records: by digest, by tag, refused, fail-closed),
//! `chain` (kill -9, tampering, rotation, `audit verify`), `output` (stdout and
//! `audit show`), `flows` (manifest pushes, the seed's flow, blobs, upstream failures,
//! forwarded addresses) and `hardening` (rate-limited denials, a low or full disk, a client
//! that leaves; against the fake upstream), `attacks` (the audit under attack: a flood
//! of failed logins, refused bearer tokens, a second writer, a shutdown that hangs).
#[path = "../common/mod.rs"]
mod common;
use common::curl::*;
use common::e2e::*;
use common::metrics::http_get;
use common::process::*;
use common::*;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod attacks;
mod chain;
mod deletes;
mod events;
mod flows;
mod hardening;
mod output;
mod syslog;

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
    proxy_with_rules(upstream, audit_file, RULES, more, extra)
}

/// The same with `access:` holding `rules` (two-space indented keys).
fn proxy_with_rules(
    upstream: &str,
    audit_file: &Path,
    rules: &str,
    more: &str,
    extra: &str,
) -> Proxy {
    let key = audit_file.with_file_name("audit.key");
    if !key.exists() {
        let (code, out, err) = cli(&["audit", "keygen", &key.display().to_string()]);
        assert_eq!(code, 0, "audit keygen: {out}{err}");
    }
    Proxy::builder(upstream)
        .users(vec![user("alice", "pw", &[]), user("bob", "pw2", &[])])
        .access_yaml(rules)
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
    (0..n)
        .map(|i| put_variant(reg, img, repo, i, None))
        .collect()
}

/// PUTs variant `i` of the image's manifest (see [`put_variants`]) into `repo` straight
/// into the registry, by digest or under `tag`: its digest.
fn put_variant(reg: &Registry, img: &Image, repo: &str, i: usize, tag: Option<&str>) -> String {
    let mut m: Value = serde_json::from_slice(&img.manifest()).unwrap();
    let media_type = m["mediaType"].as_str().unwrap().to_owned();
    m["annotations"] = serde_json::json!({ "audit.test/n": i.to_string() });
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = sha256_digest(&bytes);
    let path = format!("/v2/{repo}/manifests/{}", tag.unwrap_or(&digest));
    let (status, body) = reg_http(
        reg.addr,
        "PUT",
        &path,
        &[("Content-Type", media_type.as_str())],
        &bytes,
    );
    assert_eq!(status, 201, "PUT {path}: {body}");
    digest
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

/// One of alice's allowed deletes as its records must show it.
struct Delete<'a> {
    repo: &'a str,
    digest: &'a str,
    tags: &'a [&'a str],
    ua_prefix: &'a str,
    /// The records' times lie within (before, after).
    window: (&'a str, &'a str),
}

/// What every record of one of alice's allowed deletes carries.
fn assert_delete_pair(intent: &Value, outcome: &Value, d: &Delete<'_>) {
    let Delete {
        repo,
        digest,
        tags,
        ua_prefix,
        window,
    } = *d;
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

// ---- audit show --------------------------------------------------------------------------

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

// ---- the fake upstream (`hardening`, `chain`) --------------------------------------------

/// A blob digest for request `i`.
fn blob_digest(i: usize) -> String {
    format!("sha256:{}", sha256_hex(i.to_string().as_bytes()))
}

/// DELETE `/v2/{repo}/blobs/<digest i>` through the proxy as `creds`.
fn delete_blob(proxy: &Proxy, creds: &str, repo: &str, i: usize) -> Resp {
    let url = format!("{}/v2/{repo}/blobs/{}", proxy.base, blob_digest(i));
    pcurl(proxy, &["-u", creds, "-X", "DELETE", &url])
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
