//! Identity: who is asking. Pure parts (`basic`, the rules of `users`) plus the
//! [`Authenticator`], which holds the current user file snapshot, the verification
//! cache and the throttle, and runs argon2 off the async workers behind a concurrency cap.
//!
//! Invariants:
//! - Unknown users, disabled users and wrong passwords get the same answer after the same
//!   argon2 work (unknown names are checked against a dummy hash of the same parameters;
//!   while the file holds bcrypt and argon2 hashes, every check runs one of each:
//!   `users::Verification`).
//! - A password or an Authorization header value is never logged or stored; the cache
//!   holds keyed hashes only.
//! - A throttled (address, name) costs no argon2 run, and every attempt that may run
//!   argon2 is counted before it starts (see `throttle`): parallel or cancelled attempts
//!   cannot run it more than `max_failures` times per window for one (address, name).
//! - The argon2 working memory is bounded by `verify_concurrency` × `m_cost` and given
//!   back when the verification threads are idle (see [`Argon2Pool`]).
//! - User names are logged through `log::UserName` only (escaped; a token secret given as a name is not shown).
//! - A login verified against a bcrypt hash queues its upgrade to argon2id (`upgrade`,
//!   `auth.upgrade_hashes`) and is answered without waiting for it.
//! - An access token (`access_tokens`, Basic credentials whose name is a token's) is
//!   checked with one SHA-256 and a constant-time compare, never argon2 or the cache;
//!   a refused one (wrong secret, expired, revoked, owner gone or disabled) gets the
//!   same 401 as a wrong password and counts as a failure in the throttle. A right
//!   secret is never throttled: no guess can present one (as with a cache hit).
//! - A bearer token (`token`) is never logged; one is honoured only while its user still
//!   exists, is not disabled and has the hash it had at issue (or that hash's argon2id
//!   upgrade, same password), and an anonymous one only
//!   while `auth.anonymous` is on.

pub mod access_tokens;
pub mod basic;
pub mod cache;
pub mod ldap;
// Public for benches that build an `AuthSettings` (its `throttle` field).
pub mod throttle;
pub mod token;
pub mod upgrade;
pub mod users;

use crate::log::UserName;
use crate::metrics::{AuthResult, Metrics};
use cache::VerifyCache;
use http::header::{HeaderMap, AUTHORIZATION};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use throttle::Throttle;
use users::Users;

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    // The system RNG failing is not recoverable; ring only fails where getrandom does.
    if ring::rand::SystemRandom::new().fill(&mut out).is_err() {
        std::process::abort();
    }
    out
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    User {
        name: String,
        groups: Vec<String>,
    },
    /// An access token (`access_tokens`): it acts as its owner, with the owner's groups
    /// as they are now, and never beyond its `scope` (the rules decide for the owner,
    /// the scope cuts that down).
    Token {
        name: String,
        owner: String,
        groups: Vec<String>,
        scope: Arc<crate::acl::Scope>,
    },
    Anonymous,
}

impl Identity {
    /// The name the request authenticated with: a user's, a token's, or `anonymous`.
    pub fn name(&self) -> &str {
        match self {
            Identity::User { name, .. } | Identity::Token { name, .. } => name,
            Identity::Anonymous => "anonymous",
        }
    }

    /// Whom the rules decide for: the user, or a token's owner (`${user}` is this
    /// name), with their groups; `None` for anonymous.
    pub fn principal(&self) -> Option<(&str, &[String])> {
        match self {
            Identity::User { name, groups } => Some((name, groups)),
            Identity::Token { owner, groups, .. } => Some((owner, groups)),
            Identity::Anonymous => None,
        }
    }

    /// A token's owner (audit records and the access log name it).
    pub fn owner(&self) -> Option<&str> {
        match self {
            Identity::Token { owner, .. } => Some(owner),
            _ => None,
        }
    }

    /// A token's scope: what the rules grant is cut down to it.
    pub fn scope(&self) -> Option<&crate::acl::Scope> {
        match self {
            Identity::Token { scope, .. } => Some(scope),
            _ => None,
        }
    }
}

/// Why no identity was established. `response.rs` renders these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials and anonymous access is off: 401 with the challenge.
    #[error("authentication required")]
    Missing,
    /// Credentials that are malformed, unknown, disabled or wrong: 401 with the challenge.
    #[error("authentication failed: {0}")]
    Invalid(&'static str),
    /// More than one Authorization header: 400.
    #[error("more than one Authorization header")]
    Ambiguous,
    /// Too many failures for this (address, name) or from this address, or too many
    /// attempts in flight: 429.
    #[error("too many failed logins; retry in {}s", .0.as_secs().max(1))]
    Throttled(Duration),
    /// The user directory (`auth.ldap`) could not judge the password: 503, not counted
    /// by the throttle (the details are in the proxy's log).
    #[error("the user directory is unavailable; try again later")]
    Unavailable,
}

/// Settings of the identity stage (from `auth:` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub anonymous: bool,
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    pub verify_concurrency: usize,
    pub throttle: throttle::Limits,
    /// Answer docker with a Bearer challenge and issue tokens (`auth.docker_bearer`).
    pub docker_bearer: bool,
    /// Rehash a bcrypt user with argon2id after a successful login (`auth.upgrade_hashes`).
    pub upgrade_hashes: bool,
}

/// One user file snapshot and the settings of `auth:`. A reload makes a new one
/// ([`Authenticator::reloaded`]) that shares the state worth keeping (throttle counts,
/// verified credentials, argon2 threads) with the old one where its settings did not
/// change; requests under way keep the one they started with.
#[derive(Debug)]
pub struct Authenticator {
    users: Arc<Users>,
    settings: AuthSettings,
    cache: Arc<VerifyCache>,
    throttle: Arc<Throttle>,
    argon2: Arc<Argon2Pool>,
    /// One lock per credential being verified: concurrent requests with the same
    /// credentials (64 connections of one client at start) wait for one argon2 run and
    /// then hit the cache, instead of running argon2 64 times. Entries leave with the
    /// last [`Ticket`].
    in_flight: Arc<FlightMap>,
    anonymous: bool,
    /// The token key when the proxy issues tokens (`auth.docker_bearer`); `None`: Bearer
    /// credentials are refused as malformed, as before tokens existed.
    tokens: Option<token::TokenKey>,
    /// Upgrades of bcrypt hashes to argon2id, kept across reloads.
    upgrades: Arc<upgrade::Upgrader>,
    /// Access tokens (`auth.tokens_file`); empty without one.
    access_tokens: Arc<access_tokens::Tokens>,
    /// Their last use, kept across reloads and flushed by the server's timer.
    usage: Arc<access_tokens::Usage>,
    /// Where the last use is flushed (`tokens.last_used_file`).
    last_used_file: Option<std::path::PathBuf>,
    /// Users and groups from a directory (`auth.ldap`), for names not in the user file.
    directory: Option<DirectoryAuth>,
    metrics: Arc<Metrics>,
}

