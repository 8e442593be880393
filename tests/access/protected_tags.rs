//! Protected tags: deletes by digest of what a protected tag references (directly, as a
//! child, a blob or a config) are refused, and tag lists are read whole or not trusted.

use super::*;

// ---------------------------------------------------------------------------------------
// Protected tags and deletes by digest: every page of tags is examined, within a bound.

const LATEST_DIGEST: &str = DIGEST;

/// Repositories `alice/big` (2,500 tags `t00000`.. plus `latest`), `alice/huge` (10,001
/// tags, none protected) and `alice/full` (exactly 10,000), served in pages like
/// distribution; `latest` resolves to [`LATEST_DIGEST`], every other tag to
/// [`OTHER_DIGEST`]; deletes answer 202.
fn tags_upstream() -> FakeUpstream {
    let tags_of = |repo: &str| -> Vec<String> {
        let count = match repo {
            "alice/big" => 2500,
            "alice/huge" => 10_001,
            "alice/full" => 10_000,
            _ => 0,
        };
        let mut t: Vec<String> = (0..count).map(|i| format!("t{i:05}")).collect();
        if repo == "alice/big" {
            t.push("latest".into());
        }
        t.sort();
        t
    };
    FakeUpstream::on_thread(move |s| {
        let path = s.path();
        if s.method == "DELETE" {
            return Reply::new(202);
        }
        if let Some(repo) = path
            .strip_prefix("/v2/")
            .and_then(|p| p.strip_suffix("/tags/list"))
        {
            let tags = tags_of(repo);
            let (mut n, mut last) = (tags.len(), None);
            for (k, v) in form_urlencoded::parse(s.query().unwrap_or("").as_bytes()) {
                match &*k {
                    "n" => n = v.parse().unwrap(),
                    "last" => last = Some(v.into_owned()),
                    _ => {}
                }
            }
            let start = last.map_or(0, |l| tags.partition_point(|t| *t <= l));
            let page: Vec<&String> = tags[start..].iter().take(n).collect();
            let mut r = Reply::new(200).json(serde_json::json!({"name": repo, "tags": page}));
            if start + page.len() < tags.len() {
                let l = page.last().unwrap();
                r = r.header(
                    "link",
                    &format!("</v2/{repo}/tags/list?last={l}&n={n}>; rel=\"next\""),
                );
            }
            return r;
        }
        if let Some((_, tag)) = path.split_once("/manifests/") {
            let digest = if tag == "latest" {
                LATEST_DIGEST
            } else {
                OTHER_DIGEST
            };
            return Reply::new(200)
                .json(serde_json::json!({"schemaVersion": 2, "layers": []}))
                .header("docker-content-digest", digest);
        }
        Reply::new(404)
    })
}

// Blobs and child manifests of protected tags, and tag lists that the
// upstream does not page (item 9).

const IDX: &str = "sha256:1000000000000000000000000000000000000000000000000000000000000001";
const CHILD: &str = "sha256:2000000000000000000000000000000000000000000000000000000000000002";
const CFG: &str = "sha256:3000000000000000000000000000000000000000000000000000000000000003";
const L1: &str = "sha256:4000000000000000000000000000000000000000000000000000000000000004";
const DEV: &str = "sha256:5000000000000000000000000000000000000000000000000000000000000005";
const L2: &str = "sha256:6000000000000000000000000000000000000000000000000000000000000006";

