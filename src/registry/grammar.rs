//! Grammar of the identifiers that appear in v2 paths, checked by hand (no regex engine
//! on the hot path), exactly as in distribution/reference and the OCI distribution-spec:
//!
//! - name component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`; a name is components joined by
//!   `/`, at most 255 bytes. distribution's router is wider (upper case, `host:port`);
//!   the proxy deliberately is not, so a path it accepts names one repository only.
//! - tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
//! - digest: `[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`, and for the algorithms the
//!   registry supports, the exact lower-case hex length (sha256: 64, sha512: 128).
//! - upload id: `[a-zA-Z0-9-_.=]+`, at most [`MAX_UPLOAD_ID`] bytes.
//!
//! Every function takes untrusted input, never panics and never allocates.

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME: usize = 255;
/// Longest tag accepted (1 leading + 127).
pub const MAX_TAG: usize = 128;
/// Longest upload id accepted; distribution issues 36-byte UUIDs.
pub const MAX_UPLOAD_ID: usize = 256;
/// Longest digest algorithm name accepted.
const MAX_ALGORITHM: usize = 32;

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component of a repository name.
pub fn is_name_component(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    // A component is runs of [a-z0-9]+ separated by exactly one separator.
    loop {
        let start = i;
        while i < b.len() && is_lower_alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false; // empty run: leading, trailing or doubled separator
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// A whole repository name (`public/2048`, `10000460/ubuntu`).
pub fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME && s.split('/').all(is_name_component)
}

/// A tag (`latest`, `v1.2.3-rc_1`).
pub fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    match b.split_first() {
        Some((&first, rest)) => {
            b.len() <= MAX_TAG
                && (first.is_ascii_alphanumeric() || first == b'_')
                && rest
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

/// Why a digest was refused; the message goes back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestProblem {
    Malformed,
    UnsupportedAlgorithm,
    WrongLength,
}

impl DigestProblem {
    pub fn message(self) -> &'static str {
        match self {
            DigestProblem::Malformed => "digest is not of the form algorithm:encoded",
            DigestProblem::UnsupportedAlgorithm => "digest algorithm is not sha256 or sha512",
            DigestProblem::WrongLength => "digest is not lower-case hex of the algorithm's length",
        }
    }
}

fn is_digest_algorithm(s: &str) -> bool {
    // [a-z0-9]+([+._-][a-z0-9]+)*
    let b = s.as_bytes();
    if b.is_empty() || b.len() > MAX_ALGORITHM {
        return false;
    }
    let mut prev_sep = true;
    for &c in b {
        if is_lower_alnum(c) {
            prev_sep = false;
        } else if matches!(c, b'+' | b'.' | b'_' | b'-') && !prev_sep {
            prev_sep = true;
        } else {
            return false;
        }
    }
    !prev_sep
}

/// Checks a digest (`sha256:<64 hex>`).
pub fn check_digest(s: &str) -> Result<(), DigestProblem> {
    let Some((alg, enc)) = s.split_once(':') else {
        return Err(DigestProblem::Malformed);
    };
    if !is_digest_algorithm(alg)
        || enc.is_empty()
        || !enc
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-'))
    {
        return Err(DigestProblem::Malformed);
    }
    let want = match alg {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(DigestProblem::UnsupportedAlgorithm),
    };
    let hex = enc
        .bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if enc.len() == want && hex {
        Ok(())
    } else {
        Err(DigestProblem::WrongLength)
    }
}

pub fn is_digest(s: &str) -> bool {
    check_digest(s).is_ok()
}

/// An upload session id as issued by the registry.
pub fn is_upload_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_UPLOAD_ID
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D256: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn name_components() {
        for ok in [
            "a",
            "ubuntu",
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "2048",
            "a1.b2-c3__d4",
        ] {
            assert!(is_name_component(ok), "{ok}");
        }
        for bad in [
            "", "A", "Ubuntu", "-a", "a-", ".a", "a.", "_a", "a_", "a___b", "a..b", "a._b",
            "a:5000", "a b", "é", "..", ".", "a%2fb",
        ] {
            assert!(!is_name_component(bad), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(is_name("public/2048"));
        assert!(is_name("10000460123/ubuntu"));
        assert!(is_name("a/b/c/d"));
        assert!(!is_name("VICTIM/x"));
        assert!(!is_name("a//b"));
        assert!(!is_name("/a"));
        assert!(!is_name("a/"));
        assert!(!is_name("localhost:5000/a"));
        assert!(is_name(&"a".repeat(255)));
        assert!(!is_name(&"a".repeat(256)));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "A", "1", &"a".repeat(128)] {
            assert!(is_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a:b", "a/b", "a b", &"a".repeat(129), "ü"] {
            assert!(!is_tag(bad), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        assert_eq!(check_digest(D256), Ok(()));
        assert_eq!(check_digest(&format!("sha512:{}", "ab".repeat(64))), Ok(()));
        assert_eq!(check_digest("sha256"), Err(DigestProblem::Malformed));
        assert_eq!(check_digest("sha256:"), Err(DigestProblem::Malformed));
        assert_eq!(check_digest(":abc"), Err(DigestProblem::Malformed));
        assert_eq!(check_digest("SHA256:abc"), Err(DigestProblem::Malformed));
        assert_eq!(check_digest("sha256:ab/cd"), Err(DigestProblem::Malformed));
        assert_eq!(
            check_digest("md5:abcd"),
            Err(DigestProblem::UnsupportedAlgorithm)
        );
        assert_eq!(check_digest("sha256:abcd"), Err(DigestProblem::WrongLength));
        assert_eq!(
            check_digest(&D256.to_uppercase().replacen("SHA256", "sha256", 1)),
            Err(DigestProblem::WrongLength)
        );
        assert_eq!(
            check_digest("sha256+b64:abc"),
            Err(DigestProblem::UnsupportedAlgorithm)
        );
        assert_eq!(check_digest("sha256++b:abc"), Err(DigestProblem::Malformed));
    }

    #[test]
    fn upload_ids() {
        assert!(is_upload_id("3f1c2b4e-5d6a-4b7c-8d9e-0f1a2b3c4d5e"));
        assert!(is_upload_id("a=b_c.d-e"));
        assert!(!is_upload_id(""));
        assert!(!is_upload_id("a/b"));
        assert!(!is_upload_id("a%2e"));
        assert!(!is_upload_id(&"a".repeat(257)));
    }
}
