//! PURE: the proxy's own bearer tokens, and the choice of challenge that sends docker to
//! them.
//!
//! Why they exist: docker's distribution client, told `Basic` by the `/v2/` ping and
//! holding no login, fails before it sends a request ("no basic auth credentials"), so
//! anonymous pulls cannot work for it under a Basic challenge. Told `Bearer`, it asks the
//! realm for a token (with its login as Basic credentials, or without any) and sends that
//! token on every request. The proxy is that realm (`GET /auth/token`).
//!
//! A token proves an identity only, never scopes: the access rules decide every request
//! as they do for Basic credentials. It reads
//! `rgb1.<base64url(payload)>.<base64url(HMAC-SHA256(key, "rgb1." + base64url(payload)))>`,
//! the payload `{"sub":"alice","exp":<unix seconds>,"fp":"<hex>"}` (`sub` and `fp` null for
//! anonymous), `fp` a keyed fingerprint of the user's stored hash at issue: a password
//! change, a removal or a disable revokes the user's tokens at the next reload.
//!
//! Invariants:
//! - [`verify`] never panics, caps what it decodes, and compares the MAC in constant time
//!   (`ring::hmac::verify`).
//! - A token is never logged; [`TokenKey`]'s `Debug` shows no key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use std::time::Duration;

/// How long a token is good for. docker asks for a new one when it expires (with the
/// login it keeps), so short costs one request per five minutes, and bounds how long a
/// token outlives the reason it was issued.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// The `service` of the challenge (docker sends it back to the realm).
pub const SERVICE: &str = "registry-guard";
/// Longest token [`verify`] reads; a real one is about 150 bytes. Room for the token of
/// any name up to `basic::MAX_USER` bytes even if JSON escaped every byte (`\u00XX`, 6
/// bytes; base64 makes 4 of 3): a token [`mint`] makes always verifies (fuzz/corpus/
/// token/minted-name-of-nuls: 1,024 was too short for 128 NULs).
pub const MAX_TOKEN: usize = 4096;
/// Shortest key accepted from `auth.token_key_file`.
pub const MIN_KEY_BYTES: usize = 32;
const PREFIX: &str = "rgb1.";

/// The HMAC key tokens are signed with.
#[derive(Clone)]
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    pub fn new(bytes: &[u8]) -> Self {
        TokenKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    /// The key of `auth.token_key_file`'s text: its bytes, without a final newline, at
    /// least [`MIN_KEY_BYTES`] of them (`openssl rand -hex 32` or
    /// `registry-guard audit keygen` make one).
    pub fn from_file_text(text: &[u8]) -> Result<Self, String> {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.len() < MIN_KEY_BYTES {
            return Err(format!(
                "holds {} bytes, fewer than {MIN_KEY_BYTES}: make one with `openssl rand -hex 32`",
                text.len()
            ));
        }
        Ok(TokenKey::new(text))
    }

    /// A random key for this process only: tokens do not survive a restart, and a
    /// replica behind the same balancer refuses them (see `auth.token_key_file`).
    pub fn random() -> Self {
        TokenKey::new(&super::random_bytes::<32>())
    }

    /// The keyed fingerprint of a stored password hash: 16 bytes, hex. Keyed, so the
    /// payload (which the client can read) says nothing about the hash.
    pub fn fingerprint(&self, stored_hash: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"registry-guard token fingerprint\0");
        ctx.update(stored_hash.as_bytes());
        crate::audit::record::hex(&ctx.sign().as_ref()[..16])
    }
}

/// Who a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user, and the fingerprint of the hash they had ([`TokenKey::fingerprint`]).
    User {
        name: String,
        fingerprint: String,
    },
    Anonymous,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: Subject,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    sub: Option<String>,
    exp: u64,
    fp: Option<String>,
}

/// Why a token is refused. Only for the debug log: clients get one answer for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a registry-guard token")]
    Malformed,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
}

/// Signs a token for `subject`, good until `now + lifetime` (unix seconds).
pub fn mint(key: &TokenKey, subject: &Subject, now: u64, lifetime: Duration) -> String {
    let (sub, fp) = match subject {
        Subject::User { name, fingerprint } => (Some(name.clone()), Some(fingerprint.clone())),
        Subject::Anonymous => (None, None),
    };
    let payload = Payload {
        sub,
        exp: now.saturating_add(lifetime.as_secs()),
        fp,
    };
    let json = serde_json::to_vec(&payload).unwrap_or_default();
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
    let mac = hmac::sign(&key.0, signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()))
}

