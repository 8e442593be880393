//! Helpers of the end-to-end tests against real clients: Debian's python3, skopeo,
//! images made by `tests/e2e/mkimage.py`, digests.
//!
//! A missing Debian python3(-requests) skips a test, or fails it under `RG_REQUIRE_REAL=1`
//! / `CI=true` (the same rule as `common::have`).

use super::process::{ok, run, STEP};
use super::{Proxy, Registry};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Debian's interpreter: python3-requests is installed into it, not into a pyenv one.
pub const PYTHON: &str = "/usr/bin/python3";

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
