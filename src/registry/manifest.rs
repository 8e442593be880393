//! PURE: what a manifest needs to stay pullable, read from its JSON.
//!
//! A protected tag protects more than the digest it points at: deleting one of the
//! blobs its manifest references (config, layers) or a child manifest of an index breaks
//! the tag just as well. The reader is deliberately generic — it does not trust the
//! media type: every string field named `digest` anywhere in the document (`config`,
//! `layers[]`, `manifests[]`, `blobs[]`, `subject`) and every schema-1 `blobSum` is a
//! reference, and the `manifests[]` entries of an index are also children to be read in
//! turn. Reading too much only refuses more; missing one would let a delete through.

use serde_json::Value;

/// Deepest nesting of JSON walked; real manifests are 3 or 4 levels deep.
const MAX_DEPTH: usize = 32;

/// The references of one manifest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct References {
    /// Every digest the manifest names (blobs, child manifests, subject).
    pub digests: Vec<String>,
    /// The child manifests of an index (`manifests[].digest`): read them too.
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
    if let Some(list) = v.get("manifests").and_then(Value::as_array) {
        out.children = list
            .iter()
            .filter_map(|m| m.get("digest").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
    }
    collect(&v, 0, &mut out.digests)?;
    out.digests.sort();
    out.digests.dedup();
    Ok(out)
}

fn collect(v: &Value, depth: usize, out: &mut Vec<String>) -> Result<(), ManifestError> {
    if depth > MAX_DEPTH {
        return Err(ManifestError::TooDeep);
    }
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("digest" | "blobSum", Value::String(d)) => out.push(d.clone()),
                    _ => collect(child, depth + 1, out)?,
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                collect(child, depth + 1, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_manifests_reference_config_and_layers() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c","size":1},
            "layers":[{"digest":"sha256:l1","size":1},{"digest":"sha256:l2","size":2}],
            "subject":{"digest":"sha256:s","size":3}}"#;
        let r = references(m).unwrap();
        assert_eq!(
            r.digests,
            ["sha256:c", "sha256:l1", "sha256:l2", "sha256:s"]
        );
        assert!(r.children.is_empty());
    }

    #[test]
    fn indexes_have_children_and_schema1_has_blob_sums() {
        let i = br#"{"schemaVersion":2,"manifests":[{"digest":"sha256:a","platform":{"os":"linux"}},{"digest":"sha256:b"}]}"#;
        let r = references(i).unwrap();
        assert_eq!(r.children, ["sha256:a", "sha256:b"]);
        assert_eq!(r.digests, ["sha256:a", "sha256:b"]);
        let s1 =
            br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"sha256:x"},{"blobSum":"sha256:x"}]}"#;
        assert_eq!(references(s1).unwrap().digests, ["sha256:x"]);
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
