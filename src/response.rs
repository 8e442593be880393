//! PURE: every response the proxy makes itself. Refusals become the registry's JSON
//! error format (`{"errors":[{"code","message","detail"}]}`) with the right status, and
//! all carry `Docker-Distribution-API-Version: registry/2.0`. [`status_and_code`] is the
//! one mapping from error to status and code; a test pins it.

use crate::auth::token::Challenge;
use crate::auth::AuthError;
use crate::error::ProxyError;
use crate::proxy::body::ResponseBody;
use crate::registry::RouteError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

pub const API_VERSION_HEADER: &str = "docker-distribution-api-version";
pub const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

/// Status and registry error code of an error.
pub fn status_and_code(e: &ProxyError) -> (StatusCode, &'static str) {
    match e {
        ProxyError::Route(r) => match r {
            RouteError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            RouteError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            RouteError::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            RouteError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            RouteError::UploadInvalid => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            RouteError::ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            RouteError::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            RouteError::QueryInvalid(_) => (StatusCode::BAD_REQUEST, "UNSUPPORTED"),
        },
        ProxyError::Auth(a) => match a {
            AuthError::Missing | AuthError::Invalid(_) => {
                (StatusCode::UNAUTHORIZED, "UNAUTHORIZED")
            }
            AuthError::Ambiguous => (StatusCode::BAD_REQUEST, "UNAUTHORIZED"),
            AuthError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            // The password was not judged: not a 401 (clients would take it for a wrong
            // password), and the throttle did not count it.
            AuthError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        },
        ProxyError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
        ProxyError::NameUnknown => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        // A limit of this proxy, not the client's request nor the upstream's fault; the
        // whole list cannot be served and a part would pass for the whole.
        ProxyError::TagListTooLong { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        ProxyError::UserConnections { .. } => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
        ProxyError::FormBody | ProxyError::UploadStartBody(_) | ProxyError::UnexpectedBody(_) => {
            (StatusCode::BAD_REQUEST, "UNSUPPORTED")
        }
        ProxyError::ManifestTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
        ProxyError::ClientBody { .. } => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
        ProxyError::AuditUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        ProxyError::UpstreamUnavailable { .. } | ProxyError::UpstreamAuth { .. } => {
            (StatusCode::BAD_GATEWAY, "UNAVAILABLE")
        }
        ProxyError::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        ProxyError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE"),
    }
}

/// The message a client sees. Upstream faults are summarised: their detail (addresses,
/// OS errors) is for the proxy's log, not for clients.
fn client_message(e: &ProxyError) -> String {
    match e {
        ProxyError::Auth(AuthError::Missing) => "authentication required".into(),
        ProxyError::Denied(reason) => reason.clone(),
        ProxyError::AuditUnavailable(_) => {
            "the audit log cannot be written, so the request was not forwarded".into()
        }
        ProxyError::Internal { .. } => "the proxy failed to handle the request".into(),
        ProxyError::UpstreamUnavailable { .. } => {
            "the registry behind this proxy is unavailable".into()
        }
        ProxyError::UpstreamTimeout(_) => {
            "the registry behind this proxy did not answer in time".into()
        }
        ProxyError::UpstreamAuth { .. } => {
            "the registry behind this proxy refused the proxy's own credentials (upstream authentication failed)".into()
        }
        other => other.to_string(),
    }
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    errors: [ErrorEntry<'a>; 1],
}

/// Field order as distribution writes it: code, message, detail.
#[derive(serde::Serialize)]
struct ErrorEntry<'a> {
    code: &'a str,
    message: &'a str,
    detail: Option<()>,
}

/// The registry JSON error body.
pub fn error_body(code: &str, message: &str) -> Bytes {
    let body = ErrorBody {
        errors: [ErrorEntry {
            code,
            message,
            detail: None,
        }],
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A response made by the proxy itself: JSON body (none for HEAD) and the API header.
pub fn own(status: StatusCode, method: &Method, body: Bytes) -> Response<ResponseBody> {
    let len = body.len();
    let body = if *method == Method::HEAD {
        ResponseBody::empty()
    } else {
        ResponseBody::full(body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(API_VERSION_HEADER, API_VERSION);
    resp
}

/// Whether the connection must close after answering `e`: the request body's framing is
/// broken or half read (a failed or stalled body, a manifest over the cap), or the
/// caller could not read away a body it never forwarded (`body_left`).
pub fn closes_connection(e: &ProxyError, body_left: bool) -> bool {
    body_left
        || matches!(
            e,
            ProxyError::ClientBody { .. }
                | ProxyError::ManifestTooLarge { .. }
                | ProxyError::UnexpectedBody(_)
                | ProxyError::UserConnections { .. }
        )
}

/// Renders an error. `challenge` is the `WWW-Authenticate` of a 401 (Basic, or Bearer
/// for docker: `auth::token::choose`); `body_left`: the request body was neither
/// forwarded nor read away (see [`closes_connection`]).
pub fn refusal(
    e: &ProxyError,
    method: &Method,
    challenge: &Challenge,
    body_left: bool,
) -> Response<ResponseBody> {
    let (status, code) = status_and_code(e);
    let mut resp = own(status, method, error_body(code, &client_message(e)));
    let h = resp.headers_mut();
    if closes_connection(e, body_left) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::UNAUTHORIZED {
        if let Ok(v) = HeaderValue::from_str(&challenge.header()) {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
    }
    if let ProxyError::Auth(AuthError::Throttled(retry)) = e {
        // Whole seconds, rounded up: a client retrying at once would only be refused again.
        let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

/// hyper answers an HTTP/1.1 request head it cannot parse (a NUL or control byte in the
/// request line, a malformed header, a target over its limit) by itself, before any
/// handler runs, with a bare `HTTP/1.1 400|414|431 ...` carrying only `connection: close`,
/// `content-length: 0` and `date`, then closes. This turns exactly that answer into the
/// registry's format (JSON error body, `Docker-Distribution-API-Version`), keeping its
/// status, date and the close; anything else is `None` and goes out untouched.
pub fn parser_refusal(hyper_wrote: &[u8]) -> Option<Vec<u8>> {
    const MAX: usize = 256;
    if hyper_wrote.len() > MAX {
        return None;
    }
    let text = std::str::from_utf8(hyper_wrote).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.1 ")?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let message = match status {
        400 => "the request is not valid HTTP/1.1: a malformed request line or header field",
        414 => "the request target is too long",
        431 => "the request header fields are too large (limits.max_header_bytes)",
        _ => return None,
    };
    let (mut close, mut empty, mut date) = (false, false, None);
    for line in lines {
        let (name, value) = line.split_once(": ")?;
        match name {
            "connection" if value == "close" && !close => close = true,
            "content-length" if value == "0" && !empty => empty = true,
            "date" if date.is_none() => date = Some(value),
            _ => return None,
        }
    }
    if !(close && empty) {
        return None;
    }
    let body = error_body("UNSUPPORTED", message);
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json; charset=utf-8\r\n{API_VERSION_HEADER}: registry/2.0\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(d) = date {
        out.push_str(&format!("date: {d}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn basic(realm: &str) -> Challenge {
        Challenge::Basic {
            realm: realm.into(),
        }
    }

    #[test]
    fn mapping_is_pinned() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (RouteError::NotFound("x").into(), 404, "NOT_FOUND"),
            (
                RouteError::ManifestUnknown("x").into(),
                404,
                "MANIFEST_UNKNOWN",
            ),
            (RouteError::BlobUnknown("x").into(), 404, "BLOB_UNKNOWN"),
            (RouteError::NameInvalid("x").into(), 400, "NAME_INVALID"),
            (RouteError::TagInvalid("x").into(), 400, "TAG_INVALID"),
            (RouteError::DigestInvalid("x").into(), 400, "DIGEST_INVALID"),
            (RouteError::UploadInvalid.into(), 400, "BLOB_UPLOAD_INVALID"),
            (RouteError::QueryInvalid("x").into(), 400, "UNSUPPORTED"),
            (ProxyError::NameUnknown, 404, "NAME_UNKNOWN"),
            (ProxyError::TagListTooLong { max: 5 }, 500, "UNKNOWN"),
            (
                ProxyError::ManifestTooLarge { limit: 1 },
                413,
                "SIZE_INVALID",
            ),
            (ProxyError::client_body("x"), 400, "BLOB_UPLOAD_INVALID"),
            (
                ProxyError::AuditUnavailable(crate::audit::writer::WriteError::Stopped),
                503,
                "UNAVAILABLE",
            ),
            (
                ProxyError::internal("cannot build the upstream URI", "bad"),
                500,
                "UNKNOWN",
            ),
            (ProxyError::upstream("x", "cause"), 502, "UNAVAILABLE"),
            (
                ProxyError::upstream_auth("the token realm answered 401", "cause"),
                502,
                "UNAVAILABLE",
            ),
            (
                ProxyError::UpstreamTimeout(Duration::from_secs(1)),
                504,
                "UNAVAILABLE",
            ),
            (AuthError::Unavailable.into(), 503, "UNAVAILABLE"),
        ];
        for (e, status, code) in cases {
            assert_eq!(
                status_and_code(&e),
                (StatusCode::from_u16(status).unwrap(), code),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn refusals_are_registry_json_with_the_api_header() {
        let r = refusal(
            &RouteError::NotFound("not a v2 path").into(),
            &Method::GET,
            &basic("r"),
            false,
        );
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()[API_VERSION_HEADER], "registry/2.0");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "NOT_FOUND");
        assert_eq!(v["errors"][0]["message"], "not a v2 path");
        assert!(v["errors"][0]["detail"].is_null());
    }

    #[tokio::test]
    async fn head_refusals_have_no_body_but_keep_the_length() {
        let r = refusal(
            &RouteError::NotFound("x").into(),
            &Method::HEAD,
            &basic("r"),
            false,
        );
        assert_ne!(r.headers()[header::CONTENT_LENGTH], "0");
        assert!(r.into_body().collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn the_challenge_is_exactly_what_clients_expect() {
        let r = refusal(
            &AuthError::Missing.into(),
            &Method::GET,
            &basic("registry-guard"),
            false,
        );
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Basic realm=\"registry-guard\""
        );
        assert_eq!(r.headers()[API_VERSION_HEADER], "registry/2.0");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#
        );
        // docker's challenge (auth::token::choose): the same answer, another header.
        let bearer = Challenge::Bearer {
            origin: "https://registry.example:5443".into(),
        };
        let r = refusal(&AuthError::Missing.into(), &Method::GET, &bearer, false);
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"https://registry.example:5443/auth/token\",service=\"registry-guard\""
        );
        assert_eq!(r.headers()[API_VERSION_HEADER], "registry/2.0");
        let r = refusal(
            &AuthError::Throttled(Duration::from_millis(2500)).into(),
            &Method::GET,
            &basic("r"),
            false,
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn upstream_details_stay_out_of_client_messages() {
        let e = ProxyError::upstream("tcp connect error 10.1.2.3:5000", "refused");
        assert!(!client_message(&e).contains("10.1.2.3"));
        // An upstream auth failure names itself, never the realm or what it said.
        let e =
            ProxyError::upstream_auth("the token realm http://10.1.2.3/token answered 401", "x");
        assert!(client_message(&e).contains("upstream authentication failed"));
        assert!(!client_message(&e).contains("10.1.2.3"));
        let r = refusal(&e, &Method::GET, &basic("registry-guard"), false);
        assert_eq!(r.status(), 502);
        assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
        let e = ProxyError::AuditUnavailable(crate::audit::writer::WriteError::File {
            what: "open",
            file: "/var/log/x/audit.jsonl".into(),
            source: std::sync::Arc::new(std::io::Error::other("no space")),
        });
        assert!(!client_message(&e).contains("/var/log"));
        assert!(
            e.chain().contains("/var/log/x/audit.jsonl: no space"),
            "{}",
            e.chain()
        );
    }

    #[test]
    fn hypers_own_refusals_become_registry_errors_and_nothing_else_is_touched() {
        let date = "date: Mon, 30 Nov 2026 21:29:32 GMT";
        for (status, line) in [
            (400, "HTTP/1.1 400 Bad Request"),
            (414, "HTTP/1.1 414 URI Too Long"),
            (431, "HTTP/1.1 431 Request Header Fields Too Large"),
        ] {
            for headers in [
                format!("connection: close\r\ncontent-length: 0\r\n{date}"),
                format!("content-length: 0\r\nconnection: close\r\n{date}"),
                "connection: close\r\ncontent-length: 0".to_owned(),
            ] {
                let canned = format!("{line}\r\n{headers}\r\n\r\n");
                let out = parser_refusal(canned.as_bytes()).expect(&canned);
                let text = String::from_utf8(out).unwrap();
                let (head, body) = text.split_once("\r\n\r\n").unwrap();
                assert!(head.starts_with(&format!("{line}\r\n")), "{head}");
                assert!(head.contains("\r\ndocker-distribution-api-version: registry/2.0"));
                assert!(head.contains("\r\nconnection: close"));
                assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
                assert_eq!(head.contains(date), headers.contains(date));
                let v: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(v["errors"][0]["code"], "UNSUPPORTED", "{status}");
            }
        }
        for other in [
            // Not hyper's shape: responses of the handler or the upstream, body bytes.
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 5\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nx: y\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nbody",
            "HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.0 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 4",
            "",
            "\u{0}\u{0}",
        ] {
            assert_eq!(parser_refusal(other.as_bytes()), None, "{other:?}");
        }
        assert_eq!(parser_refusal(&[b'H'; 300]), None);
    }
}
