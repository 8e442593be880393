//! Access tokens: credentials for CI and deploy jobs that are not a person's password.
//! (Not the docker bearer tokens of `token`, which the proxy mints for itself.)
//!
//! A token is used as Basic credentials: user name = the token's name, password = its
//! secret, `rgt_` followed by 43 base64url characters (32 random bytes, 256 bits). The
//! tokens file keeps only `sha256:<hex>` of the secret:
//!
//! ```yaml
//! tokens:
//!   - name: ci-team-a
//!     owner: alice
//!     hash: sha256:9f86d0...
//!     repos: [team-a/**, public/**]
//!     actions: [pull, push]
//!     created: 2026-12-01T10:00:00Z
//!     expires: 2027-03-01T10:00:00Z     # absent: never (refused when tokens.max_lifetime is set)
//!     description: GitLab CI of team-a
//!     revoked: 2026-12-24T08:00:00Z     # set by `token revoke`
//! ```
//!
//! Why a plain SHA-256 and no argon2 or key: the secret is 256 random bits, so there is
//! no dictionary to try and nothing to slow down: finding a secret from its hash is a
//! SHA-256 preimage. A keyed hash (HMAC with a server key) would add a key that every
//! replica and `token create` (which runs without the proxy) must share and that must be
//! backed up with the file, and would protect nothing more. Verification is one SHA-256
//! of the presented secret and a constant-time compare: no cache, no argon2 pool.
//!
//! What a token may do is the intersection of its scope (`acl::Scope`) and what the
//! rules grant its owner *now*: the owner is looked up at every request through
//! [`OwnerSource`] (the user file today; a directory can be another source), so a
//! disabled or removed owner disables the token at once.
//!
//! Invariants:
//! - A secret is never stored, logged or printed but once, by `token create`.
//! - Loading checks every entry and names the file and the token it refuses; a name
//!   that is also a user's is refused (see [`check_no_user_names`]).
//! - A token past `created + tokens.max_lifetime` is refused even if its `expires` says
//!   later (or never): the file cannot outlive the configured maximum. The proxy warns
//!   about such entries at load ([`Tokens::capped`]).
//! - Last use (time, client address) is kept in memory ([`Usage`]) and written, merged,
//!   to a state file next to the tokens file at most every `tokens.flush_interval`:
//!   never one write per request, never into the tokens file (which `token revoke`
//!   edits: the proxy writing it could undo a revocation).

use crate::acl::glob::Pattern;
use crate::acl::Scope;
use crate::auth::users::{self, Users};
use crate::registry::Actions;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every secret starts with this, so secret scanners can find leaked ones.
pub const PREFIX: &str = "rgt_";
/// Random bytes of a secret: 256 bits.
pub const SECRET_BYTES: usize = 32;
/// Longest description kept.
pub const MAX_DESCRIPTION: usize = 256;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

/// One token as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub owner: String,
    /// `sha256:<64 hex>` of the secret.
    pub hash: String,
    pub repos: Vec<String>,
    pub actions: Vec<String>,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; absent: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// RFC 3339 time of the revocation; a revoked token is kept (for `token list`)
    /// and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

/// A refused tokens file: which file, which token, which field, what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub struct TokensError {
    pub file: Option<PathBuf>,
    pub token: Option<String>,
    pub field: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(t) = &self.token {
            write!(f, "token {t:?}: ")?;
        }
        if let Some(field) = self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl TokensError {
    fn new(token: Option<&str>, field: Option<&'static str>, message: impl Into<String>) -> Self {
        TokensError {
            file: None,
            token: token.map(str::to_owned),
            field,
            message: message.into(),
        }
    }

    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }
}

