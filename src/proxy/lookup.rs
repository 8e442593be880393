//! Requests the proxy makes to the upstream on its own behalf, to decide or to answer:
//! does a tag exist (protected tags), a repository's whole tag list (the tag lists the
//! proxy answers, protected tags, deletes), which tags point at which digest (a snapshot
//! shared by the audited deletes of a repository, see [`tag_snapshot`]), and
//! the catalog pages a filtered catalog page is filled from. Every lookup is bounded in
//! count and size; the proxy's own upstream authentication is used (Basic, or a token
//! for the lookup's scope: `repository:<name>:pull`, `registry:catalog:*`).

use super::upstream::{OutBody, Upstream};
use super::upstream_token::Need;
use crate::error::ProxyError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use std::sync::Arc;

/// Every manifest type a registry may hold, so a HEAD finds whatever the tag points at.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.v1+prettyjws";

/// Largest JSON body a lookup reads (a catalog or tag page).
const MAX_JSON: usize = 8 * 1024 * 1024;

async fn request(
    up: &Upstream,
    method: Method,
    path_and_query: &str,
    need: &Need,
) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
    let (parts, ()) = Request::builder()
        .method(method)
        .uri(up.uri(path_and_query)?)
        .header(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))
        .body(())
        .map_err(|e| ProxyError::internal("cannot build a lookup request", e))?
        .into_parts();
    up.send_authorized(parts, OutBody::Empty, need, None).await
}

async fn json<T: serde::de::DeserializeOwned>(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<T, ProxyError> {
    let body = Limited::new(resp.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| ProxyError::upstream("reading a lookup answer", e))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ProxyError::upstream("the lookup answer is not the expected JSON", e))
}

fn unexpected(what: &str, status: StatusCode) -> ProxyError {
    ProxyError::UpstreamUnavailable {
        what: format!("{what}: upstream answered {status}"),
        source: None,
    }
}

/// The digest a tag (or digest) resolves to; `None` when the manifest does not exist.
pub async fn manifest_digest(
    up: &Upstream,
    repo: &str,
    reference: &str,
) -> Result<Option<String>, ProxyError> {
    let resp = request(
        up,
        Method::HEAD,
        &format!("/v2/{repo}/manifests/{reference}"),
        &Need::pull(repo),
    )
    .await?;
    match resp.status() {
        StatusCode::OK => Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)),
        StatusCode::NOT_FOUND => Ok(None),
        s => Err(unexpected("manifest lookup", s)),
    }
}

/// A manifest's digest and body (GET, every manifest type accepted); `None` when it
/// does not exist. The digest is the upstream's `Docker-Content-Digest`, else the
/// SHA-256 of the body.
pub async fn manifest(
    up: &Upstream,
    repo: &str,
    reference: &str,
) -> Result<Option<(String, Bytes)>, ProxyError> {
    let resp = request(
        up,
        Method::GET,
        &format!("/v2/{repo}/manifests/{reference}"),
        &Need::pull(repo),
    )
    .await?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        s => return Err(unexpected("manifest read", s)),
    }
    let header = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(resp.into_body(), MAX_JSON)
        .collect()
        .await
        .map_err(|e| ProxyError::upstream("reading a manifest", e))?
        .to_bytes();
    let digest =
        header.unwrap_or_else(|| format!("sha256:{}", crate::audit::record::line_hash(&body)));
    Ok(Some((digest, body)))
}

#[derive(serde::Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

#[derive(serde::Deserialize)]
struct Catalog {
    repositories: Option<Vec<String>>,
}

/// The `last=` value of a `Link: <...?last=X&n=N>; rel="next"` header.
fn next_last(resp: &http::Response<hyper::body::Incoming>) -> Option<String> {
    let link = resp.headers().get(header::LINK)?.to_str().ok()?;
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned())
}

/// What the proxy read of a repository's tags.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tags {
    /// Sorted in byte order, without duplicates (`registry::tags::sort`), at most the
    /// `max` asked for.
    pub tags: Vec<String>,
    /// Whether that is every tag. A list cut short is never called complete.
    pub complete: bool,
}

/// Tags asked of the upstream per page: distribution 3 pages by `n` and `last` and
/// follows with a `Link`; distribution 2.8 ignores both and answers every tag at once.
const TAG_PAGE: usize = 1000;

