//! `[adaptive.user_group]` groups from a real OpenLDAP slapd (memberof
//! overlay) through the running binary: direct and nested membership,
//! users in no group or unknown, UPN, DOMAIN\sam and sam, a hostile user
//! name, the cache and coalesced lookups (by the metrics), a directory
//! that is down or frozen with `on_error` continue and refuse, `check` and
//! `explain`.

#[path = "../src/slapd.rs"]
#[allow(dead_code)]
mod slapd;

use std::time::Duration;

use slapd::Slapd;
use stsgate_tests::*;

/// Only members of Legacy-Auth-Allowed (nested included) and the listed
/// scanner account may sign in.
const ALLOW: &str = r#"
[request_blocking]
use_adaptive = true
[adaptive.user_group]
list = "allow"
users = ["svc-scanner@corp.example.com"]
groups = ["CN=Legacy-Auth-Allowed, OU=Groups, DC=corp, DC=example, DC=com"]
failure_action = "refuse"
"#;

/// `[directory]` for `slapd`, with `more` lines.
fn directory(slapd: &Slapd, more: &str) -> String {
    directory_at(&slapd.url(), slapd, more)
}

/// `[directory]` for `slapd` at `url`, with `more` lines.
fn directory_at(url: &str, slapd: &Slapd, more: &str) -> String {
    format!(
        "[blocked]\ndelay = \"0s\"\n[directory]\nurl = \"{url}\"\nbind_dn = \"{}\"\npassword_file = \"{}\"\nbase_dn = \"{}\"\nuser_filter = \"{}\"\n{more}\n",
        slapd::BIND_DN,
        slapd.password_file().display(),
        slapd::BASE_DN,
        slapd::USER_FILTER,
    )
}

fn start(rules: &str, extra: &str, upstream: &Upstream) -> Gate {
    Gate::start(GateSpec {
        extra,
        ..GateSpec::new(rules, upstream)
    })
}

/// One sign-in with the right password: (status, reached the STS).
async fn signin(gate: &Gate, up: &Upstream, user: &str) -> (u16, bool) {
    let before = up.count();
    let got = send(
        &http_client(),
        post(&gate.url(USERNAMEMIXED), &[], rst_for(user, RIGHT_PASSWORD)),
    )
    .await;
    (got.status, up.count() > before)
}

const FORWARDED: (u16, bool) = (200, true);
const REFUSED: (u16, bool) = (500, false);

fn lookups(gate: &Gate, result: &str) -> f64 {
    gate.metric(&format!(
        "stsgate_directory_lookups_total{{result=\"{result}\"}}"
    ))
}

#[tokio::test]
async fn group_members_pass_nested_included_others_are_refused() {
    let slapd = Slapd::start();
    let up = password_checking_sts().await;
    let gate = start(ALLOW, &directory(&slapd, ""), &up);
    // In the group directly, by sam, UPN and DOMAIN\sam.
    assert_eq!(signin(&gate, &up, "alice").await, FORWARDED);
    assert_eq!(
        signin(&gate, &up, "ALICE@corp.example.com").await,
        FORWARDED
    );
    // Through a nested group (bob is in Team, Team in Legacy-Auth-Allowed).
    assert_eq!(signin(&gate, &up, "CORP\\bob").await, FORWARDED);
    // In no group, unknown, hostile: refused.
    assert_eq!(signin(&gate, &up, "carol@corp.example.com").await, REFUSED);
    assert_eq!(signin(&gate, &up, "CORP\\dave").await, REFUSED);
    assert_eq!(signin(&gate, &up, "mallory").await, REFUSED);
    assert_eq!(signin(&gate, &up, "*)(uid=*").await, REFUSED);
    assert_eq!(signin(&gate, &up, "*").await, REFUSED);
    // Listed by name: passes without being in the directory.
    assert_eq!(
        signin(&gate, &up, "svc-scanner@corp.example.com").await,
        FORWARDED
    );
    let refused = gate.wait_decisions(|d| d.len() >= 9)[3].clone();
    assert_eq!(refused["stage"], "user_group", "{refused}");
    assert_eq!(refused["action"], "refuse", "{refused}");
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"user_group\"}"),
        5.0
    );

    // The queries: alice, ALICE@... (another key), bob, carol, dave found;
    // mallory and the two hostile names not found; the scanner, listed by
    // name, is not looked up.
    assert_eq!(lookups(&gate, "found"), 5.0);
    assert_eq!(lookups(&gate, "not_found"), 3.0);
    assert_eq!(lookups(&gate, "error"), 0.0);
    // Asked again: from the cache.
    let hits = lookups(&gate, "hit");
    assert_eq!(signin(&gate, &up, "alice").await, FORWARDED);
    assert_eq!(signin(&gate, &up, "Mallory").await, REFUSED);
    assert_eq!(lookups(&gate, "hit"), hits + 2.0);
    assert_eq!(lookups(&gate, "found"), 5.0);

    let (_, ready) = gate.admin_get("/readyz");
    assert!(
        ready.contains(&format!("directory {}: ok", slapd.url())),
        "{ready}"
    );
    // The metrics pass promtool, the histogram included.
    let (_, body) = gate.admin_get("/metrics");
    assert!(
        body.contains("stsgate_directory_lookup_duration_seconds_count 8"),
        "{body}"
    );
    promtool_check(&body);
}