/// One token, checked.
#[derive(Debug)]
pub struct Token {
    pub name: String,
    pub owner: String,
    /// SHA-256 of the secret.
    digest: [u8; 32],
    pub scope: Arc<Scope>,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None`: never.
    pub expires: Option<u64>,
    pub revoked: Option<u64>,
    pub description: Option<String>,
}

/// Why a token is refused. Every one gets the same 401 as a wrong password; the reason
/// goes to the debug log and the metrics only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    WrongSecret,
    Expired,
    Revoked,
    /// `created` is later than now (beyond [`CLOCK_SKEW`]): an entry made by hand or on
    /// a machine with a wrong clock, which would otherwise escape `tokens.max_lifetime`
    /// (counted from `created`).
    NotYetValid,
    /// The owner is unknown to the identity source now, or disabled.
    Owner,
}

/// How far in the future a token's `created` may be (clocks of replicas and of the
/// machine that ran `token create` differ a little).
pub const CLOCK_SKEW: u64 = 300;

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::WrongSecret => "wrong secret",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::NotYetValid => "created in the future",
            Refusal::Owner => "owner unknown or disabled",
        }
    }
}

impl Token {
    /// PURE: whether `secret` is this token's and the token is in force at `now` (unix
    /// seconds). The digest is compared in constant time, and computed whatever the
    /// state of the token.
    pub fn verify(&self, secret: &str, now: u64) -> Result<(), Refusal> {
        use subtle::ConstantTimeEq;
        let presented = digest(secret);
        if !bool::from(presented.ct_eq(&self.digest)) {
            return Err(Refusal::WrongSecret);
        }
        self.in_force(now)
    }

    /// Whether the token is neither revoked nor expired at `now`, and was created before.
    pub fn in_force(&self, now: u64) -> Result<(), Refusal> {
        if self.revoked.is_some() {
            return Err(Refusal::Revoked);
        }
        if self.created > now.saturating_add(CLOCK_SKEW) {
            return Err(Refusal::NotYetValid);
        }
        match self.expires {
            Some(e) if now >= e => Err(Refusal::Expired),
            _ => Ok(()),
        }
    }

    /// The stored hash as written in the file (`sha256:<hex>`), for the docker bearer
    /// token's fingerprint: a token recreated under the same name gets a new one.
    pub fn hash_text(&self) -> String {
        format!("sha256:{}", hex(&self.digest))
    }
}

/// A new secret: `rgt_` + base64url of 32 random bytes.
pub fn new_secret() -> String {
    use base64::Engine as _;
    let bytes = crate::auth::random_bytes::<SECRET_BYTES>();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The hash of a secret as the file stores it.
pub fn hash_secret(secret: &str) -> String {
    format!("sha256:{}", hex(&digest(secret)))
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Unix seconds of an RFC 3339 time (any offset).
pub fn parse_time(text: &str) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time like 2026-12-01T10:00:00Z: {e}"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| format!("{text:?} is before 1970"))
}

/// RFC 3339 UTC, whole seconds.
pub fn format_time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// The actions of a scope from their names (`pull`, `push`, `delete`).
pub fn parse_actions(names: &[String]) -> Result<Actions, String> {
    let mut a = Actions::NONE;
    for n in names {
        a = a.union(match n.trim() {
            "pull" => Actions::PULL,
            "push" => Actions::PUSH,
            "delete" => Actions::DELETE,
            other => return Err(format!("{other:?} is not pull, push or delete")),
        });
    }
    if a.is_empty() {
        return Err("grants nothing: list pull, push or delete".into());
    }
    Ok(a)
}

/// The scope of a token from its patterns and action names, checked as the rules are.
pub fn parse_scope(repos: &[String], actions: &[String]) -> Result<Scope, TokensError> {
    if repos.is_empty() {
        return Err(TokensError::new(
            None,
            Some("repos"),
            "names no repository pattern",
        ));
    }
    let repos = repos
        .iter()
        .map(|r| {
            Pattern::repo(r)
                .map_err(|e| TokensError::new(None, Some("repos"), format!("{r:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let actions = parse_actions(actions).map_err(|m| TokensError::new(None, Some("actions"), m))?;
    Ok(Scope { repos, actions })
}

impl TokenEntry {
    /// PURE: the checked token, or what is wrong (the token named, the file not yet).
    pub fn check(&self) -> Result<Token, TokensError> {
        let who = Some(self.name.as_str());
        let err = |field, m: String| TokensError::new(who, Some(field), m);
        if !users::is_valid_name(&self.name) {
            return Err(err(
                "name",
                format!(
                    "must be 1 to {} of letters, digits and ._@-, not starting with rgt_ (the prefix of secrets)",
                    users::MAX_NAME
                ),
            ));
        }
        if !users::is_valid_name(&self.owner) {
            return Err(err("owner", format!("{:?} is not a user name", self.owner)));
        }
        let digest = parse_hash(&self.hash).ok_or_else(|| {
            err(
                "hash",
                "is not sha256:<64 hex digits> (a secret is never stored: make tokens with `registry-guard token create`)".into(),
            )
        })?;
        let scope = parse_scope(&self.repos, &self.actions).map_err(|mut e| {
            e.token = Some(self.name.clone());
            e
        })?;
        let created = parse_time(&self.created).map_err(|m| err("created", m))?;
        let expires = self
            .expires
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|m| err("expires", m))?;
        if expires.is_some_and(|e| e <= created) {
            return Err(err("expires", "is not after created".into()));
        }
        let revoked = self
            .revoked
            .as_deref()
            .map(parse_time)
            .transpose()
            .map_err(|m| err("revoked", m))?;
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION || d.contains(|c: char| c.is_control()))
        {
            return Err(err(
                "description",
                format!("must be one line of at most {MAX_DESCRIPTION} bytes"),
            ));
        }
        Ok(Token {
            name: self.name.clone(),
            owner: self.owner.clone(),
            digest,
            scope: Arc::new(scope),
            created,
            expires,
            revoked,
            description: self.description.clone(),
        })
    }
}

/// The loaded tokens file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_name: HashMap<String, Arc<Token>>,
    /// `tokens.max_lifetime`: a token is refused from `created + max_lifetime` on,
    /// whatever its `expires` says.
    max_lifetime: Option<Duration>,
    /// The file it came from (named in errors).
    pub file: Option<PathBuf>,
    /// Tokens in force whose `expires` (or never) was past `created + max_lifetime`:
    /// they are refused from then on; worth a warning at load.
    pub capped: Vec<String>,
}

impl Tokens {
    pub fn load(path: &Path, max_lifetime: Option<Duration>) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            TokensError::new(None, None, format!("cannot read the tokens file: {e}")).in_file(path)
        })?;
        let mut t = Tokens::from_yaml(&text, max_lifetime).map_err(|e| e.in_file(path))?;
        t.file = Some(path.to_owned());
        Ok(t)
    }

    pub fn from_yaml(text: &str, max_lifetime: Option<Duration>) -> Result<Tokens, TokensError> {
        Tokens::from_file(&parse_file(text)?, max_lifetime)
    }

    pub fn from_file(
        file: &TokenFile,
        max_lifetime: Option<Duration>,
    ) -> Result<Tokens, TokensError> {
        let mut by_name = HashMap::with_capacity(file.tokens.len());
        let mut capped = Vec::new();
        for e in &file.tokens {
            let mut t = e.check()?;
            if by_name.contains_key(&t.name) {
                return Err(TokensError::new(
                    Some(&t.name),
                    Some("name"),
                    "appears more than once",
                ));
            }
            if apply_max_lifetime(&mut t, max_lifetime) {
                capped.push(t.name.clone());
            }
            by_name.insert(t.name.clone(), Arc::new(t));
        }
        capped.sort_unstable();
        Ok(Tokens {
            by_name,
            max_lifetime,
            file: None,
            capped,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Token>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.by_name.values()
    }

    /// `tokens.max_lifetime` this file was loaded under.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }
}

/// PURE: cuts `t`'s expiry to `created + max` (a token in force never outlives the
/// configured maximum, whatever its `expires`); true when that shortened a token in force.
pub fn apply_max_lifetime(t: &mut Token, max: Option<Duration>) -> bool {
    let Some(max) = max else { return false };
    let cap = t.created.saturating_add(max.as_secs());
    let cut = t.expires.is_none_or(|e| e > cap);
    t.expires = Some(t.expires.map_or(cap, |e| e.min(cap)));
    cut && t.revoked.is_none()
}

/// Parses the text of a tokens file (an empty file is no tokens).
pub fn parse_file(text: &str) -> Result<TokenFile, TokensError> {
    if text.trim().is_empty() {
        return Ok(TokenFile::default());
    }
    serde_yaml::from_str(text).map_err(|e| TokensError::new(None, None, e.to_string()))
}

/// Refuses a name that is both a user and a token: which one a login meant would be a
/// guess. The message names both files.
pub fn check_no_user_names(
    tokens: &Tokens,
    users: &Users,
    users_file: &Path,
) -> Result<(), TokensError> {
    let mut clash: Vec<&str> = tokens
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| users.get(n).is_some())
        .collect();
    clash.sort_unstable();
    match clash.first() {
        None => Ok(()),
        Some(name) => Err(TokensError {
            file: tokens.file.clone(),
            token: Some((*name).to_owned()),
            field: Some("name"),
            message: format!(
                "is also a user in {}: a name is either a user or a token; delete the token (`registry-guard token delete NAME`; a revoked one still holds its name) or remove the user",
                users_file.display()
            ),
        }),
    }
}

/// A token's owner as the identity source knows them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub groups: Vec<String>,
    pub disabled: bool,
}

/// Where a token's owner is looked up at each request: the one place that says who the
/// owner is now. The user file is one source; a directory (LDAP) can be another.
pub trait OwnerSource {
    /// The owner's current groups and state; `None`: no such user (any more).
    fn owner(&self, name: &str) -> Option<Owner>;
}

/// An owner already looked up (in the directory): the source of exactly that answer.
pub struct Found(pub Option<Owner>);

impl OwnerSource for Found {
    fn owner(&self, _name: &str) -> Option<Owner> {
        self.0.clone()
    }
}

impl OwnerSource for Users {
    fn owner(&self, name: &str) -> Option<Owner> {
        self.get(name).map(|u| Owner {
            groups: u.groups.clone(),
            disabled: u.disabled,
        })
    }
}

/// PURE: the identity of a request made with `token` whose secret is right, or why not:
/// the token must be in force at `now` and its owner known and enabled.
pub fn identity(
    token: &Token,
    owners: &dyn OwnerSource,
    now: u64,
) -> Result<crate::auth::Identity, Refusal> {
    token.in_force(now)?;
    match owners.owner(&token.owner) {
        Some(o) if !o.disabled => Ok(crate::auth::Identity::Token {
            name: token.name.clone(),
            owner: token.owner.clone(),
            groups: o.groups,
            scope: token.scope.clone(),
        }),
        _ => Err(Refusal::Owner),
    }
}

// ---------------------------------------------------------------------------------------
// Last use.

/// When and from where a token was last used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastUse {
    pub at: u64,
    pub from: IpAddr,
}

/// Last use of each token, in memory, shared by every snapshot (a reload keeps it).
/// Bounded: one entry per token name that was used, pruned to the names of the tokens
/// file at each flush.
#[derive(Debug, Default)]
pub struct Usage {
    inner: Mutex<UsageInner>,
}

#[derive(Debug, Default)]
struct UsageInner {
    map: HashMap<String, LastUse>,
    /// Something changed since the last flush.
    dirty: bool,
}

impl Usage {
    /// Notes a use. Cheap: a lock and a lookup; a name is allocated only at its first use.
    pub fn record(&self, name: &str, now: u64, from: IpAddr) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        let new = LastUse { at: now, from };
        match inner.map.get_mut(name) {
            Some(old) if *old == new => {}
            Some(old) => {
                *old = new;
                inner.dirty = true;
            }
            None => {
                inner.map.insert(name.to_owned(), new);
                inner.dirty = true;
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<LastUse> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(name)
            .copied()
    }

    /// What changed since the last call (keeping only names `keep` says are tokens),
    /// or `None` when nothing did.
    pub fn take_dirty(&self, keep: impl Fn(&str) -> bool) -> Option<BTreeMap<String, LastUse>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.retain(|k, _| keep(k));
        if !std::mem::take(&mut g.dirty) {
            return None;
        }
        Some(g.map.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }

    /// Marks the state changed again (a flush that failed is retried next time).
    pub fn mark_dirty(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).dirty = true;
    }
}

/// One line of the last-use file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LastUseEntry {
    pub at: String,
    pub from: String,
}

/// The default last-use file of a tokens file: `<tokens file>.last-used`, next to it.
pub fn default_last_used_file(tokens_file: &Path) -> PathBuf {
    let mut s = tokens_file.as_os_str().to_owned();
    s.push(".last-used");
    PathBuf::from(s)
}

/// Reads a last-use file (missing or unreadable: empty; it is only information).
pub fn read_last_used(path: &Path) -> BTreeMap<String, LastUseEntry> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_yaml::from_str(&t).ok())
        .unwrap_or_default()
}

/// PURE: `old` with `new` merged in, the later use of each name winning (replicas write
/// the same file). Entries whose time does not parse are replaced.
pub fn merge_last_used(
    mut old: BTreeMap<String, LastUseEntry>,
    new: &BTreeMap<String, LastUse>,
) -> BTreeMap<String, LastUseEntry> {
    for (name, u) in new {
        let newer = old
            .get(name)
            .and_then(|e| parse_time(&e.at).ok())
            .is_none_or(|at| at <= u.at);
        if newer {
            old.insert(
                name.clone(),
                LastUseEntry {
                    at: format_time(u.at),
                    from: u.from.to_string(),
                },
            );
        }
    }
    old
}

/// Writes `uses` merged into the last-use file `path`, under its lock (what another
/// replica wrote meanwhile is merged, not lost; see [`crate::edit`]).
pub fn flush_last_used(path: &Path, uses: &BTreeMap<String, LastUse>) -> std::io::Result<()> {
    let edit = crate::edit::lock(path)?;
    let merged = merge_last_used(read_last_used(edit.path()), uses);
    let text = serde_yaml::to_string(&merged).map_err(std::io::Error::other)?;
    edit.replace(&[
        b"# registry-guard: last use of each access token (written by the proxy)\n",
        text.as_bytes(),
    ])
}

/// Writes a tokens file over the one `edit` locked ([`crate::edit`]: atomic, mode kept,
/// symlinks followed), after checking that it loads. Other tokens are left as they were.
pub fn save(edit: &crate::edit::Locked, file: &TokenFile) -> Result<(), TokensError> {
    let path = edit.path();
    Tokens::from_file(file, None).map_err(|e| e.in_file(path))?;
    let text = serde_yaml::to_string(file)
        .map_err(|e| TokensError::new(None, None, e.to_string()).in_file(path))?;
    edit.replace(&[
        b"# registry-guard tokens file; edit with `registry-guard token ...`\n",
        text.as_bytes(),
    ])
    .map_err(|e| {
        TokensError::new(None, None, format!("cannot write the tokens file: {e}")).in_file(path)
    })
}

#[cfg(test)]
mod tests {

    /// A `created` in the future would stretch `tokens.max_lifetime` (counted from it):
    /// such a token is not in force until then, give or take the clock skew.
    #[test]
    fn a_token_created_in_the_future_is_not_in_force() {
        let mut t = TokenEntry {
            name: "ci".into(),
            owner: "alice".into(),
            hash: hash_secret("rgt_s"),
            repos: vec!["team-a/**".into()],
            actions: vec!["pull".into()],
            created: format_time(T0 + 3600),
            expires: None,
            description: None,
            revoked: None,
        }
        .check()
        .unwrap();
        assert!(apply_max_lifetime(
            &mut t,
            Some(Duration::from_secs(30 * 86400))
        ));
        assert_eq!(t.in_force(T0), Err(Refusal::NotYetValid));
        assert_eq!(t.in_force(T0 + 3600 - CLOCK_SKEW), Ok(()));
        assert_eq!(t.in_force(T0 + 3600 + 30 * 86400), Err(Refusal::Expired));
    }

    use super::*;

    const T0: u64 = 1_790_000_000;

    fn entry(name: &str) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            owner: "alice".into(),
            hash: hash_secret("rgt_secret"),
            repos: vec!["team-a/**".into(), "public/**".into()],
            actions: vec!["pull".into(), "push".into()],
            created: format_time(T0),
            expires: Some(format_time(T0 + 3600)),
            description: None,
            revoked: None,
        }
    }

    #[test]
    fn secrets_are_prefixed_256_bit_base64url() {
        let a = new_secret();
        let b = new_secret();
        assert_ne!(a, b);
        let body = a.strip_prefix(PREFIX).unwrap();
        assert_eq!(body.len(), 43, "{a}");
        assert!(body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .unwrap();
        assert_eq!(bytes.len(), SECRET_BYTES);
        let h = hash_secret(&a);
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64);
        assert!(!h.contains(body));
    }

    #[test]
    fn verify_checks_secret_then_state() {
        let t = entry("ci").check().unwrap();
        assert_eq!(t.verify("rgt_secret", T0), Ok(()));
        assert_eq!(t.verify("rgt_secreT", T0), Err(Refusal::WrongSecret));
        assert_eq!(t.verify("", T0), Err(Refusal::WrongSecret));
        assert_eq!(t.verify("rgt_secret", T0 + 3600), Err(Refusal::Expired));
        let mut e = entry("ci");
        e.revoked = Some(format_time(T0));
        let t = e.check().unwrap();
        assert_eq!(t.verify("rgt_secret", T0), Err(Refusal::Revoked));
        // A wrong secret is a wrong secret whatever the state: nothing about the token
        // is told to someone without it.
        assert_eq!(t.verify("nope", T0), Err(Refusal::WrongSecret));
    }

    #[test]
    fn refusals_name_the_token_and_the_field() {
        type Edit = Box<dyn Fn(&mut TokenEntry)>;
        let cases: Vec<(Edit, &str, &str)> = vec![
            (Box::new(|e| e.name = "a:b".into()), "name", "letters"),
            (Box::new(|e| e.owner = "".into()), "owner", "user name"),
            (Box::new(|e| e.hash = "rgt_plain".into()), "hash", "sha256"),
            (Box::new(|e| e.repos = vec![]), "repos", "no repository"),
            (
                Box::new(|e| e.repos = vec!["a/**b".into()]),
                "repos",
                "\"a/**b\"",
            ),
            (
                Box::new(|e| e.actions = vec!["pul".into()]),
                "actions",
                "\"pul\"",
            ),
            (
                Box::new(|e| e.actions = vec![]),
                "actions",
                "grants nothing",
            ),
            (
                Box::new(|e| e.created = "yesterday".into()),
                "created",
                "RFC 3339",
            ),
            (
                Box::new(|e| e.expires = Some(format_time(T0 - 1))),
                "expires",
                "not after",
            ),
            (
                Box::new(|e| e.revoked = Some("x".into())),
                "revoked",
                "RFC 3339",
            ),
            (
                Box::new(|e| e.description = Some("a\nb".into())),
                "description",
                "one line",
            ),
        ];
        for (edit, field, words) in cases {
            let mut e = entry("ci-x");
            edit(&mut e);
            let name = e.name.clone();
            let err = Tokens::from_file(&TokenFile { tokens: vec![e] }, None)
                .unwrap_err()
                .in_file(Path::new("/etc/rg/tokens.yaml"))
                .to_string();
            assert!(
                err.starts_with(&format!("/etc/rg/tokens.yaml: token {name:?}: {field}: "))
                    && err.contains(words),
                "{err}"
            );
        }
        let dup = TokenFile {
            tokens: vec![entry("ci"), entry("ci")],
        };
        let err = Tokens::from_file(&dup, None).unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");
        let err = Tokens::from_yaml("tokens:\n  - name: a\n    secret: x\n", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `secret`"), "{err}");
        assert!(Tokens::from_yaml("", None).unwrap().is_empty());
    }

    #[test]
    fn max_lifetime_caps_every_token_and_never_expiring_ones_are_listed() {
        let mut never = entry("never");
        never.expires = None;
        let mut long = entry("long");
        long.expires = Some(format_time(T0 + 100 * 86400));
        let short = entry("short");
        let file = TokenFile {
            tokens: vec![never, long, short],
        };
        let max = Duration::from_secs(30 * 86400);
        let tokens = Tokens::from_file(&file, Some(max)).unwrap();
        for n in ["never", "long"] {
            let t = tokens.get(n).unwrap();
            assert_eq!(t.expires, Some(T0 + 30 * 86400), "{n}");
            assert_eq!(
                t.verify("rgt_secret", T0 + 30 * 86400),
                Err(Refusal::Expired)
            );
        }
        assert_eq!(tokens.get("short").unwrap().expires, Some(T0 + 3600));
        assert_eq!(tokens.capped, ["long", "never"]);
        // Without a maximum, never means never.
        let free = Tokens::from_file(&file, None).unwrap();
        assert_eq!(free.get("never").unwrap().expires, None);
    }

    #[test]
    fn a_name_cannot_be_both_a_user_and_a_token() {
        let hash = users::hash_password("pw", 8, 1, 1).unwrap();
        let users = Users::from_yaml(&format!(
            "users:\n  - name: alice\n    hash: '{hash}'\n  - name: ci\n    hash: '{hash}'\n"
        ))
        .unwrap();
        let mut tokens = Tokens::from_file(
            &TokenFile {
                tokens: vec![entry("ci"), entry("ci-2")],
            },
            None,
        )
        .unwrap();
        tokens.file = Some("/etc/rg/tokens.yaml".into());
        let err = check_no_user_names(&tokens, &users, Path::new("/etc/rg/users.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "/etc/rg/tokens.yaml: token \"ci\": name: is also a user in /etc/rg/users.yaml"
            ),
            "{err}"
        );
    }

    #[test]
    fn the_identity_follows_the_owner_now() {
        let hash = users::hash_password("pw", 8, 1, 1).unwrap();
        let users = |disabled: bool, groups: &str| {
            Users::from_yaml(&format!(
                "users:\n  - name: alice\n    hash: '{hash}'\n    groups: [{groups}]\n    disabled: {disabled}\n"
            ))
            .unwrap()
        };
        let t = entry("ci").check().unwrap();
        let id = identity(&t, &users(false, "team-a"), T0).unwrap();
        assert_eq!(id.name(), "ci");
        assert_eq!(id.owner(), Some("alice"));
        assert_eq!(id.principal(), Some(("alice", &["team-a".to_owned()][..])));
        let id = identity(&t, &users(false, "other"), T0).unwrap();
        assert_eq!(id.principal().unwrap().1, ["other"]);
        assert_eq!(
            identity(&t, &users(true, "team-a"), T0),
            Err(Refusal::Owner)
        );
        let nobody = Users::from_yaml("users: []\n").unwrap();
        assert_eq!(identity(&t, &nobody, T0), Err(Refusal::Owner));
        assert_eq!(
            identity(&t, &users(false, "team-a"), T0 + 3600),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn usage_is_dirty_only_on_change_and_merges_by_latest() {
        let u = Usage::default();
        let ip: IpAddr = [192, 0, 2, 1].into();
        assert!(u.take_dirty(|_| true).is_none());
        u.record("ci", T0, ip);
        let first = u.take_dirty(|_| true).unwrap();
        assert_eq!(first["ci"], LastUse { at: T0, from: ip });
        u.record("ci", T0, ip);
        assert!(
            u.take_dirty(|_| true).is_none(),
            "same second, same address"
        );
        u.record("gone", T0 + 1, ip);
        let second = u.take_dirty(|n| n != "gone").unwrap();
        assert_eq!(second.len(), 1, "names no longer tokens are dropped");
        // Another replica wrote a later use of ci and an earlier one of ci-2.
        let mut old = BTreeMap::new();
        old.insert(
            "ci".to_owned(),
            LastUseEntry {
                at: format_time(T0 + 50),
                from: "198.51.100.7".into(),
            },
        );
        old.insert(
            "ci-2".to_owned(),
            LastUseEntry {
                at: format_time(T0 - 50),
                from: "198.51.100.7".into(),
            },
        );
        let mut new = BTreeMap::new();
        new.insert("ci".to_owned(), LastUse { at: T0, from: ip });
        new.insert("ci-2".to_owned(), LastUse { at: T0, from: ip });
        let merged = merge_last_used(old, &new);
        assert_eq!(merged["ci"].from, "198.51.100.7");
        assert_eq!(merged["ci-2"].from, "192.0.2.1");
        assert_eq!(merged["ci-2"].at, format_time(T0));
    }

    #[test]
    fn save_round_trips_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let file = TokenFile {
            tokens: vec![entry("ci")],
        };
        let edit = crate::edit::lock(&path).unwrap();
        save(&edit, &file).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Tokens::load(&path, None).unwrap();
        assert_eq!(back.get("ci").unwrap().verify("rgt_secret", T0), Ok(()));
        let mut bad = entry("bad");
        bad.actions = vec!["all".into()];
        let e = save(&edit, &TokenFile { tokens: vec![bad] })
            .unwrap_err()
            .to_string();
        assert!(e.contains("token \"bad\": actions"), "{e}");
        assert!(
            Tokens::load(&path, None).unwrap().get("ci").is_some(),
            "left as it was"
        );
        let last = dir.path().join("tokens.yaml.last-used");
        let mut uses = BTreeMap::new();
        uses.insert(
            "ci".to_owned(),
            LastUse {
                at: T0,
                from: [10, 0, 0, 1].into(),
            },
        );
        flush_last_used(&last, &uses).unwrap();
        assert_eq!(read_last_used(&last)["ci"].from, "10.0.0.1");
        assert_eq!(default_last_used_file(&path), last);
    }
}
