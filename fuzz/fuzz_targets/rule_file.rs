//! Rule files: any text either compiles or yields errors, each positioned in
//! the rule file (`fuzz.toml:LINE:COLUMN: ...`, inside the text); a compiled
//! rule set decides, traces and summarises without panicking.

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use stsgate_rules::{
    Anonymous, Country, Facts, FeedSource, Groups, Place, RuleSet, SignedIn, Step,
};

const PATH: &str = "fuzz.toml";

/// Feeds with fixed small contents (one of them with a bad line, one that
/// cannot be read), so that `[[adaptive.threat.feeds]]` is reachable.
struct FixedFeeds;

impl FeedSource for FixedFeeds {
    fn feed(&self, _name: &str, path: &str) -> Result<(String, Arc<str>), String> {
        match path {
            "feeds/missing.txt" => Err("cannot read feeds/missing.txt: not found".into()),
            "feeds/v6.txt" => Ok((
                "feeds/v6.txt".into(),
                Arc::from("2001:db8::/32\n::ffff:1.2.3.4\n; comment\n"),
            )),
            _ => Ok((
                format!("feeds/{}", path.len()),
                Arc::from(
                    "# drop list\n1.2.3.4\n10.0.0.0/8 ; private\n5.143.*.*\nnot-an-ip\n198.51.100.1-198.51.100.9,203.0.113.7\n",
                ),
            )),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count() as u32;
    match RuleSet::compile(PATH, text, &FixedFeeds) {
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without errors");
            for e in &errors {
                let shown = e.to_string();
                assert!(
                    shown.starts_with("fuzz.toml:"),
                    "error not in the rule file: {shown}"
                );
                assert!(
                    e.line >= 1 && e.line <= lines,
                    "line {} of {lines}: {shown}",
                    e.line
                );
                assert!(e.column >= 1, "column 0: {shown}");
            }
        }
        Ok(rules) => {
            for w in &rules.warnings {
                let shown = w.to_string();
                assert!(
                    shown.starts_with("fuzz.toml:") || shown.starts_with("feeds/"),
                    "warning from nowhere: {shown}"
                );
            }
            let _ = rules.summary();
            let _ = (
                rules.needs_country(),
                rules.needs_asn(),
                rules.needs_anonymous(),
                rules.needs_place(),
                rules.needs_groups(),
            );
            let groups: [Box<str>; 1] = ["cn=legacy-auth-allowed,dc=corp".into()];
            let hops = [ip("10.1.2.3"), ip("2001:db8::5"), ip("203.0.113.7")];
            for (i, client) in [
                "1.2.3.4",
                "5.143.9.9",
                "2001:db8::1",
                "::ffff:10.0.0.1",
                "::",
            ]
            .into_iter()
            .enumerate()
            {
                let client_ip = ip(client).to_canonical();
                let facts = Facts {
                    client_ip,
                    addresses: if i % 2 == 0 { &[] } else { &hops },
                    application: (i != 3).then_some("Microsoft.Exchange.ActiveSync"),
                    user_agent: (i != 4).then_some("python-requests/2.31"),
                    country: Some(if i % 2 == 0 {
                        Country::UNKNOWN
                    } else {
                        Country(*b"KP")
                    }),
                    user: (i != 2)
                        .then_some(["alice@corp.example.com", "CORP\\Bob", "svc", "", "x@y"][i]),
                    groups: [
                        Groups::Found(&groups),
                        Groups::NoSuchUser,
                        Groups::NotLooked,
                        Groups::Unavailable { refuse: true },
                        Groups::Unavailable { refuse: false },
                    ][i],
                    asn: Some([0, 15169, 64500, 1, u32::MAX][i]),
                    anonymous: Some(Anonymous(i as u8 * 7)),
                    place: (i != 1).then_some(Place {
                        latitude: [51.5, -90.0, 90.0, 0.0, 43.88][i],
                        longitude: [-0.09, 180.0, -180.0, 0.0, 125.3][i],
                        accuracy_km: [10, 0, 1000, u16::MAX, 100][i],
                    }),
                    last_signin: (i != 4).then_some(SignedIn {
                        place: Place {
                            latitude: 58.4,
                            longitude: 15.6,
                            accuracy_km: 76,
                        },
                        at_ms: [0, 1000, u64::MAX, 5, 1][i],
                    }),
                    familiar: i == 3,
                    now_ms: 3_600_000,
                    ..Facts::new(client_ip)
                };
                let plain = rules.decide(&facts);
                let mut trace: Vec<Step<'_>> = Vec::new();
                let traced = rules.decide_traced(&facts, &mut trace);
                assert_eq!(plain, traced, "tracing changed the decision");
            }
        }
    }
});