#[tokio::test]
async fn a_deny_list_of_a_nested_group() {
    let slapd = Slapd::start();
    let up = password_checking_sts().await;
    let rules = r#"
[request_blocking]
use_adaptive = true
[adaptive.user_group]
list = "deny"
groups = ["cn=staff,ou=groups,dc=corp,dc=example,dc=com"]
failure_action = "refuse"
"#;
    let gate = start(rules, &directory(&slapd, ""), &up);
    // Staff holds Legacy-Auth-Allowed, which holds alice and Team (bob).
    assert_eq!(signin(&gate, &up, "alice").await, REFUSED);
    assert_eq!(signin(&gate, &up, "bob@corp.example.com").await, REFUSED);
    assert_eq!(signin(&gate, &up, "carol").await, FORWARDED);
    assert_eq!(signin(&gate, &up, "mallory").await, FORWARDED);
}

#[tokio::test]
async fn a_directory_that_is_down_continue_or_refuse() {
    let mut slapd = Slapd::start();
    slapd.stop();
    let up = password_checking_sts().await;
    let refuse = start(ALLOW, &directory(&slapd, "on_error = \"refuse\""), &up);
    assert_eq!(signin(&refuse, &up, "alice").await, REFUSED);
    let event = refuse.wait_decisions(|d| !d.is_empty())[0].clone();
    assert_eq!(event["stage"], "user_group", "{event}");
    assert!(lookups(&refuse, "error") >= 1.0);
    // Said on /readyz, which stays 200.
    let (status, ready) = refuse.admin_get("/readyz");
    assert_eq!(status, 200);
    assert!(
        ready.contains(&format!(
            "directory {}: failing (on_error = refuse): ",
            slapd.url()
        )),
        "{ready}"
    );
    // A user listed by name does not need the directory.
    assert_eq!(
        signin(&refuse, &up, "svc-scanner@corp.example.com").await,
        FORWARDED
    );

    let cont = start(ALLOW, &directory(&slapd, "on_error = \"continue\""), &up);
    // Decided on users alone: a group-only allow does not fire.
    assert_eq!(signin(&cont, &up, "carol").await, FORWARDED);

    // Back: answers again (errors are not cached).
    slapd.restart();
    let mut answered = false;
    for _ in 0..100 {
        if signin(&refuse, &up, "alice").await == FORWARDED {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "alice passes once slapd is back");
}

#[tokio::test]
async fn a_frozen_directory_does_not_hold_requests() {
    let mut slapd = Slapd::start();
    let up = password_checking_sts().await;
    let gate = start(
        ALLOW,
        &directory(&slapd, "timeout = \"300ms\"\non_error = \"refuse\""),
        &up,
    );
    assert_eq!(signin(&gate, &up, "alice").await, FORWARDED);
    slapd.pause();
    // Answered (refused, on_error = "refuse") while slapd is frozen.
    assert_eq!(signin(&gate, &up, "bob").await, REFUSED);
    assert_eq!(lookups(&gate, "timeout"), 1.0);
    // Cached answers still serve.
    assert_eq!(signin(&gate, &up, "alice").await, FORWARDED);
    slapd.resume();
    // The query under way finishes in the background and fills the cache.
    assert!(gate.wait_until(Duration::from_secs(10), |g| {
        g.metric("stsgate_directory_lookups_total{result=\"found\"}") >= 2.0
    }));
    assert_eq!(signin(&gate, &up, "bob").await, FORWARDED);
}

#[tokio::test]
async fn concurrent_sign_ins_of_one_user_make_one_query() {
    let mut slapd = Slapd::start();
    let up = password_checking_sts().await;
    let gate = start(ALLOW, &directory(&slapd, "timeout = \"10s\""), &up);
    // Connected, then frozen: every sign-in arrives while one query waits.
    assert_eq!(signin(&gate, &up, "carol").await, REFUSED);
    slapd.pause();
    let url = gate.url(USERNAMEMIXED);
    let asks: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                send(
                    &http_client(),
                    post(&url, &[], rst_for("bob@corp.example.com", RIGHT_PASSWORD)),
                )
                .await
                .status
            })
        })
        .collect();
    // (The requests are tasks of this runtime: waited for with its sleep.)
    let mut waited = 0;
    while lookups(&gate, "coalesced") < 5.0 {
        assert!(waited < 400, "5 sign-ins wait on the first one's query");
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    slapd.resume();
    for ask in asks {
        assert_eq!(ask.await.unwrap(), 200);
    }
    // carol and bob: one query each.
    assert_eq!(lookups(&gate, "found"), 2.0);
}

