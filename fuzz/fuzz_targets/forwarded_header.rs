//! `X-Forwarded-For` / `X-MS-Forwarded-Client-IP` values
//! (`client_ip::parse_forwarded`): never panics, returns canonical
//! addresses, and what it returns, written back as a header, parses to the
//! same list.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::client_ip::parse_forwarded;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match parse_forwarded(value) {
        Err(message) => assert!(!message.is_empty()),
        Ok(addrs) => {
            for a in &addrs {
                assert_eq!(*a, a.to_canonical(), "{value:?}: {a} is not canonical");
            }
            let written = addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            assert_eq!(
                parse_forwarded(&written).as_ref(),
                Ok(&addrs),
                "{value:?} -> {written:?} does not round-trip"
            );
        }
    }
});
