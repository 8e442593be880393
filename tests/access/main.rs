//! Access rules (checklist sections A, F, G) against the registry-guard binary in front of
//! a small fake upstream that records what reaches it: the actions every route needs,
//! refusals that reveal nothing, mount parameters and form bodies, the filtered catalog
//! with its own paging, tag lists sorted and paged by the proxy, `explain` and `check`.
//!
//! Topics: `routes` (the actions every route needs, refusals that reveal nothing),
//! `forms` (mount parameters, form bodies), `catalog` (the filtered catalog), `tags`
//! (tag lists read whole, sorted and paged by the proxy, also against Debian's
//! docker-registry), `protected_tags` (deletes of what protected tags reference),
//! `explain` (`explain` and `check`), and `e2e` (the same rules against Debian's
//! docker-registry, driven by skopeo and curl).
#[path = "../common/mod.rs"]
mod common;
use common::client::h2_request;
use common::curl::*;
use common::fake::*;
use common::process::*;
use common::*;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

mod catalog;
mod e2e;
mod explain;
mod forms;
mod protected_tags;
mod routes;
mod tags;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_DIGEST: &str =
    "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const UPLOAD: &str = "7c9a2f4e-1b2d-4c3e-9f80-aa11bb22cc33";

fn proxy_call<'a>(proxy: &'a Proxy, method: &'a str, path: &'a str) -> Call<'a> {
    call(&proxy.base, Some(&proxy.ca), method, path)
}

// ---------------------------------------------------------------------------------------
// The actions a route needs and the route table's users and proxy (`routes`, `catalog`).

const P: u8 = 1; // pull
const U: u8 = 2; // push
const D: u8 = 4; // delete

const TABLE_USERS: [(&str, u8); 4] = [
    ("puller", P),
    ("pusher", P | U),
    ("deleter", P | D),
    ("pushonly", U),
];

fn table_proxy(upstream: &str) -> Proxy {
    Proxy::builder(upstream)
        .users(
            TABLE_USERS
                .iter()
                .map(|(n, _)| user(n, "pw", &[]))
                .collect(),
        )
        .access_yaml(
            "  rules:\n    - repos: ['team/**']\n      users: [puller]\n      actions: [pull]\n    - repos: ['team/**']\n      users: [pusher]\n      actions: [pull, push]\n    - repos: ['team/**']\n      users: [deleter]\n      actions: [pull, delete]\n    - repos: ['team/**']\n      users: [pushonly]\n      actions: [push]\n",
        )
        .start()
}

fn cli(args: &[&str], dir: &Path) -> (Option<i32>, String, String) {
    let (out, exited) = run_bounded(
        std::process::Command::new(bin())
            .args(args)
            .current_dir(dir),
        Duration::from_secs(20),
    );
    assert!(exited, "registry-guard {args:?} did not exit");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Content-Type values Go's `mime.ParseMediaType` (and so distribution's `FormValue`)
/// reads as a form: it lowercases with Unicode rules (`İ` U+0130 becomes `i`), trims
/// Unicode white space (NBSP, NEL, EM SPACE, IDEOGRAPHIC SPACE) that HTTP carries as
/// obs-text bytes, and ignores parameters, broken or not.
const DISGUISED_FORM_TYPES: &[&[u8]] = &[
    b" application/x-www-form-urlencoded",
    b"\tapplication/x-www-form-urlencoded",
    b"Application/X-WWW-Form-Urlencoded",
    b"APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    b"application/x-www-form-urlencoded;charset=\"broken",
    b"appl\xc4\xb0cation/x-www-form-urlencoded",
    b"APPL\xc4\xb0CATION/X-WWW-FORM-URLENCODED; charset=utf-8",
    b"\xc2\xa0application/x-www-form-urlencoded",
    b"\xc2\x85application/x-www-form-urlencoded ;charset=utf-8",
    b"application/x-www-form-urlencoded\xe3\x80\x80",
    b"\xe2\x80\x83multipart/form-data; boundary=x",
    b"MULTIPART/FORM-DATA; boundary=x",
];

/// Content-Type values that are not forms to Go but still not what a client sends on an
/// upload start: refused there all the same (only the exact values clients send pass).
const ODD_UPLOAD_START_TYPES: &[&[u8]] = &[
    b"text/plain",
    b"application/json; charset=utf-8",
    b"Application/Octet-Stream",
    b"application/octet-stream ",
    b"appl\xc4\xb1cation/x-www-form-urlencoded",
    b"",
];
