//! The PROXY protocol, v1 (text) and v2 (binary), as HAProxy specifies it:
//! an L4 load balancer in front of the gate sends the client's address
//! before the connection's first byte (`listen.proxy_protocol = true`).
//!
//! It is believed only from trusted proxies; a connection from any other
//! peer that starts with a PROXY header is closed. A connection without one
//! is served as usual (direct clients, probes). The header is bounded
//! ([`MAX_HEADER`]) and must arrive within `limits.header_read_timeout`.
//! Parsing is a small pure function ([`parse`]); reading peeks at the
//! socket, so the bytes after the header (TLS or HTTP) stay where they are.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header (the specification's bound).
pub const V1_MAX: usize = 107;
/// Longest v2 header accepted (16 bytes and the addresses and TLVs).
pub const MAX_HEADER: usize = 16 + 512;

/// What the start of a connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// No PROXY header: the bytes are the connection's own.
    None,
    /// A PROXY header may follow; more bytes are needed.
    Incomplete,
    /// A PROXY header of `len` bytes; `source` is the client's address
    /// (`None` for v2 LOCAL, v1 UNKNOWN, or a family without one).
    Header {
        /// Bytes to consume.
        len: usize,
        /// The original client address.
        source: Option<IpAddr>,
    },
    /// A PROXY header that is malformed or too long.
    Invalid(&'static str),
}

/// Looks at the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        return if buf.len() < 16 {
            Parsed::Incomplete
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] == V1_PREFIX[..n] {
        return if buf.len() < V1_PREFIX.len() {
            Parsed::Incomplete
        } else {
            parse_v1(buf)
        };
    }
    Parsed::None
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 header without CRLF within 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let len = end + 2;
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..end]) else {
        return Parsed::Invalid("PROXY v1 header is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Parsed::Header { len, source: None },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v4 = *family == "TCP4";
            let addr = |s: &str| -> Option<IpAddr> {
                if v4 {
                    s.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
                } else {
                    s.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
                }
            };
            let port = |s: &str| {
                !s.is_empty()
                    && s.len() <= 5
                    && !(s.len() > 1 && s.starts_with('0'))
                    && s.parse::<u16>().is_ok()
            };
            match (addr(src), addr(dst)) {
                (Some(source), Some(_)) if port(sport) && port(dport) => Parsed::Header {
                    len,
                    source: Some(source),
                },
                _ => Parsed::Invalid("PROXY v1 header with bad addresses or ports"),
            }
        }
        _ => Parsed::Invalid("PROXY v1 header with an unknown protocol or field count"),
    }
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let ver_cmd = buf[12];
    let family = buf[13];
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 header with a version other than 2");
    }
    if len > MAX_HEADER {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addrs = &buf[16..len];
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (health checks).
        0x0 => return Parsed::Header { len, source: None },
        0x1 => {}
        _ => return Parsed::Invalid("PROXY v2 header with an unknown command"),
    }
    let source = match family >> 4 {
        0x1 if addrs.len() >= 12 => Some(IpAddr::V4(Ipv4Addr::new(
            addrs[0], addrs[1], addrs[2], addrs[3],
        ))),
        0x2 if addrs.len() >= 36 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&addrs[..16]);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        0x1 | 0x2 => return Parsed::Invalid("PROXY v2 header shorter than its addresses"),
        // UNSPEC or UNIX: no IP to take.
        _ => None,
    };
    Parsed::Header { len, source }
}

/// Why a connection is closed before it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A PROXY header from a peer that is not a trusted proxy.
    Untrusted,
    /// Malformed, too long, or not whole within the time allowed.
    Bad(&'static str),
    /// The peer closed or the socket failed.
    Closed,
}

/// The peer a connection is served as: with `listen.proxy_protocol`, the
/// client address of a PROXY header from a trusted proxy; otherwise the TCP
/// peer. `None`: close the connection (a PROXY header from an untrusted
/// peer, a bad or late one; logged at debug, as any client can cause it).
pub async fn peer(stream: &mut TcpStream, peer: IpAddr, config: &crate::Config) -> Option<IpAddr> {
    if !config.listen.proxy_protocol {
        return Some(peer);
    }
    let trusted = config.client_ip.trusted_proxies.contains(peer);
    match read(stream, trusted, config.limits.header_read_timeout).await {
        Ok(Some(client)) => Some(client),
        Ok(None) => Some(peer),
        Err(why) => {
            tracing::debug!(%peer, ?why, "connection closed: PROXY header refused");
            None
        }
    }
}

