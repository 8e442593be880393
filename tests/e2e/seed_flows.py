#!/usr/bin/python3
"""Replays the seed document's registry API flows (seeds/000_93b673ffcf883b31.txt).

The seed is a company guide to its private registry plus the Python `requests`
script its staff use: a class holding a pre-emptive `Authorization: Basic
base64(user:password)` header (never waiting for a 401 challenge) and a browser
User-Agent, requesting tags/list, _catalog, a manifest, and deleting a manifest
by the digest taken from `Docker-Content-Digest`. This script does the same, in
order, against an image that is already pushed, and asserts every answer:

  1 tags_list       GET    /v2/NAME/tags/list           200, TAG listed
  2 catalog         GET    /v2/_catalog                 200, NAME listed (follows Link pages)
  3 get_manifest    GET    /v2/NAME/manifests/TAG       200, Docker-Content-Digest == sha256(body)
  4 head_manifest   HEAD   /v2/NAME/manifests/TAG       200, same digest, Content-Length == len(body)
  5 delete_manifest DELETE /v2/NAME/manifests/DIGEST    202
  6 gone_manifest   GET    /v2/NAME/manifests/TAG       404 in the registry error format
    gone_tags       GET    /v2/NAME/tags/list           TAG gone: 200 with null/[] tags, or 404 NAME_UNKNOWN

With --expect-deleted only step 6 runs (and, with --digest, a GET by that digest
must be 404 too): it checks an image that something else already deleted.

Usage:
  seed_flows.py --base https://127.0.0.1:PORT --cacert CA.pem --user U --password P \\
                --repo NAME --tag TAG [--expect-deleted [--digest D]]
  (--password-env VAR reads the password from the environment instead of argv;
   --base may be http:// and --cacert / --user are optional, e.g. for a bare registry)

Prints one JSON line per step on stdout; exits 0 only when every step passed,
1 on the first failed step, 2 on bad usage. Never prints the password or the
Authorization header. Stdlib + requests only.
"""
import argparse
import base64
import hashlib
import json
import os
import re
import sys
import time
import urllib.parse

import requests

# The seed script's browser User-Agent, verbatim.
USER_AGENT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
              "(KHTML, like Gecko) Chrome/70.0.3538.110 Safari/537.36")
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])
BODY_SHOWN = 2000      # characters of a response body quoted in a failure message
CATALOG_MAX_PAGES = 100


class StepFailed(Exception):
    pass


class RegistryClient:
    """Like the seed's conn_dockerregistry: fixed headers, one plain request per call."""

    def __init__(self, base, user, password, cacert, timeout):
        self.base = base.rstrip("/")
        self.headers = {"User-Agent": USER_AGENT}
        self.secrets = []
        if user is not None:
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            self.headers["Authorization"] = "Basic " + token
            # longest first, so a password that happens to occur in the token cannot break it up
            self.secrets = sorted((s for s in (password, token) if s), key=len, reverse=True)
        # http:// needs no CA; https:// without --cacert uses the system store
        self.verify = cacert if cacert else True
        self.timeout = timeout

    def request(self, method, path, headers=None):
        h = dict(self.headers)
        h.update(headers or {})
        # a new session (and connection) per call, like the seed's requests.get(); no
        # proxy or ~/.netrc credentials from the environment; no redirects: a registry
        # proxy must answer, never bounce the client elsewhere
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, self.base + path, headers=h, verify=self.verify,
                             timeout=self.timeout, allow_redirects=False)

    def redact(self, text):
        """Replace the password and the Basic token wherever they appear in text."""
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def redact_value(self, v):
        if isinstance(v, str):
            return self.redact(v)
        if isinstance(v, list):
            return [self.redact_value(x) for x in v]
        return v


def describe(r):
    body = r.text[:BODY_SHOWN] if r.request.method != "HEAD" else "(HEAD: no body)"
    return f"{r.request.method} {urllib.parse.urlsplit(r.url).path} -> {r.status_code}; body: {body!r}"


def expect(cond, what, r):
    if not cond:
        raise StepFailed(f"{what}: {describe(r)}")


