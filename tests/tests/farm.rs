//! What an ADFS farm needs, through the real binary: a rule file that
//! configures nothing fails closed (start, reload, check), metadata exchange
//! passes without a decision, and farm headers from untrusted peers never
//! reach the STS.

use std::process::Command;
use std::time::Duration;

use stsgate_tests::*;

const DENY_LOOPBACK: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"127.0.0.1\"]\n";
const IP_AND_UA: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\"]\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python-requests\"]\n";
const MEX: &str = "/adfs/services/trust/mex";

/// A directory with `stsgate.toml` naming `rules/wstrust.toml` (holding `rules`).
fn setup(rules: &str, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), rules).unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n{extra}"
        ),
    )
    .unwrap();
    dir
}

// ---- item 2: a rule file that configures nothing ---------------------------

#[test]
fn an_empty_rule_file_is_refused_at_start_and_by_check() {
    for rules in ["", "# nothing yet\n", "[request_blocking]\n"] {
        let dir = setup(rules, "");
        let config = dir.path().join("stsgate.toml").display().to_string();
        let rules_path = dir.path().join("rules/wstrust.toml").display().to_string();
        let want = format!("{rules_path}:1:1: the rule file configures no stage");

        let (code, _, err) = stsgate(&["check", "--config", &config]);
        assert_eq!(code, 1, "check {rules:?}: {err}");
        assert!(err.contains(&want), "check {rules:?}: {err}");

        let mut child = Command::new(stsgate_bin())
            .args(["run", "--config", &config])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("run started with a rule file that configures nothing: {rules:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{rules:?}");
        assert!(err.contains(&want), "run {rules:?}: {err}");
    }
    // Saying so is enough.
    let dir = setup("[request_blocking]\nenabled = false\n", "");
    let config = dir.path().join("stsgate.toml").display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &config]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("request_blocking: disabled"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_to_an_empty_file_is_refused_and_dropped_sections_warn() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        ..GateSpec::new(IP_AND_UA, &upstream)
    });
    let refused = |ua: &'static str| {
        let url = gate.url(USERNAMEMIXED);
        async move {
            send(
                &http_client(),
                post(&url, &[("x-ms-client-user-agent", ua)], "<x/>"),
            )
            .await
            .status
        }
    };
    assert_eq!(refused("python-requests/2.32").await, 500);
    assert_eq!(gate.metric("stsgate_rules_file_ok"), 1.0);

    // emptied by mistake (a bad deploy, `: > rules.toml`): refused, old rules kept
    std::fs::write(gate.rules_path(), "").unwrap();
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("configures no stage"), "{body}");
    assert_eq!(refused("python-requests/2.32").await, 500, "old rules kept");
    assert!(gate.wait_stderr("configures no stage"));
    assert_eq!(
        gate.metric("stsgate_rules_file_ok"),
        0.0,
        "the file on disk is bad"
    );

    // a reload that drops a whole section is logged at WARN, naming it
    std::fs::write(
        gate.rules_path(),
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\"]\n",
    )
    .unwrap();
    let (status, body) = gate.api_post("/api/v1/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(gate.metric("stsgate_rules_file_ok"), 1.0);
    assert!(gate.wait_stderr("without sections that were in force"));
    let line = gate
        .stderr()
        .into_iter()
        .find(|l| l.contains("without sections that were in force"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("request_blocking.user_agent"), "{line}");
    assert!(!line.contains("request_blocking.ip"), "{line}");
    assert_eq!(refused("python-requests/2.32").await, 200);

    // switching request blocking off on purpose is accepted, and warned about
    std::fs::write(gate.rules_path(), "[request_blocking]\nenabled = false\n").unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 200);
    assert!(gate.wait_stderr("in force: request_blocking.ip"));
}

// ---- item 3: metadata exchange passes --------------------------------------

/// A gate running the shipped `rules/example.toml` (which refuses every
/// request without an allowed `X-MS-Client-Application`).
fn example_gate(upstream: &Upstream, extra: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    let ws = workspace();
    std::fs::create_dir_all(dir.path().join("rules/feeds")).unwrap();
    std::fs::copy(
        ws.join("rules/example.toml"),
        dir.path().join("rules/wstrust.toml"),
    )
    .unwrap();
    std::fs::copy(
        ws.join("rules/feeds/example-drop.txt"),
        dir.path().join("rules/feeds/example-drop.txt"),
    )
    .unwrap();
    let token = "farm-token-0123456789".to_string();
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n{extra}",
            upstream.addr
        ),
    )
    .unwrap();
    Gate::spawn(dir, token)
}

