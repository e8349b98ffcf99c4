//! Rule semantics through the running binary (PRODUCT.md §3.2–3.3, §4.6,
//! §4.7): the engine's unit tests hold the full tables; these prove the
//! wiring end to end — real config, real rule file, real requests, what
//! reaches the upstream, the decision log and the metrics.

use stsgate_tests::*;

/// Trust the test client (on 127.0.0.1) as a proxy, so requests can carry
/// any client IP in X-MS-Forwarded-Client-IP.
const TRUST_LOOPBACK: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";

const ACTIVESYNC: &str = "Microsoft.Exchange.ActiveSync";

/// What one request carries.
#[derive(Default, Clone, Copy)]
struct Req<'a> {
    /// X-MS-Forwarded-Client-IP.
    client: Option<&'a str>,
    /// X-MS-Client-Application.
    app: Option<&'a str>,
    /// X-MS-Client-User-Agent.
    ua: Option<&'a str>,
}

impl<'a> Req<'a> {
    fn from(client: &'a str) -> Req<'a> {
        Req {
            client: Some(client),
            ..Req::default()
        }
    }
    fn app(self, app: &'a str) -> Req<'a> {
        Req {
            app: Some(app),
            ..self
        }
    }
    fn ua(self, ua: &'a str) -> Req<'a> {
        Req {
            ua: Some(ua),
            ..self
        }
    }
}

/// POSTs the 2005 RST fixture to `base` (`http://host:port`) with `r`'s headers.
async fn send_req(base: &str, r: Req<'_>) -> Got {
    let mut headers = Vec::new();
    if let Some(c) = r.client {
        headers.push(("x-ms-forwarded-client-ip", c));
    }
    if let Some(a) = r.app {
        headers.push(("x-ms-client-application", a));
    }
    if let Some(u) = r.ua {
        headers.push(("x-ms-client-user-agent", u));
    }
    send(
        &http_client(),
        post(
            &format!("{base}{USERNAMEMIXED}"),
            &headers,
            fixture("rst-2005-usernamemixed.xml"),
        ),
    )
    .await
}

/// Sends `r` through `gate` and checks whether it was forwarded: the answer
/// and the upstream's count agree.
async fn expect(gate: &Gate, upstream: &Upstream, r: Req<'_>, forwarded: bool, what: &str) -> Got {
    let before = upstream.count();
    let got = send_req(&gate.url(""), r).await;
    if forwarded {
        assert_eq!(got.status, 200, "{what}: forwarded");
        assert_eq!(upstream.count(), before + 1, "{what}: reached upstream");
    } else {
        assert_eq!(got.status, 500, "{what}: refused");
        assert!(
            got.text().contains("FailedAuthentication"),
            "{what}: the blocked response"
        );
        assert_eq!(upstream.count(), before, "{what}: nothing reached upstream");
    }
    got
}

/// The decision log after `n` events, the last `n` of them.
fn last_decisions(gate: &Gate, n: usize) -> Vec<serde_json::Value> {
    let all = gate.wait_decisions(|d| d.len() >= n);
    all[all.len() - n..].to_vec()
}

fn decisions_metric(gate: &Gate, action: &str, stage: &str) -> f64 {
    gate.metric(&format!(
        "stsgate_decisions_total{{action=\"{action}\",stage=\"{stage}\"}}"
    ))
}

/// Starts `stsgate run` on a directory this test lays out itself: the rule
/// file, extra files next to it (feeds), and a config listening on `listen`.
fn start_with_files(
    rules: &str,
    files: &[(&str, &str)],
    extra: &str,
    upstream: &Upstream,
    listen: &str,
) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), rules).unwrap();
    for (name, text) in files {
        let path = dir.path().join("rules").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let token = "test-token-0123456789".to_string();
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    let config = format!(
        "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"{listen}\"\ndrain_timeout = \"10s\"\n[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n{extra}\n",
        upstream.addr
    );
    std::fs::write(dir.path().join("stsgate.toml"), config).unwrap();
    Gate::spawn(dir, token)
}

// ---- request blocking: logic, mode, enabled ---------------------------------

const IP_AND_UA: &str = r#"
[request_blocking.ip]
rule = "deny"
entries = ["5.143.*.*"]

[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_or_refuses_when_one_section_blocks() {
    let upstream = Upstream::start().await;
    let rules = format!("[request_blocking]\nlogic = \"or\"\n{IP_AND_UA}");
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("Outlook"),
        true,
        "neither",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("5.143.1.1").ua("Outlook"),
        false,
        "ip only",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("python-requests/2"),
        false,
        "ua only",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("5.143.1.1").ua("python-requests/2"),
        false,
        "both",
    )
    .await;
    let log = last_decisions(&gate, 4);
    let got: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e["stage"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("none", "forward"),
            ("ip", "refuse"),
            ("user_agent", "refuse"),
            // the first blocking section names the decision
            ("ip", "refuse"),
        ]
    );
    assert_eq!(log[2]["entry"], "python-requests");
    assert_eq!(log[2]["user_agent"], "python-requests/2");
    assert_eq!(decisions_metric(&gate, "refuse", "ip"), 2.0);
    assert_eq!(decisions_metric(&gate, "refuse", "user_agent"), 1.0);
    assert_eq!(decisions_metric(&gate, "forward", "none"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logic_and_refuses_only_when_every_section_blocks() {
    let upstream = Upstream::start().await;
    let rules = format!("[request_blocking]\nlogic = \"and\"\n{IP_AND_UA}");
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("Outlook"),
        true,
        "neither",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("5.143.1.1").ua("Outlook"),
        true,
        "ip only",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("python-requests/2"),
        true,
        "ua only",
    )
    .await;
    // a missing user agent matches no deny entry: the ua section does not block
    expect(&gate, &upstream, Req::from("5.143.1.1"), true, "ip, no ua").await;
    expect(
        &gate,
        &upstream,
        Req::from("5.143.1.1").ua("python-requests/2"),
        false,
        "both",
    )
    .await;
    let log = last_decisions(&gate, 5);
    for e in &log[..4] {
        assert_eq!(
            (&e["stage"], &e["action"]),
            (&"none".into(), &"forward".into()),
            "{e}"
        );
    }
    assert_eq!(log[4]["stage"], "ip");
    assert_eq!(log[4]["action"], "refuse");
    assert_eq!(log[4]["entry"], "5.143.*.*");
    assert_eq!(decisions_metric(&gate, "forward", "none"), 4.0);
    assert_eq!(decisions_metric(&gate, "refuse", "ip"), 1.0);
}

/// The shipped `rules/log-only.toml`: decide, log and count, but forward.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_only_forwards_what_it_would_refuse_and_says_so() {
    let rules = std::fs::read_to_string(workspace().join("rules/log-only.toml")).unwrap();
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(&rules, &upstream));
    let client = http_client();
    let sync = ("x-ms-client-application", ACTIVESYNC);
    // (headers, the stage that would refuse, the entry)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, Option<&'a str>);
    let cases: [Case; 3] = [
        (
            &[sync, ("x-ms-client-user-agent", "python-requests/2.32")],
            "user_agent",
            Some("python-requests"),
        ),
        // no application header: the allow list would refuse
        (&[], "application", None),
        (&[sync], "none", None),
    ];
    for (headers, _, _) in &cases {
        let got = send(
            &client,
            post(
                &gate.url(USERNAMEMIXED),
                headers,
                fixture("rst-2005-usernamemixed.xml"),
            ),
        )
        .await;
        assert_eq!(got.status, 200, "log_only forwards {headers:?}");
        assert_eq!(&got.body[..], &fixture("rstr-2005-success.xml")[..]);
    }
    assert_eq!(upstream.count(), 3, "everything reached upstream");
    let log = last_decisions(&gate, 3);
    for ((_, stage, entry), e) in cases.iter().zip(&log) {
        assert_eq!(e["stage"], *stage, "{e}");
        let action = if *stage == "none" {
            "forward"
        } else {
            "log_only"
        };
        assert_eq!(e["action"], action, "{e}");
        assert_eq!(e["status"], 200, "{e}");
        assert!(e["upstream_ms"].is_number(), "{e}");
        if let Some(entry) = entry {
            assert_eq!(e["entry"], *entry, "{e}");
            assert_eq!(e["list"], "deny", "{e}");
        }
    }
    assert_eq!(log[1]["list"], "allow");
    assert_eq!(decisions_metric(&gate, "log_only", "user_agent"), 1.0);
    assert_eq!(decisions_metric(&gate, "log_only", "application"), 1.0);
    assert_eq!(decisions_metric(&gate, "forward", "none"), 1.0);
    assert_eq!(decisions_metric(&gate, "refuse", "user_agent"), 0.0);
    assert_eq!(decisions_metric(&gate, "refuse", "application"), 0.0);
}