/// Checks a token's form, MAC and expiry at `now` (unix seconds). Whether its subject is
/// still who it was (same hash, not disabled) is the caller's check, against the current
/// user file.
pub fn verify(key: &TokenKey, token: &str, now: u64) -> Result<Claims, TokenError> {
    let claims = open(key, token)?;
    if now >= claims.expires {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Whom a token of this key names, expired or not; `None` for anything else (a forged
/// or malformed one names nobody). For the audit of a refused token: an expired token
/// is still its user's.
pub fn subject(key: &TokenKey, token: &str) -> Option<Subject> {
    open(key, token).ok().map(|c| c.subject)
}

/// A token's form and MAC, and what it says; not its expiry.
fn open(key: &TokenKey, token: &str) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed);
    }
    let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let payload = signed.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed)?;
    hmac::verify(&key.0, signed.as_bytes(), &mac).map_err(|_| TokenError::Signature)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let p: Payload = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    let subject = match (p.sub, p.fp) {
        (Some(name), Some(fingerprint)) => Subject::User { name, fingerprint },
        (None, None) => Subject::Anonymous,
        _ => return Err(TokenError::Malformed),
    };
    Ok(Claims {
        subject,
        expires: p.exp,
    })
}

/// The token of an `Authorization: Bearer <token>` value, if it is one (scheme name in
/// any case). `None`: another scheme, left to the Basic parser.
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    Some(value[7..].trim_ascii())
}

/// Whether a User-Agent is docker's engine (moby's distribution client sends
/// `docker/20.10.24 go/go1.19.8 git-commit/... os/linux arch/amd64 UpstreamClient(...)`).
/// podman, skopeo, containerd and crane send other names.
pub fn is_docker(user_agent: Option<&[u8]>) -> bool {
    user_agent.is_some_and(|ua| ua.len() >= 7 && ua[..7].eq_ignore_ascii_case(b"docker/"))
}

/// The `WWW-Authenticate` challenge of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="<realm>"`: every client but docker, and the token route itself.
    Basic { realm: String },
    /// `Bearer realm="<origin>/auth/token",service="registry-guard"`.
    Bearer { origin: String },
}

impl Challenge {
    /// The header value.
    pub fn header(&self) -> String {
        match self {
            Challenge::Basic { realm } => format!("Basic realm=\"{realm}\""),
            Challenge::Bearer { origin } => {
                format!("Bearer realm=\"{origin}{TOKEN_PATH}\",service=\"{SERVICE}\"")
            }
        }
    }
}

/// Where the proxy answers token requests.
pub const TOKEN_PATH: &str = crate::registry::route::TOKEN_PATH;