/// The GET that MSAL Python's `mex.send_request` sends (through `requests`),
/// with no X-MS headers: what Office and MSAL clients fetch before a sign-in.
fn msal_mex_get(gate: &Gate, path: &str) -> (u16, String) {
    raw(
        gate.addr,
        format!(
            "GET {path} HTTP/1.1\r\nHost: sts.contoso.com\r\nUser-Agent: python-requests/2.32.3\r\nAccept-Encoding: gzip, deflate\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_exchange_passes_the_example_rules() {
    let upstream = Upstream::start().await;
    upstream.respond(|seen| {
        if seen.method == "GET" {
            Answer {
                status: 200,
                headers: vec![("content-type".into(), "text/xml; charset=utf-8".into())],
                body: bytes::Bytes::from_static(
                    b"<wsdl:definitions xmlns:wsdl=\"http://schemas.xmlsoap.org/wsdl/\"/>",
                ),
                delay: Duration::ZERO,
            }
        } else {
            Answer::soap(200, "<ok/>")
        }
    });
    let gate = example_gate(&upstream, "[filter]\nother_paths = \"refuse\"\n");
    for path in [
        MEX,
        "/adfs/services/trust/mex?wsdl",
        "/adfs/services/trust/mex/",
        "/mex",
        "/FederationMetadata/2007-06/FederationMetadata.xml",
    ] {
        let (status, body) = msal_mex_get(&gate, path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body.contains("wsdl:definitions"), "{path}: {body}");
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(last.target, path, "forwarded with its target unchanged");
    }
    assert_eq!(upstream.count(), 5);
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"forward\",stage=\"path\"}"),
        5.0
    );
    // A sign-in without the client headers is still decided (and refused).
    let got = send(&http_client(), post(&gate.url(USERNAMEMIXED), &[], "<x/>")).await;
    assert_eq!(got.status, 500);
    assert_eq!(upstream.count(), 5);
    // ... and so is a path that only starts like a metadata path, or climbs out of one.
    for path in [
        "/adfs/services/trust/mexico",
        "/adfs/services/trust/mex/../2005/usernamemixed",
    ] {
        assert_eq!(msal_mex_get(&gate, path).0, 500, "{path}");
    }
    assert_eq!(upstream.count(), 5);
    // The passed requests are not sign-ins: the decision log has only the refusals.
    let log = gate.wait_decisions(|d| d.len() >= 3);
    assert!(log.iter().all(|d| d["action"] == "refuse"), "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_paths_is_configurable() {
    let upstream = Upstream::start().await;
    let gate = example_gate(&upstream, "[filter]\npass_paths = []\n");
    assert_eq!(msal_mex_get(&gate, MEX).0, 500, "decided, and refused");
    assert_eq!(upstream.count(), 0);
    let gate = example_gate(
        &upstream,
        "[filter]\npass_paths = [\"/adfs/services/trust/2005/\"]\n",
    );
    let got = send(&http_client(), post(&gate.url(USERNAMEMIXED), &[], "<x/>")).await;
    assert_eq!(got.status, 200);
    assert_eq!(msal_mex_get(&gate, MEX).0, 500);
}

// ---- item 4: farm headers from untrusted peers -----------------------------

const FARM_HEADERS: [(&str, &str); 4] = [
    ("x-ms-proxy", "wap01"),
    (
        "x-ms-endpoint-absolute-path",
        "/adfs/services/trust/2005/usernamemixed",
    ),
    ("forwarded", "for=10.0.0.7;proto=https"),
    ("x-real-ip", "10.0.0.7"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn farm_headers_from_untrusted_peers_never_reach_the_sts() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(
        &DENY_LOOPBACK.replace("127.0.0.1", "5.143.*.*"),
        &upstream,
    ));
    let got = send(
        &http_client(),
        post(&gate.url(USERNAMEMIXED), &FARM_HEADERS, "<x/>"),
    )
    .await;
    assert_eq!(got.status, 200);
    // MEX and other paths too: the STS reads them on every endpoint.
    let (status, _) = raw(
        gate.addr,
        b"GET /adfs/services/trust/mex HTTP/1.1\r\nHost: sts\r\nX-MS-Proxy: wap01\r\nX-Real-IP: 10.0.0.7\r\nForwarded: for=10.0.0.7\r\nX-MS-Endpoint-Absolute-Path: /adfs/ls/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        for (name, _) in FARM_HEADERS {
            assert!(
                !s.headers.contains_key(name),
                "{name} reached the STS: {:?}",
                s.headers
            );
        }
    }

    // A trusted proxy (WAP, a load balancer) keeps its values.
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        ..GateSpec::new(&DENY_LOOPBACK.replace("127.0.0.1", "5.143.*.*"), &upstream)
    });
    let got = send(
        &http_client(),
        post(&gate.url(USERNAMEMIXED), &FARM_HEADERS, "<x/>"),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = &upstream.seen()[0];
    for (name, value) in FARM_HEADERS {
        assert_eq!(seen.headers[name], value, "{name}");
    }
}

// ---- item 11: the shipped Prometheus rules -----------------------------------

/// `deploy/prometheus`: the rules load, and their unit tests pass (the
/// reload alert that stays while `stsgate_rules_file_ok` is 0, and
/// `StsgateDown` whatever the scrape job is called), with the real promtool.
#[test]
fn prometheus_rules_pass_promtool() {
    let dir = workspace().join("deploy/prometheus");
    for args in [
        ["check", "rules", "stsgate-rules.yml"],
        ["test", "rules", "stsgate-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run promtool ({e}): scripts/test.sh installs it (Debian package `prometheus`)")
            });
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
