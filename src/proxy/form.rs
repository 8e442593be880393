//! PURE: request bodies the registry behind could read as a form.
//!
//! distribution (and every Go registry: zot, Harbor) reads request parameters with
//! `r.FormValue`, which parses the body too when the request is a POST, PUT or PATCH and
//! Go's `mime.ParseMediaType` makes its Content-Type a form type; a value from the body
//! wins over the query. `POST .../blobs/uploads/?mount=D` with a body `from=victim/x`
//! was a mount of the victim's blob that the proxy never saw.
//!
//! The rule is decided on what Go parses, not on a look-alike: `ParseMediaType` lowercases
//! with Unicode simple case mapping (`İ` U+0130 becomes `i`, `K` KELVIN SIGN U+212A
//! becomes `k`), trims Unicode white space (NBSP, NEL, EM SPACE…) and ignores the
//! parameters, broken or not. [`go_media_type`] does the same.
//!
//! Two rules follow:
//! - An upload start (POST `/v2/<name>/blobs/uploads/`) carries no body at all, and at
//!   most one Content-Type, byte for byte one that real clients send (see
//!   [`UPLOAD_START_TYPES`]). The proxy forwards it with an empty body and no
//!   Content-Type, so there is nothing left for the upstream to read.
//! - Any other request with a body (upload PATCH/PUT, manifest PUT) is refused when any of
//!   its Content-Type values is a form to Go.

use http::{header, HeaderMap};

/// The Content-Type values an upload start may carry, compared byte for byte. Measured
/// from the clients' sources: docker (moby's distribution client), containerd,
/// containers/image (skopeo, podman, buildah) and oras-go send none at all;
/// go-containerregistry (crane, ko) sends `application/json`; clients following the OCI
/// spec's examples send `application/octet-stream`.
pub const UPLOAD_START_TYPES: [&[u8]; 2] = [b"application/json", b"application/octet-stream"];

/// Media types for which Go's `Request.FormValue` reads the body.
const GO_FORM_TYPES: [&str; 2] = ["application/x-www-form-urlencoded", "multipart/form-data"];

/// Why an upload start's headers are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStartRefusal {
    /// More than one Content-Type header.
    SeveralContentTypes,
    /// A Content-Type that is not byte for byte in [`UPLOAD_START_TYPES`].
    ContentType,
    /// A Content-Length other than `0`, or several.
    Body,
}

impl UploadStartRefusal {
    pub fn message(self) -> &'static str {
        match self {
            UploadStartRefusal::SeveralContentTypes => {
                "an upload start carries at most one Content-Type"
            }
            UploadStartRefusal::ContentType => {
                "an upload start carries no Content-Type other than application/json or application/octet-stream"
            }
            UploadStartRefusal::Body => {
                "an upload start carries no body: start the upload, then send the blob with PATCH or PUT"
            }
        }
    }
}

/// Checks the headers of an upload start (POST `/v2/<name>/blobs/uploads/`). The body
/// itself is checked to be empty while forwarding (a chunked body announces no length).
pub fn check_upload_start(headers: &HeaderMap) -> Result<(), UploadStartRefusal> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(_), Some(_)) => return Err(UploadStartRefusal::SeveralContentTypes),
        (Some(v), None) if !UPLOAD_START_TYPES.contains(&v.as_bytes()) => {
            return Err(UploadStartRefusal::ContentType)
        }
        _ => {}
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match (lengths.next(), lengths.next()) {
        (Some(_), Some(_)) => Err(UploadStartRefusal::Body),
        (Some(v), None) if v.as_bytes() != b"0" => Err(UploadStartRefusal::Body),
        _ => Ok(()),
    }
}

/// Whether any Content-Type value of these headers is a form to Go's `FormValue`.
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .any(|v| go_media_type(v.as_bytes()).is_some_and(|t| GO_FORM_TYPES.contains(&t.as_str())))
}

/// The media type Go's `mime.ParseMediaType` finds in a Content-Type value, or `None`
/// where it fails on the media type itself. Go: `strings.TrimSpace(strings.ToLower(base))`
/// with `base` the text before the first `;`, then every character must be a token
/// character (ASCII), with one `/`. Parameters are not looked at: `FormValue` uses the
/// media type even when they are broken.
pub fn go_media_type(value: &[u8]) -> Option<String> {
    // Go strings are bytes; invalid UTF-8 decodes to U+FFFD, which is no token character.
    let text = String::from_utf8_lossy(value);
    let base = text.split(';').next().unwrap_or("");
    // Go's `unicode.ToLower` is the simple (one-to-one) mapping; for U+0130, whose full
    // lowercase is `i` + U+0307, the simple mapping is the first of the two.
    let lower: String = base
        .chars()
        .map(|c| c.to_lowercase().next().unwrap_or(c))
        .collect();
    // `unicode.IsSpace` and Rust's `char::is_whitespace` are the same set.
    let media = lower.trim_matches(char::is_whitespace);
    let (major, minor) = media.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.chars().all(is_token_char);
    (token(major) && token(minor)).then(|| media.to_owned())
}