/// `enabled = false` skips request blocking; the adaptive stage still
/// follows `use_adaptive`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_request_blocking_blocks_nothing() {
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking]
enabled = false
use_adaptive = true

[request_blocking.ip]
rule = "deny"
entries = ["*"]

[request_blocking.application]
rule = "allow"
entries = []

[request_blocking.user_agent]
rule = "deny"
entries = ["*"]

[adaptive.ip_country]
list = "deny"
entries = ["198.51.100.0/24"]
"#;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(rules, &upstream)
    });
    expect(&gate, &upstream, Req::from("9.9.9.9"), true, "plain").await;
    expect(
        &gate,
        &upstream,
        Req::from("5.143.1.1").ua("python-requests"),
        true,
        "ua",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7"),
        false,
        "adaptive still runs",
    )
    .await;
    let log = last_decisions(&gate, 3);
    assert_eq!(log[0]["stage"], "none");
    assert_eq!(log[1]["stage"], "none");
    assert_eq!(log[2]["stage"], "ip_country");
    assert_eq!(decisions_metric(&gate, "forward", "none"), 2.0);
    assert_eq!(decisions_metric(&gate, "refuse", "ip_country"), 1.0);
}

/// Without `use_adaptive = true` the adaptive sections do not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_checks_need_use_adaptive() {
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking]
use_adaptive = false

