//! Entry points of the fuzz targets, one function per target, taking the raw input.
//! `fuzz/fuzz_targets/<t>.rs` calls `<t>(data)` under libFuzzer, and
//! `tests/fuzz_corpus.rs` replays every file of `fuzz/corpus/<t>/` through the same
//! function in plain `cargo test`, so a fixed crash stays fixed without a sanitizer build.
//!
//! Each function states what must never happen; it panics (an assertion) when it does.

use http::Method;

/// `registry::parse` must never panic, whatever method, path and query arrive, and must
/// never accept a path that `Route::path` does not render back byte for byte: the proxy
/// decides on exactly the bytes it forwards.
///
/// Input: `method \n path \n query` (no second newline: no query). Bytes that are not
/// UTF-8 are replaced, as hyper only ever hands the parser valid strings.
pub fn route(data: &[u8]) {
    use crate::registry::{grammar, parse};
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
}

/// `proxy::headers::rewrite_location` must never panic on an upstream's `Location`
/// header, and when it rewrites one it may change only the origin: the path, query and
/// fragment come out byte for byte, and a location with userinfo is never rewritten.
///
/// Input: `location \n upstream_origin \n public_origin`; missing parts get typical values.
pub fn location(data: &[u8]) {
    use crate::proxy::headers::rewrite_location;
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let location = parts.next().unwrap_or("");
    let upstream = parts.next().unwrap_or("http://127.0.0.1:5000");
    let public = parts.next().unwrap_or("https://registry.example:5443");
    if let Some(out) = rewrite_location(location, upstream, public) {
        let rest = location.split_once("://").map(|(_, r)| r);
        assert!(rest.is_some(), "rewrote a location without a scheme");
        let rest = rest.unwrap_or_default();
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        assert!(!authority.contains('@'), "rewrote a location with userinfo");
        assert_eq!(out, format!("{public}{tail}"), "path or query changed");
    }
}

/// `Config::from_yaml` must never panic on any text: a bad config file is an error that
/// names the key, never a crash of `registry-guard check` or of a reload.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_yaml(text);
    }
}

/// The mount and form handling of an upload start must never panic and never let
/// through what distribution would read differently: an accepted mount names a valid
/// `from` given once; a query stripped of `mount`/`from` holds neither (however its keys
/// are encoded) and keeps every other pair byte for byte; no Content-Type that Go's
/// `mime.ParseMediaType` reads as a form ever passes the upload-start check, and
/// `is_form` agrees with [`go_media_type`](crate::proxy::form::go_media_type).
///
/// Input: `query \n content-type` (bytes; the Content-Type may be any bytes a header
/// value can hold).
pub fn upload_start(data: &[u8]) {
    use crate::proxy::form;
    use crate::registry::{grammar, parse, route::strip_query_params, Target};
    let (query, content_type) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let query = String::from_utf8_lossy(query);
    if let Ok(route) = parse(&Method::POST, "/v2/a/b/blobs/uploads/", Some(&query)) {
        if let Target::UploadStart { mount: Some(m), .. } = &route.target {
            assert!(grammar::is_name(&m.from), "mount from {:?}", m.from);
            let keys = |k: &str| {
                form_urlencoded::parse(query.as_bytes())
                    .filter(|(key, _)| key == k)
                    .count()
            };
            assert_eq!(keys("mount"), 1, "{query:?}");
            assert_eq!(keys("from"), 1, "{query:?}");
        }
    }
    let stripped = strip_query_params(&query, &["mount", "from"]);
    for (k, _) in form_urlencoded::parse(stripped.as_bytes()) {
        assert!(k != "mount" && k != "from", "{query:?} kept {k:?}");
    }
    for pair in stripped.split('&').filter(|p| !p.is_empty()) {
        assert!(
            query.split('&').any(|p| p == pair),
            "{pair:?} not in {query:?}"
        );
    }
    if let Ok(value) = http::HeaderValue::from_bytes(content_type) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, value);
        let go_form = form::go_media_type(content_type).is_some_and(|t| {
            t == "application/x-www-form-urlencoded" || t == "multipart/form-data"
        });
        assert_eq!(form::is_form(&headers), go_form, "{content_type:?}");
        if go_form {
            assert!(
                form::check_upload_start(&headers).is_err(),
                "form type {content_type:?} starts an upload"
            );
        }
    }
}

