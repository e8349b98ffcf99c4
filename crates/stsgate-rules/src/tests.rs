//! Table-driven cases for the rule semantics of PRODUCT.md §3.1–3.3.

use std::net::IpAddr;
use std::sync::Arc;

use crate::*;

struct Feeds(&'static [(&'static str, &'static str)]);

impl FeedSource for Feeds {
    fn feed(&self, _name: &str, path: &str) -> Result<(String, Arc<str>), String> {
        self.0
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(p, t)| (p.to_string(), Arc::from(*t)))
            .ok_or_else(|| format!("cannot read {path}"))
    }
}

fn rules(text: &str) -> RuleSet {
    RuleSet::compile(
        "r.toml",
        text,
        &Feeds(&[
            (
                "drop.txt",
                "# DROP\n9.9.9.0/24 ; SBL1\n\n8.8.8.8\nnot-an-ip\n",
            ),
            ("tor.txt", "7.7.7.7\n9.9.9.9\n"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
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

/// (client ip, application, user agent) -> (stage, action)
fn decide(
    r: &RuleSet,
    client: &str,
    app: Option<&str>,
    ua: Option<&str>,
) -> (&'static str, &'static str) {
    let facts = Facts {
        application: app,
        user_agent: ua,
        ..Facts::new(ip(client))
    };
    let d = r.decide(&facts);
    (d.stage.as_str(), d.action.as_str())
}

const BLOCKING: &str = r#"
[request_blocking]
logic = "or"
[request_blocking.ip]
rule = "deny"
entries = ["5.143.*.*", "72.32.245.0/24", "2001:db8::/32"]
[request_blocking.application]
rule = "allow"
entries = ["Microsoft.Exchange.ActiveSync", "Microsoft.Exchange.Autodiscover"]
[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests", "BAV2ROPC"]
"#;

#[test]
fn request_blocking_or() {
    let r = rules(BLOCKING);
    let sync = Some("Microsoft.Exchange.ActiveSync");
    #[rustfmt::skip]
    let cases = [
        ("1.1.1.1",        sync,                      Some("Apple-iPhone"),    ("none", "forward")),
        ("5.143.9.9",      sync,                      Some("Apple-iPhone"),    ("ip", "refuse")),
        ("::ffff:5.143.9.9", sync,                    None,                    ("ip", "refuse")),
        ("2001:db8::7",    sync,                      None,                    ("ip", "refuse")),
        ("1.1.1.1",        Some("Microsoft.Exchange.Imap"), None,              ("application", "refuse")),
        ("1.1.1.1",        None,                      None,                    ("application", "refuse")),
        ("1.1.1.1",        Some("microsoft.exchange.activesync"), None,        ("none", "forward")),
        ("1.1.1.1",        sync,                      Some("Python-Requests/2"), ("user_agent", "refuse")),
        ("5.143.1.1",      None,                      Some("BAV2ROPC"),        ("ip", "refuse")),
    ];
    for (client, app, ua, want) in cases {
        assert_eq!(decide(&r, client, app, ua), want, "{client} {app:?} {ua:?}");
    }
}

#[test]
fn request_blocking_and() {
    let r = rules(&BLOCKING.replace(r#"logic = "or""#, r#"logic = "and""#));
    let imap = Some("Microsoft.Exchange.Imap");
    assert_eq!(
        decide(&r, "5.143.1.1", imap, Some("python-requests")),
        ("ip", "refuse")
    );
    assert_eq!(
        decide(&r, "5.143.1.1", imap, Some("Outlook")),
        ("none", "forward")
    );
    assert_eq!(
        decide(&r, "1.1.1.1", imap, Some("python-requests")),
        ("none", "forward")
    );
    // Sections absent take no part: and over the one configured section.
    let one = rules(
        "[request_blocking]\nlogic = \"and\"\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"curl\"]\n",
    );
    assert_eq!(
        decide(&one, "1.1.1.1", None, Some("curl/8")),
        ("user_agent", "refuse")
    );
    assert_eq!(decide(&one, "1.1.1.1", None, None), ("none", "forward"));
}

#[test]
fn empty_allow_blocks_everything_and_star_matches_missing_headers() {
    let r = rules("[request_blocking.application]\nrule = \"allow\"\n");
    assert_eq!(
        decide(&r, "1.1.1.1", Some("x"), None),
        ("application", "refuse")
    );
    let r = rules("[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"*\"]\n");
    assert_eq!(decide(&r, "1.1.1.1", None, None), ("user_agent", "refuse"));
    let r = rules("[request_blocking.user_agent]\nrule = \"allow\"\nentries = [\"*\"]\n");
    assert_eq!(decide(&r, "1.1.1.1", None, None), ("none", "forward"));
    let r = rules("[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"Android\"]\n");
    assert_eq!(decide(&r, "1.1.1.1", None, None), ("none", "forward"));
    let r = rules("[request_blocking.ip]\nrule = \"allow\"\nentries = [\"*\"]\n");
    assert_eq!(decide(&r, "2001:db8::1", None, None), ("none", "forward"));
}

#[test]
fn disabled_empty_and_log_only() {
    assert_eq!(
        decide(
            &rules("[request_blocking]\nenabled = false\n"),
            "5.143.1.1",
            None,
            None
        ),
        ("none", "forward")
    );
    let off = BLOCKING.replace(r#"logic = "or""#, "enabled = false");
    assert_eq!(
        decide(&rules(&off), "5.143.1.1", None, None),
        ("none", "forward")
    );
    let shadow = BLOCKING.replace(r#"logic = "or""#, r#"mode = "log_only""#);
    let r = rules(&shadow);
    let d = r.decide(&Facts::new(ip("5.143.1.1")));
    assert_eq!(
        (d.stage, d.action, d.list),
        (Stage::Ip, Action::LogOnly, Some("deny"))
    );
    assert!(d.action.forwards());
    assert_eq!(d.entry.map(|e| (&*e.text, e.line)), Some(("5.143.*.*", 6)));
}

#[test]
fn all_hops_deny_any_allow_all() {
    let r = rules("[request_blocking.ip]\nrule = \"deny\"\nentries = [\"10.0.0.0/8\"]\n");
    let hops = [ip("1.1.1.1"), ip("10.1.1.1")];
    let facts = Facts {
        addresses: &hops,
        ..Facts::new(hops[0])
    };
    assert_eq!(r.decide(&facts).action, Action::Refuse);
    let r = rules("[request_blocking.ip]\nrule = \"allow\"\nentries = [\"10.0.0.0/8\"]\n");
    assert_eq!(r.decide(&facts).action, Action::Refuse);
    let hops = [ip("10.2.2.2"), ip("10.1.1.1")];
    let facts = Facts {
        addresses: &hops,
        ..Facts::new(hops[0])
    };
    assert_eq!(r.decide(&facts).action, Action::Forward);
}

const ADAPTIVE: &str = r#"
[request_blocking]
use_adaptive = true
[request_blocking.user_agent]
rule = "deny"
entries = ["python"]
[adaptive.ip_country]
restriction = "ip"
list = "deny"
entries = ["198.51.100.0/24"]
failure_action = "ACTION"
redirect_url = "https://example.com/denied"
[adaptive.threat]
whitelist = ["9.9.9.9"]
[[adaptive.threat.feeds]]
name = "drop"
path = "drop.txt"
risk = "extreme"
[[adaptive.threat.feeds]]
name = "tor"
path = "tor.txt"
risk = "medium"
[adaptive.threat.actions]
extreme = "refuse"
medium = "require_2fa"
"#;

#[test]
fn adaptive_actions() {
    #[rustfmt::skip]
    let cases = [
        // action,       client,         ua,             (stage, action),             step_up
        ("refuse",      "198.51.100.7", None,           ("ip_country", "refuse"),    false),
        ("redirect",    "198.51.100.7", None,           ("ip_country", "redirect"),  false),
        ("continue",    "198.51.100.7", None,           ("ip_country", "continue"),  false),
        ("continue",    "198.51.100.7", Some("python"), ("user_agent", "refuse"),    false),
        ("require_2fa", "198.51.100.7", None,           ("ip_country", "require_2fa"), true),
        ("require_2fa", "198.51.100.7", Some("python"), ("user_agent", "refuse"),    true),
        ("skip_2fa",    "198.51.100.7", Some("python"), ("user_agent", "refuse"),    false),
        ("resume",      "198.51.100.7", None,           ("ip_country", "resume"),    false),
        ("post_auth",   "198.51.100.7", Some("python"), ("ip_country", "post_auth"), false),
        ("refuse",      "9.9.9.1",      None,           ("threat", "refuse"),        false),
        ("refuse",      "8.8.8.8",      None,           ("threat", "refuse"),        false),
        ("refuse",      "9.9.9.9",      None,           ("none", "forward"),         false),
        ("refuse",      "7.7.7.7",      None,           ("threat", "require_2fa"),   true),
        ("refuse",      "1.2.3.4",      Some("python"), ("user_agent", "refuse"),    false),
    ];
    for (action, client, ua, want, step_up) in cases {
        let r = rules(&ADAPTIVE.replace("ACTION", action));
        let d = r.decide(&Facts {
            user_agent: ua,
            ..Facts::new(ip(client))
        });
        assert_eq!(
            (d.stage.as_str(), d.action.as_str()),
            want,
            "{action} {client} {ua:?}"
        );
        assert_eq!(d.step_up, step_up, "{action} {client} {ua:?}");
        if d.action == Action::Redirect {
            assert_eq!(d.redirect_url, Some("https://example.com/denied"));
        }
    }
    // continue on 3a goes on to 3b.
    let r = rules(
        &ADAPTIVE
            .replace("ACTION", "continue")
            .replace("198.51.100.0/24", "9.9.9.0/24"),
    );
    assert_eq!(decide(&r, "9.9.9.1", None, None), ("threat", "refuse"));
    // without use_adaptive nothing adaptive runs, with a warning.
    let r = rules(
        &ADAPTIVE
            .replace("ACTION", "refuse")
            .replace("use_adaptive = true", ""),
    );
    assert_eq!(decide(&r, "198.51.100.7", None, None), ("none", "forward"));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.message.contains("use_adaptive"))
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.to_string().starts_with("drop.txt:5:1:")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn country_restriction() {
    let text = "[request_blocking]\nuse_adaptive = true\n[adaptive.ip_country]\nrestriction = \"country\"\nlist = \"LIST\"\nentries = [\"kp\", \"ZZ\"]\n";
    let deny = rules(&text.replace("LIST", "deny"));
    assert!(deny.needs_country());
    let with = |r: &RuleSet, c: Option<&str>| {
        r.decide(&Facts {
            country: c.map(|c| Country::parse(c).unwrap()),
            ..Facts::new(ip("1.1.1.1"))
        })
        .action
    };
    assert_eq!(with(&deny, Some("KP")), Action::Refuse);
    assert_eq!(with(&deny, None), Action::Refuse);
    assert_eq!(with(&deny, Some("SE")), Action::Forward);
    let allow = rules(&text.replace("LIST", "allow"));
    assert_eq!(with(&allow, Some("SE")), Action::Refuse);
    assert_eq!(with(&allow, Some("KP")), Action::Forward);
}

#[test]
fn a_file_that_configures_nothing_is_refused() {
    for text in [
        "",
        "\n# all commented out\n",
        "[request_blocking]\n",
        "[request_blocking]\nenabled = true\nlogic = \"and\"\n",
        "[adaptive]\n",
    ] {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{text:?}: {e:?}");
        assert!(
            e[0].starts_with("r.toml:1:1: the rule file configures no stage"),
            "{e:?}"
        );
    }
    // Saying so, or configuring any stage, is enough.
    for text in [
        "[request_blocking]\nenabled = false\n",
        "[request_blocking.user_agent]\nrule = \"deny\"\n",
        "[adaptive.ip_country]\nenabled = false\n",
        "[lockout]\n",
        "[spray]\nenabled = false\n",
    ] {
        let r = RuleSet::compile("r.toml", text, &NoFeeds);
        assert!(r.is_ok(), "{text:?}: {:?}", r.err());
    }
    assert_eq!(
        rules(BLOCKING).active_sections(),
        [
            "request_blocking.ip",
            "request_blocking.application",
            "request_blocking.user_agent"
        ]
    );
    let off = rules(&BLOCKING.replace(r#"logic = "or""#, "enabled = false"));
    assert!(off.active_sections().is_empty());
    let adaptive = rules(&ADAPTIVE.replace("ACTION", "refuse"));
    assert_eq!(
        adaptive.active_sections(),
        [
            "request_blocking.user_agent",
            "adaptive.ip_country",
            "adaptive.threat"
        ]
    );
}

#[test]
fn errors_say_where() {
    let e = errors(
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\n  \"1.2.3.4\",\n  \"10.0.0.0/33\",\n  \"1.2.3.4, x\",\n]\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("r.toml:5:4: invalid IP entry \"10.0.0.0/33\""),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("r.toml:6:13: invalid IP entry \"x\""),
        "{e:?}"
    );
    let e = errors("[request_blocking]\nlogic = \"xor\"\n");
    assert!(e[0].starts_with("r.toml:2:9:"), "{e:?}");
    let e = errors("[request_blocking]\nenabeld = true\n");
    assert!(
        e[0].starts_with("r.toml:2:1:") && e[0].contains("enabeld"),
        "{e:?}"
    );
    let e = errors("[lockout]\nobservation_window = \"soon\"\nthreshold = 0\n");
    assert_eq!(e.len(), 2, "{e:?}");
    let e = errors("[request_blocking.application]\nrule = \"deny\"\nentries = [\"\"]\n");
    assert!(e[0].contains("empty entry"), "{e:?}");
    let e = errors("[adaptive.ip_country]\nfailure_action = \"redirect\"\n");
    assert!(e[0].contains("redirect_url"), "{e:?}");
    let e = errors("[adaptive.ip_country]\nrestriction = \"country\"\nentries = [\"Korea\"]\n");
    assert!(e[0].starts_with("r.toml:3:12: invalid country"), "{e:?}");
}

#[test]
fn trace_names_every_stage() {
    let r = rules(BLOCKING);
    let mut steps = Vec::new();
    let d = r.decide_traced(
        &Facts {
            user_agent: Some("python-requests"),
            ..Facts::new(ip("5.143.1.1"))
        },
        &mut steps,
    );
    assert_eq!(d.stage, Stage::Ip);
    let stages: Vec<_> = steps.iter().map(|s| (s.stage, s.outcome)).collect();
    assert_eq!(
        stages,
        [
            (Stage::IpCountry, Outcome::Disabled),
            (Stage::Ip, Outcome::Fired),
            (Stage::Application, Outcome::Fired),
            (Stage::UserAgent, Outcome::Fired)
        ]
    );
    assert_eq!(steps[3].entry.map(|e| e.line), Some(12));
}

#[test]
fn user_agent_header_per_section() {
    let with = |header: &str, ms: Option<&str>, own: Option<&str>| {
        let text = format!(
            "[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python\"]\n{header}"
        );
        rules(&text)
            .decide(&Facts {
                user_agent: ms,
                http_user_agent: own,
                ..Facts::new(ip("1.1.1.1"))
            })
            .action
    };
    let (py, phone) = (Some("python-requests/2.31"), Some("Apple-iPhone/1"));
    // auto (default): X-MS-Client-User-Agent when present, User-Agent otherwise.
    assert_eq!(with("", None, py), Action::Refuse);
    assert_eq!(with("", phone, py), Action::Forward);
    assert_eq!(with("header = \"auto\"", py, phone), Action::Refuse);
    assert_eq!(
        with("header = \"x-ms-client-user-agent\"", None, py),
        Action::Forward
    );
    assert_eq!(with("header = \"user-agent\"", phone, py), Action::Refuse);
    assert!(RuleSet::compile(
        "r.toml",
        "[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"x\"]\nheader = \"agent\"\n",
        &NoFeeds
    )
    .is_err());
}

#[test]
fn sections_apply_to_their_protocols() {
    let rs = rules(
        "[request_blocking]\nlogic = \"or\"\n\
         [request_blocking.ip]\nrule = \"deny\"\nentries = [\"6.6.6.6\"]\n\
         [request_blocking.application]\nrule = \"allow\"\nentries = [\"Microsoft.Exchange.ActiveSync\"]\n\
         [request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python\"]\n",
    );
    let run = |rs: &RuleSet, protocol: Protocol, from: &str, ua: Option<&str>| {
        let d = rs.decide(&Facts {
            protocol,
            http_user_agent: ua,
            ..Facts::new(ip(from))
        });
        (d.stage, d.action)
    };
    // The application allow list (no X-MS-Client-Application): WS-Trust
    // only by default, so a browser's forms sign-in and an ROPC app pass it.
    assert_eq!(
        run(&rs, Protocol::WsTrust, "1.1.1.1", None),
        (Stage::Application, Action::Refuse)
    );
    for p in [Protocol::OAuth2Ropc, Protocol::Forms] {
        assert_eq!(run(&rs, p, "1.1.1.1", None), (Stage::None, Action::Forward));
        // The ip and the user agent deny lists apply to every protocol.
        assert_eq!(run(&rs, p, "6.6.6.6", None), (Stage::Ip, Action::Refuse));
        assert_eq!(
            run(&rs, p, "1.1.1.1", Some("python-requests/2.32")),
            (Stage::UserAgent, Action::Refuse)
        );
    }
    let mut steps: Vec<Step> = Vec::new();
    rs.decide_traced(
        &Facts {
            protocol: Protocol::Forms,
            ..Facts::new(ip("1.1.1.1"))
        },
        &mut steps,
    );
    let app = steps
        .iter()
        .find(|s| s.stage == Stage::Application)
        .unwrap();
    assert_eq!(app.outcome, Outcome::NotApplicable);
    assert!(
        rs.summary()
            .iter()
            .any(|l| l == "request_blocking.application: allow list, 1 entry, wstrust only"),
        "{:?}",
        rs.summary()
    );
    // Written out: the ip list for WS-Trust alone, the allow list for every protocol.
    let rs = rules(
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"6.6.6.6\"]\nprotocols = [\"wstrust\"]\n\
         [request_blocking.application]\nrule = \"allow\"\nentries = [\"x\"]\n\
         protocols = [\"wstrust\", \"oauth2_ropc\", \"forms\"]\n",
    );
    assert_eq!(
        run(&rs, Protocol::Forms, "6.6.6.6", None),
        (Stage::Application, Action::Refuse)
    );
    // With `and`, a section that does not apply takes no part.
    let rs = rules(
        "[request_blocking]\nlogic = \"and\"\n\
         [request_blocking.ip]\nrule = \"deny\"\nentries = [\"6.6.6.6\"]\n\
         [request_blocking.application]\nrule = \"allow\"\nentries = [\"x\"]\n",
    );
    assert_eq!(
        run(&rs, Protocol::Forms, "6.6.6.6", None),
        (Stage::Ip, Action::Refuse)
    );
    assert_eq!(
        errors("[request_blocking.ip]\nrule = \"deny\"\nentries = [\"6.6.6.6\"]\nprotocols = []\n")
            [0],
        "r.toml:4:13: protocols = [] makes the section apply to nothing: remove the section instead"
    );
    assert!(errors(
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"6.6.6.6\"]\nprotocols = [\"saml\"]\n"
    )[0]
        .starts_with("r.toml:4:"));
}
