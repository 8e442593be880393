//! PURE: the header rules: hop-by-hop and forwarded headers, credentials, Location.
//!
//! Requests: hop-by-hop headers (and every header `Connection` names) are dropped; the
//! client's `Authorization`, `Proxy-Authorization`, `Forwarded`, `X-Forwarded-*` and
//! `X-Real-IP` are dropped and the proxy sets its own; `Host` and `Expect` are the
//! proxy's business on each hop. Everything else, every value of repeated headers
//! (several `Accept`), `Range` and `If-*` included, passes unchanged.
//!
//! Responses: hop-by-hop headers are dropped, and so is `WWW-Authenticate`: the
//! upstream's challenges are for the proxy (its own credentials or tokens, see
//! `upstream_token`), never for the client, who only ever sees the proxy's Basic
//! challenge; a `Location` on the upstream's own origin
//! is rewritten to the public origin with the rest kept byte for byte; every other
//! header (`Docker-Content-Digest`, `Docker-Upload-UUID`, `Range`, `Link`, `OCI-*`,
//! `Content-Length`, also on HEAD) passes unchanged.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers meaningful for one connection only (RFC 9110 §7.6.1), never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
    )
}

/// Response headers meant for the proxy alone: the upstream's challenge (a `Bearer`
/// realm, service and scope) would send clients to the upstream's token service.
const UPSTREAM_ONLY: [HeaderName; 1] = [header::WWW_AUTHENTICATE];

/// Request headers the proxy owns: dropped from the client's request.
fn is_client_set_dropped(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "proxy-authorization"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-real-ip"
            | "host"
            | "expect"
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the proxy knows about the request that the headers it adds carry.
#[derive(Debug, Clone)]
pub struct ForwardContext<'a> {
    /// The peer address of the client connection.
    pub client_ip: std::net::IpAddr,
    /// `https` or `http`: how the client reached the proxy.
    pub proto: &'static str,
    /// `host[:port]` of the public origin, for `X-Forwarded-Host`.
    pub public_host: Option<&'a str>,
}

/// The header names `Connection` lists (hop-by-hop too); none in almost every request.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name);
    }
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in present {
        headers.remove(name);
    }
}

/// The upstream request's headers from the client's, in one pass: every header but the
/// hop-by-hop ones (and those `Connection` names), the ones the proxy owns, and `drop`
/// (what the request's method sends no body with); then the proxy's `X-Forwarded-*`.
pub fn forwarded_request(
    client: &HeaderMap,
    ctx: &ForwardContext<'_>,
    drop: &[HeaderName],
) -> HeaderMap {
    let named = connection_named(client);
    let mut out = HeaderMap::with_capacity(client.len() + 3);
    for (name, value) in client {
        if is_hop_by_hop(name)
            || is_client_set_dropped(name)
            || drop.contains(name)
            || named.contains(name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    let ip = ctx.client_ip.to_canonical().to_string();
    if let Ok(v) = HeaderValue::from_str(&ip) {
        out.insert(X_FORWARDED_FOR, v);
    }
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(ctx.proto));
    if let Some(h) = ctx.public_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        out.insert(X_FORWARDED_HOST, h);
    }
    out
}

/// Rewrites the upstream's response headers, in place, into the client response's.
pub fn forward_response(headers: &mut HeaderMap, upstream_origin: &str, public_origin: &str) {
    strip_hop_by_hop(headers);
    for name in UPSTREAM_ONLY {
        headers.remove(name);
    }
    if let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) {
        if let Some(new) = rewrite_location(loc, upstream_origin, public_origin) {
            if let Ok(v) = HeaderValue::from_str(&new) {
                headers.insert(header::LOCATION, v);
            }
        }
    }
}

