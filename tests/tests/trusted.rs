//! Trusted proxies through the real binary: named lists loaded from files
//! (Microsoft's endpoints JSON and plain lists), hot reloaded with the
//! config's own entries, a broken list keeping its last good contents; and
//! the PROXY protocol (v1 and v2, raw bytes), believed only from trusted peers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use stsgate_tests::*;

const DENY_5143: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\"]\n";

/// Microsoft's endpoints data, shaped as the web service serves it.
fn endpoints(exchange_ips: &[&str]) -> String {
    let ips = exchange_ips
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[
  {{"id": 1, "serviceArea": "Exchange", "serviceAreaDisplayName": "Exchange Online",
    "urls": ["outlook.office.com", "outlook.office365.com"], "ips": [{ips}],
    "tcpPorts": "80,443", "expressRoute": true, "category": "Optimize", "required": true}},
  {{"id": 46, "serviceArea": "Common", "serviceAreaDisplayName": "Microsoft 365 Common and Office Online",
    "urls": ["*.msftidentity.com"], "ips": ["127.0.0.0/8", "52.108.0.0/14"],
    "tcpPorts": "443", "expressRoute": true, "category": "Allow", "required": true}}
]
"#
    )
}

/// A sign-in that says it comes from 5.143.1.1 (denied by the rules).
fn spoofed_signin(gate: &Gate) -> u16 {
    let body = fixture("rst-2005-usernamemixed.xml");
    let mut head = format!(
        "POST {USERNAMEMIXED} HTTP/1.1\r\nHost: sts.test\r\nContent-Type: application/soap+xml\r\nX-MS-Forwarded-Client-IP: 5.143.1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    head.extend_from_slice(&body);
    raw(gate.addr, &head).0
}

/// Waits (up to 10 s) until `needle` has appeared in stderr `n` times
/// (`needle` may be several words separated by `&`, all on one line).
fn wait_stderr_count(gate: &Gate, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = gate
            .stderr()
            .iter()
            .filter(|l| needle.split('&').all(|w| l.contains(w)))
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} seen {seen} times, not {n}: {}",
            gate.stderr().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_lists_are_trusted_and_hot_reloaded() {
    let upstream = Upstream::start().await;
    let lists = tempfile::tempdir().unwrap();
    let eo = lists.path().join("exchange-online.json");
    // The test client (127.0.0.1) is in "Common", not in "Exchange".
    std::fs::write(&eo, endpoints(&["40.92.0.0/15", "2603:1006::/40"])).unwrap();
    let extra = format!(
        "[client_ip]\ntrusted_proxies = [\"@file:{}#Exchange\"]\n",
        eo.display()
    );
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(DENY_5143, &upstream)
    });
    assert_eq!(
        spoofed_signin(&gate),
        200,
        "an untrusted peer's forwarded header is ignored"
    );

    // Microsoft publishes a new range: the gate picks it up.
    std::fs::write(&eo, endpoints(&["40.92.0.0/15", "127.0.0.1/32"])).unwrap();
    wait_stderr_count(&gate, "trusted proxies reloaded", 1);
    assert_eq!(
        spoofed_signin(&gate),
        500,
        "a trusted proxy's header names the client"
    );
    let d = gate.wait_decisions(|d| d.iter().any(|e| e["action"] == "refuse"));
    let refused = d.iter().find(|e| e["action"] == "refuse").unwrap();
    assert_eq!(refused["client_ip"], "5.143.1.1");
    assert_eq!(refused["peer_ip"], "127.0.0.1");

    // A failed download: the last good list stays, logged and counted.
    std::fs::write(&eo, "{\"error\": \"TooManyRequests\"}").unwrap();
    wait_stderr_count(&gate, "trusted proxy list refused", 1);
    assert!(gate.metric("stsgate_trusted_list_failures_total") >= 1.0);
    assert_eq!(spoofed_signin(&gate), 500, "last good list kept");

    // Emptied by hand: trusted no more.
    std::fs::write(&eo, endpoints(&["40.92.0.0/15"])).unwrap();
    wait_stderr_count(&gate, "trusted proxies reloaded", 3);
    assert_eq!(spoofed_signin(&gate), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_entries_and_plain_lists_reload_with_the_rules() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[client_ip]\ntrusted_proxies = [\"192.0.2.1\"]\n",
        ..GateSpec::new(DENY_5143, &upstream)
    });
    assert_eq!(spoofed_signin(&gate), 200);

    // A plain list, added to the config: the config file change reloads it.
    std::fs::write(
        gate.dir.path().join("waps.txt"),
        "# our WAP servers\n192.0.2.10\n127.0.0.1   # this test\n",
    )
    .unwrap();
    let config = gate.dir.path().join("stsgate.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "trusted_proxies = [\"192.0.2.1\"]",
            "trusted_proxies = [\"192.0.2.1\", \"@file:waps.txt\"]",
        ),
    )
    .unwrap();
    wait_stderr_count(&gate, "trusted proxies reloaded", 1);
    assert_eq!(spoofed_signin(&gate), 500);

    // A bad config entry: refused, the set in force kept, counted.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("192.0.2.1\"", "192.0.2.999\"")).unwrap();
    wait_stderr_count(&gate, "trusted proxies not reloaded", 1);
    assert!(gate.wait_stderr("stsgate.toml:"));
    assert_eq!(spoofed_signin(&gate), 500);
    assert!(gate.metric("stsgate_trusted_list_failures_total") >= 1.0);

    // Fixed, with the list emptied of this test (the list first, so that
    // any reload of the fixed config sees it).
    std::fs::write(gate.dir.path().join("waps.txt"), "192.0.2.10\n").unwrap();
    std::fs::write(&config, text).unwrap();
    wait_stderr_count(&gate, "trusted proxies reloaded", 2);
    assert_eq!(spoofed_signin(&gate), 200);

    // The API and SIGHUP reload the trusted proxies with the rules.
    let (status, _) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 200);
    wait_stderr_count(&gate, "trusted proxies reloaded&api", 1);
    gate.signal("HUP");
    wait_stderr_count(&gate, "trusted proxies reloaded&SIGHUP", 1);
}

