//! Command line: `serve`, `check`, `explain`, `hash-password`,
//! `user add|passwd|del|list|import-htpasswd`, `token create|list|revoke|delete` (in `token.rs`)
//! and `audit verify|show|keygen`.
//! Parses arguments, runs the command and maps failures to exit codes
//! (64: bad configuration or usage, 69: cannot serve, 1: other failures).

use crate::auth::users;
use crate::config::{Config, ConfigError, Tls};
use crate::server::{ServeError, Server};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod token;

/// An authenticating, authorizing TLS proxy for Docker/OCI registries.
#[derive(Debug, Parser)]
#[command(name = "registry-guard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve: terminate TLS and proxy the Registry HTTP API v2 to the upstream.
    Serve {
        /// The YAML configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Once listening, write the bound address (`ip:port`) to this file; useful with
        /// `listen: 127.0.0.1:0`.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Check a configuration: keys, values, certificates, key files, secrets, user file.
    /// With --against OLD, also print what changes from OLD to it for every user, group
    /// and anonymous on every repository (`bob: +push team-a/app`), and which changed
    /// settings a running proxy only takes at a restart.
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// The configuration in force, to compare with.
        #[arg(long, value_name = "OLD")]
        against: Option<PathBuf>,
        /// The repositories to compare on, one per line (default: the upstream's
        /// catalog, read with the new configuration's upstream settings).
        #[arg(long, value_name = "FILE", requires = "against")]
        repos: Option<PathBuf>,
    },
    /// Explain what the rules decide for a request, with the same code as serving.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The user making the request (groups come from the user file, or for a name
        /// not in it from the directory of auth.ldap, looked up with its service account),
        /// or an access token's name (its owner's rules, cut down to its scope).
        #[arg(
            long,
            required_unless_present = "anonymous",
            conflicts_with = "anonymous"
        )]
        user: Option<String>,
        /// The request carries no credentials.
        #[arg(long)]
        anonymous: bool,
        /// GET, HEAD, PUT, POST, PATCH or DELETE.
        method: String,
        /// The request path, with its query if any (`/v2/alice/app/manifests/latest`).
        path: String,
    },
    /// Verify or read audit files; make the audit key.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Read a password (stdin, or a prompt without echo on a terminal) and print its
    /// argon2id PHC hash for the user file.
    HashPassword {
        #[command(flatten)]
        params: HashParams,
    },
    /// Edit or list the user file (atomically: other users are left untouched).
    User {
        #[command(subcommand)]
        action: UserAction,
        /// The user file to edit (default: auth.users_file of --config).
        #[arg(long, global = true, conflicts_with = "config")]
        users_file: Option<PathBuf>,
        /// Take the user file from this configuration's auth.users_file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Access tokens for CI and deploy jobs: create (prints the secret once), list,
    /// revoke. Used as Basic credentials: the token's name and its secret.
    Token {
        #[command(subcommand)]
        action: token::TokenAction,
        /// The tokens file to edit (with --config: auth.tokens_file, and the owner is
        /// checked against the user file and tokens.max_lifetime applies).
        #[arg(long, global = true, conflicts_with = "config")]
        tokens_file: Option<PathBuf>,
        /// Take the tokens file, the user file and tokens.max_lifetime from this
        /// configuration.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check JSON and the keyed hash chain across the files, in the order given (oldest
    /// first); print counts and the first broken place; exit 1 when broken. The first
    /// record must start the chain (genesis), or continue from --start. Files of several
    /// replicas (told apart by the `instance` of their first record) are verified as one
    /// chain per replica.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The audit key (audit.key_file) the files were written with.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "unkeyed",
            conflicts_with = "unkeyed"
        )]
        key_file: Option<PathBuf>,
        /// Files from before the keyed chain (plain SHA-256: anyone can recompute it).
        #[arg(long)]
        unkeyed: bool,
        /// Where the first file continues the chain: `SEQ:HASH`, e.g. the `chain ends at`
        /// of the file before it, or a checkpoint from the log; `INSTANCE:SEQ:HASH` for
        /// one replica's files among several. Repeatable (once per replica).
        #[arg(long, value_name = "[INSTANCE:]SEQ:HASH")]
        start: Vec<ReplicaPosition>,
        /// A checkpoint from the proxy's log (`audit checkpoint checkpoint=SEQ:HASH`): the
        /// files must reach it and match it, or their end was cut; `INSTANCE:SEQ:HASH`
        /// among several replicas. Repeatable.
        #[arg(long = "checkpoint", value_name = "[INSTANCE:]SEQ:HASH")]
        checkpoints: Vec<ReplicaPosition>,
    },
    /// Print the records as a table (or JSON Lines), oldest first; the records of several
    /// replicas' files are merged by time, with an INSTANCE column.
    Show {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// `table` (default) or `jsonl` (the records as they are in the file).
        #[arg(long, default_value = "table", value_parser = ["table", "jsonl"])]
        format: String,
        /// After the records there are, wait for more in the last file and print them as
        /// they come (a new, shorter file there is read from its start). Stop with Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// Count deletes, pushes, pulls, logins, failed logins, refusals and failures by user
    /// and by repository, for a period (--since/--until) and the other filters of `show`.
    Stats {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        /// `table` (default) or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Make a new audit key (32 random bytes, hex) in FILE, mode 0600, for
    /// audit.key_file. Never replaces an existing file.
    Keygen { file: PathBuf },
}

/// What `audit show` and `audit stats` select.
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only records of these kinds: delete, push, pull, login (repeatable, or
    /// comma-separated).
    #[arg(long, value_delimiter = ',')]
    kind: Vec<String>,
    /// Only this user's records: the user's own and those of the user's access tokens
    /// (or one token's, by its name).
    #[arg(long)]
    user: Option<String>,
    /// Only records of requests made with an access token of this owner.
    #[arg(long)]
    owner: Option<String>,
    /// Only this repository's records.
    #[arg(long)]
    repo: Option<String>,
    /// Only records of this digest (or of this digest as the reference).
    #[arg(long)]
    digest: Option<String>,
    /// Only records of this client address, or of a network (CIDR).
    #[arg(long)]
    address: Option<String>,
    /// Only records at or after this time (RFC 3339, e.g. 2026-11-23T10:00:00Z, or a
    /// date 2026-11-23).
    #[arg(long)]
    since: Option<String>,
    /// Only records before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    /// The filter, or what is wrong with an argument (naming it).
    fn build(&self) -> Result<crate::audit::query::Filter, String> {
        use crate::audit::record::normalize_since;
        let kinds = self
            .kind
            .iter()
            .map(|k| {
                crate::audit::Kind::parse(k)
                    .ok_or_else(|| format!("--kind {k:?}: one of delete, push, pull, login"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let address = match &self.address {
            None => None,
            Some(a) => Some(
                a.parse::<ipnet::IpNet>()
                    .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("--address {a:?}: an IP address or a network (CIDR)"))?,
            ),
        };
        let time = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(normalize_since)
                .transpose()
                .map_err(|e| format!("{flag}: {e}"))
        };
        Ok(crate::audit::query::Filter {
            kinds,
            user: self.user.clone(),
            owner: self.owner.clone(),
            repo: self.repo.clone(),
            digest: self.digest.clone(),
            address,
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
        })
    }
}

/// A name, repository or reference as a table shows it: printable ASCII without spaces
/// as it is, anything else escaped (`\u{200b}`), so that no record can pass for another
/// in a terminal (a trailing space, a zero-width or look-alike character, a bidi override).
fn plain(text: &str) -> std::borrow::Cow<'_, str> {
    if text.bytes().all(|b| b.is_ascii_graphic()) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_ascii_graphic() {
                    c.to_string()
                } else {
                    format!("\\u{{{:x}}}", c as u32)
                }
            })
            .collect(),
    )
}

