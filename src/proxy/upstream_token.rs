//! The proxy's own authentication towards the upstream: Basic credentials, or the Docker
//! token protocol for registries that answer `401` with `WWW-Authenticate: Bearer ...`
//! (distribution with `auth: token`, Harbor, GitLab, Quay).
//!
//! What this module keeps (the I/O — sending, fetching from the realm — is
//! `upstream.rs`'s):
//! - [`Mode`]: how the upstream authenticates, learned from its challenges (a Bearer
//!   challenge switches to tokens, a Basic one or a plain answer to a probe back).
//! - which actions the upstream asks for per kind of request (pull, push, delete), learned
//!   from challenges, so a request whose body cannot be sent twice (an upload `PATCH`, a
//!   manifest `PUT`) gets the right token *before* it is sent ([`Need`]).
//! - the token cache, per (realm, service, scope): bounded ([`MAX_TOKENS`]), renewed a
//!   little before the end ([`challenge::renew_margin`]), one fetch per key at a time
//!   (concurrent requests for the same scope wait for that fetch instead of each asking
//!   the realm), and a failed fetch answered from memory for [`FAILURE_HOLD`].
//!
//! Invariants: tokens and credentials are held only as sensitive `HeaderValue`s, never
//! formatted into an error, a log line or a `Debug` output; nothing the upstream or the
//! realm says about authentication reaches the client (see `upstream::send_authorized`).

use super::challenge::{self, Bearer, TokenAnswer};
use crate::error::ProxyError;
use crate::registry::{Route, Target};
use http::{HeaderValue, Method};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens cached at most (one per realm, service and scope).
pub const MAX_TOKENS: usize = 1024;
/// A failed fetch is answered from memory this long, so a broken realm or wrong
/// credentials cost one realm request per key per second, not one per client request.
pub const FAILURE_HOLD: Duration = Duration::from_secs(1);

/// How the upstream wants the proxy to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Nothing learned yet: Basic credentials (if any) are sent, as to a Basic upstream.
    Unknown,
    /// A Basic challenge, or an answer without a challenge.
    Basic,
    /// A Bearer challenge named this realm and service.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The kind of access a request needs, as registries group them in scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// GET, HEAD.
    Pull,
    /// POST, PUT, PATCH.
    Push,
    /// DELETE.
    Delete,
    /// `/v2/_catalog`: `registry:catalog:*`.
    Catalog,
    /// `/v2/`: no scope.
    Base,
}

impl Class {
    /// The actions asked for before the upstream has said what it wants (the standard
    /// scopes, as distribution asks for them).
    fn default_actions(self) -> &'static str {
        match self {
            Class::Pull => "pull",
            Class::Push => "pull,push",
            Class::Delete => "delete",
            Class::Catalog | Class::Base => "",
        }
    }
}

/// What a request needs from the upstream's token service: its repository and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    repo: Option<String>,
    class: Class,
}

impl Need {
    /// From the route the proxy parsed: reads pull, writes push, deletes delete (an
    /// upload cancel, a DELETE of a session, asks what the upstream asks for a DELETE).
    pub fn for_route(route: &Route) -> Need {
        let class = match (&route.target, &route.method) {
            (Target::Base, _) => Class::Base,
            (Target::Catalog { .. }, _) => Class::Catalog,
            (_, &Method::GET | &Method::HEAD) => Class::Pull,
            (_, &Method::DELETE) => Class::Delete,
            _ => Class::Push,
        };
        Need {
            repo: route.repo().map(str::to_owned),
            class,
        }
    }
    pub fn pull(repo: &str) -> Need {
        Need {
            repo: Some(repo.to_owned()),
            class: Class::Pull,
        }
    }
    pub fn catalog() -> Need {
        Need {
            repo: None,
            class: Class::Catalog,
        }
    }
    pub fn base() -> Need {
        Need {
            repo: None,
            class: Class::Base,
        }
    }
}

/// A cached token's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub realm: String,
    pub service: Option<String>,
    /// Normalised.
    pub scope: Option<String>,
}

impl Key {
    pub fn of(b: &Bearer) -> Key {
        Key {
            realm: b.realm.clone(),
            service: b.service.clone(),
            scope: b.scope.clone(),
        }
    }
}

struct Cached {
    header: HeaderValue,
    renew_at: Instant,
    expires_at: Instant,
}

#[derive(Default)]
struct SlotState {
    token: Option<Cached>,
    /// When the last fetch failed, and why (no secret in it).
    failed: Option<(Instant, String)>,
}

/// One key's token; its lock is held across the fetch, so one fetch runs per key.
#[derive(Default)]
struct Slot(tokio::sync::Mutex<SlotState>);

