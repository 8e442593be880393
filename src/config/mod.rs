//! Configuration: raw serde structs that refuse unknown keys, and a validation step that
//! turns them into typed values and names the key that is wrong.
//!
//! - `raw.rs`: the YAML exactly as written (`deny_unknown_fields`), nothing else checked;
//! - `validate.rs`: one `TryFrom` per section, every range and default, pure;
//! - `types.rs`: the checked [`Config`] the rest of the proxy reads, re-exported here.
//!
//! [`Config::from_yaml`] takes a string so tests need no files; [`Config::load`] adds the
//! file name to every message. Validation here is pure (no file is opened): files named by
//! the config (certificates, CA bundles, secrets) are read by the modules that use them,
//! at start-up and by `registry-guard check`, and their errors name the key too.

use std::fmt;
use std::path::{Path, PathBuf};

mod ldap;
mod raw;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub use ldap::{GroupLookup, Ldap, LdapTransport};
pub use types::*;
pub(crate) use validate::check_instance;

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            key: key.into(),
            message: message.into(),
        }
    }
    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }
    /// Adds why a limit is what it is to the message.
    fn because(mut self, why: &str) -> Self {
        self.message.push_str(why);
        self
    }
}

impl Config {
    /// Reads and validates a config file; every error names the file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("", format!("cannot read config file: {e}")).in_file(path)
        })?;
        let mut cfg = Config::from_yaml(&text).map_err(|e| e.in_file(path))?;
        cfg.resolve_relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = serde_yaml::from_str(text).map_err(yaml_error)?;
        Config::try_from(raw)
    }

    /// Paths in a config file are relative to the file's folder, like nginx's includes.
    fn resolve_relative_to(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        match &mut self.server.tls {
            Tls::Files { cert, key } => {
                fix(cert);
                fix(key);
            }
            Tls::SelfSigned { ca_out, .. } => fix(ca_out),
            Tls::Plaintext => {}
        }
        if let Some(ca) = &mut self.upstream.ca_file {
            fix(ca);
        }
        if let Some(auth) = &mut self.auth {
            fix(&mut auth.users_file);
            if let Some(k) = &mut auth.token_key_file {
                fix(k);
            }
            if let Some(t) = &mut auth.tokens {
                let defaulted =
                    t.last_used_file == crate::auth::access_tokens::default_last_used_file(&t.file);
                fix(&mut t.file);
                if defaulted {
                    t.last_used_file = crate::auth::access_tokens::default_last_used_file(&t.file);
                } else {
                    fix(&mut t.last_used_file);
                }
            }
            if let Some(l) = &mut auth.ldap {
                if let Some(ca) = &mut l.ca_file {
                    fix(ca);
                }
                if let SecretSource::File(f) = &mut l.bind_password {
                    fix(f);
                }
            }
        }
        if let Some(audit) = &mut self.audit {
            fix(&mut audit.settings.file);
            fix(&mut audit.settings.key_file);
            if let Some(ca) = audit
                .settings
                .syslog
                .as_mut()
                .and_then(|s| s.ca_file.as_mut())
            {
                fix(ca);
            }
        }
        if let Some(Credentials {
            password: SecretSource::File(f),
            ..
        }) = &mut self.upstream.credentials
        {
            fix(f);
        }
    }
}

/// serde_yaml's message already says "unknown field `x`, expected one of ..." and where;
/// the key path is in the message, so `key` stays empty.
fn yaml_error(e: serde_yaml::Error) -> ConfigError {
    ConfigError::new("", e.to_string())
}
