//! The client IP (PRODUCT.md §4.2): the TCP peer, unless the peer is a
//! trusted proxy; then the first configured header the request carries
//! gives it: the rightmost address in it that is not a trusted proxy.

use std::net::IpAddr;

use http::HeaderMap;
use stsgate_rules::ip::canonical;

use crate::config::ClientIp;

/// How many addresses one forwarded header may carry.
pub const MAX_HOPS: usize = 32;

/// The client addresses of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddrs {
    /// The TCP peer (canonical).
    pub peer: IpAddr,
    /// The client IP the rules see.
    pub client: IpAddr,
    /// Every believed address, trusted proxies aside, the client first.
    /// With `match_all_hops = false` just the client.
    pub hops: Vec<IpAddr>,
    /// Every address the request carries, trusted proxies aside, the client
    /// first, whatever `match_all_hops` says (smart lockout's locations).
    pub carried: Vec<IpAddr>,
    /// Did the peer come from a trusted proxy?
    pub peer_trusted: bool,
    /// A forwarded header that did not parse (logged; the peer is the client).
    pub bad_header: Option<(String, String)>,
}

impl ClientAddrs {
    /// The facts the rules decide on, with the request's headers and country.
    pub fn facts<'a>(
        &'a self,
        application: Option<&'a str>,
        user_agent: Option<&'a str>,
        country: Option<stsgate_rules::Country>,
    ) -> stsgate_rules::Facts<'a> {
        stsgate_rules::Facts {
            addresses: &self.hops,
            carried: &self.carried,
            application,
            user_agent,
            country,
            peer: self.peer,
            ..stsgate_rules::Facts::new(self.client)
        }
    }
}

/// Derives the client addresses of a request.
pub fn derive(peer: IpAddr, headers: &HeaderMap, config: &ClientIp) -> ClientAddrs {
    let peer = canonical(peer);
    let proxies = config.trusted_proxies.load();
    let trusted = |ip: &IpAddr| proxies.contains(*ip);
    let mut out = ClientAddrs {
        peer,
        client: peer,
        hops: vec![peer],
        carried: vec![peer],
        peer_trusted: trusted(&peer),
        bad_header: None,
    };
    if !out.peer_trusted {
        return out;
    }
    for name in &config.headers {
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        // Several instances of a header are one comma-separated list.
        let joined = values
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect::<Vec<_>>()
            .join(",");
        if joined.trim().is_empty() {
            continue;
        }
        match parse_forwarded(&joined) {
            Ok(chain) => {
                let client = chain
                    .iter()
                    .rev()
                    .find(|ip| !trusted(ip))
                    .or(chain.first())
                    .copied()
                    .unwrap_or(peer);
                out.client = client;
                out.carried = vec![client];
                for ip in chain.into_iter().filter(|ip| !trusted(ip)) {
                    if !out.carried.contains(&ip) {
                        out.carried.push(ip);
                    }
                }
                out.hops = if config.match_all_hops {
                    out.carried.clone()
                } else {
                    vec![client]
                };
            }
            Err(message) => out.bad_header = Some((name.as_str().to_string(), message)),
        }
        return out;
    }
    out
}

/// Parses a forwarded-address list: comma-separated addresses, optionally
/// with a port (`1.2.3.4:5678`, `[2001:db8::1]:443`), brackets or quotes.
/// Empty items are skipped; any other item that is not an address is an error.
pub fn parse_forwarded(value: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in value.split(',') {
        let item = item.trim().trim_matches('"');
        if item.is_empty() {
            continue;
        }
        if out.len() == MAX_HOPS {
            return Err(format!("more than {MAX_HOPS} addresses"));
        }
        out.push(parse_one(item).ok_or_else(|| format!("{:?} is not an address", truncate(item)))?);
    }
    Ok(out)
}

