//! PURE: what a manifest needs to stay pullable, read from its JSON.
//!
//! A protected tag protects more than the digest it points at: deleting one of the
//! blobs its manifest references (config, layers) or a child manifest of an index breaks
//! the tag just as well. The reader does not trust field names, because the registry and
//! its clients decode with Go's `encoding/json`, which matches keys case-insensitively
//! with Unicode folding (`"Digest"`, `"DIGEST"`, `"digeſt"` are all `digest` to it):
//! - every string anywhere in the document that is a digest is a reference;
//! - every digest inside an array under a key that Go would take for `manifests` is also
//!   a child manifest, to be read in turn.
//!
//! Reading too much only refuses more; missing one would let a delete through.

use super::grammar;
use serde_json::Value;

/// Deepest nesting of JSON walked; real manifests are 3 or 4 levels deep.
const MAX_DEPTH: usize = 32;

/// The references of one manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Every digest the manifest names (blobs, child manifests, subject, annotations).
    pub digests: Vec<String>,
    /// The digests inside its `manifests` list (an index): read them too.
    pub children: Vec<String>,
}

/// Why a manifest's references cannot be known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("not a JSON manifest: {0}")]
    NotJson(String),
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Reads the references of a manifest body.
pub fn references(body: &[u8]) -> Result<References, ManifestError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ManifestError::NotJson(e.to_string()))?;
    let mut out = References::default();
    walk(&v, 0, false, &mut out)?;
    for list in [&mut out.digests, &mut out.children] {
        list.sort();
        list.dedup();
    }
    Ok(out)
}

fn walk(v: &Value, depth: usize, child: bool, out: &mut References) -> Result<(), ManifestError> {
    if depth > MAX_DEPTH {
        return Err(ManifestError::TooDeep);
    }
    match v {
        Value::String(s) if grammar::is_digest(s) => {
            out.digests.push(s.clone());
            if child {
                out.children.push(s.clone());
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let list = matches!(item, Value::Array(_)) && go_json_key_is(k, "MANIFESTS");
                walk(item, depth + 1, child || list, out)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, depth + 1, child, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether Go's `encoding/json` could match the object key `key` to a field named
/// `upper` (given upper-case ASCII). Go folds each character to the smallest of its
/// Unicode simple-fold set (`ſ` U+017F is `S`, `K` U+212A is `K`, `ı` U+0131 is `I`).
/// This errs on the side of a match: any character whose upper or lower case is an
/// ASCII letter counts as that letter.
fn go_json_key_is(key: &str, upper: &str) -> bool {
    let mut want = upper.chars();
    for c in key.chars() {
        let folded = if c.is_ascii() {
            c.to_ascii_uppercase()
        } else {
            c.to_uppercase()
                .chain(c.to_lowercase())
                .find(char::is_ascii_alphabetic)
                .map_or(c, |a| a.to_ascii_uppercase())
        };
        if want.next() != Some(folded) {
            return false;
        }
    }
    want.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:x}").repeat(64))
    }

    #[test]
    fn image_manifests_reference_config_layers_and_subject() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},
            "layers":[{{"digest":"{}","size":1}},{{"digest":"{}","size":2}}],
            "subject":{{"digest":"{}","size":3}}}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        );
        let r = references(m.as_bytes()).unwrap();
        assert_eq!(r.digests, [d(1), d(2), d(3), d(4)]);
        assert!(r.children.is_empty());
    }

    #[test]
    fn indexes_have_children_and_schema1_has_blob_sums() {
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","platform":{{"os":"linux"}}}},{{"digest":"{}"}}]}}"#,
            d(1),
            d(2)
        );
        let r = references(i.as_bytes()).unwrap();
        assert_eq!(r.children, [d(1), d(2)]);
        assert_eq!(r.digests, [d(1), d(2)]);
        let s1 = format!(
            r#"{{"schemaVersion":1,"fsLayers":[{{"blobSum":"{}"}},{{"blobSum":"{}"}}]}}"#,
            d(3),
            d(3)
        );
        assert_eq!(references(s1.as_bytes()).unwrap().digests, [d(3)]);
    }

    /// Go's encoding/json matches keys without regard to case (Unicode folding
    /// included); the registry stores such manifests and clients pull through them.
    #[test]
    fn keys_in_any_case_or_fold_are_read_as_go_reads_them() {
        for (digest_key, list_key) in [
            ("Digest", "Manifests"),
            ("DIGEST", "MANIFESTS"),
            ("dIgEsT", "mAnIfEsTs"),
            ("dige\u{17f}t", "manife\u{17f}t\u{17f}"),
            ("d\u{131}gest", "man\u{131}fests"),
            ("x-anything", "manifests"),
        ] {
            let m = format!(
                r#"{{"{list_key}":[{{"{digest_key}":"{}"}}],"config":{{"{digest_key}":"{}"}},"layers":[{{"{digest_key}":"{}"}}]}}"#,
                d(1),
                d(2),
                d(3)
            );
            let r = references(m.as_bytes()).unwrap();
            assert_eq!(r.digests, [d(1), d(2), d(3)], "{digest_key}");
            assert_eq!(r.children, [d(1)], "{list_key}");
        }
        assert!(go_json_key_is("manifests", "MANIFESTS"));
        assert!(go_json_key_is("MANIFE\u{17f}TS", "MANIFESTS"));
        assert!(!go_json_key_is("manifest", "MANIFESTS"));
        assert!(!go_json_key_is("manifestss", "MANIFESTS"));
    }

    #[test]
    fn unreadable_manifests_are_errors_not_empty_lists() {
        assert!(matches!(references(b""), Err(ManifestError::NotJson(_))));
        assert!(matches!(
            references(b"<html>"),
            Err(ManifestError::NotJson(_))
        ));
        // serde_json itself stops at 128 levels; the walk stops earlier.
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert_eq!(references(deep.as_bytes()), Err(ManifestError::TooDeep));
    }
}
