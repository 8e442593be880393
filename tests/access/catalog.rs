//! Section G: the catalog filtered, capped and paged by the proxy (tag lists: `tags`).

use super::*;

// ---------------------------------------------------------------------------------------
// Section G: the catalog.

const CATALOG_MAX_N: usize = 50;
/// handler.rs: upstream catalog pages requested per client page at most.
const MAX_UPSTREAM_PAGES_PER_CLIENT_PAGE: usize = 20;

fn catalog_names() -> Vec<String> {
    let mut names: Vec<String> = (0..10_000).map(|i| format!("team-{i:04}/app")).collect();
    names.extend(
        [
            "alice/a",
            "alice/b/c",
            "alice",
            "alice-x/app",
            "alicex/app",
            "team-0042/web/x",
            "team-00420/app",
            "zeta/app",
        ]
        .map(String::from),
    );
    names.sort();
    names
}

fn alice_sees(name: &str) -> bool {
    name == "alice"
        || name.starts_with("alice/")
        || name == "team-0042"
        || name.starts_with("team-0042/")
}

/// A distribution-like catalog: sorted names after `last`, `n` of them (default 100; over
/// 1000 is a 400 like distribution 2.8.2), at most `page_cap` per page, and a `Link` to
/// the next page while there is one.
fn catalog_upstream(page_cap: usize) -> FakeUpstream {
    let names = catalog_names();
    FakeUpstream::on_thread(move |s| {
        if s.path() != "/v2/_catalog" {
            return Reply::new(404);
        }
        let mut n = 100usize;
        let mut last = None;
        for (k, v) in form_urlencoded::parse(s.query().unwrap_or("").as_bytes()) {
            match &*k {
                "n" => n = v.parse().unwrap_or(100),
                "last" => last = Some(v.into_owned()),
                _ => {}
            }
        }
        if n > 1000 {
            return Reply::new(400).json(serde_json::json!({"errors": [{"code": "PAGINATION_NUMBER_INVALID", "message": "invalid number of results requested", "detail": {"n": n}}]}));
        }
        let n = n.min(page_cap);
        let start = match &last {
            Some(l) => names.partition_point(|x| x.as_str() <= l.as_str()),
            None => 0,
        };
        let page: Vec<&String> = names[start..].iter().take(n).collect();
        let mut r = Reply::new(200).json(serde_json::json!({ "repositories": page }));
        if start + page.len() < names.len() && !page.is_empty() {
            let l: String =
                form_urlencoded::byte_serialize(page.last().unwrap().as_bytes()).collect();
            r = r.header(
                "link",
                &format!("</v2/_catalog?last={l}&n={n}>; rel=\"next\""),
            );
        }
        r
    })
}

fn catalog_proxy(upstream: &str) -> Proxy {
    Proxy::builder(upstream)
        .users(vec![
            user("alice", "pw", &[]),
            user("root", "pw", &["registry-admins"]),
            user("nobody", "pw", &[]),
        ])
        .access_yaml("  admins:\n    groups: [registry-admins]\n  rules:\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push, delete]\n    - repos: ['team-0042/**']\n      users: [alice]\n      actions: [pull]\n")
        .extra_yaml(&format!("limits:\n  catalog_max_n: {CATALOG_MAX_N}\n"))
        .start()
}

/// The `last` and `n` of the proxy's `Link: </v2/_catalog?last=X&n=N>; rel="next"`.
fn next_page(r: &Resp) -> Option<String> {
    let links = r.all("link");
    assert!(links.len() <= 1, "{links:?}");
    let link = links.first()?;
    let target = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("not a next link: {link}"));
    assert!(target.starts_with("/v2/_catalog?"), "{link}");
    Some(target.to_owned())
}

