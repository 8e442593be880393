//! The user file: YAML, one entry per user with an argon2 PHC hash (or a bcrypt hash
//! from an htpasswd file, see below), optional groups and an optional `disabled` flag.
//!
//! ```yaml
//! users:
//!   - name: alice
//!     hash: $argon2id$v=19$m=19456,t=2,p=1$...
//!     groups: [team-a]
//! ```
//!
//! Loading checks every entry and names the user it refuses: a hash that is neither an
//! argon2 PHC string nor bcrypt (a plaintext password above all, and htpasswd's weak
//! schemes: `$apr1$` MD5, `{SHA}`, crypt/DES), a duplicate name, a bad name.
//! Editing (`registry-guard user ...`, hash upgrades) rewrites the whole file under its
//! lock, atomically ([`crate::edit`]), other users untouched.
//!
//! bcrypt (`$2y$`, `$2b$`, `$2a$`, as `htpasswd -B` writes them) is accepted so that an
//! htpasswd file can be imported as it is ([`parse_htpasswd`]); after a user's first
//! login the proxy replaces the hash with argon2id (`auth::upgrade`). While some users
//! have bcrypt and others argon2, every check runs one of each ([`Verification`]), so an
//! unknown name costs what a known one costs whatever its hash kind.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// argon2id with OWASP's first recommended parameters: 19 MiB, 2 passes, 1 lane.
pub const DEFAULT_M_COST: u32 = 19456;
pub const DEFAULT_T_COST: u32 = 2;
pub const DEFAULT_P_COST: u32 = 1;
/// The largest argon2 parameters a user file may hold: m in KiB (1 GiB), passes, lanes.
pub const MAX_M_COST: u32 = 1 << 20;
pub const MAX_T_COST: u32 = 64;
pub const MAX_P_COST: u32 = 64;
/// Longest user name: names are logged and may become namespaces.
pub const MAX_NAME: usize = 128;
/// The bcrypt costs a user file may hold. Each step doubles the work: cost 16 is about
/// 4 s of one core per login (and per unknown name's dummy check), more is a DoS.
/// `htpasswd -B` writes cost 5 unless given `-C`.
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 16;

/// What kind of hash a user has, as loading recognised it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashKind {
    /// argon2id, argon2i or argon2d with these (m KiB, t passes, p lanes).
    Argon2 { m: u32, t: u32, p: u32 },
    /// bcrypt `$2y$`/`$2b$`/`$2a$` of this cost.
    Bcrypt { cost: u32 },
}