/// One row of `audit show`'s table, after TIME (and INSTANCE).
fn show_row(entry: &crate::audit::Entry) -> String {
    let r = match entry {
        crate::audit::Entry::Request(r) => r,
        crate::audit::Entry::Event(e) => {
            // The writer's own records: no request, no repository.
            return format!(
                "{:<8} {:<12} {:<15} {:<7} {:<28} {:<20} {}",
                e.phase.as_str(),
                plain(e.user.as_deref().unwrap_or("-")),
                "-",
                "-",
                "-",
                "-",
                e.reason
            );
        }
    };
    let phase = match (r.phase, r.target) {
        (crate::audit::Phase::Access, t) => t.kind().as_str(),
        (p, _) => p.as_str(),
    };
    let outcome = r
        .outcome
        .and_then(|o| serde_json::to_value(o).ok())
        .and_then(|v| v.as_str().map(str::to_owned));
    let status = r.upstream_status.map_or("-".to_owned(), |s| s.to_string());
    let mut detail = outcome.unwrap_or_else(|| r.decision.as_str().to_owned());
    if let Some(d) = &r.digest {
        if *d != r.reference {
            detail.push_str(&format!(" digest={d}"));
        }
    }
    if let Some(t) = &r.tags {
        detail.push_str(&format!(
            " tags=[{}]{}",
            t.join(","),
            if r.tags_complete == Some(false) {
                "+?"
            } else {
                ""
            }
        ));
    }
    if let Some(owner) = &r.owner {
        detail.push_str(&format!(" token-of={}", plain(owner)));
    }
    if r.phase == crate::audit::Phase::Denied || r.outcome == Some(crate::audit::Outcome::Denied) {
        detail.push_str(&format!(" ({})", r.reason));
    }
    // By characters: a hand-edited file may hold any UTF-8, and a byte slice inside a
    // character panics.
    let reference = plain(&r.reference);
    let reference = if reference.chars().count() > 20 {
        format!("{}…", reference.chars().take(19).collect::<String>())
    } else {
        reference.into_owned()
    };
    format!(
        "{:<8} {:<12} {:<15} {:<7} {:<28} {:<20} {}",
        phase,
        plain(&r.user),
        r.client,
        status,
        plain(&r.repo),
        reference,
        detail
    )
}

/// The selected records of `contents` (file name, bytes): (time, instance, entry, line),
/// merged by time across files (a stable sort keeps each file's order for equal times).
fn selected(
    contents: &[(String, Vec<u8>)],
    filter: &crate::audit::query::Filter,
) -> Vec<(String, String, crate::audit::Entry, Vec<u8>)> {
    let mut rows = Vec::new();
    for (name, c) in contents {
        for (i, line) in c.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match crate::audit::Entry::parse(line) {
                Ok(e) => {
                    if filter.matches(&e) {
                        rows.push((
                            e.time().to_owned(),
                            e.instance().unwrap_or("-").to_owned(),
                            e,
                            line.to_vec(),
                        ));
                    }
                }
                Err(_) => eprintln!("{name}:{}: not an audit record", i + 1),
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// Prints rows of `audit show` (table rows with or without INSTANCE, or the lines).
fn print_rows(rows: &[(String, String, crate::audit::Entry, Vec<u8>)], jsonl: bool, several: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for (time, instance, entry, line) in rows {
        let _ = if jsonl {
            out.write_all(line).and_then(|()| out.write_all(b"\n"))
        } else if several {
            writeln!(out, "{time:<24} {instance:<16} {}", show_row(entry))
        } else {
            writeln!(out, "{time:<24} {}", show_row(entry))
        };
    }
    let _ = out.flush();
}

/// `audit show --follow`: polls `file` for complete lines after `from` and prints the
/// selected ones; a file shorter than what was read (rotated) is read from its start.
fn follow(
    file: &std::path::Path,
    mut from: u64,
    filter: &crate::audit::query::Filter,
    jsonl: bool,
    several: bool,
) -> ExitCode {
    use std::io::{Read, Seek, SeekFrom};
    let mut partial: Vec<u8> = Vec::new();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(250));
        let Ok(mut f) = std::fs::File::open(file) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < from {
            (from, partial) = (0, Vec::new());
        }
        if len == from || f.seek(SeekFrom::Start(from)).is_err() {
            continue;
        }
        let mut new = Vec::new();
        if f.take(len - from).read_to_end(&mut new).is_err() {
            continue;
        }
        from += new.len() as u64;
        partial.extend_from_slice(&new);
        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let complete: Vec<u8> = partial.drain(..=end).collect();
        let rows = selected(&[(file.display().to_string(), complete)], filter);
        print_rows(&rows, jsonl, several);
    }
}

/// A chain position, for one replica's files when it names an instance.
#[derive(Debug, Clone)]
struct ReplicaPosition {
    instance: Option<String>,
    at: crate::audit::Position,
}

impl std::str::FromStr for ReplicaPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // Instance ids hold no colon, so two colons mean INSTANCE:SEQ:HASH.
        match s.split_once(':') {
            Some((i, rest)) if rest.contains(':') => {
                crate::config::check_instance(i)?;
                Ok(ReplicaPosition {
                    instance: Some(i.to_owned()),
                    at: rest.parse()?,
                })
            }
            _ => Ok(ReplicaPosition {
                instance: None,
                at: s.parse()?,
            }),
        }
    }
}

#[derive(Debug, clap::Args)]
struct HashParams {
    /// argon2 memory cost in KiB.
    #[arg(long, default_value_t = users::DEFAULT_M_COST)]
    m_cost: u32,
    /// argon2 passes.
    #[arg(long, default_value_t = users::DEFAULT_T_COST)]
    t_cost: u32,
    /// argon2 lanes.
    #[arg(long, default_value_t = users::DEFAULT_P_COST)]
    p_cost: u32,
}

