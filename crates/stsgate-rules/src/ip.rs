//! IP notation (PRODUCT.md §3.1): an address, a CIDR, an `a-b` range, an
//! IPv4 pattern with `*` octets, or `*`; several of them comma-separated in
//! one string. IPv4-mapped IPv6 addresses are the IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One parsed item of IP notation, as an interval or a bit pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPattern {
    /// Every address, v4 and v6.
    Any,
    /// An inclusive IPv4 interval.
    V4(u32, u32),
    /// An inclusive IPv6 interval (never inside `::ffff:0:0/96`: those are V4).
    V6(u128, u128),
    /// An IPv4 pattern whose `*` octets are not all at the end, e.g. `10.*.0.1`:
    /// matches when `addr & mask == value`.
    V4Mask { mask: u32, value: u32 },
}

const MAPPED_START: u128 = 0xffff_0000_0000;
const MAPPED_END: u128 = 0xffff_ffff_ffff;

/// The address a rule sees: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// One item of a parsed entry: its byte offset in the entry, its text, its pattern.
pub type Item<'a> = (usize, &'a str, IpPattern);

/// Parses one string of IP notation into its items, each with its byte offset
/// in `text` (for error positions). Errors carry the offset of the bad item.
pub fn parse_entry(text: &str) -> Result<Vec<Item<'_>>, (usize, String)> {
    let mut items = Vec::new();
    for_each_item(text, |at, item, pattern| items.push((at, item, pattern)))?;
    Ok(items)
}

/// [`parse_entry`] without the vector: `f` sees each item as it is parsed
/// (the compile of a large list calls this once per entry).
pub fn for_each_item<'a>(
    text: &'a str,
    mut f: impl FnMut(usize, &'a str, IpPattern),
) -> Result<(), (usize, String)> {
    let mut offset = 0;
    for part in text.split(',') {
        let lead = part.len() - part.trim_start().len();
        let item = part.trim();
        let at = offset + lead;
        if item.is_empty() {
            let what = if text.trim().is_empty() {
                "empty IP entry"
            } else {
                "empty item in a comma-separated IP entry"
            };
            return Err((at, what.to_string()));
        }
        for pattern in parse_item(item).map_err(|m| (at, m))?.into_iter().flatten() {
            f(at, item, pattern);
        }
        offset += part.len() + 1;
    }
    Ok(())
}

/// The one to three patterns an item stands for (three: a v6 range across
/// the IPv4-mapped block), without a heap allocation per item.
type Patterns = [Option<IpPattern>; 3];

fn one_pattern(p: IpPattern) -> Patterns {
    [Some(p), None, None]
}

/// Parses one item (no commas). A v6 interval that overlaps the IPv4-mapped
/// block yields the overlapping part as IPv4 too.
fn parse_item(item: &str) -> Result<Patterns, String> {
    let invalid = |why: &str| {
        format!(
            "invalid IP entry {item:?}: {why} (expected an address, a CIDR such as 10.0.0.0/8, \
             a range such as 10.0.0.1-10.0.0.9, a pattern such as 10.1.*.*, or *)"
        )
    };
    if item == "*" {
        return Ok(one_pattern(IpPattern::Any));
    }
    if item.contains('/') {
        let net: ipnet::IpNet = item.parse().map_err(|_| invalid("not a valid CIDR"))?;
        return Ok(interval(net.network(), net.broadcast()));
    }
    if let Some((a, b)) = item.split_once('-') {
        let a = parse_addr(a.trim()).ok_or_else(|| invalid("the range start is not an address"))?;
        let b = parse_addr(b.trim()).ok_or_else(|| invalid("the range end is not an address"))?;
        if a.is_ipv4() != b.is_ipv4() {
            return Err(invalid("the range mixes IPv4 and IPv6"));
        }
        if a > b {
            return Err(invalid("the range start is above its end"));
        }
        return Ok(interval(a, b));
    }
    if item.contains('*') {
        return parse_wildcard(item)
            .map(one_pattern)
            .ok_or_else(|| invalid("not a valid IPv4 pattern"));
    }
    let addr = parse_addr(item).ok_or_else(|| invalid("not an address"))?;
    Ok(interval(addr, addr))
}

/// An address, IPv4-mapped IPv6 made IPv4. Zone ids and ports are refused.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical)
}

