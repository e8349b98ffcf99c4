//! Stage 3's checks of issue 9 through the running binary, with MaxMind's
//! test databases (testdata/maxmind): anonymous IPs, ASN restriction,
//! geo-velocity (possible, impossible and short travel, familiar IPs,
//! shared between instances through Redis), `explain`'s computed details,
//! and GeoIP files replaced under a running gate (PRODUCT.md §3.3).
//!
//! Places in GeoLite2-City-Test: London 81.2.69.142 (±10 km), Boxford
//! 2.125.160.216 (±100 km, ~95 km from London), Linköping 89.160.20.112
//! (±76 km, ~1,260 km from London), Milton WA 216.160.83.56 (±22 km),
//! Changchun 175.16.199.1 (±100 km). GeoIP2-Anonymous-IP-Test: 1.124.213.1
//! VPN and Tor, 186.30.236.9 public proxy, 71.160.223.1 hosting provider.
//! GeoLite2-ASN-Test: 1.0.0.1 is AS15169, 1.128.0.1 AS1221.

use std::path::{Path, PathBuf};
use std::time::Duration;

use stsgate_tests::RIGHT_PASSWORD as RIGHT;
use stsgate_tests::*;

const LONDON: &str = "81.2.69.142";
const BOXFORD: &str = "2.125.160.216";
const LINKOPING: &str = "89.160.20.112";
const MILTON: &str = "216.160.83.56";
const CHANGCHUN: &str = "175.16.199.1";

/// Upper bound of waits for something that takes milliseconds (a reload,
/// a lesson reaching the other instance); only keeps a broken build from hanging.
const BOUND: Duration = Duration::from_secs(15);

fn maxmind(name: &str) -> PathBuf {
    workspace().join("testdata/maxmind").join(name)
}

/// `[client_ip]` trusting loopback (the tests present other client IPs in
/// X-MS-Forwarded-Client-IP), no refusal delay, and `[geoip]` with `dbs`.
fn extra(dbs: &[(&str, &Path)]) -> String {
    let mut s = String::from(
        "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n[geoip]\n",
    );
    for (key, path) in dbs {
        s.push_str(&format!("{key} = {:?}\n", path.display().to_string()));
    }
    s
}

/// One sign-in from `from`: (status, reached the STS, the STS saw the step-up header).
async fn signin(
    gate: &Gate,
    up: &Upstream,
    user: &str,
    password: &str,
    from: &str,
) -> (u16, bool, bool) {
    let before = up.count();
    let got = send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", from)],
            rst_for(user, password),
        ),
    )
    .await;
    let seen = up.seen();
    let reached = seen.len() > before;
    let step_up = reached
        && seen.last().is_some_and(|s| {
            s.headers
                .get("x-stsgate-step-up")
                .is_some_and(|v| v == "required")
        });
    (got.status, reached, step_up)
}

/// The decision log's (stage, action) of the `n`th filtered request (1-based).
fn decided(gate: &Gate, n: usize) -> (String, String) {
    let d = gate.wait_decisions(|d| d.len() >= n)[n - 1].clone();
    (
        d["stage"].as_str().unwrap_or("").to_string(),
        d["action"].as_str().unwrap_or("").to_string(),
    )
}

fn pair(stage: &str, action: &str) -> (String, String) {
    (stage.to_string(), action.to_string())
}

const ANONYMOUS_AND_ASN: &str = r#"
[request_blocking]
enabled = false
use_adaptive = true
[adaptive.ip_country]
restriction = "asn"
list = "deny"
entries = ["AS15169"]
failure_action = "redirect"
redirect_url = "https://example.com/denied"
[adaptive.anonymous_ip]
categories = ["tor_exit_node", "public_proxy"]
failure_action = "refuse"
"#;