#[derive(Debug, Subcommand)]
enum UserAction {
    /// Add a user; the password is read from stdin or prompted for.
    Add {
        name: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        #[command(flatten)]
        params: HashParams,
    },
    /// Set a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        params: HashParams,
    },
    /// Remove a user.
    Del { name: String },
    /// List users, their groups and whether they are disabled (never hashes). With
    /// --config naming a directory (auth.ldap), also where each identity comes from:
    /// `file`, `file, shadows a directory user`, and the directory for every other name.
    List,
    /// Import the users of an htpasswd file (bcrypt: `htpasswd -B`), other users left
    /// untouched. Any other line (MD5 `$apr1$`, `{SHA}`, crypt, plaintext, a bad name)
    /// refuses the whole import, every such line listed. The hashes become argon2id at
    /// each user's first login (auth.upgrade_hashes).
    ImportHtpasswd {
        /// The htpasswd file.
        file: PathBuf,
        /// Set the hash of users already in the user file from the htpasswd file
        /// (their groups stay); without it, such a name refuses the import.
        #[arg(long)]
        replace: bool,
        /// Groups of the users it adds, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
}

pub const EXIT_CONFIG: u8 = 64;
pub const EXIT_UNAVAILABLE: u8 = 69;
/// A shutdown that did not finish in time (`server::SHUTDOWN_MARGIN`): the process was
/// ended by its watchdog (EX_SOFTWARE).
pub const EXIT_SHUTDOWN_HUNG: u8 = 70;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, addr_file } => serve(config, addr_file),
        Command::Check {
            config,
            against,
            repos,
        } => check(config, against, repos),
        Command::Explain {
            config,
            user,
            anonymous: _,
            method,
            path,
        } => match explain(&config, user.as_deref(), &method, &path) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_CONFIG, &e),
        },
        Command::Audit { action } => audit_command(action),
        Command::HashPassword { params } => {
            match read_password("Password: ").and_then(|pw| hash(&pw, &params)) {
                Ok(phc) => {
                    println!("{phc}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_CONFIG, &e),
            }
        }
        Command::User {
            action,
            users_file,
            config,
        } => match user_command(action, users_file, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_CONFIG, &e),
        },
        Command::Token {
            action,
            tokens_file,
            config,
        } => match token::command(action, tokens_file, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_CONFIG, &e),
        },
    }
}

fn hash(password: &str, p: &HashParams) -> Result<String, String> {
    if password.is_empty() {
        return Err("refusing an empty password".into());
    }
    users::hash_password(password, p.m_cost, p.t_cost, p.p_cost)
}

/// A password from a terminal prompt (no echo, asked twice) or the first line of stdin.
fn read_password(prompt: &str) -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password(prompt)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let b = rpassword::prompt_password("Again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if a != b {
            return Err("the two passwords differ".into());
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
    }
}

