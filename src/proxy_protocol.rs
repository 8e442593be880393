//! PURE: the PROXY protocol header (HAProxy's `send-proxy` v1 and `send-proxy-v2`) that
//! a TCP load balancer puts in front of a connection to say whose it is.
//!
//! Only the source address is read: the client the balancer accepted. Everything else
//! (the destination, v2 TLVs) is skipped. A v2 `LOCAL` header (the balancer's own health
//! check) and a v1 `UNKNOWN` or v2 `UNSPEC`/`UNIX` one declare no address: the
//! connection keeps its TCP peer's.
//!
//! Invariants: [`parse`] and [`sniff`] never panic and never read past what they are
//! given; a v1 header is at most [`V1_MAX`] bytes (the spec's 107), a v2 header at most
//! [`V2_MAX`] (its TLVs bounded: a balancer has no reason to send more); a header is
//! taken only when complete and exactly well-formed, so the bytes after it are the
//! client's own (TLS or HTTP) and nothing of the header leaks into them.
//!
//! Whether a header is believed (a peer in `server.trusted_proxies`, with
//! `server.proxy_protocol` on) is the server's decision, not this module's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The v1 header's first bytes.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The v2 header's 12-byte signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted: the 16 fixed bytes, the addresses (at most 216 for
/// AF_UNIX) and room for TLVs.
pub const V2_MAX: usize = 16 + 1024;

/// What a connection's first bytes are, as far as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// They open a PROXY header (v1 or v2 signature complete).
    Proxy,
    /// They cannot open one: TLS, HTTP or anything else.
    NotProxy,
    /// A strict prefix of a signature so far: more bytes decide.
    NeedMore,
}

/// Whether `buf`, a connection's first bytes, opens a PROXY header. Decides at the
/// first byte for TLS (0x16) and HTTP (a method's letter other than `P`); at most 12
/// bytes are ever needed.
pub fn sniff(buf: &[u8]) -> Sniff {
    let mut undecided = false;
    for sig in [V1_PREFIX, V2_SIGNATURE.as_slice()] {
        let n = buf.len().min(sig.len());
        if buf[..n] == sig[..n] {
            if n == sig.len() {
                return Sniff::Proxy;
            }
            undecided = true;
        }
    }
    if undecided {
        Sniff::NeedMore
    } else {
        Sniff::NotProxy
    }
}

/// A complete, well-formed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client's address and port; `None`: the header declares none (v2 `LOCAL`, v1
    /// `UNKNOWN`, a family other than IPv4/IPv6): use the TCP peer's.
    pub source: Option<SocketAddr>,
    /// The header's length in bytes: the client's own bytes start there.
    pub len: usize,
    /// 1 or 2.
    pub version: u8,
}

/// Why bytes are not a header the proxy takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no PROXY protocol header (the connection starts with other bytes)")]
    Missing,
    #[error("PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Reads the header at the start of `buf`. `Ok(None)`: well-formed so far, more bytes
