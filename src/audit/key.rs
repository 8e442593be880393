//! The audit key (`audit.key_file`): 32 random bytes, hex, one line, mode 0600. The
//! chain is an HMAC under it, so the key must be readable by the proxy and by whoever
//! runs `audit verify`, and by nobody who may write the audit files.

use super::record::Chain;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Bytes of a key made by [`generate`]; loading accepts 32 to 128.
pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: already exists (a key is never overwritten: the chain written under it could no longer be verified)")]
    Exists { path: String },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not an audit key (one line of 64 to 256 hex digits; make one with `registry-guard audit keygen {path}`)")]
    Format { path: String },
    #[error(
        "{path}: mode {mode:o} lets others read or group members write it: chmod 600 (or 640)"
    )]
    Mode { path: String, mode: u32 },
    #[error("no random bytes from the system")]
    Random,
}

/// Writes a new random key to `path` (mode 0600), refusing to replace any file.
pub fn generate(path: &Path) -> Result<(), KeyError> {
    use ring::rand::SecureRandom;
    let shown = path.display().to_string();
    let mut key = [0u8; KEY_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyError::Random)?;
    let text = super::record::hex(&key);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: shown.clone(),
            },
            _ => KeyError::Write {
                path: shown.clone(),
                source,
            },
        })?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| KeyError::Write {
            path: shown.clone(),
            source,
        })
}

/// Reads the key of `path` into a keyed chain.
pub fn load(path: &Path) -> Result<Chain, KeyError> {
    let shown = path.display().to_string();
    let read = |source| KeyError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        return Err(KeyError::Mode { path: shown, mode });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let bytes = parse(text.trim()).ok_or(KeyError::Format { path: shown })?;
    Ok(Chain::keyed(&bytes))
}

fn parse(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !(2 * KEY_BYTES..=8 * KEY_BYTES).contains(&hex.len()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_makes_a_private_key_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.trim().len(), 64, "{first}");
        assert!(matches!(generate(&path), Err(KeyError::Exists { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
        let a = load(&path).unwrap();
        let other = dir.path().join("other.key");
        generate(&other).unwrap();
        let b = load(&other).unwrap();
        assert_ne!(
            a.hash(b"line"),
            b.hash(b"line"),
            "two keys made the same MAC"
        );
        assert_eq!(a.hash(b"line"), load(&path).unwrap().hash(b"line"));
    }

    #[test]
    fn bad_keys_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        for text in ["", "xyz", "abcd", &"g".repeat(64), &"a".repeat(63)] {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let e = load(&path).unwrap_err();
            assert!(matches!(e, KeyError::Format { .. }), "{text:?}: {e}");
            assert!(e.to_string().contains(&path.display().to_string()));
        }
        std::fs::write(&path, "a".repeat(64)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load(&path),
            Err(KeyError::Mode { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(load(&path).is_ok());
        assert!(matches!(
            load(&dir.path().join("missing")),
            Err(KeyError::Read { .. })
        ));
    }
}
