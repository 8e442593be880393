//! Section A: every route needs its actions, and a refusal is the same whether the
//! repository exists or not.

use super::*;

fn route_table(repo: &str) -> Vec<(&'static str, String, u8)> {
    vec![
        ("GET", format!("/v2/{repo}/tags/list"), P),
        ("GET", format!("/v2/{repo}/manifests/v1"), P),
        ("HEAD", format!("/v2/{repo}/manifests/v1"), P),
        ("GET", format!("/v2/{repo}/manifests/{DIGEST}"), P),
        ("HEAD", format!("/v2/{repo}/manifests/{DIGEST}"), P),
        ("PUT", format!("/v2/{repo}/manifests/v1"), P | U),
        ("PUT", format!("/v2/{repo}/manifests/{DIGEST}"), P | U),
        ("DELETE", format!("/v2/{repo}/manifests/{DIGEST}"), P | D),
        ("DELETE", format!("/v2/{repo}/manifests/v1"), P | D),
        ("GET", format!("/v2/{repo}/blobs/{DIGEST}"), P),
        ("HEAD", format!("/v2/{repo}/blobs/{DIGEST}"), P),
        ("DELETE", format!("/v2/{repo}/blobs/{DIGEST}"), P | D),
        ("POST", format!("/v2/{repo}/blobs/uploads/"), P | U),
        (
            "POST",
            format!("/v2/{repo}/blobs/uploads/?digest={DIGEST}"),
            P | U,
        ),
        ("GET", format!("/v2/{repo}/blobs/uploads/{UPLOAD}"), P | U),
        ("HEAD", format!("/v2/{repo}/blobs/uploads/{UPLOAD}"), P | U),
        ("PATCH", format!("/v2/{repo}/blobs/uploads/{UPLOAD}"), P | U),
        (
            "PUT",
            format!("/v2/{repo}/blobs/uploads/{UPLOAD}?digest={DIGEST}"),
            P | U,
        ),
        // Cancelling an upload deletes nothing stored: push alone.
        ("DELETE", format!("/v2/{repo}/blobs/uploads/{UPLOAD}"), U),
        ("GET", format!("/v2/{repo}/referrers/{DIGEST}"), P),
    ]
}

/// A request of the table with the body its method carries.
fn table_call<'a>(proxy: &'a Proxy, method: &'a str, path: &'a str, user: &'a str) -> Call<'a> {
    let c = proxy_call(proxy, method, path).user(user, "pw");
    match method {
        "PUT" if path.contains("/manifests/") => c
            .header("Content-Type: application/vnd.oci.image.manifest.v1+json")
            .body("{\"schemaVersion\":2}"),
        "PUT" | "PATCH" => c
            .header("Content-Type: application/octet-stream")
            .body("some layer bytes"),
        "POST" => c.header("Content-Length: 0"),
        _ => c,
    }
}

