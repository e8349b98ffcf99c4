//! IP notation (`ip::parse_entry`): never panics; every item it returns is
//! where it says it is, re-parses alone to the same patterns, and every
//! pattern holds its own start address.

#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use stsgate_rules::ip::{IpPattern, parse_addr, parse_entry, v4, v6};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(addr) = parse_addr(text) {
        assert_eq!(addr, addr.to_canonical(), "{text:?}: not canonical");
        let items = parse_entry(text).expect("an address is an entry");
        assert!(
            items.iter().any(|(_, _, p)| p.contains(addr)),
            "{text:?}: the entry does not hold its own address"
        );
    }
    match parse_entry(text) {
        Err((at, message)) => {
            assert!(at <= text.len(), "{text:?}: error offset {at} past the end");
            assert!(!message.is_empty());
        }
        Ok(items) => {
            assert!(!items.is_empty(), "{text:?}: Ok with nothing");
            for &(at, item, pattern) in &items {
                assert!(
                    text.get(at..).is_some_and(|rest| rest.starts_with(item)),
                    "{text:?}: item {item:?} is not at offset {at}"
                );
                assert!(!item.is_empty() && item.trim() == item, "{item:?}");
                let start: IpAddr = match pattern {
                    IpPattern::Any => v4(0),
                    IpPattern::V4(a, b) => {
                        assert!(a <= b, "{text:?}: {pattern:?}");
                        v4(a)
                    }
                    IpPattern::V6(a, b) => {
                        assert!(a <= b, "{text:?}: {pattern:?}");
                        let start = v6(a);
                        assert_eq!(
                            start,
                            start.to_canonical(),
                            "{text:?}: mapped v6 {pattern:?}"
                        );
                        assert_eq!(
                            v6(b),
                            v6(b).to_canonical(),
                            "{text:?}: mapped v6 {pattern:?}"
                        );
                        start
                    }
                    IpPattern::V4Mask { mask, value } => {
                        assert_eq!(value & !mask, 0, "{text:?}: {pattern:?}");
                        v4(value)
                    }
                };
                assert!(
                    pattern.contains(start),
                    "{text:?}: {pattern:?} does not hold {start}"
                );
                // The item alone parses to what it contributed.
                let alone = parse_entry(item).expect("an item of a good entry parses alone");
                assert!(
                    alone.iter().any(|&(_, _, p)| p == pattern),
                    "{text:?}: item {item:?} alone gives {alone:?}, not {pattern:?}"
                );
            }
        }
    }
});
