//! A compiled IP list: lookups in O(log n) whatever the list's size.
//!
//! Every entry becomes an interval; the intervals are cut into disjoint
//! segments, each labelled with the first entry (in file order) that covers
//! it, so a lookup is one binary search and still names the entry that
//! matched. IPv4 patterns with `*` in the middle (rare) are kept aside as
//! mask/value pairs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use crate::ip::IpPattern;

/// Index of an entry in the list that was compiled.
pub type EntryId = u32;

/// Disjoint, sorted inclusive intervals, each with the entry it stands for.
#[derive(Debug, Clone, Default)]
struct Segments<T> {
    starts: Vec<T>,
    ends: Vec<T>,
    ids: Vec<EntryId>,
}

trait Point: Copy + Ord + std::fmt::Debug {
    const MAX: Self;
    fn next(self) -> Self;
    fn prev(self) -> Self;
}
impl Point for u32 {
    const MAX: Self = u32::MAX;
    fn next(self) -> Self {
        self + 1
    }
    fn prev(self) -> Self {
        self - 1
    }
}
impl Point for u128 {
    const MAX: Self = u128::MAX;
    fn next(self) -> Self {
        self + 1
    }
    fn prev(self) -> Self {
        self - 1
    }
}

impl<T: Point> Segments<T> {
    /// Builds the segments from possibly overlapping `(start, end, id)`
    /// intervals; where they overlap the lowest id wins.
    fn build(mut intervals: Vec<(T, T, EntryId)>) -> Self {
        intervals.sort_unstable_by_key(|&(start, _, id)| (start, id));
        let mut out = Segments {
            starts: Vec::new(),
            ends: Vec::new(),
            ids: Vec::new(),
        };
        // Active intervals, lowest id on top; dead ones are dropped when they surface.
        let mut active: BinaryHeap<(Reverse<EntryId>, T)> = BinaryHeap::new();
        let mut next = 0;
        let mut cur = match intervals.first() {
            Some(first) => first.0,
            None => return out,
        };
        loop {
            if active.is_empty() {
                match intervals.get(next) {
                    Some(iv) => cur = cur.max(iv.0),
                    None => break,
                }
            }
            while let Some(&(start, end, id)) = intervals.get(next) {
                if start > cur {
                    break;
                }
                active.push((Reverse(id), end));
                next += 1;
            }
            while active.peek().is_some_and(|&(_, end)| end < cur) {
                active.pop();
            }
            let Some(&(Reverse(id), end)) = active.peek() else {
                continue;
            };
            let seg_end = match intervals.get(next) {
                Some(iv) => end.min(iv.0.prev()),
                None => end,
            };
            out.push(cur, seg_end, id);
            if seg_end == T::MAX {
                break;
            }
            cur = seg_end.next();
        }
        out.starts.shrink_to_fit();
        out.ends.shrink_to_fit();
        out.ids.shrink_to_fit();
        out
    }

    fn push(&mut self, start: T, end: T, id: EntryId) {
        if let (Some(last_end), Some(&last_id)) = (self.ends.last_mut(), self.ids.last()) {
            if last_id == id && last_end.next() == start {
                *last_end = end;
                return;
            }
        }
        self.starts.push(start);
        self.ends.push(end);
        self.ids.push(id);
    }

    #[inline]
    fn lookup(&self, point: T) -> Option<EntryId> {
        let i = self.starts.partition_point(|&s| s <= point);
        if i == 0 || self.ends[i - 1] < point {
            None
        } else {
            Some(self.ids[i - 1])
        }
    }
}

/// An immutable, compiled set of IP patterns.
#[derive(Debug, Clone, Default)]
pub struct IpSet {
    v4: Segments<u32>,
    v6: Segments<u128>,
    masks: Vec<(u32, u32, EntryId)>,
    any: Option<EntryId>,
    entries: usize,
}

impl IpSet {
    /// Compiles `(pattern, entry)` pairs; `entry` is what lookups return.
    pub fn build(patterns: impl IntoIterator<Item = (IpPattern, EntryId)>) -> Self {
        let (mut v4, mut v6, mut masks, mut any) =
            (Vec::new(), Vec::new(), Vec::new(), None::<EntryId>);
        let mut entries = 0;
        for (pattern, id) in patterns {
            entries += 1;
            match pattern {
                IpPattern::Any => any = Some(any.map_or(id, |a| a.min(id))),
                IpPattern::V4(a, b) => v4.push((a, b, id)),
                IpPattern::V6(a, b) => v6.push((a, b, id)),
                IpPattern::V4Mask { mask, value } => masks.push((mask, value, id)),
            }
        }
        IpSet {
            v4: Segments::build(v4),
            v6: Segments::build(v6),
            masks,
            any,
            entries,
        }
    }