[adaptive.ip_country]
list = "deny"
entries = ["198.51.100.0/24"]
"#;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(rules, &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7"),
        true,
        "adaptive off",
    )
    .await;
    // the operator is told at start that the section does not run
    assert!(gate.wait_stderr("use_adaptive"), "{:?}", gate.stderr());
}

// ---- application / user agent lists -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_allow_list() {
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking.application]
rule = "allow"
entries = ["Microsoft.Exchange.ActiveSync", "Microsoft.Exchange.Autodiscover"]
"#;
    let gate = Gate::start(GateSpec::new(rules, &upstream));
    let local = Req::default();
    expect(&gate, &upstream, local, false, "missing header").await;
    expect(&gate, &upstream, local.app(""), false, "empty header").await;
    expect(
        &gate,
        &upstream,
        local.app("Microsoft.Exchange.Imap"),
        false,
        "not listed",
    )
    .await;
    expect(
        &gate,
        &upstream,
        local.app("microsoft.exchange.ACTIVESYNC"),
        true,
        "other case",
    )
    .await;
    expect(
        &gate,
        &upstream,
        local.app("v15/Microsoft.Exchange.Autodiscover/x"),
        true,
        "contains",
    )
    .await;
    let log = last_decisions(&gate, 5);
    assert_eq!(log[0]["stage"], "application");
    assert_eq!(log[0]["list"], "allow");
    assert!(log[0].get("application").is_none(), "{}", log[0]);
    assert!(log[0].get("entry").is_none(), "{}", log[0]);
    assert_eq!(log[2]["application"], "Microsoft.Exchange.Imap");
    assert_eq!(log[3]["stage"], "none");
    assert_eq!(log[3]["application"], "microsoft.exchange.ACTIVESYNC");
    assert_eq!(decisions_metric(&gate, "refuse", "application"), 3.0);
}

