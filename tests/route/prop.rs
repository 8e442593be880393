//! Properties of the pure parsers, over arbitrary and over registry-shaped input:
//!
//! - `registry::parse` never panics, whatever the method, path and query;
//! - whatever it accepts renders back to exactly the path it was given (`Route::path`),
//!   so the proxy decides on the bytes it forwards;
//! - an accepted route's repository is a valid name and holds nothing a backend could
//!   decode or clean up into another repository (`%`, `\`, `..`, `//`);
//! - `rewrite_location` never panics, and when it rewrites, only the origin changes: the
//!   path and query come out byte for byte.

use http::Method;
use proptest::prelude::*;
use registry_guard::proxy::headers::rewrite_location;
use registry_guard::registry::{grammar, parse, Route, Target};

const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

// ---------------------------------------------------------------------------------------
// Generators.

/// A method: one of the standard ones, or any token `http` accepts.
fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        3 => prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ]),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| {
            Method::from_bytes(&b).unwrap_or(Method::GET)
        }),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{1,10}".prop_map(|s| {
            Method::from_bytes(s.as_bytes()).expect("a token is a method")
        }),
    ]
}

/// Arbitrary text: any bytes made UTF-8, or any Unicode.
fn arbitrary_text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect()),
    ]
}

/// One path segment as a registry path could hold it, tricks included.
fn segment() -> impl Strategy<Value = String> {
    let fixed = prop::sample::select(vec![
        "manifests",
        "blobs",
        "uploads",
        "tags",
        "list",
        "referrers",
        "_catalog",
        "v2",
        "v1",
        "_ping",
        "mine",
        "victim",
        "a",
        "app",
        "a.b",
        "a__b",
        "a---b",
        "a_b",
        "VICTIM",
        "localhost:5000",
        "latest",
        "v1.2.3",
        ".",
        "..",
        "...",
        "",
        "%2F",
        "%2f",
        "%2E",
        "%2E%2E",
        "%25",
        "%252F",
        "%5C",
        "..%2F",
        "\\",
        "..\\",
        D256,
        "sha256:abc",
        "sha512:00",
        "SHA256:00",
        "u-1=",
        "3f1c2b4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e",
        "\0",
        "\t",
        " ",
        "é",
        "\u{FF0F}",
        "a;b",
        "a?b",
        "a#b",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        6 => fixed,
        2 => "[a-z0-9._-]{1,12}",
        1 => "[a-zA-Z0-9:=+%./\\\\_-]{0,12}",
        1 => arbitrary_text(6),
    ]
}

/// A path built of registry-shaped segments, often under `/v2/`.
fn structured_path() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "/v2/", "/v2/", "/v2/", "/v2", "/v1/", "//v2/", "/", "",
    ]);
    (
        prefix,
        prop::collection::vec(segment(), 0..9),
        prop::sample::select(vec!["", "", "", "/", "//"]),
    )
        .prop_map(|(p, segs, end)| format!("{p}{}{end}", segs.join("/")))
}

/// A path that ends like a real route, with a name in front made of valid and invalid
/// components: the shapes that reach the grammar checks rather than the path check.
fn routeish_path() -> impl Strategy<Value = String> {
    let name = prop::collection::vec(
        prop_oneof![
            4 => "[a-z0-9]{1,6}([._-][a-z0-9]{1,4}){0,2}",
            1 => segment(),
        ],
        1..5,
    )
    .prop_map(|c| c.join("/"));
    let tail = prop_oneof![
        Just("tags/list".to_owned()),
        "manifests/[a-zA-Z0-9_][a-zA-Z0-9._-]{0,8}",
        Just(format!("manifests/{D256}")),
        Just(format!("blobs/{D256}")),
        Just(format!("referrers/{D256}")),
        Just("blobs/uploads/".to_owned()),
        "blobs/uploads/[a-zA-Z0-9=_.-]{1,12}",
        segment().prop_map(|s| format!("manifests/{s}")),
        segment().prop_map(|s| format!("blobs/{s}")),
        segment().prop_map(|s| format!("blobs/uploads/{s}")),
    ];
    (name, tail).prop_map(|(n, t)| format!("/v2/{n}/{t}"))
}

