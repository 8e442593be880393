//! PURE: method + raw path + raw query → [`Route`] or [`RouteError`].
//!
//! Invariants:
//! - The decision is made on exactly the bytes that are forwarded: the path is never
//!   decoded, normalised or rewritten. Anything a backend might decode or clean up
//!   differently (`%`-escapes, `\`, dot segments, empty segments, trailing `/`) is refused
//!   instead, so the repository the proxy checks is the repository the registry serves.
//! - Matching is greedy on the name, like distribution's router:
//!   `/v2/foo/bar/manifests/tags/list` is the tag list of `foo/bar/manifests`.
//! - Every accepted route renders back to the same path ([`Route::path`]); a property
//!   test holds the parser to that.
//! - `/v1/...` and every other non-v2 path are refused: they carry ids that belong to no
//!   namespace, so no per-namespace rule could be enforced on them. The one exception is
//!   [`TOKEN_PATH`], which the proxy answers itself and never forwards.

use super::grammar;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_route_is_get_of_exactly_its_path() {
        let r = parse(
            &Method::GET,
            TOKEN_PATH,
            Some("service=x&scope=repository:a:pull"),
        )
        .unwrap();
        assert_eq!(
            (r.kind(), r.repo(), r.actions()),
            ("token", None, Actions::NONE)
        );
        assert_eq!(r.path(), TOKEN_PATH);
        for (m, p) in [
            (Method::POST, "/auth/token"),
            (Method::HEAD, "/auth/token"),
            (Method::GET, "/auth/token/"),
            (Method::GET, "/auth/tokens"),
            (Method::GET, "/auth/%74oken"),
            (Method::GET, "/v2/auth/token/x"),
        ] {
            assert!(
                !matches!(
                    parse(&m, p, None),
                    Ok(Route {
                        target: Target::Token,
                        ..
                    })
                ),
                "{m} {p}"
            );
        }
        let long = "a".repeat(MAX_QUERY + 1);
        assert!(parse(&Method::GET, TOKEN_PATH, Some(&long)).is_err());
    }

    #[test]
    fn stripping_mount_keeps_everything_else_byte_for_byte() {
        let q = "mount=sha256%3Aab&from=bob%2Fapp&x=1%2B2&%6Dount=y&digest=sha256:cd";
        assert_eq!(
            strip_query_params(q, &["mount", "from"]),
            "x=1%2B2&digest=sha256:cd"
        );
        assert_eq!(strip_query_params("mount=a&from=b", &["mount", "from"]), "");
        assert_eq!(strip_query_params("", &["mount"]), "");
    }
}
use http::Method;
use std::fmt;

/// Actions a route needs on its repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// No repository action: `/v2/` and `/v2/_catalog` need only a known user.
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    pub const ALL: Actions = Actions(7);

    pub const fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }
    pub const fn intersection(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }
    pub const fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The actions missing from `self` to satisfy `needed`.
    pub const fn missing(self, needed: Actions) -> Actions {
        Actions(needed.0 & !self.0)
    }
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (Self::PULL, "pull"),
            (Self::PUSH, "push"),
            (Self::DELETE, "delete"),
        ]
        .into_iter()
        .filter(move |(a, _)| self.contains(*a))
        .map(|(_, n)| n)
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut first = true;
        for n in self.names() {
            if !first {
                f.write_str("+")?;
            }
            f.write_str(n)?;
            first = false;
        }
        Ok(())
    }
}

/// What a manifest path points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(String),
}

impl Reference {
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(s) | Reference::Digest(s) => s,
        }
    }
}

/// A cross-repository mount requested on an upload start
/// (`?mount=<digest>&from=<repo>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub digest: String,
    pub from: String,
}

/// The resource a v2 request addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/v2/`: the API version check and login probe.
    Base,
    /// `/v2/_catalog`.
    Catalog {
        n: Option<u32>,
        last: Option<String>,
    },
    /// `/v2/<name>/tags/list`, answered by the proxy from the whole list (see
    /// `registry::tags`).
    TagsList {
        repo: String,
        n: Option<u32>,
        last: Option<String>,
    },
    /// `/v2/<name>/manifests/<tag|digest>`.
    Manifest { repo: String, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { repo: String, digest: String },
    /// `/v2/<name>/blobs/uploads/` (POST): starts an upload, a monolithic push, or a mount.
    UploadStart { repo: String, mount: Option<Mount> },
    /// `/v2/<name>/blobs/uploads/<id>`: an upload session.
    Upload { repo: String, id: String },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers { repo: String, digest: String },
    /// `/auth/token` (GET): the proxy's own token endpoint for docker (`auth::token`);
    /// never forwarded. Its query (`service`, `scope`, `account`) is not read: a token
    /// proves an identity, never scopes.
    Token,
}

