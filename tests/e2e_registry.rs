//! End to end: the registry-guard binary in front of Debian's docker-registry 2.8, driven
//! by the clients people use: skopeo (push, pull, list-tags, inspect, delete), curl (the
//! seed document's command lines, a chunked upload the way docker sends it, path tricks)
//! and the seed's Python `requests` script (`tests/e2e/seed_flows.py`).
//!
//! Images come from `tests/e2e/mkimage.py`: OCI layouts with one uncompressed random layer,
//! pushed with `--preserve-digests` so the digests it prints are the registry's.
//!
//! Authentication does not exist yet: the tests send a Basic header the way the seed's
//! scripts do (pre-emptively) and expect it to be ignored (that it is never forwarded is
//! pinned by the unit tests of `proxy/headers.rs`) and never logged.
//!
//! Every external command runs under a deadline and is killed (by its pid) past it; a
//! missing docker-registry, skopeo or Debian python3-requests skips a test, or fails it
//! under `RG_REQUIRE_REAL=1` / `CI=true`.
mod common;
use base64::Engine;
use common::curl::*;
use common::e2e::*;
use common::process::*;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A numeric account id, like the seed's personal namespaces (`10000460xxxxx/ubuntu`).
const SEED_USER: &str = "10000460123";

// ---- HTTP through curl ---------------------------------------------------------------

/// Runs curl (`-sS`, bounded, trusting `ca` if given) and parses its answer. For HEAD use
/// `-I` (the body is then not meaningful).
fn curl(ca: Option<&Path>, args: &[&str]) -> Resp {
    curl_in(ca, args, None)
}

/// The same, with `stdin` (a file) on curl's standard input, for `--data-binary @-`.
fn curl_in(ca: Option<&Path>, args: &[&str], stdin: Option<&Path>) -> Resp {
    curl_with(ca, 60, args, stdin)
}

/// curl through the proxy.
fn pcurl(proxy: &Proxy, args: &[&str]) -> Resp {
    curl(Some(&proxy.ca), args)
}

/// The seed's pre-emptive header: `Authorization: Basic $(echo -n user:pw | base64)`.
fn basic_header(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

/// A registry error answer: status, the API version header and `errors[0].code`.
fn assert_registry_error(r: &Resp, status: u16, code: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?} {}", r.text());
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{what}: {r:?}"
    );
    let v = r.json();
    assert_eq!(
        v["errors"][0]["code"].as_str(),
        Some(code),
        "{what}: {}",
        r.text()
    );
}