/// `auth::basic::parse` must never panic on any header value, and what it accepts must
/// be usable as is: a user name that is non-empty, within `MAX_USER`, without a control
/// character (it reaches logs) and without `:` (the split is at the first one); and the
/// password must come back byte for byte when the credentials are encoded again.
pub fn basic(data: &[u8]) {
    use crate::auth::basic::{parse, MAX_USER};
    use base64::Engine;
    let Ok(creds) = parse(data) else {
        return;
    };
    let user = &creds.user;
    assert!(!user.is_empty() && user.len() <= MAX_USER, "user {user:?}");
    assert!(!user.contains(char::is_control), "control char in {user:?}");
    assert!(!user.contains(':'), "':' in {user:?}");
    let again = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{user}:{}", creds.password.expose()))
    );
    let back = parse(again.as_bytes());
    assert_eq!(back.as_ref(), Ok(&creds), "credentials do not round-trip");
}

/// `auth::token::verify` must never panic on any `Authorization: Bearer` value, and must
/// accept no token it did not sign: whatever arrives, under a key the input cannot know,
/// is refused; a token minted from the input's bytes (as user name) verifies to exactly
/// that user, and is refused once any one byte of it changes.
///
/// Input: the token text; its bytes (lossily UTF-8) also serve as a user name.
pub fn token(data: &[u8]) {
    use crate::auth::token::{bearer, mint, verify, Subject, TokenKey, LIFETIME};
    const NOW: u64 = 1_800_000_000;
    let key = TokenKey::new(b"registry-guard fuzz key, 32 bytes or more");
    let text = String::from_utf8_lossy(data);
    assert!(verify(&key, &text, NOW).is_err(), "accepted {text:?}");
    if let Some(t) = bearer(data) {
        if let Ok(t) = std::str::from_utf8(t) {
            assert!(verify(&key, t, NOW).is_err(), "accepted bearer {t:?}");
        }
    }
    let subject = Subject::User {
        name: text.chars().take(128).collect(),
        fingerprint: key.fingerprint(&text),
    };
    let minted = mint(&key, &subject, NOW, LIFETIME);
    let claims = verify(&key, &minted, NOW);
    assert_eq!(claims.map(|c| c.subject).as_ref(), Ok(&subject), "{minted}");
    if let Some(&b) = data.first() {
        let i = usize::from(b) % minted.len();
        let mut changed = minted.clone().into_bytes();
        changed[i] = if changed[i] == b'x' { b'y' } else { b'x' };
        let changed = String::from_utf8_lossy(&changed);
        assert!(verify(&key, &changed, NOW).is_err(), "accepted {changed:?}");
    }
}

/// The user file parser (`users::Checked::from_yaml`: YAML, names, hashes, groups,
/// duplicates) must never panic on any text: a bad user file is an error naming the user,
/// never a crash of `check`, `serve` or a reload. What it accepts holds only valid names
/// whose hashes `check_hash` accepts (so within the parameter limits). The dummy hash that
/// `Users::from_yaml` adds next is plain argon2, left out: it would cost each input
/// tens of milliseconds.
///
/// The same text as an htpasswd file (`users::parse_htpasswd`, `user import-htpasswd`):
/// never a panic; what it accepts are distinct valid names with hashes `check_hash`
/// accepts, and a refusal names a line of the text.
pub fn users(data: &[u8]) {
    use crate::auth::users::{check_hash, is_valid_name, parse_htpasswd, Checked, UserFile};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_htpasswd(text) {
        Ok(entries) => {
            for (i, (name, hash)) in entries.iter().enumerate() {
                assert!(is_valid_name(name), "htpasswd: accepted the name {name:?}");
                assert!(
                    check_hash(hash).is_ok(),
                    "htpasswd: accepted the hash of {name:?}"
                );
                assert!(
                    !entries[..i].iter().any(|(n, _)| n == name),
                    "htpasswd: accepted {name:?} twice"
                );
            }
        }
        Err(errors) => {
            let lines = text.split('\n').count();
            assert!(!errors.is_empty(), "htpasswd: refused without a reason");
            for e in &errors {
                assert!(
                    (1..=lines).contains(&e.line),
                    "htpasswd: line {} of {lines}",
                    e.line
                );
            }
        }
    }
    let Ok(checked) = Checked::from_yaml(text) else {
        return;
    };
    let Ok(file) = serde_yaml::from_str::<UserFile>(text) else {
        // Only an empty text is accepted without being a user file.
        assert!(text.trim().is_empty(), "accepted a file serde refuses");
        return;
    };
    for u in &file.users {
        assert!(is_valid_name(&u.name), "accepted the name {:?}", u.name);
        assert!(
            check_hash(&u.hash).is_ok(),
            "accepted the hash of {:?}",
            u.name
        );
        assert!(checked.get(&u.name).is_some(), "{:?} lost", u.name);
    }
}