/// A well-formed v2 request: its method, what it addresses and what it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub target: Target,
}

impl Route {
    /// Short stable name of the route kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Base => "base",
            Target::Catalog { .. } => "catalog",
            Target::TagsList { .. } => "tags",
            Target::Manifest { .. } => "manifest",
            Target::Blob { .. } => "blob",
            Target::UploadStart { .. } => "upload_start",
            Target::Upload { .. } => "upload",
            Target::Referrers { .. } => "referrers",
            Target::Token => "token",
        }
    }

    /// The repository addressed, if any (`/v2/` and `/v2/_catalog` address none).
    pub fn repo(&self) -> Option<&str> {
        match &self.target {
            Target::Base | Target::Catalog { .. } | Target::Token => None,
            Target::TagsList { repo, .. }
            | Target::Manifest { repo, .. }
            | Target::Blob { repo, .. }
            | Target::UploadStart { repo, .. }
            | Target::Upload { repo, .. }
            | Target::Referrers { repo, .. } => Some(repo),
        }
    }

    /// The namespace: the first component of the repository name.
    pub fn namespace(&self) -> Option<&str> {
        self.repo().map(|r| r.split('/').next().unwrap_or(r))
    }

    /// The actions the route needs on [`Route::repo`].
    pub fn actions(&self) -> Actions {
        let m = &self.method;
        match &self.target {
            Target::Base | Target::Catalog { .. } | Target::Token => Actions::NONE,
            Target::TagsList { .. } | Target::Referrers { .. } => Actions::PULL,
            Target::Manifest { .. } | Target::Blob { .. } if *m == Method::DELETE => {
                Actions::DELETE.union(Actions::PULL)
            }
            Target::Manifest { .. } if *m == Method::PUT => Actions::PUSH.union(Actions::PULL),
            Target::Manifest { .. } | Target::Blob { .. } => Actions::PULL,
            // Cancelling an upload deletes nothing stored.
            Target::Upload { .. } if *m == Method::DELETE => Actions::PUSH,
            Target::UploadStart { .. } | Target::Upload { .. } => {
                Actions::PUSH.union(Actions::PULL)
            }
        }
    }

    /// Renders the canonical path of the route. For every accepted request this is the
    /// request's own path, byte for byte.
    pub fn path(&self) -> String {
        match &self.target {
            Target::Base => "/v2/".to_owned(),
            Target::Catalog { .. } => "/v2/_catalog".to_owned(),
            Target::TagsList { repo, .. } => format!("/v2/{repo}/tags/list"),
            Target::Manifest { repo, reference } => {
                format!("/v2/{repo}/manifests/{}", reference.as_str())
            }
            Target::Blob { repo, digest } => format!("/v2/{repo}/blobs/{digest}"),
            Target::UploadStart { repo, .. } => format!("/v2/{repo}/blobs/uploads/"),
            Target::Upload { repo, id } => format!("/v2/{repo}/blobs/uploads/{id}"),
            Target::Referrers { repo, digest } => format!("/v2/{repo}/referrers/{digest}"),
            Target::Token => TOKEN_PATH.to_owned(),
        }
    }
}

