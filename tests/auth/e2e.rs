//! Authentication end to end against real clients: Debian's docker-registry
//! behind the registry-guard binary, skopeo pushing and pulling an image made by
//! tests/e2e/mkimage.py, curl, and the seed document's flows (tests/e2e/seed_flows.py),
//! with good, wrong and no credentials.

use super::*;
use common::e2e::*;
use std::path::Path;
use std::process::{Command, Output};

const USER: &str = "alice";
const PASSWORD: &str = "e2e-Pw:with colon";

/// skopeo with no ambient credentials (its own HOME, XDG_RUNTIME_DIR and auth file).
fn skopeo(home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("REGISTRY_AUTH_FILE", home.join("no-auth.json"))
        .args(args);
    run(&mut cmd, Duration::from_secs(180))
}

/// Pushes `layout:tag` to `repo:tag` through the proxy with `creds` (None: none at all).
fn push(
    proxy: &Proxy,
    home: &Path,
    layout: &Path,
    tag: &str,
    repo: &str,
    creds: Option<&str>,
) -> Output {
    let src = format!("oci:{}:{tag}", layout.display());
    let dest = format!("docker://{}/{repo}:{tag}", proxy.addr);
    let cert_dir = proxy.cert_dir.to_str().unwrap();
    let mut args = vec![
        "copy",
        "--preserve-digests",
        "--retry-times",
        "0",
        "--dest-cert-dir",
        cert_dir,
    ];
    if let Some(c) = creds {
        args.extend_from_slice(&["--dest-creds", c]);
    }
    args.extend_from_slice(&[&src, &dest]);
    skopeo(home, &args)
}

/// Tags of `repo` straight from the registry (bypassing the proxy).
fn registry_tags(registry: &Registry, repo: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .arg(format!("{}/v2/{repo}/tags/list", registry.url))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["tags"]
        .as_array()
        .map(|t| t.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn mentions_unauthorized(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("401") || s.contains("unauthorized") || s.contains("authentication required")
}

#[test]
fn skopeo_pushes_and_pulls_with_credentials_and_fails_with_wrong_or_none() {
    let Some(registry) = Registry::start() else {
        return;
    };
    if !have("skopeo") || !have("curl") {
        return;
    }
    let proxy = Proxy::builder(&registry.url)
        .users(vec![user(USER, PASSWORD, &["team-a"])])
        .start();
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let Image {
        layout,
        layer_digest: layer,
        ..
    } = mkimage(&home.join("img-v1"), 1, "v1", 1);
    let creds = format!("{USER}:{PASSWORD}");

    // Push with credentials: in the registry.
    let out = push(&proxy, home, &layout, "v1", "alice/app", Some(&creds));
    assert!(
        out.status.success(),
        "push: {}\n{}",
        text(&out.stderr),
        proxy.logs()
    );
    assert_eq!(registry_tags(&registry, "alice/app"), ["v1"]);

    // Pull it back with credentials: the same layer, byte for byte (--preserve-digests:
    // else skopeo compresses the uncompressed layer on its way into the oci: layout).
    let pulled = home.join("pulled");
    let src = format!("docker://{}/alice/app:v1", proxy.addr);
    let dest = format!("oci:{}:v1", pulled.display());
    let out = skopeo(
        home,
        &[
            "copy",
            "--preserve-digests",
            "--retry-times",
            "0",
            "--src-cert-dir",
            proxy.cert_dir.to_str().unwrap(),
            "--src-creds",
            &creds,
            &src,
            &dest,
        ],
    );
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pulled.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_file(&pulled, manifest_digest)).unwrap())
            .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["digest"], layer.as_str());
    assert_eq!(sha256_file(&blob_file(&pulled, &layer)), layer);

    // A wrong password: refused, nothing pushed.
    let out = push(
        &proxy,
        home,
        &layout,
        "v1",
        "alice/wrong",
        Some(&format!("{USER}:not-the-password")),
    );
    let err = text(&out.stderr);
    eprintln!("skopeo, wrong password: {}", err.trim());
    assert!(
        !out.status.success(),
        "push with a wrong password succeeded"
    );
    assert!(mentions_unauthorized(&err), "{err}");
    // No credentials at all (skopeo then sends `Basic Og==` or nothing): refused too.
    let out = push(&proxy, home, &layout, "v1", "alice/none", None);
    let err = text(&out.stderr);
    eprintln!("skopeo, no credentials: {}", err.trim());
    assert!(!out.status.success(), "push without credentials succeeded");
    assert!(mentions_unauthorized(&err), "{err}");
    // Nor may a pull without credentials read the pushed image.
    let out = skopeo(
        home,
        &[
            "copy",
            "--retry-times",
            "0",
            "--src-cert-dir",
            proxy.cert_dir.to_str().unwrap(),
            &src,
            &format!("oci:{}:v1", home.join("anon").display()),
        ],
    );
    assert!(!out.status.success(), "anonymous pull succeeded");
    assert!(
        mentions_unauthorized(&text(&out.stderr)),
        "{}",
        text(&out.stderr)
    );
    for repo in ["alice/wrong", "alice/none"] {
        assert!(
            registry_tags(&registry, repo).is_empty(),
            "{repo} was pushed"
        );
    }
    assert!(!proxy.logs().contains(PASSWORD));
}