#[tokio::test]
async fn anonymous_ips_refused_and_asns_denied() {
    let up = password_checking_sts().await;
    let extra = extra(&[
        ("asn_db", &maxmind("GeoLite2-ASN-Test.mmdb")),
        ("anonymous_ip_db", &maxmind("GeoIP2-Anonymous-IP-Test.mmdb")),
    ]);
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(ANONYMOUS_AND_ASN, &up)
    });
    // A Tor exit node and a public proxy: refused, nothing reaches the STS.
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "1.124.213.1").await,
        (500, false, false)
    );
    assert_eq!(decided(&gate, 1), pair("anonymous_ip", "refuse"));
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "186.30.236.9").await,
        (500, false, false)
    );
    // A hosting provider is not in the categories: forwarded.
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "71.160.223.1").await,
        (200, true, false)
    );
    assert_eq!(decided(&gate, 3), pair("none", "forward"));
    // AS15169 is denied: redirected.
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "1.0.0.1").await,
        (302, false, false)
    );
    let d = gate.wait_decisions(|d| d.len() >= 4)[3].clone();
    assert_eq!(
        (d["stage"].as_str(), d["action"].as_str()),
        (Some("ip_country"), Some("redirect"))
    );
    assert_eq!(d["entry"], "AS15169");
    // AS1221 and an address no database knows (AS0): forwarded.
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "1.128.0.1").await,
        (200, true, false)
    );
    assert_eq!(
        signin(&gate, &up, "a@x", RIGHT, "192.0.2.1").await,
        (200, true, false)
    );
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"anonymous_ip\"}"),
        2.0
    );
    // explain shows the ASN and the categories the checks computed.
    let r = gate.explain_json(&["--ip", "1.124.213.1"]);
    assert_eq!(r["asn"], "AS0");
    assert_eq!(
        r["anonymous"],
        serde_json::json!(["anonymous_vpn", "tor_exit_node"])
    );
    let step = |r: &serde_json::Value, stage: &str| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .cloned()
            .unwrap_or_else(|| panic!("no {stage} step: {r}"))
    };
    assert_eq!(
        step(&r, "anonymous_ip")["detail"],
        "anonymous_vpn, tor_exit_node"
    );
    assert_eq!(step(&r, "anonymous_ip")["outcome"], "fired");
    let r = gate.explain_json(&["--ip", "1.0.0.1"]);
    assert_eq!(step(&r, "ip_country")["detail"], "AS15169");
    assert_eq!(r["stage"], "ip_country");
    // `check` is content with the databases named.
    let config = gate.dir.path().join("stsgate.toml").display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("adaptive.anonymous_ip: enabled, categories public_proxy tor_exit_node"),
        "{out}"
    );
}

#[test]
fn check_reports_a_check_whose_database_is_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let rules = format!("{ANONYMOUS_AND_ASN}[adaptive.geo_velocity]\n");
    std::fs::write(dir.path().join("rules.toml"), rules).unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        "rules = \"rules.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let config = dir.path().join("stsgate.toml").display().to_string();
    let (code, _, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 1, "{err}");
    let rules_path = dir.path().join("rules.toml").display().to_string();
    assert!(
        err.contains(&format!(
            "{rules_path}:11:1: [adaptive.anonymous_ip] needs geoip.anonymous_ip_db"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{rules_path}:14:1: [adaptive.geo_velocity] needs geoip.city_db"
        )),
        "{err}"
    );
    // A deny list of ASNs without asn_db never fires: a warning.
    assert!(
        err.contains(&format!(
            "warning: {rules_path}:8:1: [adaptive.ip_country] restricts by ASN but"
        )),
        "{err}"
    );
}

fn velocity_rules(action: &str, max_speed_kmh: u64) -> String {
    format!(
        "[request_blocking]\nenabled = false\nuse_adaptive = true\n[lockout]\nthreshold = 5\nfamiliar_for = \"1h\"\n[adaptive.geo_velocity]\nmax_speed_kmh = {max_speed_kmh}\nmin_distance_km = 500\nfailure_action = \"{action}\"\n"
    )
}

async fn velocity_gate(action: &str, max_speed_kmh: u64) -> (Gate, Upstream) {
    let up = password_checking_sts().await;
    let rules = velocity_rules(action, max_speed_kmh);
    let extra = extra(&[("city_db", &maxmind("GeoLite2-City-Test.mmdb"))]);
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(&rules, &up)
    });
    (gate, up)
}