/// The proxy's access log line of one request (it is written when the response body is
/// done, so it may trail the response by a moment).
fn access_line(proxy: &Proxy, request_id: &str) -> String {
    let needle = format!("request_id={request_id} ");
    wait_for(Duration::from_secs(5), || {
        proxy
            .logs()
            .lines()
            .find(|l| l.contains("registry_guard::access") && l.contains(&needle))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("no access line for {request_id} in:\n{}", proxy.logs()))
}

/// Whether a pid we started is running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_owned();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

// ---- 1. skopeo round trip --------------------------------------------------------------

/// A 64 MiB random layer goes up through the proxy and comes back byte for byte; tags,
/// inspect and delete work through it; the deleted manifest is then a registry 404.
#[test]
fn skopeo_round_trip_of_a_64_mib_layer() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    let img = mkimage(&work.path().join("src"), 64, "v1", 1);
    assert!(
        img.layer_size >= 64 << 20,
        "layer of {} bytes",
        img.layer_size
    );
    assert_eq!(sha256_file(&img.layer_file()), img.layer_digest);
    let cert_dir = proxy.cert_dir.to_str().unwrap();
    let remote = format!("docker://{}/e2e/big", proxy.addr);

    let started = Instant::now();
    push_through(&proxy, &img, "e2e/big:v1", None);
    let pushed = started.elapsed();

    // Pull it back into a fresh layout: the layer file must be the same bytes.
    let back = work.path().join("back");
    let out = skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-cert-dir",
        cert_dir,
        &format!("{remote}:v1"),
        &format!("oci:{}:v1", back.display()),
    ]);
    ok(&out, "skopeo copy back");
    let layer = blob_file(&back, &img.layer_digest);
    let size = std::fs::metadata(&layer)
        .unwrap_or_else(|e| panic!("pulled layout lacks the layer {}: {e}", layer.display()))
        .len();
    assert_eq!(size, img.layer_size);
    assert_eq!(sha256_file(&layer), img.layer_digest);
    let index = json(
        &std::fs::read_to_string(back.join("index.json")).unwrap(),
        "index.json",
    );
    assert_eq!(
        index["manifests"][0]["digest"].as_str(),
        Some(img.manifest_digest.as_str()),
        "{index}"
    );
    eprintln!(
        "64 MiB layer: pushed in {pushed:?}, round trip in {:?}",
        started.elapsed()
    );

    // Streaming, not buffering: after 2 x 64 MiB through it the proxy's peak RSS stays
    // well under one layer (flow-control windows and pools are a few MiB).
    if let Some(kib) = proc_status_kib(proxy.pid(), "VmHWM") {
        assert!(
            kib < 48 * 1024,
            "proxy peak RSS {kib} KiB after moving a 64 MiB layer both ways: is it buffering?"
        );
    }

    let out = skopeo(&["list-tags", "--cert-dir", cert_dir, &remote]);
    let tags = json(&ok(&out, "skopeo list-tags"), "list-tags");
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]), "{tags}");

    let out = skopeo(&["inspect", "--cert-dir", cert_dir, &format!("{remote}:v1")]);
    let info = json(&ok(&out, "skopeo inspect"), "inspect");
    assert_eq!(
        info["Digest"].as_str(),
        Some(img.manifest_digest.as_str()),
        "{info}"
    );
    assert_eq!(
        info["Layers"],
        serde_json::json!([img.layer_digest]),
        "{info}"
    );

    // skopeo resolves the tag to its digest and deletes by digest.
    let out = skopeo(&["delete", "--cert-dir", cert_dir, &format!("{remote}:v1")]);
    ok(&out, "skopeo delete");
    let path = format!("/v2/e2e/big/manifests/{}", img.manifest_digest);
    let accept = format!("Accept: {OCI_MANIFEST}");
    let r = pcurl(&proxy, &["-H", &accept, &format!("{}{path}", proxy.base)]);
    assert_registry_error(&r, 404, "MANIFEST_UNKNOWN", "manifest after skopeo delete");
    let r = curl(None, &["-H", &accept, &format!("{}{path}", reg.url)]);
    assert_eq!(r.status, 404, "the registry still has the manifest: {r:?}");
}

// ---- 2. the seed's Python flows ---------------------------------------------------------

/// seed_flows.py (the seed's `requests` script: pre-emptive Basic header, browser
/// User-Agent; tags/list, _catalog, GET/HEAD manifest, DELETE by digest) passes through
/// the proxy for both seed repositories, and the registry itself no longer has them.
#[test]
fn seed_python_flows_through_the_proxy() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(true) {
        return;
    }
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("small");
    let ubuntu = mkimage(&layout, 1, "latest", 2);
    let game = mkimage(&layout, 1, "v1", 3);
    assert_ne!(ubuntu.manifest_digest, game.manifest_digest);
    let ubuntu_repo = format!("{SEED_USER}/ubuntu");
    push_through(&proxy, &ubuntu, &format!("{ubuntu_repo}:latest"), None);
    push_through(&proxy, &game, "public/2048:v1", None);
    // Not checked yet, sent anyway (the seed's scripts always send it); a colon in the
    // password as the checklist allows.
    let password = "Kang:653456-e2e";

    for (repo, img) in [(ubuntu_repo.as_str(), &ubuntu), ("public/2048", &game)] {
        let out = run(
            Command::new(PYTHON)
                .arg(e2e_script("seed_flows.py"))
                .args(["--base", &proxy.base])
                .arg("--cacert")
                .arg(&proxy.ca)
                .args(["--user", SEED_USER, "--password", password])
                .args(["--repo", repo, "--tag", &img.tag]),
            STEP,
        );
        let stdout = ok(&out, &format!("seed_flows.py on {repo}"));
        let steps: Vec<serde_json::Value> =
            stdout.lines().map(|l| json(l, "seed_flows line")).collect();
        let names: Vec<&str> = steps.iter().filter_map(|s| s["step"].as_str()).collect();
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
            ],
            "{stdout}"
        );
        assert!(steps.iter().all(|s| s["ok"] == true), "{stdout}");
        assert_eq!(
            steps[2]["digest"].as_str(),
            Some(img.manifest_digest.as_str()),
            "{stdout}"
        );

        // Asked of the registry itself, not the proxy: the manifest is gone.
        let accept = format!("Accept: {OCI_MANIFEST}");
        for reference in [img.manifest_digest.as_str(), &img.tag] {
            let url = format!("{}/v2/{repo}/manifests/{reference}", reg.url);
            let r = curl(None, &["-H", &accept, &url]);
            assert_eq!(r.status, 404, "{url} is still there: {}", r.text());
            assert_eq!(
                r.json()["errors"][0]["code"].as_str(),
                Some("MANIFEST_UNKNOWN"),
                "{}",
                r.text()
            );
        }
        let out = run(
            Command::new(PYTHON)
                .arg(e2e_script("seed_flows.py"))
                .args(["--base", &reg.url, "--repo", repo, "--tag", &img.tag])
                .args(["--expect-deleted", "--digest", &img.manifest_digest]),
            STEP,
        );
        ok(
            &out,
            &format!("seed_flows.py --expect-deleted on the registry, {repo}"),
        );
    }

    let token = basic_header(SEED_USER, password);
    let token = token.trim_start_matches("Authorization: Basic ");
    let logs = proxy.logs();
    assert!(
        !logs.contains(password) && !logs.contains(token),
        "the proxy logged the client's credentials:\n{logs}"
    );
}

