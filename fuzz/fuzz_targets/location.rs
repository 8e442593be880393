//! `proxy::headers::rewrite_location` must never panic on an upstream's `Location`
//! header, and when it rewrites one it may change only the origin: the path, query and
//! fragment come out byte for byte, and a location with userinfo is never rewritten.
//!
//! Input: `location \n upstream_origin \n public_origin`; missing parts get typical values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_guard::proxy::headers::rewrite_location;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let location = parts.next().unwrap_or("");
    let upstream = parts.next().unwrap_or("http://127.0.0.1:5000");
    let public = parts.next().unwrap_or("https://registry.example:5443");
    if let Some(out) = rewrite_location(location, upstream, public) {
        let (_, rest) = location
            .split_once("://")
            .expect("rewrote a location without a scheme");
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        assert!(!authority.contains('@'), "rewrote a location with userinfo");
        assert_eq!(out, format!("{public}{tail}"), "path or query changed");
    }
});
