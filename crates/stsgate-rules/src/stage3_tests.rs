//! Table-driven cases for the stage-3 checks of issue 9: user / group
//! restriction, anonymous IPs, ASNs, geo-velocity, and their order and
//! interplay with request blocking (PRODUCT.md §3.3).

use std::net::IpAddr;

use crate::*;

fn rules(text: &str) -> RuleSet {
    RuleSet::compile("r.toml", text, &NoFeeds).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(text: &str) -> Vec<String> {
    RuleSet::compile("r.toml", text, &NoFeeds)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn ip(s: &str) -> IpAddr {
    crate::ip::parse_addr(s).unwrap()
}

fn outcome(d: Decision<'_>) -> (&'static str, &'static str, bool) {
    (d.stage.as_str(), d.action.as_str(), d.step_up)
}

const USER_GROUP: &str = r#"
[request_blocking]
use_adaptive = true
[request_blocking.ip]
rule = "deny"
entries = ["198.51.100.0/24"]
[adaptive.user_group]
list = "LIST"
users = ["svc-legacy@corp.example.com", "*@partner.example.com", "CORP\\scanner", "batch-[0-9]"]
groups = ["CN=Legacy-Auth-Allowed, OU=Groups,DC=corp,DC=example,DC=com"]
failure_action = "ACTION"
redirect_url = "https://example.com/denied"
"#;

fn user_group(list: &str, action: &str) -> RuleSet {
    rules(&USER_GROUP.replace("LIST", list).replace("ACTION", action))
}

#[test]
fn normalized_dns() {
    assert_eq!(
        normalize_dn("  CN=Legacy Auth , OU = Groups,DC=Corp,DC=com "),
        "cn=legacy auth,ou=groups,dc=corp,dc=com"
    );
    assert_eq!(normalize_dn("cn=a,dc=b"), "cn=a,dc=b");
}

#[test]
fn users_match_upn_domain_sam_and_sam_in_any_case() {
    let r = user_group("deny", "refuse");
    let u = r.adaptive.user_group.as_ref().unwrap();
    #[rustfmt::skip]
    let cases = [
        ("svc-legacy@corp.example.com",   Some("svc-legacy@corp.example.com")),
        ("SVC-Legacy@Corp.Example.COM",   Some("svc-legacy@corp.example.com")),
        ("bob@partner.example.com",       Some("*@partner.example.com")),
        ("bob@partner.example.com.evil",  None),
        ("CORP\\scanner",                 Some("CORP\\scanner")),
        ("corp\\SCANNER",                 Some("CORP\\scanner")),
        ("OTHER\\scanner",                None),
        ("batch-7",                       Some("batch-[0-9]")),
        ("CORP\\batch-7",                 Some("batch-[0-9]")),
        ("batch-7@corp.example.com",      Some("batch-[0-9]")),
        ("batch-77",                      None),
        ("alice@corp.example.com",        None),
    ];
    for (user, want) in cases {
        assert_eq!(u.user_entry(user).map(|e| &*e.text), want, "{user}");
    }
    assert!(r.needs_groups());
    // the entry keeps its line.
    assert_eq!(u.user_entry("batch-1").unwrap().line, 9);
}

#[test]
fn user_group_lists() {
    let groups: &[Box<str>] = &[
        "cn=other,dc=corp".into(),
        "cn=legacy-auth-allowed,ou=groups,dc=corp,dc=example,dc=com".into(),
    ];
    let other: &[Box<str>] = &["cn=other,dc=corp".into()];
    // (list, action, user, groups, want: (stage, action, step_up))
    type Case<'g> = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Groups<'g>,
        (&'static str, &'static str, bool),
    );
    #[rustfmt::skip]
    let cases: [Case<'_>; 18] = [
        // list,  action,  user,                       groups,                    want
        ("allow", "refuse", Some("svc-legacy@corp.example.com"), Groups::NotLooked, ("none", "forward", false)),
        ("allow", "refuse", Some("alice@corp.example.com"), Groups::Found(groups), ("none", "forward", false)),
        ("allow", "refuse", Some("alice@corp.example.com"), Groups::Found(other),  ("user_group", "refuse", false)),
        ("allow", "refuse", Some("alice@corp.example.com"), Groups::NoSuchUser,    ("user_group", "refuse", false)),
        ("allow", "refuse", Some("alice@corp.example.com"), Groups::NotLooked,     ("user_group", "refuse", false)),
        ("allow", "refuse", None,                           Groups::NotLooked,     ("user_group", "refuse", false)),
        // directory down: refuse, unless users already allow; continue: not decided by groups.
        ("allow", "require_2fa", Some("alice@corp.example.com"), Groups::Unavailable { refuse: true }, ("user_group", "refuse", false)),
        ("allow", "refuse", Some("bob@partner.example.com"), Groups::Unavailable { refuse: true }, ("none", "forward", false)),
        ("allow", "refuse", Some("alice@corp.example.com"), Groups::Unavailable { refuse: false }, ("none", "forward", false)),
        ("deny",  "refuse", Some("alice@corp.example.com"), Groups::Found(groups), ("user_group", "refuse", false)),
        ("deny",  "refuse", Some("alice@corp.example.com"), Groups::Found(other),  ("none", "forward", false)),
        ("deny",  "refuse", None,                           Groups::NotLooked,     ("none", "forward", false)),
        ("deny",  "redirect", Some("CORP\\Scanner"),        Groups::NotLooked,     ("user_group", "redirect", false)),
        ("deny",  "require_2fa", Some("batch-3"),           Groups::NotLooked,     ("user_group", "require_2fa", true)),
        ("deny",  "skip_2fa", Some("batch-3"),              Groups::NotLooked,     ("user_group", "skip_2fa", false)),
        ("deny",  "resume", Some("batch-3"),                Groups::NotLooked,     ("user_group", "resume", false)),
        ("deny",  "continue", Some("batch-3"),              Groups::NotLooked,     ("user_group", "continue", false)),
        ("deny",  "refuse", Some("bob@partner.example.com"), Groups::Unavailable { refuse: false }, ("user_group", "refuse", false)),
    ];
    for (list, action, user, groups, want) in cases {
        let r = user_group(list, action);
        let d = r.decide(&Facts {
            user,
            groups,
            ..Facts::new(ip("192.0.2.1"))
        });
        assert_eq!(outcome(d), want, "{list} {action} {user:?} {groups:?}");
        if d.action == Action::Redirect {
            assert_eq!(d.redirect_url, Some("https://example.com/denied"));
        }
    }
}

#[test]
fn user_group_and_request_blocking() {
    let groups: &[Box<str>] =
        &["cn=legacy-auth-allowed,ou=groups,dc=corp,dc=example,dc=com".into()];
    let denied_ip = ip("198.51.100.7");
    let run = |list: &str, action: &str, user: &str, groups: Groups<'_>| {
        let r = user_group(list, action);
        let d = r.decide(&Facts {
            user: Some(user),
            groups,
            ..Facts::new(denied_ip)
        });
        (d.stage.as_str(), d.action.as_str(), d.step_up)
    };
    // A group member on a denied IP: post_auth from a deny list skips the IP deny.
    assert_eq!(
        run(
            "deny",
            "post_auth",
            "alice@corp.example.com",
            Groups::Found(groups)
        ),
        ("user_group", "post_auth", false)
    );
    // require_2fa goes on to request blocking, which refuses (step-up kept).
    assert_eq!(
        run(
            "deny",
            "require_2fa",
            "alice@corp.example.com",
            Groups::Found(groups)
        ),
        ("ip", "refuse", true)
    );
    // continue and skip_2fa go on too.
    assert_eq!(
        run(
            "deny",
            "continue",
            "alice@corp.example.com",
            Groups::Found(groups)
        ),
        ("ip", "refuse", false)
    );
    assert_eq!(
        run(
            "deny",
            "skip_2fa",
            "alice@corp.example.com",
            Groups::Found(groups)
        ),
        ("ip", "refuse", false)
    );
    // Not a member: user_group does not fire, the IP deny refuses.
    assert_eq!(
        run(
            "deny",
            "post_auth",
            "bob@corp.example.com",
            Groups::Found(&[])
        ),
        ("ip", "refuse", false)
    );
    // refuse wins before request blocking.
    assert_eq!(
        run(
            "allow",
            "refuse",
            "bob@corp.example.com",
            Groups::Found(&[])
        ),
        ("user_group", "refuse", false)
    );
}