fn user_command(
    action: UserAction,
    users_file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), String> {
    let mut ldap = None;
    // With --config: the tokens file, which the user file must agree with.
    let mut tokens_file = None;
    let path = match (users_file, config) {
        (Some(f), _) => f,
        (None, Some(c)) => match Config::load(&c).map_err(|e| e.to_string())?.auth {
            Some(a) => {
                ldap = a.ldap;
                tokens_file = a.tokens.map(|t| t.file);
                a.users_file
            }
            None => {
                return Err(format!(
                    "{}: auth is disabled: there is no user file",
                    c.display()
                ))
            }
        },
        (None, None) => return Err("give --users-file FILE or --config FILE".into()),
    };
    if let UserAction::List = action {
        // Read only: no lock, so it works on a file the proxy may only read.
        let file = read_user_file(&path, &action, std::fs::read_to_string(&path))?;
        return list_users(&file, ldap.as_ref());
    }
    // A password is asked (and hashed) before the file is locked, so that a prompt never
    // holds off the other writers (the proxy's hash upgrades wait 5 s at most); a first
    // pass without the lock refuses before asking what it can (a name already there).
    let mut asked = None;
    if matches!(action, UserAction::Add { .. } | UserAction::Passwd { .. }) {
        let mut file = read_user_file(&path, &action, std::fs::read_to_string(&path))?;
        change_users(&path, &mut file, &action, &mut asked)?;
    }
    // Read, changed and written under the file's lock: an edit another writer made (a
    // hash upgrade, another command) is neither lost nor undone (`crate::edit`).
    let edit = crate::edit::lock(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut file = read_user_file(&path, &action, edit.read_to_string())?;
    let before: Vec<String> = file.users.iter().map(|u| u.name.clone()).collect();
    let done = change_users(&path, &mut file, &action, &mut asked)?;
    let added: Vec<String> = file
        .users
        .iter()
        .filter(|u| !before.contains(&u.name))
        .map(|u| u.name.clone())
        .collect();
    let removed: Vec<&String> = before
        .iter()
        .filter(|n| !file.users.iter().any(|u| u.name == **n))
        .collect();
    if let Some(t) = &tokens_file {
        token::check_user_file(t, &file, &added)?;
    }
    // Say what was done only once it is on disk.
    users::save(&edit, &file).map_err(|e| e.to_string())?;
    drop(edit);
    eprintln!("{done}");
    // A removed user's tokens end with the user, for good: the name may come back as
    // someone else.
    if let Some(t) = &tokens_file {
        for name in removed {
            let revoked = token::revoke_owner(t, name)?;
            if !revoked.is_empty() {
                eprintln!(
                    "revoked the tokens of {name:?} in {}: {}",
                    t.display(),
                    revoked.join(", ")
                );
            }
        }
    } else if !removed.is_empty() {
        eprintln!("without --config the tokens file is not known: revoke the tokens of the removed user with `registry-guard token revoke --owner NAME --config ...` (the proxy refuses them already: their owner is gone)");
    }
    Ok(())
}

/// The user file as `action` may edit it: parsed once and checked as loading checks it,
/// so an edit never writes out a file that would not load, and what is edited is exactly
/// what was checked. A missing file is empty for `add` and `import-htpasswd`.
fn read_user_file(
    path: &std::path::Path,
    action: &UserAction,
    text: std::io::Result<String>,
) -> Result<users::UserFile, String> {
    // The user whose entry the action replaces or removes: a refused hash of theirs
    // (an htpasswd MD5, say) must not stop `user passwd` from resetting it.
    let target = match action {
        UserAction::Passwd { name, .. } | UserAction::Del { name } => Some(name.as_str()),
        _ => None,
    };
    match text {
        Ok(text) => {
            let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
            // An empty file is an empty list, as `Users::from_yaml` reads it.
            let file = users::parse_file(&text).map_err(|e| bad(&e))?;
            users::Checked::from_file(users::UserFile {
                users: file
                    .users
                    .iter()
                    .filter(|u| Some(u.name.as_str()) != target)
                    .cloned()
                    .collect(),
            })
            .map_err(|e| bad(&e))?;
            Ok(file)
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && matches!(
                    action,
                    UserAction::Add { .. } | UserAction::ImportHtpasswd { .. }
                ) =>
        {
            Ok(users::UserFile::default())
        }
        Err(e) => Err(format!(
            "{}: cannot read the user file: {e}",
            path.display()
        )),
    }
}

/// `user list`: names, groups, disabled; with a directory, where each identity comes
/// from (a file user the directory also has is shadowed by the file's entry).
fn list_users(file: &users::UserFile, ldap: Option<&crate::config::Ldap>) -> Result<(), String> {
    let directory = ldap.map(Directory::offline).transpose()?;
    for u in &file.users {
        let groups = if u.groups.is_empty() {
            "-".to_owned()
        } else {
            u.groups.join(",")
        };
        let source = match &directory {
            None => String::new(),
            Some(d) => match d.groups_of(&u.name) {
                Ok(Some(_)) => "\tfile (shadows a directory user)".to_owned(),
                Ok(None) => "\tfile".to_owned(),
                Err(e) => format!("\tfile (directory not asked: {e})"),
            },
        };
        println!(
            "{}\t{groups}{}{source}",
            u.name,
            if u.disabled { "\tdisabled" } else { "" }
        );
    }
    if let Some(l) = ldap {
        println!(
            "*\t(groups from the directory)\tdirectory {} (user_base {}, user_filter {})",
            l.url, l.user_base, l.user_filter
        );
    }
    Ok(())
}

/// Makes `action`'s change to `file`; says what it did. The new password is asked once:
/// `asked` keeps its hash for the pass made under the lock.
fn change_users(
    path: &std::path::Path,
    file: &mut users::UserFile,
    action: &UserAction,
    asked: &mut Option<String>,
) -> Result<String, String> {
    let find = |file: &users::UserFile, name: &str| file.users.iter().position(|u| u.name == name);
    let mut new_hash = |prompt: String, params: &HashParams| -> Result<String, String> {
        if let Some(h) = asked {
            return Ok(h.clone());
        }
        let h = hash(&read_password(&prompt)?, params)?;
        *asked = Some(h.clone());
        Ok(h)
    };
    match action {
        // Listed by `user_command` without an edit.
        UserAction::List => Ok(String::new()),
        UserAction::Add {
            name,
            groups,
            params,
        } => {
            if !users::is_valid_name(name) {
                return Err(format!(
                    "user {name:?}: names are 1 to {} letters, digits and ._@-, not starting with rgt_",
                    users::MAX_NAME
                ));
            }
            if find(file, name).is_some() {
                return Err(format!("user {name:?} already exists (use `user passwd`)"));
            }
            let hash = new_hash(format!("Password for {name}: "), params)?;
            file.users.push(users::UserEntry {
                name: name.clone(),
                hash,
                groups: groups.clone(),
                disabled: false,
            });
            Ok(format!("added user {name:?} to {}", path.display()))
        }
        UserAction::Passwd { name, params } => {
            let i = find(file, name)
                .ok_or_else(|| format!("no user {name:?} in {}", path.display()))?;
            file.users[i].hash = new_hash(format!("New password for {name}: "), params)?;
            Ok(format!("changed the password of {name:?}"))
        }
        UserAction::Del { name } => {
            let i = find(file, name)
                .ok_or_else(|| format!("no user {name:?} in {}", path.display()))?;
            file.users.remove(i);
            Ok(format!("removed user {name:?}"))
        }
        UserAction::ImportHtpasswd {
            file: from,
            replace,
            groups,
        } => Ok(import_htpasswd(file, from, *replace, groups.clone())?
            + &format!(" into {}", path.display())),
    }
}

/// Adds the users of the htpasswd file `from` to `file` (replacing the hashes of those
/// already there with `replace`); says what it did. Nothing changes on any refusal.
fn import_htpasswd(
    file: &mut users::UserFile,
    from: &std::path::Path,
    replace: bool,
    groups: Vec<String>,
) -> Result<String, String> {
    let text = std::fs::read(from)
        .map_err(|e| format!("{}: cannot read the htpasswd file: {e}", from.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| format!("{}: the htpasswd file is not UTF-8 text", from.display()))?;
    let entries = users::parse_htpasswd(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("\n  {e}")).collect();
        format!(
            "{}: nothing imported: {} line(s) refused (only bcrypt hashes, `htpasswd -B`, are imported):{}",
            from.display(),
            errors.len(),
            lines.concat()
        )
    })?;
    if entries.is_empty() {
        return Err(format!("{}: no user in the htpasswd file", from.display()));
    }
    let existing: Vec<&str> = entries
        .iter()
        .filter(|(n, _)| file.users.iter().any(|u| u.name == *n))
        .map(|(n, _)| n.as_str())
        .collect();
    if !existing.is_empty() && !replace {
        return Err(format!(
            "{}: nothing imported: already in the user file: {} (give --replace to set their hashes from the htpasswd file, keeping their groups)",
            from.display(),
            existing.join(", ")
        ));
    }
    let replaced = existing.len();
    for (name, hash) in entries.iter().cloned() {
        match file.users.iter_mut().find(|u| u.name == name) {
            Some(u) => u.hash = hash,
            None => file.users.push(users::UserEntry {
                name,
                hash,
                groups: groups.clone(),
                disabled: false,
            }),
        }
    }
    Ok(format!(
        "imported {} user(s) from {} ({} added, {replaced} replaced)",
        entries.len(),
        from.display(),
        entries.len() - replaced
    ))
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("registry-guard: {e}");
    ExitCode::from(code)
}

fn serve(path: PathBuf, addr_file: Option<PathBuf>) -> ExitCode {
    let cfg = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &e),
    };
    crate::log::init(cfg.log.format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_UNAVAILABLE, &format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async move {
        let server = match Server::bind(&cfg).await {
            Ok(s) => s.reload_from(&path),
            Err(e @ ServeError::Config(_)) => return fail(EXIT_CONFIG, &with_file(&path, e)),
            Err(e @ (ServeError::Users(_) | ServeError::Tokens(_))) => {
                return fail(EXIT_CONFIG, &e)
            }
            Err(e) => return fail(EXIT_UNAVAILABLE, &e),
        };
        if let Some(f) = &addr_file {
            if let Err(e) = server.write_addr_file(f) {
                return fail(EXIT_UNAVAILABLE, &e);
            }
        }
        server.run(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Start-up errors from files the config names still say which config file named them.
fn with_file(path: &std::path::Path, e: ServeError) -> String {
    format!("{}: {e}", path.display())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await
        }
    }
}

fn check(path: PathBuf, against: Option<PathBuf>, repos: Option<PathBuf>) -> ExitCode {
    match check_config(&path) {
        Ok(summary) => println!("{}: OK\n{summary}", path.display()),
        Err(e) => return fail(EXIT_CONFIG, &e),
    }
    let Some(old) = against else {
        return ExitCode::SUCCESS;
    };
    match compare(&path, &old, repos.as_deref()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(CompareError::Config(e)) => fail(EXIT_CONFIG, &e),
        Err(CompareError::Catalog(e)) => fail(EXIT_UNAVAILABLE, &e),
    }
}

enum CompareError {
    /// The old configuration, its user file, or the repository list is unusable.
    Config(String),
    /// The upstream's catalog could not be read.
    Catalog(String),
}

/// The user file of a configuration (None: `auth.disabled`).
fn users_of(cfg: &Config) -> Result<Option<users::Users>, CompareError> {
    cfg.auth
        .as_ref()
        .map(|a| users::Users::load(&a.users_file))
        .transpose()
        .map_err(|e| CompareError::Config(e.to_string()))
}

/// `check --against`: access gained and lost from `old` to `new`, by the decision
/// serving makes (`acl::diff`), and the settings a running proxy would not take live.
fn compare(
    new_path: &std::path::Path,
    old_path: &std::path::Path,
    repos_file: Option<&std::path::Path>,
) -> Result<String, CompareError> {
    use crate::acl::diff::{self, Side, Subject};
    use crate::auth::Identity;
    use std::collections::BTreeSet;
    use std::fmt::Write;
    let load =
        |p: &std::path::Path| Config::load(p).map_err(|e| CompareError::Config(e.to_string()));
    let (new, old) = (load(new_path)?, load(old_path)?);
    let (new_users, old_users) = (users_of(&new)?, users_of(&old)?);
    // How a side identifies a user: auth.disabled lets anyone through; otherwise only
    // users of its file who are not disabled.
    let as_user = |users: &Option<users::Users>, name: &str| match users {
        None => Some(Identity::User {
            name: name.to_owned(),
            groups: Vec::new(),
        }),
        Some(u) => u.get(name).filter(|u| !u.disabled).map(|u| Identity::User {
            name: u.name.clone(),
            groups: u.groups.clone(),
        }),
    };
    // A group as a member of it alone would have it (a name no `${user}` pattern can
    // make a repository of).
    let as_group = |users: &Option<users::Users>, group: &str| {
        let exists = users
            .as_ref()
            .is_none_or(|u| u.groups().any(|g| g == group));
        exists.then(|| Identity::User {
            name: format!("group {group}"),
            groups: vec![group.to_owned()],
        })
    };
    let anonymous = |cfg: &Config| match &cfg.auth {
        None => Some(Identity::Anonymous),
        Some(a) => a.settings.anonymous.then_some(Identity::Anonymous),
    };
    let names: BTreeSet<String> = [&old_users, &new_users]
        .into_iter()
        .flatten()
        .flat_map(|u| u.names().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let groups: BTreeSet<String> = [&old_users, &new_users]
        .into_iter()
        .flatten()
        .flat_map(|u| u.groups().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let mut subjects: Vec<Subject> = names
        .iter()
        .map(|n| Subject {
            label: n.clone(),
            old: as_user(&old_users, n),
            new: as_user(&new_users, n),
        })
        .collect();
    subjects.extend(groups.iter().map(|g| Subject {
        label: format!("group {g}"),
        old: as_group(&old_users, g),
        new: as_group(&new_users, g),
    }));
    subjects.push(Subject {
        label: "anonymous".into(),
        old: anonymous(&old),
        new: anonymous(&new),
    });
    let repos = match repos_file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| CompareError::Config(format!("{}: {e}", f.display())))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect(),
        None => catalog(&new).map_err(CompareError::Catalog)?,
    };
    let side = |cfg: &Config| -> Option<crate::acl::Policy> {
        cfg.access.as_ref().map(|a| a.policy.clone())
    };
    let (old_policy, new_policy) = (side(&old), side(&new));
    let (changes, invalid) = diff::diff(
        Side {
            policy: old_policy.as_ref(),
        },
        Side {
            policy: new_policy.as_ref(),
        },
        &subjects,
        &repos,
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "access from {} to {} ({} users, {} groups and anonymous on {} repositories):",
        old_path.display(),
        new_path.display(),
        names.len(),
        groups.len(),
        repos.len() - invalid.len()
    );
    if changes.is_empty() {
        let _ = writeln!(out, "  no changes");
    }
    for c in &changes {
        let _ = writeln!(out, "  {c}");
    }
    for r in &invalid {
        let _ = writeln!(out, "skipped (not a repository name): {r:?}");
    }
    for key in crate::reload::restart_needed(&old, &new) {
        let _ = writeln!(out, "needs a restart: {key}");
    }
    Ok(out)
}

/// Every repository the upstream's catalog lists, read with `cfg`'s upstream settings
/// (and credentials) through the proxy's own lookup code.
fn catalog(cfg: &Config) -> Result<Vec<String>, String> {
    const PAGE: usize = 1000;
    const MAX_PAGES: usize = 1000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let up = crate::proxy::upstream::Upstream::new(&cfg.upstream).map_err(|e| e.to_string())?;
        let mut repos = Vec::new();
        let mut last: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let (page, next) = crate::proxy::lookup::catalog_page(&up, last.as_deref(), PAGE)
                .await
                .map_err(|e| {
                    format!(
                        "cannot read the catalog of {} ({e}); give the repositories with --repos FILE",
                        cfg.upstream.origin
                    )
                })?;
            let done = next.is_none() || page.is_empty();
            last = page.last().cloned();
            repos.extend(page);
            if done {
                return Ok(repos);
            }
        }
        Err(format!(
            "the catalog of {} has more than {} repositories; give them with --repos FILE",
            cfg.upstream.origin,
            PAGE * MAX_PAGES
        ))
    })
}