/// `audit::verify::verify` must never panic on any bytes, keyed or not, as one file or two
/// (split at the first `\n--8<--\n`), with or without a `--start`/`--checkpoint`; and its
/// report must be consistent: a chain reported intact holds exactly one record per
/// non-empty line, and it has an end exactly when it has records.
pub fn audit_verify(data: &[u8]) {
    use crate::audit::record::{Chain, Position};
    use crate::audit::verify::{verify, Options};
    const MARK: &[u8] = b"\n--8<--\n";
    let (a, b) = match data.windows(MARK.len()).position(|w| w == MARK) {
        Some(i) => (&data[..i + 1], &data[i + MARK.len()..]),
        None => (data, &data[..0]),
    };
    let keyed = Chain::keyed(b"registry-guard fuzz audit key 32");
    let somewhere = Position {
        seq: 3,
        hash: "ab".repeat(32),
    };
    for chain in [&keyed, &Chain::Unkeyed] {
        for start in [None, Some(somewhere.clone())] {
            let opts = Options {
                chain,
                start,
                checkpoints: vec![somewhere.clone()],
            };
            let _ = verify([("a", a), ("b", b)], &opts);
            let opts = Options {
                checkpoints: Vec::new(),
                ..opts
            };
            let r = verify([("a", a), ("b", b)], &opts);
            if r.broken.is_none() {
                let lines = [a, b]
                    .iter()
                    .flat_map(|f| f.split(|&c| c == b'\n'))
                    .filter(|l| !l.is_empty())
                    .count() as u64;
                assert_eq!(r.records, lines, "intact, but records != lines");
            }
            assert_eq!(
                r.chain_end.is_some(),
                r.records > 0,
                "chain end without records"
            );
        }
    }
}

/// `proxy::challenge` reads what an upstream and its token realm send back; it must
/// never panic on any `WWW-Authenticate` value or realm answer, and what it returns must
/// be usable as is: a `Bearer` challenge always has a non-empty realm; a scope comes out
/// in one spelling (normalising it again changes nothing); at most a bounded number of
/// challenges; a realm URI is only ever built for `http`/`https` with a host; and an
/// accepted token is non-empty, within `MAX_TOKEN_BYTES`, visible ASCII (it becomes a
/// header), with a lifetime within `MAX_TOKEN_LIFETIME`.
///
/// Input: `www-authenticate \n token-answer` (the answer is the rest, bytes).
pub fn challenge(data: &[u8]) {
    use crate::proxy::challenge::{
        normalize_scope, parse_challenges, parse_token_answer, realm_uri, Challenge,
        MAX_TOKEN_BYTES, MAX_TOKEN_LIFETIME,
    };
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (value, answer) = (&data[..split], data.get(split + 1..).unwrap_or(&[]));
    let value = String::from_utf8_lossy(value);
    let all = parse_challenges(&value);
    assert!(all.len() <= 16, "{} challenges", all.len());
    for c in all {
        if let Challenge::Bearer(b) = c {
            assert!(!b.realm.is_empty(), "a Bearer challenge without realm");
            if let Some(scope) = &b.scope {
                assert_eq!(&normalize_scope(scope), scope, "scope not normalised");
            }
            if let Ok(uri) = realm_uri(
                &b.realm,
                b.service.as_deref(),
                b.scope.as_deref(),
                Some("fuzz"),
            ) {
                assert!(matches!(uri.scheme_str(), Some("http" | "https")));
                assert!(uri.host().is_some_and(|h| !h.is_empty()));
            }
        }
    }
    let once = normalize_scope(&value);
    assert_eq!(
        normalize_scope(&once),
        once,
        "normalising is not idempotent"
    );
    if let Ok(t) = parse_token_answer(answer, 1_767_225_600) {
        assert!(!t.token.is_empty() && t.token.len() <= MAX_TOKEN_BYTES);
        assert!(t.token.bytes().all(|b| b.is_ascii_graphic()));
        assert!(t.lifetime <= MAX_TOKEN_LIFETIME);
    }
}