/// The proxy's upstream credentials and what it learned about the upstream's auth.
pub struct Tokens {
    /// `upstream.credentials.username`: the `account` asked for.
    account: Option<String>,
    /// `Basic ...` for the upstream (or its realm), sensitive.
    basic: Option<HeaderValue>,
    mode: Mutex<Mode>,
    /// Actions the upstream asked for per class (a repository's own entry of a scope).
    learned: Mutex<HashMap<Class, String>>,
    cache: Mutex<HashMap<Key, Arc<Slot>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("account", &self.account)
            .field("basic", &self.basic.as_ref().map(|_| "<redacted>"))
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(account: Option<String>, basic: Option<HeaderValue>) -> Tokens {
        Tokens {
            account,
            basic,
            mode: Mutex::new(Mode::Unknown),
            learned: Mutex::default(),
            cache: Mutex::default(),
        }
    }

    pub fn basic(&self) -> Option<&HeaderValue> {
        self.basic.as_ref()
    }

    pub fn account(&self) -> Option<&str> {
        self.account.as_deref()
    }

    pub fn mode(&self) -> Mode {
        self.mode.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The upstream answered without a Bearer challenge: Basic (or nothing) works.
    pub fn learn_basic(&self) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::Basic;
    }

    /// The upstream sent a Bearer challenge for a request of `need`: remember its realm,
    /// service, and the actions it asked for on the request's repository.
    pub fn learn(&self, need: &Need, b: &Bearer) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::Bearer {
            realm: b.realm.clone(),
            service: b.service.clone(),
        };
        let actions = match (&need.repo, &b.scope) {
            (Some(repo), Some(scope)) => challenge::repository_actions(scope, repo),
            _ => None,
        };
        if let Some(a) = actions.filter(|a| !a.is_empty() && a.len() <= 64) {
            self.learned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(need.class, a);
        }
    }

    /// The scope to ask for ahead of a request of `need`: the actions learned for its
    /// class, else the standard ones.
    pub fn scope_for(&self, need: &Need) -> Option<String> {
        match need.class {
            Class::Base => None,
            Class::Catalog => Some("registry:catalog:*".to_owned()),
            class => {
                let repo = need.repo.as_deref()?;
                let learned = self
                    .learned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&class)
                    .cloned();
                let actions = learned.unwrap_or_else(|| class.default_actions().to_owned());
                Some(challenge::repository_scope(repo, &actions))
            }
        }
    }

    /// The key of the token to send ahead of a request of `need`, when the upstream
    /// speaks the token protocol.
    pub fn key_for(&self, need: &Need) -> Option<Key> {
        match self.mode() {
            Mode::Bearer { realm, service } => Some(Key {
                realm,
                service,
                scope: self.scope_for(need),
            }),
            _ => None,
        }
    }

    fn slot(&self, key: &Key) -> Arc<Slot> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = cache.get(key) {
            return s.clone();
        }
        if cache.len() >= MAX_TOKENS {
            // Keep slots in use (a fetch running or awaited) and live tokens; when that
            // is still every slot, drop all that are not in use.
            let now = Instant::now();
            cache.retain(|_, s| match s.0.try_lock() {
                Err(_) => true,
                Ok(st) => st.token.as_ref().is_some_and(|t| now < t.expires_at),
            });
            if cache.len() >= MAX_TOKENS {
                cache.retain(|_, s| s.0.try_lock().is_err());
            }
        }
        let s = Arc::new(Slot::default());
        cache.insert(key.clone(), s.clone());
        s
    }

    /// The `Authorization: Bearer ...` value for `key`: from the cache while it is not
    /// due for renewal (and is not `stale`, the token the upstream just refused), else
    /// from `fetch`, one fetch per key at a time.
    pub async fn token<F, Fut>(
        &self,
        key: &Key,
        stale: Option<&HeaderValue>,
        fetch: F,
    ) -> Result<HeaderValue, ProxyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<TokenAnswer, ProxyError>>,
    {
        let slot = self.slot(key);
        let mut st = slot.0.lock().await;
        let now = Instant::now();
        let live = |t: &Cached| Some(&t.header) != stale;
        if let Some(t) = st.token.as_ref().filter(|t| live(t) && now < t.renew_at) {
            return Ok(t.header.clone());
        }
        if let Some((at, what)) = &st.failed {
            if now < *at + FAILURE_HOLD {
                return Err(ProxyError::UpstreamAuth {
                    what: what.clone(),
                    source: None,
                });
            }
        }
        tracing::debug!(
            service = key.service.as_deref().unwrap_or(""),
            scope = key.scope.as_deref().unwrap_or(""),
            "fetching an upstream token"
        );
        match fetch().await {
            Ok(answer) => {
                let mut header = HeaderValue::try_from(format!("Bearer {}", answer.token))
                    .map_err(|_| ProxyError::UpstreamAuth {
                        what: "the token realm sent a token not allowed in a header".into(),
                        source: None,
                    })?;
                header.set_sensitive(true);
                let got = Instant::now();
                st.failed = None;
                st.token = (!answer.lifetime.is_zero()).then(|| Cached {
                    header: header.clone(),
                    renew_at: got + answer.lifetime - challenge::renew_margin(answer.lifetime),
                    expires_at: got + answer.lifetime,
                });
                Ok(header)
            }
            Err(e) => {
                st.failed = Some((Instant::now(), e.to_string()));
                // A token due for renewal but not yet ended still serves.
                match st
                    .token
                    .as_ref()
                    .filter(|t| live(t) && Instant::now() < t.expires_at)
                {
                    Some(t) => Ok(t.header.clone()),
                    None => {
                        st.token = None;
                        Err(e)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn bearer(scope: &str) -> Bearer {
        Bearer {
            realm: "http://auth/token".into(),
            service: Some("reg".into()),
            scope: Some(challenge::normalize_scope(scope)),
            error: None,
        }
    }

    fn answer(token: &str, secs: u64) -> TokenAnswer {
        TokenAnswer {
            token: token.into(),
            lifetime: Duration::from_secs(secs),
        }
    }

    #[test]
    fn needs_and_scopes_from_routes_and_challenges() {
        let t = Tokens::new(None, None);
        let route = |m: Method, p: &str| crate::registry::parse(&m, p, None).unwrap();
        let put = Need::for_route(&route(Method::PUT, "/v2/a/b/manifests/latest"));
        let patch = Need::for_route(&route(Method::PATCH, "/v2/a/b/blobs/uploads/u1"));
        let del = Need::for_route(&route(
            Method::DELETE,
            "/v2/a/b/manifests/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ));
        let get = Need::for_route(&route(Method::GET, "/v2/a/b/tags/list"));
        assert_eq!(put, patch);
        assert_eq!(t.key_for(&put), None, "no token before a Bearer challenge");
        assert_eq!(
            t.scope_for(&put).as_deref(),
            Some("repository:a/b:pull,push")
        );
        assert_eq!(t.scope_for(&get).as_deref(), Some("repository:a/b:pull"));
        assert_eq!(t.scope_for(&del).as_deref(), Some("repository:a/b:delete"));
        assert_eq!(
            t.scope_for(&Need::catalog()).as_deref(),
            Some("registry:catalog:*")
        );
        assert_eq!(t.scope_for(&Need::base()), None);
        // The upstream asks for `*` on deletes: learned, used for other repositories.
        t.learn(&del, &bearer("repository:a/b:*"));
        assert_eq!(
            t.scope_for(&Need::for_route(&route(
                Method::DELETE,
                "/v2/c/blobs/sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            )))
            .as_deref(),
            Some("repository:c:*")
        );
        let k = t.key_for(&get).unwrap();
        assert_eq!(k.realm, "http://auth/token");
        assert_eq!(k.scope.as_deref(), Some("repository:a/b:pull"));
        t.learn_basic();
        assert_eq!(t.key_for(&get), None);
    }

    #[tokio::test]
    async fn tokens_are_cached_single_flight_and_renewed() {
        let t = Arc::new(Tokens::new(None, None));
        let key = Key::of(&bearer("repository:a:pull"));
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (t, key, fetches) = (t.clone(), key.clone(), fetches.clone());
            tasks.push(tokio::spawn(async move {
                t.token(&key, None, || async {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(answer("one", 60))
                })
                .await
                .unwrap()
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), "Bearer one");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        // The token the upstream refused is fetched anew.
        let stale = HeaderValue::from_static("Bearer one");
        let h = t
            .token(&key, Some(&stale), || async { Ok(answer("two", 60)) })
            .await
            .unwrap();
        assert_eq!(h, "Bearer two");
        assert!(h.is_sensitive());
        // A token with no lifetime is used once, never cached.
        let k2 = Key::of(&bearer("repository:b:pull"));
        for _ in 0..2 {
            t.token(&k2, None, || async {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(answer("z", 0))
            })
            .await
            .unwrap();
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_are_held_briefly_and_never_hold_secrets() {
        let t = Tokens::new(None, None);
        let key = Key::of(&bearer("repository:a:pull"));
        let fail = || async {
            Err(ProxyError::UpstreamAuth {
                what: "the token realm answered 401".into(),
                source: None,
            })
        };
        assert!(t.token(&key, None, fail).await.is_err());
        // Within FAILURE_HOLD: no second fetch.
        let e = t
            .token(&key, None, || async { panic!("fetched again") })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
    }

    #[test]
    fn the_cache_is_bounded() {
        let t = Tokens::new(None, None);
        for i in 0..(MAX_TOKENS + 10) {
            t.slot(&Key::of(&bearer(&format!("repository:r{i}:pull"))));
        }
        assert!(t.cache.lock().unwrap().len() <= MAX_TOKENS);
    }

    #[test]
    fn debug_hides_credentials() {
        let t = Tokens::new(
            Some("proxy".into()),
            Some(HeaderValue::from_static("Basic c2VjcmV0")),
        );
        assert!(!format!("{t:?}").contains("c2VjcmV0"));
    }
}