// ---- 3. the seed's curl lines -------------------------------------------------------

/// The seed's curl command lines (with a pre-emptive Basic header): catalog, tags, manifest
/// GET with docker's and OCI's Accept, HEAD, a ranged blob GET, DELETE by digest.
#[test]
fn seed_curl_flows_through_the_proxy() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    let img = mkimage(&work.path().join("small"), 1, "v1", 4);
    let ubuntu_repo = format!("{SEED_USER}/ubuntu");
    push_through(&proxy, &img, "public/2048:v1", None);
    push_through(&proxy, &img, &format!("{ubuntu_repo}:latest"), None);
    let auth = basic_header(SEED_USER, "pw");
    let url = |path: &str| format!("{}{path}", proxy.base);
    let get = |path: &str, extra: &[&str]| {
        let mut args = vec!["-H", &auth];
        args.extend_from_slice(extra);
        let u = url(path);
        args.push(&u);
        pcurl(&proxy, &args)
    };

    let r = get("/v2/_catalog", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    let repos = r.json()["repositories"].clone();
    for repo in ["public/2048", ubuntu_repo.as_str()] {
        assert!(
            repos.as_array().unwrap().iter().any(|x| x == repo),
            "{repo} not in catalog {repos}"
        );
    }

    let r = get("/v2/public/2048/tags/list", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "public/2048", "tags": ["v1"]})
    );

    // docker sends one Accept header per media type; both must reach the registry.
    let accept_docker = format!("Accept: {DOCKER_MANIFEST}");
    let accept_oci = format!("Accept: {OCI_MANIFEST}");
    let manifest = "/v2/public/2048/manifests/v1";
    let r = get(manifest, &["-H", &accept_docker, "-H", &accept_oci]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
    let digest = r
        .header("docker-content-digest")
        .expect("Docker-Content-Digest");
    assert_eq!(digest, sha256_digest(&r.body), "digest header vs body");
    assert_eq!(digest, img.manifest_digest);
    let body_len = r.body.len();
    let digest = digest.to_owned();

    let h = get(manifest, &["-I", "-H", &accept_docker, "-H", &accept_oci]);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(
        h.header("content-length"),
        Some(body_len.to_string().as_str())
    );
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));

    let layer = std::fs::read(img.layer_file()).unwrap();
    let r = get(
        &format!("/v2/public/2048/blobs/{}", img.layer_digest),
        &["-H", "Range: bytes=0-99"],
    );
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.body.len(), 100);
    assert_eq!(r.body, layer[..100]);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 0-99/{}", img.layer_size).as_str())
    );

    let r = get(
        &format!("/v2/public/2048/manifests/{digest}"),
        &["-X", "DELETE"],
    );
    assert_eq!(r.status, 202, "{r:?} {}", r.text());
    let r = get(manifest, &["-H", &accept_oci]);
    assert_registry_error(&r, 404, "MANIFEST_UNKNOWN", "GET after DELETE");
    let r = get(
        &format!("/v2/public/2048/manifests/{digest}"),
        &["-H", &accept_oci],
    );
    assert_registry_error(&r, 404, "MANIFEST_UNKNOWN", "GET by digest after DELETE");
    // The delete was scoped to its repository: the same image elsewhere stays.
    let r = get(
        &format!("/v2/{ubuntu_repo}/manifests/latest"),
        &["-H", &accept_oci],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- 4. a chunked upload, docker style ------------------------------------------------

/// POST (with spoofed forwarding headers), a PATCH over HTTP/1.1 with
/// `Transfer-Encoding: chunked` and no Content-Length (docker's Go client), a second PATCH
/// over HTTP/2 with no length either (a stream from stdin), then PUT `?digest=`. Every
/// Location points at the proxy with the registry's `_state` intact, and the blob lands
/// whole.
#[test]
fn chunked_upload_through_the_proxy() {
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    // 6 MiB of xorshift noise: many chunks and flow-control windows.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..6 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let split = 4 << 20;
    let (first, second) = (work.path().join("part1"), work.path().join("part2"));
    std::fs::write(&first, &data[..split]).unwrap();
    std::fs::write(&second, &data[split..]).unwrap();
    let digest = sha256_digest(&data);
    let origin = format!("https://{}", proxy.addr);
    let uploads = "/v2/e2e/chunk/blobs/uploads/";

    // distribution 2.8 builds Locations from Forwarded / X-Forwarded-*: the client's
    // must not reach it.
    let r = pcurl(
        &proxy,
        &[
            "-X",
            "POST",
            "-H",
            "Forwarded: host=evil.example;proto=http",
            "-H",
            "X-Forwarded-Host: evil.example",
            "-H",
            "X-Forwarded-Proto: http",
            &format!("{}{uploads}", proxy.base),
        ],
    );
    assert_eq!(r.status, 202, "{r:?} {}", r.text());
    let loc = r.header("location").expect("Location").to_owned();
    let uuid = r
        .header("docker-upload-uuid")
        .expect("Docker-Upload-UUID")
        .to_owned();
    let up = Upload {
        origin: &origin,
        uploads,
        uuid: &uuid,
        repo: "e2e/chunk",
    };
    up.check(&loc, 0);

    let file_arg = format!("@{}", first.display());
    let r = pcurl(
        &proxy,
        &[
            "--http1.1",
            "-X",
            "PATCH",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "-H",
            "Expect:",
            "--data-binary",
            &file_arg,
            &loc,
        ],
    );
    assert_eq!(r.status, 202, "{r:?} {}", r.text());
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", split - 1).as_str()),
        "{r:?}"
    );
    let loc = r
        .header("location")
        .expect("Location after PATCH")
        .to_owned();
    up.check(&loc, split);

    // HTTP/2 has no chunked coding: a body of unknown length is just DATA frames, and
    // the proxy must re-frame it for its HTTP/1.1 upstream.
    let r = curl_in(
        Some(&proxy.ca),
        &[
            "--http2",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
            // -T streams (no Content-Length); --data-binary @- would buffer and count.
            "-T",
            "-",
            &loc,
        ],
        Some(&second),
    );
    assert_eq!(r.status, 202, "{r:?} {}", r.text());
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", data.len() - 1).as_str()),
        "{r:?}"
    );
    let loc = r
        .header("location")
        .expect("Location after PATCH")
        .to_owned();
    up.check(&loc, data.len());

    let r = pcurl(&proxy, &["-X", "PUT", &format!("{loc}&digest={digest}")]);
    assert_eq!(r.status, 201, "{r:?} {}", r.text());
    assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    let blob_path = format!("/v2/e2e/chunk/blobs/{digest}");
    assert_eq!(
        r.header("location"),
        Some(format!("{origin}{blob_path}").as_str())
    );

    let h = pcurl(&proxy, &["-I", &format!("{}{blob_path}", proxy.base)]);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(
        h.header("content-length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(h.header("docker-content-digest"), Some(digest.as_str()));
    // What the registry stored, read from it directly.
    let r = curl(None, &[&format!("{}{blob_path}", reg.url)]);
    assert_eq!(r.status, 200);
    assert_eq!(sha256_digest(&r.body), digest);
}

/// One upload session, for checking the Locations it is handed.
struct Upload<'a> {
    /// The proxy's origin, `https://127.0.0.1:PORT`.
    origin: &'a str,
    uploads: &'a str,
    uuid: &'a str,
    repo: &'a str,
}

