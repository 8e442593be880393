//! Helpers of the end-to-end tests (`tests/e2e_*.rs`): external commands run under a
//! deadline with their output captured, skopeo, images made by `tests/e2e/mkimage.py`,
//! digests, and curl with its answer parsed.
//!
//! Every external command runs under a deadline and is killed (by its pid) past it; a
//! missing Debian python3(-requests) skips a test, or fails it under `RG_REQUIRE_REAL=1` /
//! `CI=true` (the same rule as `common::have`).
#![allow(dead_code)]

use super::{wait_for, Proxy, Registry};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Debian's interpreter: python3-requests is installed into it, not into a pyenv one.
pub const PYTHON: &str = "/usr/bin/python3";
/// Deadline of one external command (a 64 MiB push over loopback takes a second or two).
pub const STEP: Duration = Duration::from_secs(60);

// ---- processes ---------------------------------------------------------------------

/// Whether Debian's python3 is there (and, with `requests`, python3-requests in it).
pub fn have_python(requests: bool) -> bool {
    let code = if requests { "import requests" } else { "pass" };
    let found = Command::new(PYTHON)
        .args(["-c", code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let what = if requests {
            "python3-requests (for /usr/bin/python3)"
        } else {
            "/usr/bin/python3"
        };
        assert!(
            !super::required(),
            "{what} is required (RG_REQUIRE_REAL/CI) but not installed: run scripts/install-deps"
        );
        eprintln!("SKIPPING: {what} is not installed (set RG_REQUIRE_REAL=1 to fail instead)");
    }
    found
}

/// A file of `tests/e2e` (mkimage.py, seed_flows.py).
pub fn e2e_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(name)
}

/// Runs `cmd` to its end within `limit`, stdin empty.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    run_in(cmd, Stdio::null(), limit)
}

/// Runs `cmd` to its end within `limit`; past it the child is killed by its pid and the
/// test fails. Output is drained by threads so a chatty child never blocks on a pipe.
pub fn run_in(cmd: &mut Command, stdin: Stdio, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let Some(status) = wait_for(limit, || child.try_wait().ok().flatten()) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {limit:?}");
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Asserts a command succeeded; returns its stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo `args`, bounded by [`STEP`].
pub fn skopeo(args: &[&str]) -> Output {
    run(Command::new("skopeo").args(args), STEP)
}

pub fn json(text: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"))
}

// ---- images ------------------------------------------------------------------------

/// One image written by mkimage.py.
#[derive(Debug, Clone)]
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
    pub manifest_digest: String,
    pub layer_digest: String,
    pub layer_size: u64,
}

impl Image {
    /// The skopeo reference of the image in its layout.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }
    pub fn layer_file(&self) -> PathBuf {
        blob_file(&self.layout, &self.layer_digest)
    }
    /// The manifest's bytes as the layout (and so the registry, digests preserved) has them.
    pub fn manifest(&self) -> Vec<u8> {
        std::fs::read(blob_file(&self.layout, &self.manifest_digest)).unwrap()
    }
}

/// An image in the OCI layout `layout` (several may share one), tagged `tag`, with one
/// layer of `size_mib` MiB of bytes drawn from `seed` (mkimage.py's default seed is 1).
/// The tag is part of the config, so of the manifest digest: distinct tags, distinct
/// images.
pub fn mkimage(layout: &Path, size_mib: u32, tag: &str, seed: u32) -> Image {
    let out = run(
        Command::new(PYTHON)
            .arg(e2e_script("mkimage.py"))
            .arg(layout)
            .args(["--size-mib", &size_mib.to_string()])
            .args(["--tag", tag, "--seed", &seed.to_string()]),
        STEP,
    );
    let v = json(ok(&out, "mkimage.py").trim(), "mkimage.py output");
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("mkimage.py: no {k}: {v}"))
    };
    Image {
        layout: layout.to_owned(),
        tag: tag.to_owned(),
        manifest_digest: s("manifest_digest").to_owned(),
        layer_digest: s("layer_digest").to_owned(),
        layer_size: v["layer_size"].as_u64().expect("mkimage.py: layer_size"),
    }
}

/// Where an OCI layout keeps a blob.
pub fn blob_file(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// The bare lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The digest `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// `sha256:<hex>` of a file, streamed (layers are bigger than worth holding in memory).
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{:x}", h.finalize())
}

/// skopeo copy through the proxy with digests preserved (the layer stays uncompressed,
/// digests unchanged), as `creds` (`user:pw`) when given.
pub fn push_through(proxy: &Proxy, img: &Image, repo_tag: &str, creds: Option<&str>) {
    let dest = format!("docker://{}/{repo_tag}", proxy.addr);
    let src = img.oci_ref();
    let mut args = vec![
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-cert-dir",
        proxy.cert_dir.to_str().unwrap(),
    ];
    if let Some(c) = creds {
        args.extend(["--dest-creds", c]);
    }
    args.extend([src.as_str(), &dest]);
    ok(&skopeo(&args), &format!("skopeo copy {src} {dest}"));
}

/// The same, straight to the registry over plain HTTP (setting up data the proxy
/// must not reach).
pub fn push_direct(reg: &Registry, img: &Image, repo_tag: &str) {
    let dest = format!("docker://{}/{repo_tag}", reg.addr);
    let out = skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &img.oci_ref(),
        &dest,
    ]);
    ok(&out, &format!("skopeo copy {} {dest}", img.oci_ref()));
}

// ---- HTTP through curl ---------------------------------------------------------------

/// One response as curl saw it (the last header block: a `100 Continue` is skipped).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        json(&self.text(), &format!("body of a {} response", self.status))
    }
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {self:?}"))
            .to_owned()
    }
    /// `errors[0].code` of a registry error body ("" when there is none).
    pub fn error_code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?} {}", self.text()));
        v["errors"][0]["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Runs curl (`-sS`, `--max-time max_time_s`, bounded by [`STEP`], trusting `ca` if
/// given, with `stdin` (a file) on its standard input if given, for `--data-binary @-`)
/// and parses its answer. For HEAD use `-I` (the body is then not meaningful).
pub fn curl_with(ca: Option<&Path>, max_time_s: u32, args: &[&str], stdin: Option<&Path>) -> Resp {
    let tmp = tempfile::tempdir().unwrap();
    let (head, body) = (tmp.path().join("head"), tmp.path().join("body"));
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", &max_time_s.to_string()]);
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    cmd.arg("-D").arg(&head).arg("-o").arg(&body).args(args);
    let stdin = match stdin {
        Some(f) => Stdio::from(std::fs::File::open(f).unwrap()),
        None => Stdio::null(),
    };
    ok(&run_in(&mut cmd, stdin, STEP), &format!("curl {args:?}"));
    let head = std::fs::read_to_string(&head).unwrap();
    let block = head
        .split("\r\n\r\n")
        .map(str::trim)
        .filter(|b| b.starts_with("HTTP/") && !b.split(' ').nth(1).unwrap_or("").starts_with('1'))
        .last()
        .unwrap_or_else(|| panic!("curl {args:?}: no response head in {head:?}"));
    let mut lines = block.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {block:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}
