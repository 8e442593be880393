//! Section G: tag lists answered by the proxy itself (after the pull check), as the OCI
//! distribution spec has them whatever the upstream does: the whole list read from the
//! upstream's pages (bounded by `limits.max_tags`, an error past it, never a short list),
//! sorted in byte order, cut by `n` and `last`, with the proxy's own relative `Link`.
//! First against fake upstreams that page like distribution 3 or ignore `n` like 2.8,
//! then against Debian's docker-registry (2.8) holding 1,000 tags pushed in random order.

use super::*;
use common::client::{collect, h1_client, header, request, LegacyClient};
use common::fake::TestBody;

// ---------------------------------------------------------------------------------------
// Fake upstreams.

/// `team/app` holds `tags` (served in the order given). `paged`: pages by `n` and `last`
/// over that order and links the next page (a registry that pages without sorting);
/// otherwise every tag in one answer whatever the query (distribution 2.8).
fn tags_fake(tags: Vec<String>, paged: bool) -> FakeUpstream {
    FakeUpstream::on_thread(move |s| {
        if s.path() != "/v2/team/app/tags/list" {
            return Reply::new(404).json(serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry", "detail": {"name": "x"}}]}));
        }
        if !paged {
            return Reply::new(200).json(serde_json::json!({"name": "team/app", "tags": tags}));
        }
        let (mut n, mut last) = (tags.len(), None);
        for (k, v) in form_urlencoded::parse(s.query().unwrap_or("").as_bytes()) {
            match &*k {
                "n" => n = v.parse().unwrap(),
                "last" => last = Some(v.into_owned()),
                _ => {}
            }
        }
        let start = last.map_or(0, |l| tags.iter().position(|t| *t == l).unwrap() + 1);
        let page: Vec<&String> = tags[start..].iter().take(n).collect();
        let mut r = Reply::new(200).json(serde_json::json!({"name": "team/app", "tags": page}));
        if start + page.len() < tags.len() {
            r = r.header(
                "link",
                &format!(
                    "</v2/team/app/tags/list?last={}&n={n}>; rel=\"next\"",
                    page.last().unwrap()
                ),
            );
        }
        r
    })
}

/// 2,500 distinct tags in a scrambled order.
fn scrambled_tags() -> Vec<String> {
    let mut t: Vec<String> = (0..2500)
        .map(|i| format!("t{:05}", (i * 7919) % 2500))
        .collect();
    t.push("Latest".into());
    t
}

fn tags_of(r: &Resp) -> Vec<String> {
    serde_json::from_value(r.json()["tags"].clone()).unwrap()
}

#[test]
fn tag_lists_are_read_whole_sorted_and_paged_by_the_proxy() {
    for paged in [true, false] {
        let all = scrambled_tags();
        let mut sorted = all.clone();
        sorted.sort();
        let fake = tags_fake(all, paged);
        let proxy = table_proxy(&fake.url);
        let get = |q: &str| {
            fake.take();
            let r = proxy_call(&proxy, "GET", &format!("/v2/team/app/tags/list{q}"))
                .user("puller", "pw")
                .send();
            (r, fake.take())
        };
        let what = if paged {
            "paged upstream"
        } else {
            "one answer"
        };

        // Every upstream page is read, asking for 1000 at a time; the answer is sorted.
        let (r, seen) = get("");
        assert_eq!(r.status, 200, "{what}: {}", r.describe());
        assert_eq!(
            r.header("docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{}",
            r.describe()
        );
        assert_eq!(r.json()["name"], "team/app");
        assert_eq!(tags_of(&r), sorted, "{what}");
        assert!(r.all("link").is_empty(), "{what}");
        let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
        if paged {
            assert_eq!(
                targets,
                [
                    "/v2/team/app/tags/list?n=1000",
                    &format!(
                        "/v2/team/app/tags/list?n=1000&last={}",
                        scrambled_tags()[999]
                    ),
                    &format!(
                        "/v2/team/app/tags/list?n=1000&last={}",
                        scrambled_tags()[1999]
                    ),
                ],
                "{what}"
            );
        } else {
            assert_eq!(targets, ["/v2/team/app/tags/list?n=1000"], "{what}");
        }

        // The client's n and last apply to the sorted list; the Link is the proxy's own.
        let (r, _) = get("?n=2");
        assert_eq!(tags_of(&r), ["Latest", "t00000"], "{what}");
        assert_eq!(
            r.all("link"),
            ["</v2/team/app/tags/list?last=t00000&n=2>; rel=\"next\""]
        );
        let (r, _) = get("?n=3&last=t00000");
        assert_eq!(tags_of(&r), ["t00001", "t00002", "t00003"], "{what}");
        assert_eq!(
            r.all("link"),
            ["</v2/team/app/tags/list?last=t00003&n=3>; rel=\"next\""]
        );
        // A last that is no tag of the list starts after where it would be.
        let (r, _) = get("?n=1&last=t00002a");
        assert_eq!(tags_of(&r), ["t00003"], "{what}");
        // The end: no link; past it, an empty list; n=0, an empty list without a link.
        let (r, _) = get("?n=2&last=t02497");
        assert_eq!(tags_of(&r), ["t02498", "t02499"], "{what}");
        assert!(r.all("link").is_empty(), "{what}");
        for q in ["?last=zzz", "?n=0", "?n=0&last=t00001", "?n=5&last=t02499"] {
            let (r, _) = get(q);
            assert_eq!(r.status, 200, "{q}: {}", r.describe());
            assert_eq!(
                r.json(),
                serde_json::json!({"name": "team/app", "tags": []}),
                "{q}"
            );
            assert!(r.all("link").is_empty(), "{q}");
        }
        // Parameter encoding is the client's, the meaning the spec's.
        let (r, _) = get("?last=t0000%30&n=1");
        assert_eq!(tags_of(&r), ["t00001"], "{what}");

        // Malformed, repeated or non-tag parameters never reach the upstream.
        for q in ["?n=1&n=2", "?last=a/b", "?n=x", "?n=-1", "?last=a&last=b"] {
            let (r, seen) = get(q);
            r.assert_refusal(400, "UNSUPPORTED", q);
            assert!(seen.is_empty(), "{q}: {seen:#?}");
        }
        // An unknown repository: 404 NAME_UNKNOWN in the registry's format.
        fake.take();
        let r = proxy_call(&proxy, "GET", "/v2/team/ghost/tags/list?n=1")
            .user("puller", "pw")
            .send();
        r.assert_refusal(404, "NAME_UNKNOWN", "unknown repository");
        // Refused users see the same 403 as before, and nothing is asked upstream.
        fake.take();
        let r = proxy_call(&proxy, "GET", "/v2/team/app/tags/list")
            .user("pushonly", "pw")
            .send();
        r.assert_refusal(403, "DENIED", "no pull");
        assert!(fake.take().is_empty());
    }
}

#[test]
fn a_tag_list_over_max_tags_is_an_error_never_a_short_list() {
    for paged in [true, false] {
        let fake = tags_fake(scrambled_tags(), paged);
        let what = if paged {
            "paged upstream"
        } else {
            "one answer"
        };
        // 2,501 tags: a bound of 2,501 serves them all, 2,500 serves none.
        let at = |max: usize| {
            Proxy::builder(&fake.url)
                .users(vec![user("puller", "pw", &[])])
                .extra_yaml(&format!("limits:\n  max_tags: {max}\n"))
                .start()
        };
        let exact = at(2501);
        let r = proxy_call(&exact, "GET", "/v2/team/app/tags/list?n=1")
            .user("puller", "pw")
            .send();
        assert_eq!(r.status, 200, "{what}: {}", r.describe());
        assert_eq!(tags_of(&r), ["Latest"]);
        drop(exact);
        let short = at(2500);
        for q in ["", "?n=1", "?n=10&last=t00100"] {
            fake.take();
            let r = proxy_call(&short, "GET", &format!("/v2/team/app/tags/list{q}"))
                .user("puller", "pw")
                .send();
            r.assert_refusal(500, "UNKNOWN", &format!("{what} {q}"));
            let msg = r.json()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                msg.contains("more than 2500 tags") && msg.contains("limits.max_tags"),
                "{msg}"
            );
            // A paging upstream is not read past the bound.
            let pages = fake.take().len();
            assert_eq!(pages, if paged { 3 } else { 1 }, "{what}");
        }
        let small = at(1000);
        let r = proxy_call(&small, "GET", "/v2/team/app/tags/list?n=1")
            .user("puller", "pw")
            .send();
        r.assert_refusal(500, "UNKNOWN", what);
        assert!(r.text().contains("more than 1000 tags"), "{}", r.describe());
    }
}

// ---------------------------------------------------------------------------------------
// Debian's docker-registry (2.8: unsorted, `n` and `last` ignored), 1,000 tags.

const TAG_COUNT: usize = 1000;

/// 1,000 distinct tags that sort differently by byte, by number and by case: digits,
/// upper and lower case, `-`, `.` and `_`, in a fixed-seed random order.
fn thousand_tags() -> Vec<String> {
    const PREFIXES: [&str; 10] = ["", "v", "V", "_", "a-", "a.", "a_", "Z", "rc-", "1.0-"];
    let mut tags: Vec<String> = (0..TAG_COUNT)
        .map(|i| format!("{}{i}", PREFIXES[i % PREFIXES.len()]))
        .collect();
    // Fisher–Yates with a 64-bit LCG (Knuth's MMIX constants), seed fixed.
    let mut state: u64 = 0x5eed_2026;
    for i in (1..tags.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = ((state >> 33) % (i as u64 + 1)) as usize;
        tags.swap(i, j);
    }
    tags
}

/// Puts a config blob and a layer into `repo` and returns an OCI manifest of them.
async fn small_manifest(client: &RegistryClient, reg: &Registry, repo: &str) -> Vec<u8> {
    let mut descriptors = Vec::new();
    for (media_type, bytes) in [
        ("application/vnd.oci.image.config.v1+json", &b"{}"[..]),
        (
            "application/vnd.oci.image.layer.v1.tar",
            &b"registry-guard tag list test layer"[..],
        ),
    ] {
        let digest = common::e2e::sha256_digest(bytes);
        let start = client
            .request(
                http::Request::post(format!("{}/v2/{repo}/blobs/uploads/", reg.url))
                    .header("content-length", "0")
                    .body(TestBody::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let (status, h, body) = collect(start).await;
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
        let location = header(&h, "location")[0].to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", reg.url)
        } else {
            location
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = client
            .request(
                http::Request::put(format!("{location}{sep}digest={digest}"))
                    .header("content-type", "application/octet-stream")
                    .body(TestBody::bytes(bytes.to_vec()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let (status, _, body) = collect(put).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        descriptors.push(serde_json::json!({
            "mediaType": media_type, "digest": digest, "size": bytes.len()
        }));
    }
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": [descriptors[1]],
    }))
    .unwrap()
}

type RegistryClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

/// Pushes `tags` straight to the registry, all naming the same manifest, 8 at a time.
async fn push_tags(reg: &Registry, repo: &str, tags: &[String]) {
    let client: RegistryClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let manifest = bytes::Bytes::from(small_manifest(&client, reg, repo).await);
    let mut set = tokio::task::JoinSet::new();
    for chunk in tags.chunks(tags.len().div_ceil(8)) {
        let (client, manifest, chunk) = (client.clone(), manifest.clone(), chunk.to_vec());
        let url = format!("{}/v2/{repo}/manifests/", reg.url);
        set.spawn(async move {
            for tag in chunk {
                let resp = client
                    .request(
                        http::Request::put(format!("{url}{tag}"))
                            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                            .body(TestBody::bytes(manifest.clone()))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let (status, _, body) = collect(resp).await;
                assert_eq!(status, 201, "{tag}: {}", String::from_utf8_lossy(&body));
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}

/// A GET through the proxy on the one keep-alive client: status, tags, next link.
async fn list(
    client: &LegacyClient,
    proxy: &Proxy,
    path: &str,
) -> (u16, Vec<String>, Option<String>) {
    let resp = client
        .request(
            request(proxy, "GET", path)
                .header("authorization", basic("alice", "pw"))
                .body(TestBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, h, body) = collect(resp).await;
    if status != 200 {
        return (status.as_u16(), Vec::new(), None);
    }
    assert_eq!(
        header(&h, "docker-distribution-api-version"),
        ["registry/2.0"]
    );
    assert!(
        header(&h, "content-type")[0].starts_with("application/json"),
        "{h:?}"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["name"], "alice/many", "{path}");
    let tags: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
    let links = header(&h, "link");
    assert!(links.len() <= 1, "{path}: {links:?}");
    let next = links.first().map(|l| {
        l.strip_prefix('<')
            .and_then(|l| l.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("{path}: not a next link: {l}"))
            .to_owned()
    });
    (200, tags, next)
}

/// The page the spec asks for: tags after `last` (exclusive), at most `n`, and the link
/// to the next page exactly when a tag follows.
fn expected(sorted: &[String], n: usize, last: Option<&str>) -> (Vec<String>, Option<String>) {
    let start = last.map_or(0, |l| sorted.partition_point(|t| t.as_str() <= l));
    let page: Vec<String> = sorted[start..].iter().take(n).cloned().collect();
    let next = (start + page.len() < sorted.len() && n > 0).then(|| {
        format!(
            "/v2/alice/many/tags/list?last={}&n={n}",
            page.last().unwrap()
        )
    });
    (page, next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_thousand_tags_in_random_order_come_back_sorted_and_paged_by_the_spec() {
    let Some(reg) = Registry::start() else { return };
    let tags = thousand_tags();
    let started = std::time::Instant::now();
    push_tags(&reg, "alice/many", &tags).await;
    eprintln!("pushed {TAG_COUNT} tags in {:?}", started.elapsed());
    let mut sorted = tags.clone();
    sorted.sort();
    assert_ne!(tags, sorted, "the push order is not already sorted");

    // distribution 2.8 itself: every tag, but neither n nor the spec's order.
    let direct = run(
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .arg(format!("{}/v2/alice/many/tags/list?n=5", reg.url)),
        Duration::from_secs(40),
    );
    let direct: Vec<String> = serde_json::from_value(
        common::e2e::json(ok(&direct, "curl the registry").trim(), "tags")["tags"].clone(),
    )
    .unwrap();
    assert_eq!(direct.len(), TAG_COUNT, "2.8 ignores n");

    let proxy = Proxy::builder(&reg.url)
        .users(vec![user("alice", "pw", &[])])
        .access_yaml(
            "  rules:\n    - repos: ['alice/**']\n      users: [alice]\n      actions: [pull]\n",
        )
        .start();
    let client = h1_client(&proxy);

    // The whole list, sorted in byte order, without a link.
    let (status, all, next) = list(&client, &proxy, "/v2/alice/many/tags/list").await;
    assert_eq!(status, 200);
    assert_eq!(all, sorted);
    assert_eq!(next, None);
    assert_eq!(&all[..4], ["0", "1.0-109", "1.0-119", "1.0-129"]);

    // Walking the links covers every tag exactly once, in order, for any n.
    let walk_started = std::time::Instant::now();
    for n in [1usize, 7, 100, 999, 1000, 5000] {
        let mut path = format!("/v2/alice/many/tags/list?n={n}");
        let (mut seen, mut pages) = (Vec::new(), 0);
        loop {
            pages += 1;
            assert!(pages <= TAG_COUNT + 1, "n={n}: no end to the pages");
            let (status, page, next) = list(&client, &proxy, &path).await;
            assert_eq!(status, 200, "{path}");
            assert!(page.len() <= n, "{path}: {} tags", page.len());
            let last = seen.last().cloned();
            let (want, want_next) = expected(&sorted, n, last.as_deref());
            assert_eq!(page, want, "{path}");
            assert_eq!(next, want_next, "{path}");
            seen.extend(page);
            match next {
                Some(p) => path = p,
                None => break,
            }
        }
        assert_eq!(seen, sorted, "n={n}");
        assert_eq!(pages, TAG_COUNT.div_ceil(n), "n={n}");
    }
    eprintln!("link walks took {:?}", walk_started.elapsed());

    // Every tag as `last`, with n=3 and without n: the right page, and a link exactly
    // when a tag follows.
    let last_started = std::time::Instant::now();
    for (i, last) in sorted.iter().enumerate() {
        let (status, page, next) = list(
            &client,
            &proxy,
            &format!("/v2/alice/many/tags/list?n=3&last={last}"),
        )
        .await;
        assert_eq!(status, 200, "last={last}");
        let (want, want_next) = expected(&sorted, 3, Some(last));
        assert_eq!(page, want, "last={last}");
        assert_eq!(page, sorted[i + 1..(i + 4).min(TAG_COUNT)], "last={last}");
        assert_eq!(next, want_next, "last={last}");
        if i % 97 == 0 || i + 1 == TAG_COUNT {
            let (_, rest, next) = list(
                &client,
                &proxy,
                &format!("/v2/alice/many/tags/list?last={last}"),
            )
            .await;
            assert_eq!(rest, sorted[i + 1..], "last={last}");
            assert_eq!(next, None);
        }
    }
    eprintln!("{TAG_COUNT} last= pages took {:?}", last_started.elapsed());
    // Cursors that are no tag of the list (between two, after all); n=0. (No valid tag
    // sorts before "0", and a last that is no valid tag is refused: see above.)
    for (q, want) in [
        ("last=00&n=2", sorted[1..3].to_vec()),
        ("last=a-1000&n=2", expected(&sorted, 2, Some("a-1000")).0),
        ("last=zzz&n=2", vec![]),
        ("n=0", vec![]),
        ("n=0&last=V1", vec![]),
    ] {
        let (status, page, next) =
            list(&client, &proxy, &format!("/v2/alice/many/tags/list?{q}")).await;
        assert_eq!((status, &page), (200, &want), "{q}");
        if q.contains("zzz") || q.starts_with("n=0") {
            assert_eq!(next, None, "{q}");
        }
    }
    assert!(!expected(&sorted, 2, Some("a-1000")).0.is_empty());

    // An unknown repository: the registry's 404 NAME_UNKNOWN, in its format.
    let resp = client
        .request(
            request(&proxy, "GET", "/v2/alice/ghost/tags/list")
                .header("authorization", basic("alice", "pw"))
                .body(TestBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let (status, h, body) = collect(resp).await;
    common::client::assert_registry_error(status, &h, &body, 404, "NAME_UNKNOWN");

    // Over limits.max_tags: a clear error, never a short list; at the bound, all of it.
    for (max, whole) in [(TAG_COUNT - 1, false), (TAG_COUNT, true)] {
        let bounded = Proxy::builder(&reg.url)
            .users(vec![user("alice", "pw", &[])])
            .extra_yaml(&format!("limits:\n  max_tags: {max}\n"))
            .start();
        let client = h1_client(&bounded);
        for q in ["", "?n=10", "?n=10&last=V1"] {
            let resp = client
                .request(
                    request(&bounded, "GET", &format!("/v2/alice/many/tags/list{q}"))
                        .header("authorization", basic("alice", "pw"))
                        .body(TestBody::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let (status, h, body) = collect(resp).await;
            if whole {
                assert_eq!(status, 200, "max {max} {q}");
                continue;
            }
            common::client::assert_registry_error(status, &h, &body, 500, "UNKNOWN");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let msg = v["errors"][0]["message"].as_str().unwrap();
            assert!(
                msg.contains(&format!("more than {max} tags")) && msg.contains("limits.max_tags"),
                "{msg}"
            );
        }
    }
}
