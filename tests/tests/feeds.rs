//! Live threat feeds through the real binary, against a real HTTPS feed
//! server on loopback (tests/src/feed_server.rs): a URL feed refuses what it
//! lists, with its category in the decision log and `explain`; the ETag is
//! sent back and a 304 keeps the list (`not_modified`); a 500, a truncated
//! body, a slow answer and an HTML page keep the last good list
//! (`failure`); a new list is picked up at the next refresh; a restart with
//! the feed server gone refuses from the copy in state.dir; `check` refuses
//! bad feed keys with their positions.

use std::path::Path;
use std::time::Duration;

use stsgate_tests::feed_server::{FeedAnswer, FeedServer};
use stsgate_tests::*;

const TRUST_LOOPBACK: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";
const LIST: &str = "# botnet C2 list\n198.51.100.0/24 ; c2 range\n203.0.113.9\n";
const FEED: &str = "botnet-c2";

/// The rule file: one URL feed, fetched every second.
fn rules(server: &FeedServer, ca: &Path) -> String {
    format!(
        r#"[request_blocking]
use_adaptive = true

[[adaptive.threat.feeds]]
name = "{FEED}"
url = "{}"
ca_file = "{}"
refresh = "1s"
timeout = "2s"
risk = "high"
category = "botnet"
"#,
        server.url("/c2.txt"),
        ca.display()
    )
}

/// A gate in front of `upstream` with the feed of `server`, trusting loopback
/// as a proxy (the client IP travels in X-MS-Forwarded-Client-IP).
fn start(server: &FeedServer, certs: &Certs, upstream: &Upstream) -> (Gate, tempfile::TempDir) {
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = ca_dir.path().join("feed-ca.pem");
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let rules = rules(server, &ca);
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, upstream)
    });
    (gate, ca_dir)
}

