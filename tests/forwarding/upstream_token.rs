//! An upstream that uses token auth: Debian's docker-registry (distribution 2.8) with
//! `auth: token`, a token issuer of our own (below: checks Basic credentials, signs
//! ES256 JWTs with an `x5c` chain the registry trusts, counts requests per scope), and
//! registry-guard in front with `upstream.credentials`. Clients authenticate to the proxy
//! with Basic as always and must never see the upstream's Bearer challenge or a token.

use super::*;
use base64::Engine;
use common::e2e::*;
use common::process::{run, text};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

const SERVICE: &str = "test-registry";
const ISSUER: &str = "test-issuer";
const UP_USER: &str = "proxy-account";
const UP_PASSWORD: &str = "upstream-Pw-6f2d";
const USER: &str = "alice";
const PASSWORD: &str = "alice-Pw-token-e2e";

// ---------------------------------------------------------------------------------------
// The token issuer.

/// A Docker token service on 127.0.0.1:0, on a thread of its own, stopped when dropped.
struct TokenIssuer {
    addr: SocketAddr,
    /// The PEM of its throw-away self-signed certificate (the registry's rootcertbundle).
    cert_pem: PathBuf,
    /// Token requests with good credentials, per requested scope (the `scope` parameters
    /// joined by spaces, sorted; "" for none).
    issued: Arc<Mutex<HashMap<String, usize>>>,
    /// Requests refused for their credentials.
    refused: Arc<Mutex<usize>>,
    /// Every token handed out (to check none leaks into a response or a log).
    tokens: Arc<Mutex<Vec<String>>>,
    /// The `account` parameters seen.
    accounts: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    cert_b64: String,
    expires_in: u64,
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (civil-from-days, proleptic Gregorian).
fn rfc3339(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

impl Signer {
    /// A JWT as distribution's token verifier wants it: ES256, the certificate in
    /// `x5c`, claims iss/sub/aud/exp/nbf/iat/jti and `access`.
    fn token(&self, account: &str, scopes: &[String], jti: usize) -> (String, i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let (t, rest) = s.split_once(':')?;
                let (name, actions) = rest.rsplit_once(':')?;
                Some(serde_json::json!({
                    "type": t, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [self.cert_b64]});
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": account, "aud": SERVICE,
            "exp": now + self.expires_in as i64, "nbf": now - 1, "iat": now,
            "jti": format!("jti-{jti}"), "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        (format!("{input}.{}", b64url(sig.as_ref())), now)
    }
}

impl TokenIssuer {
    /// Issues tokens living `expires_in` seconds to `UP_USER:UP_PASSWORD`.
    fn start(expires_in: u64) -> TokenIssuer {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![ISSUER.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, ISSUER);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = dir.path().join("issuer.pem");
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        let signer = Signer {
            key: ring::signature::EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
            cert_b64: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            expires_in,
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut issuer = TokenIssuer {
            addr,
            cert_pem,
            issued: Default::default(),
            refused: Default::default(),
            tokens: Default::default(),
            accounts: Default::default(),
            stop: Default::default(),
            thread: None,
            _dir: dir,
        };
        let (issued, refused, tokens, accounts, stop) = (
            issuer.issued.clone(),
            issuer.refused.clone(),
            issuer.tokens.clone(),
            issuer.accounts.clone(),
            issuer.stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut jti = 0;
            while !stop.load(Ordering::SeqCst) {
                let mut s = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head.split(' ').nth(1).unwrap_or("").to_owned();
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                    .into_owned()
                    .collect();
                let auth = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let reply = if auth != basic(UP_USER, UP_PASSWORD)
                    || params
                        .iter()
                        .find(|(k, _)| k == "service")
                        .map(|(_, v)| v.as_str())
                        != Some(SERVICE)
                {
                    *refused.lock().unwrap() += 1;
                    let body = r#"{"details":"invalid credentials"}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm=\"issuer\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let mut scopes: Vec<String> = params
                        .iter()
                        .filter(|(k, _)| k == "scope")
                        .map(|(_, v)| v.clone())
                        .collect();
                    scopes.sort();
                    let account = params
                        .iter()
                        .find(|(k, _)| k == "account")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    accounts.lock().unwrap().push(account.clone());
                    *issued.lock().unwrap().entry(scopes.join(" ")).or_default() += 1;
                    jti += 1;
                    let (token, now) = signer.token(&account, &scopes, jti);
                    tokens.lock().unwrap().push(token.clone());
                    let body = serde_json::json!({
                        "token": token, "access_token": token,
                        "expires_in": signer.expires_in, "issued_at": rfc3339(now),
                    })
                    .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = s.write_all(reply.as_bytes());
            }
        });
        issuer.thread = Some(thread);
        issuer
    }

    fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    fn issued(&self) -> HashMap<String, usize> {
        self.issued.lock().unwrap().clone()
    }
    fn issued_for(&self, scope: &str) -> usize {
        self.issued().get(scope).copied().unwrap_or(0)
    }
    fn refused(&self) -> usize {
        *self.refused.lock().unwrap()
    }
    fn tokens(&self) -> Vec<String> {
        self.tokens.lock().unwrap().clone()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Setup and checks.

/// The issuer, the registry trusting it, and the proxy with `password` as its upstream
/// password. None when docker-registry is missing and not required.
fn setup(expires_in: u64, password: &str) -> Option<(TokenIssuer, Registry, Proxy)> {
    let issuer = TokenIssuer::start(expires_in);
    let registry = Registry::start_token_auth(&issuer.realm(), SERVICE, ISSUER, &issuer.cert_pem)?;
    let proxy = Proxy::builder(&registry.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .upstream_yaml(&format!(
            "  credentials:\n    username: {UP_USER}\n    password_env: RG_TEST_UPSTREAM_PW\n"
        ))
        .env("RG_TEST_UPSTREAM_PW", password)
        .start();
    Some((issuer, registry, proxy))
}

/// The registry really refuses requests without a token (the setup is what it claims).
fn assert_registry_wants_tokens(registry: &Registry) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "20"])
        .arg(format!("{}/v2/some/repo/tags/list", registry.url))
        .output()
        .unwrap();
    let head = text(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(head.contains("Bearer realm="), "{head}");
}

/// Asserts a response the client got carries nothing of the upstream's token auth.
fn assert_no_upstream_auth(h: &HeaderMap, body: &[u8], issuer: &TokenIssuer, what: &str) {
    for (k, v) in h {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !v.to_ascii_lowercase().contains("bearer"),
            "{what}: {k}: {v}"
        );
        assert!(!v.contains(&issuer.addr.to_string()), "{what}: {k}: {v}");
    }
    let body = String::from_utf8_lossy(body);
    assert!(!body.contains(&issuer.addr.to_string()), "{what}: {body}");
    for t in issuer.tokens() {
        assert!(!body.contains(&t), "{what}: a token in the body");
    }
    if let Some(c) = h.get("www-authenticate") {
        assert!(c.to_str().unwrap().starts_with("Basic "), "{what}: {c:?}");
    }
}

async fn get(
    proxy: &Proxy,
    method: &str,
    path: &str,
    auth: bool,
) -> (StatusCode, HeaderMap, Bytes) {
    get_with(proxy, method, path, auth, &[]).await
}

async fn get_with(
    proxy: &Proxy,
    method: &str,
    path: &str,
    auth: bool,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = request(proxy, method, path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if auth {
        req = req.header("authorization", basic(USER, PASSWORD));
    }
    let req = req.body(TestBody::empty()).unwrap();
    collect(send(proxy, Version::HTTP_11, req).await.unwrap()).await
}

fn assert_nothing_secret_logged(proxy: &Proxy, issuer: &TokenIssuer) {
    let logs = proxy.logs();
    assert!(!logs.contains(UP_PASSWORD), "upstream password logged");
    assert!(!logs.contains(PASSWORD), "client password logged");
    for t in issuer.tokens() {
        // The signature part alone is enough to recognise a token.
        let sig = t.rsplit('.').next().unwrap();
        assert!(!logs.contains(sig), "a token was logged");
    }
    assert!(!logs.contains("panicked"), "{logs}");
}

/// skopeo with no ambient credentials (its own HOME, XDG_RUNTIME_DIR and auth file).
fn skopeo_in(home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("skopeo");
    cmd.env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("REGISTRY_AUTH_FILE", home.join("no-auth.json"))
        .args(args);
    run(&mut cmd, Duration::from_secs(180))
}

// ---------------------------------------------------------------------------------------
// Tests.

/// skopeo pushes and pulls an image through the proxy; the proxy gets its tokens from
/// the issuer (as its own account), one per scope, and the client only ever deals with
/// the proxy's Basic auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushes_and_pulls_through_a_token_auth_registry() {
    let Some((issuer, registry, proxy)) = setup(300, UP_PASSWORD) else {
        return;
    };
    if !have("skopeo") || !have_python(false) {
        return;
    }
    assert_registry_wants_tokens(&registry);
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let img = mkimage(&home.join("img"), 1, "v1", 7);
    let creds = format!("{USER}:{PASSWORD}");
    let cert_dir = proxy.cert_dir.to_str().unwrap();
    let dest = format!("docker://{}/team/app:v1", proxy.addr);
    let out = skopeo_in(
        home,
        &[
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--retry-times",
            "0",
            "--dest-cert-dir",
            cert_dir,
            "--dest-creds",
            &creds,
            &img.oci_ref(),
            &dest,
        ],
    );
    assert!(
        out.status.success(),
        "push: {}\n{}",
        text(&out.stderr),
        proxy.logs()
    );
    let pulled = home.join("pulled");
    let out = skopeo_in(
        home,
        &[
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--retry-times",
            "0",
            "--src-cert-dir",
            cert_dir,
            "--src-creds",
            &creds,
            &dest,
            &format!("oci:{}:v1", pulled.display()),
        ],
    );
    assert!(
        out.status.success(),
        "pull: {}\n{}",
        text(&out.stderr),
        proxy.logs()
    );
    assert_eq!(
        sha256_file(&blob_file(&pulled, &img.layer_digest)),
        img.layer_digest
    );
    assert_eq!(
        sha256_file(&blob_file(&pulled, &img.manifest_digest)),
        img.manifest_digest
    );

    // Through the proxy, the tag list and the manifest as the registry has them.
    let (status, h, body) = get(&proxy, "GET", "/v2/team/app/tags/list", true).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["tags"],
        serde_json::json!(["v1"])
    );
    assert_no_upstream_auth(&h, &body, &issuer, "tags/list");
    // (distribution 2.8 serves an OCI manifest only to whoever accepts its type)
    let accept = [("accept", "application/vnd.oci.image.manifest.v1+json")];
    let (status, h, body) =
        get_with(&proxy, "HEAD", "/v2/team/app/manifests/v1", true, &accept).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "docker-content-digest"),
        [img.manifest_digest.as_str()]
    );
    assert_no_upstream_auth(&h, &body, &issuer, "manifest HEAD");
    // The proxy's own lookups (the filtered catalog) use tokens too.
    let (status, h, body) = get(&proxy, "GET", "/v2/_catalog", true).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()["repositories"],
        serde_json::json!(["team/app"])
    );
    assert_no_upstream_auth(&h, &body, &issuer, "catalog");
    // A client without credentials gets the proxy's Basic challenge, nothing else.
    let (status, h, body) = get(&proxy, "GET", "/v2/team/app/tags/list", false).await;
    assert_registry_error(status, &h, &body, 401, "UNAUTHORIZED");
    assert_eq!(
        header(&h, "www-authenticate"),
        ["Basic realm=\"registry-guard\""]
    );
    assert_no_upstream_auth(&h, &body, &issuer, "anonymous");