#[test]
fn user_group_errors() {
    let e = errors(
        "[request_blocking]\nuse_adaptive = true\n[adaptive.user_group]\nusers = [\"a[\", \"\"]\ngroups = [\"not a dn\"]\nfailure_action = \"redirect\"\n",
    );
    assert_eq!(e.len(), 4, "{e:?}");
    assert!(e[0].starts_with("r.toml:4:10: invalid user glob"), "{e:?}");
    assert!(e[1].starts_with("r.toml:4:16: empty user"), "{e:?}");
    assert!(e[2].starts_with("r.toml:5:11: invalid group"), "{e:?}");
    assert!(
        e[3].starts_with("r.toml:6:18: failure action \"redirect\" needs redirect_url"),
        "{e:?}"
    );
    let r =
        rules("[request_blocking]\nuse_adaptive = true\n[adaptive.user_group]\nusers = [\"a\"]\n");
    assert!(!r.needs_groups(), "users alone need no directory");
}

#[test]
fn anonymous_ip() {
    let text = "[request_blocking]\nuse_adaptive = true\n[adaptive.anonymous_ip]\ncategories = [\"tor_exit_node\", \"public_proxy\"]\nfailure_action = \"ACTION\"\n";
    let r = rules(&text.replace("ACTION", "refuse"));
    assert!(r.needs_anonymous());
    let with = |r: &RuleSet, a: Option<Anonymous>| {
        let d = r.decide(&Facts {
            anonymous: a,
            ..Facts::new(ip("192.0.2.1"))
        });
        (outcome(d), d.entry.map(|e| e.text.to_string()))
    };
    let tor_vpn = Anonymous::TOR.union(Anonymous::VPN);
    assert_eq!(
        with(&r, Some(tor_vpn)),
        (
            ("anonymous_ip", "refuse", false),
            Some("tor_exit_node".to_string())
        )
    );
    assert_eq!(with(&r, Some(Anonymous::VPN)).0, ("none", "forward", false));
    assert_eq!(with(&r, None).0, ("none", "forward", false));
    let r = rules(&text.replace("ACTION", "require_2fa"));
    assert_eq!(
        with(&r, Some(Anonymous::PUBLIC_PROXY)).0,
        ("anonymous_ip", "require_2fa", true)
    );
    let e = errors(
        &text
            .replace("public_proxy", "vpn")
            .replace("ACTION", "refuse"),
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:4:32: unknown anonymous IP category \"vpn\""),
        "{e:?}"
    );
    let e = errors("[request_blocking]\nuse_adaptive = true\n[adaptive.anonymous_ip]\n");
    assert!(
        e[0].starts_with("r.toml:3:1: [adaptive.anonymous_ip] needs categories"),
        "{e:?}"
    );
}

