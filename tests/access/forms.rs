//! Section F: mount parameters are checked, and a form body (which distribution would
//! read as parameters) is refused however its Content-Type is spelled.

use super::*;

// ---------------------------------------------------------------------------------------
// Section F: mounts and form bodies.

#[test]
fn mount_parameters_are_checked_and_a_mount_without_pull_on_from_is_a_plain_upload() {
    let fake = FakeUpstream::on_thread(|s| {
        if s.method == "POST" {
            Reply::new(202).header(
                "location",
                "/v2/alice/app/blobs/uploads/7c9a2f4e-1b2d-4c3e-9f80-aa11bb22cc33",
            )
        } else {
            Reply::new(200)
        }
    });
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[]), user("bob", "pw", &[])])
        .access_yaml("  rules:\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push, delete]\n    - repos: ['public/**']\n      users: ['*']\n      actions: [pull]\n")
        .start();
    let post = |query: &str| {
        let path = format!("/v2/alice/app/blobs/uploads/{query}");
        let r = proxy_call(&proxy, "POST", &path)
            .user("alice", "pw")
            .header("Content-Length: 0")
            .send();
        (r, fake.take())
    };

    // Refused before anything is forwarded.
    let bad = [
        (
            format!("?mount={DIGEST}&mount={OTHER_DIGEST}&from=public/base"),
            "UNSUPPORTED",
        ),
        (
            format!("?mount={DIGEST}&from=public/base&from=bob/app"),
            "UNSUPPORTED",
        ),
        (
            format!("?mount={DIGEST}&%66rom=bob/app&from=public/base"),
            "UNSUPPORTED",
        ),
        (format!("?mount={DIGEST}&from=Bob/App"), "NAME_INVALID"),
        (format!("?mount={DIGEST}&from=bob//app"), "NAME_INVALID"),
        (format!("?mount={DIGEST}&from=../bob/app"), "NAME_INVALID"),
        (
            "?mount=sha256:nothex&from=public/base".to_owned(),
            "DIGEST_INVALID",
        ),
    ];
    for (q, code) in &bad {
        let (r, seen) = post(q);
        r.assert_refusal(400, code, q);
        assert!(seen.is_empty(), "{q}: forwarded {seen:#?}");
    }

    // Without pull on `from`: forwarded as a plain upload start, other parameters kept.
    let (r, seen) = post(&format!("?mount={DIGEST}&from=bob/app&x=1"));
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/v2/alice/app/blobs/uploads/?x=1");
    assert!(seen[0].body.is_empty());
    assert!(
        !seen[0].headers.contains_key("authorization"),
        "the client's credentials were forwarded"
    );
    let (r, seen) = post(&format!("?from=bob%2Fapp&mount={DIGEST}"));
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(seen[0].target, "/v2/alice/app/blobs/uploads/");
    assert_eq!(seen[0].query(), None);

    // With pull on `from`: forwarded unchanged.
    let (r, seen) = post(&format!("?mount={DIGEST}&from=public/base"));
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(
        seen[0].target,
        format!("/v2/alice/app/blobs/uploads/?mount={DIGEST}&from=public/base")
    );
    let (_, seen) = post(&format!("?mount={DIGEST}&from=alice/other"));
    assert_eq!(
        seen[0].target,
        format!("/v2/alice/app/blobs/uploads/?mount={DIGEST}&from=alice/other")
    );

    // Form bodies on an upload start: 400, nothing forwarded, whatever the query says.
    for ct in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "multipart/form-data; boundary=x",
    ] {
        for q in ["", "?mount=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef&from=public/base"] {
            let path = format!("/v2/alice/app/blobs/uploads/{q}");
            let r = proxy_call(&proxy, "POST", &path)
                .user("alice", "pw")
                .header(&format!("Content-Type: {ct}"))
                .body(&format!("mount={DIGEST}&from=bob/app"))
                .send();
            r.assert_refusal(400, "UNSUPPORTED", ct);
            let seen = fake.take();
            assert!(seen.is_empty(), "{ct} {q}: forwarded {seen:#?}");
        }
    }
    // A plain upload start as curl -d would send it (no explicit type) is a form too.
    let r = proxy_call(&proxy, "POST", "/v2/alice/app/blobs/uploads/")
        .user("alice", "pw")
        .body(&format!("mount={DIGEST}&from=bob/app"))
        .send();
    r.assert_refusal(400, "UNSUPPORTED", "curl -d");
    assert!(fake.take().is_empty());
}

