//! Gate state through the running binary (PRODUCT.md §3.3, §4.5, issue 6):
//! the blocks API and its validation, IP and user blocks enforced in stage 2
//! whatever the rule file says, require_2fa, expiry, persistence across a
//! restart and a kill -9, a corrupt store, the CLI and `explain`.

use std::time::Duration;

use stsgate_tests::*;

const TRUST_LOOPBACK: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n";
/// Rules that refuse nothing: stage 2 must act on its own.
const OPEN_RULES: &str = "[request_blocking]\nenabled = false\n";

async fn gate() -> (Gate, Upstream) {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(OPEN_RULES, &upstream)
    });
    (gate, upstream)
}

/// POSTs a sign-in for `user` from client IP `client` (via the trusted loopback proxy).
async fn signin(gate: &Gate, client: &str, body: impl Into<bytes::Bytes>) -> Got {
    send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", client)],
            body,
        ),
    )
    .await
}

fn add(gate: &Gate, body: &str) -> serde_json::Value {
    let (status, v) = gate.api("POST", "/api/v1/blocks", Some(body));
    assert!(status == 201 || status == 200, "{status} {v}");
    v
}

#[tokio::test]
async fn api_needs_the_token_and_names_every_bad_field() {
    let (gate, _up) = gate().await;
    let block = r#"{"ip": "192.0.2.1", "ttl": "1h"}"#;
    assert_eq!(
        gate.api_as(None, "POST", "/api/v1/blocks", Some(block)).0,
        401
    );
    assert_eq!(
        gate.api_as(
            Some("wrong-token-0123456789"),
            "POST",
            "/api/v1/blocks",
            Some(block)
        )
        .0,
        401
    );
    assert_eq!(gate.api_as(None, "GET", "/api/v1/blocks", None).0, 401);
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let req = format!(
        "GET /api/v1/blocks HTTP/1.1\r\nHost: a\r\nAuthorization: bearer {}\r\nConnection: close\r\n\r\n",
        gate.token
    );
    assert_eq!(raw(gate.admin, req.as_bytes()).0, 200);

    for (body, status, field, words) in [
        (r#"{"ip": "192.0.2.300", "ttl": "1h"}"#, 422, "ip", "ip:"),
        (
            r#"{"ip": "192.0.2.1", "ttl": "forever"}"#,
            422,
            "ttl",
            "ttl:",
        ),
        (
            r#"{"ip": "192.0.2.1", "ttl": "31d"}"#,
            422,
            "ttl",
            "max_ttl",
        ),
        (r#"{"ip": "192.0.2.1"}"#, 422, "ttl", "missing ttl"),
        (
            r#"{"ip": "192.0.2.1", "user": "a@b", "ttl": "1h"}"#,
            422,
            "ip",
            "not both",
        ),
        (
            r#"{"ip": "192.0.2.1", "ttl": "1h", "actoin": "refuse"}"#,
            422,
            "",
            "unknown field",
        ),
        (
            r#"{"ip": "192.0.2.1", "ttl": "1h", "action": "ban"}"#,
            422,
            "action",
            "unknown action",
        ),
        (r#"{"ip": "192.0.2.1", "ttl": "1h""#, 400, "", "not JSON"),
        ("not json at all", 400, "", "not JSON"),
    ] {
        let (got, v) = gate.api("POST", "/api/v1/blocks", Some(body));
        assert_eq!(got, status, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(words),
            "{body}: {v}"
        );
        assert_eq!(v["field"].as_str().unwrap_or(""), field, "{body}: {v}");
    }
    let huge = format!(
        r#"{{"ip": "192.0.2.1", "ttl": "1h", "reason": "{}"}}"#,
        "x".repeat(70_000)
    );
    assert_eq!(gate.api("POST", "/api/v1/blocks", Some(&huge)).0, 413);
    assert_eq!(gate.api("GET", "/api/v1/blocks/b-nosuchblock", None).0, 404);
    assert_eq!(
        gate.api("DELETE", "/api/v1/blocks/b-nosuchblock", None).0,
        404
    );
    assert_eq!(gate.api("PUT", "/api/v1/blocks", None).0, 405);
}

#[tokio::test]
async fn ip_blocks_in_every_notation_refuse_in_stage_two() {
    let (gate, upstream) = gate().await;
    let rst = fixture("rst-2005-usernamemixed.xml");
    for ip in [
        "198.51.100.7",
        "203.0.113.0/24",
        "192.0.2.10-192.0.2.20",
        "5.143.*.*",
        "2001:db8::/32",
    ] {
        let v = add(
            &gate,
            &format!(r#"{{"ip": "{ip}", "ttl": "1h", "reason": "test"}}"#),
        );
        assert_eq!(v["action"], "refuse");
        assert!(v["id"].as_str().unwrap().starts_with("b-"), "{v}");
        assert!(v["expires_at"].as_str().unwrap().ends_with('Z'), "{v}");
    }
    for client in [
        "198.51.100.7",
        "203.0.113.99",
        "192.0.2.15",
        "5.143.200.1",
        "2001:db8::1",
    ] {
        let got = signin(&gate, client, rst.clone()).await;
        assert_eq!(got.status, 500, "{client} refused like a failed sign-in");
        assert!(got.text().contains("FailedAuthentication"), "{client}");
    }
    assert_eq!(upstream.count(), 0, "nothing refused reached the STS");
    for client in ["198.51.100.8", "192.0.2.21", "5.144.0.1", "2001:db9::1"] {
        assert_eq!(
            signin(&gate, client, rst.clone()).await.status,
            200,
            "{client}"
        );
    }
    assert_eq!(upstream.count(), 4);
    let refused = gate
        .wait_decisions(|d| d.len() >= 5)
        .into_iter()
        .filter(|d| d["stage"] == "dynamic_block")
        .collect::<Vec<_>>();
    assert!(refused.len() >= 5, "{refused:?}");
    assert_eq!(refused[0]["list"], "ip");
    assert_eq!(refused[0]["action"], "refuse");
    assert!(refused[0]["entry"].as_str().unwrap().contains("(test)"));
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"dynamic_block\"}"),
        5.0
    );
    assert_eq!(gate.metric("stsgate_blocks_active{kind=\"ip\"}"), 5.0);
    assert_eq!(gate.metric("stsgate_blocks_active{kind=\"user\"}"), 0.0);
    assert_eq!(gate.metric("stsgate_build_info{version=\"0.1.0\"}"), 1.0);
}

#[tokio::test]
async fn user_blocks_read_the_username_token_in_both_versions() {
    let (gate, upstream) = gate().await;
    add(&gate, r#"{"user": "D'Arcy@Contoso.com", "ttl": "4h"}"#);
    add(&gate, r#"{"user": "contoso\\ALICE", "ttl": "4h"}"#);
    add(&gate, r#"{"user": "Zoë <admin>@contoso.com", "ttl": "4h"}"#);
    // The 2005 fixture (wsse prefixes, &apos;) and the 1.3 one (o/trust prefixes, DOMAIN\user).
    for (body, what) in [
        (fixture("rst-2005-usernamemixed.xml"), "2005 d'arcy"),
        (fixture("rst-13-usernamemixed.xml"), "1.3 CONTOSO\\alice"),
        (
            rst_for("zoË <ADMIN>@contoso.com", "x").into_bytes(),
            "escapes and case",
        ),
    ] {
        let got = signin(&gate, "192.0.2.1", body).await;
        assert_eq!(got.status, 500, "{what}");
    }
    assert_eq!(upstream.count(), 0);
    assert_eq!(
        signin(&gate, "192.0.2.1", rst_for("bob@contoso.com", "x"))
            .await
            .status,
        200
    );
    let d = gate.wait_decisions(|d| d.len() >= 4);
    assert_eq!(d[0]["list"], "user");
    assert_eq!(d[0]["user"], "d'arcy@contoso.com");
    assert_eq!(gate.metric("stsgate_blocks_active{kind=\"user\"}"), 3.0);
    let (status, list) = gate.api("GET", "/api/v1/blocks?user=CONTOSO%5Calice", None);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["user"], "contoso\\alice");
}

#[tokio::test]
async fn require_2fa_forwards_with_the_step_up_header() {
    let (gate, upstream) = gate().await;
    add(
        &gate,
        r#"{"user": "alice@contoso.com", "ttl": "4h", "action": "require_2fa", "reason": "SOAR: unusual activity"}"#,
    );
    let got = signin(&gate, "192.0.2.1", rst_for("Alice@contoso.com", "pw")).await;
    assert_eq!(got.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-stsgate-step-up"], "required");
    let d = gate.wait_decisions(|d| !d.is_empty());
    assert_eq!(
        (d[0]["stage"].as_str(), d[0]["action"].as_str()),
        (Some("dynamic_block"), Some("require_2fa"))
    );
    // Another user is untouched.
    signin(&gate, "192.0.2.1", rst_for("bob@contoso.com", "pw")).await;
    assert!(
        upstream.seen()[1]
            .headers
            .get("x-stsgate-step-up")
            .is_none()
    );
}

#[tokio::test]
async fn blocks_are_listed_extended_deleted_and_expire() {
    let (gate, upstream) = gate().await;
    let first = add(&gate, r#"{"ip": "198.51.100.0/24", "ttl": 60}"#);
    let (status, again) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "198.51.100.0/24", "ttl": "2h", "reason": "again"}"#),
    );
    assert_eq!(
        status, 200,
        "the same block posted twice is extended: {again}"
    );
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["result"], "extended");
    assert!(again["ttl_left_seconds"].as_u64().unwrap() > 3600);
    let id = first["id"].as_str().unwrap();
    let (status, one) = gate.api("GET", &format!("/api/v1/blocks/{id}"), None);
    assert_eq!((status, one["reason"].as_str()), (200, Some("again")));
    let (_, list) = gate.api("GET", "/api/v1/blocks?ip=198.51.100.200", None);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, list) = gate.api("GET", "/api/v1/blocks?ip=198.51.101.1", None);
    assert_eq!(list.as_array().unwrap().len(), 0);
    assert_eq!(
        gate.api("DELETE", &format!("/api/v1/blocks/{id}"), None).0,
        204
    );
    assert_eq!(
        gate.api("DELETE", &format!("/api/v1/blocks/{id}"), None).0,
        404
    );
    let rst = fixture("rst-2005-usernamemixed.xml");
    assert_eq!(signin(&gate, "198.51.100.9", rst.clone()).await.status, 200);

    // A one-second block: enforced, then gone by itself.
    add(&gate, r#"{"ip": "192.0.2.77", "ttl": 1}"#);
    assert_eq!(signin(&gate, "192.0.2.77", rst.clone()).await.status, 500);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(signin(&gate, "192.0.2.77", rst.clone()).await.status, 200);
    assert!(gate.wait_until(Duration::from_secs(3), |g| {
        g.api("GET", "/api/v1/blocks", None)
            .1
            .as_array()
            .is_some_and(|a| a.is_empty())
    }));
    assert!(gate.wait_stderr("block expired"));
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn blocks_survive_a_restart_and_a_kill_during_writes() {
    let (gate, upstream) = gate().await;
    add(
        &gate,
        r#"{"user": "eve@contoso.com", "ttl": "1h", "reason": "kept"}"#,
    );
    let gate = gate.restart(false);
    let (_, list) = gate.api("GET", "/api/v1/blocks", None);
    assert_eq!(list[0]["reason"], "kept", "{list}");
    assert_eq!(
        signin(&gate, "192.0.2.1", rst_for("eve@contoso.com", "x"))
            .await
            .status,
        500
    );
    // A burst of writes, killed in the middle: what was answered 201 before
    // the store caught up may be lost, but the store opens and holds a
    // consistent prefix.
    let body: Vec<String> = (0..200)
        .map(|i| format!(r#"{{"ip": "10.9.{}.{}", "ttl": "1h"}}"#, i / 250, i % 250))
        .collect();
    for chunk in body.chunks(20) {
        let arr = format!("[{}]", chunk.join(","));
        assert_eq!(gate.api("POST", "/api/v1/blocks", Some(&arr)).0, 201);
    }
    let gate = gate.restart(true);
    let (status, list) = gate.api("GET", "/api/v1/blocks", None);
    assert_eq!(status, 200);
    let n = list.as_array().unwrap().len();
    assert!((1..=201).contains(&n), "{n} blocks after kill -9");
    assert!(
        gate.stderr()
            .iter()
            .any(|l| l.contains("gate state loaded"))
    );
    drop(upstream);
}

#[tokio::test]
async fn a_corrupt_store_is_a_clear_error_at_start() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(OPEN_RULES, &upstream));
    let kept = gate.stop();
    let dir = kept.path();
    let config = dir.join("stsgate.toml");
    std::fs::write(dir.join("state/state.redb"), b"garbage, not a database").unwrap();
    let (code, _out, err) = stsgate(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("state.redb"), "{err}");
}

#[tokio::test]
async fn cli_and_explain_see_live_blocks() {
    let (gate, _up) = gate().await;
    let config = gate.dir.path().join("stsgate.toml");
    let config = config.to_str().unwrap();
    let admin = format!("http://{}", gate.admin);
    let (code, out, err) = stsgate(&[
        "block",
        "add",
        "--ip",
        "198.51.100.0/24",
        "--ttl",
        "4h",
        "--reason",
        "from the shell",
        "--config",
        config,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ip 198.51.100.0/24") && out.contains("refuse"),
        "{out}"
    );
    let id = out.split_whitespace().next().unwrap().to_string();
    let (code, out, err) = stsgate(&["block", "list", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("origin cli"), "{out}");
    let (code, out, _) = stsgate(&["block", "list", "--json", "--config", config]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["id"], id.as_str());

    // explain: the running gate holds the store, so it asks the gate.
    let report = gate.explain_json(&["--ip", "198.51.100.5"]);
    assert_eq!(report["stage"], "dynamic_block", "{report}");
    assert_eq!(report["action"], "refuse");
    assert_eq!(report["state"], "live");
    assert_eq!(report["steps"][0]["stage"], "dynamic_block");
    assert!(
        report["entry"]["text"]
            .as_str()
            .unwrap()
            .contains("from the shell")
    );
    let (code, out, _) = stsgate(&[
        "explain",
        "--config",
        config,
        "--admin",
        &admin,
        "--ip",
        "198.51.100.5",
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("FIRED") && out.contains("dynamic_block"),
        "{out}"
    );

    // Wrong token, gate not running: clear errors.
    let bad = gate.dir.path().join("bad.token");
    std::fs::write(&bad, "nope-nope-nope\n").unwrap();
    let (code, _, err) = stsgate(&[
        "block",
        "list",
        "--admin",
        &admin,
        "--token-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("refused the admin token"), "{err}");
    let (code, _, err) = stsgate(&[
        "block",
        "remove",
        &id,
        "--admin",
        "http://127.0.0.1:9",
        "--token-file",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
    let (code, out, err) = stsgate(&["block", "remove", &id, "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"));

    // Stopped gate: explain reads the stored state itself.
    stsgate(&[
        "block",
        "add",
        "--user",
        "mallory@contoso.com",
        "--ttl",
        "1h",
        "--config",
        config,
    ]);
    let kept = gate.stop();
    let (code, out, err) = stsgate(&[
        "explain",
        "--config",
        kept.path().join("stsgate.toml").to_str().unwrap(),
        "--ip",
        "192.0.2.1",
        "--user",
        "Mallory@Contoso.com",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["stage"].as_str(), v["state"].as_str()),
        (Some("dynamic_block"), Some("stored")),
        "{v}"
    );
}