#[test]
fn asn_restriction() {
    let text = "[request_blocking]\nuse_adaptive = true\n[adaptive.ip_country]\nrestriction = \"asn\"\nlist = \"LIST\"\nentries = [\"AS15169\", \"as0\"]\nfailure_action = \"ACTION\"\nredirect_url = \"/denied\"\n";
    let with = |r: &RuleSet, asn: Option<u32>| {
        outcome(r.decide(&Facts {
            asn,
            ..Facts::new(ip("192.0.2.1"))
        }))
    };
    let deny = rules(&text.replace("LIST", "deny").replace("ACTION", "redirect"));
    assert!(deny.needs_asn() && !deny.needs_country());
    assert_eq!(with(&deny, Some(15169)), ("ip_country", "redirect", false));
    assert_eq!(
        with(&deny, None),
        ("ip_country", "redirect", false),
        "unknown is AS0"
    );
    assert_eq!(with(&deny, Some(1221)), ("none", "forward", false));
    let allow = rules(&text.replace("LIST", "allow").replace("ACTION", "refuse"));
    assert_eq!(with(&allow, Some(1221)), ("ip_country", "refuse", false));
    assert_eq!(with(&allow, Some(15169)), ("none", "forward", false));
    let e = errors(
        &text
            .replace("as0", "15169x")
            .replace("LIST", "deny")
            .replace("ACTION", "refuse"),
    );
    assert!(
        e[0].starts_with("r.toml:6:23: invalid ASN \"15169x\""),
        "{e:?}"
    );
    // explain sees the ASN.
    let mut steps: Vec<Step<'_>> = Vec::new();
    deny.decide_traced(
        &Facts {
            asn: Some(1221),
            ..Facts::new(ip("192.0.2.1"))
        },
        &mut steps,
    );
    assert_eq!(steps[0].detail.to_string(), "AS1221");
}