/// RFC 1521 token characters, as Go's `mime` package defines them.
fn is_token_char(c: char) -> bool {
    c.is_ascii() && c > ' ' && c != '\x7f' && !"()<>@,;:\\\"/[]?=".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    /// Every spelling that Go reads as a form, by the trick it uses.
    const DISGUISED_FORMS: &[&[u8]] = &[
        b"application/x-www-form-urlencoded",
        b"Application/X-WWW-Form-Urlencoded",
        b"APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
        b"application/x-www-form-urlencoded;charset=\"broken",
        b"application/x-www-form-urlencoded ;",
        b" application/x-www-form-urlencoded",
        b"\tapplication/x-www-form-urlencoded\t",
        // U+0130 LATIN CAPITAL LETTER I WITH DOT ABOVE lowercases to `i` in Go
        b"appl\xc4\xb0cation/x-www-form-urlencoded",
        b"APPL\xc4\xb0CATION/X-WWW-FORM-URLENCODED",
        b"multipart/form-data; boundary=x",
        b"multipart/form-data",
        b"MULTIPART/FORM-DATA; boundary=\"a b\"",
        b"application/x-www-form-urlencoded\xe2\x80\x83",
        // NBSP, NEL, EM SPACE, IDEOGRAPHIC SPACE, LINE SEPARATOR around the type
        b"\xc2\xa0application/x-www-form-urlencoded",
        b"\xc2\x85application/x-www-form-urlencoded ;charset=utf-8",
        b"\xe2\x80\x83multipart/form-data; boundary=x",
        b"\xe3\x80\x80multipart/form-data\xe2\x80\xa8; boundary=x",
        b"application/x-www-form-urlencoded\xc2\xa0; charset=utf-8",
    ];

    #[test]
    fn every_go_form_spelling_is_a_form() {
        for v in DISGUISED_FORMS {
            let what = String::from_utf8_lossy(v);
            assert!(
                go_media_type(v).is_some_and(|t| GO_FORM_TYPES.contains(&t.as_str())),
                "{what:?} -> {:?}",
                go_media_type(v)
            );
            assert!(is_form(&headers(&[("content-type", v)])), "{what:?}");
            // and none of them starts an upload
            assert!(
                check_upload_start(&headers(&[("content-type", v)])).is_err(),
                "{what:?}"
            );
        }
        // the Kelvin sign in `multipart/form-data` has no `k`; in a made-up type it works
        assert_eq!(
            go_media_type("application/x-\u{212a}ind".as_bytes()).as_deref(),
            Some("application/x-kind")
        );
    }

    #[test]
    fn look_alikes_that_go_does_not_read_as_forms() {
        for v in [
            // U+0131 DOTLESS I stays non-ASCII: ParseMediaType fails, no form
            "appl\u{131}cation/x-www-form-urlencoded".as_bytes(),
            // a zero-width space is not white space to Go
            "\u{200b}application/x-www-form-urlencoded".as_bytes(),
            b"application/x-www-form-urlencoded-not",
            b"text/plain; a=application/x-www-form-urlencoded",
            b"application/octet-stream",
            b"application/json",
            b"\xffapplication/x-www-form-urlencoded",
        ] {
            let what = String::from_utf8_lossy(v);
            let t = go_media_type(v);
            assert!(
                !t.as_deref().is_some_and(|t| GO_FORM_TYPES.contains(&t)),
                "{what:?} -> {t:?}"
            );
        }
    }

    #[test]
    fn upload_starts_carry_only_the_types_clients_send_and_no_body() {
        assert_eq!(check_upload_start(&headers(&[])), Ok(()));
        assert_eq!(
            check_upload_start(&headers(&[("content-length", b"0")])),
            Ok(())
        );
        for ok in UPLOAD_START_TYPES {
            assert_eq!(
                check_upload_start(&headers(&[("content-type", ok), ("content-length", b"0")])),
                Ok(())
            );
        }
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let refused: &[(Headers, UploadStartRefusal)] = &[
            (
                &[("content-type", b"Application/JSON")],
                UploadStartRefusal::ContentType,
            ),
            (
                &[("content-type", b"application/json; charset=utf-8")],
                UploadStartRefusal::ContentType,
            ),
            (
                &[("content-type", b"application/octet-stream ")],
                UploadStartRefusal::ContentType,
            ),
            (
                &[("content-type", b"text/plain")],
                UploadStartRefusal::ContentType,
            ),
            (&[("content-type", b"")], UploadStartRefusal::ContentType),
            (
                &[
                    ("content-type", b"application/json"),
                    ("content-type", b"application/json"),
                ],
                UploadStartRefusal::SeveralContentTypes,
            ),
            (
                &[
                    ("content-type", b"application/json"),
                    ("content-type", b"multipart/form-data"),
                ],
                UploadStartRefusal::SeveralContentTypes,
            ),
            (&[("content-length", b"1")], UploadStartRefusal::Body),
            (&[("content-length", b"00")], UploadStartRefusal::Body),
            (
                &[("content-length", b"0"), ("content-length", b"0")],
                UploadStartRefusal::Body,
            ),
        ];
        for (h, why) in refused {
            assert_eq!(check_upload_start(&headers(h)), Err(*why), "{h:?}");
        }
    }
}
