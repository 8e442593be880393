//! Uploads as real clients send them reach the HTTP/1.1 upstream intact: HTTP/2 and
//! HTTP/1.1 chunked PATCHes without a Content-Length, and a 2 GiB layer pushed by a
//! throttled client for longer than 60 s, with the proxy's memory flat throughout.

use super::*;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What curl saw of one request: HTTP version, status, Location.
struct Sent {
    version: String,
    status: u16,
    location: Option<String>,
    stderr: String,
}

/// curl with `args` and the request body read from its stdin (`-T -`: no length known,
/// so chunked over HTTP/1.1 and DATA frames without Content-Length over HTTP/2), fed by
/// `feed`, within `limit`.
fn curl_stdin(
    proxy: &Proxy,
    args: &[&str],
    limit: Duration,
    feed: impl FnOnce(&mut dyn Write) + Send + 'static,
) -> Sent {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let mut child = Command::new("curl")
        .args(["-sS", "--max-time", &limit.as_secs().to_string()])
        .arg("--cacert")
        .arg(&proxy.ca)
        .arg("-D")
        .arg(&head)
        .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
        .args(["-u", &format!("{}:{}", ALICE.0, ALICE.1)])
        .args(["-H", "Content-Type: application/octet-stream", "-T", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        feed(&mut stdin);
        // stdin closes here: the end of the body.
    });
    // curl's own --max-time bounds it; this bound only catches a curl that ignores it.
    let (out, exited) = {
        let done = wait_for(limit + Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        });
        if done.is_none() {
            let _ = child.kill();
        }
        (child.wait_with_output().unwrap(), done.is_some())
    };
    assert!(exited, "curl did not end within its bound");
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (version, status) = stdout.split_once(' ').unwrap_or(("", ""));
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    let location = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("location")
            .then(|| v.trim().to_owned())
    });
    Sent {
        version: version.to_owned(),
        status: status.parse().unwrap_or(0),
        location,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// POST an upload start as alice; the upload's Location.
fn start_upload(proxy: &Proxy, repo: &str) -> String {
    let r = as_alice(proxy, "POST", &format!("/v2/{repo}/blobs/uploads/")).send();
    assert_eq!(r.status, 202, "{}", r.describe());
    location(&r)
}

/// Completes an upload with an empty PUT carrying the digest.
fn finish_upload(proxy: &Proxy, upload: &str, digest: &str) {
    let r = curl_with(
        Some(&proxy.ca),
        60,
        &[
            "-u",
            &format!("{}:{}", ALICE.0, ALICE.1),
            "-X",
            "PUT",
            &with_digest(upload, digest),
        ],
        None,
    );
    assert_eq!(r.status, 201, "{}", r.describe());
}

#[test]
fn http2_and_chunked_uploads_without_a_length_reach_the_http1_upstream_intact() {
    let Some((reg, proxy)) = start("", "") else {
        return;
    };
    // Not a multiple of any buffer size.
    let body: Arc<Vec<u8>> = Arc::new(
        (0..3 * 1024 * 1024 + 17u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
    );
    let digest = format!("sha256:{:x}", Sha256::digest(&body[..]));
    for (flag, want_version, repo) in [
        ("--http2", "2", "alice/h2-chunked"),
        ("--http1.1", "1.1", "alice/h1-chunked"),
    ] {
        let upload = start_upload(&proxy, repo);
        let b = body.clone();
        let sent = curl_stdin(
            &proxy,
            &[flag, "-X", "PATCH", &upload],
            Duration::from_secs(60),
            move |w| w.write_all(&b).unwrap(),
        );
        assert_eq!(sent.version, want_version, "{}", sent.stderr);
        assert_eq!(sent.status, 202, "{flag}: {}", sent.stderr);
        finish_upload(&proxy, &sent.location.expect("PATCH Location"), &digest);
        // What the registry stored is exactly the body.
        let r = registry_blob(&reg, repo, &digest);
        assert_eq!(r.status, 200, "{}", r.describe());
        assert_eq!(
            r.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        let got = call(&reg.url, None, "GET", &format!("/v2/{repo}/blobs/{digest}")).send();
        assert!(got.body == *body, "{flag}: the stored blob differs");
    }
}

/// Writes `total` bytes (1 MiB blocks, each different) into `w`, hashing them.
fn feed_and_hash(w: &mut dyn Write, total: u64, hash: &mut Sha256) {
    let mut block: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 11) as u8)
        .collect();
    let mut left = total;
    let mut n: u64 = 0;
    while left > 0 {
        block[..8].copy_from_slice(&n.to_le_bytes());
        let take = left.min(block.len() as u64) as usize;
        hash.update(&block[..take]);
        if w.write_all(&block[..take]).is_err() {
            return; // curl gave up; its exit tells why
        }
        left -= take as u64;
        n += 1;
    }
}

#[test]
fn a_2_gib_layer_pushed_slower_than_60_s_succeeds_with_flat_proxy_memory() {
    const TOTAL: u64 = 2 * 1024 * 1024 * 1024;
    // 32 MiB/s: 64 s for 2 GiB. The proxy's idle timeout is 5 s: a transfer that keeps
    // moving is never limited by its total duration.
    let Some((reg, proxy)) = start("", "limits:\n  idle_timeout: 5s\n") else {
        return;
    };
    let repo = "alice/big";
    // Logged in (argon2 ran, its memory given back) before the baseline is taken.
    let upload = start_upload(&proxy, repo);
    std::thread::sleep(Duration::from_millis(500));
    let pid = proxy.pid();
    let rss = move || proc_status_kib(pid, "VmRSS").expect("VmRSS of the proxy");
    let baseline = rss();

    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = proc_status_kib(pid, "VmRSS") {
                    peak.fetch_max(kib, Ordering::Relaxed);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        })
    };
    let digest = Arc::new(std::sync::Mutex::new(None));
    let d = digest.clone();
    let started = Instant::now();
    let sent = curl_stdin(
        &proxy,
        &["--http1.1", "--limit-rate", "32M", "-X", "PATCH", &upload],
        Duration::from_secs(240),
        move |w| {
            let mut h = Sha256::new();
            feed_and_hash(w, TOTAL, &mut h);
            *d.lock().unwrap() = Some(format!("sha256:{:x}", h.finalize()));
        },
    );
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    assert_eq!(
        sent.status,
        202,
        "PATCH of 2 GiB: {}\n{}",
        sent.stderr,
        proxy.logs()
    );
    // The premise of the test: the transfer outlasted a minute.
    assert!(
        took > Duration::from_secs(60),
        "the push took only {took:?}"
    );
    assert!(samples > 100, "only {samples} memory samples");
    let grew_mib = (peak.load(Ordering::Relaxed).saturating_sub(baseline)) / 1024;
    eprintln!(
        "2 GiB in {took:?}: proxy RSS {} MiB before, peak {} MiB",
        baseline / 1024,
        peak.load(Ordering::Relaxed) / 1024
    );
    assert!(
        grew_mib <= 32,
        "proxy RSS grew by {grew_mib} MiB while streaming 2 GiB (baseline {} MiB)",
        baseline / 1024
    );
    let digest = digest
        .lock()
        .unwrap()
        .clone()
        .expect("the body was fed whole");
    finish_upload(&proxy, &sent.location.expect("PATCH Location"), &digest);
    let r = registry_blob(&reg, repo, &digest);
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("content-length"), Some(TOTAL.to_string().as_str()));
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
}
