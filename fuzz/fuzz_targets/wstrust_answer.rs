//! `wstrust::classify_answer` on any status and body: no panic, and the
//! answer is consistent with what the body can hold.
//!
//! The first two bytes are the HTTP status (big-endian, folded into
//! 100..=599), the rest the body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::wstrust::{Answer, classify_answer};

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [a, b, rest @ ..] => (100 + u16::from_be_bytes([*a, *b]) % 500, rest),
        _ => (200, data),
    };
    let answer = classify_answer(status, body);
    assert_eq!(answer, classify_answer(status, body), "not deterministic");
    match answer {
        Answer::Success => {
            assert_eq!(status, 200, "success with status {status}");
            // Element names cannot be escaped: the name is in the bytes.
            assert!(contains(body, b"RequestSecurityTokenResponse"));
        }
        Answer::FailedAuthentication | Answer::OtherFault => {
            assert!(contains(body, b"Fault"), "a fault without a Fault element");
        }
        Answer::Unknown => {}
    }
    if status != 200 {
        assert_ne!(classify_answer(status, body), Answer::Success);
    }
});
