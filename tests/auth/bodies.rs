//! Lingering: refused bodies sent without `Expect` are read away (up to a bound) so the
//! client reads its 401.

use super::*;

// ---------------------------------------------------------------------------------------
// 7. Lingering: refused bodies sent without Expect.

/// Writes `head` then `body_len` bytes (in 16 KiB writes) on its own task, framed as
/// announced by `head` (`chunked`: as 16 KiB chunks). Returns the write half and how the
/// writing ended.
fn write_in_background(
    mut wr: WriteHalf<TlsStream<TcpStream>>,
    head: String,
    body_len: usize,
    chunked: bool,
) -> tokio::task::JoinHandle<(WriteHalf<TlsStream<TcpStream>>, std::io::Result<()>)> {
    tokio::spawn(async move {
        let r = async {
            wr.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 16 * KIB];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                if chunked {
                    wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
                    wr.write_all(&chunk[..n]).await?;
                    wr.write_all(b"\r\n").await?;
                } else {
                    wr.write_all(&chunk[..n]).await?;
                }
                left -= n;
            }
            if chunked {
                wr.write_all(b"0\r\n\r\n").await?;
            }
            wr.flush().await
        }
        .await;
        (wr, r)
    })
}

fn upload_put(proxy: &Proxy, framing: &str) -> String {
    format!(
        "PUT /v2/alice/app/blobs/uploads/u1?digest={DIGEST} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/octet-stream\r\n{framing}\r\n",
        proxy.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_sent_at_once_is_read_away_so_the_client_reads_the_401() {
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b.start();

    let len = 200 * KIB;
    let tls = tls_connect(&proxy, &[b"http/1.1"]).await;
    let (mut rd, wr): (ReadHalf<_>, WriteHalf<_>) = tokio::io::split(tls);
    let writer = write_in_background(
        wr,
        upload_put(&proxy, &format!("Content-Length: {len}\r\n")),
        len,
        false,
    );
    let (out, end) = read_until(&mut rd, Duration::from_secs(10), complete_response).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(end, End::Done, "{text}");
    assert_eq!(status_line(&out), "HTTP/1.1 401 Unauthorized", "{text}");
    assert!(
        text.contains(&format!(
            "\r\nwww-authenticate: Basic realm=\"{REALM}\"\r\n"
        )),
        "{text}"
    );
    assert!(text.ends_with(CHALLENGE_BODY), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let (mut wr, written) = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the body was not read away")
        .unwrap();
    written.expect("the proxy reset the connection while the client sent its body");

    // The connection is still in step: the client logs in on it and gets the upstream's 200.
    wr.write_all(
        format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\r\n",
            proxy.addr,
            basic("alice", "alice-pw")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (out, end) = read_until(&mut rd, Duration::from_secs(10), complete_response).await;
    assert_eq!(end, End::Done, "{}", String::from_utf8_lossy(&out));
    assert_eq!(status_line(&out), "HTTP/1.1 200 OK");
    assert!(out.ends_with(b"{}"));

    let seen = upstream.only().await;
    assert_eq!(
        (seen.method.as_str(), seen.target.as_str()),
        ("GET", "/v2/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_over_max_unauthenticated_body_gets_401_and_a_closed_connection() {
    let upstream = registry_like().await;
    let (b, _) = proxy_builder(&upstream, vec![user("alice", "alice-pw", &[])]);
    let proxy = b.auth_yaml("  max_unauthenticated_body: 65536\n").start();

    let len = 1024 * KIB;
    for (framing, chunked) in [
        (format!("Content-Length: {len}\r\n"), false),
        ("Transfer-Encoding: chunked\r\n".to_owned(), true),
    ] {
        let tls = tls_connect(&proxy, &[b"http/1.1"]).await;
        let (mut rd, wr) = tokio::io::split(tls);
        let writer = write_in_background(wr, upload_put(&proxy, &framing), len, chunked);
        let (out, end) = read_until(&mut rd, Duration::from_secs(10), complete_response).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        // What happens: the 401 arrives whole, says `connection: close`, and the proxy
        // then closes the connection without reading the rest of the body.
        assert_eq!(end, End::Done, "{framing}: {text}");
        assert_eq!(
            status_line(&out),
            "HTTP/1.1 401 Unauthorized",
            "{framing}: {text}"
        );
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{framing}: {text}"
        );
        assert!(text.ends_with(CHALLENGE_BODY), "{framing}: {text}");
        let (rest, end) = read_until(&mut rd, Duration::from_secs(10), |_| false).await;
        assert!(
            rest.is_empty() && matches!(end, End::Eof | End::Error(_)),
            "{framing}: not closed: {end:?} {}",
            String::from_utf8_lossy(&rest)
        );
        let (_, written) = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer hung on a closed connection")
            .unwrap();
        eprintln!("{framing:?}: the client's write ended with {written:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.started(), 0, "{:#?}", upstream.seen());
    assert_alive(&proxy, "alice", "alice-pw").await;
}