/// `alice/img`: `latest` (protected) is an index whose one child has config CFG and
/// layer L1; `dev` is an image with layer L2. `alice/broken`: `latest` is no JSON.
/// `alice/flat`: 10,001 tags in one answer whatever `n` asks (as distribution 2.8 does),
/// `latest` last; every tag there is DEV.
fn references_upstream() -> FakeUpstream {
    FakeUpstream::on_thread(|s| {
        let path = s.path();
        if s.method == "DELETE" {
            return Reply::new(202);
        }
        let manifest = |digest: &str, v: serde_json::Value| {
            Reply::new(200)
                .json(v)
                .header("docker-content-digest", digest)
        };
        match path {
            "/v2/alice/img/tags/list" => {
                Reply::new(200).json(serde_json::json!({"tags": ["dev", "latest"]}))
            }
            "/v2/alice/five/tags/list" => {
                Reply::new(200).json(serde_json::json!({"tags": ["t1", "t2", "t3", "t4", "t5"]}))
            }
            "/v2/alice/broken/tags/list" => {
                Reply::new(200).json(serde_json::json!({"tags": ["latest"]}))
            }
            "/v2/alice/flat/tags/list" => {
                let mut tags: Vec<String> = (0..10_000).map(|i| format!("t{i:05}")).collect();
                tags.push("latest".into());
                Reply::new(200).json(serde_json::json!({ "tags": tags }))
            }
            "/v2/alice/img/manifests/latest" => manifest(
                IDX,
                serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": CHILD, "platform": {"os": "linux"}}]}),
            ),
            p if p == format!("/v2/alice/img/manifests/{CHILD}") => manifest(
                CHILD,
                serde_json::json!({"schemaVersion": 2, "config": {"digest": CFG}, "layers": [{"digest": L1}]}),
            ),
            "/v2/alice/img/manifests/dev" => manifest(
                DEV,
                serde_json::json!({"schemaVersion": 2, "config": {"digest": CFG}, "layers": [{"digest": L2}]}),
            ),
            "/v2/alice/broken/manifests/latest" => Reply::new(200)
                .header("docker-content-digest", IDX)
                .header("content-type", "text/html"),
            p if p.starts_with("/v2/alice/flat/manifests/")
                || p.starts_with("/v2/alice/five/manifests/") =>
            {
                manifest(DEV, serde_json::json!({"schemaVersion": 2, "layers": []}))
            }
            _ => Reply::new(404),
        }
    })
}

#[test]
fn deletes_of_what_a_protected_tag_references_are_refused() {
    let fake = references_upstream();
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[]), user("rel", "pw", &["release"])])
        .access_yaml("  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      groups: [release]\n      actions: [pull, push, delete]\n  protected_tags:\n    - repos: ['**']\n      tags: [latest]\n      except:\n        groups: [release]\n")
        .start();
    let delete = |who: &str, path: String| {
        fake.take();
        let r = proxy_call(&proxy, "DELETE", &path).user(who, "pw").send();
        let deleted = fake.take().iter().filter(|s| s.method == "DELETE").count();
        (r, deleted)
    };
    // The layer and config of latest's child, the child itself, and the index.
    for (path, says) in [
        (
            format!("/v2/alice/img/blobs/{L1}"),
            "would break the protected tag \"latest\"",
        ),
        (
            format!("/v2/alice/img/blobs/{CFG}"),
            "would break the protected tag \"latest\"",
        ),
        (
            format!("/v2/alice/img/manifests/{CHILD}"),
            "would break the protected tag \"latest\"",
        ),
        (
            format!("/v2/alice/img/manifests/{IDX}"),
            "would remove the protected tag \"latest\"",
        ),
    ] {
        let (r, deleted) = delete("alice", path.clone());
        r.assert_refusal(403, "DENIED", &path);
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(says), "{path}: {message}");
        assert_eq!(deleted, 0, "{path}");
    }
    // What only an unprotected tag uses goes.
    for path in [
        format!("/v2/alice/img/blobs/{L2}"),
        format!("/v2/alice/img/manifests/{DEV}"),
    ] {
        let (r, deleted) = delete("alice", path.clone());
        assert_eq!(r.status, 202, "{path}: {}", r.describe());
        assert_eq!(deleted, 1, "{path}");
    }
    // The exempt group deletes latest's layer, without a lookup.
    fake.take();
    let r = proxy_call(&proxy, "DELETE", &format!("/v2/alice/img/blobs/{L1}"))
        .user("rel", "pw")
        .send();
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(fake.take().len(), 1);
    // A protected manifest that cannot be read: fail closed, saying why.
    let (r, deleted) = delete("alice", format!("/v2/alice/broken/blobs/{L2}"));
    r.assert_refusal(403, "DENIED", "unreadable protected manifest");
    assert!(r.text().contains("cannot be read"), "{}", r.describe());
    assert_eq!(deleted, 0);
}

#[test]
fn a_tag_list_the_upstream_does_not_page_is_never_taken_as_complete() {
    let fake = references_upstream();
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[])])
        .access_yaml("  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      actions: [pull, push, delete]\n  protected_tags:\n    - repos: ['**']\n      tags: [latest]\n")
        .start();
    // 10,001 tags in one answer, the protected one past 10,000: refused, not forwarded
    // (before, the list was cut to 10,000, called complete, and the delete went through).
    fake.take();
    let r = proxy_call(&proxy, "DELETE", &format!("/v2/alice/flat/manifests/{DEV}"))
        .user("alice", "pw")
        .send();
    r.assert_refusal(403, "DENIED", "unpaged tag list");
    assert!(
        r.text().contains("more than 10000 tags"),
        "{}",
        r.describe()
    );
    assert!(fake.take().iter().all(|s| s.method != "DELETE"));
}