/// What a docker bearer token of a directory user is bound to, in place of a file
/// user's hash: no hash value can equal it (hashes start with `$`).
const DIRECTORY_SUBJECT: &str = "directory user";

/// The directory and the logins it accepted lately (keyed like the file users' cache:
/// HMAC of name and password; the value is the groups the directory gave).
#[derive(Debug, Clone)]
struct DirectoryAuth {
    dir: Arc<ldap::Directory>,
    cache: Arc<VerifyCache<Arc<[String]>>>,
}

impl Authenticator {
    pub fn new(users: Users, settings: &AuthSettings, metrics: Arc<Metrics>) -> Self {
        Authenticator {
            users: Arc::new(users),
            settings: settings.clone(),
            cache: Arc::new(VerifyCache::new(
                settings.cache_ttl,
                settings.cache_max_entries,
            )),
            throttle: Arc::new(Throttle::new(settings.throttle.clone())),
            argon2: Arc::new(Argon2Pool::new(
                settings.verify_concurrency.max(1),
                metrics.clone(),
            )),
            in_flight: Default::default(),
            anonymous: settings.anonymous,
            tokens: settings.docker_bearer.then(token::TokenKey::random),
            upgrades: Default::default(),
            access_tokens: Default::default(),
            usage: Default::default(),
            last_used_file: None,
            directory: None,
            metrics,
        }
    }

    /// Accepts the access tokens of `tokens` (checked against the users by the caller:
    /// no name is both), their last use flushed to `last_used_file`.
    pub fn with_access_tokens(
        mut self,
        tokens: access_tokens::Tokens,
        last_used_file: std::path::PathBuf,
    ) -> Self {
        self.access_tokens = Arc::new(tokens);
        self.last_used_file = Some(last_used_file);
        self
    }

    /// The access tokens in force.
    pub fn access_tokens(&self) -> &access_tokens::Tokens {
        &self.access_tokens
    }

    /// Where a token's owner is looked up, at every request: the one place a directory
    /// source would plug in.
    fn owners(&self) -> &dyn access_tokens::OwnerSource {
        &*self.users
    }

    /// Writes what changed of the tokens' last use to the last-use file (blocking I/O:
    /// the server's timer runs it off the async workers). A failed write is retried at
    /// the next call.
    pub fn flush_token_usage(&self) -> std::io::Result<()> {
        let Some(path) = &self.last_used_file else {
            return Ok(());
        };
        let tokens = &self.access_tokens;
        let Some(uses) = self.usage.take_dirty(|name| tokens.get(name).is_some()) else {
            return Ok(());
        };
        access_tokens::flush_last_used(path, &uses).inspect_err(|_| self.usage.mark_dirty())
    }

    /// Last use of a token seen by this process (not yet flushed, or flushed).
    pub fn token_last_use(&self, name: &str) -> Option<access_tokens::LastUse> {
        self.usage.get(name)
    }

    /// Identifies Basic credentials whose name is an access token's.
    async fn identify_access_token(
        &self,
        token: &access_tokens::Token,
        secret: &str,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let now = unix_now();
        // The secret first: the owner's lookup (maybe a directory search) only for a
        // request that holds it.
        if let Err(why) = token.verify(secret, now) {
            return self.token_refused(&token.name, why, client);
        }
        let checked = self.token_identity(token, now, client).await?;
        match checked {
            Ok(id) => {
                self.usage.record(&token.name, now, client);
                self.metrics.auth_result(AuthResult::Token).inc();
                Ok(id)
            }
            Err(why) => self.token_refused(&token.name, why, client),
        }
    }

    /// A refused access token: counted by the throttle like a wrong password (429 once
    /// the pair or the address is over its limit), else the wrong password's 401.
    fn token_refused(
        &self,
        name: &str,
        why: access_tokens::Refusal,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        self.metrics.auth_failures.inc();
        self.throttle
            .fail_now(client, name, Instant::now())
            .map_err(|r| self.refused(r, name, client))?;
        self.metrics.auth_result(AuthResult::TokenRefused).inc();
        tracing::info!(user = %UserName(name), %client, "login failed");
        tracing::debug!(user = %UserName(name), reason = why.as_str(), "login failure reason (access token)");
        Err(AuthError::Invalid("invalid username or password"))
    }

    /// Looks up names that are not in the user file in `dir` (`auth.ldap`). The same
    /// directory as before (a reload that changed nothing in `auth.ldap`) keeps its
    /// cached logins; another one starts with none.
    pub fn with_directory(mut self, dir: Option<Arc<ldap::Directory>>) -> Self {
        let (ttl, max) = (self.settings.cache_ttl, self.settings.cache_max_entries);
        self.directory = dir.map(|dir| match self.directory.take() {
            Some(old) if Arc::ptr_eq(&old.dir, &dir) && old.cache.settings() == (ttl, max) => old,
            _ => DirectoryAuth {
                dir,
                cache: Arc::new(VerifyCache::with_values(ttl, max)),
            },
        });
        self
    }

    /// The directory, when `auth.ldap` is configured.
    pub fn directory(&self) -> Option<&Arc<ldap::Directory>> {
        self.directory.as_ref().map(|d| &d.dir)
    }