def json_body(r):
    try:
        return r.json()
    except ValueError:
        raise StepFailed(f"body is not JSON: {describe(r)}")


def expect_registry_error(r, codes):
    """Body must be {"errors": [{"code": ...}, ...]} with one of `codes`."""
    body = json_body(r)
    errs = body.get("errors") if isinstance(body, dict) else None
    expect(isinstance(errs, list) and errs and all(isinstance(e, dict) and "code" in e for e in errs),
           'body is not registry error JSON {"errors":[{"code":...}]}', r)
    got = [e["code"] for e in errs]
    expect(any(c in codes for c in got), f"error code {got} not one of {sorted(codes)}", r)
    return got


def tags_of(r, repo):
    body = json_body(r)
    expect(isinstance(body, dict) and body.get("name") == repo, f'tags/list body lacks "name": "{repo}"', r)
    tags = body.get("tags")
    expect(tags is None or isinstance(tags, list), '"tags" is neither a list nor null', r)
    return tags or []


def next_link(r):
    """Path+query of a Link: <...>; rel="next" header, or None."""
    m = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', r.headers.get("Link", ""))
    if not m:
        return None
    u = urllib.parse.urlsplit(m.group(1))
    return u.path + ("?" + u.query if u.query else "")


# ---- the seed's flows ---------------------------------------------------------------

def step_tags_list(c, a, st):
    r = c.request("GET", f"/v2/{a.repo}/tags/list")
    expect(r.status_code == 200, "tags/list: want 200", r)
    tags = tags_of(r, a.repo)
    expect(a.tag in tags, f"tag {a.tag!r} not in tags {tags}", r)
    return r, {"tags": len(tags)}


def step_catalog(c, a, st):
    path, seen, pages = "/v2/_catalog", 0, 0
    while path and pages < CATALOG_MAX_PAGES:
        r = c.request("GET", path)
        pages += 1
        expect(r.status_code == 200, "_catalog: want 200", r)
        body = json_body(r)
        repos = body.get("repositories") if isinstance(body, dict) else None
        expect(isinstance(repos, list), '_catalog body lacks a "repositories" list', r)
        seen += len(repos)
        if a.repo in repos:
            return r, {"pages": pages, "repositories_seen": seen}
        path = next_link(r)
    raise StepFailed(f"repository {a.repo!r} not in _catalog ({seen} repositories over {pages} pages): {describe(r)}")


def step_get_manifest(c, a, st):
    r = c.request("GET", f"/v2/{a.repo}/manifests/{a.tag}", {"Accept": MANIFEST_ACCEPT})
    expect(r.status_code == 200, "GET manifest: want 200", r)
    digest = r.headers.get("Docker-Content-Digest")
    expect(digest, "GET manifest: no Docker-Content-Digest header", r)
    actual = "sha256:" + hashlib.sha256(r.content).hexdigest()
    expect(digest == actual, f"Docker-Content-Digest {digest} != sha256 of the body {actual}", r)
    ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
    expect(ctype in MANIFEST_ACCEPT.split(", "), f"Content-Type {ctype!r} is not one of the accepted manifest types", r)
    body = json_body(r)
    expect(isinstance(body, dict) and body.get("schemaVersion") == 2, "manifest body is not schemaVersion 2", r)
    st.update(digest=digest, length=len(r.content))
    return r, {"digest": digest, "content_type": ctype, "bytes": len(r.content)}


def step_head_manifest(c, a, st):
    r = c.request("HEAD", f"/v2/{a.repo}/manifests/{a.tag}", {"Accept": MANIFEST_ACCEPT})
    expect(r.status_code == 200, "HEAD manifest: want 200", r)
    digest = r.headers.get("Docker-Content-Digest")
    expect(digest == st["digest"], f"HEAD Docker-Content-Digest {digest} != GET's {st['digest']}", r)
    length = r.headers.get("Content-Length")
    expect(length == str(st["length"]), f"HEAD Content-Length {length} != GET body length {st['length']}", r)
    return r, {"digest": digest, "content_length": int(length)}