const LONDON: Place = Place {
    latitude: 51.5142,
    longitude: -0.0931,
    accuracy_km: 10,
};
const LINKOPING: Place = Place {
    latitude: 58.4167,
    longitude: 15.6167,
    accuracy_km: 76,
};
const CHANGCHUN: Place = Place {
    latitude: 43.88,
    longitude: 125.3228,
    accuracy_km: 100,
};

#[test]
fn haversine() {
    let d = velocity::distance_km(LONDON, LINKOPING);
    assert!((1240.0..1280.0).contains(&d), "{d}");
    assert!(velocity::distance_km(LONDON, LONDON).abs() < 1e-9);
    let d = velocity::distance_km(LONDON, CHANGCHUN);
    assert!((8000.0..8300.0).contains(&d), "{d}");
}

#[test]
fn geo_velocity() {
    let text = "[request_blocking]\nuse_adaptive = true\n[adaptive.geo_velocity]\nfailure_action = \"ACTION\"\n";
    let hour = 3_600_000;
    let run = |action: &str, last: Option<(Place, u64)>, here: Option<Place>, familiar: bool| {
        let r = rules(&text.replace("ACTION", action));
        assert!(r.needs_place());
        let facts = Facts {
            user: Some("alice@corp.example.com"),
            place: here,
            last_signin: last.map(|(place, at_ms)| SignedIn { place, at_ms }),
            familiar,
            now_ms: 100 * hour,
            ..Facts::new(ip("192.0.2.1"))
        };
        let mut steps: Vec<Step<'_>> = Vec::new();
        let d = outcome(r.decide_traced(&facts, &mut steps));
        let step = steps
            .iter()
            .find(|s| s.stage == Stage::GeoVelocity)
            .unwrap();
        (d, step.note, step.detail)
    };
    // London -> Linköping (~1258 km) in 1 h: impossible; in 3 h: possible.
    let (d, note, detail) = run("refuse", Some((LONDON, 99 * hour)), Some(LINKOPING), false);
    assert_eq!(d, ("geo_velocity", "refuse", false), "{note}");
    let Detail::Travel {
        distance_km,
        hours,
        speed_kmh,
        threshold_km,
    } = detail
    else {
        panic!("{detail:?}")
    };
    assert!((1240.0..1280.0).contains(&distance_km) && hours == 1.0 && speed_kmh == distance_km);
    assert_eq!(threshold_km, 586.0);
    let (d, note, _) = run("refuse", Some((LONDON, 97 * hour)), Some(LINKOPING), false);
    assert_eq!(
        (d, note),
        (
            ("none", "forward", false),
            "possible travel (within max_speed_kmh)"
        )
    );
    // Familiar IPs never fire.
    let (d, note, _) = run("refuse", Some((LONDON, 99 * hour)), Some(CHANGCHUN), true);
    assert_eq!(
        (d, note),
        (("none", "forward", false), "a familiar IP of the user")
    );
    // A short hop, however fast, never fires.
    let near = Place {
        latitude: 52.2,
        longitude: 0.12,
        accuracy_km: 20,
    };
    let (d, note, _) = run("refuse", Some((LONDON, 100 * hour)), Some(near), false);
    assert_eq!(d, ("none", "forward", false), "{note}");
    // Inside the accuracy radii: London -> Linköping with wide radii.
    let vague = Place {
        accuracy_km: 1000,
        ..LINKOPING
    };
    let (d, _, _) = run("refuse", Some((LONDON, 99 * hour)), Some(vague), false);
    assert_eq!(d, ("none", "forward", false));
    // Nothing known: passes.
    assert_eq!(
        run("refuse", None, Some(LINKOPING), false).0,
        ("none", "forward", false)
    );
    assert_eq!(
        run("refuse", Some((LONDON, 0)), None, false).0,
        ("none", "forward", false)
    );
    // Same instant elsewhere: infinite speed.
    let (d, _, detail) = run(
        "require_2fa",
        Some((LONDON, 100 * hour)),
        Some(CHANGCHUN),
        false,
    );
    assert_eq!(d, ("geo_velocity", "require_2fa", true));
    assert!(detail.to_string().contains("inf km/h"), "{detail}");
    let (d, _, _) = run(
        "post_auth",
        Some((LONDON, 99 * hour)),
        Some(CHANGCHUN),
        false,
    );
    assert_eq!(d, ("geo_velocity", "post_auth", false));
    // Settings.
    let r = rules(
        "[request_blocking]\nuse_adaptive = true\n[adaptive.geo_velocity]\nmax_speed_kmh = 2000\nmin_distance_km = 0\n",
    );
    let g = r.adaptive.geo_velocity.as_ref().unwrap();
    assert_eq!((g.max_speed_kmh, g.min_distance_km), (2000, 0));
    let e = errors(
        "[request_blocking]\nuse_adaptive = true\n[adaptive.geo_velocity]\nmax_speed_kmh = 0\n",
    );
    assert!(
        e[0].starts_with("r.toml:4:17: must be a whole number from 1"),
        "{e:?}"
    );
}

