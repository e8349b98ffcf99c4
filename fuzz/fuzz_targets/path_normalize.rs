//! `paths::normalize` (the path as an STS resolves it, which decides
//! filtered, forwarded or refused) on any request path.
//!
//! No panic; a rewritten path is absolute, has no backslash, no empty, `.`
//! or `..` segment, and normalizes to itself (unless escapes nested deeper
//! than the decoder's rounds remain); a path returned unchanged had nothing
//! to rewrite.

#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::paths::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    match normalize(path) {
        Cow::Borrowed(same) => {
            assert_eq!(same, path);
            assert!(!same.contains(['%', '\\']) && !same.contains("//"));
            assert!(!same.split('/').any(|s| s == "." || s == ".."));
        }
        Cow::Owned(out) => {
            assert!(out.starts_with('/'), "{path:?} -> {out:?}");
            assert!(!out.contains('\\'), "{path:?} -> {out:?}");
            let inner = out.strip_suffix('/').unwrap_or(&out);
            for segment in inner.split('/').skip(1) {
                assert!(
                    !matches!(segment, "" | "." | ".."),
                    "{path:?} -> {out:?}: segment {segment:?}"
                );
            }
            if !out.contains('%') {
                assert_eq!(normalize(&out), out.as_str(), "{path:?} -> {out:?}");
            }
        }
    }
});
