//! `registry-guard token create|list|revoke`: edits the tokens file (under its lock,
//! atomically, other tokens untouched: `crate::edit`) and reads the last-use file the
//! proxy writes.
//!
//! With `--config`, the tokens file is `auth.tokens_file`, `tokens.max_lifetime` applies
//! and the owner is checked against the user file (it must exist and be enabled; a token
//! may not take a user's name). With `--tokens-file` alone none of that is known: the
//! proxy still refuses what it must at load (a name that is a user's) and at each
//! request (an owner gone or disabled, a lifetime past the maximum).

use crate::auth::access_tokens::{self as at, TokenEntry, TokenFile};
use crate::auth::users;
use crate::config::Config;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(super) enum TokenAction {
    /// Create a token and print its secret on stdout, once: only its SHA-256 is stored.
    /// A revoked token's name may be taken again (the old entry is replaced).
    Create {
        /// The token's name: the user name of its Basic credentials.
        name: String,
        /// The user the token acts for: it never gets more than this user may do now.
        #[arg(long)]
        owner: String,
        /// Repository patterns, comma-separated, as in the rules (`team-a/**,public/**`).
        #[arg(long, value_delimiter = ',', required = true)]
        repos: Vec<String>,
        /// Actions, comma-separated: pull, push, delete.
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        /// How long it is good for (`90d`, `12h`, `1y`), or `never` (refused when
        /// tokens.max_lifetime is set).
        #[arg(long)]
        expires: String,
        /// What it is for (one line).
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens: name, owner, scope, created, expires, last use and from where,
    /// state (never secrets or hashes).
    List,
    /// Revoke a token, or every token of a user (--owner). Revoked tokens stay listed.
    Revoke {
        #[arg(required_unless_present = "owner", conflicts_with = "owner")]
        name: Option<String>,
        /// Revoke every token of this user.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Remove a token from the file (revoked or not): its name is free again, for a
    /// user or a new token. `list` no longer shows it.
    Delete { name: String },
}

/// Where the tokens file is and what else is known about it.
struct Place {
    file: PathBuf,
    last_used_file: PathBuf,
    max_lifetime: Option<Duration>,
    /// The user file (path, loaded) when a config was given.
    users: Option<(PathBuf, users::Checked)>,
    /// The directory (`auth.ldap`) of that config: owners not in the user file.
    ldap: Option<crate::config::Ldap>,
    /// The config file, to name it in messages.
    config: Option<PathBuf>,
}

fn place(tokens_file: Option<PathBuf>, config: Option<PathBuf>) -> Result<Place, String> {
    match (tokens_file, config) {
        (Some(file), _) => Ok(Place {
            last_used_file: at::default_last_used_file(&file),
            file,
            max_lifetime: None,
            users: None,
            ldap: None,
            config: None,
        }),
        (None, Some(c)) => {
            let cfg = Config::load(&c).map_err(|e| e.to_string())?;
            let Some(auth) = cfg.auth else {
                return Err(format!(
                    "{}: auth is disabled: there are no access tokens",
                    c.display()
                ));
            };
            let Some(t) = auth.tokens else {
                return Err(format!(
                    "{}: auth.tokens_file: not set: name the tokens file there",
                    c.display()
                ));
            };
            // Parsed and checked, without the dummy hash (only `user` logins need it).
            let text = std::fs::read_to_string(&auth.users_file).map_err(|e| {
                format!(
                    "{}: cannot read the user file: {e}",
                    auth.users_file.display()
                )
            })?;
            let checked = users::Checked::from_yaml(&text)
                .map_err(|e| format!("{}: {e}", auth.users_file.display()))?;
            Ok(Place {
                file: t.file,
                last_used_file: t.last_used_file,
                max_lifetime: t.max_lifetime,
                users: Some((auth.users_file, checked)),
                ldap: auth.ldap,
                config: Some(c),
            })
        }
        (None, None) => Err("give --tokens-file FILE or --config FILE".into()),
    }
}

pub(super) fn command(
    action: TokenAction,
    tokens_file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), String> {
    let p = place(tokens_file, config)?;
    let now = crate::auth::unix_now();
    if let TokenAction::List = action {
        // Read only: no lock, so it works on a file the proxy may only read.
        let file = read(&p.file, std::fs::read_to_string(&p.file), false)?;
        let last_used = at::read_last_used(&p.last_used_file);
        print!("{}", list(&file, &last_used, now, p.max_lifetime));
        return Ok(());
    }
    // Read, changed and written under the file's lock: a revocation another command made
    // meanwhile is never undone (`crate::edit`).
    let edit = crate::edit::lock(&p.file).map_err(|e| format!("{}: {e}", p.file.display()))?;
    let mut file = read(
        &p.file,
        edit.read_to_string(),
        matches!(action, TokenAction::Create { .. }),
    )?;
    let done = match action {
        // Listed above, without the lock.
        TokenAction::List => return Ok(()),
        TokenAction::Create {
            name,
            owner,
            repos,
            actions,
            expires,
            description,
        } => {
            let entry = new_entry(
                &p,
                &file,
                name,
                owner,
                repos,
                actions,
                &expires,
                description,
                now,
            )?;
            let secret = at::new_secret();
            let entry = TokenEntry {
                hash: at::hash_secret(&secret),
                ..entry
            };
            let summary = format!(
                "created token {:?} for {}: {} on {}, expires {}; the secret is printed once, on stdout",
                entry.name,
                entry.owner,
                entry.actions.join(","),
                entry.repos.join(","),
                entry.expires.as_deref().unwrap_or("never")
            );
            file.tokens.retain(|t| t.name != entry.name);
            file.tokens.push(entry);
            at::save(&edit, &file).map_err(|e| e.to_string())?;
            println!("{secret}");
            summary
        }
        TokenAction::Delete { name } => {
            let before = file.tokens.len();
            file.tokens.retain(|t| t.name != name);
            if file.tokens.len() == before {
                return Err(format!("{}: no token {name:?}", p.file.display()));
            }
            at::save(&edit, &file).map_err(|e| e.to_string())?;
            format!(
                "deleted token {name:?}: refused from the next reload of the proxy (a few seconds)"
            )
        }
        TokenAction::Revoke { name, owner } => {
            let revoked = revoke(&mut file, now, |t| match (&name, &owner) {
                (Some(n), _) => t.name == *n,
                (None, Some(o)) => t.owner == *o,
                (None, None) => false,
            });
            if let Some(n) = &name {
                if !file.tokens.iter().any(|t| t.name == *n) {
                    return Err(format!("{}: no token {n:?}", p.file.display()));
                }
                if revoked.is_empty() {
                    eprintln!("token {n:?} was revoked already");
                    return Ok(());
                }
            }
            if revoked.is_empty() {
                eprintln!(
                    "no token of {:?} to revoke in {}",
                    owner.unwrap_or_default(),
                    p.file.display()
                );
                return Ok(());
            }
            at::save(&edit, &file).map_err(|e| e.to_string())?;
            format!(
                "revoked {}: refused from the next reload of the proxy (a few seconds)",
                revoked.join(", ")
            )
        }
    };
    eprintln!("{done}");
    Ok(())
}

/// What the user commands check against the tokens file (with --config): the new user
/// file must load next to it — no name is both a user's and a token's, revoked tokens
/// included — and a name added again must not take over the tokens of an earlier user
/// of that name that are still in force.
pub(super) fn check_user_file(
    tokens_file: &Path,
    users: &users::UserFile,
    added: &[String],
) -> Result<(), String> {
    let file = read(tokens_file, std::fs::read_to_string(tokens_file), true)?;
    if let Some(u) = users
        .users
        .iter()
        .find(|u| file.tokens.iter().any(|t| t.name == u.name))
    {
        return Err(format!(
            "{}: {:?} is an access token's name, and a name is either a user's or a token's (`registry-guard token delete {}` frees it); nothing changed",
            tokens_file.display(),
            u.name,
            u.name
        ));
    }
    for name in added {
        let live: Vec<&str> = file
            .tokens
            .iter()
            .filter(|t| t.owner == *name && t.revoked.is_none())
            .map(|t| t.name.as_str())
            .collect();
        if !live.is_empty() {
            return Err(format!(
                "{}: tokens of an earlier user {name:?} are not revoked ({}): a new user of that name would own them; revoke them first (`registry-guard token revoke --owner {name}`); nothing changed",
                tokens_file.display(),
                live.join(", ")
            ));
        }
    }
    Ok(())
}

/// Revokes every token of `owner`, a user just removed: a name given to someone else
/// later must not bring them back. Returns the names revoked.
pub(super) fn revoke_owner(tokens_file: &Path, owner: &str) -> Result<Vec<String>, String> {
    let edit =
        crate::edit::lock(tokens_file).map_err(|e| format!("{}: {e}", tokens_file.display()))?;
    let mut file = read(tokens_file, edit.read_to_string(), true)?;
    let revoked = revoke(&mut file, crate::auth::unix_now(), |t| t.owner == owner);
    if !revoked.is_empty() {
        at::save(&edit, &file).map_err(|e| e.to_string())?;
    }
    Ok(revoked)
}

/// Marks the tokens `which` selects revoked at `now` (those not revoked yet); returns
/// their names.
fn revoke(file: &mut TokenFile, now: u64, which: impl Fn(&TokenEntry) -> bool) -> Vec<String> {
    let stamp = at::format_time(now);
    let mut revoked = Vec::new();
    for t in &mut file.tokens {
        if which(t) && t.revoked.is_none() {
            t.revoked = Some(stamp.clone());
            revoked.push(t.name.clone());
        }
    }
    revoked
}

/// The tokens file `path` (read as `text`), parsed and checked as loading checks it; a
/// missing one is empty when `create` will make it.
fn read(
    path: &Path,
    text: std::io::Result<String>,
    may_be_missing: bool,
) -> Result<TokenFile, String> {
    match text {
        Ok(text) => {
            let file = at::parse_file(&text).map_err(|e| e.in_file(path).to_string())?;
            at::Tokens::from_file(&file, None).map_err(|e| e.in_file(path).to_string())?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_be_missing => {
            Ok(TokenFile::default())
        }
        Err(e) => Err(format!(
            "{}: cannot read the tokens file: {e}",
            path.display()
        )),
    }
}

/// A checked new entry (its hash still empty). Errors name the file, the token and the
/// field (or option).
#[allow(clippy::too_many_arguments)]
fn new_entry(
    p: &Place,
    file: &TokenFile,
    name: String,
    owner: String,
    repos: Vec<String>,
    actions: Vec<String>,
    expires: &str,
    description: Option<String>,
    now: u64,
) -> Result<TokenEntry, String> {
    let err =
        |field: &str, m: String| format!("{}: token {name:?}: {field}: {m}", p.file.display());
    if file
        .tokens
        .iter()
        .any(|t| t.name == name && t.revoked.is_none())
    {
        return Err(err(
            "name",
            "exists already (revoke it first to reuse the name)".into(),
        ));
    }
    if let Some((users_file, u)) = &p.users {
        if u.get(&name).is_some() {
            return Err(err(
                "name",
                format!(
                    "is a user in {}: a name is either a user or a token",
                    users_file.display()
                ),
            ));
        }
        match u.get(&owner) {
            // Not in the file: a directory user (auth.ldap) may own tokens.
            None => match &p.ldap {
                Some(l) => {
                    if super::Directory::offline(l)?.groups_of(&owner)?.is_none() {
                        return Err(err(
                            "--owner",
                            format!(
                                "no user {owner:?} in {} nor in the directory {}",
                                users_file.display(),
                                l.url
                            ),
                        ));
                    }
                }
                None => {
                    return Err(err(
                        "--owner",
                        format!("no user {owner:?} in {}", users_file.display()),
                    ))
                }
            },
            Some(o) if o.disabled => {
                return Err(err("--owner", format!("user {owner:?} is disabled")))
            }
            Some(_) => {}
        }
    }
    let lifetime = parse_expires(expires).map_err(|m| err("--expires", m))?;
    if let Some(max) = p.max_lifetime {
        let config = p
            .config
            .as_ref()
            .map_or_else(String::new, |c| format!(" in {}", c.display()));
        let max_text = humantime::format_duration(max);
        match lifetime {
            None => {
                return Err(err(
                    "--expires",
                    format!("never is refused: tokens.max_lifetime is {max_text}{config}"),
                ))
            }
            Some(l) if l > max => {
                return Err(err(
                    "--expires",
                    format!("{expires} is longer than tokens.max_lifetime ({max_text}){config}"),
                ))
            }
            Some(_) => {}
        }
    }
    let entry = TokenEntry {
        name: name.clone(),
        owner,
        // A placeholder of the right shape, so the entry is checked whole now.
        hash: at::hash_secret(""),
        repos,
        actions,
        created: at::format_time(now),
        expires: lifetime.map(|l| at::format_time(now.saturating_add(l.as_secs()))),
        description,
        revoked: None,
    };
    entry.check().map_err(|e| e.in_file(&p.file).to_string())?;
    Ok(entry)
}

/// `--expires`: a duration, or `never` (None).
fn parse_expires(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "never" {
        return Ok(None);
    }
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 90d or 12h, nor never: {e}"))?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1m".into());
    }
    Ok(Some(d))
}

/// PURE: the `token list` table.
fn list(
    file: &TokenFile,
    last: &std::collections::BTreeMap<String, at::LastUseEntry>,
    now: u64,
    max_lifetime: Option<Duration>,
) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{:<20} {:<12} {:<14} {:<28} {:<20} {:<20} {:<20} {:<15} {}\n",
        "NAME", "OWNER", "ACTIONS", "REPOS", "CREATED", "EXPIRES", "LAST USED", "FROM", "STATE"
    );
    let mut tokens: Vec<&TokenEntry> = file.tokens.iter().collect();
    tokens.sort_by(|a, b| (&a.owner, &a.name).cmp(&(&b.owner, &b.name)));
    for e in tokens {
        // The expiry in force: `expires`, cut to `created + tokens.max_lifetime`.
        let mut expires = e.expires.clone().unwrap_or_else(|| "never".to_owned());
        let state = match e.check() {
            Err(_) => "invalid".to_owned(),
            Ok(mut t) => {
                if at::apply_max_lifetime(&mut t, max_lifetime) {
                    expires = t.expires.map_or(expires, at::format_time);
                }
                match t.in_force(now) {
                    Ok(()) => "active".to_owned(),
                    Err(at::Refusal::Revoked) => {
                        format!("revoked {}", e.revoked.as_deref().unwrap_or(""))
                    }
                    Err(r) => r.as_str().to_owned(),
                }
            }
        };
        let used = last.get(&e.name);
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:<14} {:<28} {:<20} {:<20} {:<20} {:<15} {}",
            e.name,
            e.owner,
            e.actions.join(","),
            e.repos.join(","),
            e.created,
            expires,
            used.map_or("never", |u| u.at.as_str()),
            used.map_or("-", |u| u.from.as_str()),
            state
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_takes_durations_or_never() {
        assert_eq!(
            parse_expires("90d").unwrap(),
            Some(Duration::from_secs(90 * 86400))
        );
        assert_eq!(parse_expires("never").unwrap(), None);
        assert!(parse_expires("soon").unwrap_err().contains("\"soon\""));
        assert!(parse_expires("10s").unwrap_err().contains("at least"));
    }

    #[test]
    fn list_shows_state_and_last_use_never_hashes() {
        let now = 1_790_000_000;
        let mk = |name: &str, expires: Option<u64>, revoked: bool| TokenEntry {
            name: name.into(),
            owner: "alice".into(),
            hash: at::hash_secret("s"),
            repos: vec!["team-a/**".into()],
            actions: vec!["pull".into()],
            created: at::format_time(now - 100),
            expires: expires.map(at::format_time),
            description: None,
            revoked: revoked.then(|| at::format_time(now - 10)),
        };
        let file = TokenFile {
            tokens: vec![
                mk("a-live", Some(now + 100), false),
                mk("b-old", Some(now - 1), false),
                mk("c-gone", None, true),
                mk("d-never", None, false),
            ],
        };
        let mut last = std::collections::BTreeMap::new();
        last.insert(
            "a-live".to_owned(),
            at::LastUseEntry {
                at: at::format_time(now - 5),
                from: "10.1.2.3".into(),
            },
        );
        let text = list(&file, &last, now, None);
        let line = |n: &str| text.lines().find(|l| l.starts_with(n)).unwrap().to_owned();
        assert!(line("a-live").contains("10.1.2.3") && line("a-live").ends_with("active"));
        assert!(line("b-old").ends_with("expired"), "{text}");
        assert!(line("c-gone").contains("revoked 20"), "{text}");
        assert!(line("d-never").ends_with("active"), "{text}");
        assert!(!text.contains("sha256"), "{text}");
        // Under a maximum lifetime of 50 s, d-never (created 100 s ago) is expired.
        let capped = list(&file, &last, now, Some(Duration::from_secs(50)));
        assert!(
            capped
                .lines()
                .any(|l| l.starts_with("d-never") && l.ends_with("expired")),
            "{capped}"
        );
    }
}