/// The challenge for a refused request: Bearer for docker where the proxy issues tokens
/// (`docker_bearer`), except on the token route itself; Basic, exactly as before, for
/// everyone else. `origin` is asked only when it is needed.
pub fn choose(
    docker_bearer: bool,
    token_route: bool,
    user_agent: Option<&[u8]>,
    realm: &str,
    origin: impl FnOnce() -> String,
) -> Challenge {
    if docker_bearer && !token_route && is_docker(user_agent) {
        Challenge::Bearer { origin: origin() }
    } else {
        Challenge::Basic {
            realm: realm.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn alice(key: &TokenKey) -> Subject {
        Subject::User {
            name: "alice".into(),
            fingerprint: key.fingerprint("$argon2id$alice-hash"),
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let key = TokenKey::new(&[7; 32]);
        let t = mint(&key, &alice(&key), NOW, LIFETIME);
        assert!(t.starts_with("rgb1.") && t.len() < 300, "{t}");
        let c = verify(&key, &t, NOW).unwrap();
        assert_eq!(c.subject, alice(&key));
        assert_eq!(c.expires, NOW + 300);
        assert!(verify(&key, &t, NOW + 299).is_ok());
        assert_eq!(verify(&key, &t, NOW + 300), Err(TokenError::Expired));
        let anon = mint(&key, &Subject::Anonymous, NOW, LIFETIME);
        assert_eq!(
            verify(&key, &anon, NOW).unwrap().subject,
            Subject::Anonymous
        );
    }

    #[test]
    fn another_key_or_any_changed_byte_is_refused() {
        let key = TokenKey::new(&[7; 32]);
        let t = mint(&key, &alice(&key), NOW, LIFETIME);
        assert_eq!(
            verify(&TokenKey::new(&[8; 32]), &t, NOW),
            Err(TokenError::Signature)
        );
        for i in 0..t.len() {
            let mut b = t.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let Ok(s) = String::from_utf8(b) else {
                continue;
            };
            if s != t {
                assert!(verify(&key, &s, NOW).is_err(), "byte {i} changed: {s}");
            }
        }
        // A payload naming bob under alice's MAC.
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged = format!(
            "rgb1.{}.{mac}",
            URL_SAFE_NO_PAD.encode(br#"{"sub":"bob","exp":9999999999,"fp":"00"}"#)
        );
        assert_eq!(verify(&key, &forged, NOW), Err(TokenError::Signature));
    }

    /// F5: the audit of a refused token names its user when the token is this key's,
    /// expired or not; a forged, foreign or malformed one names nobody.
    #[test]
    fn a_subject_is_read_only_from_this_keys_tokens_expired_or_not() {
        let key = TokenKey::new(&[7; 32]);
        let t = mint(&key, &alice(&key), NOW, LIFETIME);
        assert_eq!(verify(&key, &t, NOW + 301), Err(TokenError::Expired));
        assert_eq!(subject(&key, &t), Some(alice(&key)));
        assert_eq!(subject(&TokenKey::new(&[8; 32]), &t), None);
        let (_, mac) = t.rsplit_once('.').unwrap();
        let forged = format!(
            "rgb1.{}.{mac}",
            URL_SAFE_NO_PAD.encode(br#"{"sub":"bob","exp":9999999999,"fp":"00"}"#)
        );
        assert_eq!(subject(&key, &forged), None);
        assert_eq!(subject(&key, "garbage"), None);
        assert_eq!(subject(&key, &"a".repeat(100_000)), None);
    }

    #[test]
    fn the_fingerprint_is_keyed_and_follows_the_hash() {
        let key = TokenKey::new(&[7; 32]);
        let a = key.fingerprint("$argon2id$one");
        assert_eq!(a.len(), 32);
        assert_eq!(a, key.fingerprint("$argon2id$one"));
        assert_ne!(a, key.fingerprint("$argon2id$two"));
        assert_ne!(a, TokenKey::new(&[8; 32]).fingerprint("$argon2id$one"));
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let key = TokenKey::new(&[7; 32]);
        let long = "a".repeat(MAX_TOKEN + 1);
        let mac = |signed: &str| {
            let m = hmac::sign(&key.0, signed.as_bytes());
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(m.as_ref()))
        };
        // Correctly signed, but not a payload the proxy makes.
        let signed_garbage = [
            mac("rgb1."),
            mac(&format!("rgb1.{}", URL_SAFE_NO_PAD.encode("{}"))),
            mac(&format!("rgb1.{}", URL_SAFE_NO_PAD.encode("[1]"))),
            mac(&format!(
                "rgb1.{}",
                URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","exp":9999999999,"fp":null}"#)
            )),
            mac(&format!(
                "rgb1.{}",
                URL_SAFE_NO_PAD.encode(r#"{"sub":null,"exp":9999999999,"fp":null,"x":1}"#)
            )),
        ];
        let mut cases: Vec<&str> = vec![
            "",
            ".",
            "..",
            "rgb1",
            "rgb1.",
            "rgb1..",
            "rgb2.e30.AAAA",
            "rgb1.e30",
            "rgb1.!!.!!",
            "rgb1.e30.\u{e9}",
            &long,
        ];
        cases.extend(signed_garbage.iter().map(String::as_str));
        for c in cases {
            assert!(verify(&key, c, NOW).is_err(), "{c:?}");
        }
    }

    #[test]
    fn bearer_values_are_recognised_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bEARER  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic YTpi"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), Some(&b""[..]));
    }

    #[test]
    fn only_docker_with_bearer_on_gets_the_bearer_challenge() {
        let docker = Some(&b"docker/20.10.24 go/go1.19.8 git-commit/5d6db84 kernel/6.1 os/linux arch/amd64 UpstreamClient(Docker-Client/28.2.2 \\(linux\\))"[..]);
        let origin = || "https://127.0.0.1:5443".to_owned();
        assert_eq!(
            choose(true, false, docker, "r", origin).header(),
            "Bearer realm=\"https://127.0.0.1:5443/auth/token\",service=\"registry-guard\""
        );
        let basic = Challenge::Basic { realm: "r".into() };
        assert_eq!(basic.header(), "Basic realm=\"r\"");
        // Off, on the token route, or another client: Basic, and the origin is not asked.
        let never = || -> String { panic!("origin asked for a Basic challenge") };
        assert_eq!(choose(false, false, docker, "r", never), basic);
        assert_eq!(choose(true, true, docker, "r", never), basic);
        for ua in [
            None,
            Some(&b"containers/5.24.1 (github.com/containers/image)"[..]),
            Some(b"skopeo/1.9.3"),
            Some(b"containerd/1.6.20"),
            Some(b"go-containerregistry/v0.19.0"),
            Some(b"curl/7.88.1"),
            Some(b"docker"),
            Some(b"Docker-Client/28.2.2 (linux)"),
        ] {
            assert_eq!(choose(true, false, ua, "r", never), basic, "{ua:?}");
        }
    }
}