/// Why a request is not a well-formed v2 route. Rendered by `response.rs`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not a v2 route at all, a path trick, or a method the route does not have: 404,
    /// never forwarded.
    #[error("{0}")]
    NotFound(&'static str),
    #[error("invalid repository name: {0}")]
    NameInvalid(&'static str),
    #[error("invalid tag: {0}")]
    TagInvalid(&'static str),
    #[error("invalid digest: {0}")]
    DigestInvalid(&'static str),
    #[error("invalid upload id")]
    UploadInvalid,
    /// GET/HEAD of a manifest whose reference is no valid tag or digest: it cannot
    /// exist, and the OCI distribution spec answers 404 `MANIFEST_UNKNOWN`.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(&'static str),
    /// GET/HEAD of a blob whose digest is malformed: 404 `BLOB_UNKNOWN`, as the spec says.
    #[error("blob unknown: {0}")]
    BlobUnknown(&'static str),
    /// A query parameter that is malformed, repeated where one is meant, or ambiguous.
    #[error("invalid query: {0}")]
    QueryInvalid(&'static str),
}

/// Longest path accepted; a name is at most 255 bytes, so this is generous.
pub const MAX_PATH: usize = 2048;
/// Longest query accepted (upload `_state` tokens run to a few hundred bytes).
pub const MAX_QUERY: usize = 8192;

/// The proxy's token endpoint for docker (see `auth::token`), outside `/v2/`.
pub const TOKEN_PATH: &str = "/auth/token";

/// Parses a request. `path` and `query` are the raw, undecoded request-target parts.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let rest = match path {
        TOKEN_PATH => None,
        _ => Some(check_path(path)?),
    };
    if query.is_some_and(|q| q.len() > MAX_QUERY) {
        return Err(RouteError::QueryInvalid("query string too long"));
    }
    let target = match rest {
        None => Target::Token,
        Some(rest) => parse_target(rest, query).map_err(|e| unknown_to_reads(method, rest, e))?,
    };
    let route = Route {
        method: method.clone(),
        target,
    };
    if allows(&route) {
        Ok(route)
    } else {
        Err(RouteError::NotFound("method not supported on this route"))
    }
}

/// A read (GET, HEAD) of a manifest or blob whose reference is malformed asks for
/// something that cannot exist: the spec's answer is 404 `MANIFEST_UNKNOWN` or
/// `BLOB_UNKNOWN`, not 400. Writes and deletes keep the 400 that names the grammar.
fn unknown_to_reads(method: &Method, rest: &str, e: RouteError) -> RouteError {
    if *method != Method::GET && *method != Method::HEAD {
        return e;
    }
    let kind = rest.rsplit('/').nth(1);
    match (&e, kind) {
        (RouteError::TagInvalid(m) | RouteError::DigestInvalid(m), Some("manifests")) => {
            RouteError::ManifestUnknown(m)
        }
        (RouteError::DigestInvalid(m), Some("blobs")) => RouteError::BlobUnknown(m),
        _ => e,
    }
}

/// Path-level refusals that do not depend on the route: returns what follows `/v2/`.
fn check_path(path: &str) -> Result<&str, RouteError> {
    if path.len() > MAX_PATH {
        return Err(RouteError::NotFound("path too long"));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Err(RouteError::NotFound(
            "not a Registry HTTP API v2 path (the v1 API is not served)",
        ));
    };
    if !rest.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(RouteError::NotFound(
            "path holds a control, space or non-ASCII byte",
        ));
    }
    if rest.contains('%') {
        return Err(RouteError::NotFound(
            "percent-encoded bytes are not accepted in registry paths",
        ));
    }
    if rest.contains('\\') {
        return Err(RouteError::NotFound("backslash in path"));
    }
    if rest.split('/').any(|s| s == "." || s == "..") {
        return Err(RouteError::NotFound("dot segment in path"));
    }
    Ok(rest)
}

fn parse_target(rest: &str, query: Option<&str>) -> Result<Target, RouteError> {
    if rest.is_empty() {
        return Ok(Target::Base);
    }
    if rest == "_catalog" {
        let (n, last) = page_params(query, grammar::is_name)?;
        return Ok(Target::Catalog { n, last });
    }
    // The one route whose path ends in `/`.
    if let Some(repo) = rest.strip_suffix("/blobs/uploads/") {
        let repo = name(repo)?;
        let mount = mount_params(query)?;
        return Ok(Target::UploadStart { repo, mount });
    }
    let segs: Vec<&str> = rest.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound("empty path segment"));
    }
    let n = segs.len();
    let last = segs[n - 1];
    let tail = |k: usize| segs[n - k];
    // No segment is empty, so joining the leading segments gives back the name's bytes.
    let repo_of = |k: usize| name(&segs[..n - k].join("/"));
    if n >= 3 && tail(2) == "tags" && last == "list" {
        let repo = repo_of(2)?;
        let (n, last) = page_params(query, grammar::is_tag)?;
        return Ok(Target::TagsList { repo, n, last });
    }
    if n >= 3 && tail(2) == "manifests" {
        let repo = repo_of(2)?;
        let reference = if last.contains(':') {
            grammar::check_digest(last).map_err(|p| RouteError::DigestInvalid(p.message()))?;
            Reference::Digest(last.to_owned())
        } else if grammar::is_tag(last) {
            Reference::Tag(last.to_owned())
        } else {
            return Err(RouteError::TagInvalid(
                "tag does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}",
            ));
        };
        return Ok(Target::Manifest { repo, reference });
    }
    if n >= 4 && tail(3) == "blobs" && tail(2) == "uploads" {
        let repo = repo_of(3)?;
        if !grammar::is_upload_id(last) {
            return Err(RouteError::UploadInvalid);
        }
        single_digest_param(query)?;
        return Ok(Target::Upload {
            repo,
            id: last.to_owned(),
        });
    }
    if n >= 3 && (tail(2) == "blobs" || tail(2) == "referrers") {
        let repo = repo_of(2)?;
        grammar::check_digest(last).map_err(|p| RouteError::DigestInvalid(p.message()))?;
        let digest = last.to_owned();
        return Ok(if tail(2) == "blobs" {
            Target::Blob { repo, digest }
        } else {
            Target::Referrers { repo, digest }
        });
    }
    Err(RouteError::NotFound(
        "no Registry HTTP API v2 route has this shape",
    ))
}