    /// Warns of every name of the user file the directory also has: the file's entry
    /// is the one used. Called at start and after a reload, off the request path.
    pub async fn report_shadowed_names(&self) {
        let Some(d) = &self.directory else { return };
        for name in self.users.names() {
            match d.dir.groups_of(name).await {
                Ok(Some(_)) => tracing::warn!(
                    user = %UserName(name),
                    "in the user file and in the directory: the user file's entry is used"
                ),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the user file's names against the directory");
                    return;
                }
            }
        }
    }

    /// Signs tokens with `key` (`auth.token_key_file`, shared by replicas) instead of the
    /// random per-process key. No effect when the proxy issues no tokens.
    pub fn with_token_key(mut self, key: token::TokenKey) -> Self {
        if self.tokens.is_some() {
            self.tokens = Some(key);
        }
        self
    }

    /// Whether the proxy issues tokens and sends docker a Bearer challenge.
    pub fn issues_tokens(&self) -> bool {
        self.tokens.is_some()
    }

    /// Whether `value` (an `Authorization` header's) is a bearer token this
    /// authenticator checks, and whom it names if it is one of its own (expired or not;
    /// `Some(None)`: forged or malformed). `None`: no bearer token, or no tokens issued
    /// (then it is malformed Basic credentials). For the audit of refused tokens.
    pub fn bearer_subject(&self, value: &[u8]) -> Option<Option<String>> {
        let (Some(key), Some(t)) = (&self.tokens, token::bearer(value)) else {
            return None;
        };
        let subject = std::str::from_utf8(t)
            .ok()
            .and_then(|t| token::subject(key, t));
        Some(subject.map(|s| match s {
            token::Subject::User { name, .. } => name,
            token::Subject::Anonymous => "anonymous".to_owned(),
        }))
    }

    /// A token for `id` (just identified), valid for [`token::LIFETIME`] from `now`
    /// (unix seconds). `None`: no tokens issued, or the user left the file meanwhile.
    pub fn issue_token(&self, id: &Identity, now: u64) -> Option<String> {
        let key = self.tokens.as_ref()?;
        let subject = match id {
            Identity::Anonymous => token::Subject::Anonymous,
            Identity::User { name, .. } => token::Subject::User {
                name: name.clone(),
                fingerprint: match self.users.get(name) {
                    Some(u) => key.fingerprint(&u.hash),
                    // A directory user (no hash here): the token stands for the name,
                    // whose groups are read from the directory again at each request.
                    None if self.directory.is_some() => key.fingerprint(DIRECTORY_SUBJECT),
                    None => return None,
                },
            },
            // An access token's bearer token stands for the access token (its scope
            // and owner are looked up again at each request), never for its owner.
            Identity::Token { name, .. } => token::Subject::User {
                name: name.clone(),
                fingerprint: key.fingerprint(&self.access_tokens.get(name)?.hash_text()),
            },
        };
        Some(token::mint(key, &subject, now, token::LIFETIME))
    }

    /// The identity a bearer token stands for, checked against the current user file.
    async fn identify_token(
        &self,
        key: &token::TokenKey,
        value: &[u8],
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        const REFUSED: AuthError = AuthError::Invalid("invalid or expired token");
        // A refused token is a failed login like a wrong password: counted by the
        // throttle for (address, its user; "" when it names nobody), so one address's
        // refused tokens are bounded as its wrong passwords are (and so are their audit
        // records). It runs no argon2, so it evicts nothing (`Throttle::fail_now`).
        let refused = |reason: &str, user: &str| {
            self.metrics.auth_failures.inc();
            tracing::info!(user = %UserName(user), %client, reason, "token refused");
            match self.throttle.fail_now(client, user, Instant::now()) {
                Ok(()) => REFUSED,
                Err(r) => self.refused(r, user, client),
            }
        };
        let claims = std::str::from_utf8(value)
            .map_err(|_| token::TokenError::Malformed)
            .and_then(|t| token::verify(key, t, unix_now()))
            .map_err(|e| refused(&e.to_string(), ""))?;
        match claims.subject {
            token::Subject::Anonymous if self.anonymous => Ok(Identity::Anonymous),
            token::Subject::Anonymous => Err(refused("anonymous access is off", "anonymous")),
            token::Subject::User { name, fingerprint } => {
                if let Some(t) = self.access_tokens.get(&name) {
                    if key.fingerprint(&t.hash_text()) != fingerprint {
                        return Err(refused("the access token changed since", &name));
                    }
                    let now = unix_now();
                    return match self.token_identity(t, now, client).await? {
                        Ok(id) => {
                            self.usage.record(&name, now, client);
                            Ok(id)
                        }
                        Err(why) => Err(refused(why.as_str(), &name)),
                    };
                }
                // A directory user's: the user as the directory has them now (cached
                // like a login), never a name the user file has since taken.
                if let (None, Some(d)) = (self.users.get(&name), &self.directory) {
                    if key.fingerprint(DIRECTORY_SUBJECT) != fingerprint {
                        return Err(refused("the user left the user file", &name));
                    }
                    return match self.directory_owner(d, &name, client).await? {
                        Some(owner) => Ok(Identity::User {
                            name,
                            groups: owner.groups,
                        }),
                        None => Err(refused("the user left the directory", &name)),
                    };
                }
                // Issued under the hash or, same password, under the bcrypt hash an
                // upgrade replaced.
                let issued_under = |hash: &str| key.fingerprint(hash) == fingerprint;
                match self.users.get(&name) {
                    Some(u)
                        if !u.disabled
                            && (issued_under(&u.hash)
                                || self
                                    .upgrades
                                    .previous(&u.hash)
                                    .is_some_and(|old| issued_under(&old))) =>
                    {
                        Ok(identity_of(Some(u)))
                    }
                    // The user left, was disabled or changed password since the issue.
                    _ => Err(refused(
                        "the user changed since the token was issued",
                        &name,
                    )),
                }
            }
        }
    }

    /// The authenticator of a reloaded configuration: `users` and `settings`, keeping
    /// this one's throttle state (failure counts, known-good pairs), verification cache
    /// and argon2 threads wherever their settings are unchanged, so a reload neither
    /// forgets a brute-force attempt nor costs every user an argon2 run. Cached
    /// verifications of changed or removed users stop matching because the stored hash
    /// is part of their key.
    pub fn reloaded(&self, users: Users, settings: &AuthSettings) -> Authenticator {
        let old = &self.settings;
        let metrics = self.metrics.clone();
        Authenticator {
            users: Arc::new(users),
            settings: settings.clone(),
            cache: if (old.cache_ttl, old.cache_max_entries)
                == (settings.cache_ttl, settings.cache_max_entries)
            {
                self.cache.clone()
            } else {
                Arc::new(VerifyCache::new(
                    settings.cache_ttl,
                    settings.cache_max_entries,
                ))
            },
            throttle: if old.throttle == settings.throttle {
                self.throttle.clone()
            } else {
                Arc::new(Throttle::new(settings.throttle.clone()))
            },
            argon2: if old.verify_concurrency == settings.verify_concurrency {
                self.argon2.clone()
            } else {
                Arc::new(Argon2Pool::new(
                    settings.verify_concurrency.max(1),
                    metrics.clone(),
                ))
            },
            in_flight: self.in_flight.clone(),
            anonymous: settings.anonymous,
            // The per-process key stays (tokens already issued stay good); a key file
            // is loaded again by the caller (`with_token_key`).
            tokens: match (&self.tokens, settings.docker_bearer) {
                (_, false) => None,
                (Some(key), true) => Some(key.clone()),
                (None, true) => Some(token::TokenKey::random()),
            },
            upgrades: self.upgrades.clone(),
            // The tokens file is loaded again by the caller (`with_access_tokens`);
            // what was seen of their use stays.
            access_tokens: Default::default(),
            usage: self.usage.clone(),
            last_used_file: None,
            // The caller sets the directory of the new configuration (`with_directory`).
            directory: self.directory.clone(),
            metrics,
        }
    }

    pub fn users(&self) -> Arc<Users> {
        self.users.clone()
    }

    /// Whether `other` keeps this one's throttle state (the same failure counts).
    pub fn shares_throttle(&self, other: &Authenticator) -> bool {
        Arc::ptr_eq(&self.throttle, &other.throttle)
    }

    /// Sets the gauges of this module's tables (verification cache, throttle, argon2
    /// queue): sampled when the metrics are scraped, not kept per request.
    pub fn sample_metrics(&self) {
        let m = &self.metrics;
        m.auth_cache_entries.set(self.cache.len() as u64);
        let (pairs, addresses, known_good) = self.throttle.table_sizes();
        m.throttle_pairs.set(pairs as u64);
        m.throttle_addresses.set(addresses as u64);
        m.throttle_known_good.set(known_good as u64);
        m.auth_argon2_queue.set(self.argon2.waiting() as u64);
    }

    /// Establishes the identity of a request from its headers. `client` is the one
    /// client address of the request (`handler::client_of`).
    ///
    /// ```text
    /// parse ─ control char in the name ─▶ failure counted for (client, "") ─▶ 401
    ///   │
    /// cache hit (right password, verified lately) ─▶ identity, no argon2, no throttle
    ///   │
    /// wait for the verification of the same credentials under way, if any ─▶ cache hit?
    ///   │
    /// throttle.reserve(client, name): failure counted now ─ refused ─▶ 429
    ///   │
    /// argon2 ─ right ─▶ attempt.succeeded() ─▶ identity
    ///   └──── wrong, unknown, disabled, or this request dropped ─▶ failure stays ─▶ 401
    /// ```
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (None, _) if self.anonymous => return Ok(Identity::Anonymous),
            (None, _) => return Err(AuthError::Missing),
            (Some(_), Some(_)) => return Err(AuthError::Ambiguous),
            (Some(v), None) => v,
        };
        if let (Some(key), Some(t)) = (&self.tokens, token::bearer(value.as_bytes())) {
            return self.identify_token(key, t, client).await;
        }
        let creds = match basic::parse(value.as_bytes()) {
            Ok(c) => c,
            // containers/image's "no login" (`Basic Og==`): the same as no header.
            Err(basic::BasicError::NoCredentials) if self.anonymous => {
                return Ok(Identity::Anonymous)
            }
            Err(basic::BasicError::NoCredentials) => return Err(AuthError::Missing),
            Err(basic::BasicError::ControlInUser) => {
                // Someone probing the log: a failed login like any other, counted for
                // the pair (client, ""), which stands for every refused name (no accepted
                // name is empty), and for the address.
                self.metrics.auth_failures.inc();
                tracing::info!(%client, "login failed: control character in the user name");
                self.throttle
                    .fail_now(client, "", Instant::now())
                    .map_err(|r| self.refused(r, "", client))?;
                self.metrics.auth_result(AuthResult::Malformed).inc();
                return Err(AuthError::Invalid("malformed Basic credentials"));
            }
            Err(e) => {
                tracing::debug!(reason = %e, %client, "unusable Authorization header");
                return Err(AuthError::Invalid("malformed Basic credentials"));
            }
        };
        // No name is both a token's and a user's (refused at load).
        if let Some(t) = self.access_tokens.get(&creds.user) {
            return self
                .identify_access_token(t, creds.password.expose(), client)
                .await;
        }
        let name = UserName(&creds.user);
        let snapshot = self.users.clone();
        let user = snapshot.get(&creds.user).cloned();
        // The user file first: a name in it never reaches the directory.
        if let (None, Some(d)) = (&user, &self.directory) {
            return self
                .identify_in_directory(d, &creds.user, creds.password.expose(), client)
                .await;
        }
        let fingerprint = user.as_ref().filter(|u| !u.disabled).map(|u| {
            self.cache
                .fingerprint(&u.name, creds.password.expose(), &u.hash)
        });
        // A hit needs the right password: no guess can take this path.
        if let Some(fp) = &fingerprint {
            if self.cache.hit(fp, Instant::now()) {
                self.metrics.auth_cache_hits.inc();
                self.metrics.auth_result(AuthResult::Cached).inc();
                return Ok(identity_of(user.as_deref()));
            }
        }
        // Declared before the turn, so dropped after it: the ticket leaves the map when
        // the last request holding it ends, cancelled or not.
        let ticket = fingerprint.map(|fp| self.flight(fp));
        let _turn = match &ticket {
            Some(t) => Some(t.lock.lock().await),
            None => None,
        };
        if let Some(fp) = &fingerprint {
            // Verified by the request this one waited for.
            if self.cache.hit(fp, Instant::now()) {
                self.metrics.auth_cache_hits.inc();
                self.metrics.auth_result(AuthResult::Cached).inc();
                return Ok(identity_of(user.as_deref()));
            }
        }
        let attempt = self
            .throttle
            .reserve(client, &creds.user, Instant::now())
            .map_err(|r| self.refused(r, &creds.user, client))?;
        let check = snapshot.verification(user.as_deref());
        let lane = if attempt.known_good() {
            Lane::KnownGood
        } else {
            Lane::Address(attempt.address())
        };
        let Some(verified) = self
            .argon2
            .verify(check, creds.password.expose().to_owned(), lane)
            .await
        else {
            attempt.withdrawn();
            self.metrics.auth_throttled.inc();
            self.metrics.auth_result(AuthResult::Throttled).inc();
            tracing::warn!(user = %name, %client, "login refused: the argon2 queue is full");
            return Err(AuthError::Throttled(Duration::from_secs(1)));
        };
        match (verified, fingerprint) {
            (true, Some(fp)) => {
                self.cache.insert(fp, Instant::now());
                attempt.succeeded();
                self.metrics.auth_result(AuthResult::Ok).inc();
                if let (Some(u), Some(path), true) =
                    (&user, snapshot.source(), self.settings.upgrade_hashes)
                {
                    if u.kind.is_bcrypt()
                        && !users::bcrypt_upgrade_keeps_the_password(creds.password.expose())
                    {
                        tracing::info!(user = %UserName(&u.name), "bcrypt hash not upgraded: the password is 72 bytes or longer, and bcrypt read only its first 72 (set it again with `registry-guard user passwd`)");
                    } else if u.kind.is_bcrypt() {
                        self.upgrades.submit(
                            path,
                            &u.name,
                            &u.hash,
                            creds.password.expose(),
                            snapshot.argon2_params(),
                        );
                    }
                }
                Ok(identity_of(user.as_deref()))
            }
            _ => {
                drop(attempt);
                self.metrics.auth_failures.inc();
                let (why, result) = match &user {
                    None => ("unknown user", AuthResult::Unknown),
                    Some(u) if u.disabled => ("disabled user", AuthResult::Unknown),
                    Some(_) => ("wrong password", AuthResult::Wrong),
                };
                self.metrics.auth_result(result).inc();
                // The name is logged, the reason only at debug: the log of a shared
                // system should not confirm which names exist.
                tracing::info!(user = %name, %client, "login failed");
                tracing::debug!(user = %name, reason = why, "login failure reason");
                Err(AuthError::Invalid("invalid username or password"))
            }
        }
    }

    /// The identity of a name that is not in the user file, as the directory (or its
    /// cache) has it. The same steps as for file users: cache, one check per credential
    /// under way, throttle counted before the check; the directory's "no" is a failure
    /// like a wrong password; the directory's silence is neither (503, reservation given
    /// back).
    /// The identity of `token` (secret checked) at `now`, or why it is refused: its owner
    /// from the user file, else from the directory (cached like a login).
    async fn token_identity(
        &self,
        token: &access_tokens::Token,
        now: u64,
        client: IpAddr,
    ) -> Result<Result<Identity, access_tokens::Refusal>, AuthError> {
        Ok(match (self.users.get(&token.owner), &self.directory) {
            (None, Some(d)) => {
                let owner = self.directory_owner(d, &token.owner, client).await?;
                access_tokens::identity(token, &access_tokens::Found(owner), now)
            }
            _ => access_tokens::identity(token, self.owners(), now),
        })
    }

    /// A token owner who is not in the user file, as the directory has them now: their
    /// groups, cached for `auth.cache_ttl` like a directory login (a user removed from
    /// the directory loses their tokens once the entry expires). `None`: no such user.
    /// The directory unavailable: 503, as for a login it cannot judge.
    async fn directory_owner(
        &self,
        d: &DirectoryAuth,
        owner: &str,
        client: IpAddr,
    ) -> Result<Option<access_tokens::Owner>, AuthError> {
        // A key of its own: no password, and "owner" where logins have "directory".
        let fp = d.cache.fingerprint(owner, "", "token owner");
        let found = |groups: &[String]| access_tokens::Owner {
            groups: groups.to_vec(),
            disabled: false,
        };
        if let Some(groups) = d.cache.get(&fp, Instant::now()) {
            return Ok(Some(found(&groups)));
        }
        match d.dir.groups_of(owner).await {
            Ok(Some(groups)) => {
                let groups: Arc<[String]> = groups.into();
                d.cache.insert_value(fp, Instant::now(), groups.clone());
                Ok(Some(found(&groups)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.metrics.auth_result(AuthResult::Unavailable).inc();
                tracing::warn!(owner = %UserName(owner), %client, error = %e, "access token not judged: the directory is unavailable");
                Err(AuthError::Unavailable)
            }
        }
    }

    async fn identify_in_directory(
        &self,
        d: &DirectoryAuth,
        user: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<Identity, AuthError> {
        let identity = |groups: &[String]| Identity::User {
            name: user.to_owned(),
            groups: groups.to_vec(),
        };
        let fp = d.cache.fingerprint(user, password, "directory");
        if let Some(groups) = d.cache.get(&fp, Instant::now()) {
            self.metrics.auth_cache_hits.inc();
            self.metrics.auth_result(AuthResult::Cached).inc();
            return Ok(identity(&groups));
        }
        let ticket = self.flight(fp);
        let _turn = ticket.lock.lock().await;
        if let Some(groups) = d.cache.get(&fp, Instant::now()) {
            self.metrics.auth_cache_hits.inc();
            self.metrics.auth_result(AuthResult::Cached).inc();
            return Ok(identity(&groups));
        }
        let attempt = self
            .throttle
            .reserve(client, user, Instant::now())
            .map_err(|r| self.refused(r, user, client))?;
        match d.dir.login(user, password).await {
            Ok(ldap::Login::Accepted { groups }) => {
                let groups: Arc<[String]> = groups.into();
                d.cache.insert_value(fp, Instant::now(), groups.clone());
                attempt.succeeded();
                self.metrics.auth_result(AuthResult::Ok).inc();
                Ok(identity(&groups))
            }
            Ok(ldap::Login::Refused(why)) => {
                drop(attempt);
                self.metrics.auth_failures.inc();
                self.metrics.auth_result(AuthResult::Wrong).inc();
                tracing::info!(user = %UserName(user), %client, "login failed");
                tracing::debug!(user = %UserName(user), reason = why, "login failure reason (directory)");
                Err(AuthError::Invalid("invalid username or password"))
            }
            Err(e) => {
                attempt.withdrawn();
                self.metrics.auth_result(AuthResult::Unavailable).inc();
                tracing::warn!(user = %UserName(user), %client, error = %e, "login not judged: the directory is unavailable");
                Err(AuthError::Unavailable)
            }
        }
    }

    /// A refusal of the throttle, counted and logged.
    fn refused(&self, r: throttle::Refusal, user: &str, client: IpAddr) -> AuthError {
        self.metrics.auth_throttled.inc();
        self.metrics.auth_result(AuthResult::Throttled).inc();
        let why = match r {
            throttle::Refusal::Throttled(_) => "too many failures",
            throttle::Refusal::Busy => "too many attempts in flight",
        };
        tracing::warn!(user = %UserName(user), %client, reason = why, "login throttled");
        AuthError::Throttled(r.retry_after())
    }

    /// A ticket for the verification of `fp`: the lock of the one under way, or a new one.
    fn flight(&self, fp: cache::Fingerprint) -> Ticket<'_> {
        let mut map = lock(&self.in_flight);
        let lock = map.entry(fp).or_default().clone();
        Ticket {
            map: &self.in_flight,
            fp,
            lock,
        }
    }

    /// Verifications under way or waited for (their map entries).
    pub fn flights(&self) -> usize {
        lock(&self.in_flight).len()
    }

    /// Failed-login state of the throttle: (pairs, addresses) remembered.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }
}

type FlightMap = std::sync::Mutex<HashMap<cache::Fingerprint, Arc<tokio::sync::Mutex<()>>>>;

/// A request's share of one verification. Its `Drop` removes the map entry once no
/// other request holds it, also when the request is cancelled while waiting its turn.
struct Ticket<'a> {
    map: &'a FlightMap,
    fp: cache::Fingerprint,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        // Ours and the map's: nobody else holds or waits for it. Clones are only made
        // under this same lock, so the count cannot rise meanwhile.
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.fp);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a verification thread keeps its working memory without work.
const IDLE_RELEASE: Duration = Duration::from_secs(5);
/// Verifications waiting for a thread, at most, per lane ([`Lane`]); more are refused
/// (429, retry in 1 s).
const QUEUE_MAX: usize = 1024;