/// `*` matches every value and a missing header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn star_matches_every_value_and_a_missing_header() {
    let upstream = Upstream::start().await;
    // allow "*": nothing is blocked by the application section
    let gate = Gate::start(GateSpec::new(
        "[request_blocking.application]\nrule = \"allow\"\nentries = [\"*\"]\n",
        &upstream,
    ));
    let local = Req::default();
    expect(&gate, &upstream, local, true, "allow *: missing header").await;
    expect(
        &gate,
        &upstream,
        local.app("anything"),
        true,
        "allow *: any value",
    )
    .await;
    drop(gate);
    // deny "*": everything is blocked by the user agent section, header or not
    let gate = Gate::start(GateSpec::new(
        "[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"*\"]\n",
        &upstream,
    ));
    expect(&gate, &upstream, local, false, "deny *: missing header").await;
    expect(
        &gate,
        &upstream,
        local.ua("Outlook"),
        false,
        "deny *: any value",
    )
    .await;
    let log = last_decisions(&gate, 2);
    for e in &log {
        assert_eq!(e["stage"], "user_agent");
        assert_eq!(e["entry"], "*");
    }
}

// ---- adaptive ---------------------------------------------------------------

fn ip_country(action: &str, extra: &str) -> String {
    format!(
        r#"
[request_blocking]
use_adaptive = true

[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests"]

[adaptive.ip_country]
restriction = "ip"
list = "deny"
entries = ["198.51.100.0/24"]
failure_action = "{action}"
{extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_redirect_answers_302_and_forwards_nothing() {
    let upstream = Upstream::start().await;
    let rules = ip_country(
        "redirect",
        "redirect_url = \"https://login.example.com/blocked?from=sts\"",
    );
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    let got = send_req(&gate.url(""), Req::from("198.51.100.7")).await;
    assert_eq!(got.status, 302);
    assert_eq!(
        got.headers["location"],
        "https://login.example.com/blocked?from=sts"
    );
    assert_eq!(upstream.count(), 0, "a redirect forwards nothing");
    // redirect ends the pipeline: request blocking is not reached either
    let got = send_req(
        &gate.url(""),
        Req::from("198.51.100.8").ua("python-requests"),
    )
    .await;
    assert_eq!(got.status, 302);
    expect(&gate, &upstream, Req::from("9.9.9.9"), true, "not listed").await;
    let log = last_decisions(&gate, 3);
    assert_eq!(log[0]["stage"], "ip_country");
    assert_eq!(log[0]["action"], "redirect");
    assert_eq!(log[0]["entry"], "198.51.100.0/24");
    assert_eq!(log[0]["status"], 302);
    assert!(log[0].get("upstream_ms").is_none(), "{}", log[0]);
    assert_eq!(log[1]["action"], "redirect");
    assert_eq!(decisions_metric(&gate, "redirect", "ip_country"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_require_2fa_forwards_with_step_up_after_request_blocking() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&ip_country("require_2fa", ""), &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7").ua("Outlook"),
        true,
        "listed",
    )
    .await;
    let seen = upstream.seen();
    assert_eq!(seen[0].headers["x-stsgate-step-up"], "required");
    // request blocking still runs after require_2fa
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7").ua("python-requests/2"),
        false,
        "listed + ua",
    )
    .await;
    // not listed: no step-up
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("Outlook"),
        true,
        "not listed",
    )
    .await;
    let seen = upstream.seen();
    assert!(!seen[1].headers.contains_key("x-stsgate-step-up"));
    let log = last_decisions(&gate, 3);
    assert_eq!(log[0]["stage"], "ip_country");
    assert_eq!(log[0]["action"], "require_2fa");
    assert_eq!(log[0]["status"], 200);
    assert_eq!(log[1]["stage"], "user_agent");
    assert_eq!(log[1]["action"], "refuse");
    assert_eq!(log[2]["stage"], "none");
    assert_eq!(decisions_metric(&gate, "require_2fa", "ip_country"), 1.0);
    assert_eq!(decisions_metric(&gate, "refuse", "user_agent"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_post_auth_skips_request_blocking() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&ip_country("post_auth", ""), &upstream)
    });
    // listed: post_auth forwards even a denied user agent
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7").ua("python-requests/2"),
        true,
        "post_auth",
    )
    .await;
    assert!(!upstream.seen()[0].headers.contains_key("x-stsgate-step-up"));
    // not listed: request blocking applies
    expect(
        &gate,
        &upstream,
        Req::from("9.9.9.9").ua("python-requests/2"),
        false,
        "not listed",
    )
    .await;
    let log = last_decisions(&gate, 2);
    assert_eq!(log[0]["stage"], "ip_country");
    assert_eq!(log[0]["action"], "post_auth");
    assert_eq!(log[1]["stage"], "user_agent");
    assert_eq!(decisions_metric(&gate, "post_auth", "ip_country"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threat_feeds_by_risk_with_whitelist() {
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking]
use_adaptive = true

[adaptive.threat]
whitelist = ["198.51.100.7"]

[[adaptive.threat.feeds]]
name = "drop"
path = "feeds/drop.txt"
risk = "extreme"

[[adaptive.threat.feeds]]
name = "proxies"
path = "feeds/proxies.txt"
risk = "medium"

[adaptive.threat.actions]
extreme = "refuse"
medium = "require_2fa"
"#;
    let drop_feed = "# DROP list\n198.51.100.0/24 ; SBL1\n\n203.0.113.9\n";
    let proxy_feed = "203.0.113.0/24\n198.51.100.0/24\n";
    let gate = start_with_files(
        rules,
        &[
            ("feeds/drop.txt", drop_feed),
            ("feeds/proxies.txt", proxy_feed),
        ],
        TRUST_LOOPBACK,
        &upstream,
        "127.0.0.1:0",
    );
    let rules_dir = gate.dir.path().join("rules");
    // in the extreme feed (and the medium one): the highest risk decides
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.20"),
        false,
        "extreme",
    )
    .await;
    // whitelisted: never reported, by any feed
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7"),
        true,
        "whitelisted",
    )
    .await;
    assert!(!upstream.seen()[0].headers.contains_key("x-stsgate-step-up"));
    // medium only: require_2fa
    expect(&gate, &upstream, Req::from("203.0.113.5"), true, "medium").await;
    assert_eq!(upstream.seen()[1].headers["x-stsgate-step-up"], "required");
    // an address line in the extreme feed
    expect(
        &gate,
        &upstream,
        Req::from("203.0.113.9"),
        false,
        "extreme address",
    )
    .await;
    expect(&gate, &upstream, Req::from("9.9.9.9"), true, "in no feed").await;
    let log = last_decisions(&gate, 5);
    assert_eq!(log[0]["stage"], "threat");
    assert_eq!(log[0]["action"], "refuse");
    assert_eq!(log[0]["list"], "drop");
    assert_eq!(log[0]["entry"], "198.51.100.0/24");
    assert_eq!(log[1]["stage"], "none");
    assert_eq!(log[2]["stage"], "threat");
    assert_eq!(log[2]["action"], "require_2fa");
    assert_eq!(log[2]["list"], "proxies");
    assert_eq!(log[3]["entry"], "203.0.113.9");
    assert_eq!(log[4]["stage"], "none");
    assert_eq!(decisions_metric(&gate, "refuse", "threat"), 2.0);
    assert_eq!(decisions_metric(&gate, "require_2fa", "threat"), 1.0);

    // explain, offline, finds the feed entry and its line in the feed file
    let j = gate.explain_json(&["--peer", "127.0.0.1", "--ip", "203.0.113.9"]);
    assert_eq!(j["stage"], "threat");
    assert_eq!(j["list"], "drop");
    assert_eq!(j["entry"]["line"], 4);
    assert_eq!(
        j["entry"]["file"],
        rules_dir.join("feeds/drop.txt").display().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn country_restriction_with_the_maxmind_test_database() {
    let db = workspace().join("testdata/maxmind/GeoLite2-Country-Test.mmdb");
    assert!(db.exists(), "{}", db.display());
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking]
use_adaptive = true

[adaptive.ip_country]
restriction = "country"
list = "deny"
entries = ["GB", "zz"]
failure_action = "refuse"
"#;
    let extra = format!(
        "{TRUST_LOOPBACK}[geoip]\ncountry_db = \"{}\"\n",
        db.display()
    );
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(rules, &upstream)
    });
    expect(&gate, &upstream, Req::from("81.2.69.142"), false, "GB").await;
    expect(&gate, &upstream, Req::from("89.160.20.112"), true, "SE").await;
    // an address the database does not know is ZZ
    expect(&gate, &upstream, Req::from("8.8.8.8"), false, "ZZ").await;
    expect(
        &gate,
        &upstream,
        Req::from("2001:218::1"),
        true,
        "JP over IPv6",
    )
    .await;
    let log = last_decisions(&gate, 4);
    assert_eq!(log[0]["stage"], "ip_country");
    assert_eq!(log[0]["entry"], "GB");
    assert_eq!(log[0]["client_ip"], "81.2.69.142");
    assert_eq!(log[1]["stage"], "none");
    assert_eq!(log[2]["entry"], "zz");
    assert_eq!(log[3]["client_ip"], "2001:218::1");
    assert_eq!(decisions_metric(&gate, "refuse", "ip_country"), 2.0);

    // explain with the same config shows the country
    let j = gate.explain_json(&["--ip", "81.2.69.142"]);
    assert_eq!(j["country"], "GB");
    assert_eq!(j["action"], "refuse");
}

