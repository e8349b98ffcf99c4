//! The admin page (`GET /ui`, issue 13) in a real headless Chromium driven
//! through chromedriver, against the real binary: sign in, the views, every
//! action (each confirmed, each logged as done by `admin-ui`), hostile user
//! names and user agents rendered as text, a wrong token, a read-only token.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`
//! (`scripts/test.sh` installs them); without them these tests fail saying so.
//! With `STSGATE_UI_SCREENSHOT=FILE` the main test also writes its
//! screenshot of the page there (`scripts/ui-screenshot.sh` makes
//! `docs/admin-ui.png` that way).

use std::time::Duration;

use serde_json::json;
use stsgate_tests::browser::Browser;
use stsgate_tests::*;

const ADMIN_TOKEN: &str = "ui-admin-token-0123456789";
const READ_TOKEN: &str = "ui-read-token-9876543210";

/// Refuses spray-tool user agents (and anything saying "onerror"); locks a
/// user after three failures from unfamiliar addresses.
const RULES: &str = "[request_blocking]\nenabled = true\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python-requests\", \"onerror\"]\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n";

/// A gate in front of `upstream` with both tokens; `admin` lines go in
/// `[admin]` (after `addr`, `token_file`, `read_token_file`).
fn start(upstream: &Upstream, admin_addr: &str, admin: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("read.token"), format!("{READ_TOKEN}\n")).unwrap();
    let config = format!(
        "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n[admin]\naddr = \"{admin_addr}\"\ntoken_file = \"admin.token\"\nread_token_file = \"read.token\"\n{admin}\n[state]\ndir = \"state\"\n[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n",
        upstream.addr
    );
    std::fs::write(dir.path().join("stsgate.toml"), config).unwrap();
    Gate::spawn(dir, ADMIN_TOKEN.to_string())
}

/// The admin page's address as the browser reaches it.
fn page(gate: &Gate) -> String {
    format!("http://127.0.0.1:{}/ui", gate.admin.port())
}

/// One sign-in through the gate from `from` (a trusted-proxy header).
async fn signin(gate: &Gate, user: &str, password: &str, from: &str, agent: Option<&str>) -> u16 {
    let mut headers = vec![("x-ms-forwarded-client-ip", from)];
    if let Some(agent) = agent {
        headers.push(("x-ms-client-user-agent", agent));
    }
    send(
        &http_client(),
        post(&gate.url(USERNAMEMIXED), &headers, rst_for(user, password)),
    )
    .await
    .status
}

/// Locks `user`: three distinct wrong passwords from unfamiliar addresses.
async fn lock(gate: &Gate, user: &str) {
    for i in 1..=3 {
        signin(
            gate,
            user,
            &format!("wrong{i}"),
            &format!("192.0.2.{i}"),
            None,
        )
        .await;
    }
    assert!(
        gate.wait_until(Duration::from_secs(5), |g| {
            g.api("GET", "/api/v1/lockouts", None)
                .1
                .as_array()
                .is_some_and(|l| {
                    l.iter()
                        .any(|x| x["user"].as_str() == Some(&user.to_lowercase()))
                })
        }),
        "{user} never locked"
    );
}

fn sign_in(b: &Browser, token: &str) {
    b.type_into("#token", token);
    b.click("#signin-button");
    b.wait_text("#who", "stsgate");
}