/// curl against the proxy: (HTTP status, body).
fn curl(proxy: &Proxy, args: &[&str], path: &str) -> (u16, String) {
    let url = format!("{}{path}", proxy.base);
    let mut all = vec!["-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    all.push(&url);
    let out = proxy.curl(&all);
    assert!(out.status.success(), "curl: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_owned())
}

fn seed_flows(proxy: &Proxy, password: &str) -> Output {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(e2e_script("seed_flows.py"))
        .args(["--base", &proxy.base, "--cacert"])
        .arg(&proxy.ca)
        .args(["--user", USER, "--password-env", "RG_SEED_PASSWORD"])
        .args(["--repo", "alice/seed", "--tag", "v1", "--timeout", "30"])
        .env("RG_SEED_PASSWORD", password);
    run(&mut cmd, Duration::from_secs(120))
}

#[test]
fn curl_and_the_seed_flows_with_preemptive_basic_credentials() {
    let Some(registry) = Registry::start() else {
        return;
    };
    if !have("skopeo") || !have("curl") {
        return;
    }
    let proxy = Proxy::builder(&registry.url)
        .users(vec![user(USER, PASSWORD, &["team-a"])])
        .start();
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let Image { layout, .. } = mkimage(&home.join("img-v1"), 1, "v1", 1);
    let out = push(
        &proxy,
        home,
        &layout,
        "v1",
        "alice/seed",
        Some(&format!("{USER}:{PASSWORD}")),
    );
    assert!(out.status.success(), "push: {}", text(&out.stderr));

    // curl -u (curl sends Basic at once) and a hand-made header, as the seed's script does.
    let tags = "/v2/alice/seed/tags/list";
    let want = r#"{"name":"alice/seed","tags":["v1"]}"#;
    let (code, body) = curl(&proxy, &["-u", &format!("{USER}:{PASSWORD}")], tags);
    assert_eq!((code, body.trim()), (200, want));
    let header = format!("Authorization: {}", basic(USER, PASSWORD));
    let (code, body) = curl(&proxy, &["-H", &header], tags);
    assert_eq!((code, body.trim()), (200, want));
    // Without credentials and with a wrong password: the 401 challenge.
    let (code, _) = curl(&proxy, &[], tags);
    assert_eq!(code, 401);
    let (code, body) = curl(&proxy, &["-u", &format!("{USER}:wrong")], tags);
    assert_eq!(code, 401, "{body}");

    // The seed's flows with a wrong password fail at the first step, deleting nothing.
    let out = seed_flows(&proxy, "not-the-password");
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], "tags_list", "{stdout}");
    assert_eq!(first["ok"], false, "{stdout}");
    assert!(first["error"].as_str().unwrap().contains("401"), "{stdout}");
    assert_eq!(registry_tags(&registry, "alice/seed"), ["v1"]);

    // With the right one every step passes, the delete included.
    let out = seed_flows(&proxy, PASSWORD);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let steps: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "tags_list",
            "catalog",
            "get_manifest",
            "head_manifest",
            "delete_manifest",
            "gone_manifest",
            "gone_tags"
        ]
    );
    assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
    assert!(registry_tags(&registry, "alice/seed").is_empty());
    assert!(!proxy.logs().contains(PASSWORD));
}