/// needed (the caller reads more, up to [`V1_MAX`] or [`V2_MAX`]).
pub fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    match sniff(buf) {
        Sniff::NotProxy => Err(Error::Missing),
        Sniff::NeedMore => Ok(None),
        Sniff::Proxy if buf.starts_with(V1_PREFIX) => parse_v1(buf),
        Sniff::Proxy => parse_v2(buf),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, Error> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(Error::V1("no CRLF within 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(Error::V1("line not ended by CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| Error::V1("not ASCII"))?;
    let rest = &line[V1_PREFIX.len()..];
    let len = lf + 1;
    // UNKNOWN may be followed by anything (the spec says: ignore it).
    if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        return Ok(Some(Header {
            source: None,
            len,
            version: 1,
        }));
    }
    let fields: Vec<&str> = rest.split(' ').collect();
    let [proto, src, dst, sport, dport] = fields[..] else {
        return Err(Error::V1(
            "expected `PROXY TCP4|TCP6 SRC DST SPORT DPORT` (single spaces)",
        ));
    };
    // The destination is checked for form only: the proxy knows its own address.
    let (src, _dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            IpAddr::V4(v4(src).ok_or(Error::V1("bad IPv4 source"))?),
            IpAddr::V4(v4(dst).ok_or(Error::V1("bad IPv4 destination"))?),
        ),
        "TCP6" => (
            IpAddr::V6(v6(src).ok_or(Error::V1("bad IPv6 source"))?),
            IpAddr::V6(v6(dst).ok_or(Error::V1("bad IPv6 destination"))?),
        ),
        _ => return Err(Error::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let sport = port(sport).ok_or(Error::V1("bad source port"))?;
    port(dport).ok_or(Error::V1("bad destination port"))?;
    Ok(Some(Header {
        source: Some(SocketAddr::new(src, sport)),
        len,
        version: 1,
    }))
}

fn v4(s: &str) -> Option<Ipv4Addr> {
    // std refuses leading zeros ("010.0.0.1"), which some parsers read as octal.
    s.parse().ok()
}

fn v6(s: &str) -> Option<Ipv6Addr> {
    s.parse().ok()
}

/// A decimal port: 1 to 5 digits, no sign (std would take a leading `+`), at most 65535.
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, Error> {
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, fam, len) = (
        fixed[12],
        fixed[13],
        usize::from(u16::from_be_bytes([fixed[14], fixed[15]])),
    );
    if ver_cmd >> 4 != 2 {
        return Err(Error::V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::V2("command is neither LOCAL nor PROXY")),
    };
    let total = 16 + len;
    if total > V2_MAX {
        return Err(Error::V2("longer than 1040 bytes"));
    }
    let Some(body) = buf.get(16..total) else {
        return Ok(None);
    };
    let transport = fam & 0x0f;
    if transport > 2 {
        return Err(Error::V2("unknown transport"));
    }
    let source = match fam >> 4 {
        // AF_INET: src 4, dst 4, sport 2, dport 2.
        1 => {
            let a = body
                .get(..12)
                .ok_or(Error::V2("IPv4 addresses cut short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            ))
        }
        // AF_INET6: src 16, dst 16, sport 2, dport 2.
        2 => {
            let a = body
                .get(..36)
                .ok_or(Error::V2("IPv6 addresses cut short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // AF_UNSPEC, AF_UNIX: no address the proxy can use.
        0 | 3 => None,
        _ => return Err(Error::V2("unknown address family")),
    };
    Ok(Some(Header {
        // LOCAL: the balancer speaks for itself (health checks); addresses, if any, are
        // to be ignored.
        source: if local { None } else { source },
        len: total,
        version: 2,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn inet(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut b = src.to_vec();
        b.extend_from_slice(&[127, 0, 0, 1]);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&5443u16.to_be_bytes());
        b
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn sniff_decides_at_the_first_byte_that_differs() {
        assert_eq!(sniff(b""), Sniff::NeedMore);
        assert_eq!(sniff(&[0x16, 3, 1]), Sniff::NotProxy);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotProxy);
        assert_eq!(sniff(b"P"), Sniff::NeedMore);
        assert_eq!(sniff(b"PUT /v2/"), Sniff::NotProxy);
        assert_eq!(sniff(b"PROXY"), Sniff::NeedMore);
        assert_eq!(sniff(b"PROXY "), Sniff::Proxy);
        assert_eq!(sniff(b"\r\n\r\n\0\r\nQUI"), Sniff::NeedMore);
        assert_eq!(sniff(V2_SIGNATURE), Sniff::Proxy);
        assert_eq!(sniff(b"\r\n\r\nGET"), Sniff::NotProxy);
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5443\r\nGET /v2/";
        assert_eq!(
            parse(h),
            Ok(Some(Header {
                source: addr("203.0.113.7:40000"),
                len: 45,
                version: 1
            }))
        );
        assert_eq!(&h[45..], b"GET /v2/");
        let h = b"PROXY TCP6 2001:db8::7 ::1 65535 443\r\n";
        assert_eq!(
            parse(h).unwrap().unwrap().source,
            addr("[2001:db8::7]:65535")
        );
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(h).unwrap().unwrap().source, None);
        let h = b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n";
        assert_eq!(parse(h).unwrap().unwrap().len, h.len());
        // Incomplete: more bytes.
        assert_eq!(parse(b"PROXY TCP4 203.0.113.7 1"), Ok(None));
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 5443\n"[..],
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40000\r\n",
            b"PROXY TCP4 203.0.113.7  127.0.0.1 40000 5443\r\n",
            b"PROXY TCP4 2001:db8::7 127.0.0.1 40000 5443\r\n",
            b"PROXY TCP6 203.0.113.7 ::1 40000 5443\r\n",
            b"PROXY TCP4 010.0.0.1 127.0.0.1 40000 5443\r\n",
            b"PROXY TCP4 10.0.0.1 127.0.0.1 +4000 5443\r\n",
            b"PROXY TCP4 10.0.0.1 127.0.0.1 65536 5443\r\n",
            b"PROXY TCP4 10.0.0.1 127.0.0.1 04000 5443\r\n",
            b"PROXY UDP4 10.0.0.1 127.0.0.1 4000 5443\r\n",
            b"PROXY TCP4 10.0.0.1 127.0.0.1 4000 5443 \r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::V1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(Error::V1("no CRLF within 107 bytes")));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::Missing));
    }

    #[test]
    fn v2_headers() {
        let mut h = v2(1, 0x11, &inet([203, 0, 113, 7], 40000));
        assert_eq!(
            parse(&h),
            Ok(Some(Header {
                source: addr("203.0.113.7:40000"),
                len: 28,
                version: 2
            }))
        );
        h.extend_from_slice(&[0x16, 3, 1]);
        assert_eq!(parse(&h).unwrap().unwrap().len, 28);
        // Every prefix is "more, please".
        for n in 0..28 {
            assert_eq!(parse(&h[..n]), Ok(None), "{n}");
        }
        // IPv6, with TLVs after the addresses.
        let mut body = vec![0x20, 0x01, 0x0d, 0xb8];
        body.extend_from_slice(&[0; 11]);
        body.push(7);
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&5443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 2, 0xaa, 0xbb]); // a TLV (NOOP)
        let h = v2(1, 0x21, &body);
        assert_eq!(
            parse(&h).unwrap().unwrap().source,
            addr("[2001:db8::7]:443")
        );
        assert_eq!(parse(&h).unwrap().unwrap().len, h.len());
        // LOCAL: the balancer's own connection (health checks), addresses ignored.
        let h = v2(0, 0x11, &inet([203, 0, 113, 7], 1));
        assert_eq!(parse(&h).unwrap().unwrap().source, None);
        let h = v2(0, 0x00, &[]);
        assert_eq!(parse(&h).unwrap().unwrap().source, None);
        // UNIX: no usable address.
        let h = v2(1, 0x31, &[0; 216]);
        assert_eq!(parse(&h).unwrap().unwrap().source, None);
    }

    #[test]
    fn v2_refusals() {
        let body = inet([203, 0, 113, 7], 40000);
        let mut h = v2(1, 0x11, &body);
        h[12] = 0x11; // version 1 in a v2 header
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        let h = v2(2, 0x11, &body);
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        let h = v2(1, 0x41, &body);
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        let h = v2(1, 0x13, &body);
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        let h = v2(1, 0x11, &body[..8]);
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        let h = v2(1, 0x21, &body);
        assert!(matches!(parse(&h), Err(Error::V2(_))));
        // Over the bound: refused from the fixed part alone, before it is read whole.
        let mut h = v2(1, 0x11, &body);
        h[14..16].copy_from_slice(&2000u16.to_be_bytes());
        assert!(matches!(parse(&h[..16]), Err(Error::V2(_))));
    }
}
