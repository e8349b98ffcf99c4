//! The one-shot commands through the real binary: `check` (summaries and
//! positioned errors), `explain` (text and JSON traces), and `demo` (started
//! as a child process and driven with the requests it prints).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stsgate_tests::*;

// ---- helpers ---------------------------------------------------------------

/// A temp dir holding `stsgate.toml` (naming `rules`) and an admin token.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// `rules` is written to `rules/wstrust.toml` unless `None` (then
    /// `rules_ref` is used as is in the config).
    fn new(rules: Option<&str>, rules_ref: &str, extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("rules/wstrust.toml"), rules).unwrap();
        }
        std::fs::write(dir.path().join("admin.token"), "t0ken-for-tests\n").unwrap();
        let config = format!(
            "rules = \"{rules_ref}\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n{extra}"
        );
        std::fs::write(dir.path().join("stsgate.toml"), config).unwrap();
        Setup { dir }
    }

    fn rules(rules: &str, extra: &str) -> Setup {
        Setup::new(Some(rules), "rules/wstrust.toml", extra)
    }

    fn config(&self) -> String {
        self.dir.path().join("stsgate.toml").display().to_string()
    }

    fn rules_path(&self) -> String {
        self.dir
            .path()
            .join("rules/wstrust.toml")
            .display()
            .to_string()
    }

    fn check(&self) -> (i32, String, String) {
        stsgate(&["check", "--config", &self.config()])
    }

    fn explain(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config();
        let mut all = vec!["explain", "--config", config.as_str()];
        all.extend_from_slice(args);
        stsgate(&all)
    }

    fn explain_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (code, out, err) = self.explain(&all);
        assert_eq!(code, 0, "explain {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain --json: {e}: {out}"))
    }
}

/// The non-empty lines of `text`.
fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

// ---- check -----------------------------------------------------------------

const GOOD_RULES: &str = r#"[request_blocking]
logic = "or"

[request_blocking.ip]
rule = "deny"
entries = ["5.143.*.*", "72.32.245.0/24, 72.32.246.1", "2001:db8::/32"]

[request_blocking.application]
rule = "allow"
entries = ["Microsoft.Exchange.ActiveSync", "Microsoft.Exchange.Autodiscover"]