/// `registry_guard_auth_argon2_runs_total` from the metrics listener at `metrics`.
fn argon2_runs(metrics: std::net::SocketAddr) -> u64 {
    common::metrics::scrape(metrics).get("registry_guard_auth_argon2_runs_total")
}

/// curl `GET /v2/` as `user:password`; `max_time` cuts the request short (curl then
/// closes the connection: the request is cancelled). Returns the HTTP status, 0 if none.
fn curl_login(proxy: &Proxy, user: &str, password: &str, extra: &[&str]) -> u16 {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&proxy.ca)
        .args(["-u", &format!("{user}:{password}")])
        .args(extra)
        .arg(format!("{}/v2/", proxy.base));
    let out = run(&mut cmd, Duration::from_secs(60));
    text(&out.stdout).trim().parse().unwrap_or(0)
}

#[test]
fn parallel_and_cancelled_guesses_run_argon2_at_most_max_failures_times() {
    // Regression, against the real registry: 40 parallel guesses all got 401 (none
    // 429), and requests cancelled while argon2 ran were never counted.
    let Some(registry) = Registry::start() else {
        return;
    };
    if !have("curl") {
        return;
    }
    // Over the default argon2 cost (64 MiB, 3 passes), so a verification lasts well past
    // the 50 ms after which the guesses below are cut, even on a fast machine.
    let hash = registry_guard::auth::users::hash_password(PASSWORD, 65536, 3, 1).unwrap();
    // A fresh proxy (a clean throttle) and its metrics address.
    let start = || {
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proxy = Proxy::builder(&registry.url)
            .users_file_yaml(&format!("users:\n  - name: {USER}\n    hash: '{hash}'\n"))
            .auth_yaml("  throttle:\n    max_failures: 3\n")
            .extra_yaml(&format!("metrics:\n  listen: {metrics}\n"))
            .start();
        (proxy, metrics)
    };
    let (proxy, metrics) = start();

    // 40 at once, each with its own wrong password.
    let before = argon2_runs(metrics);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let proxy = &proxy;
                s.spawn(move || curl_login(proxy, USER, &format!("guess-{i}"), &[]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let runs = argon2_runs(metrics) - before;
    let refused = statuses.iter().filter(|&&s| s == 401).count();
    assert!(runs <= 3, "{runs} argon2 runs: {statuses:?}");
    assert!((1..=3).contains(&refused), "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 401 || s == 429),
        "{statuses:?}"
    );
    eprintln!("40 parallel guesses: {refused} × 401, {runs} argon2 runs");

    // The pair is spent now: a new proxy for the next part.
    drop(proxy);
    let (proxy, metrics) = start();
    // 12 guesses cut short while argon2 runs, over HTTP/1.1 and HTTP/2.
    let before = argon2_runs(metrics);
    let mut cut = 0;
    for i in 0..12 {
        let version = if i % 2 == 0 { "--http1.1" } else { "--http2" };
        let got = curl_login(
            &proxy,
            USER,
            &format!("cut-{i}"),
            &[version, "--max-time", "0.05"],
        );
        // 0: cut before any answer; 429: refused at once; a 401 would be a guess
        // answered within 50 ms, which the slow hash rules out but the counts cover.
        assert!(matches!(got, 0 | 401 | 429), "guess {i}: {got}");
        cut += usize::from(got == 0);
    }
    assert!(cut >= 1, "no guess was cut short: the test proves nothing");
    std::thread::sleep(Duration::from_secs(3));
    let runs = argon2_runs(metrics) - before;
    assert!(runs <= 3, "{runs} argon2 runs for 12 cancelled guesses");
    // They counted: even the right password is now refused from this address.
    assert_eq!(curl_login(&proxy, USER, PASSWORD, &[]), 429);
    eprintln!("12 cancelled guesses: {runs} argon2 runs, then 429");

    // Control: with a clean throttle the right password reaches the registry.
    drop(proxy);
    let (proxy, _) = start();
    let (code, body) = curl(
        &proxy,
        &["-u", &format!("{USER}:{PASSWORD}")],
        "/v2/_catalog",
    );
    assert_eq!(code, 200, "{body}");
}