/// A sign-in request from `client`: the status the gate answered.
fn sign_in(gate: &Gate, client: &str) -> u16 {
    let body = rst_for("alice@contoso.com", "pw");
    let req = format!(
        "POST {USERNAMEMIXED} HTTP/1.1\r\nHost: sts\r\nContent-Type: application/soap+xml\r\nX-MS-Forwarded-Client-IP: {client}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(gate.addr, req.as_bytes()).0
}

fn feed_metric(gate: &Gate, result: &str) -> f64 {
    gate.metric(&format!(
        "stsgate_feed_reloads_total{{feed=\"{FEED}\",result=\"{result}\"}}"
    ))
}

/// Waits (bounded) until the feed's `result` counter reaches `n`.
fn wait_feed(gate: &Gate, result: &str, n: f64) {
    assert!(
        gate.wait_until(Duration::from_secs(20), |g| feed_metric(g, result) >= n),
        "{result} never reached {n}: {}",
        gate.stderr().join("\n")
    );
}

/// Waits (bounded) until a request from `client` gets `status`.
fn wait_status(gate: &Gate, client: &str, status: u16) {
    assert!(
        gate.wait_until(Duration::from_secs(20), |g| sign_in(g, client) == status),
        "{client} never got {status}: {}",
        gate.stderr().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_feed_refuses_with_its_category_and_is_revalidated() {
    let certs = Certs::new();
    let server = FeedServer::start(&certs, LIST).await;
    let upstream = Upstream::start().await;
    let (gate, _ca) = start(&server, &certs, &upstream);
    wait_feed(&gate, "success", 1.0);
    wait_status(&gate, "198.51.100.20", 500);
    assert_eq!(sign_in(&gate, "203.0.113.9"), 500);
    assert_eq!(sign_in(&gate, "192.0.2.1"), 200);

    let log = gate.wait_decisions(|d| d.len() >= 3);
    let refused: Vec<_> = log.iter().filter(|e| e["action"] == "refuse").collect();
    assert!(refused.len() >= 2, "{log:?}");
    let first = refused[refused.len() - 2];
    assert_eq!(first["stage"], "threat");
    assert_eq!(first["list"], FEED);
    assert_eq!(first["entry"], "198.51.100.0/24");
    assert_eq!(first["threat_category"], "botnet");
    let forwarded = log.last().unwrap();
    assert_eq!(forwarded["action"], "forward");
    assert!(forwarded.get("threat_category").is_none(), "{forwarded}");

    // The next downloads send the validators back and get 304: the list stays.
    wait_feed(&gate, "not_modified", 2.0);
    let seen = server.seen();
    assert_eq!(
        seen[0].if_none_match, None,
        "the first download is unconditional"
    );
    let again = seen.iter().find(|r| r.status == 304).expect("a 304");
    assert_eq!(again.if_none_match.as_deref(), Some("\"v1\""));
    assert_eq!(
        again.if_modified_since.as_deref(),
        Some("Wed, 25 Nov 2026 10:01:00 GMT")
    );
    assert_eq!(again.path, "/c2.txt");
    assert_eq!(sign_in(&gate, "198.51.100.20"), 500);
    assert_eq!(feed_metric(&gate, "failure"), 0.0);

    // explain shows the category, on the threat step and the decision.
    let j = gate.explain_json(&["--peer", "127.0.0.1", "--ip", "198.51.100.20"]);
    assert_eq!(j["stage"], "threat");
    assert_eq!(j["list"], FEED);
    assert_eq!(j["threat_category"], "botnet");
    assert_eq!(j["entry"]["file"], server.url("/c2.txt"));
    assert_eq!(j["entry"]["line"], 2);
    let step = j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "threat")
        .unwrap()
        .clone();
    assert_eq!(step["threat_category"], "botnet", "{step}");
    let config = gate.dir.path().join("stsgate.toml").display().to_string();
    let (code, text, err) = stsgate(&[
        "explain",
        "--config",
        &config,
        "--peer",
        "127.0.0.1",
        "--ip",
        "198.51.100.20",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(" category botnet"), "{text}");
    assert!(text.contains("threat_category botnet"), "{text}");
    // /readyz names the feed and its list.
    let (status, body) = gate.admin_get("/readyz");
    assert_eq!(status, 200);
    assert!(body.contains(&format!("feed {FEED}: 2 entries")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_downloads_keep_the_last_good_list_and_a_new_list_is_picked_up() {
    let certs = Certs::new();
    let server = FeedServer::start(&certs, LIST).await;
    let upstream = Upstream::start().await;
    let (gate, _ca) = start(&server, &certs, &upstream);
    wait_feed(&gate, "success", 1.0);
    wait_status(&gate, "198.51.100.20", 500);

    let mut failures = 0.0;
    for (answer, what) in [
        (FeedAnswer::Status(500), "HTTP 500"),
        (FeedAnswer::Truncated, "truncated"),
        (FeedAnswer::Html, "do not parse"),
        (FeedAnswer::Slow(Duration::from_secs(4)), "within"),
    ] {
        server.answer(answer);
        // A new list behind the failure must not be taken either.
        server.publish("192.0.2.0/24\n198.51.100.0/24\n203.0.113.9\n");
        failures += 1.0;
        wait_feed(&gate, "failure", failures);
        assert!(gate.wait_stderr(what), "{what}: {:?}", gate.stderr());
        assert_eq!(
            sign_in(&gate, "198.51.100.20"),
            500,
            "{answer:?}: list kept"
        );
        assert_eq!(sign_in(&gate, "192.0.2.7"), 200, "{answer:?}: no new list");
    }
    assert!(gate.wait_stderr("the last good list is kept"));
    assert_eq!(feed_metric(&gate, "success"), 1.0);
    let (_, body) = gate.admin_get("/readyz");
    assert!(body.contains("last download failed"), "{body}");

    // The feed recovers with a changed list: picked up at the next refresh.
    server.publish("192.0.2.0/24\n");
    server.answer(FeedAnswer::Normal);
    wait_feed(&gate, "success", 2.0);
    wait_status(&gate, "192.0.2.7", 500);
    assert_eq!(
        sign_in(&gate, "198.51.100.20"),
        200,
        "dropped from the list"
    );
    let stored = std::fs::read_to_string(gate.dir.path().join("state/feeds").join(FEED)).unwrap();
    assert!(stored.starts_with("# stsgate-feed {"), "{stored}");
    assert!(stored.ends_with("\n192.0.2.0/24\n"), "{stored}");

    // A list of many entries, then an empty download: refused as a failure.
    let many: String = (1..=12).map(|i| format!("192.0.2.{i}\n")).collect();
    server.publish(&many);
    wait_feed(&gate, "success", 3.0);
    server.publish("# nothing listed\n");
    wait_feed(&gate, "failure", failures + 1.0);
    assert!(gate.wait_stderr("no entries, where the last good list had 12"));
    assert_eq!(sign_in(&gate, "192.0.2.7"), 500, "the list of 12 is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_the_feed_server_refuses_from_the_stored_copy() {
    let certs = Certs::new();
    let server = FeedServer::start(&certs, LIST).await;
    let upstream = Upstream::start().await;
    let (gate, _ca) = start(&server, &certs, &upstream);
    wait_feed(&gate, "success", 1.0);
    wait_status(&gate, "198.51.100.20", 500);
    let server_url = server.url("/c2.txt");
    server.stop();

    let gate = gate.restart(false);
    // Refused from the first request: the list comes from state.dir, not the network.
    assert_eq!(sign_in(&gate, "198.51.100.20"), 500);
    assert_eq!(sign_in(&gate, "192.0.2.1"), 200);
    wait_feed(&gate, "failure", 1.0);
    assert_eq!(
        sign_in(&gate, "198.51.100.20"),
        500,
        "a failed download keeps it"
    );
    let log = gate.wait_decisions(|d| d.len() >= 3);
    assert_eq!(log[0]["threat_category"], "botnet");

    // check reads the stored copy too.
    let config = gate.dir.path().join("stsgate.toml").display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "adaptive.threat.feeds.{FEED}: high risk, 2 entries from {} (last good download; every 1s), category botnet",
            server_url
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_feed_carries_its_category_and_its_reads_are_counted() {
    let upstream = Upstream::start().await;
    let feeds = tempfile::tempdir().unwrap();
    let feed = feeds.path().join("scanners.txt");
    std::fs::write(&feed, "198.51.100.0/24\n").unwrap();
    let rules = format!(
        "[request_blocking]\nuse_adaptive = true\n[[adaptive.threat.feeds]]\nname = \"scanners\"\npath = \"{}\"\nrisk = \"extreme\"\ncategory = \"scanner\"\n",
        feed.display()
    );
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    let metric = |result: &str| {
        gate.metric(&format!(
            "stsgate_feed_reloads_total{{feed=\"scanners\",result=\"{result}\"}}"
        ))
    };
    assert_eq!(metric("success"), 1.0, "read at start");
    assert_eq!(metric("failure"), 0.0, "the series exists from the start");
    assert_eq!(sign_in(&gate, "198.51.100.20"), 500);
    let log = gate.wait_decisions(|d| !d.is_empty());
    assert_eq!(log[0]["list"], "scanners");
    assert_eq!(log[0]["threat_category"], "scanner");

    // A reload that finds the same contents: not_modified.
    assert_eq!(gate.api_post("/api/v1/reload").0, 200);
    assert_eq!(metric("not_modified"), 1.0);
    // Changed on disk: read again (the file is watched), a new list.
    std::fs::write(&feed, "192.0.2.0/24\n").unwrap();
    wait_status(&gate, "192.0.2.9", 500);
    assert_eq!(metric("success"), 2.0);
    // Gone: the last good contents stay, counted as a failure.
    std::fs::remove_file(&feed).unwrap();
    assert!(
        gate.wait_until(Duration::from_secs(20), |g| g.metric(
            "stsgate_feed_reloads_total{feed=\"scanners\",result=\"failure\"}"
        ) >= 1.0),
        "{:?}",
        gate.stderr()
    );
    assert_eq!(sign_in(&gate, "192.0.2.9"), 500);
}

#[test]
fn check_refuses_bad_feed_keys_with_their_positions() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"[request_blocking]
use_adaptive = true

[[adaptive.threat.feeds]]
name = "plain"
url = "http://feeds.example.net/list.txt"
risk = "high"

[[adaptive.threat.feeds]]
name = "both"
path = "feeds/x.txt"
url = "https://feeds.example.net/x.txt"
risk = "high"

[[adaptive.threat.feeds]]
name = "fast"
url = "https://feeds.example.net/fast.txt"
refresh = "100ms"
risk = "low"

[[adaptive.threat.feeds]]
name = "../escape"
url = "https://feeds.example.net/e.txt"
risk = "low"
category = "bot net"

[[adaptive.threat.feeds]]
name = "neither"
risk = "low"

[[adaptive.threat.feeds]]
name = "file"
path = "feeds/x.txt"
refresh = "1h"
risk = "low"
"#;
    std::fs::create_dir_all(dir.path().join("rules/feeds")).unwrap();
    std::fs::write(dir.path().join("rules/feeds/x.txt"), "192.0.2.1\n").unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), rules).unwrap();
    std::fs::write(dir.path().join("admin.token"), "t0123456789abcdef\n").unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n",
    )
    .unwrap();
    let config = dir.path().join("stsgate.toml").display().to_string();
    let (code, _, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 1, "{err}");
    let file = dir.path().join("rules/wstrust.toml").display().to_string();
    for (line, col, what) in [
        (6, 7, "only to a loopback host"),
        (12, 7, "`path` or `url`, not both"),
        (18, 11, "must be from 1s to 7days"),
        (22, 8, "file name in state.dir/feeds"),
        (25, 12, "a category is letters"),
        (28, 8, "needs `path` (a file) or `url`"),
        (34, 11, "`refresh` is for `url` feeds"),
    ] {
        let at = format!("{file}:{line}:{col}: ");
        assert!(
            err.lines().any(|l| l.starts_with(&at) && l.contains(what)),
            "{at}{what}\n{err}"
        );
    }
}