type Job = (
    users::Verification,
    String,
    tokio::sync::oneshot::Sender<bool>,
);

/// Where a verification waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// A pair that logged in from its address lately (`throttle::Attempt::known_good`):
    /// served before anyone else, so a flood of strangers' guesses cannot starve the
    /// users who work there. Only a right password puts a pair here, and each pair's
    /// own limits still hold.
    KnownGood,
    /// Everyone else, one line per client address (as the throttle keys it), the lines
    /// served in turn: an address waits behind one job of each other address with work,
    /// not behind everything a busy address queued.
    Address(IpAddr),
}

/// The verifications waiting for a thread.
#[derive(Debug)]
struct Queue<T> {
    known_good: std::collections::VecDeque<T>,
    lines: HashMap<IpAddr, std::collections::VecDeque<T>>,
    /// Addresses with a non-empty line, in the order of their next turn.
    turns: std::collections::VecDeque<IpAddr>,
    waiting: usize,
    closed: bool,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            known_good: Default::default(),
            lines: HashMap::new(),
            turns: Default::default(),
            waiting: 0,
            closed: false,
        }
    }
}

impl<T> Queue<T> {
    /// Queues `job`; gives it back when its lane is full.
    fn push(&mut self, job: T, lane: Lane) -> Result<(), T> {
        match lane {
            Lane::KnownGood if self.known_good.len() >= QUEUE_MAX => Err(job),
            Lane::KnownGood => {
                self.known_good.push_back(job);
                Ok(())
            }
            Lane::Address(_) if self.waiting >= QUEUE_MAX => Err(job),
            Lane::Address(addr) => {
                let line = self.lines.entry(addr).or_default();
                if line.is_empty() {
                    self.turns.push_back(addr);
                }
                line.push_back(job);
                self.waiting += 1;
                Ok(())
            }
        }
    }