#[test]
fn an_audited_delete_never_calls_a_cut_tag_list_complete() {
    let fake = references_upstream();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[])])
        .access_yaml("  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      actions: [pull, push, delete]\n")
        .extra_yaml(&audit_yaml(dir.path(), &audit, "  max_tags: 2\n"))
        .start();
    // Five tags point at DEV, listed in one answer that ignores `n`.
    let r = proxy_call(&proxy, "DELETE", &format!("/v2/alice/five/manifests/{DEV}"))
        .user("alice", "pw")
        .send();
    assert_eq!(r.status, 202, "{}", r.describe());
    let text = std::fs::read_to_string(&audit).unwrap();
    let intent: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["phase"] == "intent")
        .unwrap_or_else(|| panic!("no intent in {text}"));
    assert_eq!(intent["tags_complete"], false, "{intent}");
    assert!(intent["tags"].as_array().unwrap().len() <= 2, "{intent}");
}

/// The `audit:` section for a test proxy writing to `file` with a key made in `dir` by
/// `registry-guard audit keygen`, plus `more` (two-space indented keys).
fn audit_yaml(dir: &Path, file: &Path, more: &str) -> String {
    let key = dir.join("audit.key");
    let (code, out, err) = cli(&["audit", "keygen", key.to_str().unwrap()], dir);
    assert_eq!(code, Some(0), "{out}{err}");
    format!(
        "audit:\n  file: {}\n  key_file: {}\n{more}",
        file.display(),
        key.display()
    )
}

#[test]
fn a_delete_by_digest_examines_every_page_of_tags_and_refuses_past_the_bound() {
    let fake = tags_upstream();
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[]), user("rel", "pw", &["release"])])
        .access_yaml("  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      groups: [release]\n      actions: [pull, push, delete]\n  protected_tags:\n    - repos: ['**']\n      tags: [latest]\n      except:\n        groups: [release]\n")
        .start();
    let delete = |who: &str, repo: &str, digest: &str| {
        fake.take();
        let path = format!("/v2/{repo}/manifests/{digest}");
        let r = proxy_call(&proxy, "DELETE", &path).user(who, "pw").send();
        (r, fake.take())
    };
    let tag_pages = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.path().ends_with("/tags/list"))
            .count()
    };
    let deletes = |seen: &[Seen]| seen.iter().filter(|s| s.method == "DELETE").count();

    // `latest` is on the third page of 1000 tags: found, refused, nothing deleted.
    let (r, seen) = delete("alice", "alice/big", LATEST_DIGEST);
    r.assert_refusal(403, "DENIED", "delete latest's digest");
    assert!(r.text().contains("latest"), "{}", r.describe());
    assert_eq!(tag_pages(&seen), 3, "{seen:#?}");
    assert_eq!(deletes(&seen), 0);
    // Only protected tags are read: one manifest GET, for latest.
    let reads: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path().contains("/manifests/"))
        .collect();
    assert_eq!(reads.len(), 1, "{reads:#?}");
    assert_eq!(reads[0].method, "GET");
    assert_eq!(reads[0].target, "/v2/alice/big/manifests/latest");
    // Another digest of the same repository is deleted.
    let (r, seen) = delete("alice", "alice/big", OTHER_DIGEST);
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(deletes(&seen), 1);
    assert_eq!(
        seen.last().unwrap().target,
        format!("/v2/alice/big/manifests/{OTHER_DIGEST}")
    );
    // The exempt group deletes without any lookup.
    let (r, seen) = delete("rel", "alice/big", LATEST_DIGEST);
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(seen.len(), 1, "{seen:#?}");
    // Exactly 10,000 tags can all be examined; one more cannot: refused, not forwarded.
    let (r, seen) = delete("alice", "alice/full", OTHER_DIGEST);
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(tag_pages(&seen), 10);
    let (r, seen) = delete("alice", "alice/huge", OTHER_DIGEST);
    r.assert_refusal(403, "DENIED", "more tags than can be examined");
    assert!(
        r.text().contains("more than 10000 tags"),
        "{}",
        r.describe()
    );
    assert_eq!(tag_pages(&seen), 10, "bounded lookups");
    assert_eq!(deletes(&seen), 0);
    // A repository without tags: nothing to protect.
    let (r, _) = delete("alice", "alice/none", OTHER_DIGEST);
    assert_eq!(r.status, 202, "{}", r.describe());
}