#[tokio::test]
async fn impossible_travel_short_hops_and_familiar_ips() {
    let (gate, up) = velocity_gate("require_2fa", 900).await;
    // Alice signs in at London: the gate learns where and when.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, LONDON).await,
        (200, true, false)
    );
    assert_eq!(decided(&gate, 1), pair("none", "forward"));
    // Moments later from Linköping (~1,260 km): impossible travel, step-up asked.
    assert_eq!(
        signin(&gate, &up, "Alice@Contoso.com", RIGHT, LINKOPING).await,
        (200, true, true)
    );
    assert_eq!(decided(&gate, 2), pair("geo_velocity", "require_2fa"));
    // That success moved her to Linköping; London is a familiar IP of hers,
    // so going back never fires, however fast.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, LONDON).await,
        (200, true, false)
    );
    assert_eq!(decided(&gate, 3), pair("none", "forward"));
    // A short hop (London -> Boxford, ~95 km, inside the radii): never fires.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, BOXFORD).await,
        (200, true, false)
    );
    assert_eq!(decided(&gate, 4), pair("none", "forward"));
    // A failed sign-in teaches no place: from Boxford on to Changchun fails
    // (wrong password, refused as impossible travel first).
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", "wrong", CHANGCHUN).await,
        (500, true, true)
    );
    assert_eq!(decided(&gate, 5), pair("geo_velocity", "require_2fa"));
    // Other users are not affected; a request without a user never fires.
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", RIGHT, CHANGCHUN).await,
        (200, true, false)
    );
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"require_2fa\",stage=\"geo_velocity\"}"),
        2.0
    );
    // explain shows the distance and the speed from the last sign-in (Boxford).
    let r = gate.explain_json(&["--ip", MILTON, "--user", "alice@contoso.com"]);
    let step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "geo_velocity")
        .cloned()
        .unwrap();
    assert_eq!(step["outcome"], "fired", "{r}");
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains(" km (fires beyond 622 km) in ") && detail.ends_with(" km/h"),
        "{detail}"
    );
    assert!(
        r["location"]
            .as_str()
            .unwrap()
            .starts_with("47.2513,-122.3149 ±22 km"),
        "{r}"
    );
}

#[tokio::test]
async fn possible_travel_and_refusal() {
    // At 4,000,000,000 km/h London -> Linköping takes about a millisecond:
    // with 20 ms between the sign-ins the trip is possible.
    let (gate, up) = velocity_gate("refuse", 4_000_000_000).await;
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, LONDON).await,
        (200, true, false)
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, LINKOPING).await,
        (200, true, false)
    );
    assert_eq!(decided(&gate, 2), pair("none", "forward"));
    // The same at 900 km/h: refused, nothing reaches the STS.
    let (gate, up) = velocity_gate("refuse", 900).await;
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, LONDON).await,
        (200, true, false)
    );
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, MILTON).await,
        (500, false, false)
    );
    assert_eq!(decided(&gate, 2), pair("geo_velocity", "refuse"));
    // The last sign-in is kept in state.dir: after a restart it still counts.
    let gate = gate.restart(false);
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, CHANGCHUN).await,
        (500, false, false)
    );
    assert_eq!(decided(&gate, 1), pair("geo_velocity", "refuse"));
}

