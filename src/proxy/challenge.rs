//! PURE: the upstream side of the Docker token protocol, without I/O.
//!
//! - [`parse_challenges`]: an upstream `WWW-Authenticate` value → its challenges
//!   (`Bearer realm="...",service="...",scope="..."`, `Basic realm="..."`, others), with
//!   quoted strings (commas and escapes inside quotes), several challenges in one value
//!   and parameter names in any case. Untrusted input: capped in size and count, never
//!   panics, and a `Bearer` challenge is only returned with a non-empty realm.
//! - [`normalize_scope`]: one spelling per set of scopes (distribution lists the actions
//!   of a resource in map order, `pull,push` or `push,pull`), so tokens are cached and
//!   learned per set, not per spelling.
//! - [`repository_scope`]: the scope the proxy asks for itself, from a repository and
//!   the actions a route needs.
//! - [`parse_token_answer`]: the realm's JSON answer → the token and how long it lives.
//!
//! Nothing here ever formats a token into an error or a log line.

use std::time::Duration;

/// Longest `WWW-Authenticate` value examined; longer ones are cut (never a panic).
pub const MAX_CHALLENGE_BYTES: usize = 8192;
/// Challenges read from one value, parameters read from one challenge.
const MAX_CHALLENGES: usize = 16;
const MAX_PARAMS: usize = 32;
/// Scopes kept from one challenge.
const MAX_SCOPES: usize = 16;
/// Longest token accepted from a realm.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// A token is never kept longer than this, whatever the realm says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The Docker token spec: `expires_in` omitted means 60 seconds.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// One challenge of a `WWW-Authenticate` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer(Bearer),
    Basic,
    /// Another scheme (lower-cased), or a `Bearer` without a realm.
    Other(String),
}

/// `Bearer realm="...",service="...",scope="..."`: where to get a token, and for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub realm: String,
    pub service: Option<String>,
    /// Normalised (see [`normalize_scope`]); `None` when the challenge names none
    /// (`GET /v2/`).
    pub scope: Option<String>,
    /// `invalid_token`, `insufficient_scope`, ...
    pub error: Option<String>,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_separators(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &'a [u8] {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    /// A token68 tail (`abc==`) or a plain token value.
    fn token_value(&mut self) -> &'a [u8] {
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| is_tchar(c) || c == b'/' || c == b'=')
        {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    /// A quoted string after its opening quote; `None` when it never closes.
    fn quoted(&mut self) -> Option<String> {
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let next = self.peek()?;
                    self.i += 1;
                    out.push(next);
                }
                c => out.push(c),
            }
        }
    }
}

/// Every challenge of one `WWW-Authenticate` value, in order (at most 16).
pub fn parse_challenges(value: &str) -> Vec<Challenge> {
    let bytes = value.as_bytes();
    let bytes = &bytes[..bytes.len().min(MAX_CHALLENGE_BYTES)];
    let mut c = Cursor { s: bytes, i: 0 };
    let mut out = Vec::new();
    while out.len() < MAX_CHALLENGES {
        c.skip_separators();
        let scheme = c.token();
        if scheme.is_empty() {
            break; // end, or a byte no scheme starts with: nothing more can be read
        }
        let scheme = String::from_utf8_lossy(scheme).to_ascii_lowercase();
        let mut params: Vec<(String, String)> = Vec::new();
        let mut broken = false;
        loop {
            c.skip_ows();
            let start = c.i;
            let name = c.token();
            if name.is_empty() {
                if c.peek().is_some() && c.peek() != Some(b',') {
                    broken = true;
                }
                break;
            }
            c.skip_ows();
            if c.peek() != Some(b'=') {
                // A token not followed by `=`: the next challenge's scheme.
                c.i = start;
                break;
            }
            c.i += 1;
            c.skip_ows();
            let value = if c.peek() == Some(b'"') {
                c.i += 1;
                match c.quoted() {
                    Some(v) => v,
                    None => {
                        broken = true;
                        break;
                    }
                }
            } else {
                String::from_utf8_lossy(c.token_value()).into_owned()
            };
            if params.len() < MAX_PARAMS {
                params.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
            }
            c.skip_ows();
            match c.peek() {
                Some(b',') => {
                    c.i += 1;
                }
                None => break,
                Some(_) => {
                    // `Basic realm="a" Bearer ...` is no valid list; keep what was read.
                    broken = true;
                    break;
                }
            }
        }
        out.push(challenge(&scheme, &params));
        if broken {
            break;
        }
    }
    out
}