    /// The next job: known good first, then the next address in turn.
    fn pop(&mut self) -> Option<T> {
        if let Some(job) = self.known_good.pop_front() {
            return Some(job);
        }
        let addr = self.turns.pop_front()?;
        let line = self.lines.get_mut(&addr)?;
        let job = line.pop_front();
        if line.is_empty() {
            self.lines.remove(&addr);
        } else {
            self.turns.push_back(addr);
        }
        self.waiting -= usize::from(job.is_some());
        job
    }

    fn is_empty(&self) -> bool {
        self.known_good.is_empty() && self.waiting == 0
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: std::sync::Mutex<Queue<Job>>,
    ready: std::sync::Condvar,
}

/// A fixed set of `verify_concurrency` threads for argon2 (and bcrypt: every password
/// check, [`users::Verification`]), off the async workers.
///
/// Memory: each thread owns one [`users::WorkMemory`], as large as the biggest `m_cost`
/// it verified, reused from run to run and given back after [`IDLE_RELEASE`] without
/// work. So argon2 holds at most `verify_concurrency` × `m_cost` KiB at any moment (the
/// dummy hash made at start and at each reload adds one more set, briefly), and nothing
/// once idle. A job whose request was cancelled before its turn is skipped. Order: known-
/// good pairs first, then one job per address in turn ([`Lane`]).
#[derive(Debug)]
struct Argon2Pool {
    shared: Arc<Shared>,
}

impl Argon2Pool {
    fn new(threads: usize, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared::default());
        for i in 0..threads {
            let shared = shared.clone();
            let metrics = metrics.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&shared, &metrics));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start an argon2 thread");
            }
        }
        Argon2Pool { shared }
    }

    /// Verifications waiting for a thread.
    fn waiting(&self) -> usize {
        let q = lock(&self.shared.queue);
        q.known_good.len() + q.waiting
    }

    /// The verdict, or None when the queue is full (nothing was verified).
    async fn verify(
        &self,
        check: users::Verification,
        password: String,
        lane: Lane,
    ) -> Option<bool> {
        let (done, answer) = tokio::sync::oneshot::channel();
        if lock(&self.shared.queue)
            .push((check, password, done), lane)
            .is_err()
        {
            return None;
        }
        self.shared.ready.notify_one();
        Some(answer.await.unwrap_or(false))
    }
}

