//! Stage 2 on the request path: the corridor's decision with 100,000 live
//! IP blocks and 100,000 user blocks, smart lockout and the spray defence
//! on (10,000 users with counts), beside the same decision without them.
//!
//! `cargo bench -p stsgate-benches --bench state`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use stsgate_benches::{Spec, generate};
use stsgate_rules::{Facts, NoFeeds, RuleSet};
use stsgate_state::{Block, BlockAction, BlockTable, Guard, Lesson, SignIn, Target};

const BLOCKS: u32 = 100_000;

fn blocks() -> BlockTable {
    let mut all = Vec::with_capacity(2 * BLOCKS as usize);
    for i in 0..BLOCKS {
        // IP blocks spread over 100.0.0.0/8 ... as single addresses and /28s.
        let ip = Ipv4Addr::from(0x6400_0000u32 + i * 37);
        let text = if i % 2 == 0 {
            ip.to_string()
        } else {
            format!("{ip}/28")
        };
        all.push(Arc::new(Block::new(
            Target::Ip(text),
            BlockAction::Refuse,
            None,
            "bench".into(),
            0,
            Duration::from_secs(86400 * 365 * 100),
        )));
        all.push(Arc::new(Block::new(
            Target::User(format!("user{i}@contoso.com")),
            BlockAction::Refuse,
            None,
            "bench".into(),
            0,
            Duration::from_secs(86400 * 365 * 100),
        )));
    }
    BlockTable::build(all)
}

fn bench(c: &mut Criterion) {
    let g = generate(&Spec::new(100_000));
    let with_state = format!(
        "{}\n[lockout]\nthreshold = 5\n[spray]\ndistinct_users = 10\nsame_password_users = 5\n",
        g.text
    );
    let rules = RuleSet::compile("bench.toml", &g.text, &NoFeeds).expect("rules");
    let rules_state = RuleSet::compile("bench.toml", &with_state, &NoFeeds).expect("rules");
    let table = blocks();
    let empty = BlockTable::default();
    let guard = Guard::new();
    let no_guard = Guard::new();
    let now = stsgate_state::now_ms();
    for i in 0..10_000u32 {
        guard.learn(
            &Lesson {
                user: format!("someone{i}@contoso.com"),
                password_key: Some([i as u8; 16]),
                locations: vec![IpAddr::V4(Ipv4Addr::from(0xC000_0200 + i))],
                client_ip: IpAddr::V4(Ipv4Addr::from(0xC000_0200 + i)),
                result: if i % 3 == 0 {
                    SignIn::Success
                } else {
                    SignIn::Failure
                },
                now_ms: now,
                place: None,
            },
            rules_state.lockout.as_ref(),
            rules_state.spray.as_ref(),
        );
    }
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let locations = [client];
    let facts = Facts {
        application: Some("Microsoft.Exchange.ActiveSync"),
        user_agent: Some("Apple-iPhone9C1/1702.60"),
        user: Some("someone42@contoso.com"),
        password_key: Some([7; 16]),
        carried: &locations,
        now_ms: now,
        ..Facts::new(client)
    };
    let blocked_ip = Facts {
        client_ip: IpAddr::V4(Ipv4Addr::from(0x6400_0000u32 + 2 * 37)),
        ..facts
    };
    let mut group = c.benchmark_group("stage2");
    group.bench_function("rules_only", |b| {
        b.iter(|| decide(black_box(&facts), &empty, &no_guard, &rules))
    });
    group.bench_function("blocks_lockout_spray_on_not_listed", |b| {
        b.iter(|| decide(black_box(&facts), &table, &guard, &rules_state))
    });
    group.bench_function("blocks_lockout_spray_on_ip_blocked", |b| {
        b.iter(|| decide(black_box(&blocked_ip), &table, &guard, &rules_state))
    });
    group.finish();
}

/// The corridor's stage 2 then the rules, as `corridor::decide` runs them.
fn decide(facts: &Facts<'_>, blocks: &BlockTable, guard: &Guard, rules: &RuleSet) -> bool {
    stsgate_proxy::corridor::decide(facts, blocks, guard, rules, &mut ())
        .action
        .forwards()
}

criterion_group!(benches, bench);
criterion_main!(benches);