fn name(s: &str) -> Result<String, RouteError> {
    if s.len() > grammar::MAX_NAME {
        Err(RouteError::NameInvalid("longer than 255 bytes"))
    } else if grammar::is_name(s) {
        Ok(s.to_owned())
    } else {
        Err(RouteError::NameInvalid(
            "components must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
        ))
    }
}

/// Decoded query pairs; `None` query is no pairs.
fn pairs(
    query: Option<&str>,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
}

/// The one value of `key`, refusing repeats: a parameter given twice could be read
/// differently by the proxy and the registry.
fn single(
    query: Option<&str>,
    key: &str,
    what: &'static str,
) -> Result<Option<String>, RouteError> {
    let mut found = None;
    for (k, v) in pairs(query) {
        if k == key {
            if found.is_some() {
                return Err(RouteError::QueryInvalid(what));
            }
            found = Some(v.into_owned());
        }
    }
    Ok(found)
}

/// `n` and `last` of a paginated list; `last` checked by `valid_last`.
fn page_params(
    query: Option<&str>,
    valid_last: fn(&str) -> bool,
) -> Result<(Option<u32>, Option<String>), RouteError> {
    let n = match single(query, "n", "parameter n given more than once")? {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| RouteError::QueryInvalid("n is not a non-negative integer"))?,
        ),
    };
    let last =
        single(query, "last", "parameter last given more than once")?.filter(|v| !v.is_empty());
    if last.as_deref().is_some_and(|l| !valid_last(l)) {
        return Err(RouteError::QueryInvalid("last is not a valid name or tag"));
    }
    Ok((n, last))
}

/// `mount`/`from`/`digest` of an upload start: a mount reads `from`, so both are checked
/// here and each may be given once.
fn mount_params(query: Option<&str>) -> Result<Option<Mount>, RouteError> {
    // Older Go servers split queries at `;` as well as `&`: `x=1;from=victim&mount=D`
    // would be a mount there and a plain upload here. No client sends `;`.
    if query.is_some_and(|q| q.contains(';')) {
        return Err(RouteError::QueryInvalid("';' in an upload query"));
    }
    let mount = single(query, "mount", "parameter mount given more than once")?;
    let from = single(query, "from", "parameter from given more than once")?;
    single_digest_param(query)?;
    if let Some(m) = &mount {
        grammar::check_digest(m).map_err(|p| RouteError::DigestInvalid(p.message()))?;
    }
    if let Some(f) = &from {
        if !grammar::is_name(f) {
            return Err(RouteError::NameInvalid(
                "the from parameter is not a valid repository name",
            ));
        }
    }
    Ok(match (mount, from) {
        (Some(digest), Some(from)) => Some(Mount { digest, from }),
        // Without both, distribution starts a plain upload: nothing is read from elsewhere.
        _ => None,
    })
}

fn single_digest_param(query: Option<&str>) -> Result<(), RouteError> {
    if let Some(d) = single(query, "digest", "parameter digest given more than once")? {
        grammar::check_digest(&d).map_err(|p| RouteError::DigestInvalid(p.message()))?;
    }
    Ok(())
}

/// `query` without the parameters named in `drop`; every other pair is kept byte for
/// byte, in order. Keys are compared decoded (`%6Dount` is `mount`).
pub fn strip_query_params(query: &str, drop: &[&str]) -> String {
    query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            !pair.is_empty() && !drop.contains(&decoded.as_str())
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The methods each route has.
fn allows(route: &Route) -> bool {
    let m = &route.method;
    let read = *m == Method::GET || *m == Method::HEAD;
    match route.target {
        Target::Base => read,
        Target::Token => *m == Method::GET,
        Target::Catalog { .. } | Target::TagsList { .. } | Target::Referrers { .. } => {
            *m == Method::GET
        }
        Target::Manifest { .. } => read || *m == Method::PUT || *m == Method::DELETE,
        Target::Blob { .. } => read || *m == Method::DELETE,
        Target::UploadStart { .. } => *m == Method::POST,
        Target::Upload { .. } => {
            read || *m == Method::PATCH || *m == Method::PUT || *m == Method::DELETE
        }
    }
}
