//! Requests the proxy makes to the upstream on its own behalf, to decide or to answer:
//! does a tag exist (protected tags), which tags point at a digest (deletes), and the
//! catalog pages a filtered catalog page is filled from. Every lookup is bounded in
//! count and size; the proxy's own upstream authentication is used (Basic, or a token
//! for the lookup's scope: `repository:<name>:pull`, `registry:catalog:*`).

use super::upstream::{OutBody, Upstream};
use super::upstream_token::Need;
use crate::error::ProxyError;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

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

/// Up to `max` tags of `repo`, and whether that is all of them.
pub async fn tags(
    up: &Upstream,
    repo: &str,
    max: usize,
) -> Result<(Vec<String>, bool), ProxyError> {
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let mut pq = format!("/v2/{repo}/tags/list?n=1000");
        if let Some(l) = &last {
            pq.push_str("&last=");
            pq.extend(form_urlencoded::byte_serialize(l.as_bytes()));
        }
        let resp = request(up, Method::GET, &pq, &Need::pull(repo)).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok((out, true)),
            s => return Err(unexpected("tag listing", s)),
        }
        let next = next_last(&resp);
        let page: TagList = json(resp).await?;
        out.extend(page.tags.unwrap_or_default());
        // distribution 2.8 ignores `n` and answers every tag at once: a list cut to
        // `max` is never called complete.
        if out.len() > max {
            out.truncate(max);
            return Ok((out, false));
        }
        if out.len() == max {
            return Ok((out, next.is_none()));
        }
        match next {
            Some(n) if Some(&n) != last.as_ref() => last = Some(n),
            // A `Link` that does not move on: the listing cannot be trusted to be whole.
            Some(_) => return Ok((out, false)),
            None => return Ok((out, true)),
        }
    }
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

/// The tags of `repo` pointing at `digest` (a delete by digest removes them all), from
/// at most `max` tags; the flag says whether every tag was examined.
pub async fn tags_pointing_at(
    up: &Upstream,
    repo: &str,
    digest: &str,
    max: usize,
) -> Result<(Vec<String>, bool), ProxyError> {
    let (tags, complete) = tags(up, repo, max).await?;
    let mut out = Vec::new();
    for t in tags {
        if manifest_digest(up, repo, &t).await?.as_deref() == Some(digest) {
            out.push(t);
        }
    }
    Ok((out, complete))
}
