//! The main config (`config::Config::parse`): never panics, and every error
//! is positioned in the config file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stsgate_proxy::config::Config;

const PATH: &str = "/etc/stsgate/stsgate.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count() as u32;
    if let Err(errors) = Config::parse(PATH, text) {
        assert!(!errors.is_empty(), "Err without errors");
        for e in &errors {
            let shown = e.to_string();
            assert!(
                shown.starts_with("/etc/stsgate/stsgate.toml:"),
                "error not in the file: {shown}"
            );
            assert!(
                e.line >= 1 && e.line <= lines,
                "line {} of {lines}: {shown}",
                e.line
            );
            assert!(e.column >= 1, "column 0: {shown}");
        }
    }
});
