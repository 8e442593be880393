//! The user file: YAML, one entry per user with an argon2 PHC hash, optional groups and
//! an optional `disabled` flag.
//!
//! ```yaml
//! users:
//!   - name: alice
//!     hash: $argon2id$v=19$m=19456,t=2,p=1$...
//!     groups: [team-a]
//! ```
//!
//! Loading checks every entry and names the user it refuses: a hash that is not an
//! argon2 PHC string (a plaintext password above all), a duplicate name, a bad name.
//! Editing (`registry-guard user ...`) rewrites the whole file atomically (temporary
//! file + rename, mode 0600), other users untouched.

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
    fn new(user: Option<&str>, message: impl Into<String>) -> Self {
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
    /// The PHC string, as in the file.
    pub hash: String,
    pub groups: Vec<String>,
    pub disabled: bool,
}

/// The loaded user file plus the dummy hash unknown names are checked against.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, Arc<User>>,
    /// A hash of a random password with the parameters most users have, so an unknown
    /// name costs the same argon2 work as a known one.
    pub dummy_hash: String,
}

/// A user file parsed and checked, before the dummy hash (the only costly part) is made.
#[derive(Debug)]
pub struct Checked {
    by_name: HashMap<String, Arc<User>>,
    /// (m, t, p) most users have (the defaults for an empty file).
    pub common_params: (u32, u32, u32),
}

impl Checked {
    pub fn from_yaml(text: &str) -> Result<Checked, UsersError> {
        let file: UserFile = if text.trim().is_empty() {
            UserFile::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| UsersError::new(None, e.to_string()))?
        };
        Checked::from_file(file)
    }

    pub fn from_file(file: UserFile) -> Result<Checked, UsersError> {
        let mut by_name = HashMap::with_capacity(file.users.len());
        let mut param_counts: HashMap<(u32, u32, u32), usize> = HashMap::new();
        for e in file.users {
            let who = Some(e.name.as_str());
            if !is_valid_name(&e.name) {
                return Err(UsersError::new(
                    who,
                    format!("name must be 1 to {MAX_NAME} of letters, digits and ._@-"),
                ));
            }
            let params = check_hash(&e.hash).map_err(|m| UsersError::new(who, m))?;
            for g in &e.groups {
                if !is_valid_name(g) {
                    return Err(UsersError::new(
                        who,
                        format!("group {g:?} must be letters, digits and ._@-"),
                    ));
                }
            }
            *param_counts
                .entry((params.m_cost(), params.t_cost(), params.p_cost()))
                .or_default() += 1;
            if by_name.contains_key(&e.name) {
                return Err(UsersError::new(who, "appears more than once"));
            }
            by_name.insert(
                e.name.clone(),
                Arc::new(User {
                    name: e.name,
                    hash: e.hash,
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
        Ok(Checked {
            by_name,
            common_params,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<User>> {
        self.by_name.get(name)
    }
}

/// User names: letters, digits and `._@-`; no `:` (Basic splits there), no glob
/// characters (rules substitute `${user}`), nothing a log could misread.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'@' | b'-'))
}

/// Checks a PHC string is argon2 (id, i or d) with usable parameters.
pub fn check_hash(phc: &str) -> Result<Params, String> {
    if !phc.starts_with('$') {
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
    Ok(params)
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|e| UsersError {
            file: Some(path.to_owned()),
            user: None,
            message: format!("cannot read the user file: {e}"),
        })?;
        Users::from_yaml(&text).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    pub fn from_yaml(text: &str) -> Result<Users, UsersError> {
        Users::from_checked(Checked::from_yaml(text)?)
    }

    pub fn from_file(file: UserFile) -> Result<Users, UsersError> {
        Users::from_checked(Checked::from_file(file)?)
    }

    /// The checked entries plus a dummy hash with their most common parameters.
    fn from_checked(checked: Checked) -> Result<Users, UsersError> {
        let (m, t, p) = checked.common_params;
        let dummy_hash = hash_password(&random_token(), m, t, p)
            .map_err(|e| UsersError::new(None, format!("cannot make the dummy hash: {e}")))?;
        Ok(Users {
            by_name: checked.by_name,
            dummy_hash,
        })
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

/// Verifies a password against a PHC string (algorithm and parameters from the string).
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

/// [`verify_password`] with the caller's working memory. The output comparison is
/// constant-time (`subtle`); a malformed PHC string is simply not a match.
pub fn verify_password_in(phc: &str, password: &str, memory: &mut WorkMemory) -> bool {
    use subtle::ConstantTimeEq;
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

/// Writes a user file atomically: a temporary file in the same folder, mode 0600, then
/// rename over the old one. A file that would not load (a bad group name, say) is refused
/// and nothing is written: the running proxy would keep its old snapshot and every later
/// edit would fail.
pub fn save(path: &Path, file: &UserFile) -> Result<(), UsersError> {
    Users::from_file(UserFile {
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
    write_private(
        path,
        b"# registry-guard user file; edit with `registry-guard user ...`\n",
        text.as_bytes(),
    )
    .map_err(|e| err(format!("cannot write the user file: {e}")))
}

/// Replaces `path` atomically with `header` + `text`: a temporary file in the same
/// folder, mode 0600, fsync'd, renamed over the old one, the folder fsync'd. (The user
/// file, the tokens file and the tokens' last-use file are written this way.)
pub fn write_private(path: &Path, header: &[u8], text: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(header)?;
        f.write_all(text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
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
            ("users:\n  - name: carol\n    hash: '$2y$05$abcdefghijklmnopqrstuu'\n".to_string(), "carol", "PHC"),
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
        let e = save(&path, &file).unwrap_err().to_string();
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
        save(&path, &file).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Users::load(&path).unwrap();
        assert!(verify_password(&back.get("alice").unwrap().hash, "pw"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file left behind"
        );
    }
}