#[test]
fn check_wants_a_directory_for_groups() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), ALLOW).unwrap();
    let config = dir.path().join("stsgate.toml");
    std::fs::write(
        &config,
        "rules = \"rules.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, _, err) = stsgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("rules.toml:7:1: [adaptive.user_group] names groups, which need [directory]"),
        "{err}"
    );

    // With [directory]: its password file must be readable.
    std::fs::write(
        &config,
        "rules = \"rules.toml\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n[directory]\nurl = \"ldap://127.0.0.1:1\"\nbind_dn = \"cn=svc\"\npassword_file = \"missing.secret\"\nbase_dn = \"dc=corp\"\n",
    )
    .unwrap();
    let (code, _, err) = stsgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("stsgate.toml:7:17: directory.password_file: cannot read"),
        "{err}"
    );
    std::fs::write(dir.path().join("missing.secret"), "pw\n").unwrap();
    let (code, out, err) = stsgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "directory ldap://127.0.0.1:1: base dc=corp, timeout 300ms, cache_for 15m, on_error continue"
        ),
        "{out}"
    );
}

fn promtool_check(body: &str) {
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool: scripts/test.sh installs it (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

#[tokio::test]
async fn explain_shows_the_groups_found_or_why_not() {
    let mut slapd = Slapd::start();
    let up = password_checking_sts().await;
    let gate = start(ALLOW, &directory(&slapd, "on_error = \"refuse\""), &up);
    let ask = |user: &str| {
        let (status, report) = gate.api(
            "POST",
            "/api/v1/explain",
            Some(&format!("{{\"ip\": \"192.0.2.1\", \"user\": {user:?}}}")),
        );
        assert_eq!(status, 200, "{report}");
        (
            report["directory"].as_str().unwrap_or("").to_string(),
            report["action"].as_str().unwrap_or("").to_string(),
        )
    };
    // The running gate: POST /api/v1/explain.
    let (said, action) = ask("CORP\\bob");
    assert!(
        said.starts_with("found, in cn=legacy-auth-allowed,ou=groups,dc=corp,dc=example,dc=com"),
        "{said}"
    );
    assert_eq!(action, "forward");
    assert_eq!(
        ask("carol"),
        ("found, in no group".to_string(), "refuse".to_string())
    );
    assert_eq!(
        ask("mallory"),
        (
            "no such user in the directory".to_string(),
            "refuse".to_string()
        )
    );
    assert_eq!(
        ask("svc-scanner@corp.example.com"),
        (
            "not asked: the user is listed by name in users".to_string(),
            "forward".to_string()
        )
    );

    // Offline: stsgate explain with the config, its own connection.
    let dir = gate.stop();
    let config = dir.path().join("stsgate.toml");
    let explain = |user: &str| {
        let (code, out, err) = stsgate(&[
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--ip",
            "192.0.2.1",
            "--user",
            user,
        ]);
        assert_eq!(code, 0, "{err}");
        out
    };
    let out = explain("alice@corp.example.com");
    assert!(
        out.contains(
            "directory found, in cn=legacy-auth-allowed,ou=groups,dc=corp,dc=example,dc=com; cn=staff,ou=groups,dc=corp,dc=example,dc=com"
        ),
        "{out}"
    );
    slapd.stop();
    let out = explain("alice");
    assert!(out.contains("directory unavailable:"), "{out}");
    assert!(out.contains("user_group"), "{out}");
}

#[tokio::test]
async fn ldaps_verified_with_the_system_roots_or_ca_file() {
    let certs = Certs::new();
    let slapd = Slapd::start_tls(&certs.chain_pem, &certs.key_pem);
    let ca = tempfile::tempdir().unwrap();
    let ca_file = ca.path().join("directory-ca.pem");
    std::fs::write(&ca_file, &certs.ca_pem).unwrap();
    let up = password_checking_sts().await;
    let more = format!("ca_file = \"{}\"\non_error = \"refuse\"", ca_file.display());
    let gate = start(ALLOW, &directory_at(&slapd.ldaps_url(), &slapd, &more), &up);
    assert_eq!(signin(&gate, &up, "alice").await, FORWARDED);
    assert_eq!(signin(&gate, &up, "carol").await, REFUSED);
    assert_eq!(lookups(&gate, "found"), 2.0);

    // Without the CA: the server's certificate is not trusted, nothing is sent.
    let gate = start(
        ALLOW,
        &directory_at(&slapd.ldaps_url(), &slapd, "on_error = \"refuse\""),
        &up,
    );
    assert_eq!(signin(&gate, &up, "alice").await, REFUSED);
    let (_, ready) = gate.admin_get("/readyz");
    assert!(ready.contains("failing (on_error = refuse)"), "{ready}");
    assert!(ready.to_lowercase().contains("certificate"), "{ready}");
}