[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests", "BAV2ROPC", "Go-http-client"]
"#;

#[test]
fn check_prints_one_summary_line_per_list() {
    let s = Setup::rules(GOOD_RULES, "");
    let (code, out, err) = s.check();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let out_lines = lines(&out);
    for want in [
        "request_blocking: enabled, logic or, mode enforce, use_adaptive false",
        // a comma-separated string counts as its items
        "request_blocking.ip: deny list, 4 entries",
        "request_blocking.application: allow list, 2 entries, wstrust only",
        "request_blocking.user_agent: deny list, 3 entries",
    ] {
        assert_eq!(
            out_lines.iter().filter(|l| l.trim() == want).count(),
            1,
            "exactly one {want:?} in:\n{out}"
        );
    }
    assert!(
        out.contains(&s.rules_path()),
        "the summary names the rule file: {out}"
    );
    assert!(!err.contains("error"), "{err}");
}

/// Every semantic problem of a rule file is reported, each at its exact
/// line and column (1-based, counted in characters).
#[test]
fn check_reports_every_rule_error_at_its_position() {
    let rules = r#"[request_blocking]
logic = "or"

[request_blocking.ip]
rule = "deny"
entries = [
  "10.0.0.1",
  "10.0.0.300",
  "5.143.*.*",
  "72.32.245.0/24,72.32.245.0/33, 10.9.9.9",
  "10.0.0.9-10.0.0.1",
]

[request_blocking.application]
rule = "allow"
entries = ["Microsoft.Exchange.ActiveSync", ""]

[adaptive.ip_country]
entries = ["198.51.100.0/24"]
failure_action = "redirect"

[adaptive.threat]
whitelist = ["203.0.113.7", "203.0.113.*.1"]

[lockout]
observation_window = "half an hour"
threshold = 0
"#;
    let s = Setup::rules(rules, "");
    let (code, out, err) = s.check();
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let p = s.rules_path();
    let want = [
        (8, 4, "invalid IP entry \"10.0.0.300\""),
        // the bad item inside a comma-separated string, not the string's start
        (10, 19, "invalid IP entry \"72.32.245.0/33\""),
        (11, 4, "invalid IP entry \"10.0.0.9-10.0.0.1\""),
        (16, 45, "empty entry"),
        (20, 18, "failure action \"redirect\" needs redirect_url"),
        (23, 30, "invalid IP entry \"203.0.113.*.1\""),
        (26, 22, "invalid duration \"half an hour\""),
        (27, 13, "must be a whole number"),
    ];
    let got = lines(&err);
    assert_eq!(got.len(), want.len(), "one line per error:\n{err}");
    for ((line, column, message), got) in want.iter().zip(&got) {
        let prefix = format!("{p}:{line}:{column}: {message}");
        assert!(got.starts_with(&prefix), "want {prefix:?}\ngot  {got:?}");
    }
    assert!(out.trim().is_empty(), "no summary on errors: {out}");
}

/// TOML syntax and type errors (an unknown key is one) stop the parse: the
/// first one is reported, positioned.
#[test]
fn check_reports_the_first_toml_error_at_its_position() {
    for (rules, line, column, message) in [
        (
            "[request_blocking]\nlogic = \"or\"\nblocking = true\n",
            3,
            1,
            "unknown field `blocking`",
        ),
        (
            "[request_blocking]\nlogic = \"xor\"\n[request_blocking.ip]\nrule = \"deny\"\nentries = [\"300.1.1.1\"]\n",
            2,
            9,
            "unknown variant `xor`",
        ),
        (
            "[request_blocking]\nlogic = \"or\"\n[request_blocking.ip\nrule = \"deny\"\n",
            3,
            21,
            "",
        ),
    ] {
        let s = Setup::rules(rules, "");
        let (code, _, err) = s.check();
        assert_eq!(code, 1, "{rules}: {err}");
        let got = lines(&err);
        assert_eq!(got.len(), 1, "{err}");
        let prefix = format!("{}:{line}:{column}: {message}", s.rules_path());
        assert!(
            got[0].starts_with(&prefix),
            "want {prefix:?}\ngot  {:?}",
            got[0]
        );
    }
}

#[test]
fn check_reports_config_errors_at_their_position() {
    // semantic errors: all of them, in file order
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.toml"),
        "[request_blocking]\nenabled = false\n",
    )
    .unwrap();
    let config = dir.path().join("stsgate.toml");
    std::fs::write(
        &config,
        r#"rules = "r.toml"

[listen]
addr = "localhost:443"
tls_cert = "cert.pem"
drain_timeout = "10 parsecs"

[upstream]
url = "http://127.0.0.1:1"
timeout = "soon"

[client_ip]
trusted_proxies = ["10.0.0.0/8", "10.0.0.0/40"]
"#,
    )
    .unwrap();
    let c = config.display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &c]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    let want = [
        (4, 8, "invalid address \"localhost:443\""),
        (5, 12, "tls_cert and tls_key go together"),
        (6, 17, "invalid duration \"10 parsecs\""),
        (10, 11, "invalid duration \"soon\""),
        (13, 35, "invalid IP entry \"10.0.0.0/40\""),
    ];
    let got = lines(&err);
    assert_eq!(got.len(), want.len(), "{err}");
    for ((line, column, message), got) in want.iter().zip(&got) {
        let prefix = format!("{c}:{line}:{column}: {message}");
        assert!(got.starts_with(&prefix), "want {prefix:?}\ngot  {got:?}");
    }

    // an unknown key, positioned
    std::fs::write(
        &config,
        "rules = \"r.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\nretries = 3\n",
    )
    .unwrap();
    let (code, _, err) = stsgate(&["check", "--config", &c]);
    assert_eq!(code, 1);
    let got = lines(&err);
    assert_eq!(got.len(), 1, "{err}");
    assert!(
        got[0].starts_with(&format!("{c}:4:1: unknown field `retries`")),
        "{err}"
    );

    // a missing config file
    let missing = dir.path().join("nope.toml").display().to_string();
    let (code, out, err) = stsgate(&["check", "--config", &missing]);
    assert_eq!(code, 1);
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        err.contains(&missing) && err.contains("cannot read the config file"),
        "{err}"
    );

    // a missing rule file
    let s = Setup::new(None, "rules/absent.toml", "");
    let (code, _, err) = s.check();
    assert_eq!(code, 1);
    assert!(
        err.contains("absent.toml") && err.contains("cannot read the rule file"),
        "{err}"
    );
}