/// Follows the proxy's own links from `first`; returns every page's names. Checks the
/// time of each page and how many upstream requests it took.
fn walk(
    proxy: &Proxy,
    fake: &FakeUpstream,
    who: &str,
    first: &str,
    want_n: usize,
    max_upstream_per_page: usize,
) -> (Vec<Vec<String>>, usize) {
    let mut pages = Vec::new();
    let mut next = Some(first.to_owned());
    let mut upstream_total = 0;
    while let Some(path) = next {
        assert!(pages.len() < 1000, "{who}: no end to the pages");
        fake.take();
        let r = proxy_call(proxy, "GET", &path).user(who, "pw").send();
        let upstream = fake.take();
        assert_eq!(r.status, 200, "{who} {path}: {}", r.describe());
        assert!(
            r.elapsed < Duration::from_secs(10),
            "{who} {path}: took {:?}",
            r.elapsed
        );
        assert!(
            upstream.len() <= max_upstream_per_page,
            "{who} {path}: {} upstream requests",
            upstream.len()
        );
        assert!(upstream
            .iter()
            .all(|s| s.path() == "/v2/_catalog" && s.method == "GET"));
        upstream_total += upstream.len();
        let names: Vec<String> = serde_json::from_value(r.json()["repositories"].clone()).unwrap();
        assert!(names.len() <= want_n, "{who} {path}: {} names", names.len());
        next = next_page(&r);
        if let Some(n) = &next {
            assert!(n.ends_with(&format!("&n={want_n}")), "{who}: link {n}");
            // The cursor is the last name this page had to examine: never before the last
            // name served.
            let last: String = form_urlencoded::parse(n.split_once('?').unwrap().1.as_bytes())
                .find(|(k, _)| k == "last")
                .map(|(_, v)| v.into_owned())
                .unwrap();
            if let Some(l) = names.last() {
                assert!(
                    last.as_str() >= l.as_str(),
                    "{who}: link last={last} before {l}"
                );
            }
        }
        pages.push(names);
    }
    (pages, upstream_total)
}

fn assert_complete(who: &str, pages: &[Vec<String>], want: &[String]) {
    let all: Vec<String> = pages.iter().flatten().cloned().collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "{who}: duplicates across pages");
    assert_eq!(all, want, "{who}: pages {pages:?}");
}