impl HashKind {
    pub fn is_bcrypt(self) -> bool {
        matches!(self, HashKind::Bcrypt { .. })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFile {
    #[serde(default)]
    pub users: Vec<UserEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// A refused user file: which file, which user, what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct UsersError {
    pub file: Option<PathBuf>,
    pub user: Option<String>,
    pub message: String,
}

impl fmt::Display for UsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(u) = &self.user {
            write!(f, "user {u:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl UsersError {
    pub(crate) fn new(user: Option<&str>, message: impl Into<String>) -> Self {
        UsersError {
            file: None,
            user: user.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// One user, checked.
#[derive(Debug)]
pub struct User {
    pub name: String,
    /// The PHC string (or bcrypt hash), as in the file.
    pub hash: String,
    pub kind: HashKind,
    pub groups: Vec<String>,
    pub disabled: bool,
}

/// The loaded user file plus the dummy hashes unknown names are checked against.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    /// A hash of a random password with the argon2 parameters most users have, so an
    /// unknown name costs the same argon2 work as a known one.
    pub dummy_hash: String,
    /// A bcrypt hash no password matches, of the cost most bcrypt users have; `None`
    /// while no user has a bcrypt hash.
    pub dummy_bcrypt: Option<String>,
    /// Whether some user has an argon2 hash.
    has_argon2: bool,
    /// The argon2 (m, t, p) of the dummy hash: what most argon2 users have.
    argon2_params: (u32, u32, u32),
    /// The file it was loaded from ([`Users::load`]); where hash upgrades are written.
    source: Option<PathBuf>,
}

/// A user file parsed and checked, before the dummy hash (the only costly part) is made.
#[derive(Debug)]
pub struct Checked {
    by_name: HashMap<String, Arc<User>>,
    /// (m, t, p) most argon2 users have (the defaults for a file without any).
    pub common_params: (u32, u32, u32),
    /// The bcrypt cost most bcrypt users have; `None`: no user has a bcrypt hash.
    pub common_bcrypt_cost: Option<u32>,
}

/// What one credential check runs, on a verification thread: the user's hash (or a
/// dummy), then a dummy of the other kind when the file holds both kinds. So a known
/// argon2 user, a known bcrypt user and an unknown name all cost one argon2 run (the
/// most common parameters) plus one bcrypt run (the most common cost) while a file is
/// half migrated, and one run of the only kind otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub hash: String,
    pub pad: Option<String>,
}

impl Verification {
    /// Whether `password` matches `hash`; the pad is run and its answer ignored.
    pub fn run(&self, password: &str, memory: &mut WorkMemory) -> bool {
        let verified = verify_password_in(&self.hash, password, memory);
        if let Some(pad) = &self.pad {
            std::hint::black_box(verify_password_in(pad, password, memory));
        }
        verified
    }
}

/// PURE: the text of a user file as entries, unchecked; an empty text is an empty list.
pub fn parse_file(text: &str) -> Result<UserFile, UsersError> {
    if text.trim().is_empty() {
        return Ok(UserFile::default());
    }
    serde_yaml::from_str(text).map_err(|e| UsersError::new(None, e.to_string()))
}

impl Checked {
    pub fn from_yaml(text: &str) -> Result<Checked, UsersError> {
        Checked::from_file(parse_file(text)?)
    }

    pub fn from_file(file: UserFile) -> Result<Checked, UsersError> {
        let mut by_name = HashMap::with_capacity(file.users.len());
        let mut param_counts: HashMap<(u32, u32, u32), usize> = HashMap::new();
        let mut cost_counts: HashMap<u32, usize> = HashMap::new();
        for e in file.users {
            let who = Some(e.name.as_str());
            if !is_valid_name(&e.name) {
                return Err(UsersError::new(
                    who,
                    format!("name must be 1 to {MAX_NAME} of letters, digits and ._@-, not starting with rgt_ (the prefix of access token secrets)"),
                ));
            }
            let kind = check_hash(&e.hash).map_err(|m| {
                UsersError::new(
                    who,
                    format!(
                        "{m}; set a new password with `registry-guard user passwd {} --users-file FILE`",
                        e.name
                    ),
                )
            })?;
            for g in &e.groups {
                if !is_valid_name(g) {
                    return Err(UsersError::new(
                        who,
                        format!(
                            "group {g:?} must be letters, digits and ._@-, not starting with rgt_"
                        ),
                    ));
                }
            }
            match kind {
                HashKind::Argon2 { m, t, p } => *param_counts.entry((m, t, p)).or_default() += 1,
                HashKind::Bcrypt { cost } => *cost_counts.entry(cost).or_default() += 1,
            }
            if by_name.contains_key(&e.name) {
                return Err(UsersError::new(who, "appears more than once"));
            }
            by_name.insert(
                e.name.clone(),
                Arc::new(User {
                    name: e.name,
                    hash: e.hash,
                    kind,
                    groups: e.groups,
                    disabled: e.disabled,
                }),
            );
        }
        let common_params = param_counts
            .into_iter()
            .max_by_key(|(params, n)| (*n, *params))
            .map(|(params, _)| params)
            .unwrap_or((DEFAULT_M_COST, DEFAULT_T_COST, DEFAULT_P_COST));
        let common_bcrypt_cost = cost_counts
            .into_iter()
            .max_by_key(|(cost, n)| (*n, *cost))
            .map(|(cost, _)| cost);
        Ok(Checked {
            by_name,
            common_params,
            common_bcrypt_cost,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }
}

/// A refused line of an htpasswd file: its number (from 1), the user if the line names
/// one, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtpasswdError {
    pub line: usize,
    pub user: Option<String>,
    pub message: String,
}

impl fmt::Display for HtpasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        if let Some(u) = &self.user {
            write!(f, "user {u:?}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// PURE: the `(name, hash)` entries of an htpasswd file (`name:hash` lines; blank lines
/// and `#` comments skipped; CRLF line ends accepted). Every entry must be one the user
/// file accepts (bcrypt as `htpasswd -B` writes it, or argon2): a file with any other
/// line is refused whole, every refused line listed, so that an import never leaves
/// some users behind unnoticed.
pub fn parse_htpasswd(text: &str) -> Result<Vec<(String, String)>, Vec<HtpasswdError>> {
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let mut refuse = |user: Option<&str>, message: String| {
            errors.push(HtpasswdError {
                line: i + 1,
                user: user.map(str::to_owned),
                message,
            })
        };
        let Some((name, hash)) = line.split_once(':') else {
            refuse(None, "no ':' between the user name and the hash".into());
            continue;
        };
        if hash.contains(':') {
            refuse(
                Some(name),
                "more than one ':' (user names cannot hold ':', hashes never do)".into(),
            );
            continue;
        }
        if !is_valid_name(name) {
            refuse(
                Some(name),
                format!("name must be 1 to {MAX_NAME} of letters, digits and ._@-, not starting with rgt_ (the prefix of access token secrets)"),
            );
            continue;
        }
        if let Err(m) = check_hash(hash) {
            refuse(
                Some(name),
                format!("{m}; make it again with `htpasswd -B FILE {name}`, or add the user after the import with `registry-guard user add {name}`"),
            );
            continue;
        }
        if entries.iter().any(|(n, _)| n == name) {
            refuse(Some(name), "appears more than once".into());
            continue;
        }
        entries.push((name.to_owned(), hash.to_owned()));
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// User names: letters, digits and `._@-`; no `:` (Basic splits there), no glob
/// characters (rules substitute `${user}`), nothing a log could misread.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        // Reserved for access tokens' secrets: a name never looks like one, so a secret
        // given as a user name is recognised (and kept out of the logs).
        && !name.starts_with(crate::auth::access_tokens::PREFIX)
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
}

/// Checks a hash is argon2 (id, i or d) with usable parameters or bcrypt with a cost
/// within the limits; says what a refused one is (htpasswd's other schemes by name).
pub fn check_hash(phc: &str) -> Result<HashKind, String> {
    const WEAK: &str = "refused: only argon2 and bcrypt (`htpasswd -B`) hashes are accepted";
    if phc.starts_with("$apr1$") {
        return Err(format!(
            "hash is Apache MD5 ($apr1$, `htpasswd -m`), {WEAK}"
        ));
    }
    if phc.starts_with("{SHA}") {
        return Err(format!(
            "hash is unsalted SHA-1 ({{SHA}}, `htpasswd -s`), {WEAK}"
        ));
    }
    for (prefix, what) in [
        ("$1$", "MD5-crypt"),
        ("$5$", "SHA-256-crypt"),
        ("$6$", "SHA-512-crypt"),
    ] {
        if phc.starts_with(prefix) {
            return Err(format!("hash is {what} ({prefix}), {WEAK}"));
        }
    }
    if phc.starts_with("$2") {
        return check_bcrypt(phc).map(|cost| HashKind::Bcrypt { cost });
    }
    if !phc.starts_with('$') {
        if phc.len() == 13
            && phc
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
        {
            return Err(format!(
                "hash looks like crypt/DES (`htpasswd -d`) or a plaintext password, {WEAK}"
            ));
        }
        return Err("hash is not an argon2 PHC string ($argon2id$...): plaintext passwords are refused, make one with `registry-guard hash-password`".into());
    }
    let parsed =
        PasswordHash::new(phc).map_err(|e| format!("hash is not a valid PHC string: {e}"))?;
    if Algorithm::try_from(parsed.algorithm).is_err() {
        return Err(format!(
            "hash algorithm {} is not argon2id, argon2i or argon2d",
            parsed.algorithm
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("hash has no salt or no output".into());
    }
    // The limits are checked on the numbers as written, before argon2 builds its
    // parameters: it multiplies them (p × 8 blocks) and overflows on a huge `p`.
    for (name, limit) in [("m", MAX_M_COST), ("t", MAX_T_COST), ("p", MAX_P_COST)] {
        let value = parsed
            .params
            .get_decimal(name)
            .or_else(|| parsed.params.get_str(name).and_then(|v| v.parse().ok()));
        if value.is_some_and(|v: u32| v > limit) {
            return Err(format!(
                "hash parameter {name}={} is over the limit {name}={limit} (limits: m={MAX_M_COST} (1 GiB), t={MAX_T_COST}, p={MAX_P_COST})",
                value.unwrap_or_default()
            ));
        }
    }
    let params =
        Params::try_from(&parsed).map_err(|e| format!("hash parameters are not usable: {e}"))?;
    // Every verification of this user, and of unknown names if most users share these
    // parameters, costs this much: a typo must not make each login take minutes or
    // each argon2 thread ask for terabytes.
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "hash parameters m={},t={},p={} are over the limits m={MAX_M_COST} (1 GiB), t={MAX_T_COST}, p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(HashKind::Argon2 {
        m: params.m_cost(),
        t: params.t_cost(),
        p: params.p_cost(),
    })
}

/// Checks a bcrypt hash (`$2y$NN$` + 53 characters); returns its cost.
fn check_bcrypt(hash: &str) -> Result<u32, String> {
    let version = hash.get(1..3).unwrap_or_default();
    if !matches!(version, "2a" | "2b" | "2y") {
        return Err(format!(
            "hash ${version}$ is not bcrypt $2y$, $2b$ or $2a$ (`htpasswd -B` writes $2y$)"
        ));
    }
    let parts: bcrypt::HashParts = hash
        .parse()
        .map_err(|e| format!("hash is not a valid bcrypt hash: {e}"))?;
    let cost = parts.get_cost();
    if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside {MIN_BCRYPT_COST}..={MAX_BCRYPT_COST} (each step doubles the work of every login)"
        ));
    }
    Ok(cost)
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError {
            file: Some(path.to_owned()),
            user: None,
            message: format!("cannot read the user file: {e}"),
        })?;
        let mut users = Users::from_yaml(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })?;
        users.source = Some(path.to_owned());
        Ok(users)
    }

    pub fn from_yaml(text: &str) -> Result<Users, UsersError> {
        Users::from_checked(Checked::from_yaml(text)?)
    }

    pub fn from_file(file: UserFile) -> Result<Users, UsersError> {
        Users::from_checked(Checked::from_file(file)?)
    }

    /// The checked entries plus dummy hashes with their most common parameters.
    fn from_checked(checked: Checked) -> Result<Users, UsersError> {
        let (m, t, p) = checked.common_params;
        let dummy_hash = hash_password(&random_token(), m, t, p)
            .map_err(|e| UsersError::new(None, format!("cannot make the dummy hash: {e}")))?;
        let dummy_bcrypt = checked.common_bcrypt_cost.map(dummy_bcrypt).transpose()?;
        let has_argon2 = checked
            .by_name
            .values()
            .any(|u| matches!(u.kind, HashKind::Argon2 { .. }));
        Ok(Users {
            by_name: checked.by_name,
            dummy_hash,
            dummy_bcrypt,
            has_argon2,
            argon2_params: checked.common_params,
            source: None,
        })
    }

    /// The argon2 (m, t, p) most argon2 users have (the defaults when none has): what
    /// an upgraded bcrypt hash is made with, so it costs what the others cost.
    pub fn argon2_params(&self) -> (u32, u32, u32) {
        self.argon2_params
    }

    /// The file these users were loaded from, if any.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// What checking a password of `user` (`None`: an unknown name) runs; see
    /// [`Verification`]. A disabled user is checked like an enabled one (and refused
    /// whatever the answer).
    pub fn verification(&self, user: Option<&User>) -> Verification {
        let argon2 = self.has_argon2.then(|| self.dummy_hash.clone());
        match (user, &self.dummy_bcrypt) {
            (Some(u), _) if u.kind.is_bcrypt() => Verification {
                hash: u.hash.clone(),
                pad: argon2,
            },
            (Some(u), bcrypt) => Verification {
                hash: u.hash.clone(),
                pad: bcrypt.clone(),
            },
            (None, Some(bcrypt)) => match argon2 {
                Some(a) => Verification {
                    hash: a,
                    pad: Some(bcrypt.clone()),
                },
                None => Verification {
                    hash: bcrypt.clone(),
                    pad: None,
                },
            },
            (None, None) => Verification {
                hash: self.dummy_hash.clone(),
                pad: None,
            },
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Every user's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Every group some user is in (rules may only name these).
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.by_name
            .values()
            .flat_map(|u| u.groups.iter().map(String::as_str))
    }
}

/// A random 32-byte token, hex; used for dummy passwords and salts.
fn random_token() -> String {
    let bytes = crate::auth::random_bytes::<32>();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bcrypt hash of `cost` that no password matches: a hash of a random password made
/// at the cheapest cost, relabelled. Checking a password against it runs the full work
/// of `cost` (bcrypt recomputes from the salt and the cost in the string) and never
/// matches, and making it costs about a millisecond, not the seconds of a high cost.
fn dummy_bcrypt(cost: u32) -> Result<String, UsersError> {
    let made = bcrypt::hash_with_salt(
        random_token(),
        MIN_BCRYPT_COST,
        crate::auth::random_bytes::<16>(),
    )
    .map_err(|e| UsersError::new(None, format!("cannot make the dummy bcrypt hash: {e}")))?
    .format_for_version(bcrypt::Version::TwoY);
    Ok(format!("$2y${cost:02}{}", &made[6..]))
}

/// Hashes a password with argon2id.
pub fn hash_password(
    password: &str,
    m_cost: u32,
    t_cost: u32,
    p_cost: u32,
) -> Result<String, String> {
    let params = Params::new(m_cost, t_cost, p_cost, None)
        .map_err(|e| format!("bad argon2 parameters: {e}"))?;
    let salt_bytes = crate::auth::random_bytes::<16>();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Verifies a password against a PHC string (algorithm and parameters from the string)
/// or a bcrypt hash.
/// CPU-heavy: call off the async workers. Allocates the argon2 working memory for this
/// one call; the verification threads use [`verify_password_in`] with their own.
pub fn verify_password(phc: &str, password: &str) -> bool {
    verify_password_in(phc, password, &mut WorkMemory::default())
}

/// argon2's working memory (`m_cost` KiB of blocks), owned by the caller so that one
/// verification thread reuses one allocation instead of asking the allocator for 19 MiB
/// per run (glibc then keeps each freed working set in the thread's arena: RSS grew by
/// about 19 MiB per thread that ever ran argon2, and was never given back).
#[derive(Default)]
pub struct WorkMemory {
    blocks: Vec<argon2::Block>,
}

impl fmt::Debug for WorkMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkMemory({} KiB)", self.resident_kib())
    }
}

impl WorkMemory {
    /// Allocations at least this large are always served by their own `mmap` in glibc
    /// (its dynamic mmap threshold never rises above 32 MiB on 64-bit) and in musl, so
    /// [`WorkMemory::release`] returns them to the system at once instead of leaving
    /// them in an arena. Pages past `m_cost` are reserved address space, never touched,
    /// so never resident.
    const RESERVE_BLOCKS: usize = (33 << 20) / argon2::Block::SIZE;

    /// The first `n` blocks, allocating (or growing) once.
    fn blocks(&mut self, n: usize) -> &mut [argon2::Block] {
        if self.blocks.len() < n {
            // Free the old set before taking the bigger one: never both at once.
            self.blocks = Vec::new();
            let mut v = Vec::with_capacity(n.max(Self::RESERVE_BLOCKS));
            v.resize(n, argon2::Block::default());
            self.blocks = v;
        }
        &mut self.blocks[..n]
    }

    /// Gives the memory back (an idle verification thread calls this).
    pub fn release(&mut self) {
        self.blocks = Vec::new();
    }

    /// KiB of blocks held (touched, so resident).
    pub fn resident_kib(&self) -> usize {
        self.blocks.len() * argon2::Block::SIZE / 1024
    }
}

/// bcrypt reads at most this many bytes of a password.
pub const BCRYPT_MAX_PASSWORD: usize = 72;

/// Whether `password`, verified against a bcrypt hash, is the only string that passes:
/// shorter than 72 bytes (bcrypt ignores what follows) and without a NUL. Only such a
/// password may be rehashed with argon2id, which reads every byte: otherwise the upgrade
/// would make the string this login happened to send the password, and the user's real
/// (longer) one would stop working.
pub fn bcrypt_upgrade_keeps_the_password(password: &str) -> bool {
    password.len() < BCRYPT_MAX_PASSWORD && !password.contains('\0')
}

/// [`verify_password`] with the caller's working memory. The output comparison is
/// constant-time (`subtle`); a malformed PHC string is simply not a match.
pub fn verify_password_in(phc: &str, password: &str, memory: &mut WorkMemory) -> bool {
    use subtle::ConstantTimeEq;
    if phc.starts_with("$2") {
        // Constant-time comparison inside (`subtle`); passwords are cut at 72 bytes, as
        // htpasswd cut them when it made the hash. A NUL in a password is refused (after
        // the same work): the crate would read `p\0p` as `p`, so another string than
        // the password would pass and, upgraded, become the password.
        let matched = bcrypt::verify(password, phc).unwrap_or(false);
        return matched & !password.contains('\0');
    }
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    let blocks = memory.blocks(params.block_count());
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
}

/// Writes a user file over the one `edit` locked (see [`crate::edit`]: atomic, mode
/// kept, symlinks followed). A file that would not load (a bad group name, say) is
/// refused and nothing is written: the running proxy would keep its old snapshot and
/// every later edit would fail.
pub fn save(edit: &crate::edit::Locked, file: &UserFile) -> Result<(), UsersError> {
    let path = edit.path();
    // Checked as loading checks it, without the dummy hashes serving needs: those cost a
    // login's work (seconds at bcrypt cost 16), and the lock is held meanwhile.
    Checked::from_file(UserFile {
        users: file.users.clone(),
    })
    .map_err(|mut e| {
        e.file = Some(path.to_owned());
        e
    })?;
    let err = |m: String| UsersError {
        file: Some(path.to_owned()),
        user: None,
        message: m,
    };
    let text = serde_yaml::to_string(file).map_err(|e| err(e.to_string()))?;
    edit.replace(&[
        b"# registry-guard user file; edit with `registry-guard user ...`\n",
        text.as_bytes(),
    ])
    .map_err(|e| err(format!("cannot write the user file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_parameters_are_refused_before_argon2_builds_them() {
        // fuzz/corpus/users/huge-p-overflows-argon2-params: argon2's Params::new
        // multiplied p = 3,333,333,331 by 8 and overflowed (a panic in debug builds).
        for params in [
            "m=19645,t=2,p=3333333331",
            "m=4294967295,t=2,p=1",
            "m=19456,t=4294967295,p=1",
        ] {
            let phc = format!("$argon2id$v=19${params}$nYUgZkGo7jPw6n9Xm5mRlw$h+scoS9SbYD/wxAlL+Kh4oFxszJVLhXIyIsisU9SaC4");
            let e = check_hash(&phc).unwrap_err();
            assert!(e.contains("over the limit"), "{params}: {e}");
        }
    }

    // Cheap parameters keep the tests fast; the code paths are the same.
    fn h(pw: &str) -> String {
        hash_password(pw, 256, 1, 1).unwrap()
    }

    #[test]
    fn loads_and_verifies() {
        let yaml = format!(
            "users:\n  - name: alice\n    hash: '{}'\n    groups: [team-a]\n  - name: bob\n    hash: '{}'\n    disabled: true\n",
            h("a-pw"),
            h("b-pw")
        );
        let users = Users::from_yaml(&yaml).unwrap();
        assert_eq!(users.len(), 2);
        let alice = users.get("alice").unwrap();
        assert_eq!(alice.groups, ["team-a"]);
        assert!(verify_password(&alice.hash, "a-pw"));
        assert!(!verify_password(&alice.hash, "b-pw"));
        assert!(users.get("bob").unwrap().disabled);
        assert!(
            users.dummy_hash.contains("m=256,t=1,p=1"),
            "{}",
            users.dummy_hash
        );
    }

    #[test]
    fn refusals_name_the_user() {
        let good = h("x");
        let cases = [
            ("users:\n  - name: carol\n    hash: hunter2\n".to_string(), "carol", "plaintext"),
            ("users:\n  - name: carol\n    hash: '$2y$05$abcdefghijklmnopqrstuu'\n".to_string(), "carol", "not a valid bcrypt hash"),
            ("users:\n  - name: carol\n    hash: '$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA'\n".to_string(), "carol", "not argon2"),
            (format!("users:\n  - name: dave\n    hash: '{good}'\n  - name: dave\n    hash: '{good}'\n"), "dave", "more than once"),
            (format!("users:\n  - name: 'e:ve'\n    hash: '{good}'\n"), "e:ve", "name"),
            (format!("users:\n  - name: frank\n    hash: '{good}'\n    groups: ['a b']\n"), "frank", "group"),
        ];
        for (yaml, user, words) in cases {
            let e = Users::from_yaml(&yaml).unwrap_err().to_string();
            assert!(
                e.contains(&format!("user {user:?}")) && e.contains(words),
                "{e}"
            );
        }
        let e = Users::from_yaml("users:\n  - name: a\n    hash: x\n    pasword: y\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `pasword`"), "{e}");
    }

    #[test]
    fn the_example_user_file_loads() {
        let users = Users::from_yaml(include_str!("../../config/users.example.yaml")).unwrap();
        assert!(verify_password(
            &users.get("alice").unwrap().hash,
            "alice-demo-password"
        ));
        assert!(users.get("former-employee").unwrap().disabled);
    }

    #[test]
    fn one_work_memory_verifies_hashes_of_any_parameters_in_any_order() {
        use argon2::password_hash::PasswordVerifier;
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let mut phcs = Vec::new();
        for (alg, m, t, p) in [
            (Algorithm::Argon2id, 2048, 1, 1),
            (Algorithm::Argon2id, 64, 3, 1),
            (Algorithm::Argon2i, 1024, 2, 2),
            (Algorithm::Argon2d, 4096, 1, 4),
            (Algorithm::Argon2id, 8, 1, 1),
        ] {
            let params = Params::new(m, t, p, Some(24)).unwrap();
            let phc = Argon2::new(alg, Version::V0x13, params)
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            phcs.push(phc);
        }
        // argon2 0x10 too (the version field decides).
        let v10 = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x10,
            Params::new(256, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        phcs.push(v10);
        let mut mem = WorkMemory::default();
        // Dirty memory from the previous run, bigger or smaller, never changes the result.
        for round in 0..2 {
            for phc in phcs.iter().chain(phcs.iter().rev()) {
                assert!(verify_password_in(phc, "pw", &mut mem), "{round} {phc}");
                assert!(!verify_password_in(phc, "pW", &mut mem), "{round} {phc}");
                let parsed = PasswordHash::new(phc).unwrap();
                assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
            }
            assert_eq!(mem.resident_kib(), 4096, "grown to the largest m_cost only");
            mem.release();
            assert_eq!(mem.resident_kib(), 0);
        }
        for bad in [
            "",
            "$argon2id$",
            "plaintext",
            "$argon2id$v=99$m=64,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZg$AAAA",
        ] {
            assert!(!verify_password_in(bad, "pw", &mut mem), "{bad}");
        }
    }

    #[test]
    fn hash_parameters_over_the_limits_are_refused_naming_the_user() {
        let salt = "c2FsdHNhbHRzYWx0c2FsdA";
        let out = "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g";
        for params in [
            "m=4294967295,t=1,p=1",
            "m=1024,t=4294967295,p=1",
            "m=1024,t=1,p=65",
        ] {
            let yaml = format!(
                "users:\n  - name: zed\n    hash: '$argon2id$v=19${params}${salt}${out}'\n"
            );
            let e = Checked::from_yaml(&yaml).unwrap_err().to_string();
            assert!(e.contains("user \"zed\"") && e.contains("limits"), "{e}");
        }
        let ok = format!(
            "users:\n  - name: zed\n    hash: '$argon2id$v=19$m=1048576,t=64,p=64${salt}${out}'\n"
        );
        assert_eq!(
            Checked::from_yaml(&ok).unwrap().common_params,
            (1 << 20, 64, 64)
        );
    }

    #[test]
    fn argon2i_and_argon2d_are_accepted() {
        for alg in [Algorithm::Argon2i, Algorithm::Argon2d] {
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            let phc = Argon2::new(alg, Version::V0x13, Params::new(256, 1, 1, None).unwrap())
                .hash_password(b"pw", &salt)
                .unwrap()
                .to_string();
            assert!(check_hash(&phc).is_ok(), "{phc}");
            assert!(verify_password(&phc, "pw"));
        }
    }

    // Made by Debian's `htpasswd -nbB alice alice-pw` and `htpasswd -nbBC 4 bob bob:pw`.
    const HTPASSWD_ALICE: &str = "$2y$05$eIJMKopcXbvUMphl/SmdYeY0.jKZnyYSfWX/qb.TzPTBr.Yk5Ib.i";
    const HTPASSWD_BOB: &str = "$2y$04$9rbx7hztJ7Qr5qaCgdyd0eCKwsQug4so8vgjlrpI25ZKb.XoBjf5.";

    #[test]
    fn bcrypt_hashes_of_htpasswd_load_and_verify() {
        assert_eq!(check_hash(HTPASSWD_ALICE), Ok(HashKind::Bcrypt { cost: 5 }));
        assert!(verify_password(HTPASSWD_ALICE, "alice-pw"));
        assert!(!verify_password(HTPASSWD_ALICE, "alice-pW"));
        assert!(verify_password(HTPASSWD_BOB, "bob:pw"));
        // $2b$ and $2a$ (other tools) too: the same algorithm for these passwords.
        for version in ["2b", "2a"] {
            let h = HTPASSWD_ALICE.replacen("2y", version, 1);
            assert_eq!(check_hash(&h), Ok(HashKind::Bcrypt { cost: 5 }), "{h}");
            assert!(verify_password(&h, "alice-pw"), "{h}");
        }
        let users = Users::from_yaml(&format!(
            "users:\n  - name: alice\n    hash: '{HTPASSWD_ALICE}'\n    groups: [team-a]\n"
        ))
        .unwrap();
        assert!(users.get("alice").unwrap().kind.is_bcrypt());
    }

    /// bcrypt reads 72 bytes and the crate reads `p\0p` as `p`: such strings pass
    /// (htpasswd's truncation, kept for migrated users) or are refused (NUL), and never
    /// qualify for the argon2id upgrade, which would make them the password.
    #[test]
    fn bcrypt_variants_of_a_password_are_not_upgraded_and_nul_is_refused() {
        let nul = bcrypt::hash("n-pw", 4).unwrap();
        assert!(verify_password(&nul, "n-pw"));
        assert!(
            !verify_password(&nul, "n-pw\0n-pw"),
            "the crate's cycled key"
        );
        assert!(!verify_password(&nul, "n-pw\0"));
        let long = format!("{}secret-suffix", "A".repeat(72));
        let h = bcrypt::hash(&long, 4).unwrap();
        let other = format!("{}WRONG", "A".repeat(72));
        assert!(verify_password(&h, &long) && verify_password(&h, &other));
        assert!(!bcrypt_upgrade_keeps_the_password(&long));
        assert!(!bcrypt_upgrade_keeps_the_password(&other));
        assert!(!bcrypt_upgrade_keeps_the_password(&"A".repeat(72)));
        assert!(bcrypt_upgrade_keeps_the_password(&"A".repeat(71)));
        assert!(!bcrypt_upgrade_keeps_the_password("a\0b"));
        assert!(bcrypt_upgrade_keeps_the_password("alice-pw"));
    }

    /// `rgt_` starts access token secrets: no user or group name may, so a secret given
    /// as a user name is recognised and never logged.
    #[test]
    fn names_never_start_like_a_token_secret() {
        assert!(!is_valid_name("rgt_abc"));
        assert!(is_valid_name("rgt-abc") && is_valid_name("xrgt_"));
        let e = Users::from_yaml(&format!(
            "users:\n  - name: rgt_x\n    hash: '{HTPASSWD_ALICE}'\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("rgt_"), "{e}");
    }

    #[test]
    fn bcrypt_costs_are_capped_naming_the_user() {
        let with_cost = |c: &str| format!("$2y${c}{}", &HTPASSWD_ALICE[6..]);
        assert_eq!(
            check_hash(&with_cost("16")),
            Ok(HashKind::Bcrypt { cost: 16 })
        );
        assert_eq!(
            check_hash(&with_cost("04")),
            Ok(HashKind::Bcrypt { cost: 4 })
        );
        for c in ["17", "31", "03", "99"] {
            let yaml = format!("users:\n  - name: zed\n    hash: '{}'\n", with_cost(c));
            let e = Checked::from_yaml(&yaml).unwrap_err().to_string();
            assert!(
                e.contains("user \"zed\"") && e.contains("outside 4..=16"),
                "{c}: {e}"
            );
        }
    }

    #[test]
    fn other_htpasswd_schemes_are_refused_naming_the_user_and_the_reset() {
        // As `htpasswd -nbm`, `-nbs`, `-nbd`, `-nbp` write them, and the crypt schemes.
        let cases = [
            (
                "$apr1$5HPGtVKd$oLesORB2J1GCX6cW20emy/",
                "Apache MD5 ($apr1$",
            ),
            ("{SHA}GpHWL3ymc5liWkNopqtdSjuqYHM=", "SHA-1 ({SHA}"),
            ("sBQ0fZlnGKuJk", "crypt/DES"),
            ("pw", "plaintext"),
            ("$1$abcdefgh$abcdefghijklmnopqrstuv", "MD5-crypt"),
            ("$6$salt$abc", "SHA-512-crypt"),
            (
                &format!("$2x${}", &HTPASSWD_ALICE[4..]),
                "$2x$ is not bcrypt",
            ),
        ];
        for (hash, words) in cases {
            let yaml = format!("users:\n  - name: carol\n    hash: '{hash}'\n");
            let e = Users::from_yaml(&yaml).unwrap_err().to_string();
            assert!(e.contains("user \"carol\"") && e.contains(words), "{e}");
            assert!(
                e.contains("registry-guard user passwd carol --users-file FILE"),
                "{e}"
            );
        }
        // Loaded from a file: the message names it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        std::fs::write(
            &path,
            format!("users:\n  - name: carol\n    hash: '{}'\n", cases[0].0),
        )
        .unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: user \"carol\"", path.display())),
            "{e}"
        );
    }

    /// Unknown names, argon2 users and bcrypt users run the same work: one of each kind
    /// while both are in the file, the only kind otherwise.
    #[test]
    fn every_check_runs_the_same_kinds_of_work() {
        let argon2 = h("a-pw");
        let kinds = |v: &Verification| {
            let kind = |x: &str| check_hash(x).unwrap();
            (kind(&v.hash), v.pad.as_deref().map(kind))
        };
        let a = HashKind::Argon2 { m: 256, t: 1, p: 1 };
        let b = HashKind::Bcrypt { cost: 5 };
        // Both kinds: each check runs argon2 (the common parameters) and bcrypt (cost 5).
        let both = Users::from_yaml(&format!(
            "users:\n  - name: ann\n    hash: '{argon2}'\n  - name: alice\n    hash: '{HTPASSWD_ALICE}'\n  - name: bob\n    hash: '{HTPASSWD_BOB}'\n  - name: eve\n    hash: '{HTPASSWD_ALICE}'\n"
        ))
        .unwrap();
        let unknown = both.verification(None);
        assert_eq!(kinds(&unknown), (a, Some(b)));
        assert_eq!(
            kinds(&both.verification(both.get("ann").map(|u| &**u))),
            (a, Some(b))
        );
        assert_eq!(
            kinds(&both.verification(both.get("alice").map(|u| &**u))),
            (b, Some(a))
        );
        // The dummies never match, not even an empty password.
        let mut mem = WorkMemory::default();
        for pw in ["", "a-pw", "alice-pw"] {
            assert!(!unknown.run(pw, &mut mem), "{pw:?}");
        }
        assert!(both
            .verification(both.get("alice").map(|u| &**u))
            .run("alice-pw", &mut mem));
        assert!(both
            .verification(both.get("ann").map(|u| &**u))
            .run("a-pw", &mut mem));
        assert!(!both
            .verification(both.get("ann").map(|u| &**u))
            .run("alice-pw", &mut mem));
        // Only bcrypt (just imported): bcrypt only, no argon2 for anyone.
        let only = Users::from_yaml(&format!(
            "users:\n  - name: alice\n    hash: '{HTPASSWD_ALICE}'\n"
        ))
        .unwrap();
        assert_eq!(kinds(&only.verification(None)), (b, None));
        assert_eq!(
            kinds(&only.verification(only.get("alice").map(|u| &**u))),
            (b, None)
        );
        // Only argon2 (as before bcrypt existed): argon2 only.
        let argon =
            Users::from_yaml(&format!("users:\n  - name: ann\n    hash: '{argon2}'\n")).unwrap();
        assert_eq!(argon.dummy_bcrypt, None);
        assert_eq!(kinds(&argon.verification(None)), (a, None));
        assert_eq!(
            kinds(&argon.verification(argon.get("ann").map(|u| &**u))),
            (a, None)
        );
    }

    #[test]
    fn htpasswd_files_parse_with_comments_blank_lines_and_crlf() {
        let text = format!(
            "# made by htpasswd -B\r\n\r\nalice:{HTPASSWD_ALICE}\r\n   \n  # indented comment\nbob:{HTPASSWD_BOB}"
        );
        assert_eq!(
            parse_htpasswd(&text).unwrap(),
            vec![
                ("alice".to_owned(), HTPASSWD_ALICE.to_owned()),
                ("bob".to_owned(), HTPASSWD_BOB.to_owned())
            ]
        );
        assert_eq!(parse_htpasswd("").unwrap(), vec![]);
    }

    #[test]
    fn htpasswd_refusals_name_every_line_and_user() {
        let text = format!(
            "alice:{HTPASSWD_ALICE}\ncarol:$apr1$5HPGtVKd$oLesORB2J1GCX6cW20emy/\ne:ve:{HTPASSWD_BOB}\nno colon here\nalice:{HTPASSWD_BOB}\nbad name:{HTPASSWD_BOB}\ndave:{{SHA}}GpHWL3ymc5liWkNopqtdSjuqYHM=\n"
        );
        let errors = parse_htpasswd(&text).unwrap_err();
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expect = [
            (2, "user \"carol\": hash is Apache MD5"),
            (3, "user \"e\": more than one ':'"),
            (4, "no ':'"),
            (5, "user \"alice\": appears more than once"),
            (6, "user \"bad name\": name must be"),
            (7, "user \"dave\": hash is unsalted SHA-1"),
        ];
        assert_eq!(errors.len(), expect.len(), "{shown:#?}");
        for ((line, words), shown) in expect.iter().zip(&shown) {
            assert!(
                shown.starts_with(&format!("line {line}: ")) && shown.contains(words),
                "{shown}"
            );
        }
        assert!(shown[0].contains("htpasswd -B FILE carol"), "{}", shown[0]);
    }

    #[test]
    fn the_dummy_bcrypt_hash_has_the_most_common_cost() {
        let with_cost = |c: &str| format!("$2y${c}{}", &HTPASSWD_ALICE[6..]);
        let users = Users::from_yaml(&format!(
            "users:\n  - name: a\n    hash: '{}'\n  - name: b\n    hash: '{}'\n  - name: c\n    hash: '{}'\n",
            with_cost("06"),
            with_cost("06"),
            with_cost("05")
        ))
        .unwrap();
        let dummy = users.dummy_bcrypt.clone().unwrap();
        assert_eq!(
            check_hash(&dummy),
            Ok(HashKind::Bcrypt { cost: 6 }),
            "{dummy}"
        );
        assert_ne!(users.verification(None).hash, users.get("a").unwrap().hash);
    }

    #[test]
    fn save_refuses_a_file_that_would_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let file = UserFile {
            users: vec![UserEntry {
                name: "carol".into(),
                hash: h("pw"),
                groups: vec!["a b".into()],
                disabled: false,
            }],
        };
        let e = save(&crate::edit::lock(&path).unwrap(), &file)
            .unwrap_err()
            .to_string();
        assert!(e.contains("user \"carol\"") && e.contains("group"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn save_is_atomic_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.yaml");
        let file = UserFile {
            users: vec![UserEntry {
                name: "alice".into(),
                hash: h("pw"),
                groups: vec![],
                disabled: false,
            }],
        };
        save(&crate::edit::lock(&path).unwrap(), &file).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Users::load(&path).unwrap();
        assert!(verify_password(&back.get("alice").unwrap().hash, "pw"));
        // The file and its lock file, no temporary file.
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "temporary file left behind"
        );
    }
}