fn parse_one(item: &str) -> Option<IpAddr> {
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = item.strip_prefix('[') {
        // [v6] or [v6]:port
        let (addr, tail) = rest.split_once(']')?;
        if !(tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<IpAddr>().ok().map(canonical);
    }
    // v4:port
    let (addr, port) = item.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;
    use http::HeaderName;

    fn config(trusted: &[&str], all: bool) -> ClientIp {
        let items: Vec<_> = trusted
            .iter()
            .map(|t| toml::Spanned::new(0..0, t.to_string()))
            .collect();
        ClientIp {
            trusted_proxies: crate::trusted::TrustedProxies::new(
                crate::trusted::TrustedSet::from_set(
                    stsgate_rules::lists::ip_set("t", "", &items).unwrap(),
                ),
            ),
            headers: crate::config::DEFAULT_HEADERS
                .iter()
                .map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap())
                .collect(),
            match_all_hops: all,
        }
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn derivation() {
        let c = config(&["10.0.0.0/8"], false);
        #[rustfmt::skip]
        let cases: &[(&str, &[(&str, &str)], &str)] = &[
            ("1.1.1.1",  &[("X-MS-Forwarded-Client-IP", "2.2.2.2")], "1.1.1.1"),   // untrusted peer: header ignored
            ("10.0.0.1", &[("X-MS-Forwarded-Client-IP", "2.2.2.2")], "2.2.2.2"),
            ("10.0.0.1", &[("X-Forwarded-For", "3.3.3.3")], "3.3.3.3"),
            ("10.0.0.1", &[("X-Forwarded-For", "3.3.3.3"), ("X-MS-Forwarded-Client-IP", "2.2.2.2")], "2.2.2.2"), // header order
            ("10.0.0.1", &[("X-Forwarded-For", "6.6.6.6, 3.3.3.3, 10.0.0.9")], "3.3.3.3"),   // rightmost untrusted
            ("10.0.0.1", &[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "3.3.3.3")], "3.3.3.3"), // instances joined
            ("10.0.0.1", &[("X-Forwarded-For", "10.0.0.7, 10.0.0.8")], "10.0.0.7"),         // all trusted: leftmost
            ("10.0.0.1", &[("X-Forwarded-For", "bogus, 3.3.3.3")], "10.0.0.1"),             // does not parse: peer
            ("10.0.0.1", &[("X-Forwarded-For", "")], "10.0.0.1"),
            ("10.0.0.1", &[], "10.0.0.1"),
            ("::ffff:10.0.0.1", &[("X-Forwarded-For", "[2001:db8::5]:443")], "2001:db8::5"),
            ("10.0.0.1", &[("X-Forwarded-For", "::ffff:4.4.4.4, 5.5.5.5:8080")], "5.5.5.5"),
        ];
        for (peer, h, want) in cases {
            let got = derive(ip(peer), &headers(h), &c);
            assert_eq!(got.client, ip(want), "{peer} {h:?}");
            assert_eq!(got.hops, vec![ip(want)]);
        }
        assert!(
            derive(
                ip("10.0.0.1"),
                &headers(&[("X-Forwarded-For", "bogus")]),
                &c
            )
            .bad_header
            .is_some()
        );
    }

    #[test]
    fn all_hops_leave_out_trusted_proxies() {
        let c = config(&["10.0.0.0/8"], true);
        let got = derive(
            ip("10.0.0.1"),
            &headers(&[("X-MS-Forwarded-Client-IP", "6.6.6.6, 3.3.3.3, 10.0.0.9")]),
            &c,
        );
        assert_eq!(got.client, ip("3.3.3.3"));
        assert_eq!(got.hops, vec![ip("3.3.3.3"), ip("6.6.6.6")]);
    }

    #[test]
    fn forwarded_lists() {
        assert_eq!(
            parse_forwarded(" 1.2.3.4 ,, \"5.6.7.8\" "),
            Ok(vec![ip("1.2.3.4"), ip("5.6.7.8")])
        );
        for bad in [
            "1.2.3.4:",
            "1.2.3.4:123456",
            "[::1",
            "[::1]x",
            "unknown",
            "1.2.3.4/24",
            "::1:80x",
        ] {
            assert!(parse_forwarded(bad).is_err(), "{bad}");
        }
        assert!(parse_forwarded(&"1.1.1.1,".repeat(40)).is_err());
    }
}
