//! The route parser held to the checklist, case by case: every route and method of
//! section A with the actions it needs, every other method refused, the path tricks of
//! section C, the grammar of section B, greedy name matching, the legacy v1 API, the
//! mount parameters of section F and the paging parameters of section G.
//!
//! Each table is checked whole and every mismatch is reported at once, so one run shows
//! all that is wrong rather than the first row.

use http::Method;
use registry_guard::registry::{parse, route::Mount, Reference, Route, RouteError, Target};

const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UUID: &str = "3f1c2b4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e";

fn d512() -> String {
    format!("sha512:{}", "0123456789abcdef".repeat(8))
}

/// Every method tried against every route: the standard ones, and extension methods
/// that only look like them.
fn all_methods() -> Vec<Method> {
    [
        "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get",
        "Get", "PROPFIND", "MOVE", "COPY", "PURGE",
    ]
    .iter()
    .map(|m| Method::from_bytes(m.as_bytes()).expect("valid method token"))
    .collect()
}

fn method(m: &str) -> Method {
    Method::from_bytes(m.as_bytes()).expect("valid method token")
}

/// The variant of a refusal; the messages are for people and may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Name,
    Tag,
    Digest,
    Upload,
    Query,
    /// A GET/HEAD of a manifest whose reference cannot exist: 404 MANIFEST_UNKNOWN.
    ManifestUnknown,
    /// A GET/HEAD of a blob whose digest is malformed: 404 BLOB_UNKNOWN.
    BlobUnknown,
}

fn class(e: &RouteError) -> Refusal {
    match e {
        RouteError::NotFound(_) => Refusal::NotFound,
        RouteError::NameInvalid(_) => Refusal::Name,
        RouteError::TagInvalid(_) => Refusal::Tag,
        RouteError::DigestInvalid(_) => Refusal::Digest,
        RouteError::UploadInvalid => Refusal::Upload,
        RouteError::QueryInvalid(_) => Refusal::Query,
        RouteError::ManifestUnknown(_) => Refusal::ManifestUnknown,
        RouteError::BlobUnknown(_) => Refusal::BlobUnknown,
    }
}

/// What a route's last component is: the manifest reference, blob or referrers
/// digest, or upload id.
fn reference(r: &Route) -> Option<String> {
    match &r.target {
        Target::Manifest { reference, .. } => Some(match reference {
            Reference::Tag(t) => format!("tag:{t}"),
            Reference::Digest(d) => format!("digest:{d}"),
        }),
        Target::Blob { digest, .. } | Target::Referrers { digest, .. } => Some(digest.clone()),
        Target::Upload { id, .. } => Some(id.clone()),
        _ => None,
    }
}

fn show(r: &Result<Route, RouteError>) -> String {
    match r {
        Ok(r) => format!(
            "Ok(kind={} repo={:?} ref={:?} actions={})",
            r.kind(),
            r.repo(),
            reference(r),
            r.actions()
        ),
        Err(e) => format!("Err({e:?})"),
    }
}

/// An expected accepted route.
struct Want<'a> {
    kind: &'a str,
    repo: Option<&'a str>,
    /// `tag:<t>` / `digest:<d>` for manifests, the digest or upload id otherwise.
    reference: Option<String>,
    actions: &'a str,
}

/// Checks one accepted case, pushing a line per mismatch onto `fails`.
fn check_ok(
    fails: &mut Vec<String>,
    m: &Method,
    path: &str,
    query: Option<&str>,
    want: &Want<'_>,
) -> Option<Route> {
    let got = parse(m, path, query);
    let case = format!("{m} {path:?} ?{query:?}");
    match &got {
        Ok(r) => {
            let ok = r.kind() == want.kind
                && r.repo() == want.repo
                && reference(r) == want.reference
                && r.actions().to_string() == want.actions
                && r.path() == path
                && r.method == *m
                && r.namespace() == want.repo.map(|n| n.split('/').next().unwrap());
            if !ok {
                fails.push(format!(
                    "{case}: want kind={} repo={:?} ref={:?} actions={}, got {} path()={:?}",
                    want.kind,
                    want.repo,
                    want.reference,
                    want.actions,
                    show(&got),
                    r.path()
                ));
            }
            Some(r.clone())
        }
        Err(_) => {
            fails.push(format!("{case}: want {}, got {}", want.kind, show(&got)));
            None
        }
    }
}

fn check_err(fails: &mut Vec<String>, m: &Method, path: &str, query: Option<&str>, want: Refusal) {
    let got = parse(m, path, query);
    let ok = matches!(&got, Err(e) if class(e) == want);
    if !ok {
        fails.push(format!(
            "{m} {path:?} ?{query:?}: want Err({want:?}), got {}",
            show(&got)
        ));
    }
}

/// Refused, whichever way (400 or 404 are both right for the checklist).
fn check_refused(fails: &mut Vec<String>, m: &Method, path: &str, query: Option<&str>) {
    let got = parse(m, path, query);
    if got.is_ok() {
        fails.push(format!(
            "{m} {path:?} ?{query:?}: want a refusal, got {}",
            show(&got)
        ));
    }
}