impl Upload<'_> {
    /// A Location must be on the proxy's origin and carry the registry's `_state` as the
    /// registry wrote it: distribution 2.8 packs base64url(HMAC-SHA256 (32 bytes) ‖ JSON)
    /// and query-escapes it; the JSON names the repository, the UUID and the offset.
    /// (That the next request with it succeeds shows the HMAC survived too.)
    fn check(&self, loc: &str, offset: usize) {
        let rest = loc.strip_prefix(self.origin).unwrap_or_else(|| {
            panic!(
                "Location {loc} is not on the proxy's origin {}",
                self.origin
            )
        });
        let (path, query) = rest.split_once('?').expect("Location keeps its query");
        assert_eq!(path, format!("{}{}", self.uploads, self.uuid), "{loc}");
        let state: Vec<_> = form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == "_state")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(state.len(), 1, "one _state in {loc}");
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(&state[0])
            .unwrap_or_else(|e| panic!("_state of {loc} is not base64url ({e}): mangled?"));
        assert!(raw.len() > 32, "{loc}");
        let st = json(&String::from_utf8_lossy(&raw[32..]), "_state JSON");
        assert_eq!(st["Name"].as_str(), Some(self.repo), "{st}");
        assert_eq!(st["UUID"].as_str(), Some(self.uuid), "{st}");
        assert_eq!(st["Offset"].as_u64(), Some(offset as u64), "{st}");
    }
}

