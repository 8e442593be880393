//! PURE: the `Authorization: Basic` header (RFC 7617) as registry clients send it.
//!
//! - The scheme name matches in any case; the credentials split at the FIRST `:`
//!   (passwords may hold `:`); padding of the base64 is optional.
//! - An empty user AND an empty password (`Basic Og==`) are no credentials at all:
//!   podman, skopeo and buildah (containers/image) send exactly that after a Basic
//!   challenge when they have no login, so it must mean what a missing header means
//!   (anonymous where allowed, else the challenge) — [`BasicError::NoCredentials`].
//! - Everything malformed — another scheme, bad base64, no colon, non-UTF-8, an empty
//!   user name with a password, anything oversized — is an error the caller answers
//!   with the 401 challenge. Nothing panics.
//! - A user name holding a control character (C0, DEL, C1: a newline could forge a log
//!   line, an escape sequence could rewrite a terminal) is refused here, before the name
//!   reaches a log, a table or a rule. No real user name holds one.
//! - The password is held in [`Password`], whose `Debug` never shows it.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use std::fmt;

/// Longest header value considered (clients send far less; the cap bounds the work).
pub const MAX_HEADER_VALUE: usize = 4096;
/// Longest user name accepted.
pub const MAX_USER: usize = 256;

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A password from a request. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user: String,
    pub password: Password,
}

/// Why a header value is not usable Basic credentials. The reason goes to the log (it
/// never quotes the value) and the client gets the 401 challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    #[error("authorization scheme is not Basic")]
    NotBasic,
    #[error("authorization header too long")]
    TooLong,
    #[error("credentials are not valid base64")]
    BadBase64,
    #[error("credentials are not UTF-8")]
    NotUtf8,
    #[error("credentials hold no ':' between user and password")]
    NoColon,
    /// `Basic Og==`: what containers/image sends when it has no credentials.
    #[error("empty user name and password: no credentials")]
    NoCredentials,
    #[error("empty user name")]
    EmptyUser,
    #[error("user name too long")]
    UserTooLong,
    #[error("user name holds a control character")]
    ControlInUser,
}

/// Parses one `Authorization` header value.
pub fn parse(value: &[u8]) -> Result<BasicCredentials, BasicError> {
    if value.len() > MAX_HEADER_VALUE {
        return Err(BasicError::TooLong);
    }
    let value = value.trim_ascii();
    let split = value.iter().position(|&c| c == b' ' || c == b'\t');
    let (scheme, token) = match split {
        Some(i) => (&value[..i], value[i..].trim_ascii()),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(BasicError::NotBasic);
    }
    let decoded = B64.decode(token).map_err(|_| BasicError::BadBase64)?;
    let text = String::from_utf8(decoded).map_err(|_| BasicError::NotUtf8)?;
    let (user, password) = text.split_once(':').ok_or(BasicError::NoColon)?;
    if user.is_empty() && password.is_empty() {
        return Err(BasicError::NoCredentials);
    }
    if user.is_empty() {
        return Err(BasicError::EmptyUser);
    }
    if user.len() > MAX_USER {
        return Err(BasicError::UserTooLong);
    }
    if user.chars().any(char::is_control) {
        return Err(BasicError::ControlInUser);
    }
    Ok(BasicCredentials {
        user: user.to_owned(),
        password: Password::new(password),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn table() {
        let ok = |user: &str, pw: &str| {
            Ok(BasicCredentials {
                user: user.into(),
                password: Password::new(pw),
            })
        };
        let cases: Vec<(String, Result<BasicCredentials, BasicError>)> = vec![
            (
                format!("Basic {}", b64(b"alice:s3cret")),
                ok("alice", "s3cret"),
            ),
            (
                format!("basic {}", b64(b"alice:s3cret")),
                ok("alice", "s3cret"),
            ),
            (
                format!("BASIC   {}  ", b64(b"alice:s3cret")),
                ok("alice", "s3cret"),
            ),
            (
                format!("Basic {}", b64(b"alice:pa:ss:word")),
                ok("alice", "pa:ss:word"),
            ),
            (format!("Basic {}", b64(b"alice:")), ok("alice", "")),
            (
                format!("Basic {}", b64(b"10000460123:pw").trim_end_matches('=')),
                ok("10000460123", "pw"),
            ),
            (
                format!("Basic {}", b64("jos\u{e9}:p\u{e4}ss".as_bytes())),
                ok("jos\u{e9}", "p\u{e4}ss"),
            ),
            ("Basic Og==".into(), Err(BasicError::NoCredentials)),
            ("basic  Og".into(), Err(BasicError::NoCredentials)),
            (format!("Basic {}", b64(b":pw")), Err(BasicError::EmptyUser)),
            (format!("Basic {}", b64(b"alice")), Err(BasicError::NoColon)),
            (
                format!("Basic {}", b64(b"\xffalice:pw")),
                Err(BasicError::NotUtf8),
            ),
            ("Basic !!!notbase64".into(), Err(BasicError::BadBase64)),
            ("Basic".into(), Err(BasicError::NoColon)),
            ("Basic ".into(), Err(BasicError::NoColon)),
            ("Bearer abc.def.ghi".into(), Err(BasicError::NotBasic)),
            ("Basicabc".into(), Err(BasicError::NotBasic)),
            ("".into(), Err(BasicError::NotBasic)),
            (
                format!(
                    "Basic {}",
                    b64(format!("{}:pw", "u".repeat(300)).as_bytes())
                ),
                Err(BasicError::UserTooLong),
            ),
            (
                format!("Basic {}", "A".repeat(5000)),
                Err(BasicError::TooLong),
            ),
            (
                format!(
                    "Basic {}",
                    b64(b"alice\n2024-01-01T00:00:00Z INFO forged:pw")
                ),
                Err(BasicError::ControlInUser),
            ),
            (
                format!("Basic {}", b64(b"al\rice:pw")),
                Err(BasicError::ControlInUser),
            ),
            (
                format!("Basic {}", b64(b"\x1b[2Jalice:pw")),
                Err(BasicError::ControlInUser),
            ),
            (
                format!("Basic {}", b64(b"alice\x7f:pw")),
                Err(BasicError::ControlInUser),
            ),
            (
                format!("Basic {}", b64("alice\u{85}:pw".as_bytes())),
                Err(BasicError::ControlInUser),
            ),
            (
                format!("Basic {}", b64(b"alice\x00:pw")),
                Err(BasicError::ControlInUser),
            ),
            // Control characters in the password are the password's business.
            (
                format!("Basic {}", b64(b"alice:p\nw\x1b")),
                ok("alice", "p\nw\x1b"),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(parse(header.as_bytes()), want, "{header:.60}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = parse(format!("Basic {}", b64(b"alice:hunter2")).as_bytes()).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
    }
}