/// The rule files shipped in `rules/` pass `check` as they are.
#[test]
fn shipped_rule_files_pass_check() {
    for name in ["example.toml", "reference.toml", "log-only.toml"] {
        let path = workspace().join("rules").join(name);
        let s = Setup::new(None, &path.display().to_string(), "");
        let (code, out, err) = s.check();
        assert_eq!(code, 0, "{name}:\nstdout: {out}\nstderr: {err}");
        assert!(out.contains(&format!("rules {}:", path.display())), "{out}");
        assert!(out.contains("request_blocking:"), "{name}: {out}");
        assert!(
            out.contains("request_blocking.user_agent: deny list"),
            "{name}: {out}"
        );
    }
    // and the same with a copy next to its feeds, by a relative path
    let s = Setup::new(None, "rules/example.toml", "");
    std::fs::copy(
        workspace().join("rules/example.toml"),
        s.dir.path().join("rules/example.toml"),
    )
    .unwrap();
    std::fs::create_dir_all(s.dir.path().join("rules/feeds")).unwrap();
    std::fs::copy(
        workspace().join("rules/feeds/example-drop.txt"),
        s.dir.path().join("rules/feeds/example-drop.txt"),
    )
    .unwrap();
    let (code, out, err) = s.check();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("adaptive.threat.feeds.example-drop"), "{out}");
    assert!(
        out.contains("2 entries from feeds/example-drop.txt"),
        "{out}"
    );
}

/// `check` shows feed risk levels with the names the rule file uses.
#[test]
fn check_summary_names_feed_risk_as_written() {
    let path = workspace().join("rules/example.toml");
    let s = Setup::new(None, &path.display().to_string(), "");
    let (code, out, _) = s.check();
    assert_eq!(code, 0);
    assert!(
        out.contains("adaptive.threat.feeds.example-drop: extreme risk"),
        "{out}"
    );
}

// ---- explain ---------------------------------------------------------------

/// Line numbers matter: entries are reported with their line.
const EXPLAIN_RULES: &str = r#"[request_blocking]
use_adaptive = true
logic = "or"

[request_blocking.ip]
rule = "deny"
entries = ["5.143.*.*", "72.32.245.0/24"]

[request_blocking.application]
rule = "allow"
entries = [
  "Microsoft.Exchange.ActiveSync",
  "Microsoft.Exchange.Autodiscover",
]

[request_blocking.user_agent]
rule = "deny"
entries = ["python-requests", "BAV2ROPC"]

[adaptive.ip_country]
list = "deny"
entries = ["198.51.100.0/24"]
failure_action = "refuse"
"#;

const ACTIVESYNC: &str = "X-MS-Client-Application: Microsoft.Exchange.ActiveSync";