// ---- 4b. a slow upload ----------------------------------------------------------------

/// A blob PATCH that takes longer to send than `upstream.response_header_timeout` (2 s
/// here, 60 s by default) is not an upstream fault: the registry can only answer once it
/// has the whole body. The upload must complete, not end in a 504.
#[test]
fn slow_upload_outlasting_the_header_timeout_completes() {
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::builder(&reg.url)
        .response_header_timeout("2s")
        .start();
    let work = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0u32..4 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let file = work.path().join("slow.bin");
    std::fs::write(&file, &data).unwrap();
    let digest = sha256_digest(&data);

    let r = pcurl(
        &proxy,
        &[
            "-X",
            "POST",
            &format!("{}/v2/e2e/slow/blobs/uploads/", proxy.base),
        ],
    );
    assert_eq!(r.status, 202, "{r:?}");
    let loc = r.header("location").expect("Location").to_owned();
    // 4 MiB at 1 MiB/s: about 4 s of steady progress, never idle.
    let started = Instant::now();
    let r = pcurl(
        &proxy,
        &[
            "--limit-rate",
            "1M",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &loc,
        ],
    );
    let took = started.elapsed();
    assert_eq!(
        r.status,
        202,
        "PATCH sending for {took:?} (rate-limited, steadily progressing) was cut off: {}\n{}",
        r.text(),
        access_line(&proxy, &r.request_id())
    );
    assert!(took > Duration::from_secs(3), "upload took only {took:?}");
    assert_eq!(
        r.header("range"),
        Some(format!("0-{}", data.len() - 1).as_str())
    );
    let loc = r.header("location").expect("Location").to_owned();
    let r = pcurl(&proxy, &["-X", "PUT", &format!("{loc}&digest={digest}")]);
    assert_eq!(r.status, 201, "{r:?} {}", r.text());
}

// ---- 5. path tricks never reach the registry -------------------------------------------

