//! `RuleSet::decide` against 100,000 IP entries (deny), 1,000 application
//! entries (allow) and 1,000 user agent entries (deny), with `logic = "or"`
//! and `logic = "and"`. PRODUCT.md §5: under 1 µs at the median.
//!
//! Run: `cargo bench -p stsgate-benches --bench decide`

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use stsgate_benches::{
    APP_LISTED, APP_UNLISTED, Generated, Logic, Spec, UA_LISTED, UA_UNLISTED, UA_UNLISTED_LONG,
    generate,
};
use stsgate_rules::{Facts, NoFeeds, RuleSet};

const IP_ENTRIES: usize = 100_000;

/// One benchmark case: a client and its two headers.
struct Case {
    name: &'static str,
    ip: IpAddr,
    application: Option<&'static str>,
    user_agent: Option<&'static str>,
}

fn cases(g: &Generated) -> Vec<Case> {
    // Addresses from the middle of the samples: nothing special about them.
    let listed_v4 = g.listed_v4[g.listed_v4.len() / 2];
    let listed_v6 = g.listed_v6[g.listed_v6.len() / 2];
    let unlisted_v4 = g.unlisted_v4[0];
    let unlisted_v6 = g.unlisted_v6[0];
    // With these headers neither header section blocks: the IP decides.
    let quiet = (Some(APP_LISTED), Some(UA_UNLISTED));
    vec![
        Case {
            name: "ipv4_listed",
            ip: listed_v4,
            application: quiet.0,
            user_agent: quiet.1,
        },
        Case {
            name: "ipv4_unlisted",
            ip: unlisted_v4,
            application: quiet.0,
            user_agent: quiet.1,
        },
        Case {
            name: "ipv6_listed",
            ip: listed_v6,
            application: quiet.0,
            user_agent: quiet.1,
        },
        Case {
            name: "ipv6_unlisted",
            ip: unlisted_v6,
            application: quiet.0,
            user_agent: quiet.1,
        },
        // Both header lists match (application allowed, user agent denied).
        Case {
            name: "headers_match",
            ip: unlisted_v4,
            application: Some(APP_LISTED),
            user_agent: Some(UA_LISTED),
        },
        // No entry of either list matches (application not allowed).
        Case {
            name: "headers_no_match",
            ip: unlisted_v4,
            application: Some(APP_UNLISTED),
            user_agent: Some(UA_UNLISTED),
        },
        // A long browser user agent: the automaton scans all of it.
        Case {
            name: "long_user_agent_no_match",
            ip: unlisted_v4,
            application: Some(APP_LISTED),
            user_agent: Some(UA_UNLISTED_LONG),
        },
        // Neither header present.
        Case {
            name: "headers_missing",
            ip: unlisted_v4,
            application: None,
            user_agent: None,
        },
    ]
}

fn bench_logic(c: &mut Criterion, logic: Logic, label: &str) {
    let g = generate(&Spec::new(IP_ENTRIES).logic(logic));
    let rules = RuleSet::compile("bench.toml", &g.text, &NoFeeds)
        .unwrap_or_else(|e| panic!("generated rule file does not compile: {}", e[0]));
    let mut group = c.benchmark_group(format!("decide_{label}"));
    for case in cases(&g) {
        let facts = Facts {
            application: case.application,
            user_agent: case.user_agent,
            ..Facts::new(case.ip)
        };
        group.bench_function(case.name, |b| {
            b.iter(|| rules.decide(black_box(&facts)).action);
        });
    }
    group.finish();
}

fn decide(c: &mut Criterion) {
    bench_logic(c, Logic::Or, "or");
    bench_logic(c, Logic::And, "and");
}

criterion_group!(benches, decide);
criterion_main!(benches);