    /// The entry that holds `ip` (canonical form expected), if any. Where
    /// several do, the one first compiled wins.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<EntryId> {
        let found = match ip {
            IpAddr::V4(v4) => {
                let n = u32::from(v4);
                let ranged = self.v4.lookup(n);
                let masked = self
                    .masks
                    .iter()
                    .filter(|&&(m, v, _)| n & m == v)
                    .map(|&(_, _, id)| id)
                    .min();
                min_some(ranged, masked)
            }
            IpAddr::V6(v6) => self.v6.lookup(u128::from(v6)),
        };
        min_some(found, self.any)
    }

    /// Does the set hold `ip`?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }

    /// How many patterns were compiled.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when nothing was compiled.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

fn min_some(a: Option<EntryId>, b: Option<EntryId>) -> Option<EntryId> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{parse_addr, parse_entry, v4};
    use proptest::prelude::*;

    fn set(entries: &[&str]) -> IpSet {
        IpSet::build(entries.iter().enumerate().flat_map(|(i, e)| {
            parse_entry(e)
                .unwrap()
                .into_iter()
                .map(move |(_, _, p)| (p, i as EntryId))
        }))
    }
    fn ip(s: &str) -> IpAddr {
        parse_addr(s).unwrap()
    }

    #[test]
    fn overlapping_entries_report_the_first() {
        let s = set(&["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "9.0.0.0-11.0.0.0"]);
        assert_eq!(s.lookup(ip("10.1.2.3")), Some(0));
        assert_eq!(s.lookup(ip("9.9.9.9")), Some(3));
        assert_eq!(s.lookup(ip("11.0.0.0")), Some(3));
        assert_eq!(s.lookup(ip("11.0.0.1")), None);
        let s = set(&["10.1.2.3", "10.0.0.0/8"]);
        assert_eq!(s.lookup(ip("10.1.2.3")), Some(0));
        assert_eq!(s.lookup(ip("10.1.2.4")), Some(1));
        assert_eq!(s.lookup(ip("10.1.2.2")), Some(1));
    }

    #[test]
    fn edges_of_the_address_space() {
        let s = set(&[
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        assert_eq!(s.lookup(ip("0.0.0.0")), Some(0));
        assert_eq!(s.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(s.lookup(ip("::")), Some(2));
        assert_eq!(
            s.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(3)
        );
        assert_eq!(s.lookup(ip("1.1.1.1")), None);
        let all = set(&["0.0.0.0/0", "::/0"]);
        assert_eq!(all.lookup(ip("200.1.1.1")), Some(0));
        assert_eq!(all.lookup(ip("2001:db8::1")), Some(1));
    }

    #[test]
    fn wildcards_and_star() {
        let s = set(&["10.*.0.1", "5.143.*.*"]);
        assert_eq!(s.lookup(ip("10.200.0.1")), Some(0));
        assert_eq!(s.lookup(ip("10.200.0.2")), None);
        assert_eq!(s.lookup(ip("5.143.7.7")), Some(1));
        let s = set(&["1.1.1.1", "*"]);
        assert_eq!(s.lookup(ip("1.1.1.1")), Some(0));
        assert_eq!(s.lookup(ip("2001:db8::1")), Some(1));
    }

    fn arb_pattern() -> impl Strategy<Value = IpPattern> {
        prop_oneof![
            (any::<u32>(), 0u32..33).prop_map(|(a, len)| {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                IpPattern::V4(a & mask, (a & mask) | !mask)
            }),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| IpPattern::V4(a.min(b), a.max(b))),
            (0u32..=255).prop_map(|a| IpPattern::V4(a << 24, (a << 24) | 0x00ff_ffff)),
            (any::<u128>(), 0u32..129).prop_map(|(a, len)| {
                let mask = if len == 0 {
                    0
                } else {
                    u128::MAX << (128 - len)
                };
                IpPattern::V6(a & mask, (a & mask) | !mask)
            }),
            (any::<u32>(), any::<u32>()).prop_map(|(mask, v)| IpPattern::V4Mask {
                mask,
                value: v & mask
            }),
            Just(IpPattern::Any),
        ]
    }

    fn probes(patterns: &[IpPattern], extra: &[u32]) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = extra.iter().map(|&n| v4(n)).collect();
        for p in patterns {
            match *p {
                IpPattern::V4(a, b) => {
                    for n in [a.wrapping_sub(1), a, b, b.wrapping_add(1), a / 2 + b / 2] {
                        out.push(v4(n));
                    }
                }
                IpPattern::V6(a, b) => {
                    for n in [a.wrapping_sub(1), a, b, b.wrapping_add(1)] {
                        out.push(crate::ip::canonical(crate::ip::v6(n)));
                    }
                }
                IpPattern::V4Mask { value, .. } => out.push(v4(value)),
                IpPattern::Any => {}
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The compiled set answers exactly as a naive scan of the patterns.
        #[test]
        fn matches_naive_scan(patterns in proptest::collection::vec(arb_pattern(), 0..40),
                              extra in proptest::collection::vec(any::<u32>(), 0..20)) {
            let set = IpSet::build(patterns.iter().enumerate().map(|(i, p)| (*p, i as EntryId)));
            for ip in probes(&patterns, &extra) {
                let naive = patterns.iter().position(|p| p.contains(ip)).map(|i| i as EntryId);
                prop_assert_eq!(set.lookup(ip), naive, "ip {}", ip);
            }
        }
    }
}