// ---- client addresses -------------------------------------------------------

/// The deny check (adaptive ip_country) and the allow check (request
/// blocking ip) over every believed address.
const HOPS_RULES: &str = r#"
[request_blocking]
use_adaptive = true

[request_blocking.ip]
rule = "allow"
entries = ["9.9.9.0/24"]

[adaptive.ip_country]
list = "deny"
entries = ["5.143.*.*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_all_hops_deny_any_allow_all() {
    let upstream = Upstream::start().await;
    let cases = [
        // chain in X-MS-Forwarded-Client-IP, (all hops, client only)
        ("5.143.1.1, 9.9.9.9", (Some("ip_country"), None)),
        ("1.1.1.1, 9.9.9.9", (Some("ip"), None)),
        // trusted proxies in the chain are not client addresses
        ("9.9.9.8, 9.9.9.9, 10.1.1.1", (None, None)),
        ("1.1.1.1", (Some("ip"), Some("ip"))),
        ("5.143.2.2", (Some("ip_country"), Some("ip_country"))),
    ];
    for all_hops in [true, false] {
        let extra = format!(
            "[client_ip]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\nmatch_all_hops = {all_hops}\n"
        );
        let gate = Gate::start(GateSpec {
            extra: &extra,
            ..GateSpec::new(HOPS_RULES, &upstream)
        });
        for (chain, (with_all, client_only)) in cases {
            let refused_by = if all_hops { with_all } else { client_only };
            let what = format!("match_all_hops = {all_hops}: {chain}");
            expect(
                &gate,
                &upstream,
                Req::from(chain),
                refused_by.is_none(),
                &what,
            )
            .await;
        }
        let log = last_decisions(&gate, cases.len());
        for ((chain, (with_all, client_only)), e) in cases.iter().zip(&log) {
            let refused_by = if all_hops { with_all } else { client_only };
            assert_eq!(
                e["stage"],
                refused_by.unwrap_or("none"),
                "{all_hops} {chain}: {e}"
            );
            // the client is the rightmost untrusted address either way
            let client = chain
                .split(", ")
                .filter(|a| !a.starts_with("10."))
                .last()
                .unwrap();
            assert_eq!(e["client_ip"], client, "{e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_and_mapped_ipv4() {
    let upstream = Upstream::start().await;
    let rules = r#"
[request_blocking.ip]
rule = "deny"
entries = ["2001:db8:bad::/48", "5.143.*.*"]
"#;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(rules, &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("2001:db8:bad::7"),
        false,
        "v6 in CIDR",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("2001:db8:600d::1"),
        true,
        "v6 outside",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("::ffff:5.143.1.1"),
        false,
        "mapped v4",
    )
    .await;
    expect(
        &gate,
        &upstream,
        Req::from("[2001:db8:bad::9]:443"),
        false,
        "v6 with port",
    )
    .await;
    let log = last_decisions(&gate, 4);
    assert_eq!(log[0]["entry"], "2001:db8:bad::/48");
    assert_eq!(log[0]["client_ip"], "2001:db8:bad::7");
    assert_eq!(log[1]["stage"], "none");
    assert_eq!(log[2]["entry"], "5.143.*.*");
    // the mapped address is the IPv4 address
    assert_eq!(log[2]["client_ip"], "5.143.1.1");
    assert_eq!(log[3]["client_ip"], "2001:db8:bad::9");
}

/// A gate listening on IPv6 loopback: the TCP peer `::1` is the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_peer() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let upstream = Upstream::start().await;
    let rules = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"::1\"]\n";
    let gate = start_with_files(rules, &[], "", &upstream, "[::1]:0");
    assert!(gate.addr.is_ipv6(), "{}", gate.addr);
    let base = format!("http://{}", gate.addr);
    // an untrusted peer's forwarded header is ignored: the peer ::1 is denied
    let got = send_req(&base, Req::from("9.9.9.9")).await;
    assert_eq!(got.status, 500);
    assert_eq!(upstream.count(), 0);
    let log = last_decisions(&gate, 1);
    assert_eq!(log[0]["peer_ip"], "::1");
    assert_eq!(log[0]["client_ip"], "::1");
    assert_eq!(log[0]["entry"], "::1");
    drop(gate);

    // trusted ::1: the forwarded address is the client
    let gate = start_with_files(
        rules,
        &[],
        "[client_ip]\ntrusted_proxies = [\"::1\"]\n",
        &upstream,
        "[::1]:0",
    );
    let got = send_req(&format!("http://{}", gate.addr), Req::from("9.9.9.9")).await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.count(), 1);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-forwarded-for"], "::1");
}