#[test]
fn a_form_body_is_refused_however_its_content_type_is_spelled() {
    let fake = FakeUpstream::on_thread(|_| Reply::new(202));
    let proxy = Proxy::builder(&fake.url)
        .users(vec![user("alice", "pw", &[])])
        .access_yaml("  rules:\n    - repos: ['${user}/**']\n      users: ['*']\n      actions: [pull, push, delete]\n")
        .start();
    let auth = basic("alice", "pw");
    let body = format!("mount={DIGEST}&from=bob/app");
    let path = "/v2/alice/app/blobs/uploads/";
    // HTTP/2 carries header values as given: leading white space reaches the upstream.
    for ct in DISGUISED_FORM_TYPES {
        let (status, resp) = h2_request(
            proxy.addr,
            &proxy.ca,
            "POST",
            path,
            &[("authorization", auth.as_bytes()), ("content-type", ct)],
            &body,
        );
        let what = String::from_utf8_lossy(ct).into_owned();
        assert_eq!(status, 400, "h2 {what:?}: {resp}");
        assert!(resp.contains("UNSUPPORTED"), "h2 {what:?}: {resp}");
        let seen = fake.take();
        assert!(seen.is_empty(), "h2 {what:?} forwarded: {seen:#?}");
    }
    // A form type in any of several Content-Type values.
    let (status, resp) = h2_request(
        proxy.addr,
        &proxy.ca,
        "POST",
        path,
        &[
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/octet-stream"),
            ("content-type", b"application/x-www-form-urlencoded"),
        ],
        &body,
    );
    assert_eq!(status, 400, "two content types: {resp}");
    assert!(fake.take().is_empty());
    // HTTP/1.1 trims spaces and tabs itself; Unicode white space stays in the value.
    for ct in [
        "\u{a0}application/x-www-form-urlencoded",
        "\u{2003}multipart/form-data; boundary=x",
    ] {
        let r = proxy_call(&proxy, "POST", path)
            .user("alice", "pw")
            .header(&format!("Content-Type: {ct}"))
            .body(&body)
            .send();
        r.assert_refusal(400, "UNSUPPORTED", ct);
        assert!(fake.take().is_empty(), "{ct:?} forwarded");
    }
    // No body at all on an upload start, whatever its type: a monolithic single-POST
    // upload is refused too (distribution 2.8 ignores such a body anyway).
    let (status, resp) = h2_request(
        proxy.addr,
        &proxy.ca,
        "POST",
        &format!("{path}?digest={DIGEST}"),
        &[
            ("authorization", auth.as_bytes()),
            ("content-type", b"application/octet-stream"),
        ],
        "blob bytes",
    );
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp.contains("UNSUPPORTED") && resp.contains("no body"),
        "{resp}"
    );
    assert!(fake.take().is_empty());
    let r = proxy_call(&proxy, "POST", path)
        .user("alice", "pw")
        .header("Content-Type: application/octet-stream")
        .body("x")
        .send();
    r.assert_refusal(400, "UNSUPPORTED", "a one-byte body");
    assert!(fake.take().is_empty());
    // A chunked body announces no length: read, and refused at its first byte.
    let r = proxy_call(&proxy, "POST", path)
        .user("alice", "pw")
        .header("Content-Type: application/json")
        .header("Transfer-Encoding: chunked")
        .body(&body)
        .send();
    r.assert_refusal(400, "UNSUPPORTED", "a chunked body");
    assert!(fake.take().is_empty());

    // Types that are no form but that no client sends on an upload start: refused.
    for ct in ODD_UPLOAD_START_TYPES {
        let (status, resp) = h2_request(
            proxy.addr,
            &proxy.ca,
            "POST",
            path,
            &[("authorization", auth.as_bytes()), ("content-type", ct)],
            "",
        );
        let what = String::from_utf8_lossy(ct).into_owned();
        assert_eq!(status, 400, "h2 {what:?}: {resp}");
        assert!(fake.take().is_empty(), "h2 {what:?} forwarded");
    }

    // What clients send passes, and reaches the upstream with no body and no type at all.
    for (ct, chunked) in [
        (None, false),
        (Some("application/json"), false),
        (Some("application/octet-stream"), false),
        (Some("application/json"), true),
    ] {
        let target = format!("{path}?mount={DIGEST}&from=alice/other");
        let mut c = proxy_call(&proxy, "POST", &target).user("alice", "pw");
        if let Some(ct) = ct {
            c = c.header(&format!("Content-Type: {ct}"));
        }
        c = if chunked {
            c.header("Transfer-Encoding: chunked").body("")
        } else {
            c.header("Content-Length: 0")
        };
        let r = c.send();
        assert_eq!(r.status, 202, "{ct:?}: {}", r.describe());
        let seen = fake.take();
        assert_eq!(seen.len(), 1, "{ct:?}");
        assert!(seen[0].body.is_empty(), "{ct:?}");
        assert!(
            seen[0].headers.get("content-type").is_none(),
            "{ct:?}: {seen:#?}"
        );
        assert!(seen[0].headers.get("transfer-encoding").is_none(), "{ct:?}");
        assert_eq!(seen[0].headers["content-length"], "0", "{ct:?}");
    }

    // Every other request with a body: refused when the upstream would read it as a form
    // (distribution reads `digest` and `_state` with FormValue on upload PUTs).
    let uploads = format!("{path}{UPLOAD}");
    let puts = [
        ("PATCH", uploads.clone()),
        ("PUT", format!("{uploads}?digest={DIGEST}")),
        ("PUT", "/v2/alice/app/manifests/v1".to_owned()),
    ];
    for (method, target) in &puts {
        for ct in DISGUISED_FORM_TYPES {
            let (status, resp) = h2_request(
                proxy.addr,
                &proxy.ca,
                method,
                target,
                &[("authorization", auth.as_bytes()), ("content-type", ct)],
                &format!("digest={OTHER_DIGEST}"),
            );
            let what = format!("{method} {target} {:?}", String::from_utf8_lossy(ct));
            assert_eq!(status, 400, "h2 {what}: {resp}");
            assert!(resp.contains("UNSUPPORTED"), "{what}: {resp}");
            assert!(fake.take().is_empty(), "{what} forwarded");
        }
    }
    // GET, HEAD and DELETE carry no body: one announced is refused, nothing forwarded
    // (distribution deletes before it reads a DELETE's body).
    for method in ["GET", "DELETE"] {
        let target = format!("/v2/alice/app/blobs/{DIGEST}");
        let (status, resp) = h2_request(
            proxy.addr,
            &proxy.ca,
            method,
            &target,
            &[("authorization", auth.as_bytes())],
            "0123456789",
        );
        assert_eq!(status, 400, "{method} with a body: {resp}");
        assert!(resp.contains("carries no body"), "{resp}");
        assert!(fake.take().is_empty(), "{method} with a body forwarded");
    }
    // Requests without a body reach the upstream without a Content-Type.
    for method in ["GET", "HEAD", "DELETE"] {
        let target = format!("/v2/alice/app/manifests/{DIGEST}");
        let (status, _) = h2_request(
            proxy.addr,
            &proxy.ca,
            method,
            &target,
            &[
                ("authorization", auth.as_bytes()),
                ("content-type", b"application/x-www-form-urlencoded"),
            ],
            "",
        );
        assert_eq!(status, 202, "{method}");
        let seen = fake.take();
        assert_eq!(seen.len(), 1, "{method}");
        assert!(
            seen[0].headers.get("content-type").is_none(),
            "{method}: {seen:#?}"
        );
    }
    // ... and forwarded as before with the types clients send.
    for (method, target) in &puts {
        let (status, resp) = h2_request(
            proxy.addr,
            &proxy.ca,
            method,
            target,
            &[
                ("authorization", auth.as_bytes()),
                ("content-type", b"application/octet-stream"),
            ],
            "bytes",
        );
        assert_eq!(status, 202, "{method} {target}: {resp}");
        let seen = fake.take();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].body, b"bytes");
    }
}