#[tokio::test]
async fn the_last_signin_is_shared_through_redis() {
    let redis = RedisServer::start();
    let up = password_checking_sts().await;
    // Lockout out of the way: b sees wrong passwords until it learns.
    let rules = velocity_rules("refuse", 900).replace("threshold = 5", "threshold = 1000");
    let start = |name: &str| {
        let extra = format!(
            "redis_url = \"{}\"\ninstance = \"{name}\"\n{}",
            redis.url(),
            extra(&[("city_db", &maxmind("GeoLite2-City-Test.mmdb"))])
        );
        Gate::start(GateSpec {
            extra: &extra,
            ..GateSpec::new(&rules, &up)
        })
    };
    let a = start("a");
    let b = start("b");
    assert_eq!(
        signin(&a, &up, "dave@contoso.com", RIGHT, MILTON).await,
        (200, true, false)
    );
    // Instance b learns Milton from a's lesson: Changchun is then impossible there.
    let deadline = std::time::Instant::now() + BOUND;
    let mut n = 0;
    loop {
        let got = signin(&b, &up, "dave@contoso.com", "wrong", CHANGCHUN).await;
        n += 1;
        if got == (500, false, false) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never learned a's sign-in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(decided(&b, n), pair("geo_velocity", "refuse"));
}

#[tokio::test]
async fn a_geoip_file_replaced_under_a_running_gate() {
    let up = password_checking_sts().await;
    let dir = tempfile::tempdir().unwrap();
    let asn = dir.path().join("asn.mmdb");
    std::fs::copy(maxmind("GeoLite2-ASN-Test.mmdb"), &asn).unwrap();
    let rules = "[request_blocking]\nenabled = false\nuse_adaptive = true\n[adaptive.ip_country]\nrestriction = \"asn\"\nlist = \"deny\"\nentries = [\"AS15169\"]\n";
    let extra = extra(&[("asn_db", &asn)]);
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(rules, &up)
    });
    let status = || async { signin(&gate, &up, "a@x", RIGHT, "1.0.0.1").await.0 };
    assert_eq!(status().await, 500);
    // Replaced (renamed over) by a database that knows no ASN: new data used.
    let next = dir.path().join("asn.mmdb.new");
    std::fs::copy(maxmind("GeoLite2-City-Test.mmdb"), &next).unwrap();
    std::fs::rename(&next, &asn).unwrap();
    let success = "stsgate_geoip_reloads_total{db=\"asn\",result=\"success\"}";
    assert!(gate.wait_until(BOUND, |g| g.metric(success) >= 1.0));
    assert_eq!(status().await, 200);
    // Garbage written in place: refused and counted, the one in force kept.
    std::fs::write(&asn, b"not a MaxMind database").unwrap();
    let failure = "stsgate_geoip_reloads_total{db=\"asn\",result=\"failure\"}";
    assert!(gate.wait_until(BOUND, |g| g.metric(failure) >= 1.0));
    assert!(gate.wait_stderr("GeoIP database reload refused"));
    assert_eq!(status().await, 200);
    // The real one back: AS15169 denied again.
    std::fs::copy(maxmind("GeoLite2-ASN-Test.mmdb"), &next).unwrap();
    std::fs::rename(&next, &asn).unwrap();
    assert!(gate.wait_until(BOUND, |g| g.metric(success) >= 2.0));
    assert_eq!(status().await, 500);
}

/// `rules/adaptive.toml` passes `check` with a config that names the test
/// databases and a directory, and `check` says what it lacks without them.
#[test]
fn the_shipped_adaptive_rules_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let rules = workspace().join("rules/adaptive.toml");
    std::fs::write(dir.path().join("ldap.secret"), "pw\n").unwrap();
    let base = format!(
        "rules = {:?}\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[state]\ndir = \"state\"\n",
        rules.display().to_string()
    );
    let full = format!(
        "{base}[directory]\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=svc\"\npassword_file = \"ldap.secret\"\nbase_dn = \"dc=corp\"\non_error = \"refuse\"\n{}",
        extra(&[
            ("city_db", &maxmind("GeoLite2-City-Test.mmdb")),
            ("anonymous_ip_db", &maxmind("GeoIP2-Anonymous-IP-Test.mmdb")),
        ])
    );
    let config = dir.path().join("stsgate.toml");
    std::fs::write(&config, &full).unwrap();
    let config = config.display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "adaptive.anonymous_ip: enabled, categories anonymous_vpn public_proxy residential_proxy tor_exit_node, failure_action refuse",
        "adaptive.user_group: enabled, allow list, users 2, groups 1, failure_action refuse",
        "adaptive.geo_velocity: enabled, max_speed_kmh 900, min_distance_km 500, failure_action refuse",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
    // Without the databases and the directory: every missing piece, at its section.
    std::fs::write(dir.path().join("stsgate.toml"), &base).unwrap();
    let (code, _, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 1, "{err}");
    let shown = rules.display().to_string();
    for want in [
        format!("{shown}:37:1: [adaptive.anonymous_ip] needs geoip.anonymous_ip_db"),
        format!("{shown}:48:1: [adaptive.user_group] names groups, which need [directory]"),
        format!("{shown}:52:1: [adaptive.geo_velocity] needs geoip.city_db"),
    ] {
        assert!(err.contains(&want), "{want}\n{err}");
    }
}