/// A `Location` on the upstream's own origin (normalised `scheme://host:port`, as in
/// `config::Upstream::origin`) → the same location on `public_origin`, the path and
/// query kept byte for byte. `None`: leave it as it is (relative, or another host such
/// as object storage).
pub fn rewrite_location(
    location: &str,
    upstream_origin: &str,
    public_origin: &str,
) -> Option<String> {
    let (scheme, rest) = location.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains('@') {
        return None;
    }
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = authority.to_ascii_lowercase();
    // host:port, with IPv6 literals in brackets; an authority without port gets the default.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let normalised = if has_port {
        format!("{scheme}://{authority}")
    } else {
        format!("{scheme}://{authority}:{default_port}")
    };
    (normalised == upstream_origin).then(|| format!("{public_origin}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ForwardContext<'static> {
        ForwardContext {
            client_ip: "192.0.2.7".parse().unwrap(),
            proto: "https",
            public_host: Some("registry.example:5443"),
        }
    }

    #[test]
    fn request_drops_hop_by_hop_credentials_and_forwarding_claims() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Basic dXNlcjpwYXNz"),
            ("forwarded", "host=evil.example"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "http"),
            ("host", "evil.example"),
            ("expect", "100-continue"),
            ("accept", "application/vnd.oci.image.manifest.v1+json"),
            (
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            ),
            ("range", "bytes=0-99"),
            ("if-none-match", "\"sha256:x\""),
            ("user-agent", "skopeo/1.9.3"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let h = forwarded_request(&h, &ctx(), &[]);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
            "authorization",
            "forwarded",
            "host",
            "expect",
        ] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h.get_all("accept").iter().count(), 2);
        assert_eq!(h["range"], "bytes=0-99");
        assert_eq!(h["if-none-match"], "\"sha256:x\"");
        assert_eq!(h["user-agent"], "skopeo/1.9.3");
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["192.0.2.7"]
        );
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "registry.example:5443");
    }

    #[test]
    fn ipv4_mapped_peers_are_logged_as_ipv4() {
        let mut c = ctx();
        c.client_ip = "::ffff:127.0.0.1".parse().unwrap();
        let h = forwarded_request(&HeaderMap::new(), &c, &[]);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }

    #[test]
    fn locations() {
        let up = "http://127.0.0.1:5000";
        let public = "https://registry.example:5443";
        let q = "/v2/a/blobs/uploads/u1?_state=AbC%2Bd%3D%3D&x=1";
        assert_eq!(
            rewrite_location(&format!("http://127.0.0.1:5000{q}"), up, public).as_deref(),
            Some(format!("{public}{q}").as_str())
        );
        assert_eq!(
            rewrite_location("HTTP://127.0.0.1:5000/v2/", up, public).as_deref(),
            Some("https://registry.example:5443/v2/")
        );
        // other hosts, other ports, relative and odd locations stay as they are
        for keep in [
            "https://s3.example/bucket/blob?X-Amz-Signature=abc",
            "http://127.0.0.1:5001/v2/",
            "http://127.0.0.1:5000.evil.example/v2/",
            "http://user@127.0.0.1:5000/v2/",
            "/v2/a/blobs/uploads/u1?_state=x",
            "ftp://127.0.0.1:5000/",
            "",
        ] {
            assert_eq!(rewrite_location(keep, up, public), None, "{keep}");
        }
        assert_eq!(
            rewrite_location("http://registry:80/v2/", "http://registry:80", public).as_deref(),
            Some("https://registry.example:5443/v2/")
        );
        assert_eq!(
            rewrite_location("http://registry/v2/", "http://registry:80", public).as_deref(),
            Some("https://registry.example:5443/v2/")
        );
        assert_eq!(
            rewrite_location("http://[::1]:5000?x", "http://[::1]:5000", public).as_deref(),
            Some("https://registry.example:5443?x")
        );
    }

    #[test]
    fn response_keeps_registry_headers_and_drops_hop_by_hop() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("docker-content-digest", "sha256:abc"),
            ("docker-upload-uuid", "u1"),
            ("range", "0-99"),
            ("link", "</v2/a/tags/list?n=1&last=b>; rel=\"next\""),
            ("oci-subject", "sha256:def"),
            ("content-length", "1234"),
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            (
                "www-authenticate",
                "Bearer realm=\"http://auth/token\",service=\"r\",scope=\"repository:a:pull\"",
            ),
            ("www-authenticate", "Basic realm=\"upstream\""),
            (
                "location",
                "http://127.0.0.1:5000/v2/a/blobs/uploads/u1?_state=q%2F",
            ),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        forward_response(&mut h, "http://127.0.0.1:5000", "https://r.example");
        for keep in [
            "docker-content-digest",
            "docker-upload-uuid",
            "range",
            "link",
            "oci-subject",
            "content-length",
        ] {
            assert!(h.contains_key(keep), "{keep} dropped");
        }
        for gone in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "www-authenticate",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(
            h["location"],
            "https://r.example/v2/a/blobs/uploads/u1?_state=q%2F"
        );
    }
}