#[test]
fn check_reports_list_errors_in_the_list_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), DENY_5143).unwrap();
    std::fs::write(
        dir.path().join("eo.txt"),
        "40.92.0.0/15\n  40.107.0.0/666\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        "rules = \"rules/wstrust.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[client_ip]\ntrusted_proxies = [\"@file:eo.txt\", \"@file:gone.json\"]\n",
    )
    .unwrap();
    let config = dir.path().join("stsgate.toml").display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_ne!(code, 0, "{out}");
    let all = format!("{out}{err}");
    assert!(all.contains("eo.txt:2:3: invalid IP entry"), "{all}");
    assert!(
        all.contains("stsgate.toml:5:36: trusted proxy list \"@file:gone.json\": cannot read"),
        "{all}"
    );
}

/// Starts a gate listening with `proxy_protocol = true`.
fn proxy_protocol_gate(upstream: &Upstream, trusted: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), DENY_5143).unwrap();
    let token = "test-token-0123456789".to_string();
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n[upstream]\nurl = \"http://{}\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n[client_ip]\ntrusted_proxies = [{trusted}]\n",
            upstream.addr
        ),
    )
    .unwrap();
    Gate::spawn(dir, token)
}

/// A sign-in preceded by `header`: (status, or 0 when closed unanswered).
fn signin_after(gate: &Gate, header: &[u8]) -> u16 {
    let body = fixture("rst-2005-usernamemixed.xml");
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(
        format!(
            "POST {USERNAMEMIXED} HTTP/1.1\r\nHost: sts.test\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    bytes.extend_from_slice(&body);
    raw(gate.addr, &bytes).0
}

fn v2_tcp4(command: u8, source: [u8; 4]) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.extend([0x20 | command, 0x11, 0, 12]);
    b.extend(source);
    b.extend([127, 0, 0, 1]);
    b.extend(40000u16.to_be_bytes());
    b.extend(443u16.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_a_trusted_balancer() {
    let upstream = Upstream::start().await;
    let gate = proxy_protocol_gate(&upstream, "\"127.0.0.1\"");

    // v1 and v2 carry the client: the rules see it.
    assert_eq!(
        signin_after(&gate, b"PROXY TCP4 5.143.9.9 127.0.0.1 51000 443\r\n"),
        500
    );
    assert_eq!(signin_after(&gate, &v2_tcp4(1, [5, 143, 7, 7])), 500);
    let d = gate.wait_decisions(|d| d.iter().filter(|e| e["action"] == "refuse").count() == 2);
    let peers: Vec<_> = d.iter().map(|e| e["peer_ip"].as_str().unwrap()).collect();
    assert_eq!(peers, ["5.143.9.9", "5.143.7.7"]);
    assert_eq!(d[0]["client_ip"], "5.143.9.9");

    // A harmless client passes, and the STS sees it as the peer.
    assert_eq!(
        signin_after(&gate, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n"),
        200
    );
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-forwarded-for"],
        "2001:db8::7"
    );
    assert_eq!(signin_after(&gate, &v2_tcp4(1, [198, 51, 100, 7])), 200);
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-forwarded-for"],
        "198.51.100.7"
    );

    // LOCAL (the balancer's own probe), UNKNOWN and no header at all: the TCP peer.
    for header in [&v2_tcp4(0, [5, 143, 1, 1])[..], b"PROXY UNKNOWN\r\n", b""] {
        assert_eq!(signin_after(&gate, header), 200, "{header:?}");
        assert_eq!(
            upstream.seen().last().unwrap().headers["x-forwarded-for"],
            "127.0.0.1"
        );
    }

    // Malformed: closed unanswered.
    assert_eq!(
        signin_after(&gate, b"PROXY TCP4 5.143.9.9 nowhere 1 2\r\n"),
        0
    );
    let mut long = v2_tcp4(1, [5, 143, 1, 1]);
    long[14..16].copy_from_slice(&2000u16.to_be_bytes());
    assert_eq!(signin_after(&gate, &long), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_from_an_untrusted_peer_is_closed() {
    let upstream = Upstream::start().await;
    let gate = proxy_protocol_gate(&upstream, "\"192.0.2.1\"");
    let before = upstream.count();
    assert_eq!(
        signin_after(&gate, b"PROXY TCP4 198.51.100.7 127.0.0.1 51000 443\r\n"),
        0
    );
    assert_eq!(signin_after(&gate, &v2_tcp4(1, [198, 51, 100, 7])), 0);
    assert_eq!(upstream.count(), before, "nothing forwarded");
    // Without a header it is served as itself.
    assert_eq!(signin_after(&gate, b""), 200);
    assert_eq!(
        upstream.seen().last().unwrap().headers["x-forwarded-for"],
        "127.0.0.1"
    );
    // A header split across segments is still recognised.
    let mut s = TcpStream::connect(gate.addr).unwrap();
    s.write_all(b"PRO").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"XY TCP4 198.51.100.7 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}
