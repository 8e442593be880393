//! The pain points of registries behind proxies (issue 10, point 4), each pinned against
//! Debian's real docker-registry (distribution 2.8) behind registry-guard, driven by real
//! clients: curl, skopeo, podman and docker (a dockerd of the test's own, as root).
//!
//! Topics: `transfers` (a 2 GiB push slower than 60 s with flat memory; HTTP/2 and
//! chunked uploads without Content-Length to an HTTP/1.1 upstream), `locations` (the
//! proxy on a non-default port, `public_url`), `anonymous` (pulls without a login by
//! every client, pushes still need credentials).
#[path = "../common/mod.rs"]
mod common;
use common::curl::{call, curl_with, Resp};
use common::e2e::{mkimage, sha256_file, Image};
use common::process::{ok, run_bounded};
use common::*;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod anonymous;
mod locations;
mod transfers;

/// A user with every right on every repository, and the rule that lets anonymous pull
/// `public/**`.
const ACCESS: &str = "  rules:
    - repos: ['**']
      users: ['*']
      actions: [pull, push, delete]
    - repos: ['public/**']
      anonymous: true
      actions: [pull]
";

const ALICE: (&str, &str) = ("alice", "pw-alice");

/// The registry, and registry-guard in front of it with `extra` top-level YAML.
fn start(server_yaml: &str, extra: &str) -> Option<(Registry, Proxy)> {
    let reg = Registry::start()?;
    let proxy = Proxy::builder(&reg.url)
        .users(vec![user(ALICE.0, ALICE.1, &[])])
        .auth_yaml("  anonymous: true\n")
        .access_yaml(ACCESS)
        .server_yaml(server_yaml)
        .extra_yaml(extra)
        .start();
    Some((reg, proxy))
}

/// A curl request to the proxy as alice.
fn as_alice<'a>(proxy: &'a Proxy, method: &'a str, path: &'a str) -> common::curl::Call<'a> {
    call(&proxy.base, Some(&proxy.ca), method, path).user(ALICE.0, ALICE.1)
}

/// The blob as the registry itself holds it (plain HTTP, no proxy): status, digest
/// header, length.
fn registry_blob(reg: &Registry, repo: &str, digest: &str) -> Resp {
    call(
        &reg.url,
        None,
        "HEAD",
        &format!("/v2/{repo}/blobs/{digest}"),
    )
    .send()
}

/// `Location` of a response, which must be there.
fn location(r: &Resp) -> String {
    r.header("location")
        .unwrap_or_else(|| panic!("no Location: {}", r.describe()))
        .to_owned()
}

/// `url` with `digest=` added to its query.
fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}
