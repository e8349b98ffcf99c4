//! The directory client against a real OpenLDAP slapd (memberof overlay):
//! direct and nested groups, a cycle, unknown users, hostile names, the
//! cache and its metrics, slapd down and frozen.

#[path = "../../../tests/src/slapd.rs"]
#[allow(dead_code)]
mod slapd;

use std::sync::Arc;
use std::time::Duration;

use slapd::Slapd;
use stsgate_directory::{
    Answer, Directory, DirectoryMetrics, Health, OnError, Settings, Unavailable, normalize_dn,
};

fn settings(s: &Slapd) -> Settings {
    Settings {
        url: s.url(),
        bind_dn: Some(slapd::BIND_DN.to_string()),
        password_file: Some(s.password_file()),
        base_dn: slapd::BASE_DN.to_string(),
        user_filter: slapd::USER_FILTER.to_string(),
        ca_file: None,
        timeout: Duration::from_secs(5),
        cache_for: Duration::from_secs(900),
        on_error: OnError::Continue,
    }
}

fn directory(settings: Settings) -> (Directory, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = DirectoryMetrics::new(&registry).unwrap();
    (Directory::new(settings, None, metrics).unwrap(), registry)
}

fn groups(a: &Answer) -> Vec<&str> {
    match a {
        Answer::Found(g) => g.iter().map(|g| &**g).collect(),
        other => panic!("expected groups, got {other:?}"),
    }
}

fn counted(registry: &prometheus::Registry, result: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "stsgate_directory_lookups_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == result))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn n(dn: &str) -> String {
    normalize_dn(dn)
}

#[tokio::test]
async fn groups_direct_nested_cyclic_and_none() {
    let s = Slapd::start();
    let (d, registry) = directory(settings(&s));
    assert_eq!(
        groups(&d.groups("alice").await),
        [n(slapd::LEGACY), n(slapd::STAFF)]
    );
    assert_eq!(
        groups(&d.groups("bob@corp.example.com").await),
        [n(slapd::LEGACY), n(slapd::STAFF), n(slapd::TEAM)]
    );
    assert_eq!(
        groups(&d.groups("CORP\\dave").await),
        [n(slapd::CYCLE_A), n(slapd::CYCLE_B)]
    );
    assert!(groups(&d.groups("carol").await).is_empty());
    assert_eq!(d.groups("mallory").await, Answer::NoSuchUser);
    // OpenLDAP has no in-chain rule: the walk ran.
    assert_eq!(d.in_chain().await, Some(false));
    assert_eq!(d.health(), Health::Ok);
    // Forms of one name share an answer (case too): cache hits.
    let hits = counted(&registry, "hit");
    assert_eq!(groups(&d.groups("ALICE").await).len(), 2);
    assert_eq!(groups(&d.groups("corp\\alice").await).len(), 2);
    assert_eq!(counted(&registry, "hit"), hits + 2);
    assert_eq!(counted(&registry, "found"), 4);
    assert_eq!(counted(&registry, "not_found"), 1);
    // Not-found answers are cached too.
    assert_eq!(d.groups("Mallory").await, Answer::NoSuchUser);
    assert_eq!(counted(&registry, "not_found"), 1);
}

#[tokio::test]
async fn hostile_names_match_nothing() {
    let s = Slapd::start();
    let (d, registry) = directory(settings(&s));
    for user in [
        "*",
        "*)(uid=*",
        "alice)(|(uid=*",
        "*)(objectClass=*))(|(uid=*",
        "al*",
        "\\",
        "alice\0",
    ] {
        assert_eq!(d.groups(user).await, Answer::NoSuchUser, "{user:?}");
    }
    assert_eq!(counted(&registry, "error"), 0);
}

#[tokio::test]
async fn concurrent_lookups_for_one_user_make_one_query() {
    let mut s = Slapd::start();
    let (d, registry) = directory(settings(&s));
    // Connected first, then frozen: every request arrives while the one
    // query waits for slapd.
    assert_eq!(
        d.groups("carol").await,
        Answer::Found(Arc::from(Vec::new()))
    );
    s.pause();
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.groups("bob").await })
        })
        .collect();
    while counted(&registry, "coalesced") < 7 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.resume();
    for ask in asks {
        assert_eq!(ask.await.unwrap().clone(), d.groups("bob").await);
    }
    assert_eq!(counted(&registry, "found"), 2);
}

#[tokio::test]
async fn down_and_frozen_directories_answer_unavailable() {
    let mut s = Slapd::start();
    let (d, registry) = directory(Settings {
        timeout: Duration::from_millis(200),
        ..settings(&s)
    });
    assert_eq!(
        groups(&d.groups("alice").await),
        [n(slapd::LEGACY), n(slapd::STAFF)]
    );
    // Frozen: the request stops waiting at the timeout.
    s.pause();
    assert_eq!(
        d.groups("bob").await,
        Answer::Unavailable(Unavailable::Timeout)
    );
    assert_eq!(counted(&registry, "timeout"), 1);
    // Back: the query under way finishes and fills the cache.
    s.resume();
    while counted(&registry, "found") < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits = counted(&registry, "hit");
    assert_eq!(groups(&d.groups("bob").await).len(), 3);
    assert_eq!(counted(&registry, "hit"), hits + 1);
    // Down: an error, not cached; once it is back, answers again.
    s.stop();
    assert!(matches!(
        d.groups("carol").await,
        Answer::Unavailable(Unavailable::Error(_))
    ));
    assert!(matches!(d.health(), Health::Failing(_)));
    s.restart();
    loop {
        match d.groups("carol").await {
            Answer::Found(g) => {
                assert!(g.is_empty());
                break;
            }
            Answer::Unavailable(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(d.health(), Health::Ok);
}

#[tokio::test]
async fn a_wrong_bind_password_is_an_error() {
    let s = Slapd::start();
    let bad = s.password_file().with_file_name("wrong.secret");
    std::fs::write(&bad, "not it\n").unwrap();
    let (d, _) = directory(Settings {
        password_file: Some(bad),
        ..settings(&s)
    });
    match d.groups("alice").await {
        Answer::Unavailable(Unavailable::Error(why)) => {
            assert!(why.contains("bind"), "{why}");
            assert!(!why.contains("not it"), "the password never shows: {why}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn queries_under_way_are_bounded() {
    let mut s = Slapd::start();
    let (d, registry) = directory(settings(&s));
    assert_eq!(d.groups("mallory").await, Answer::NoSuchUser);
    s.pause();
    let asks: Vec<_> = (0..stsgate_directory::MAX_QUERIES)
        .map(|i| {
            let d = d.clone();
            tokio::spawn(async move { d.groups(&format!("user{i}")).await })
        })
        .collect();
    while d.cached_users() < 1 + stsgate_directory::MAX_QUERIES {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // One more user: answered at once, no query made.
    match d.groups("one-too-many").await {
        Answer::Unavailable(Unavailable::Error(why)) => assert!(why.contains("under way"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(counted(&registry, "error"), 1);
    s.resume();
    for ask in asks {
        assert_eq!(ask.await.unwrap(), Answer::NoSuchUser);
    }
    assert_eq!(
        counted(&registry, "not_found"),
        1 + stsgate_directory::MAX_QUERIES as u64
    );
}