/// Everything `serve` would load, without binding or writing anything.
fn check_config(path: &std::path::Path) -> Result<String, ConfigError> {
    let in_file = |mut e: ConfigError| {
        e.file = Some(path.to_owned());
        e
    };
    let cfg = Config::load(path)?;
    let tls = match &cfg.server.tls {
        Tls::Files { cert, key } => {
            let tls_only = Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            };
            crate::tls::server_config(&tls_only).map_err(in_file)?;
            format!("TLS from {} and {}", cert.display(), key.display())
        }
        Tls::SelfSigned { ca_out, names } => {
            let dir = ca_out.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = dir.filter(|d| !d.exists()) {
                if d.parent()
                    .is_some_and(|p| !p.as_os_str().is_empty() && !p.exists())
                {
                    return Err(in_file(ConfigError::new(
                        "server.tls.self_signed.ca_out",
                        format!("neither {} nor its parent exist", d.display()),
                    )));
                }
            }
            format!(
                "TLS self-signed for {}; CA written to {}",
                names.join(", "),
                ca_out.display()
            )
        }
        Tls::Plaintext => "plain HTTP (no TLS)".to_owned(),
    };
    crate::proxy::upstream::Upstream::new(&cfg.upstream).map_err(in_file)?;
    let auth = match &cfg.auth {
        None => "auth: DISABLED (no credential check)".to_owned(),
        Some(a) => {
            let users = users::Users::load(&a.users_file)
                .map_err(|e| ConfigError::new("auth.users_file", e.to_string()))?;
            let mut s = format!(
                "auth: {} users from {}",
                users.len(),
                a.users_file.display()
            );
            if let Some(k) = &a.token_key_file {
                crate::server::token_key(k).map_err(in_file)?;
            }
            if let Some(t) = &a.tokens {
                let tokens = crate::reload::load_tokens(t, &users, &a.users_file)
                    .map_err(|e| ConfigError::new("auth.tokens_file", e.to_string()))?;
                s.push_str(&format!(
                    "\n  access tokens: {} from {}{}",
                    tokens.len(),
                    t.file.display(),
                    t.max_lifetime.map_or_else(String::new, |m| format!(
                        ", at most {} each",
                        humantime::format_duration(m)
                    ))
                ));
                if !tokens.capped.is_empty() {
                    s.push_str(&format!(
                        "\n  warning: refused from created + tokens.max_lifetime on: {}",
                        tokens.capped.join(", ")
                    ));
                }
            }
            if let Some(l) = &a.ldap {
                // The service password and the CA bundle; the directory is not asked.
                crate::auth::ldap::Directory::new(l, std::sync::Arc::default()).map_err(in_file)?;
                s.push_str(&format!(
                    "\n  directory: {} for names not in the user file (user_base {})",
                    l.url, l.user_base
                ));
            }
            if a.settings.docker_bearer {
                s.push_str(&format!(
                    "\n  docker: Bearer challenge and tokens, key {}",
                    a.token_key_file.as_ref().map_or_else(
                        || "random per process".to_owned(),
                        |k| k.display().to_string()
                    )
                ));
            }
            if let Some(access) = &cfg.access {
                access
                    .check_groups(&users, a.ldap.is_some())
                    .map_err(in_file)?;
                s.push_str(&format!(
                    "\n  access: {} rules",
                    access.policy.rules().len()
                ));
                for w in &access.warnings {
                    s.push_str(&format!("\n  warning: {w}"));
                }
            }
            s
        }
    };
    let mut audit = String::new();
    if let Some(a) = &cfg.audit {
        crate::audit::key::load(&a.settings.key_file)
            .map_err(|e| in_file(ConfigError::new("audit.key_file", e.to_string())))?;
        audit = format!(
            "\n  audit: {} (chain keyed by {})",
            a.settings.file.display(),
            a.settings.key_file.display()
        );
    }
    Ok(format!(
        "  listen: {}\n  {tls}\n  upstream: {}\n  {auth}{audit}",
        cfg.server.listen, cfg.upstream.origin
    ))
}