/// Bytes of one tag in a JSON list at most: 128 characters, quotes and a comma.
const TAG_JSON_BYTES: usize = 131;

/// The one reader of a repository's tags (the tag lists the proxy answers, the protected
/// tag check, the tags an audited delete removes): every upstream page, followed by its
/// `Link` to the end or past `max`, sorted. `None`: the upstream does not know the
/// repository. Past `max` the first `max` tags (in order) are returned, not complete.
pub async fn tags(up: &Upstream, repo: &str, max: usize) -> Result<Option<Tags>, ProxyError> {
    // An upstream that ignores `n` sends every tag in one answer: room for `max` and one
    // more, so a longer list is seen to be longer rather than failing to read.
    let body_cap = MAX_JSON.max(
        (max + 1)
            .saturating_mul(TAG_JSON_BYTES)
            .saturating_add(4096),
    );
    let mut out: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    let complete = loop {
        let mut pq = format!("/v2/{repo}/tags/list?n={TAG_PAGE}");
        if let Some(l) = &last {
            pq.push_str("&last=");
            pq.extend(form_urlencoded::byte_serialize(l.as_bytes()));
        }
        let resp = request(up, Method::GET, &pq, &Need::pull(repo)).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND if last.is_none() => return Ok(None),
            s => return Err(unexpected("tag listing", s)),
        }
        let next = next_last(&resp);
        let body = match Limited::new(resp.into_body(), body_cap).collect().await {
            Ok(b) => b.to_bytes(),
            // More bytes than `max` tags can take: more tags than `max`.
            Err(e) if e.is::<http_body_util::LengthLimitError>() => break false,
            Err(e) => return Err(ProxyError::upstream("reading a tag list", e)),
        };
        let page: TagList = serde_json::from_slice(&body)
            .map_err(|e| ProxyError::upstream("the tag list is not the expected JSON", e))?;
        let got = page.tags.unwrap_or_default();
        let empty = got.is_empty();
        out.extend(got);
        if out.len() > max {
            break false;
        }
        match next {
            None => break true,
            // `max` read and the upstream says there is more, or a `Link` that does not
            // move on or follows an empty page: the listing cannot be called whole.
            Some(_) if out.len() == max || empty => break false,
            Some(n) if Some(&n) == last.as_ref() => break false,
            Some(n) => last = Some(n),
        }
    };
    // Sorted before it is cut: a list cut at `max` is the first `max` tags in order,
    // whatever order the upstream sent them in.
    crate::registry::tags::sort(&mut out);
    out.truncate(max);
    Ok(Some(Tags {
        tags: out,
        complete,
    }))
}

/// One upstream catalog page after `last`: names, and the cursor of the next page if
/// the upstream says there is one.
pub async fn catalog_page(
    up: &Upstream,
    last: Option<&str>,
    n: usize,
) -> Result<(Vec<String>, Option<String>), ProxyError> {
    let mut pq = format!("/v2/_catalog?n={n}");
    if let Some(l) = last {
        pq.push_str("&last=");
        pq.extend(form_urlencoded::byte_serialize(l.as_bytes()));
    }
    let resp = request(up, Method::GET, &pq, &Need::catalog()).await?;
    if resp.status() != StatusCode::OK {
        return Err(unexpected("catalog", resp.status()));
    }
    let next = next_last(&resp);
    let page: Catalog = json(resp).await?;
    Ok((page.repositories.unwrap_or_default(), next))
}

/// HEADs of one tag snapshot in flight at once at most: enough to hide the upstream's
/// latency, few enough not to crowd out the requests of others.
pub const TAG_LOOKUPS: usize = 16;

/// HEADs of all tag snapshots (every repository) in flight at once at most, per
/// upstream: however many repositories see deletes at the same time, the lookups ask
/// the registry no more than this many at once.
pub const ALL_TAG_LOOKUPS: usize = 32;

/// What [`tag_snapshot`] read of a repository: its tags (in the list's order, at most
/// the `max` asked for) and the digest each pointed at when it was HEADed (`None`: gone
/// by then).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TagSnapshot {
    pub tags: Vec<(String, Option<String>)>,
    /// Whether that is every tag (see [`Tags::complete`]).
    pub complete: bool,
}