#[test]
fn the_catalog_is_filtered_capped_and_paged_by_the_proxy() {
    let fake = catalog_upstream(1000);
    let proxy = catalog_proxy(&fake.url);
    let names = catalog_names();
    let alice: Vec<String> = names.iter().filter(|n| alice_sees(n)).cloned().collect();
    assert_eq!(
        alice,
        [
            "alice",
            "alice/a",
            "alice/b/c",
            "team-0042/app",
            "team-0042/web/x"
        ]
    );

    // n is honoured, one name at a time, and the links walk the whole filtered list.
    let (pages, total) = walk(&proxy, &fake, "alice", "/v2/_catalog?n=1", 1, 11);
    assert_complete("alice n=1", &pages, &alice);
    assert!(
        pages[..alice.len()].iter().all(|p| p.len() == 1),
        "{pages:?}"
    );
    // 10,008 names in pages of 1000: 11 upstream pages, then the walk stops.
    assert!(total <= 5 + 11, "alice n=1: {total} upstream requests");
    // n=2, and n over the cap is capped at catalog_max_n.
    let (pages, _) = walk(&proxy, &fake, "alice", "/v2/_catalog?n=2", 2, 11);
    assert_complete("alice n=2", &pages, &alice);
    assert_eq!(pages[0], ["alice", "alice/a"]);
    for first in ["/v2/_catalog?n=1000", "/v2/_catalog", "/v2/_catalog?n=50"] {
        let (pages, total) = walk(&proxy, &fake, "alice", first, CATALOG_MAX_N, 11);
        assert_complete(first, &pages, &alice);
        assert_eq!(pages.len(), 1, "{first}: {pages:?}");
        assert_eq!(
            total, 11,
            "{first}: a full scan is 11 upstream pages of 1000"
        );
    }
    // A user who may pull nothing gets an empty list, without a link.
    let (pages, _) = walk(&proxy, &fake, "nobody", "/v2/_catalog", CATALOG_MAX_N, 11);
    assert_complete("nobody", &pages, &[]);

    // The admin sees everything, 50 at a time.
    let r = proxy_call(&proxy, "GET", "/v2/_catalog?n=1000")
        .user("root", "pw")
        .send();
    assert_eq!(
        r.json()["repositories"].as_array().unwrap().len(),
        CATALOG_MAX_N
    );
    let want_last: String =
        form_urlencoded::byte_serialize(names[CATALOG_MAX_N - 1].as_bytes()).collect();
    assert_eq!(want_last, "team-00420%2Fapp");
    assert_eq!(
        next_page(&r).unwrap(),
        format!("/v2/_catalog?last={want_last}&n=50")
    );
    let (pages, total) = walk(
        &proxy,
        &fake,
        "root",
        "/v2/_catalog?n=1000",
        CATALOG_MAX_N,
        1,
    );
    assert_complete("root", &pages, &names);
    assert!(pages.iter().rev().skip(1).all(|p| p.len() == CATALOG_MAX_N));
    assert!(total <= pages.len());
    // n=7 honoured for the admin too.
    let r = proxy_call(&proxy, "GET", "/v2/_catalog?n=7&last=team-0041%2Fapp")
        .user("root", "pw")
        .send();
    assert_eq!(
        r.json()["repositories"],
        serde_json::json!([
            "team-0042/app",
            "team-0042/web/x",
            "team-00420/app",
            "team-0043/app",
            "team-0044/app",
            "team-0045/app",
            "team-0046/app"
        ])
    );
    assert_eq!(
        next_page(&r).unwrap(),
        "/v2/_catalog?last=team-0046%2Fapp&n=7"
    );

    // Anonymous requests for the catalog get the challenge; a bad n is refused.
    let r = proxy_call(&proxy, "GET", "/v2/_catalog").send();
    r.assert_refusal(401, "UNAUTHORIZED", "anonymous catalog");
    let r = proxy_call(&proxy, "GET", "/v2/_catalog?n=-1")
        .user("alice", "pw")
        .send();
    assert_eq!(r.status, 400, "{}", r.describe());
    let r = proxy_call(&proxy, "GET", "/v2/_catalog?n=1&n=2")
        .user("alice", "pw")
        .send();
    assert_eq!(r.status, 400, "{}", r.describe());
}

#[test]
fn the_catalog_scan_is_bounded_per_page_even_when_the_upstream_pages_are_small() {
    // An upstream that serves 100 names a page whatever n asks: reaching the end of 10,008
    // names takes 101 upstream pages, more than one client page may cost.
    let fake = catalog_upstream(100);
    let proxy = catalog_proxy(&fake.url);
    let names = catalog_names();
    let alice: Vec<String> = names.iter().filter(|n| alice_sees(n)).cloned().collect();
    let (pages, total) = walk(
        &proxy,
        &fake,
        "alice",
        "/v2/_catalog",
        CATALOG_MAX_N,
        MAX_UPSTREAM_PAGES_PER_CLIENT_PAGE,
    );
    assert_complete("alice", &pages, &alice);
    assert!(pages.len() > 1, "{pages:?}");
    assert_eq!(pages[0], alice, "the first page holds every visible name");
    assert!(total >= 101, "{total}");
    let (pages, _) = walk(
        &proxy,
        &fake,
        "root",
        "/v2/_catalog?n=50&last=team-9899%2Fapp",
        CATALOG_MAX_N,
        1,
    );
    let after: Vec<String> = names
        .iter()
        .filter(|n| n.as_str() > "team-9899/app")
        .cloned()
        .collect();
    assert_complete("root from team-9899", &pages, &after);
}