    // One token per scope for the whole push and pull (cached, single-flight), each
    // asked for as the proxy's own account.
    let issued = issuer.issued();
    eprintln!("tokens issued per scope: {issued:?}");
    for scope in [
        "repository:team/app:pull",
        "repository:team/app:pull,push",
        "registry:catalog:*",
    ] {
        assert_eq!(issued.get(scope), Some(&1), "{scope}: {issued:?}");
    }
    assert!(issued.values().all(|n| *n == 1), "{issued:?}");
    assert_eq!(issuer.refused(), 0);
    assert!(issuer.accounts.lock().unwrap().iter().all(|a| a == UP_USER));
    assert_nothing_secret_logged(&proxy, &issuer);
}

/// Tokens are reused while they live (concurrent first requests included: one realm
/// request), and asked for again once they have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reused_until_they_expire() {
    let Some((issuer, _registry, proxy)) = setup(3, UP_PASSWORD) else {
        return;
    };
    let scope = "repository:team/app:pull";
    let path = "/v2/team/app/tags/list";
    // Eight at once on a proxy that knows nothing of the upstream yet.
    let mut tasks = Vec::new();
    let proxy = Arc::new(proxy);
    for _ in 0..8 {
        let p = proxy.clone();
        tasks.push(tokio::spawn(
            async move { get(&p, "GET", path, true).await },
        ));
    }
    for t in tasks {
        let (status, h, body) = t.await.unwrap();
        // The repository does not exist: the registry's own 404, past its auth.
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("NAME_UNKNOWN"));
        assert_no_upstream_auth(&h, &body, &issuer, "concurrent");
    }
    for _ in 0..10 {
        let (status, h, body) = get(&proxy, "GET", path, true).await;
        assert_eq!(status, 404);
        assert_no_upstream_auth(&h, &body, &issuer, "sequential");
    }
    assert_eq!(issuer.issued_for(scope), 1, "{:?}", issuer.issued());
    // Past the token's end: one new token, then reused again.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..5 {
        let (status, h, body) = get(&proxy, "GET", path, true).await;
        assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
        assert_no_upstream_auth(&h, &body, &issuer, "after expiry");
    }
    assert_eq!(issuer.issued_for(scope), 2, "{:?}", issuer.issued());
    assert_nothing_secret_logged(&proxy, &issuer);
}