#[test]
fn explain_prints_each_stage_and_the_matching_entry() {
    let s = Setup::rules(
        EXPLAIN_RULES,
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    let rules = s.rules_path();

    // text: a deny-listed IP
    let (code, out, err) = s.explain(&["--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert_eq!(code, 0, "{err}");
    for stage in ["ip_country", "threat", "ip ", "application", "user_agent"] {
        assert!(
            out.lines().any(|l| l.contains(stage)),
            "stage {stage:?} missing:\n{out}"
        );
    }
    let ip_line = out
        .lines()
        .find(|l| l.starts_with("request") && l.split_whitespace().nth(1) == Some("ip"))
        .unwrap_or_else(|| panic!("no ip step:\n{out}"));
    assert!(ip_line.contains("FIRED"), "{ip_line}");
    assert!(
        ip_line.contains(&format!("entry \"5.143.*.*\" ({rules}:7)")),
        "{ip_line}"
    );
    let app_line = out
        .lines()
        .find(|l| l.starts_with("request") && l.split_whitespace().nth(1) == Some("application"))
        .unwrap();
    assert!(
        app_line.contains(&format!(
            "entry \"Microsoft.Exchange.ActiveSync\" ({rules}:12)"
        )),
        "{app_line}"
    );
    let decision = out
        .lines()
        .find(|l| l.starts_with("decision"))
        .unwrap_or_else(|| panic!("no decision line:\n{out}"));
    for part in [
        "stage ip",
        "action refuse",
        "list deny",
        &format!("entry \"5.143.*.*\" ({rules}:7)"),
    ] {
        assert!(decision.contains(part), "{part:?} not in {decision:?}");
    }
    assert!(out.contains("HTTP 500"), "the response is named:\n{out}");

    // JSON: the same decision as one object
    let j = s.explain_json(&["--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert_eq!(j["stage"], "ip");
    assert_eq!(j["action"], "refuse");
    assert_eq!(j["list"], "deny");
    assert_eq!(j["entry"]["text"], "5.143.*.*");
    assert_eq!(j["entry"]["file"], rules.as_str());
    assert_eq!(j["entry"]["line"], 7);
    assert_eq!(j["client_ip"], "5.143.7.7");
    let steps = j["steps"].as_array().expect("steps is an array");
    let stages: Vec<&str> = steps.iter().filter_map(|s| s["stage"].as_str()).collect();
    assert_eq!(
        stages,
        [
            "dynamic_block",
            "lockout",
            "spray",
            "ip_country",
            "anonymous_ip",
            "threat",
            "user_group",
            "geo_velocity",
            "ip",
            "application",
            "user_agent"
        ],
        "stage 2 first, then the rules, in corridor order: {j}"
    );
    assert_eq!(steps[0]["outcome"], "passed");
    assert_eq!(steps[8]["outcome"], "fired");
    assert_eq!(steps[8]["entry"]["line"], 7);
    assert_eq!(steps[9]["outcome"], "passed");

    // the adaptive check decides before request blocking
    let j = s.explain_json(&["--ip", "198.51.100.9", "-H", ACTIVESYNC]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"ip_country".into(), &"refuse".into())
    );
    assert_eq!(j["entry"]["text"], "198.51.100.0/24");
    assert_eq!(j["entry"]["line"], 22);

    // a clean request goes through
    let j = s.explain_json(&["--ip", "9.9.9.9", "-H", ACTIVESYNC]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"none".into(), &"forward".into())
    );
    assert!(j.get("entry").is_none(), "{j}");
}

#[test]
fn explain_reads_forwarded_ips_only_from_trusted_proxies() {
    let s = Setup::rules(
        EXPLAIN_RULES,
        "[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    );
    // a trusted proxy: --ip travels in X-MS-Forwarded-Client-IP and is believed
    let j = s.explain_json(&["--peer", "10.1.1.1", "--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert_eq!(j["client_ip"], "5.143.7.7");
    assert_eq!(j["peer_ip"], "10.1.1.1");
    assert_eq!(j["peer_trusted"], true);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"ip".into(), &"refuse".into())
    );
    // the text trace says where the client IP comes from
    let (_, out, _) = s.explain(&["--peer", "10.1.1.1", "--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert!(out.contains("trusted proxy"), "{out}");

    // an explicit forwarded header from a trusted proxy wins over --ip
    let j = s.explain_json(&[
        "--peer",
        "10.1.1.1",
        "--ip",
        "9.9.9.9",
        "-H",
        "X-Forwarded-For: 72.32.245.10",
        "-H",
        ACTIVESYNC,
    ]);
    assert_eq!(j["client_ip"], "72.32.245.10", "{j}");
    assert_eq!(j["entry"]["text"], "72.32.245.0/24");

    // an untrusted peer: the forwarded address is ignored, the peer is the client
    let j = s.explain_json(&["--peer", "9.9.9.9", "--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert_eq!(j["client_ip"], "9.9.9.9");
    assert_eq!(j["peer_trusted"], false);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"none".into(), &"forward".into())
    );
    let (_, out, _) = s.explain(&["--peer", "9.9.9.9", "--ip", "5.143.7.7", "-H", ACTIVESYNC]);
    assert!(out.contains("not a trusted proxy"), "{out}");
}

#[test]
fn explain_follows_the_application_and_user_agent_headers() {
    let s = Setup::rules(EXPLAIN_RULES, "");
    let rules = s.rules_path();
    // no application header: the allow list blocks
    let j = s.explain_json(&["--ip", "9.9.9.9"]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"application".into(), &"refuse".into())
    );
    assert_eq!(j["list"], "allow");
    assert!(j.get("application").is_none(), "{j}");
    // an application that is not listed
    let j = s.explain_json(&[
        "--ip",
        "9.9.9.9",
        "--header",
        "X-MS-Client-Application: Microsoft.Exchange.Imap",
    ]);
    assert_eq!(j["stage"], "application");
    assert_eq!(j["application"], "Microsoft.Exchange.Imap");
    // listed, in another case, inside a longer value: allowed
    let j = s.explain_json(&[
        "--ip",
        "9.9.9.9",
        "--header",
        "x-ms-client-application: v2/MICROSOFT.EXCHANGE.AUTODISCOVER",
    ]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"none".into(), &"forward".into())
    );
    // a denied user agent, matched ignoring case
    let j = s.explain_json(&[
        "--ip",
        "9.9.9.9",
        "-H",
        ACTIVESYNC,
        "-H",
        "X-MS-Client-User-Agent: Python-Requests/2.32",
    ]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"user_agent".into(), &"refuse".into())
    );
    assert_eq!(j["entry"]["text"], "python-requests");
    assert_eq!(j["entry"]["file"], rules.as_str());
    assert_eq!(j["entry"]["line"], 18);
    assert_eq!(j["user_agent"], "Python-Requests/2.32");
    // --user is shown
    let j = s.explain_json(&[
        "--ip",
        "9.9.9.9",
        "-H",
        ACTIVESYNC,
        "--user",
        "alice@contoso.com",
    ]);
    assert_eq!(j["user"], "alice@contoso.com");
}

#[test]
fn explain_refuses_windowstransport_and_rejects_bad_arguments() {
    let s = Setup::rules(EXPLAIN_RULES, "");
    let j = s.explain_json(&[
        "--ip",
        "9.9.9.9",
        "-H",
        ACTIVESYNC,
        "--path",
        "/adfs/services/trust/13/windowstransport",
    ]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"path".into(), &"refuse".into())
    );
    assert_eq!(j["steps"].as_array().map(Vec::len), Some(0), "{j}");
    let (code, out, _) = s.explain(&[
        "--ip",
        "9.9.9.9",
        "--path",
        "/adfs/services/trust/2005/windowstransport",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("stage path  action refuse"), "{out}");
    // a path outside the filter is forwarded as is
    let j = s.explain_json(&["--ip", "5.143.1.1", "--path", "/adfs/portal/"]);
    assert_eq!(
        (&j["stage"], &j["action"]),
        (&"path".into(), &"forward".into())
    );

    // bad arguments: non-zero, with a message
    let (code, _, err) = s.explain(&["--ip", "9.9.9.9", "--header", "no colon here"]);
    assert_ne!(code, 0);
    assert!(err.contains("no colon here"), "{err}");
    let (code, _, err) = s.explain(&["--ip", "9.9.9.9", "--header", "Bad Name: x"]);
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = s.explain(&["--ip", "not-an-ip"]);
    assert_ne!(code, 0);
    assert!(err.contains("not-an-ip"), "{err}");
    // a config with errors: the errors, non-zero
    let bad = Setup::rules(
        "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"1.2.3\"]\n",
        "",
    );
    let (code, _, err) = bad.explain(&["--ip", "9.9.9.9"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("{}:3:13: invalid IP entry", bad.rules_path())),
        "{err}"
    );
}

// ---- demo ------------------------------------------------------------------

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `stsgate demo` as a child process; killed on drop.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    });
}