def step_delete_manifest(c, a, st):
    # the seed: <reference> "can only be a digest", taken from Docker-Content-Digest
    r = c.request("DELETE", f"/v2/{a.repo}/manifests/{st['digest']}")
    expect(r.status_code == 202, "DELETE manifest by digest: want 202", r)
    return r, {"digest": st["digest"]}


def step_gone_manifest(c, a, st):
    r = c.request("GET", f"/v2/{a.repo}/manifests/{a.tag}", {"Accept": MANIFEST_ACCEPT})
    expect(r.status_code == 404, "GET deleted manifest by tag: want 404", r)
    codes = expect_registry_error(r, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
    return r, {"codes": codes}


def step_gone_digest(c, a, st):
    r = c.request("GET", f"/v2/{a.repo}/manifests/{st['digest']}", {"Accept": MANIFEST_ACCEPT})
    expect(r.status_code == 404, "GET deleted manifest by digest: want 404", r)
    codes = expect_registry_error(r, {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})
    return r, {"codes": codes}


def step_gone_tags(c, a, st):
    # the seed: "if the image does not exist, the list is empty"; distribution 2.8
    # answers 200 with "tags": null (or []), or 404 NAME_UNKNOWN once no tag is left
    r = c.request("GET", f"/v2/{a.repo}/tags/list")
    if r.status_code == 404:
        return r, {"codes": expect_registry_error(r, {"NAME_UNKNOWN"})}
    expect(r.status_code == 200, "tags/list after delete: want 200 or 404", r)
    tags = tags_of(r, a.repo)
    expect(a.tag not in tags, f"tag {a.tag!r} still listed after delete: {tags}", r)
    return r, {"tags": tags}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base", required=True, help="http(s)://HOST:PORT of the registry or proxy")
    ap.add_argument("--cacert", help="PEM file of the CA that signed the server certificate")
    ap.add_argument("--user")
    pw = ap.add_mutually_exclusive_group()
    pw.add_argument("--password")
    pw.add_argument("--password-env", metavar="VAR", help="read the password from this environment variable")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--expect-deleted", action="store_true", help="only check that TAG is gone")
    ap.add_argument("--digest", help="with --expect-deleted: also check that this digest is gone")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.base)
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query:
        ap.error("--base must be http(s)://HOST[:PORT]")
    if u.username or u.password:
        ap.error("--base must not hold credentials: use --user/--password")
    password = os.environ.get(a.password_env) if a.password_env else a.password
    if a.password_env and password is None:
        ap.error(f"--password-env: ${a.password_env} is not set")
    if password is not None and a.user is None:
        ap.error("--password needs --user")
    if a.cacert and not os.path.isfile(a.cacert):
        ap.error(f"--cacert {a.cacert}: no such file")
    if a.digest and not a.expect_deleted:
        ap.error("--digest is only used with --expect-deleted")

    c = RegistryClient(a.base, a.user, password, a.cacert, a.timeout)
    if a.expect_deleted:
        steps = [step_gone_manifest, step_gone_tags] + ([step_gone_digest] if a.digest else [])
    else:
        steps = [step_tags_list, step_catalog, step_get_manifest, step_head_manifest,
                 step_delete_manifest, step_gone_manifest, step_gone_tags]
    state = {"digest": a.digest}

    for fn in steps:
        name = fn.__name__[len("step_"):]
        t0 = time.monotonic()
        try:
            r, details = fn(c, a, state)
            # details quote the server's answers: redact them in case it echoed a secret
            details = {k: c.redact_value(v) for k, v in details.items()}
            line = {"step": name, "ok": True, "status": r.status_code,
                    "ms": round((time.monotonic() - t0) * 1e3, 1), **details}
            print(json.dumps(line), flush=True)
        except (StepFailed, requests.RequestException, OSError) as e:  # OSError: TLS/CA file trouble
            msg = c.redact(f"{type(e).__name__}: {e}")
            print(json.dumps({"step": name, "ok": False, "error": msg}), flush=True)
            print(f"seed_flows: step {name} FAILED: {msg}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