impl TagSnapshot {
    /// The tags pointing at `digest` (a delete by digest removes them all), in the
    /// list's order.
    pub fn pointing_at(&self, digest: &str) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, d)| d.as_deref() == Some(digest))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The digest `tag` pointed at; `None` also when the tag was not read.
    pub fn digest_of(&self, tag: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(t, _)| t == tag)
            .and_then(|(_, d)| d.as_deref())
    }
}

/// A snapshot or why it could not be taken, shared by every request of its round.
pub type SharedSnapshot = Result<Arc<TagSnapshot>, Arc<ProxyError>>;

/// The shared snapshots of one upstream's repositories, keyed by repository and `max`.
pub type Snapshots = super::coalesce::Coalescer<(String, usize), SharedSnapshot>;

/// A tag→digest snapshot of `repo` (at most `max` tags, read with [`tags`], one HEAD per
/// tag, at most [`TAG_LOOKUPS`] at once for this snapshot and [`ALL_TAG_LOOKUPS`] for
/// all of them) taken by a round that **started after this call**, shared with every
/// other caller for `repo` that queued for the same round (the audited deletes of a
/// repository: one snapshot for all those that arrived while the previous one ran).
/// Why that is as true as a lookup of one's own: `super::coalesce`. The first failure
/// ends the snapshot (the rest of its HEADs are cancelled) and every caller of the round
/// gets the error.
pub async fn tag_snapshot(up: &Arc<Upstream>, repo: &str, max: usize) -> SharedSnapshot {
    let job_up = up.clone();
    let job_repo = repo.to_owned();
    up.tag_snapshots
        .join((repo.to_owned(), max), move || async move {
            take_snapshot(&job_up, &job_repo, max)
                .await
                .map(Arc::new)
                .map_err(Arc::new)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Arc::new(ProxyError::internal(
                "the tag snapshot of an audited delete",
                e,
            )))
        })
}

/// One snapshot, for [`tag_snapshot`].
async fn take_snapshot(
    up: &Arc<Upstream>,
    repo: &str,
    max: usize,
) -> Result<TagSnapshot, ProxyError> {
    let Tags { tags, complete } = tags(up, repo, max).await?.unwrap_or(Tags {
        tags: Vec::new(),
        complete: true,
    });
    let mut lookups = tokio::task::JoinSet::new();
    let start = |set: &mut tokio::task::JoinSet<_>, (i, tag): (usize, String)| {
        let (up, repo) = (up.clone(), repo.to_owned());
        set.spawn(async move {
            // Never closed: an error only if it were.
            let found = match up.tag_lookups.acquire().await {
                Ok(_permit) => manifest_digest(&up, &repo, &tag).await,
                Err(e) => Err(ProxyError::internal("the tag lookup limit", e)),
            };
            (i, tag, found)
        });
    };
    let mut pending = tags.into_iter().enumerate();
    for t in pending.by_ref().take(TAG_LOOKUPS) {
        start(&mut lookups, t);
    }
    let mut out: Vec<(usize, String, Option<String>)> = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        let (i, tag, found) =
            joined.map_err(|e| ProxyError::internal("a tag lookup of a tag snapshot", e))?;
        out.push((i, tag, found?));
        if let Some(t) = pending.next() {
            start(&mut lookups, t);
        }
    }
    out.sort_unstable();
    Ok(TagSnapshot {
        tags: out.into_iter().map(|(_, t, d)| (t, d)).collect(),
        complete,
    })
}

#[cfg(test)]
mod tests {
    use super::TagSnapshot;

    #[test]
    fn a_snapshot_names_the_tags_on_a_digest_in_list_order() {
        let s = TagSnapshot {
            tags: [
                ("a", Some("sha256:1")),
                ("b", Some("sha256:2")),
                ("c", None),
                ("d", Some("sha256:1")),
            ]
            .into_iter()
            .map(|(t, d)| (t.to_owned(), d.map(str::to_owned)))
            .collect(),
            complete: true,
        };
        assert_eq!(s.pointing_at("sha256:1"), ["a", "d"]);
        assert!(s.pointing_at("sha256:3").is_empty());
        assert_eq!(s.digest_of("b"), Some("sha256:2"));
        assert_eq!(s.digest_of("c"), None);
        assert_eq!(s.digest_of("zz"), None);
    }
}