/// A query: absent, arbitrary, or pairs of the keys the parser reads.
fn query() -> impl Strategy<Value = Option<String>> {
    let key = prop::sample::select(vec![
        "mount", "from", "digest", "n", "last", "_state", "x", "%6Dount", "%66rom", "",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            D256.to_owned(),
            D256.replace(':', "%3A"),
            "victim/app".to_owned(),
            "victim%2Fapp".to_owned(),
            "VICTIM".to_owned(),
            "10".to_owned(),
            "-1".to_owned(),
            "%2B5".to_owned(),
            "".to_owned(),
            "%".to_owned(),
            "%zz".to_owned(),
            "a+b".to_owned(),
        ]),
        "[a-zA-Z0-9%+=&;/._-]{0,16}",
    ];
    let pairs = prop::collection::vec((key, value), 0..5).prop_map(|ps| {
        ps.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    });
    prop_oneof![
        1 => Just(None),
        3 => pairs.prop_map(Some),
        1 => arbitrary_text(40).prop_map(Some),
    ]
}

// ---------------------------------------------------------------------------------------
// What holds of every accepted route.

fn check_accepted(route: &Route, path: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(route.path(), path, "path() must give back the input path");
    if let Some(repo) = route.repo() {
        prop_assert!(grammar::is_name(repo), "repo {:?} is not a name", repo);
        for bad in ["%", "\\", "..", "//"] {
            prop_assert!(!repo.contains(bad), "repo {:?} holds {:?}", repo, bad);
        }
        prop_assert!(!repo.is_empty() && !repo.starts_with('/') && !repo.ends_with('/'));
        prop_assert_eq!(route.namespace(), repo.split('/').next());
    } else {
        let repoless = matches!(route.target, Target::Base | Target::Catalog { .. });
        prop_assert!(repoless, "{:?} has no repo", route);
    }
    // Nothing in an accepted path could be decoded or cleaned into another path.
    prop_assert!(path.starts_with("/v2/"));
    prop_assert!(path.bytes().all(|b| b.is_ascii_graphic()));
    prop_assert!(!path.contains('%') && !path.contains('\\'));
    let inner = &path["/v2/".len()..];
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    if !inner.is_empty() {
        prop_assert!(
            inner
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."),
            "{:?} has an empty or dot segment",
            path
        );
    }
    match &route.target {
        Target::UploadStart { mount: Some(m), .. } => {
            prop_assert!(grammar::is_name(&m.from));
            prop_assert!(grammar::is_digest(&m.digest));
        }
        Target::Blob { digest, .. } | Target::Referrers { digest, .. } => {
            prop_assert!(grammar::is_digest(digest));
        }
        Target::Upload { id, .. } => prop_assert!(grammar::is_upload_id(id)),
        _ => {}
    }
    Ok(())
}

fn parse_and_check(m: &Method, path: &str, q: Option<&str>) -> Result<(), TestCaseError> {
    if let Ok(route) = parse(m, path, q) {
        check_accepted(&route, path)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn parse_never_panics_on_arbitrary_input(
        m in method(),
        path in arbitrary_text(200),
        q in prop::option::of(arbitrary_text(100)),
    ) {
        parse_and_check(&m, &path, q.as_deref())?;
        // and the same bytes behind /v2/, where the route checks start
        let v2 = format!("/v2/{path}");
        parse_and_check(&m, &v2, q.as_deref())?;
    }

    #[test]
    fn parse_holds_on_structured_paths(m in method(), path in structured_path(), q in query()) {
        parse_and_check(&m, &path, q.as_deref())?;
    }

    #[test]
    fn parse_holds_on_route_shaped_paths(m in method(), path in routeish_path(), q in query()) {
        parse_and_check(&m, &path, q.as_deref())?;
    }

    /// Valid routes are accepted: the properties above are not met by refusing all.
    #[test]
    fn valid_routes_are_accepted_and_round_trip(
        name in "[a-z0-9]{1,8}((\\.|_|__|-+)[a-z0-9]{1,4}){0,2}(/[a-z0-9]{1,8}){0,3}",
        tag in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
        id in "[a-zA-Z0-9=_.-]{1,40}",
    ) {
        let id_is_dot_segment = id == "." || id == "..";
        for (m, path) in [
            (Method::GET, format!("/v2/{name}/tags/list")),
            (Method::GET, format!("/v2/{name}/manifests/{tag}")),
            (Method::PUT, format!("/v2/{name}/manifests/{D256}")),
            (Method::HEAD, format!("/v2/{name}/blobs/{D256}")),
            (Method::POST, format!("/v2/{name}/blobs/uploads/")),
            (Method::PATCH, format!("/v2/{name}/blobs/uploads/{id}")),
            (Method::GET, format!("/v2/{name}/referrers/{D256}")),
        ] {
            let got = parse(&m, &path, None);
            if id_is_dot_segment && path.ends_with(&format!("/{id}")) {
                prop_assert!(got.is_err());
                continue;
            }
            let route = got.map_err(|e| TestCaseError::fail(format!("{m} {path:?}: {e:?}")))?;
            prop_assert_eq!(route.repo(), Some(name.as_str()));
            check_accepted(&route, &path)?;
        }
    }
}

// ---------------------------------------------------------------------------------------
// rewrite_location.

/// The part of a location after `scheme://authority`, as `rewrite_location` must keep it.
fn tail_of(location: &str) -> Option<&str> {
    let (_, rest) = location.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[end..])
}

