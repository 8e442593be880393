//! `registry::parse` must never panic, whatever method, path and query arrive, and must
//! never accept a path that `Route::path` does not render back byte for byte: the proxy
//! decides on exactly the bytes it forwards.
//!
//! Input: `method \n path \n query` (no second newline: no query). Bytes that are not
//! UTF-8 are replaced, as hyper only ever hands the parser valid strings.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use registry_guard::registry::{grammar, parse};

fuzz_target!(|data: &[u8]| {
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
});