fn challenge(scheme: &str, params: &[(String, String)]) -> Challenge {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match scheme {
        "basic" => Challenge::Basic,
        "bearer" => match get("realm").filter(|r| !r.is_empty()) {
            Some(realm) => Challenge::Bearer(Bearer {
                realm,
                service: get("service"),
                scope: get("scope")
                    .map(|s| normalize_scope(&s))
                    .filter(|s| !s.is_empty()),
                error: get("error"),
            }),
            None => Challenge::Other(scheme.to_owned()),
        },
        other => Challenge::Other(other.to_owned()),
    }
}

/// The first `Bearer` challenge among a response's `WWW-Authenticate` values.
pub fn bearer<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Bearer> {
    values
        .into_iter()
        .flat_map(parse_challenges)
        .find_map(|c| match c {
            Challenge::Bearer(b) => Some(b),
            _ => None,
        })
}

/// One spelling for a set of scopes: space-separated `type:name:actions` entries,
/// actions sorted and without duplicates, entries of one resource merged, entries
/// sorted. The name is what lies between the first and the last `:` (a name may hold a
/// port: `repository:host:5000/app:pull`). An entry of another shape is kept as it is.
pub fn normalize_scope(scope: &str) -> String {
    let mut resources: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut odd: Vec<String> = Vec::new();
    for entry in scope.split_ascii_whitespace().take(MAX_SCOPES) {
        let parsed = entry.split_once(':').and_then(|(t, rest)| {
            let (name, actions) = rest.rsplit_once(':')?;
            (!t.is_empty() && !name.is_empty()).then_some((t, name, actions))
        });
        match parsed {
            Some((t, name, actions)) => {
                let found = resources
                    .iter_mut()
                    .find(|(rt, rn, _)| rt == t && rn == name);
                let list = match found {
                    Some((_, _, list)) => list,
                    None => {
                        resources.push((t.to_owned(), name.to_owned(), Vec::new()));
                        let last = resources.len() - 1;
                        &mut resources[last].2
                    }
                };
                list.extend(
                    actions
                        .split(',')
                        .filter(|a| !a.is_empty())
                        .map(str::to_owned),
                );
            }
            None => odd.push(entry.to_owned()),
        }
    }
    let mut entries: Vec<String> = resources
        .into_iter()
        .map(|(t, name, mut actions)| {
            actions.sort();
            actions.dedup();
            format!("{t}:{name}:{}", actions.join(","))
        })
        .chain(odd)
        .collect();
    entries.sort();
    entries.dedup();
    entries.join(" ")
}

/// The actions named for `repository:<repo>` in a normalised scope, if it names the
/// repository (what the upstream asks for a kind of request, learned from a challenge).
pub fn repository_actions(scope: &str, repo: &str) -> Option<String> {
    scope.split(' ').find_map(|entry| {
        let rest = entry.strip_prefix("repository:")?;
        let (name, actions) = rest.rsplit_once(':')?;
        (name == repo).then(|| actions.to_owned())
    })
}

/// `repository:<repo>:<actions>` (actions comma-separated, normalised).
pub fn repository_scope(repo: &str, actions: &str) -> String {
    normalize_scope(&format!("repository:{repo}:{actions}"))
}

/// What a realm answered: the token and how long it may be used, counted from when the
/// answer arrived.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenAnswer {
    pub token: String,
    pub lifetime: Duration,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("token", &"<redacted>")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct RawAnswer {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<serde_json::Value>,
    issued_at: Option<String>,
}

/// Reads a realm's answer (`{"token": ..., "access_token": ..., "expires_in": ...,
/// "issued_at": ...}`). `token` wins over `access_token`; `expires_in` defaults to 60 s;
/// when `issued_at` lies in the past (by less than the lifetime) the time already gone
/// is taken off, so a token handed out of a cache is not kept past its end. `now_unix`:
/// the proxy's clock when the answer arrived. Errors never hold the token.
pub fn parse_token_answer(body: &[u8], now_unix: i64) -> Result<TokenAnswer, &'static str> {
    let raw: RawAnswer =
        serde_json::from_slice(body).map_err(|_| "the token answer is not the expected JSON")?;
    let token = raw
        .token
        .filter(|t| !t.is_empty())
        .or(raw.access_token.filter(|t| !t.is_empty()))
        .ok_or("the token answer holds no token")?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err("the token is too long");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token holds bytes not allowed in a header");
    }
    let secs = match raw.expires_in {
        None | Some(serde_json::Value::Null) => DEFAULT_TOKEN_LIFETIME.as_secs(),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or("expires_in is not a number of seconds")?,
    };
    let mut lifetime = Duration::from_secs(secs).min(MAX_TOKEN_LIFETIME);
    if let Some(issued) = raw.issued_at.as_deref().and_then(parse_rfc3339) {
        let gone = now_unix.saturating_sub(issued);
        if gone > 0 && (gone as u64) < lifetime.as_secs() {
            lifetime -= Duration::from_secs(gone as u64);
        }
    }
    Ok(TokenAnswer { token, lifetime })
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// How long before its end a token of `lifetime` is renewed: a tenth of it, at most 30 s.
pub fn renew_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(30))
}