/// `explain`: route, needed actions, identity, decision and the rules behind it.
fn explain(
    config: &std::path::Path,
    user: Option<&str>,
    method: &str,
    target: &str,
) -> Result<String, String> {
    use crate::acl::{Check, Verdict};
    use crate::auth::Identity;
    use crate::registry::{Actions, Target};
    use std::fmt::Write;
    let cfg = Config::load(config).map_err(|e| e.to_string())?;
    let method = http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = String::new();
    let route = match crate::registry::parse(&method, path, query) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = crate::response::status_and_code(&e.clone().into());
            let _ = writeln!(
                out,
                "route:    refused before any rule: {} {code}: {e}",
                status.as_u16()
            );
            return Ok(out);
        }
    };
    let _ = writeln!(out, "route:    {} {method} {}", route.kind(), route.path());
    if let Some(repo) = route.repo() {
        let _ = writeln!(
            out,
            "repo:     {repo} (namespace {})",
            route.namespace().unwrap_or(repo)
        );
    }
    let _ = writeln!(
        out,
        "needs:    {}",
        if route.actions().is_empty() {
            "an authenticated user".to_owned()
        } else {
            route.actions().to_string()
        }
    );
    let (Some(auth), Some(access)) = (&cfg.auth, &cfg.access) else {
        let _ = writeln!(
            out,
            "decision: FORWARDED (auth.disabled: no identity, no rules)"
        );
        return Ok(out);
    };
    let users = users::Users::load(&auth.users_file).map_err(|e| e.to_string())?;
    let tokens = auth
        .tokens
        .as_ref()
        .map(|t| crate::reload::load_tokens(t, &users, &auth.users_file))
        .transpose()
        .map_err(|e| e.to_string())?;
    // A token is refused before any rule when it is not in force or its owner is not.
    let mut token_refusal = None;
    let mut source = "";
    let id = match user {
        None => Identity::Anonymous,
        Some(name) => match (
            users.get(name),
            tokens.as_ref().and_then(|t| t.get(name)),
            &auth.ldap,
        ) {
            (Some(u), _, _) => Identity::User {
                name: u.name.clone(),
                groups: u.groups.clone(),
            },
            // Not in the file: the directory's current groups, as a login would get them.
            (None, None, Some(l)) => match Directory::offline(l)?.groups_of(name)? {
                Some(groups) => {
                    source = "from the directory, ";
                    Identity::User {
                        name: name.to_owned(),
                        groups,
                    }
                }
                None => {
                    return Err(format!(
                    "no user {name:?} in {} nor in the directory {} (exactly one entry under {})",
                    auth.users_file.display(),
                    l.url,
                    l.user_base
                ))
                }
            },
            (None, Some(t), ldap) => {
                let now = crate::auth::unix_now();
                // The owner from the user file, else from the directory (as serving does).
                let found = match (users.get(&t.owner), ldap) {
                    (None, Some(l)) => Some(crate::auth::access_tokens::Found(
                        Directory::offline(l)?.groups_of(&t.owner)?.map(|groups| {
                            crate::auth::access_tokens::Owner {
                                groups,
                                disabled: false,
                            }
                        }),
                    )),
                    _ => None,
                };
                let owners: &dyn crate::auth::access_tokens::OwnerSource = match &found {
                    Some(f) => f,
                    None => &users,
                };
                match crate::auth::access_tokens::identity(t, owners, now) {
                    Ok(id) => id,
                    Err(why) => {
                        token_refusal = Some(why);
                        Identity::Token {
                            name: t.name.clone(),
                            owner: t.owner.clone(),
                            groups: Vec::new(),
                            scope: t.scope.clone(),
                        }
                    }
                }
            }
            (None, None, None) => {
                let also = auth.tokens.as_ref().map_or_else(String::new, |t| {
                    format!(" and no token {name:?} in {}", t.file.display())
                });
                return Err(format!(
                    "no user {name:?} in {}{also}",
                    auth.users_file.display()
                ));
            }
        },
    };
    let listed = |groups: &[String]| {
        if groups.is_empty() {
            "-".to_owned()
        } else {
            groups.join(", ")
        }
    };
    match &id {
        Identity::Token {
            name,
            owner,
            groups,
            scope,
        } => {
            let repos: Vec<String> = scope.repos.iter().map(|p| p.to_string()).collect();
            let _ = writeln!(
                out,
                "identity: token {name} of {owner} (owner's groups: {}; scope: {} on {})",
                listed(groups),
                scope.actions,
                repos.join(", ")
            );
            if let Some(why) = token_refusal {
                let _ = writeln!(
                    out,
                    "decision: 401 challenge (the token is refused: {})",
                    why.as_str()
                );
                return Ok(out);
            }
        }
        Identity::User { name, groups } => {
            let _ = writeln!(out, "identity: {name} ({source}groups: {})", listed(groups));
        }
        Identity::Anonymous => {
            let _ = writeln!(
                out,
                "identity: anonymous{}",
                if auth.settings.anonymous {
                    ""
                } else {
                    " (auth.anonymous is false: 401)"
                }
            );
        }
    }
    // What serve refuses before any rule is looked at.
    let disabled = user.and_then(|n| users.get(n)).is_some_and(|u| u.disabled);
    if disabled {
        let _ = writeln!(out, "decision: 401 challenge (the user is disabled)");
        return Ok(out);
    }
    if matches!(id, Identity::Anonymous) && !auth.settings.anonymous {
        let _ = writeln!(
            out,
            "decision: 401 challenge (no credentials and auth.anonymous is false)"
        );
        return Ok(out);
    }
    // The decision serving makes (`acl::decide`), with the rules' own explanation.
    let policy = &access.policy;
    let verdict = crate::acl::decide(Some(policy), Some(&id), &route, query);
    let detail = |fallback: &str| match route.repo() {
        Some(repo) => policy.decide(&id, repo, route.actions()).reason(),
        None => fallback.to_owned(),
    };
    let allowance = match &verdict {
        Verdict::Allow(a) => {
            let _ = writeln!(out, "decision: ALLOWED: {}", detail(&a.reason));
            a
        }
        Verdict::Challenge { reason } => {
            let _ = writeln!(out, "decision: 401 challenge: {}", detail(reason));
            return Ok(out);
        }
        Verdict::Deny { reason } => {
            let why = if reason.starts_with("requested access") {
                detail(reason)
            } else {
                reason.clone()
            };
            let _ = writeln!(out, "decision: 403 DENIED: {why}");
            return Ok(out);
        }
    };
    if matches!(route.target, Target::Catalog { .. }) {
        let _ = writeln!(
            out,
            "note:     the catalog lists only repositories this identity may pull"
        );
    }
    for check in &allowance.checks {
        let _ = match check {
            Check::TagAbsent { tag, protection } => writeln!(
                out,
                "note:     tag {tag:?} is protected by {protection}: refused (403) if it already exists"
            ),
            Check::NotProtected { .. } => writeln!(
                out,
                "note:     refused (403) if a protected tag points at this digest or its manifest references it"
            ),
        };
    }
    if let Target::UploadStart { mount: Some(m), .. } = &route.target {
        let _ = writeln!(
            out,
            "mount:    from {}: {}",
            m.from,
            if allowance.strip_mount {
                "no pull there: forwarded as a plain upload start (202)".to_owned()
            } else {
                format!(
                    "mounted ({})",
                    policy.decide(&id, &m.from, Actions::PULL).reason()
                )
            }
        );
    }
    Ok(out)
}