impl Demo {
    /// Starts the demo and waits until it has printed its welcome; `None`
    /// when it exited first (a port taken in between).
    fn start(listen: SocketAddr, admin: SocketAddr, dir: &Path) -> Option<Demo> {
        Demo::start_with(listen, admin, Some(dir), None)
    }

    /// With `--dir dir`, or (without) a temporary directory under `tmp`.
    fn start_with(
        listen: SocketAddr,
        admin: SocketAddr,
        dir: Option<&Path>,
        tmp: Option<&Path>,
    ) -> Option<Demo> {
        let mut cmd = Command::new(stsgate_bin());
        cmd.arg("demo")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string());
        if let Some(dir) = dir {
            cmd.arg("--dir").arg(dir);
        }
        if let Some(tmp) = tmp {
            cmd.env("TMPDIR", tmp);
        }
        let mut child = cmd
            .env("STSGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stsgate demo");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let demo = Demo {
            child,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut demo = demo;
        loop {
            {
                let out = demo.stdout.lock().unwrap();
                if out.iter().any(|l| l.contains("stsgate demo is running"))
                    && out.iter().any(|l| l.contains("Ctrl-C stops the demo"))
                {
                    break;
                }
            }
            if let Ok(Some(status)) = demo.child.try_wait() {
                eprintln!(
                    "stsgate demo exited with {status}: {}",
                    demo.stderr.lock().unwrap().join("\n")
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "the demo never printed its welcome: {:?} {:?}",
                demo.stdout.lock().unwrap(),
                demo.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(demo)
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 exchange on a fresh connection: (status, lower-cased
/// header map, body).
fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut head_lines = head.lines();
    let status = head_lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

/// A POST of a sample file to the 2005 usernamemixed path.
fn demo_post(gate: SocketAddr, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST /adfs/services/trust/2005/usernamemixed HTTP/1.1\r\nHost: {gate}\r\nContent-Type: application/soap+xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Splits a shell command line as printed by the demo: words, with
/// single-quoted parts kept whole.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    if in_word {
        words.push(word);
    }
    words
}

/// The raw request a printed `curl` line sends, and where to.
fn curl_request(words: &[String]) -> (SocketAddr, Vec<u8>) {
    let mut method = None;
    let mut headers = Vec::new();
    let mut body: Option<Vec<u8>> = None;
    let mut url = None;
    let mut i = 1;
    while i < words.len() {
        match words[i].as_str() {
            "-X" => {
                method = Some(words[i + 1].clone());
                i += 1;
            }
            "-H" => {
                headers.push(words[i + 1].clone());
                i += 1;
            }
            "-d" | "--data" => {
                body = Some(words[i + 1].clone().into_bytes());
                i += 1;
            }
            "--data-binary" => {
                let file = words[i + 1].strip_prefix('@').expect("@file");
                body = Some(std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}")));
                i += 1;
            }
            w if w.starts_with("http://") => url = Some(w.to_string()),
            w if w.starts_with('-') => {} // -s, -si: output flags
            w => panic!("unexpected curl word {w:?}"),
        }
        i += 1;
    }
    let url = url.expect("a URL");
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority.parse().expect("an IP:port authority");
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
        if path.is_empty() { "/" } else { path },
        body.len()
    );
    for h in headers {
        req.push_str(&h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    (addr, bytes)
}

#[test]
fn demo_runs_and_its_printed_commands_work() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("demo");
    let mut started = None;
    for _ in 0..3 {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        if listen == admin {
            continue;
        }
        if let Some(demo) = Demo::start(listen, admin, &dir) {
            started = Some((demo, listen, admin));
            break;
        }
    }
    let (mut demo, gate, admin) = started.expect("the demo started");
    let good = std::fs::read(dir.join("rst-good.xml")).expect("rst-good.xml written");
    let wrong = std::fs::read(dir.join("rst-wrong.xml")).expect("rst-wrong.xml written");
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("admin.token written");
    let token = token.trim();
    assert!(dir.join("rules/example.toml").exists());
    assert!(dir.join("stsgate.toml").exists());

    // the welcome names the chosen addresses and the directory
    let welcome = demo.stdout().join("\n");
    assert!(welcome.contains(&format!("http://{gate}")), "{welcome}");
    assert!(
        welcome.contains(&format!("http://{admin}/metrics")),
        "{welcome}"
    );
    assert!(welcome.contains(&dir.display().to_string()), "{welcome}");
    assert!(welcome.contains(token), "{welcome}");

    // forwarded: the right password, ActiveSync -> a token from the demo STS
    let sync = "X-MS-Client-Application: Microsoft.Exchange.ActiveSync";
    let (status, headers, body) = exchange(gate, &demo_post(gate, &[sync], &good));
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-demo-sts").map(String::as_str), Some("1"));
    assert!(body.contains("RequestSecurityTokenResponse"), "{body}");
    assert!(body.contains("alice@contoso.com"), "{body}");

    // forwarded: the wrong password -> the STS's own fault
    let (status, headers, body) = exchange(gate, &demo_post(gate, &[sync], &wrong));
    assert_eq!(status, 500);
    assert_eq!(headers.get("x-demo-sts").map(String::as_str), Some("1"));
    assert!(body.contains("FailedAuthentication"), "{body}");

    // refused by the gate: the same fault, but not from upstream
    let (status, headers, body) = exchange(
        gate,
        &demo_post(gate, &[sync, "X-MS-Forwarded-Client-IP: 5.143.7.7"], &good),
    );
    assert_eq!(status, 500);
    assert!(!headers.contains_key("x-demo-sts"), "{headers:?}");
    assert!(body.contains("FailedAuthentication"), "{body}");
    assert!(!body.contains("RequestSecurityTokenResponse"));

    // refused: a spray tool's user agent, and a missing application
    let (status, headers, _) = exchange(
        gate,
        &demo_post(
            gate,
            &[sync, "X-MS-Client-User-Agent: python-requests/2.32"],
            &good,
        ),
    );
    assert_eq!(status, 500);
    assert!(!headers.contains_key("x-demo-sts"));
    let (status, headers, _) = exchange(gate, &demo_post(gate, &[], &good));
    assert_eq!(status, 500);
    assert!(!headers.contains_key("x-demo-sts"));

    // refused: windowstransport
    let (status, headers, _) = exchange(
        gate,
        format!("POST /adfs/services/trust/13/windowstransport HTTP/1.1\r\nHost: {gate}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 500);
    assert!(!headers.contains_key("x-demo-sts"));

    // the admin listener counts the decisions
    let (status, _, metrics) = exchange(
        admin,
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let series = |s: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(s).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    assert_eq!(
        series("stsgate_decisions_total{action=\"forward\",stage=\"none\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        series("stsgate_decisions_total{action=\"refuse\",stage=\"ip\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("stsgate_decisions_total{action=\"refuse\",stage=\"user_agent\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("stsgate_decisions_total{action=\"refuse\",stage=\"application\"}"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        series("stsgate_decisions_total{action=\"refuse\",stage=\"path\"}"),
        1.0,
        "{metrics}"
    );

    // the reload API, with and without the token
    let (status, _, body) = exchange(
        admin,
        format!("POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("success"), "{body}");
    let (status, _, _) = exchange(
        admin,
        b"POST /api/v1/reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 401);

    // the decision log (text) follows on stdout
    let deadline = Instant::now() + Duration::from_secs(5);
    while !demo
        .stdout()
        .iter()
        .any(|l| l.contains("client_ip=5.143.7.7") && l.contains("action=refuse"))
    {
        assert!(
            Instant::now() < deadline,
            "no decision line: {:?}",
            demo.stdout()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // every printed command targets the chosen ports and does what its comment says
    let printed = demo.stdout();
    let mut comment = String::new();
    let mut curls = 0;
    for line in &printed {
        let line = line.trim();
        if line.starts_with('#') {
            comment = line.to_string();
            continue;
        }
        if !(line.starts_with("curl ") || line.contains(" explain --config ")) {
            continue;
        }
        // a pipe into grep only filters the output
        let words = shell_words(line.split(" | ").next().unwrap());
        if words[1] == "explain" {
            // the offline explain line: run it as printed, by a shell, from
            // another directory (the binary is named by its absolute path)
            assert!(Path::new(&words[0]).is_absolute(), "{line}");
            let out = Command::new("sh")
                .arg("-c")
                .arg(line)
                .current_dir(top.path())
                .env("PATH", "/usr/bin:/bin")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{line}: {out:?}");
            assert!(text.contains("stage ip  action refuse"), "{line}: {text}");
            continue;
        }
        curls += 1;
        let (addr, request) = curl_request(&words);
        assert!(
            addr == gate || addr == admin,
            "{line} targets {addr}, not {gate} or {admin}"
        );
        let (status, headers, body) = exchange(addr, &request);
        if comment.starts_with("# forwarded") {
            assert_eq!(
                headers.get("x-demo-sts").map(String::as_str),
                Some("1"),
                "{comment}\n{line}"
            );
            let want = if comment.contains("wrong password") {
                500
            } else {
                200
            };
            assert_eq!(status, want, "{comment}\n{line}\n{body}");
        } else if comment.starts_with("# refused") {
            assert_eq!(status, 500, "{comment}\n{line}");
            assert!(!headers.contains_key("x-demo-sts"), "{comment}\n{line}");
        } else if line.contains("/metrics") {
            assert_eq!(status, 200);
            assert!(body.contains("stsgate_decisions_total"), "{line}");
        } else if line.contains("/api/v1/reload") {
            assert_eq!(status, 200, "{line}: {body}");
        } else if line.contains("/api/v1/blocks") {
            assert_eq!(status, 201, "{line}: {body}");
            assert!(body.contains("\"id\""), "{line}: {body}");
        } else {
            panic!("a curl line without a known purpose: {comment}\n{line}");
        }
    }
    assert!(curls >= 7, "{curls} curl lines in {printed:#?}");

    // Ctrl-C stops it cleanly
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -INT {}", demo.child.id()))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(status)) = demo.child.try_wait() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{status}: {:?}",
        demo.stderr.lock().unwrap()
    );
}

/// A country restriction without `geoip.country_db` makes every client
/// `ZZ`; `run` warns about it at start, and `check` should say so too.
#[test]
fn check_warns_about_a_country_restriction_without_a_database() {
    let rules = "[request_blocking]\nuse_adaptive = true\n\n[adaptive.ip_country]\nrestriction = \"country\"\nlist = \"allow\"\nentries = [\"GB\"]\n";
    let s = Setup::rules(rules, "");
    let (code, out, err) = s.check();
    let all = format!("{out}{err}");
    assert!(
        all.contains("country_db"),
        "exit {code}, but nothing about geoip.country_db:\n{all}"
    );
}

/// Without `--dir`, the demo makes a private directory under the system's
/// temporary directory, writes the token readable by its owner only, and
/// removes the directory when it stops (SIGTERM here; Ctrl-C the same).
#[test]
fn demo_removes_the_directory_it_made() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut started = None;
    for _ in 0..3 {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        if listen != admin {
            started = Demo::start_with(listen, admin, None, Some(tmp.path()));
            if started.is_some() {
                break;
            }
        }
    }
    let mut demo = started.expect("the demo started");
    let made: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    let dir = &made[0];
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700);
    assert_eq!(mode(&dir.join("admin.token")), 0o600);
    let welcome = demo.stdout().join("\n");
    assert!(
        welcome.contains(&format!("removes {}", dir.display())),
        "{welcome}"
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", demo.child.id()))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Ok(Some(status)) = demo.child.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}
