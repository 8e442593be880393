//! The smallest end-to-end check: the binary starts with a self-signed certificate in
//! front of a real registry and answers `/v2/` through it.
mod common;
use common::*;

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
