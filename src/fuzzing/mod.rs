//! Entry points of the fuzz targets, one function per target, taking the raw input.
//! `fuzz/fuzz_targets/<t>.rs` calls `<t>(data)` under libFuzzer, and
//! `tests/fuzz_corpus.rs` replays every file of `fuzz/corpus/<t>/` through the same
//! function in plain `cargo test`, so a fixed crash stays fixed without a sanitizer build.
//!
//! Each function states what must never happen; it panics (an assertion) when it does.

use http::Method;

/// `registry::parse` must never panic, whatever method, path and query arrive, and must
/// never accept a path that `Route::path` does not render back byte for byte: the proxy
/// decides on exactly the bytes it forwards.
///
/// Input: `method \n path \n query` (no second newline: no query). Bytes that are not
/// UTF-8 are replaced, as hyper only ever hands the parser valid strings.
pub fn route(data: &[u8]) {
    use crate::registry::{grammar, parse};
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let query = parts.next();
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
    if let Ok(route) = parse(&method, path, query) {
        assert_eq!(route.path(), path, "accepted path does not round-trip");
        if let Some(repo) = route.repo() {
            assert!(grammar::is_name(repo), "accepted invalid name {repo:?}");
            assert!(
                !repo.contains('%') && !repo.contains('\\') && !repo.contains(".."),
                "accepted repo {repo:?}"
            );
        }
    }
}

/// `proxy::headers::rewrite_location` must never panic on an upstream's `Location`
/// header, and when it rewrites one it may change only the origin: the path, query and
/// fragment come out byte for byte, and a location with userinfo is never rewritten.
///
/// Input: `location \n upstream_origin \n public_origin`; missing parts get typical values.
pub fn location(data: &[u8]) {
    use crate::proxy::headers::rewrite_location;
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let location = parts.next().unwrap_or("");
    let upstream = parts.next().unwrap_or("http://127.0.0.1:5000");
    let public = parts.next().unwrap_or("https://registry.example:5443");
    if let Some(out) = rewrite_location(location, upstream, public) {
        let rest = location.split_once("://").map(|(_, r)| r);
        assert!(rest.is_some(), "rewrote a location without a scheme");
        let rest = rest.unwrap_or_default();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        assert!(!authority.contains('@'), "rewrote a location with userinfo");
        assert_eq!(out, format!("{public}{tail}"), "path or query changed");
    }
}

/// `Config::from_yaml` must never panic on any text: a bad config file is an error that
/// names the key, never a crash of `registry-guard check` or of a reload.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_yaml(text);
    }
}

/// `audit::verify::verify` must never panic on any bytes, keyed or not, as one file or two
/// (split at the first `\n--8<--\n`), with or without a `--start`/`--checkpoint`; and its
/// report must be consistent: a chain reported intact holds exactly one record per
/// non-empty line, and it has an end exactly when it has records.
pub fn audit_verify(data: &[u8]) {
    use crate::audit::record::{Chain, Position};
    use crate::audit::verify::{verify, Options};
    const MARK: &[u8] = b"\n--8<--\n";
    let (a, b) = match data.windows(MARK.len()).position(|w| w == MARK) {
        Some(i) => (&data[..i + 1], &data[i + MARK.len()..]),
        None => (data, &data[..0]),
    };
    let keyed = Chain::keyed(b"registry-guard fuzz audit key 32");
    let somewhere = Position {
        seq: 3,
        hash: "ab".repeat(32),
    };
    for chain in [&keyed, &Chain::Unkeyed] {
        for start in [None, Some(somewhere.clone())] {
            let opts = Options {
                chain,
                start,
                checkpoints: vec![somewhere.clone()],
            };
            let _ = verify([("a", a), ("b", b)], &opts);
            let opts = Options {
                checkpoints: Vec::new(),
                ..opts
            };
            let r = verify([("a", a), ("b", b)], &opts);
            if r.broken.is_none() {
                let lines = [a, b]
                    .iter()
                    .flat_map(|f| f.split(|&c| c == b'\n'))
                    .filter(|l| !l.is_empty())
                    .count() as u64;
                assert_eq!(r.records, lines, "intact, but records != lines");
            }
            assert_eq!(
                r.chain_end.is_some(),
                r.records > 0,
                "chain end without records"
            );
        }
    }
}