fn assert_none(fails: Vec<String>) {
    assert!(
        fails.is_empty(),
        "{} case(s) wrong:\n  {}",
        fails.len(),
        fails.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------
// Section A: routes, methods, actions.

/// One route of the table: path, query, and per allowed method the actions it needs.
struct RouteRow {
    path: String,
    kind: &'static str,
    repo: Option<&'static str>,
    reference: Option<String>,
    methods: &'static [(&'static str, &'static str)],
}

fn section_a() -> Vec<RouteRow> {
    const READ_NONE: &[(&str, &str)] = &[("GET", "none"), ("HEAD", "none")];
    const GET_NONE: &[(&str, &str)] = &[("GET", "none")];
    const GET_PULL: &[(&str, &str)] = &[("GET", "pull")];
    const MANIFEST: &[(&str, &str)] = &[
        ("GET", "pull"),
        ("HEAD", "pull"),
        ("PUT", "pull+push"),
        ("DELETE", "pull+delete"),
    ];
    const BLOB: &[(&str, &str)] = &[("GET", "pull"), ("HEAD", "pull"), ("DELETE", "pull+delete")];
    const UPLOAD_START: &[(&str, &str)] = &[("POST", "pull+push")];
    const UPLOAD: &[(&str, &str)] = &[
        ("GET", "pull+push"),
        ("HEAD", "pull+push"),
        ("PATCH", "pull+push"),
        ("PUT", "pull+push"),
        // Cancelling an upload deletes nothing stored.
        ("DELETE", "push"),
    ];
    let d512 = d512();
    vec![
        RouteRow {
            path: "/v2/".into(),
            kind: "base",
            repo: None,
            reference: None,
            methods: READ_NONE,
        },
        RouteRow {
            path: "/v2/_catalog".into(),
            kind: "catalog",
            repo: None,
            reference: None,
            methods: GET_NONE,
        },
        RouteRow {
            path: "/v2/mine/app/tags/list".into(),
            kind: "tags",
            repo: Some("mine/app"),
            reference: None,
            methods: GET_PULL,
        },
        RouteRow {
            path: "/v2/ubuntu/tags/list".into(),
            kind: "tags",
            repo: Some("ubuntu"),
            reference: None,
            methods: GET_PULL,
        },
        RouteRow {
            path: "/v2/mine/app/manifests/latest".into(),
            kind: "manifest",
            repo: Some("mine/app"),
            reference: Some("tag:latest".into()),
            methods: MANIFEST,
        },
        RouteRow {
            path: "/v2/mine/app/manifests/v1.2.3-rc_1".into(),
            kind: "manifest",
            repo: Some("mine/app"),
            reference: Some("tag:v1.2.3-rc_1".into()),
            methods: MANIFEST,
        },
        RouteRow {
            path: format!("/v2/mine/app/manifests/{D256}"),
            kind: "manifest",
            repo: Some("mine/app"),
            reference: Some(format!("digest:{D256}")),
            methods: MANIFEST,
        },
        RouteRow {
            path: format!("/v2/mine/a.b/c__d/e---f/manifests/{d512}"),
            kind: "manifest",
            repo: Some("mine/a.b/c__d/e---f"),
            reference: Some(format!("digest:{d512}")),
            methods: MANIFEST,
        },
        RouteRow {
            path: format!("/v2/mine/app/blobs/{D256}"),
            kind: "blob",
            repo: Some("mine/app"),
            reference: Some(D256.into()),
            methods: BLOB,
        },
        RouteRow {
            path: format!("/v2/mine/app/blobs/{d512}"),
            kind: "blob",
            repo: Some("mine/app"),
            reference: Some(d512.clone()),
            methods: BLOB,
        },
        RouteRow {
            path: "/v2/mine/app/blobs/uploads/".into(),
            kind: "upload_start",
            repo: Some("mine/app"),
            reference: None,
            methods: UPLOAD_START,
        },
        RouteRow {
            path: format!("/v2/mine/app/blobs/uploads/{UUID}"),
            kind: "upload",
            repo: Some("mine/app"),
            reference: Some(UUID.into()),
            methods: UPLOAD,
        },
        RouteRow {
            path: "/v2/mine/app/blobs/uploads/a=b_c.d-e".into(),
            kind: "upload",
            repo: Some("mine/app"),
            reference: Some("a=b_c.d-e".into()),
            methods: UPLOAD,
        },
        RouteRow {
            path: format!("/v2/mine/app/referrers/{D256}"),
            kind: "referrers",
            repo: Some("mine/app"),
            reference: Some(D256.into()),
            methods: GET_PULL,
        },
    ]
}

#[test]
fn section_a_every_route_and_method_needs_the_listed_actions() {
    let mut fails = Vec::new();
    let mut checked = 0;
    for row in section_a() {
        for (m, actions) in row.methods {
            let want = Want {
                kind: row.kind,
                repo: row.repo,
                reference: row.reference.clone(),
                actions,
            };
            check_ok(&mut fails, &method(m), &row.path, None, &want);
            checked += 1;
        }
    }
    assert_none(fails);
    // 2 base + 1 catalog + 2 tags + 16 manifest + 6 blob + 1 upload start + 10 upload + 1 referrers
    assert_eq!(checked, 39, "the table lost rows");
}

#[test]
fn section_a_every_other_method_is_not_found() {
    let mut fails = Vec::new();
    for row in section_a() {
        for m in all_methods() {
            if row
                .methods
                .iter()
                .any(|(allowed, _)| *allowed == m.as_str())
            {
                continue;
            }
            check_err(&mut fails, &m, &row.path, None, Refusal::NotFound);
        }
    }
    assert_none(fails);
}

#[test]
fn section_a_upload_start_and_mount_exist_only_on_post() {
    let mut fails = Vec::new();
    let q = format!("mount={D256}&from=other/app");
    for m in all_methods() {
        if m == Method::POST {
            continue;
        }
        check_err(
            &mut fails,
            &m,
            "/v2/mine/app/blobs/uploads/",
            Some(&q),
            Refusal::NotFound,
        );
    }
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// Section C: path tricks. Whatever the method, never accepted.

/// Path tricks the path check itself refuses: 404 whatever the route would be.
fn path_tricks_not_found() -> Vec<String> {
    let mut v: Vec<String> = [
        // the checklist's own cases
        "/v2/mine/..%2Fvictim/x/tags/list",
        "/v2//victim/x/tags/list",
        "/v2/mine%2F..%2Fvictim/x/tags/list",
        "/v2/_catalog/",
        "/v2/mine/x/manifests/latest/",
        // %2F (2.8 served victim/secret for this)
        "/v2/victim%2Fsecret/blobs/D",
        "/v2/mine%2fvictim/x/tags/list",
        "/v2/mine/x/manifests/latest%2F",
        // %2E: dots the backend would decode, then clean
        "/v2/mine/%2E%2E/victim/x/tags/list",
        "/v2/mine/%2e%2e/victim/x/tags/list",
        "/v2/mine/.%2E/victim/x/tags/list",
        "/v2/mine/x/manifests/%2E",
        "/v2/%2E/mine/x/tags/list",
        // %5C and raw backslashes
        "/v2/mine%5C..%5Cvictim/x/tags/list",
        "/v2/mine/x%5Cy/tags/list",
        "/v2/mine\\..\\victim/x/tags/list",
        "/v2/mine/..\\victim/x/tags/list",
        "/v2/mine\\victim/tags/list",
        "/v2/mine/x/manifests/latest\\",
        // %25: double encoding
        "/v2/mine/x%252Fy/tags/list",
        "/v2/mine%252F..%252Fvictim/x/tags/list",
        "/v2/mine/x/manifests/latest%25",
        // any other escape, even of harmless bytes
        "/v2/mine/%61pp/tags/list",
        "/v2/mine/app/manifests/lat%65st",
        "/v2/mine/app/blobs/sha256%3A0123",
        "/v2/mine/app/%",
        // dot segments
        "/v2/mine/./x/tags/list",
        "/v2/./mine/x/tags/list",
        "/v2/mine/../victim/x/tags/list",
        "/v2/../v2/victim/tags/list",
        "/v2/..",
        "/v2/.",
        "/v2/mine/x/manifests/.",
        "/v2/mine/x/manifests/..",
        "/v2/mine/x/blobs/uploads/..",
        "/v2/mine/x/blobs/uploads/.",
        "/v2/mine/x/tags/list/..",
        "/v2/mine/x/tags/list/.",
        "/v2/_catalog/..",
        "/v2/mine/x/../blobs/uploads/",
        // empty segments
        "/v2//",
        "/v2//_catalog",
        "/v2/mine//x/tags/list",
        "/v2/mine/x//tags/list",
        "/v2/mine/x/tags//list",
        "/v2/mine/x//manifests/latest",
        "/v2/mine/x/manifests//latest",
        "/v2/mine/x/blobs/uploads//",
        "/v2/mine/x/blobs/uploads//u1",
        "/v2/mine/x/blobs//uploads/",
        "/v2/blobs/uploads/",
        // trailing slashes a backend would redirect away
        "/v2/mine/x/tags/list/",
        "/v2/mine/x/blobs/uploads/u1/",
        "/v2/mine/x/referrers/D/",
        // control bytes, spaces
        "/v2/mine/x\0/tags/list",
        "/v2/mine/x/manifests/latest\0",
        "/v2/mine/x\t/tags/list",
        "/v2/mine/x/tags/list\r\n",
        "/v2/mine/x\r\nHost: evil/tags/list",
        "/v2/mine/x\x7f/tags/list",
        "/v2/mine/x /tags/list",
        "/v2/mine/x/manifests/latest ",
        "/v2/\x01",
        // non-ASCII, including look-alike slashes and dots
        "/v2/mïne/x/tags/list",
        "/v2/mine/x/manifests/lätest",
        "/v2/mine\u{FF0F}victim/tags/list",
        "/v2/mine\u{2215}victim/tags/list",
        "/v2/mine/\u{FF0E}\u{FF0E}/victim/tags/list",
        "/v2/mine/x/blobs/uploads/\u{00e9}",
        "/v2/mine\u{00A0}/tags/list",
        // not under /v2/
        "/v2",
        "/v2/_catalog/../mine",
        "//v2/",
        "/V2/",
        "/v2%2F",
        "/v2%2F_catalog",
        "/v20/",
        "/v3/",
        "/",
        "",
        "v2/",
        "/./v2/",
        "/x/../v2/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("/v2/mine/x/blobs/{D256}/"));
    v.push(format!("/v2/mine/x/manifests/{D256}/"));
    v.push(format!("/v2/mine/x/blobs/{}", D256.replace(':', "%3A")));
    // longer than any valid route could be
    v.push(format!("/v2/{}/tags/list", "a/".repeat(1100)));
    v
}

#[test]
fn section_c_path_tricks_are_not_found_for_every_method() {
    let mut fails = Vec::new();
    for path in path_tricks_not_found() {
        for m in all_methods() {
            check_err(&mut fails, &m, &path, None, Refusal::NotFound);
        }
    }
    assert_none(fails);
}

#[test]
fn section_c_near_tricks_are_refused_one_way_or_another() {
    // These get past the path check (no escape, no dot or empty segment) but still name
    // no valid repository; 400 NAME_INVALID or 404 both keep them from the registry.
    let mut fails = Vec::new();
    for path in [
        "/v2//blobs/uploads/",
        "/v2/mine//x/blobs/uploads/",
        "/v2/mine/.../x/tags/list",
        "/v2/mine/..x/tags/list",
        "/v2/mine/x../tags/list",
        "/v2/.mine/x/tags/list",
        "/v2/mine./x/tags/list",
        "/v2/_catalog/tags/list",
        "/v2/_catalog/x/manifests/latest",
        "/v2/mine/x/blobs/uploads",
        "/v2/mine/x/blobs",
        "/v2/mine/x/manifests",
        "/v2/mine/x/tags",
        "/v2/mine/x",
        "/v2/mine",
        "/v2/tags/list",
        "/v2/manifests/latest",
        "/v2/mine/x/referrers",
        "/v2/_catalogx",
        "/v2/_CATALOG",
        "/v2/?",
        "/v2/#",
        "/v2/mine/x/manifests/latest?x",
        "/v2/mine/x/manifests/latest#frag",
        "/v2/mine/x;y/tags/list",
        "/v2/mine/x/manifests/latest;jsessionid=1",
        "/v2/mine:5000/x/tags/list",
        "/v2/mine/x@y/tags/list",
        "/v2/~mine/x/tags/list",
    ] {
        for m in all_methods() {
            check_refused(&mut fails, &m, path, None);
        }
    }
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// Section B: grammar.

#[test]
fn section_b_names() {
    let mut fails = Vec::new();
    let get = Method::GET;
    // upper case: 400 NAME_INVALID, never forwarded
    for path in [
        "/v2/VICTIM/x/manifests/a",
        "/v2/Mine/app/tags/list",
        "/v2/mine/App/tags/list",
        "/v2/mine/aPp/blobs/uploads/",
    ] {
        let m = if path.ends_with("uploads/") {
            Method::POST
        } else {
            get.clone()
        };
        check_err(&mut fails, &m, path, None, Refusal::Name);
    }
    // host:port as first component: distribution's router takes it, the proxy must not
    for path in [
        "/v2/localhost:5000/mine/x/manifests/latest",
        "/v2/registry.example:443/x/tags/list",
        "/v2/127.0.0.1:5000/x/tags/list",
        "/v2/mine:5000/x/tags/list",
    ] {
        check_err(&mut fails, &get, path, None, Refusal::Name);
    }
    // separators
    for comp in [
        "-a", "a-", ".a", "a.", "_a", "a_", "a___b", "a..b", "a._b", "a.-b", "a_-b", "a+b", "a@b",
        "a~b", "a:b", "a=b", "a,b", "a!b",
    ] {
        check_err(
            &mut fails,
            &get,
            &format!("/v2/mine/{comp}/tags/list"),
            None,
            Refusal::Name,
        );
    }
    for comp in [
        "a",
        "a.b",
        "a_b",
        "a__b",
        "a-b",
        "a---b",
        "2048",
        "a1.b2-c3__d4",
    ] {
        let repo = format!("mine/{comp}");
        let path = format!("/v2/{repo}/tags/list");
        match parse(&get, &path, None) {
            Ok(r) if r.repo() == Some(repo.as_str()) => {}
            other => fails.push(format!(
                "{path:?}: want tags of {repo}, got {}",
                show(&other)
            )),
        }
    }
    // length: 255 accepted, 256 refused, for one and for many components
    for (repo, ok) in [
        ("a".repeat(255), true),
        ("a".repeat(256), false),
        (format!("{}a", "ab/".repeat(84)), true),     // 253
        (format!("{}abc", "ab/".repeat(84)), true),   // 255
        (format!("{}abcd", "ab/".repeat(84)), false), // 256
        ("a/".repeat(200) + "a", false),
    ] {
        for (m, path) in [
            (get.clone(), format!("/v2/{repo}/tags/list")),
            (get.clone(), format!("/v2/{repo}/manifests/latest")),
            (get.clone(), format!("/v2/{repo}/blobs/{D256}")),
            (Method::POST, format!("/v2/{repo}/blobs/uploads/")),
            (Method::PATCH, format!("/v2/{repo}/blobs/uploads/{UUID}")),
            (get.clone(), format!("/v2/{repo}/referrers/{D256}")),
        ] {
            let got = parse(&m, &path, None);
            let right = if ok {
                matches!(&got, Ok(r) if r.repo() == Some(repo.as_str()))
            } else {
                matches!(&got, Err(e) if class(e) == Refusal::Name)
            };
            if !right {
                fails.push(format!(
                    "{m} name of {} bytes: want {}, got {}",
                    repo.len(),
                    if ok { "accepted" } else { "NameInvalid" },
                    show(&got)
                ));
            }
        }
    }
    assert_none(fails);
}

#[test]
fn section_b_tags() {
    let mut fails = Vec::new();
    let get = Method::GET;
    let t128 = format!("a{}", "b".repeat(127));
    for tag in [
        "latest", "v1.2.3", "_x", "A", "1", "UPPER", "a-b_c.d", "x..y", "x--", &t128,
    ] {
        let want = Want {
            kind: "manifest",
            repo: Some("mine/app"),
            reference: Some(format!("tag:{tag}")),
            actions: "pull",
        };
        check_ok(
            &mut fails,
            &get,
            &format!("/v2/mine/app/manifests/{tag}"),
            None,
            &want,
        );
    }
    let t129 = format!("a{}", "b".repeat(128));
    // A read of a reference that cannot exist is a 404 MANIFEST_UNKNOWN (OCI spec); a
    // write or delete names the grammar (400 TAG_INVALID / DIGEST_INVALID).
    for tag in [
        ".x", "-x", "a+b", "a~b", "a@b", "a=b", "a,b", "a!b", "a$b", &t129,
    ] {
        let path = format!("/v2/mine/app/manifests/{tag}");
        for m in [&get, &Method::HEAD] {
            check_err(&mut fails, m, &path, None, Refusal::ManifestUnknown);
        }
        for m in [&Method::PUT, &Method::DELETE] {
            check_err(&mut fails, m, &path, None, Refusal::Tag);
        }
    }
    // a reference with a colon is read as a digest, so a "tag" with one is a bad digest
    for r in ["a:b", "latest:", ":latest", "sha256:latest"] {
        let path = format!("/v2/mine/app/manifests/{r}");
        check_err(&mut fails, &get, &path, None, Refusal::ManifestUnknown);
        check_err(&mut fails, &Method::DELETE, &path, None, Refusal::Digest);
    }
    assert_none(fails);
}

fn bad_digests() -> Vec<String> {
    let hex64 = &D256["sha256:".len()..];
    let hex128 = "0123456789abcdef".repeat(8);
    vec![
        // wrong hex length
        format!("sha256:{}", &hex64[..63]),
        format!("sha256:{hex64}0"),
        format!("sha256:{hex128}"),
        format!("sha512:{}", &hex128[..127]),
        format!("sha512:{hex128}0"),
        format!("sha512:{hex64}"),
        // upper-case or non-hex
        format!("sha256:{}", hex64.to_uppercase()),
        format!("sha256:{}A", &hex64[..63]),
        format!("sha256:{}g", &hex64[..63]),
        format!("sha512:{}", hex128.to_uppercase()),
        // algorithm
        format!("SHA256:{hex64}"),
        format!("Sha256:{hex64}"),
        format!("md5:{}", &hex64[..32]),
        format!("sha384:{}", "ab".repeat(48)),
        format!("sha256+b64:{hex64}"),
        format!("sha256-:{hex64}"),
        format!(":{hex64}"),
        // shape
        "sha256".to_owned(),
        "sha256:".to_owned(),
        "latest".to_owned(),
        format!("sha256:{hex64}:"),
        format!("sha256::{hex64}"),
        format!("sha256:{}=", &hex64[..63]),
    ]
}

#[test]
fn section_b_digests() {
    let mut fails = Vec::new();
    let get = Method::GET;
    for d in bad_digests() {
        // Reads of a blob that cannot exist: 404 BLOB_UNKNOWN (OCI spec); a delete, and
        // the referrers API, name the grammar.
        let blob = format!("/v2/mine/app/blobs/{d}");
        for m in [&get, &Method::HEAD] {
            check_err(&mut fails, m, &blob, None, Refusal::BlobUnknown);
        }
        check_err(&mut fails, &Method::DELETE, &blob, None, Refusal::Digest);
        let referrers = format!("/v2/mine/app/referrers/{d}");
        check_err(&mut fails, &get, &referrers, None, Refusal::Digest);
        // On a manifest path a colon-free "digest" is a tag; the rest are bad digests.
        let path = format!("/v2/mine/app/manifests/{d}");
        if d.contains(':') {
            check_err(&mut fails, &get, &path, None, Refusal::ManifestUnknown);
            check_err(&mut fails, &Method::DELETE, &path, None, Refusal::Digest);
        }
        // the digest of a monolithic upload or of an upload's last PUT
        check_err(
            &mut fails,
            &Method::POST,
            "/v2/mine/app/blobs/uploads/",
            Some(&format!("digest={d}")),
            Refusal::Digest,
        );
        check_err(
            &mut fails,
            &Method::PUT,
            &format!("/v2/mine/app/blobs/uploads/{UUID}"),
            Some(&format!("digest={d}")),
            Refusal::Digest,
        );
    }
    assert_none(fails);
}

#[test]
fn section_b_upload_ids() {
    let mut fails = Vec::new();
    let id256 = "a".repeat(256);
    let want = Want {
        kind: "upload",
        repo: Some("mine/app"),
        reference: Some(id256.clone()),
        actions: "pull+push",
    };
    check_ok(
        &mut fails,
        &Method::PATCH,
        &format!("/v2/mine/app/blobs/uploads/{id256}"),
        None,
        &want,
    );
    for id in [
        "a:b".to_owned(),
        "a+b".to_owned(),
        "a~b".to_owned(),
        "a@b".to_owned(),
        "a,b".to_owned(),
        "a!b".to_owned(),
        "a;b".to_owned(),
        D256.to_owned(),
        "a".repeat(257),
    ] {
        for m in ["GET", "HEAD", "PATCH", "PUT", "DELETE"] {
            check_err(
                &mut fails,
                &method(m),
                &format!("/v2/mine/app/blobs/uploads/{id}"),
                None,
                Refusal::Upload,
            );
        }
    }
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// Greedy matching on the name, like distribution's router.

#[test]
fn greedy_name_matching() {
    let mut fails = Vec::new();
    let rows: Vec<(&str, String, Want)> = vec![
        (
            "GET",
            "/v2/foo/bar/manifests/tags/list".into(),
            Want {
                kind: "tags",
                repo: Some("foo/bar/manifests"),
                reference: None,
                actions: "pull",
            },
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/".into(),
            Want {
                kind: "upload_start",
                repo: Some("a"),
                reference: None,
                actions: "pull+push",
            },
        ),
        (
            "PATCH",
            "/v2/a/blobs/uploads/x".into(),
            Want {
                kind: "upload",
                repo: Some("a"),
                reference: Some("x".into()),
                actions: "pull+push",
            },
        ),
        (
            "GET",
            format!("/v2/a/blobs/{D256}"),
            Want {
                kind: "blob",
                repo: Some("a"),
                reference: Some(D256.into()),
                actions: "pull",
            },
        ),
        (
            "GET",
            "/v2/tags/list/manifests/latest".into(),
            Want {
                kind: "manifest",
                repo: Some("tags/list"),
                reference: Some("tag:latest".into()),
                actions: "pull",
            },
        ),
        (
            "GET",
            "/v2/a/blobs/uploads/tags/list".into(),
            Want {
                kind: "tags",
                repo: Some("a/blobs/uploads"),
                reference: None,
                actions: "pull",
            },
        ),
        (
            "GET",
            format!("/v2/a/manifests/blobs/{D256}"),
            Want {
                kind: "blob",
                repo: Some("a/manifests"),
                reference: Some(D256.into()),
                actions: "pull",
            },
        ),
        (
            "POST",
            "/v2/a/blobs/uploads/blobs/uploads/".into(),
            Want {
                kind: "upload_start",
                repo: Some("a/blobs/uploads"),
                reference: None,
                actions: "pull+push",
            },
        ),
        (
            "PUT",
            "/v2/a/blobs/uploads/blobs/uploads/u1".into(),
            Want {
                kind: "upload",
                repo: Some("a/blobs/uploads"),
                reference: Some("u1".into()),
                actions: "pull+push",
            },
        ),
        (
            "GET",
            format!("/v2/a/referrers/referrers/{D256}"),
            Want {
                kind: "referrers",
                repo: Some("a/referrers"),
                reference: Some(D256.into()),
                actions: "pull",
            },
        ),
        (
            "GET",
            "/v2/manifests/manifests/latest".into(),
            Want {
                kind: "manifest",
                repo: Some("manifests"),
                reference: Some("tag:latest".into()),
                actions: "pull",
            },
        ),
        (
            "GET",
            "/v2/tags/list/tags/list".into(),
            Want {
                kind: "tags",
                repo: Some("tags/list"),
                reference: None,
                actions: "pull",
            },
        ),
        (
            "GET",
            "/v2/a/manifests/manifests/list".into(),
            Want {
                kind: "manifest",
                repo: Some("a/manifests"),
                reference: Some("tag:list".into()),
                actions: "pull",
            },
        ),
        (
            "DELETE",
            "/v2/blobs/blobs/uploads/uploads".into(),
            Want {
                kind: "upload",
                repo: Some("blobs"),
                reference: Some("uploads".into()),
                actions: "push",
            },
        ),
        (
            "GET",
            "/v2/v2/manifests/v2".into(),
            Want {
                kind: "manifest",
                repo: Some("v2"),
                reference: Some("tag:v2".into()),
                actions: "pull",
            },
        ),
    ];
    for (m, path, want) in &rows {
        check_ok(&mut fails, &method(m), path, None, want);
    }
    // a v1 path inside a v2 one names no valid repository
    check_err(
        &mut fails,
        &Method::GET,
        "/v2/v1/_ping/tags/list",
        None,
        Refusal::Name,
    );
    // uploads/ with a session id that is a digest is no blob of `a/blobs`
    check_err(
        &mut fails,
        &Method::GET,
        &format!("/v2/a/blobs/uploads/{D256}"),
        None,
        Refusal::Upload,
    );
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// The legacy v1 API (seed 003): never served.

#[test]
fn legacy_v1_paths_are_not_found() {
    let mut fails = Vec::new();
    let id = "a".repeat(64);
    let paths = [
        "/v1/_ping".to_owned(),
        "/v1/".to_owned(),
        "/v1".to_owned(),
        format!("/v1/images/{id}/layer"),
        format!("/v1/images/{id}/json"),
        format!("/v1/images/{id}/ancestry"),
        format!("/v1/images/{id}/checksum"),
        "/v1/repositories/ns/repo/tags".to_owned(),
        "/v1/repositories/ns/repo/tags/latest".to_owned(),
        "/v1/repositories/ns/repo/images".to_owned(),
        "/v1/repositories/ns/repo/".to_owned(),
        "/v1/repositories/repo/tags".to_owned(),
        "/v1/users".to_owned(),
        "/v1/users/".to_owned(),
        "/v1/search".to_owned(),
        "/v1/_ping/../../v2/".to_owned(),
        "/v1/../v2/".to_owned(),
    ];
    for path in &paths {
        for m in all_methods() {
            check_err(&mut fails, &m, path, None, Refusal::NotFound);
            check_err(&mut fails, &m, path, Some("q=x&n=1"), Refusal::NotFound);
        }
    }
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// Section F: cross-repository mount.

fn upload_start(query: &str) -> Result<Route, RouteError> {
    parse(&Method::POST, "/v2/mine/app/blobs/uploads/", Some(query))
}

fn mount_of(r: &Result<Route, RouteError>) -> Option<Option<Mount>> {
    match r {
        Ok(Route {
            target: Target::UploadStart { repo, mount },
            ..
        }) if repo == "mine/app" => Some(mount.clone()),
        _ => None,
    }
}

#[test]
fn section_f_mount_parameters() {
    let mut fails = Vec::new();
    let mount = |digest: &str, from: &str| {
        Some(Some(Mount {
            digest: digest.to_owned(),
            from: from.to_owned(),
        }))
    };
    let d512 = d512();
    let accepted: Vec<(String, Option<Option<Mount>>)> = vec![
        (
            format!("mount={D256}&from=victim/app"),
            mount(D256, "victim/app"),
        ),
        (
            format!("from=victim/app&mount={D256}"),
            mount(D256, "victim/app"),
        ),
        (format!("mount={d512}&from=victim"), mount(&d512, "victim")),
        // percent-encoded values decode, as the registry decodes them
        (
            format!("mount={}&from=victim%2Fapp", D256.replace(':', "%3A")),
            mount(D256, "victim/app"),
        ),
        (
            format!("mount={}&from=victim%2fapp", D256.replace(':', "%3a")),
            mount(D256, "victim/app"),
        ),
        // and so do keys
        (
            format!("%6Dount={D256}&%66rom=victim/app"),
            mount(D256, "victim/app"),
        ),
        // other parameters ride along
        (
            format!("mount={D256}&from=victim/app&x=1"),
            mount(D256, "victim/app"),
        ),
        // only one of the pair: a plain upload start, nothing read from elsewhere
        (format!("mount={D256}"), Some(None)),
        ("from=victim/app".to_owned(), Some(None)),
        ("".to_owned(), Some(None)),
        // a monolithic upload
        (format!("digest={D256}"), Some(None)),
        (format!("digest={}", D256.replace(':', "%3A")), Some(None)),
    ];
    for (q, want) in &accepted {
        let got = upload_start(q);
        if mount_of(&got) != *want {
            fails.push(format!("?{q}: want {want:?}, got {}", show(&got)));
        } else if got.as_ref().unwrap().actions().to_string() != "pull+push" {
            fails.push(format!(
                "?{q}: upload start needs pull+push on its own repo"
            ));
        }
    }
    if mount_of(&parse(&Method::POST, "/v2/mine/app/blobs/uploads/", None)) != Some(None) {
        fails.push("no query: want a plain upload start".into());
    }
    let refused: Vec<(String, Refusal)> = vec![
        // repeats: the proxy and the registry could read different ones
        (
            format!("mount={D256}&mount={D256}&from=victim/app"),
            Refusal::Query,
        ),
        (
            format!("mount={D256}&from=victim/app&from=mine/app"),
            Refusal::Query,
        ),
        (
            format!("mount={D256}&from=mine/app&from=victim/app"),
            Refusal::Query,
        ),
        (
            format!("mount={D256}&from=mine/app&%66rom=victim/app"),
            Refusal::Query,
        ),
        (
            format!("mount={D256}&from=victim/app&from="),
            Refusal::Query,
        ),
        (
            format!("mount={D256}&mount=&from=victim/app"),
            Refusal::Query,
        ),
        (format!("from=a&from=b&mount={D256}"), Refusal::Query),
        (format!("mount={D256}&mount={D256}"), Refusal::Query),
        ("from=a&from=b".to_owned(), Refusal::Query),
        (format!("digest={D256}&digest={D256}"), Refusal::Query),
        // invalid from
        (format!("mount={D256}&from=VICTIM/app"), Refusal::Name),
        (format!("mount={D256}&from=victim/../x"), Refusal::Name),
        (format!("mount={D256}&from=victim%2F..%2Fx"), Refusal::Name),
        (format!("mount={D256}&from=/victim"), Refusal::Name),
        (format!("mount={D256}&from=victim//app"), Refusal::Name),
        (format!("mount={D256}&from=localhost:5000/x"), Refusal::Name),
        (format!("mount={D256}&from="), Refusal::Name),
        (format!("mount={D256}&from=victim%00"), Refusal::Name),
        (
            format!("mount={D256}&from={}", "a".repeat(256)),
            Refusal::Name,
        ),
        ("from=VICTIM".to_owned(), Refusal::Name),
        // invalid mount
        (
            "mount=sha256:abc&from=victim/app".to_owned(),
            Refusal::Digest,
        ),
        ("mount=&from=victim/app".to_owned(), Refusal::Digest),
        ("mount=latest&from=victim/app".to_owned(), Refusal::Digest),
        (
            format!("mount={}&from=victim/app", D256.to_uppercase()),
            Refusal::Digest,
        ),
        ("mount=sha256:abc".to_owned(), Refusal::Digest),
        ("digest=sha256:abc".to_owned(), Refusal::Digest),
    ];
    for (q, want) in &refused {
        let got = upload_start(q);
        if !matches!(&got, Err(e) if class(e) == *want) {
            fails.push(format!("?{q}: want Err({want:?}), got {}", show(&got)));
        }
    }
    assert_none(fails);
}

// ---------------------------------------------------------------------------------------
// Section G: catalog and tag list paging.

#[test]
fn section_g_paging_parameters() {
    let mut fails = Vec::new();
    let get = Method::GET;
    let catalog = |q: Option<&str>| parse(&get, "/v2/_catalog", q);
    for (q, n, last) in [
        (None, None, None),
        (Some(""), None, None),
        (Some("n=10"), Some(10), None),
        (Some("n=0"), Some(0), None),
        (Some("n=4294967295"), Some(u32::MAX), None),
        (Some("n="), None, None),
        (Some("last=mine/app"), None, Some("mine/app")),
        (Some("last=mine%2Fapp&n=5"), Some(5), Some("mine/app")),
        (Some("n=5&last="), Some(5), None),
        (Some("x=1&n=2"), Some(2), None),
    ] {
        let got = catalog(q);
        let ok = matches!(&got, Ok(Route { target: Target::Catalog { n: gn, last: gl }, .. })
            if *gn == n && gl.as_deref() == last);
        if !ok {
            fails.push(format!(
                "catalog ?{q:?}: want n={n:?} last={last:?}, got {got:?}"
            ));
        }
    }
    for q in [
        "n=abc",
        "n=-1",
        "n=1.5",
        "n=1e3",
        "n=0x10",
        "n=4294967296",
        "n=99999999999999999999",
        "n=%20",
        "n=1&n=2",
        "n=1&n=1",
        "n=&n=1",
        "last=a&last=b",
        "last=a&last=a",
        "last=UPPER",
        "last=a//b",
        "last=../x",
    ] {
        check_err(&mut fails, &get, "/v2/_catalog", Some(q), Refusal::Query);
    }
    let tags = "/v2/mine/app/tags/list";
    for q in ["n=5", "n=5&last=v1.2", "last=latest", "n=", "last="] {
        let want = Want {
            kind: "tags",
            repo: Some("mine/app"),
            reference: None,
            actions: "pull",
        };
        check_ok(&mut fails, &get, tags, Some(q), &want);
    }
    for q in [
        "n=abc",
        "n=-1",
        "n=1&n=2",
        "last=a&last=b",
        "last=.x",
        "last=a:b",
        "last=a/b",
    ] {
        check_err(&mut fails, &get, tags, Some(q), Refusal::Query);
    }
    assert_none(fails);
}

#[test]
fn oversized_inputs_are_refused_not_parsed() {
    let mut fails = Vec::new();
    let q = format!("_state={}", "a".repeat(9000));
    check_err(
        &mut fails,
        &Method::PATCH,
        &format!("/v2/mine/app/blobs/uploads/{UUID}"),
        Some(&q),
        Refusal::Query,
    );
    // a state token of realistic size passes
    let q = format!("_state={}", "a".repeat(1000));
    let want = Want {
        kind: "upload",
        repo: Some("mine/app"),
        reference: Some(UUID.into()),
        actions: "pull+push",
    };
    check_ok(
        &mut fails,
        &Method::PATCH,
        &format!("/v2/mine/app/blobs/uploads/{UUID}"),
        Some(&q),
        &want,
    );
    check_err(
        &mut fails,
        &Method::GET,
        &format!("/v2/{}", "a".repeat(5000)),
        None,
        Refusal::NotFound,
    );
    assert_none(fails);
}

#[test]
fn semicolons_in_upload_start_queries_are_refused() {
    let d = format!("sha256:{}", "a".repeat(64));
    let q = format!("x=1;from=victim/app&mount={d}");
    assert_eq!(
        registry_guard::registry::parse(
            &http::Method::POST,
            "/v2/mine/app/blobs/uploads/",
            Some(&q)
        ),
        Err(registry_guard::registry::RouteError::QueryInvalid(
            "';' in an upload query"
        ))
    );
}