/// `team/app` and `other/app` exist; every other repository is unknown.
fn table_upstream() -> FakeUpstream {
    FakeUpstream::on_thread(|s| {
        let p = s.path();
        if p == "/v2/" {
            Reply::new(200).json(serde_json::json!({}))
        } else if p == "/v2/_catalog" {
            Reply::new(200).json(serde_json::json!({"repositories": ["other/app", "team/app"]}))
        } else if p.starts_with("/v2/team/app/") || p.starts_with("/v2/other/app/") {
            Reply::new(200)
                .header("x-fake-upstream", "yes")
                .json(serde_json::json!({"ok": true}))
        } else {
            Reply::new(404).json(serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry", "detail": null}]}))
        }
    })
}

#[test]
fn every_route_needs_its_actions_and_refusals_are_403_denied_without_a_challenge() {
    let fake = table_upstream();
    let proxy = table_proxy(&fake.url);
    let mut checked = 0;
    for (name, has) in TABLE_USERS {
        for (method, path, needs) in route_table("team/app") {
            fake.take();
            let r = table_call(&proxy, method, &path, name).send();
            let seen = fake.take();
            let what = format!("{name} {method} {path}");
            if needs & has == needs && path.ends_with("/tags/list") {
                // Answered by the proxy from its own read of the whole list.
                assert_eq!(r.status, 200, "{what}: {}", r.describe());
                assert_eq!(
                    r.json(),
                    serde_json::json!({"name": "team/app", "tags": []}),
                    "{what}"
                );
                assert_eq!(seen.len(), 1, "{what}: {seen:#?}");
                assert_eq!(
                    (seen[0].method.as_str(), seen[0].target.as_str()),
                    ("GET", "/v2/team/app/tags/list?n=1000"),
                    "{what}"
                );
            } else if needs & has == needs {
                assert_eq!(r.status, 200, "{what}: {}", r.describe());
                assert_eq!(r.header("x-fake-upstream"), Some("yes"), "{what}");
                assert_eq!(seen.len(), 1, "{what}: {seen:#?}");
                assert_eq!(
                    (seen[0].method.as_str(), seen[0].target.as_str()),
                    (method, path.as_str()),
                    "{what}"
                );
            } else {
                r.assert_refusal(403, "DENIED", &what);
                assert!(r.header("x-fake-upstream").is_none(), "{what}");
                assert!(seen.is_empty(), "{what}: forwarded {seen:#?}");
                if method != "HEAD" {
                    let msg = r.json()["errors"][0]["message"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    assert!(msg.contains("denied"), "{what}: {msg}");
                    assert!(
                        !msg.contains("team/app"),
                        "{what}: the message names the repository: {msg}"
                    );
                }
            }
            checked += 1;
        }
        // `/v2/` and the catalog: any authenticated user.
        for (method, path) in [("GET", "/v2/"), ("HEAD", "/v2/")] {
            let r = proxy_call(&proxy, method, path).user(name, "pw").send();
            assert_eq!(r.status, 200, "{name} {method} {path}: {}", r.describe());
        }
        let r = proxy_call(&proxy, "GET", "/v2/_catalog")
            .user(name, "pw")
            .send();
        assert_eq!(r.status, 200, "{name} catalog: {}", r.describe());
        let want: Vec<&str> = if has & P != 0 {
            vec!["team/app"]
        } else {
            vec![]
        };
        assert_eq!(
            r.json()["repositories"],
            serde_json::json!(want),
            "{name} catalog"
        );
    }
    assert_eq!(checked, 4 * 20);
    // A wrong password is a 401 with the challenge, never a 403.
    let r = proxy_call(&proxy, "GET", "/v2/team/app/tags/list")
        .user("puller", "nope")
        .send();
    r.assert_refusal(401, "UNAUTHORIZED", "wrong password");
}

#[test]
fn a_refusal_is_the_same_whether_the_repository_exists_or_not() {
    let fake = table_upstream();
    let proxy = table_proxy(&fake.url);
    // Nobody has a rule on other/**; other/app exists upstream, other/ghost does not.
    // pushonly has push on team/**, so reads of team/app and team/ghost are refused too.
    let pairs = [
        ("other/app", "other/ghost", "pusher"),
        ("team/app", "team/ghost", "pushonly"),
    ];
    for (real, ghost, name) in pairs {
        for ((method, path_real, needs), (_, path_ghost, _)) in
            route_table(real).into_iter().zip(route_table(ghost))
        {
            if name == "pushonly" && needs == U {
                continue; // allowed: not a refusal
            }
            fake.take();
            let a = table_call(&proxy, method, &path_real, name).send();
            let b = table_call(&proxy, method, &path_ghost, name).send();
            let what = format!("{name} {method} {path_real} vs {path_ghost}");
            a.assert_refusal(403, "DENIED", &what);
            b.assert_refusal(403, "DENIED", &what);
            assert_eq!(a.body, b.body, "{what}");
            let strip = |r: &Resp| -> Vec<(String, String)> {
                r.headers
                    .iter()
                    .filter(|(k, _)| k != "date" && k != "x-request-id")
                    .cloned()
                    .collect()
            };
            assert_eq!(strip(&a), strip(&b), "{what}");
            let seen = fake.take();
            assert!(seen.is_empty(), "{what}: the upstream was asked: {seen:#?}");
        }
    }
}