/// A request whose body streams (an upload PATCH) is sent once: a proxy that has not
/// met the upstream yet learns its token service first (GET /v2/) and sends the body
/// with the right token. The upload session comes from another proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_gets_its_token_before_it_is_sent() {
    let Some((issuer, registry, first)) = setup(300, UP_PASSWORD) else {
        return;
    };
    let (status, h, body) = get(&first, "POST", "/v2/team/blob/blobs/uploads/", true).await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    let location = header(&h, "location")[0].to_owned();
    let session = &location[location.find("/v2/").unwrap()..];

    let fresh = Proxy::builder(&registry.url)
        .users(vec![user(USER, PASSWORD, &[])])
        .upstream_yaml(&format!(
            "  credentials:\n    username: {UP_USER}\n    password_env: RG_TEST_UPSTREAM_PW\n"
        ))
        .env("RG_TEST_UPSTREAM_PW", UP_PASSWORD)
        .start();
    let data = Bytes::from(vec![7u8; 300 * 1024]);
    let digest = sha256_digest(&data);
    // A body the proxy streams through: it cannot be sent twice.
    let req = request(&fresh, "PATCH", session)
        .header("authorization", basic(USER, PASSWORD))
        .header("content-type", "application/octet-stream")
        .body(TestBody::bytes(data.clone()))
        .unwrap();
    let (status, h, body) = collect(send(&fresh, Version::HTTP_11, req).await.unwrap()).await;
    assert_eq!(
        status,
        202,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        fresh.logs()
    );
    assert_no_upstream_auth(&h, &body, &issuer, "PATCH");
    let location = header(&h, "location")[0].to_owned();
    let next = &location[location.find("/v2/").unwrap()..];
    let (status, h, body) = get(&fresh, "PUT", &format!("{next}&digest={digest}"), true).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_no_upstream_auth(&h, &body, &issuer, "PUT");
    let (status, h, _) = get(
        &fresh,
        "HEAD",
        &format!("/v2/team/blob/blobs/{digest}"),
        true,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&h, "content-length"),
        [data.len().to_string().as_str()]
    );
    assert!(
        !fresh.logs().contains("upstream failed"),
        "{}",
        fresh.logs()
    );
    // Both proxies asked for the push scope once each, nothing more.
    assert_eq!(
        issuer.issued_for("repository:team/blob:pull,push"),
        2,
        "{:?}",
        issuer.issued()
    );
    assert_nothing_secret_logged(&fresh, &issuer);
}