/// Reads a PROXY header, if the connection starts with one, consuming
/// exactly its bytes. `trusted` says whether the TCP peer may send one.
/// Returns the client address it carries (`None`: no header, or one that
/// carries no address: the TCP peer stays the peer).
pub async fn read(
    stream: &mut TcpStream,
    trusted: bool,
    within: Duration,
) -> Result<Option<IpAddr>, Refused> {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; MAX_HEADER];
    let mut nap = Duration::from_millis(2);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Err(Refused::Closed),
            Ok(Ok(n)) => n,
            Err(_) => return Err(Refused::Bad("no whole PROXY header in time")),
        };
        match parse(&buf[..n]) {
            Parsed::None => return Ok(None),
            Parsed::Invalid(why) => return Err(Refused::Bad(why)),
            Parsed::Header { .. } if !trusted => return Err(Refused::Untrusted),
            Parsed::Incomplete => {
                // The rest is on its way: peek again a little later (a peek
                // at bytes already there returns at once).
                if tokio::time::Instant::now() + nap >= deadline {
                    return Err(Refused::Bad("no whole PROXY header in time"));
                }
                tokio::time::sleep(nap).await;
                nap = (nap * 2).min(Duration::from_millis(100));
            }
            Parsed::Header { len, source } => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(|_| Refused::Closed)?;
                return Ok(source.map(stsgate_rules::ip::canonical));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn v2(cmd: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(0x20 | cmd);
        b.push(family);
        b.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        b.extend_from_slice(addrs);
        b
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Parsed::Header {
                len: 44,
                source: ip("203.0.113.7")
            }
        );
        assert_eq!(
            parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n"),
            Parsed::Header {
                len: 42,
                source: ip("2001:db8::7")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        for partial in [&b"P"[..], b"PROXY", b"PROXY TCP4 1.2.3.4"] {
            assert_eq!(parse(partial), Parsed::Incomplete, "{partial:?}");
        }
        for bad in [
            &b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(parse(&[b'P'; 200][..]), Parsed::None));
        let mut long = b"PROXY ".to_vec();
        long.extend([b'x'; 120]);
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    #[test]
    fn v2_headers() {
        let mut v4 = vec![203, 0, 113, 7, 192, 0, 2, 1];
        v4.extend(56324u16.to_be_bytes());
        v4.extend(443u16.to_be_bytes());
        let h = v2(1, 0x11, &v4);
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 28,
                source: ip("203.0.113.7")
            }
        );
        // With a TLV after the addresses, then the connection's own bytes.
        let mut with_tlv = v4.clone();
        with_tlv.extend([0x04, 0x00, 0x01, 0x00]);
        let mut h = v2(1, 0x11, &with_tlv);
        h.extend(b"\x16\x03\x01");
        assert_eq!(
            parse(&h),
            Parsed::Header {
                len: 32,
                source: ip("203.0.113.7")
            }
        );
        let mut v6: Vec<u8> = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        v6.extend([0u8; 20]);
        assert_eq!(
            parse(&v2(1, 0x21, &v6)),
            Parsed::Header {
                len: 52,
                source: ip("2001:db8::7")
            }
        );
        assert_eq!(
            parse(&v2(0, 0x00, &[])),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
        assert_eq!(parse(&h[..10]), Parsed::Incomplete);
        assert_eq!(parse(&h[..20]), Parsed::Incomplete);
        assert!(matches!(parse(&v2(1, 0x11, &v4[..8])), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(5, 0x11, &v4)), Parsed::Invalid(_)));
        let mut wrong_version = v2(1, 0x11, &v4);
        wrong_version[12] = 0x11;
        assert!(matches!(parse(&wrong_version), Parsed::Invalid(_)));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0u8; 1000])),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn not_a_header() {
        for start in [
            &b"POST /adfs/services/trust/2005/usernamemixed HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PRI * HTTP/2.0\r\n",
            b"\r\nGET",
        ] {
            assert_eq!(parse(start), Parsed::None, "{start:?}");
        }
    }
}