#[test]
fn stage_three_order_and_trace() {
    let text = r#"
[request_blocking]
use_adaptive = true
[adaptive.geo_velocity]
failure_action = "continue"
[adaptive.user_group]
list = "deny"
users = ["eve"]
failure_action = "continue"
[adaptive.anonymous_ip]
categories = ["anonymous_vpn"]
failure_action = "continue"
[adaptive.ip_country]
restriction = "asn"
entries = ["AS64500"]
failure_action = "continue"
"#;
    let r = rules(text);
    let facts = Facts {
        user: Some("eve"),
        asn: Some(64500),
        anonymous: Some(Anonymous::VPN),
        place: Some(CHANGCHUN),
        last_signin: Some(SignedIn {
            place: LONDON,
            at_ms: 0,
        }),
        now_ms: 1000,
        ..Facts::new(ip("192.0.2.1"))
    };
    let mut steps: Vec<Step<'_>> = Vec::new();
    let d = r.decide_traced(&facts, &mut steps);
    let stages: Vec<_> = steps
        .iter()
        .map(|s| (s.stage.as_str(), s.outcome))
        .collect();
    assert_eq!(
        &stages[..5],
        [
            ("ip_country", Outcome::Fired),
            ("anonymous_ip", Outcome::Fired),
            ("threat", Outcome::NotConfigured),
            ("user_group", Outcome::Fired),
            ("geo_velocity", Outcome::Fired),
        ]
    );
    // continue everywhere: the last firing is what was decided.
    assert_eq!(outcome(d), ("geo_velocity", "continue", false));
    assert_eq!(steps[1].detail.to_string(), "anonymous_vpn");
    // The first check that leaves ends the stage.
    let r = rules(&text.replace(
        "categories = [\"anonymous_vpn\"]\nfailure_action = \"continue\"",
        "categories = [\"anonymous_vpn\"]\nfailure_action = \"resume\"",
    ));
    let mut steps: Vec<Step<'_>> = Vec::new();
    let d = r.decide_traced(&facts, &mut steps);
    assert_eq!(outcome(d), ("anonymous_ip", "resume", false));
    assert!(!steps.iter().any(|s| s.stage == Stage::UserGroup));
    assert_eq!(
        r.active_sections(),
        [
            "adaptive.ip_country",
            "adaptive.anonymous_ip",
            "adaptive.user_group",
            "adaptive.geo_velocity"
        ]
    );
    let summary = r.summary().join("\n");
    assert!(
        summary.contains(
            "adaptive.anonymous_ip: enabled, categories anonymous_vpn, failure_action resume"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("adaptive.user_group: enabled, deny list, users 1, groups 0"),
        "{summary}"
    );
    assert!(
        summary.contains("adaptive.geo_velocity: enabled, max_speed_kmh 900, min_distance_km 500"),
        "{summary}"
    );
    assert!(
        summary.contains("adaptive.ip_country: enabled, asn deny list, 1 entry"),
        "{summary}"
    );
}