/// Wrong upstream credentials: the realm refuses the proxy, and the client gets the
/// proxy's own registry error (502 UNAVAILABLE naming the upstream auth failure), never
/// the upstream's challenge nor the realm's; the realm is not asked again per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_credentials_give_a_registry_error_and_no_challenge() {
    let Some((issuer, _registry, proxy)) = setup(300, "not-the-upstream-password") else {
        return;
    };
    for path in ["/v2/", "/v2/team/app/tags/list", "/v2/_catalog"] {
        for _ in 0..3 {
            let (status, h, body) = get(&proxy, "GET", path, true).await;
            assert_registry_error(status, &h, &body, 502, "UNAVAILABLE");
            assert!(
                String::from_utf8_lossy(&body).contains("upstream authentication failed"),
                "{}",
                String::from_utf8_lossy(&body)
            );
            assert!(!h.contains_key("www-authenticate"), "{path}: {h:?}");
            assert_no_upstream_auth(&h, &body, &issuer, path);
        }
    }
    let (status, h, body) = get(&proxy, "HEAD", "/v2/team/app/manifests/v1", true).await;
    assert_eq!(status, 502);
    assert!(!h.contains_key("www-authenticate"));
    assert!(body.is_empty());
    // Failures are held a second per scope: 3 scopes (+ the manifest's pull, the same
    // as the tag list's), far fewer realm requests than client requests.
    assert!(issuer.refused() >= 1);
    assert!(issuer.refused() <= 6, "{}", issuer.refused());
    assert!(issuer.issued().is_empty());
    let logs = proxy.logs();
    assert!(logs.contains("upstream authentication failed"), "{logs}");
    assert_nothing_secret_logged(&proxy, &issuer);
}