/// Each trick is refused with registry JSON and the API header, and its access line has
/// no `upstream_status` (it is only written for forwarded requests; a control request
/// shows it). victim/secret exists upstream, so a forwarded trick would have found it.
#[test]
fn path_tricks_are_refused_and_never_forwarded() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    let img = mkimage(&work.path().join("victim"), 1, "v1", 5);
    push_direct(&reg, &img, "victim/secret:v1");
    let (layer, manifest) = (&img.layer_digest, &img.manifest_digest);

    // Control: 2.8 itself decodes %2F and serves the victim's layer to this path.
    let encoded = format!("/v2/victim%2Fsecret/blobs/{layer}");
    let r = curl(None, &["--path-as-is", &format!("{}{encoded}", reg.url)]);
    assert_eq!(r.status, 200, "registry 2.8 no longer decodes %2F? {r:?}");
    // Control: a forwarded request's access line carries upstream_status.
    let r = pcurl(
        &proxy,
        &[&format!("{}/v2/victim/secret/tags/list", proxy.base)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let line = access_line(&proxy, &r.request_id());
    assert!(line.contains("upstream_status=200"), "{line}");

    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            "/v2/mine/..%2Fvictim/x/tags/list".into(),
            404,
            "NOT_FOUND",
        ),
        ("GET", "/v2//victim/x/tags/list".into(), 404, "NOT_FOUND"),
        (
            "GET",
            "/v2/mine%2F..%2Fvictim/x/tags/list".into(),
            404,
            "NOT_FOUND",
        ),
        ("GET", "/v2/_catalog/".into(), 404, "NOT_FOUND"),
        (
            "GET",
            "/v2/mine/x/manifests/latest/".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/v2/VICTIM/x/manifests/a".into(),
            400,
            "NAME_INVALID",
        ),
        ("GET", "/v1/_ping".into(), 404, "NOT_FOUND"),
        ("GET", "/v1/repositories/a/b/tags".into(), 404, "NOT_FOUND"),
        ("GET", encoded.clone(), 404, "NOT_FOUND"),
        // The same tricks on the victim's real data, and destructive.
        (
            "GET",
            "/v2/mine/..%2Fvictim/secret/tags/list".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "GET",
            "/v2//victim/secret/tags/list".into(),
            404,
            "NOT_FOUND",
        ),
        (
            "DELETE",
            format!("/v2/victim%2Fsecret/manifests/{manifest}"),
            404,
            "NOT_FOUND",
        ),
        (
            "DELETE",
            format!("/v2/mine/..%2F..%2Fvictim/secret/manifests/{manifest}"),
            404,
            "NOT_FOUND",
        ),
    ];
    let auth = basic_header("mine", "pw");
    for (method, path, status, code) in &cases {
        let what = format!("{method} {path}");
        let r = pcurl(
            &proxy,
            &[
                "--path-as-is",
                "-X",
                method,
                "-H",
                &auth,
                &format!("{}{path}", proxy.base),
            ],
        );
        assert_registry_error(&r, *status, code, &what);
        let line = access_line(&proxy, &r.request_id());
        assert!(
            !line.contains("upstream_status="),
            "{what} was forwarded: {line}"
        );
        assert!(line.contains(&format!("status={status}")), "{line}");
    }

    // Nothing of the victim's was touched.
    let r = curl(
        None,
        &[
            "-H",
            &format!("Accept: {OCI_MANIFEST}"),
            &format!("{}/v2/victim/secret/manifests/v1", reg.url),
        ],
    );
    assert_eq!(r.status, 200, "victim/secret:v1 is gone: {}", r.text());
    assert_eq!(sha256_digest(&r.body), *manifest);
}

// ---- 6. upstream down ----------------------------------------------------------------

/// Nothing listens upstream: every request is a 502 UNAVAILABLE in registry JSON, the
/// client is not told the upstream's address, and the proxy stays up.
#[test]
fn upstream_down_is_502_and_the_proxy_stays_up() {
    let port = free_port();
    let proxy = Proxy::start(&format!("http://127.0.0.1:{port}"));
    for attempt in 1..=3 {
        let started = Instant::now();
        let r = pcurl(&proxy, &[&format!("{}/v2/", proxy.base)]);
        assert_registry_error(&r, 502, "UNAVAILABLE", &format!("attempt {attempt}"));
        assert!(
            !r.text().contains(&port.to_string()),
            "upstream detail leaked to the client: {}",
            r.text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a refused connection took {:?}",
            started.elapsed()
        );
        let line = access_line(&proxy, &r.request_id());
        assert!(line.contains("status=502"), "{line}");
        assert!(
            running(proxy.pid()),
            "the proxy died after a 502:\n{}",
            proxy.logs()
        );
    }
    // A v2 route with a repository fails the same way (not only the base route).
    let r = pcurl(&proxy, &[&format!("{}/v2/a/b/tags/list", proxy.base)]);
    assert_registry_error(&r, 502, "UNAVAILABLE", "tags/list");
    assert!(running(proxy.pid()));
}