/// `continue`: the check fires, is logged and counted, and the next check
/// runs; the request goes on when nothing else stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_continue_is_counted_and_goes_on() {
    let upstream = Upstream::start().await;
    let rules = ip_country("continue", "");
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7").ua("Outlook"),
        true,
        "continue",
    )
    .await;
    assert!(!upstream.seen()[0].headers.contains_key("x-stsgate-step-up"));
    // request blocking still runs after continue
    expect(
        &gate,
        &upstream,
        Req::from("198.51.100.7").ua("python-requests"),
        false,
        "then ua",
    )
    .await;
    let log = last_decisions(&gate, 2);
    assert_eq!(log[0]["stage"], "ip_country");
    assert_eq!(log[0]["action"], "continue");
    assert_eq!(log[0]["entry"], "198.51.100.0/24");
    assert_eq!(log[1]["stage"], "user_agent");
    assert_eq!(decisions_metric(&gate, "continue", "ip_country"), 1.0);
}

/// On a dual-stack listener (`[::]:PORT`) an IPv4 client arrives as
/// `::ffff:127.0.0.1`; the rules see 127.0.0.1.
fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").is_ok_and(|v| v.trim() == "0")
        && std::net::TcpListener::bind("[::]:0").is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_listener_matches_mapped_peers_as_ipv4() {
    if !dual_stack() {
        eprintln!("no dual-stack IPv6 here: skipped");
        return;
    }
    let upstream = Upstream::start().await;
    let rules = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"127.0.0.1\"]\n";
    let gate = start_with_files(rules, &[], "", &upstream, "[::]:0");
    let base = format!("http://127.0.0.1:{}", gate.addr.port());
    let got = send_req(&base, Req::default()).await;
    assert_eq!(got.status, 500, "the mapped peer matches the IPv4 entry");
    assert_eq!(upstream.count(), 0);
    let log = last_decisions(&gate, 1);
    assert_eq!(log[0]["client_ip"], "127.0.0.1");
    assert_eq!(log[0]["entry"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_listener_logs_and_forwards_mapped_peers_as_ipv4() {
    if !dual_stack() {
        eprintln!("no dual-stack IPv6 here: skipped");
        return;
    }
    let upstream = Upstream::start().await;
    let gate = start_with_files(
        "[request_blocking]\nenabled = false\n",
        &[],
        "",
        &upstream,
        "[::]:0",
    );
    let base = format!("http://127.0.0.1:{}", gate.addr.port());
    let got = send_req(&base, Req::default()).await;
    assert_eq!(got.status, 200);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-ms-forwarded-client-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    let log = last_decisions(&gate, 1);
    assert_eq!(log[0]["client_ip"], "127.0.0.1");
    assert_eq!(log[0]["peer_ip"], "127.0.0.1");
}