impl Drop for Argon2Pool {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_all();
    }
}

/// One verification thread: takes jobs until the pool is dropped.
fn work(shared: &Shared, metrics: &Metrics) {
    let mut memory = users::WorkMemory::default();
    loop {
        let job = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    return;
                }
                if let Some(job) = q.pop() {
                    break Some(job);
                }
                if memory.resident_kib() == 0 {
                    q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                let (guard, waited) = shared
                    .ready
                    .wait_timeout(q, IDLE_RELEASE)
                    .unwrap_or_else(|p| p.into_inner());
                q = guard;
                if waited.timed_out() && q.is_empty() {
                    break None;
                }
            }
        };
        let Some((check, password, done)) = job else {
            // Idle: give the working memory back (outside the queue's lock).
            memory.release();
            continue;
        };
        if done.is_closed() {
            // The request went away before its turn: no one waits for this answer.
            continue;
        }
        metrics.auth_argon2_runs.inc();
        let _ = done.send(check.run(&password, &mut memory));
    }
}

/// Seconds since the Unix epoch (0 for a clock before it, which expires every token).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn identity_of(user: Option<&users::User>) -> Identity {
    match user {
        Some(u) => Identity::User {
            name: u.name.clone(),
            groups: u.groups.clone(),
        },
        None => Identity::Anonymous,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(max_failures: u32) -> AuthSettings {
        AuthSettings {
            anonymous: false,
            cache_ttl: Duration::from_secs(60),
            cache_max_entries: 100,
            verify_concurrency: 1,
            throttle: throttle::Limits {
                max_failures,
                max_failures_per_address: 100,
                window: Duration::from_secs(60),
                max_tracked: 100,
                max_in_flight_per_address: 100,
                max_in_flight_per_user: 100,
            },
            docker_bearer: false,
            upgrade_hashes: true,
        }
    }

    fn authenticator(max_failures: u32) -> Arc<Authenticator> {
        // Default-cost hash: slow enough that requests are cancelled while it runs.
        let hash = users::hash_password("alice-pw", 19456, 2, 1).unwrap();
        let users =
            Users::from_yaml(&format!("users:\n  - name: alice\n    hash: '{hash}'\n")).unwrap();
        Arc::new(Authenticator::new(
            users,
            &settings(max_failures),
            Arc::default(),
        ))
    }

    fn headers(user: &str, password: &str) -> HeaderMap {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Basic {token}").parse().unwrap());
        h
    }

    /// Starts `n` identifications with these credentials and cancels them all after
    /// `after`.
    async fn cancelled(auth: &Arc<Authenticator>, n: usize, password: &str, after: Duration) {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let auth = auth.clone();
            let h = headers("alice", password);
            set.spawn(async move { auth.identify(&h, [192, 0, 2, 1].into()).await });
        }
        tokio::time::sleep(after).await;
        set.abort_all();
        while set.join_next().await.is_some() {}
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        h
    }

    /// Tokens stand for their user only while the user file still says the same: a new
    /// hash, a disable or a removal refuses them; anonymous ones need anonymous on.
    #[tokio::test]
    async fn tokens_follow_the_current_user_file() {
        let cheap = |pw: &str| users::hash_password(pw, 8, 1, 1).unwrap();
        let file = |hash: &str, disabled: bool| {
            Users::from_yaml(&format!(
                "users:\n  - name: alice\n    hash: '{hash}'\n    groups: [g]\n    disabled: {disabled}\n"
            ))
            .unwrap()
        };
        let first = cheap("one");
        let mut settings = settings(10);
        settings.docker_bearer = true;
        let auth = Authenticator::new(file(&first, false), &settings, Arc::default());
        let client: IpAddr = [192, 0, 2, 1].into();
        let alice = auth
            .identify(&headers("alice", "one"), client)
            .await
            .unwrap();
        let t = auth.issue_token(&alice, unix_now()).unwrap();
        assert_eq!(auth.identify(&bearer(&t), client).await, Ok(alice.clone()));
        // Another key (another replica without the shared key file): refused.
        let other = Authenticator::new(file(&first, false), &settings, Arc::default());
        assert!(other.identify(&bearer(&t), client).await.is_err());
        // Disabled, then a new password: refused; the old hash back: good again.
        // (a reload: the per-process key carries over)
        let auth = auth.reloaded(file(&first, true), &settings);
        assert!(auth.identify(&bearer(&t), client).await.is_err());
        let auth = auth.reloaded(file(&cheap("two"), false), &settings);
        assert!(auth.identify(&bearer(&t), client).await.is_err());
        let auth = auth.reloaded(file(&first, false), &settings);
        assert_eq!(auth.identify(&bearer(&t), client).await, Ok(alice));
        // Anonymous tokens only while anonymous access is on.
        let anon = auth.issue_token(&Identity::Anonymous, unix_now()).unwrap();
        assert!(auth.identify(&bearer(&anon), client).await.is_err());
        settings.anonymous = true;
        let open = Authenticator::new(file(&first, false), &settings, Arc::default())
            .with_token_key(token::TokenKey::new(&[1; 32]));
        let anon = open.issue_token(&Identity::Anonymous, unix_now()).unwrap();
        assert_eq!(
            open.identify(&bearer(&anon), client).await,
            Ok(Identity::Anonymous)
        );
        // Without tokens, a Bearer value is malformed credentials, as before.
        settings.docker_bearer = false;
        let off = Authenticator::new(file(&first, false), &settings, Arc::default());
        assert!(off.issue_token(&Identity::Anonymous, unix_now()).is_none());
        assert_eq!(
            off.identify(&bearer(&anon), client).await,
            Err(AuthError::Invalid("malformed Basic credentials"))
        );
    }

    /// A login with a bcrypt hash is answered at once and queues the upgrade; the file
    /// then holds argon2id for that user only, and a token issued under the bcrypt hash
    /// stays good under its successor. With `upgrade_hashes` off, nothing is written.
    #[tokio::test]
    async fn a_bcrypt_login_upgrades_the_hash_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let bcrypt_hash = bcrypt::hash("alice-pw", 4).unwrap();
        let bob = users::hash_password("bob-pw", 8, 1, 1).unwrap();
        let text = format!(
            "users:\n  - name: alice\n    hash: '{bcrypt_hash}'\n    groups: [g]\n  - name: bob\n    hash: '{bob}'\n"
        );
        let client: IpAddr = [192, 0, 2, 1].into();
        // Off: the login works, the file stays as it was.
        std::fs::write(&path, &text).unwrap();
        let mut off = settings(10);
        off.upgrade_hashes = false;
        let auth = Authenticator::new(Users::load(&path).unwrap(), &off, Arc::default());
        assert!(auth
            .identify(&headers("alice", "alice-pw"), client)
            .await
            .is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

        // On.
        let mut on = settings(10);
        on.docker_bearer = true;
        let auth = Authenticator::new(Users::load(&path).unwrap(), &on, Arc::default());
        assert!(auth
            .identify(&headers("alice", "wrong"), client)
            .await
            .is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            text,
            "no upgrade on a failure"
        );
        let alice = auth
            .identify(&headers("alice", "alice-pw"), client)
            .await
            .unwrap();
        let t = auth.issue_token(&alice, unix_now()).unwrap();
        let upgraded = poll_until(|| {
            let u = Users::load(&path).ok()?;
            let a = u.get("alice")?;
            (!a.kind.is_bcrypt()).then(|| a.hash.clone())
        })
        .expect("the hash was upgraded");
        // Made with the argon2 parameters the file's argon2 users have (bob's).
        assert!(
            upgraded.starts_with("$argon2id$v=19$m=8,t=1,p=1$"),
            "{upgraded}"
        );
        let reloaded = Users::load(&path).unwrap();
        assert_eq!(reloaded.get("bob").unwrap().hash, bob);
        assert_eq!(reloaded.get("alice").unwrap().groups, ["g"]);
        let auth = auth.reloaded(reloaded, &on);
        assert_eq!(
            auth.identify(&headers("alice", "alice-pw"), client).await,
            Ok(alice.clone())
        );
        assert_eq!(auth.identify(&bearer(&t), client).await, Ok(alice));
    }

    /// Polls `f` for up to 10 s (a bound, not a timing).
    fn poll_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(v) = f() {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Access tokens: one SHA-256, no argon2, no cache; refused ones answer like a wrong
    /// password and count in the throttle; the owner is looked up at each request.
    #[tokio::test]
    async fn access_tokens_are_checked_without_argon2_and_refused_like_wrong_passwords() {
        use access_tokens::{format_time, hash_secret, TokenEntry, TokenFile, Tokens};
        let hash = users::hash_password("alice-pw", 8, 1, 1).unwrap();
        let users = |disabled: bool| {
            Users::from_yaml(&format!(
                "users:\n  - name: alice\n    hash: '{hash}'\n    groups: [team-a]\n    disabled: {disabled}\n"
            ))
            .unwrap()
        };
        let now = unix_now();
        let entry = |name: &str, expires: u64, revoked: bool| TokenEntry {
            name: name.into(),
            owner: "alice".into(),
            hash: hash_secret(&format!("rgt_{name}")),
            repos: vec!["team-a/**".into()],
            actions: vec!["pull".into()],
            created: format_time(now - 100),
            expires: Some(format_time(expires)),
            description: None,
            revoked: revoked.then(|| format_time(now - 1)),
        };
        let tokens = || {
            Tokens::from_file(
                &TokenFile {
                    tokens: vec![
                        entry("ci", now + 3600, false),
                        entry("old", now - 1, false),
                        entry("gone", now + 3600, true),
                    ],
                },
                None,
            )
            .unwrap()
        };
        let metrics = Arc::new(Metrics::default());
        let auth = Authenticator::new(users(false), &settings(3), metrics.clone())
            .with_access_tokens(tokens(), "/nonexistent/last-used".into());
        let client: IpAddr = [192, 0, 2, 1].into();
        let id = auth
            .identify(&headers("ci", "rgt_ci"), client)
            .await
            .unwrap();
        assert_eq!(id.name(), "ci");
        assert_eq!(id.owner(), Some("alice"));
        assert_eq!(id.principal().unwrap().1, ["team-a"]);
        assert_eq!(auth.token_last_use("ci").unwrap().from, client);
        let wrong = Err(AuthError::Invalid("invalid username or password"));
        assert_eq!(
            auth.identify(&headers("alice", "nope"), client).await,
            wrong
        );
        for (name, secret) in [
            ("ci", "rgt_other"),
            ("old", "rgt_old"),
            ("gone", "rgt_gone"),
        ] {
            assert_eq!(
                auth.identify(&headers(name, secret), client).await,
                wrong,
                "{name}"
            );
        }
        assert_eq!(metrics.auth_argon2_runs.get(), 1, "only alice's password");
        assert_eq!(metrics.auth_result(AuthResult::Token).get(), 1);
        assert_eq!(metrics.auth_result(AuthResult::TokenRefused).get(), 3);
        // max_failures 3: the next wrong secret for ci from here is throttled; the right
        // one is not (no guess can present it), nor ci from elsewhere.
        for _ in 0..2 {
            let _ = auth.identify(&headers("ci", "rgt_x"), client).await;
        }
        assert!(matches!(
            auth.identify(&headers("ci", "rgt_x"), client).await,
            Err(AuthError::Throttled(_))
        ));
        assert!(auth
            .identify(&headers("ci", "rgt_ci"), client)
            .await
            .is_ok());
        // The owner disabled (a reload): refused at once; the last use stays.
        let auth = auth
            .reloaded(users(true), &auth.settings)
            .with_access_tokens(tokens(), "/nonexistent/last-used".into());
        let other: IpAddr = [192, 0, 2, 2].into();
        assert_eq!(auth.identify(&headers("ci", "rgt_ci"), other).await, wrong);
        assert_eq!(auth.token_last_use("ci").unwrap().from, client);
        assert_eq!(metrics.auth_argon2_runs.get(), 1);
    }

    /// docker's bearer token for a login with an access token stands for the access
    /// token (its scope, re-checked each time), never for its owner.
    #[tokio::test]
    async fn a_bearer_token_of_an_access_token_stays_the_access_token() {
        use access_tokens::{format_time, hash_secret, TokenEntry, TokenFile, Tokens};
        let hash = users::hash_password("pw", 8, 1, 1).unwrap();
        let users =
            || Users::from_yaml(&format!("users:\n  - name: alice\n    hash: '{hash}'\n")).unwrap();
        let now = unix_now();
        let tokens = |revoked: bool| {
            let e = TokenEntry {
                name: "ci".into(),
                owner: "alice".into(),
                hash: hash_secret("rgt_ci"),
                repos: vec!["team-a/**".into()],
                actions: vec!["pull".into()],
                created: format_time(now - 10),
                expires: None,
                description: None,
                revoked: revoked.then(|| format_time(now)),
            };
            Tokens::from_file(&TokenFile { tokens: vec![e] }, None).unwrap()
        };
        let mut settings = settings(10);
        settings.docker_bearer = true;
        let auth = Authenticator::new(users(), &settings, Arc::default())
            .with_access_tokens(tokens(false), "/nonexistent".into());
        let client: IpAddr = [192, 0, 2, 1].into();
        let id = auth
            .identify(&headers("ci", "rgt_ci"), client)
            .await
            .unwrap();
        let bearer_token = auth.issue_token(&id, now).unwrap();
        let again = auth.identify(&bearer(&bearer_token), client).await.unwrap();
        assert_eq!(again, id);
        assert!(again.scope().is_some(), "still scoped: {again:?}");
        let revoked = auth
            .reloaded(users(), &settings)
            .with_access_tokens(tokens(true), "/nonexistent".into());
        assert!(revoked
            .identify(&bearer(&bearer_token), client)
            .await
            .is_err());
    }

    #[test]
    fn a_reload_keeps_throttle_counts_unless_the_throttle_settings_change() {
        let auth = authenticator(2);
        let ip: IpAddr = [192, 0, 2, 9].into();
        let now = Instant::now();
        for _ in 0..2 {
            auth.throttle().fail_now(ip, "alice", now).unwrap();
        }
        assert!(auth.throttle().reserve(ip, "alice", now).is_err());
        let users = || Users::from_yaml("users: []\n").unwrap();
        // Same settings (a rule or user edit): the counts stay, brute force goes on
        // being refused.
        let same = auth.reloaded(users(), &auth.settings);
        assert!(same.shares_throttle(&auth));
        assert!(Arc::ptr_eq(&same.cache, &auth.cache) && Arc::ptr_eq(&same.argon2, &auth.argon2));
        assert!(same.throttle().reserve(ip, "alice", now).is_err());
        assert!(same.users().is_empty());
        // Other throttle limits: a new throttle, under its own limits.
        let mut changed = auth.settings.clone();
        changed.throttle.max_failures = 5;
        let other = same.reloaded(users(), &changed);
        assert!(!other.shares_throttle(&auth));
        assert!(
            Arc::ptr_eq(&other.cache, &auth.cache),
            "the cache settings did not change"
        );
        assert!(other.throttle().reserve(ip, "alice", now).is_ok());
    }

    #[test]
    fn known_good_pairs_go_first_and_addresses_take_turns() {
        // Regression (outside review): a flood from 20 addresses made every uncached login wait
        // behind all of it (bob waited 6-35 s) in one FIFO queue.
        let flood: Vec<IpAddr> = (1..=20u8).map(|i| IpAddr::from([203, 0, 113, i])).collect();
        let bob: IpAddr = [192, 0, 2, 7].into();
        let mut q = Queue::default();
        for round in 0..16 {
            for &a in &flood {
                q.push(format!("flood {a} {round}"), Lane::Address(a))
                    .unwrap();
            }
        }
        q.push("bob".to_owned(), Lane::Address(bob)).unwrap();
        q.push("alice".to_owned(), Lane::KnownGood).unwrap();
        assert_eq!(q.pop().as_deref(), Some("alice"));
        // bob waits for one job of each flooding address, not for all 320.
        let before_bob = std::iter::from_fn(|| q.pop())
            .take_while(|j| j != "bob")
            .count();
        assert_eq!(before_bob, 20);
        let rest = std::iter::from_fn(|| q.pop()).count();
        assert_eq!(rest, 20 * 15);
        assert!(q.is_empty());
        assert!(q.lines.is_empty() && q.turns.is_empty());
    }

    #[test]
    fn each_lane_is_bounded() {
        let mut q = Queue::default();
        for i in 0..QUEUE_MAX {
            let a = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            q.push(i, Lane::Address(a)).unwrap();
        }
        assert_eq!(q.push(0, Lane::Address([10, 9, 9, 9].into())), Err(0));
        // A full line for strangers leaves the known-good lane open.
        assert_eq!(q.push(1, Lane::KnownGood), Ok(()));
        assert_eq!(q.pop(), Some(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_cancelled_while_waiting_leave_no_flight_and_no_slot_behind() {
        // The same credentials 20 times at once: one verifies, 19 wait for its turn, all
        // are dropped. The map of verifications under way used to keep an entry for each
        // request cancelled while it waited.
        let auth = authenticator(100);
        for password in ["alice-pw", "wrong"] {
            cancelled(&auth, 20, password, Duration::from_millis(30)).await;
            assert_eq!(auth.flights(), 0, "{password}: a flight entry leaked");
            assert_eq!(auth.throttle().in_flight(), (0, 0), "{password}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_wrong_passwords_are_counted_and_run_argon2_at_most_max_failures_times() {
        let auth = authenticator(3);
        for i in 0..10 {
            cancelled(&auth, 1, &format!("guess-{i}"), Duration::from_millis(20)).await;
        }
        // Let the verification under way end.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(auth.metrics.auth_argon2_runs.get() <= 3);
        let answer = auth
            .identify(&headers("alice", "alice-pw"), [192, 0, 2, 1].into())
            .await;
        assert!(matches!(answer, Err(AuthError::Throttled(_))), "{answer:?}");
        let answer = auth
            .identify(&headers("alice", "alice-pw"), [192, 0, 2, 2].into())
            .await;
        assert!(matches!(answer, Ok(Identity::User { .. })), "{answer:?}");
    }
}