/// An upstream that accepts connections and never answers: 504 once the configured
/// response_header_timeout (2 s here) passes, not a hang.
#[test]
fn silent_upstream_is_504_within_the_header_timeout() {
    // Bound but never accepted: the kernel completes the handshake, nobody reads.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", silent.local_addr().unwrap());
    let proxy = Proxy::builder(&upstream)
        .response_header_timeout("2s")
        .start();
    let started = Instant::now();
    let r = pcurl(&proxy, &[&format!("{}/v2/", proxy.base)]);
    let took = started.elapsed();
    assert_registry_error(&r, 504, "UNAVAILABLE", "silent upstream");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "answered after {took:?}"
    );
    assert!(running(proxy.pid()));
    drop(silent);
}

// ---- smoke (was tests/smoke.rs) --------------------------------------------------------

/// The smallest end-to-end check: the binary starts with a self-signed certificate in
/// front of a real registry and answers `/v2/` through it.
#[test]
fn proxies_the_base_route_over_tls() {
    let Some(reg) = Registry::start() else { return };
    let proxy = Proxy::start(&reg.url);
    let out = proxy.curl(&["-i", &format!("{}/v2/", proxy.base)]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(
        text.contains("docker-distribution-api-version: registry/2.0"),
        "{text}"
    );
    assert!(text.contains("x-request-id: "), "{text}");
}

/// The OCI conformance suite's `.INVALID_MANIFEST_NAME`, and a malformed blob digest:
/// through the proxy, reads answer 404 `MANIFEST_UNKNOWN` / `BLOB_UNKNOWN` in the
/// registry's format (HEAD without a body), as the spec says and without forwarding; a
/// delete of the same names the grammar (400). The repository exists on the registry.
#[test]
fn reads_of_references_that_cannot_exist_are_404_unknown() {
    let Some(reg) = Registry::start() else { return };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    let proxy = Proxy::start(&reg.url);
    let work = tempfile::tempdir().unwrap();
    let img = mkimage(&work.path().join("img"), 1, "v1", 7);
    push_direct(&reg, &img, "team/app:v1");
    let url = |p: &str| format!("{}{p}", proxy.base);
    let bad_blob = format!("sha256:{}", "A".repeat(64));
    let r = pcurl(
        &proxy,
        &[&url("/v2/team/app/manifests/.INVALID_MANIFEST_NAME")],
    );
    assert_registry_error(&r, 404, "MANIFEST_UNKNOWN", "GET bad reference");
    let r = pcurl(&proxy, &[&url(&format!("/v2/team/app/blobs/{bad_blob}"))]);
    assert_registry_error(&r, 404, "BLOB_UNKNOWN", "GET bad digest");
    let r = pcurl(
        &proxy,
        &["-I", &url("/v2/team/app/manifests/.INVALID_MANIFEST_NAME")],
    );
    assert_eq!(r.status, 404, "HEAD: {r:?}");
    // (curl -I prints the head on stdout: what must be missing is the JSON body)
    assert!(
        !r.text().contains("errors"),
        "HEAD with a body: {}",
        r.text()
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let r = pcurl(
        &proxy,
        &[
            "-X",
            "DELETE",
            &url("/v2/team/app/manifests/.INVALID_MANIFEST_NAME"),
        ],
    );
    assert_registry_error(&r, 400, "TAG_INVALID", "DELETE bad reference");
    // The good reference is served by the registry behind.
    let r = pcurl(
        &proxy,
        &[
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &url("/v2/team/app/manifests/v1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // None of the refused reads reached the registry (no access line with upstream_status).
    for line in proxy
        .logs()
        .lines()
        .filter(|l| l.contains("INVALID_MANIFEST_NAME"))
    {
        assert!(!line.contains("upstream_status="), "forwarded: {line}");
    }
}