/// Clicks the confirm dialog's button after checking what it asks.
fn confirm(b: &Browser, asks: &str) {
    b.wait_text("#confirm-text", asks);
    b.click("#confirm-yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_views_and_every_action() {
    let upstream = password_checking_sts().await;
    let gate = start(&upstream, "127.0.0.1:0", "");
    let b = Browser::start();
    b.goto(&page(&gate));
    assert_eq!(b.run("return document.title", json!([])), "stsgate admin");

    // A wrong token: refused, with a clear message, and nothing shown.
    b.type_into("#token", "not-the-token");
    b.click("#signin-button");
    b.wait_text("#signin-error", "Wrong token");
    assert!(!b.visible("#main"));

    sign_in(&b, ADMIN_TOKEN);
    assert!(!b.text("#who").contains("read-only"));
    // The token lives in this tab's sessionStorage, never in a cookie.
    assert_eq!(
        b.run(
            "return [document.cookie, sessionStorage.getItem('stsgate.admin.token')]",
            json!([])
        ),
        json!(["", ADMIN_TOKEN])
    );

    // The rule set in force.
    let rules = b.wait_text("#rules", "SHA-256");
    assert!(
        rules.contains("wstrust.toml") && rules.contains("start"),
        "{rules}"
    );
    b.wait_text(
        "#rules-summary",
        "request_blocking.user_agent: deny list, 2 entries",
    );

    // A block added through the API (a SOAR) appears, with its origin and reason.
    let (status, soar) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "198.51.100.23", "ttl": "2h", "reason": "SOAR case 17", "origin": "soar"}"#),
    );
    assert_eq!(status, 201, "{soar}");
    let row = format!("#blocks tr[data-id=\"{}\"]", soar["id"].as_str().unwrap());
    let shown = b.wait_text(&row, "198.51.100.23");
    assert!(
        shown.contains("soar") && shown.contains("SOAR case 17") && shown.contains("1h"),
        "{shown}"
    );

    // Remove, then cancel: nothing happens.
    b.click(&format!("{row} button"));
    b.wait_text("#confirm-text", "Remove block");
    b.click("#confirm-no");
    b.wait_text("#status", "Cancelled");
    assert_eq!(
        gate.api("GET", "/api/v1/blocks", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Add a user block from the page: confirmed, then live, with origin admin-ui.
    b.select("#block-kind", "user");
    b.type_into("#block-target", "Mallory@Contoso.com");
    b.type_into("#block-ttl", "30m");
    b.select("#block-action", "require_2fa");
    b.type_into("#block-reason", "help desk ticket 4711");
    b.click("#block-add");
    confirm(&b, "Block user Mallory@Contoso.com for 30m (require_2fa)?");
    b.wait_text("#status", "created");
    let (_, found) = gate.api("GET", "/api/v1/blocks?user=mallory@contoso.com", None);
    let mallory = found[0].clone();
    assert_eq!(mallory["origin"], "admin-ui", "{found}");
    assert_eq!(mallory["action"], "require_2fa");
    assert_eq!(mallory["reason"], "help desk ticket 4711");
    assert!(
        gate.wait_stderr("origin=admin-ui"),
        "block added by the page not logged as such"
    );
    let mrow = format!(
        "#blocks tr[data-id=\"{}\"]",
        mallory["id"].as_str().unwrap()
    );
    b.wait_text(&mrow, "admin-ui");

    // Remove it from the page.
    b.click(&format!("{mrow} button"));
    confirm(&b, "Remove block");
    b.wait_text("#status", "removed");
    b.wait_no_text("#blocks", "mallory@contoso.com");
    let (status, _) = gate.api(
        "GET",
        &format!("/api/v1/blocks/{}", mallory["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 404);
    assert!(
        gate.stderr()
            .iter()
            .any(|l| l.contains("block removed through the API") && l.contains("origin=admin-ui")),
        "removal by the page not logged as such"
    );

    // Unlock a locked user.
    lock(&gate, "bob@contoso.com").await;
    let urow = "#lockouts tr[data-user=\"bob@contoso.com\"]";
    let shown = b.wait_text(urow, "bob@contoso.com");
    assert!(shown.contains('3'), "{shown}");
    b.click(&format!("{urow} button"));
    confirm(&b, "Unlock bob@contoso.com");
    b.wait_text("#status", "bob@contoso.com unlocked");
    assert_eq!(gate.api("GET", "/api/v1/lockouts", None).1, json!([]));
    b.wait_no_text("#lockouts", "bob@contoso.com");
    assert!(gate.wait_stderr("lockout reset through the API"));
    assert!(
        gate.stderr()
            .iter()
            .any(|l| l.contains("lockout reset through the API") && l.contains("origin=admin-ui"))
    );

    // Recent refusals and failed sign-ins: bob's failures, a refused user agent.
    assert_eq!(
        signin(
            &gate,
            "carol@contoso.com",
            RIGHT_PASSWORD,
            "203.0.113.9",
            Some("python-requests/2.32")
        )
        .await,
        500
    );
    let events = b.wait_text("#events", "python-requests/2.32");
    assert!(
        events.contains("user_agent") && events.contains("refuse"),
        "{events}"
    );
    b.wait_text("#events", "bob@contoso.com");

    // Rates by stage and action (the second sample gives a rate).
    b.wait_text("#rates", "user_agent");
    b.wait_for(
        "a rate in the table",
        "return [...document.querySelectorAll('#rates tbody td:nth-child(3)')].some(td => td.textContent !== '…')",
    );
    b.wait_text("#legend", "forward");

    // Explain: the live corridor on a described request.
    b.type_into("#explain-ip", "198.51.100.23");
    b.type_into("#explain-user", "dave@contoso.com");
    b.click("#explain-run");
    let decision = b.wait_text("#explain-decision", "dynamic_block");
    assert!(
        decision.contains("refuse") && decision.contains(soar["id"].as_str().unwrap()),
        "{decision}"
    );
    b.wait_text("#explain-steps", "a live block on the client IP");
    b.type_into("#explain-ip", "203.0.113.5");
    b.type_into(
        "#explain-headers",
        "X-MS-Client-User-Agent: python-requests/2.31",
    );
    b.click("#explain-run");
    b.wait_text("#explain-decision", "stage user_agent, action refuse");
    b.wait_text("#explain-steps", "python-requests");

    // Reload, confirmed; the rules view says who reloaded.
    b.click("#reload");
    confirm(&b, "Reload the rule file");
    b.wait_text("#reload-result", "Reloaded");
    b.wait_text("#rules", "(admin-ui)");
    assert!(gate.wait_stderr("trigger=\"admin-ui\"") || gate.wait_stderr("trigger=admin-ui"));

    // The main view, for the README, with some traffic: sign-ins that pass,
    // and refusals of the blocked address.
    for i in 1..=4 {
        let from = format!("10.1.1.{i}");
        assert_eq!(
            signin(&gate, "erin@contoso.com", RIGHT_PASSWORD, &from, None).await,
            200
        );
    }
    for _ in 0..3 {
        assert_eq!(
            signin(&gate, "erin@contoso.com", "guess", "198.51.100.23", None).await,
            500
        );
    }
    b.wait_text("#rates", "dynamic_block");
    std::thread::sleep(Duration::from_millis(3500));
    b.run("window.scrollTo(0, 0)", json!([]));
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    if let Ok(path) = std::env::var("STSGATE_UI_SCREENSHOT") {
        std::fs::write(&path, &png).unwrap();
    }

    // Signing out forgets the token.
    b.click("#signout");
    b.wait_text("#signin-error", "Signed out");
    assert_eq!(b.run("return sessionStorage.length", json!([])), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_user_names_and_user_agents_render_as_text() {
    let upstream = password_checking_sts().await;
    let gate = start(&upstream, "127.0.0.1:0", "");
    let payload = r#"<img src=x onerror="window.__xss=1;document.title='pwned'">"#;
    // A refused request carrying it as its user agent...
    let agent = format!("{payload} onerror");
    assert_eq!(
        signin(&gate, "eve@contoso.com", "x", "203.0.113.66", Some(&agent)).await,
        500
    );
    // ...and a user locked under it as a name.
    let user = format!("{payload}@contoso.com");
    lock(&gate, &user).await;
    // A block whose reason and target are markup.
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(&json!({"user": user, "ttl": "1h", "reason": "<b>bold</b><script>window.__xss=2</script>"}).to_string()),
    );
    assert_eq!(status, 201);

    let b = Browser::start();
    b.goto(&page(&gate));
    sign_in(&b, ADMIN_TOKEN);
    b.wait_text("#events", &agent);
    b.wait_text("#events", &user.to_lowercase());
    b.wait_text("#lockouts", &user.to_lowercase());
    b.wait_text("#blocks", "<script>window.__xss=2</script>");
    // Its unlock dialog shows it as text too.
    b.click("#lockouts tbody tr button");
    b.wait_text("#confirm-text", &user.to_lowercase());
    b.click("#confirm-no");
    // Nothing ran, and no element was made from the data.
    assert_eq!(
        b.run(
            "return [typeof window.__xss, document.title, document.querySelectorAll('main img, main script, main b').length]",
            json!([])
        ),
        json!(["undefined", "stsgate admin", 0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_token_sees_but_cannot_act() {
    let upstream = password_checking_sts().await;
    let gate = start(&upstream, "127.0.0.1:0", "");
    let (status, block) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "198.51.100.50", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    let id = block["id"].as_str().unwrap();
    lock(&gate, "frank@contoso.com").await;

    // The API: reading works, acting is 403 and changes nothing.
    let read = Some(READ_TOKEN);
    assert_eq!(
        gate.api_as(read, "GET", "/api/v1/whoami", None).1["access"],
        "read"
    );
    assert_eq!(
        gate.api_as(Some(ADMIN_TOKEN), "GET", "/api/v1/whoami", None)
            .1["access"],
        "full"
    );
    for path in [
        "/api/v1/blocks",
        "/api/v1/lockouts",
        "/api/v1/events",
        "/api/v1/stats",
        "/api/v1/rules",
    ] {
        assert_eq!(gate.api_as(read, "GET", path, None).0, 200, "{path}");
    }
    let (status, report) = gate.api_as(
        read,
        "POST",
        "/api/v1/explain",
        Some(r#"{"ip": "198.51.100.50"}"#),
    );
    assert_eq!(
        (status, report["stage"].as_str()),
        (200, Some("dynamic_block"))
    );
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/blocks".to_string(),
            Some(r#"{"ip": "198.51.100.51", "ttl": "1h"}"#),
        ),
        ("DELETE", format!("/api/v1/blocks/{id}"), None),
        (
            "DELETE",
            "/api/v1/lockouts/frank@contoso.com".to_string(),
            None,
        ),
        ("POST", "/api/v1/reload".to_string(), None),
    ] {
        let (status, answer) = gate.api_as(read, method, &path, body);
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    assert_eq!(
        gate.api("GET", "/api/v1/blocks", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        gate.api("GET", "/api/v1/lockouts", None)
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        gate.api_as(Some("wrong"), "GET", "/api/v1/blocks", None).0,
        401
    );

    // The page: everything shown, no action offered.
    let b = Browser::start();
    b.goto(&page(&gate));
    sign_in(&b, READ_TOKEN);
    b.wait_text("#who", "read-only");
    b.wait_text("#blocks", "198.51.100.50");
    b.wait_text("#lockouts", "frank@contoso.com");
    for action in [
        "#block-form",
        "#reload",
        "#blocks tbody button",
        "#lockouts tbody button",
    ] {
        assert!(!b.visible(action), "{action} offered to a read-only token");
    }
    assert_eq!(
        b.run("return [...document.querySelectorAll('.act button, button.act')].every(b => b.disabled)", json!([])),
        true
    );
    // Explain is reading: it works.
    b.type_into("#explain-ip", "198.51.100.50");
    b.click("#explain-run");
    b.wait_text("#explain-decision", "dynamic_block");
    // Even a forced click is refused by the gate, and said so.
    b.run("document.getElementById('reload').disabled = false; document.getElementById('reload').click();", json!([]));
    b.click("#confirm-yes");
    b.wait_text("#reload-result", "may only read");
}

/// The whole answer (status line, headers, body) to a GET on the admin listener.
fn get_all(gate: &Gate, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gate.admin.port()));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.to_ascii_lowercase()
}

#[tokio::test]
async fn the_page_is_hardened_and_off_where_it_should_be() {
    let upstream = Upstream::start().await;
    let gate = start(&upstream, "127.0.0.1:0", "");
    let page = get_all(&gate, "/ui");
    assert!(page.starts_with("http/1.1 200"), "{page}");
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n",
        "x-content-type-options: nosniff\r\n",
        "referrer-policy: no-referrer\r\n",
        "cache-control: no-store\r\n",
        "content-type: text/html; charset=utf-8\r\n",
    ] {
        assert!(page.contains(header), "missing {header:?} in {page}");
    }
    assert!(get_all(&gate, "/ui/app.js").contains("content-type: text/javascript"));
    assert!(get_all(&gate, "/ui/app.css").contains("content-type: text/css"));
    assert!(get_all(&gate, "/ui/other").starts_with("http/1.1 404"));
    let api = get_all(&gate, "/api/v1/whoami");
    assert!(api.starts_with("http/1.1 401"), "{api}");
    drop(gate);

    // admin.ui = false: off, even on loopback.
    let gate = start(&upstream, "127.0.0.1:0", "ui = false");
    assert!(get_all(&gate, "/ui").starts_with("http/1.1 404"));
    assert_eq!(gate.api("GET", "/api/v1/whoami", None).0, 200);
    drop(gate);

    // A non-loopback admin address: off unless admin.ui = true.
    let gate = start(&upstream, "0.0.0.0:0", "");
    assert!(get_all(&gate, "/ui").starts_with("http/1.1 404"));
    drop(gate);
    let gate = start(&upstream, "0.0.0.0:0", "ui = true");
    assert!(get_all(&gate, "/ui").starts_with("http/1.1 200"));
}

#[test]
fn check_reports_a_bad_read_token_file_where_it_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), RULES).unwrap();
    std::fs::write(dir.path().join("admin.token"), "same-token\n").unwrap();
    std::fs::write(dir.path().join("same.token"), "same-token\n").unwrap();
    let config = dir.path().join("stsgate.toml");
    let shown = config.display().to_string();
    for (file, problem) in [
        ("missing.token", "admin.read_token_file: cannot read"),
        ("same.token", "the read-only token is the admin token"),
    ] {
        std::fs::write(
            &config,
            format!(
                "rules = \"rules/wstrust.toml\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[admin]\ntoken_file = \"admin.token\"\nread_token_file = \"{file}\"\nui = true\n"
            ),
        )
        .unwrap();
        let (code, _, err) = stsgate(&["check", "--config", &shown]);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{shown}:6:19: ")) && err.contains(problem),
            "{err}"
        );
    }
}