/// The realm request's URI: the realm with `service`, one `scope` per entry (as docker
/// sends them) and `account` added to its query. Only `http`/`https` realms with a host
/// and without userinfo are used.
pub fn realm_uri(
    realm: &str,
    service: Option<&str>,
    scope: Option<&str>,
    account: Option<&str>,
) -> Result<http::Uri, &'static str> {
    let uri: http::Uri = realm.parse().map_err(|_| "the token realm is not a URL")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("the token realm is not an http(s) URL");
    }
    match uri.authority() {
        Some(a) if !a.as_str().contains('@') && !a.host().is_empty() => {}
        _ => return Err("the token realm has no usable host"),
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(s) = service {
        query.append_pair("service", s);
    }
    for s in scope.into_iter().flat_map(str::split_ascii_whitespace) {
        query.append_pair("scope", s);
    }
    if let Some(a) = account {
        query.append_pair("account", a);
    }
    let query = query.finish();
    let mut text = realm.to_owned();
    if !query.is_empty() {
        text.push(if uri.query().is_some() { '&' } else { '?' });
        text.push_str(&query);
    }
    text.parse().map_err(|_| "the token realm is not a URL")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer_of(v: &str) -> Bearer {
        match parse_challenges(v).into_iter().next() {
            Some(Challenge::Bearer(b)) => b,
            other => panic!("{v}: {other:?}"),
        }
    }

    #[test]
    fn distributions_challenge() {
        let b = bearer_of(
            r#"Bearer realm="http://127.0.0.1:5001/token",service="test-registry",scope="repository:a/b:push,pull",error="insufficient_scope""#,
        );
        assert_eq!(b.realm, "http://127.0.0.1:5001/token");
        assert_eq!(b.service.as_deref(), Some("test-registry"));
        assert_eq!(b.scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(b.error.as_deref(), Some("insufficient_scope"));
        let b = bearer_of(r#"Bearer realm="https://auth.example/token",service="registry""#);
        assert_eq!(b.scope, None);
    }

    #[test]
    fn quotes_commas_escapes_case_and_spaces() {
        let b = bearer_of(
            r#"bearer  Realm = "https://a.example/t?x=1,2" , SERVICE=reg , scope="repository:x:pull repository:y:pull,push" ,error="a\"b""#,
        );
        assert_eq!(b.realm, "https://a.example/t?x=1,2");
        assert_eq!(b.service.as_deref(), Some("reg"));
        assert_eq!(
            b.scope.as_deref(),
            Some("repository:x:pull repository:y:pull,push")
        );
        assert_eq!(b.error.as_deref(), Some("a\"b"));
    }

    #[test]
    fn several_challenges_in_one_value() {
        let all = parse_challenges(
            r#"Basic realm="r, with comma", Bearer realm="https://t.example/",scope="registry:catalog:*", Negotiate abc=="#,
        );
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[0], Challenge::Basic);
        let Challenge::Bearer(b) = &all[1] else {
            panic!("{all:?}")
        };
        assert_eq!(b.scope.as_deref(), Some("registry:catalog:*"));
        assert_eq!(all[2], Challenge::Other("negotiate".into()));
        assert_eq!(
            bearer(["Basic realm=\"x\"", "Bearer realm=\"y\""]).map(|b| b.realm),
            Some("y".into())
        );
    }

    #[test]
    fn malformed_values_never_make_a_bearer_without_realm() {
        for v in [
            "",
            "Bearer",
            "Bearer realm=\"\"",
            "Bearer service=\"x\"",
            "Bearer realm=\"unterminated",
            "=====",
            "\"\"\"",
            ",,,,",
            "Bearer realm=\"a\" junk junk",
            "Bearer realm",
        ] {
            for c in parse_challenges(v) {
                if let Challenge::Bearer(b) = c {
                    assert!(!b.realm.is_empty(), "{v}");
                    assert_eq!(v, "Bearer realm=\"a\" junk junk");
                }
            }
        }
        let long = format!("Bearer realm=\"{}\"", "a".repeat(100_000));
        assert!(
            bearer([long.as_str()]).is_none(),
            "cut value has no closing quote"
        );
        let many = "Basic, ".repeat(1000);
        assert!(parse_challenges(&many).len() <= MAX_CHALLENGES);
    }

    #[test]
    fn scopes_have_one_spelling() {
        assert_eq!(
            normalize_scope("repository:b:push,pull repository:a:pull repository:b:pull"),
            "repository:a:pull repository:b:pull,push"
        );
        assert_eq!(
            normalize_scope("repository:localhost:5000/app:pull"),
            "repository:localhost:5000/app:pull"
        );
        assert_eq!(normalize_scope("registry:catalog:*"), "registry:catalog:*");
        assert_eq!(
            normalize_scope("odd  registry:catalog:*"),
            "odd registry:catalog:*"
        );
        assert_eq!(
            repository_scope("a/b", "push,pull"),
            "repository:a/b:pull,push"
        );
        let s = normalize_scope("repository:x:delete repository:y:pull");
        assert_eq!(repository_actions(&s, "x").as_deref(), Some("delete"));
        assert_eq!(repository_actions(&s, "z"), None);
        assert_eq!(
            repository_actions("repository:h:5000/x:*", "h:5000/x").as_deref(),
            Some("*")
        );
    }

    #[test]
    fn token_answers() {
        let a = parse_token_answer(br#"{"token":"t1","access_token":"t2","expires_in":300}"#, 0)
            .unwrap();
        assert_eq!(a.token, "t1");
        assert_eq!(a.lifetime, Duration::from_secs(300));
        let a = parse_token_answer(br#"{"access_token":"t2"}"#, 0).unwrap();
        assert_eq!(a.token, "t2");
        assert_eq!(a.lifetime, DEFAULT_TOKEN_LIFETIME);
        // issued 20 s ago (2026-01-01T00:00:00Z = 1767225600)
        let a = parse_token_answer(
            br#"{"token":"t","expires_in":60,"issued_at":"2026-01-01T00:00:00Z"}"#,
            1_767_225_620,
        )
        .unwrap();
        assert_eq!(a.lifetime, Duration::from_secs(40));
        // issued in the future or too long ago: the clocks disagree, expires_in counts
        for now in [1_767_225_500, 1_767_226_000] {
            let a = parse_token_answer(
                br#"{"token":"t","expires_in":60,"issued_at":"2026-01-01T00:00:00Z"}"#,
                now,
            )
            .unwrap();
            assert_eq!(a.lifetime, Duration::from_secs(60));
        }
        let a = parse_token_answer(br#"{"token":"t","expires_in":99999999}"#, 0).unwrap();
        assert_eq!(a.lifetime, MAX_TOKEN_LIFETIME);
        for bad in [
            &br#"{}"#[..],
            br#"{"token":""}"#,
            br#"{"token":"a b"}"#,
            br#"{"token":"a","expires_in":"soon"}"#,
            br#"{"token":"a","expires_in":-5}"#,
            b"not json",
        ] {
            let e = parse_token_answer(bad, 0).unwrap_err();
            assert!(!e.contains("a b"));
        }
        assert!(
            !format!("{:?}", parse_token_answer(br#"{"token":"secret"}"#, 0)).contains("secret")
        );
    }

    #[test]
    fn realm_requests() {
        let u = realm_uri(
            "http://127.0.0.1:5001/token",
            Some("test registry"),
            Some("repository:a/b:pull,push registry:catalog:*"),
            Some("proxy"),
        )
        .unwrap();
        assert_eq!(
            u.to_string(),
            "http://127.0.0.1:5001/token?service=test+registry&scope=repository%3Aa%2Fb%3Apull%2Cpush&scope=registry%3Acatalog%3A*&account=proxy"
        );
        let u = realm_uri("https://auth.example/t?x=1", None, None, None).unwrap();
        assert_eq!(u.to_string(), "https://auth.example/t?x=1");
        let u = realm_uri("https://auth.example/t?x=1", Some("s"), None, None).unwrap();
        assert_eq!(u.to_string(), "https://auth.example/t?x=1&service=s");
        for bad in ["/token", "ftp://a/t", "http://u:p@a/t", "not a url", ""] {
            assert!(realm_uri(bad, None, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn renewal_margin() {
        assert_eq!(
            renew_margin(Duration::from_secs(3)),
            Duration::from_millis(300)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }
}