fn interval(a: IpAddr, b: IpAddr) -> Patterns {
    match (canonical(a), canonical(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => one_pattern(IpPattern::V4(a.into(), b.into())),
        // a range written in v6 that is entirely mapped
        (IpAddr::V4(a), IpAddr::V6(b)) => {
            v6_interval(MAPPED_START | u128::from(u32::from(a)), b.into())
        }
        (IpAddr::V6(a), IpAddr::V4(b)) => {
            v6_interval(a.into(), MAPPED_START | u128::from(u32::from(b)))
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => v6_interval(a.into(), b.into()),
    }
}

fn v6_interval(a: u128, b: u128) -> Patterns {
    let mut out: Patterns = [None; 3];
    let (lo, hi) = (a.max(MAPPED_START), b.min(MAPPED_END));
    if lo <= hi {
        out[0] = Some(IpPattern::V4(lo as u32, hi as u32));
    }
    if a < MAPPED_START {
        out[1] = Some(IpPattern::V6(a, b.min(MAPPED_START - 1)));
    }
    if b > MAPPED_END {
        out[2] = Some(IpPattern::V6(a.max(MAPPED_END + 1), b));
    }
    out
}

/// `5.143.*.*` and friends: four octets, each a number or `*`.
fn parse_wildcard(item: &str) -> Option<IpPattern> {
    let octets: Vec<&str> = item.split('.').collect();
    if octets.len() != 4 {
        return None;
    }
    let (mut mask, mut value) = (0u32, 0u32);
    for octet in octets {
        mask <<= 8;
        value <<= 8;
        if octet != "*" {
            if octet.is_empty() || octet.len() > 3 || !octet.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            value |= octet.parse::<u8>().ok()? as u32;
            mask |= 0xff;
        }
    }
    // Only `*` octets at the end: that is an interval.
    let host_bits = (!mask).count_ones();
    if mask.leading_ones() + host_bits == 32 {
        Some(IpPattern::V4(value, value | !mask))
    } else {
        Some(IpPattern::V4Mask { mask, value })
    }
}

impl IpPattern {
    /// Does this pattern hold `ip` (already canonical)?
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (IpPattern::Any, _) => true,
            (IpPattern::V4(a, b), IpAddr::V4(ip)) => (a..=b).contains(&u32::from(ip)),
            (IpPattern::V6(a, b), IpAddr::V6(ip)) => (a..=b).contains(&u128::from(ip)),
            (IpPattern::V4Mask { mask, value }, IpAddr::V4(ip)) => u32::from(ip) & mask == value,
            _ => false,
        }
    }
}

/// For tests and tools: the address of a v4 integer.
pub fn v4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// For tests and tools: the address of a v6 integer.
pub fn v6(n: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Vec<IpPattern> {
        parse_entry(s)
            .unwrap()
            .into_iter()
            .map(|(_, _, p)| p)
            .collect()
    }
    fn ip(s: &str) -> IpAddr {
        parse_addr(s).unwrap()
    }

    #[test]
    fn every_notation_parses() {
        assert_eq!(
            one("72.32.245.182"),
            vec![IpPattern::V4(0x4820_F5B6, 0x4820_F5B6)]
        );
        assert_eq!(
            one("72.32.245.0/24"),
            vec![IpPattern::V4(0x4820_F500, 0x4820_F5FF)]
        );
        assert_eq!(
            one("72.32.245.1-72.32.245.254"),
            vec![IpPattern::V4(0x4820_F501, 0x4820_F5FE)]
        );
        assert_eq!(
            one("5.143.*.*"),
            vec![IpPattern::V4(0x058F_0000, 0x058F_FFFF)]
        );
        assert_eq!(one("*.*.*.*"), vec![IpPattern::V4(0, u32::MAX)]);
        assert_eq!(one("*"), vec![IpPattern::Any]);
        assert_eq!(
            one("10.*.0.1"),
            vec![IpPattern::V4Mask {
                mask: 0xFF00_FFFF,
                value: 0x0A00_0001
            }]
        );
        assert_eq!(one("72.32.245.182, 72.32.245.0/24").len(), 2);
        assert!(one("2001:db8::/32")[0].contains(ip("2001:db8:1::5")));
        assert!(!one("2001:db8::/32")[0].contains(ip("2001:db9::")));
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(ip("::ffff:1.2.3.4"), ip("1.2.3.4"));
        assert_eq!(
            one("::ffff:1.2.3.4"),
            vec![IpPattern::V4(0x0102_0304, 0x0102_0304)]
        );
        assert_eq!(
            one("::ffff:10.0.0.0/104"),
            vec![IpPattern::V4(0x0A00_0000, 0x0AFF_FFFF)]
        );
        let all = one("::/0");
        assert!(all.iter().any(|p| p.contains(ip("9.9.9.9"))));
        assert!(all.iter().any(|p| p.contains(ip("2001:db8::1"))));
    }

    #[test]
    fn bad_entries_say_which_item() {
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4/33",
            "1.2.3.256",
            "5.143.*",
            "1.2.3.9-1.2.3.1",
            "1.2.3.4-::1",
            "host.example",
            "1.2.3.4:80",
            "*.1.2.3x",
        ] {
            assert!(parse_entry(bad).is_err(), "{bad:?} should be refused");
        }
        let (at, msg) = parse_entry("1.2.3.4, 10.0.0.0/40").unwrap_err();
        assert_eq!(at, 9);
        assert!(msg.contains("10.0.0.0/40"), "{msg}");
        assert_eq!(parse_entry("1.2.3.4,").unwrap_err().0, 8);
    }
}