fn check_rewrite(loc: &str, upstream: &str, public: &str) -> Result<(), TestCaseError> {
    if let Some(out) = rewrite_location(loc, upstream, public) {
        let tail = tail_of(loc);
        prop_assert!(tail.is_some(), "rewrote {:?}, which has no scheme", loc);
        let tail = tail.unwrap_or_default();
        prop_assert!(out.starts_with(public), "{:?} → {:?}", loc, out);
        prop_assert!(out.ends_with(tail), "{:?} → {:?} lost {:?}", loc, out, tail);
        prop_assert_eq!(out.len(), public.len() + tail.len());
        let userinfo = loc
            .split_once("://")
            .is_some_and(|(_, r)| r[..r.find(['/', '?', '#']).unwrap_or(r.len())].contains('@'));
        prop_assert!(!userinfo, "rewrote {:?}, which holds userinfo", loc);
    }
    Ok(())
}

fn origin() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "http://127.0.0.1:5000",
        "http://registry:80",
        "https://registry.internal:443",
        "http://[::1]:5000",
        "https://r.example:5443",
    ])
    .prop_map(str::to_owned)
}

fn location() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec!["http", "https", "HTTP", "HtTpS", "ftp", "", "http:"]);
    let authority = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:5000",
            "127.0.0.1",
            "127.0.0.1:5001",
            "127.0.0.1:5000.evil.example",
            "user@127.0.0.1:5000",
            "127.0.0.1:5000@evil.example",
            "registry",
            "REGISTRY:80",
            "registry:443",
            "registry.internal",
            "[::1]:5000",
            "[::1]",
            "s3.example",
            "",
            ":",
            "é:5000",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9.:@\\[\\]\\\\-]{0,20}",
    ];
    let tail = prop_oneof![
        "(/[a-zA-Z0-9._%-]{0,10}){0,4}(\\?[a-zA-Z0-9_=&%+/.-]{0,30})?(#[a-z]{0,5})?",
        arbitrary_text(30).prop_map(|t| format!("/{t}")),
        arbitrary_text(30),
    ];
    (scheme, authority, tail).prop_map(|(s, a, t)| format!("{s}://{a}{t}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn rewrite_location_never_panics_on_arbitrary_input(
        loc in arbitrary_text(80),
        upstream in prop_oneof![origin(), arbitrary_text(30)],
        public in prop_oneof![origin(), arbitrary_text(30)],
    ) {
        check_rewrite(&loc, &upstream, &public)?;
    }

    #[test]
    fn rewrite_location_keeps_path_and_query(
        loc in location(),
        upstream in origin(),
        public in origin(),
    ) {
        check_rewrite(&loc, &upstream, &public)?;
    }

    /// The rewrite does happen for the upstream's own locations.
    #[test]
    fn upstream_locations_are_rewritten(
        upstream in origin(),
        public in origin(),
        tail in "(/[a-zA-Z0-9._%-]{0,10}){1,4}(\\?[a-zA-Z0-9_=&%+/.-]{0,30})?",
    ) {
        let loc = format!("{upstream}{tail}");
        prop_assert_eq!(rewrite_location(&loc, &upstream, &public), Some(format!("{public}{tail}")));
        let upper = format!("{}{tail}", upstream.to_uppercase());
        prop_assert_eq!(rewrite_location(&upper, &upstream, &public), Some(format!("{public}{tail}")));
    }
}