/// `proxy_protocol::parse` must never panic on a connection's first bytes, and a header
/// it takes must be exactly a header: within its version's bound and within the input;
/// the same whatever follows it (so the client's own bytes never change it); every
/// shorter prefix asks for more bytes (the server never decides on part of a header);
/// a v1 header is one `PROXY ...\r\n` line. `sniff` agrees: `parse` refuses as missing
/// exactly what `sniff` says is no header.
pub fn proxy_protocol(data: &[u8]) {
    use crate::proxy_protocol::{parse, sniff, Error, Sniff, V1_MAX, V2_MAX};
    let r = parse(data);
    assert_eq!(
        matches!(r, Err(Error::Missing)),
        sniff(data) == Sniff::NotProxy,
        "parse and sniff disagree"
    );
    let Ok(Some(h)) = r else { return };
    assert!(h.len <= data.len(), "header longer than the input");
    let header = &data[..h.len];
    match h.version {
        1 => {
            assert!(h.len <= V1_MAX, "v1 header over 107 bytes");
            assert!(header.starts_with(b"PROXY ") && header.ends_with(b"\r\n"));
            assert_eq!(
                header.iter().filter(|&&b| b == b'\n').count(),
                1,
                "v1 header spans lines"
            );
        }
        2 => assert!(h.len <= V2_MAX, "v2 header over its bound"),
        v => panic!("version {v}"),
    }
    assert_eq!(
        parse(header),
        Ok(Some(h)),
        "the bytes after it changed the header"
    );
    for n in 0..h.len {
        assert_eq!(
            parse(&header[..n]),
            Ok(None),
            "decided on {n} bytes of a header"
        );
    }
}

/// `auth::ldap::filter` must never panic, and no name can change a search's shape:
/// `escape_value` leaves no `*`, `(`, `)` or NUL and only its five escapes, and undoing
/// them gives the input back; a template filled with any name and DN has exactly the
/// template's parentheses; `group_name` on any DN never panics and gives no empty name.
///
/// Input: `name\ndn` (lossily UTF-8); the DN also serves as a `memberOf` value.
pub fn ldap_filter(data: &[u8]) {
    use crate::auth::ldap::filter::{escape_value, fill, group_name};
    let text = String::from_utf8_lossy(data);
    let (name, dn) = text.split_once('\n').unwrap_or((&text, ""));
    let e = escape_value(name);
    assert!(!e.contains(['*', '(', ')', '\0']), "{e:?}");
    let mut back = Vec::new();
    let mut rest = e.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'\\' {
            let esc = tail.get(..2).expect("an escape has two hex digits");
            assert!(
                [&b"2a"[..], b"28", b"29", b"5c", b"00"].contains(&esc),
                "unexpected escape in {e:?}"
            );
            back.push(
                u8::from_str_radix(std::str::from_utf8(esc).unwrap_or("00"), 16).unwrap_or(0),
            );
            rest = &tail[2..];
        } else {
            back.push(b);
            rest = tail;
        }
    }
    assert_eq!(back, name.as_bytes(), "escaping lost something");
    let template = "(&(objectClass=person)(|(uid={user})(member={dn})))";
    let parens = |s: &str| {
        s.chars()
            .filter(|c| matches!(c, '(' | ')'))
            .collect::<String>()
    };
    assert_eq!(parens(&fill(template, name, dn)), parens(template));
    if let Some(g) = group_name(dn, "cn") {
        assert!(!g.is_empty());
    }
}