/// The directory of `auth.ldap` for a command run once (`user list`, `explain`): a
/// runtime of its own and the service account.
pub(crate) struct Directory {
    rt: tokio::runtime::Runtime,
    dir: std::sync::Arc<crate::auth::ldap::Directory>,
}

impl Directory {
    pub(crate) fn offline(l: &crate::config::Ldap) -> Result<Directory, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let dir = crate::auth::ldap::Directory::new(l, std::sync::Arc::default())
            .map_err(|e| e.to_string())?;
        Ok(Directory {
            rt,
            dir: std::sync::Arc::new(dir),
        })
    }

    /// The current groups of `name`, or `None` when the directory has no such user.
    pub(crate) fn groups_of(&self, name: &str) -> Result<Option<Vec<String>>, String> {
        self.rt
            .block_on(self.dir.groups_of(name))
            .map_err(|e| e.to_string())
    }
}

fn read_files(files: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, String> {
    files
        .iter()
        .map(|f| {
            std::fs::read(f)
                .map(|c| (f.display().to_string(), c))
                .map_err(|e| format!("{}: cannot read: {e}", f.display()))
        })
        .collect()
}

/// Prints one chain's report as `audit verify` shows it; true when it is broken.
fn print_report(
    r: &crate::audit::verify::Report,
    opts: &crate::audit::verify::Options,
    keyed: bool,
) -> bool {
    println!(
        "records: {}\ndeletes: {}\npushes: {}\ndenials: {}\nfailures: {}\nunknown outcomes: {}",
        r.records, r.deletes, r.pushes, r.denials, r.failures, r.unknown
    );
    for id in &r.unknown_ids {
        println!("  intent without outcome: request {id}");
    }
    println!(
        "denial summaries: {} (for {} denials not recorded one by one)",
        r.denial_summaries, r.summarized_denials
    );
    println!("repairs: {}", r.repairs);
    println!(
        "access events: {} pulls, {} logins, {} failed logins, {} dropped",
        r.pulls, r.logins, r.failed_logins, r.dropped
    );
    if r.chain_heads > 0 {
        println!(
            "chain heads: {} (starts where the files and the sidecar disagreed: see the chain_head records)",
            r.chain_heads
        );
    }
    println!("checkpoints: {}", r.checkpoints);
    if let Some(c) = &r.last_checkpoint {
        println!("last checkpoint: {c}");
    }
    if !opts.checkpoints.is_empty() {
        println!(
            "checkpoints matched: {} of {}",
            r.checkpoints_matched,
            opts.checkpoints.len()
        );
    }
    if let Some(start) = &r.chain_start {
        println!("chain starts at: {start}");
    }
    if let Some(end) = &r.chain_end {
        println!("chain ends at: {end}");
    }
    match &r.broken {
        Some(b) => {
            println!("BROKEN: {b}");
            true
        }
        None if !keyed => {
            println!("chain: intact (unkeyed SHA-256: proves nothing against whoever can write the files)");
            false
        }
        None => {
            println!("chain: intact");
            false
        }
    }
}

fn audit_command(action: AuditAction) -> ExitCode {
    match action {
        AuditAction::Verify {
            files,
            key_file,
            unkeyed: _,
            start,
            checkpoints,
        } => {
            let chain = match &key_file {
                Some(k) => match crate::audit::key::load(k) {
                    Ok(c) => c,
                    Err(e) => return fail(EXIT_CONFIG, &e),
                },
                None => crate::audit::Chain::Unkeyed,
            };
            let contents = match read_files(&files) {
                Ok(c) => c,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let replicas = crate::audit::verify::by_instance(
                contents.iter().map(|(n, c)| (n.as_str(), c.as_slice())),
            );
            let several = replicas.len() > 1;
            // Which replica a --start or --checkpoint is for: the one it names, or the
            // only one.
            let place = |p: &ReplicaPosition, what: &str| -> Result<usize, String> {
                match &p.instance {
                    Some(i) => replicas
                        .iter()
                        .position(|r| r.instance.as_deref() == Some(i.as_str()))
                        .ok_or_else(|| {
                            format!("--{what} {i}:...: no file given is of instance {i:?}")
                        }),
                    None if several => Err(format!(
                        "--{what} {}: the files are of {} replicas: name one, INSTANCE:SEQ:HASH",
                        p.at,
                        replicas.len()
                    )),
                    None => Ok(0),
                }
            };
            let mut starts: Vec<Option<crate::audit::Position>> = vec![None; replicas.len().max(1)];
            let mut checks: Vec<Vec<crate::audit::Position>> =
                vec![Vec::new(); replicas.len().max(1)];
            for s in &start {
                match place(s, "start") {
                    Ok(i) if starts[i].is_none() => starts[i] = Some(s.at.clone()),
                    Ok(_) => return fail(EXIT_CONFIG, &"--start given twice for one replica"),
                    Err(e) => return fail(EXIT_CONFIG, &e),
                }
            }
            for c in &checkpoints {
                match place(c, "checkpoint") {
                    Ok(i) => checks[i].push(c.at.clone()),
                    Err(e) => return fail(EXIT_CONFIG, &e),
                }
            }
            let mut broken = false;
            for (i, replica) in replicas.iter().enumerate() {
                if several {
                    let names: Vec<&str> = replica.files.iter().map(|(n, _)| *n).collect();
                    println!(
                        "{}instance {} ({})",
                        if i > 0 { "\n" } else { "" },
                        replica.instance.as_deref().unwrap_or("(unnamed)"),
                        names.join(", ")
                    );
                }
                let opts = crate::audit::verify::Options {
                    chain: &chain,
                    start: starts[i].take(),
                    checkpoints: std::mem::take(&mut checks[i]),
                };
                let r = crate::audit::verify::verify(replica.files.iter().copied(), &opts);
                broken |= print_report(&r, &opts, key_file.is_some());
            }
            if several {
                println!(
                    "\nreplicas: {}, {}",
                    replicas.len(),
                    if broken {
                        "BROKEN"
                    } else {
                        "every chain intact"
                    }
                );
            }
            if broken {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        AuditAction::Keygen { file } => match crate::audit::key::generate(&file) {
            Ok(()) => {
                println!(
                    "{}: new audit key (mode 0600); name it in audit.key_file and keep a copy where the audit files' writers cannot change it",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_CONFIG, &e),
        },
        AuditAction::Show {
            files,
            filter,
            format,
            follow: keep,
        } => {
            let (filter, contents) = match filter.build().and_then(|f| Ok((f, read_files(&files)?)))
            {
                Ok(x) => x,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let rows = selected(&contents, &filter);
            let jsonl = format == "jsonl";
            // One replica (or files from before replicas were named): the table as it
            // always was; several: which one wrote each row.
            let several = rows.iter().any(|r| r.1 != rows[0].1);
            if jsonl {
            } else if several {
                println!(
                    "{:<24} {:<16} {:<8} {:<12} {:<15} {:<7} {:<28} {:<20} DETAIL",
                    "TIME",
                    "INSTANCE",
                    "PHASE",
                    "USER",
                    "CLIENT",
                    "STATUS",
                    "REPOSITORY",
                    "REFERENCE"
                );
            } else {
                println!(
                    "{:<24} {:<8} {:<12} {:<15} {:<7} {:<28} {:<20} DETAIL",
                    "TIME", "PHASE", "USER", "CLIENT", "STATUS", "REPOSITORY", "REFERENCE"
                );
            }
            print_rows(&rows, jsonl, several);
            if keep {
                // Complete lines only were printed: continue after the last newline.
                let (last, c) = (&files[files.len() - 1], &contents[contents.len() - 1].1);
                let read = c.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                return follow(last, read as u64, &filter, jsonl, several);
            }
            ExitCode::SUCCESS
        }
        AuditAction::Stats {
            files,
            filter,
            format,
        } => {
            let (filter, contents) = match filter.build().and_then(|f| Ok((f, read_files(&files)?)))
            {
                Ok(x) => x,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            let mut stats = crate::audit::query::Stats::default();
            for (_, _, e, _) in selected(&contents, &filter) {
                stats.add(&e);
            }
            if format == "json" {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&stats).unwrap_or_default()
                );
                return ExitCode::SUCCESS;
            }
            for (title, table) in [("USER", &stats.users), ("REPOSITORY", &stats.repos)] {
                println!(
                    "{title:<28} {:>8} {:>8} {:>8} {:>8} {:>13} {:>8} {:>8}",
                    "DELETES", "PUSHES", "PULLS", "LOGINS", "FAILED_LOGIN", "DENIED", "FAILED"
                );
                for (name, c) in table {
                    let name = plain(name);
                    println!(
                        "{name:<28} {:>8} {:>8} {:>8} {:>8} {:>13} {:>8} {:>8}",
                        c.deletes, c.pushes, c.pulls, c.logins, c.failed_logins, c.denied, c.failed
                    );
                }
                println!();
            }
            ExitCode::SUCCESS
        }
    }
}

#[cfg(test)]
mod plain_tests {
    use super::plain;

    /// Names an unauthenticated client chose (failed logins are recorded) cannot pass for
    /// another user's in `audit show` or `audit stats`.
    #[test]
    fn look_alike_names_are_escaped_in_tables() {
        assert_eq!(plain("alice"), "alice");
        assert_eq!(plain("alice "), "alice\\u{20}");
        assert_eq!(plain("ali\u{200b}ce"), "ali\\u{200b}ce");
        assert_eq!(plain("\u{202e}ecila"), "\\u{202e}ecila");
        assert_eq!(plain("\u{430}lice"), "\\u{430}lice");
        assert_eq!(plain("team-a/app"), "team-a/app");
    }
}
