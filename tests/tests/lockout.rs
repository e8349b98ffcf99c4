//! Smart lockout and the spray defence through the running binary, in front
//! of a loopback STS that answers like ADFS (a success for the right
//! password, the FailedAuthentication fault otherwise): PRODUCT.md §4.4.

use std::time::Duration;

use stsgate_tests::*;

const TRUST_LOOPBACK: &str =
    "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n";

fn rules(window: &str) -> String {
    format!(
        "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"{window}\"\nfamiliar_for = \"1h\"\n[spray]\ndistinct_users = 4\nsame_password_users = 3\nwindow = \"10m\"\nblock_for = \"1h\"\n"
    )
}

use stsgate_tests::RIGHT_PASSWORD as RIGHT;

/// An upstream that checks the password like an STS.
async fn sts() -> Upstream {
    password_checking_sts().await
}

async fn start(window: &str) -> (Gate, Upstream) {
    let upstream = sts().await;
    let rules = rules(window);
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(&rules, &upstream)
    });
    (gate, upstream)
}

/// One sign-in: (status the client got, whether it reached the STS).
async fn signin(gate: &Gate, up: &Upstream, user: &str, password: &str, from: &str) -> (u16, bool) {
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
    (got.status, up.count() > before)
}

/// The decision-log event of the `n`th filtered request (1-based).
fn decision(gate: &Gate, n: usize) -> serde_json::Value {
    gate.wait_decisions(|d| d.len() >= n)[n - 1].clone()
}

#[tokio::test]
async fn unfamiliar_locations_are_locked_out_familiar_ones_pass() {
    let (gate, up) = start("30m").await;
    // Alice at home: 10.0.0.1 becomes familiar.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, "10.0.0.1").await,
        (200, true)
    );
    // Three distinct wrong guesses from elsewhere reach the STS...
    for (i, from) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let got = signin(&gate, &up, "Alice@Contoso.com", &format!("guess{i}"), from).await;
        assert_eq!(got, (500, true), "{from}");
    }
    // ...then the user is locked for unfamiliar locations: refused at the gate.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", "guess9", "192.0.2.4").await,
        (500, false)
    );
    let d = decision(&gate, 5);
    assert_eq!(
        (d["stage"].as_str(), d["action"].as_str()),
        (Some("lockout"), Some("refuse"))
    );
    assert_eq!(d["list"], "unfamiliar");
    // Home still works, and does not reset the attacker's count.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, "10.0.0.1").await,
        (200, true)
    );
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", "guess10", "192.0.2.5").await,
        (500, false)
    );
    // The right password from an unfamiliar IP while locked: refused, and a possible compromise.
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", RIGHT, "203.0.113.50").await,
        (500, false)
    );
    assert!(gate.wait_stderr("possible compromise"));

    let (status, locked) = gate.api("GET", "/api/v1/lockouts", None);
    assert_eq!(status, 200);
    assert_eq!(locked[0]["user"], "alice@contoso.com", "{locked}");
    assert_eq!(locked[0]["unfamiliar_failures"], 3);
    assert!(
        gate.wait_until(Duration::from_secs(3), |g| g.metric("stsgate_users_locked")
            == 1.0)
    );
    assert_eq!(
        gate.metric("stsgate_signins_total{result=\"failure\"}"),
        3.0
    );
    assert_eq!(
        gate.metric("stsgate_signins_total{result=\"success\"}"),
        2.0
    );
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"lockout\"}"),
        3.0
    );
    decision(&gate, 7);
    let signins: Vec<_> = gate
        .decisions()
        .iter()
        .filter_map(|d| d["signin"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        signins,
        ["success", "failure", "failure", "failure", "success"]
    );

    // The CLI, as the help desk uses it.
    let config = gate.dir.path().join("stsgate.toml");
    let config = config.to_str().unwrap();
    let (code, out, err) = stsgate(&["lockout", "list", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("alice@contoso.com") && out.contains("unfamiliar failures 3"),
        "{out}"
    );
    let (code, out, err) = stsgate(&["lockout", "reset", "ALICE@contoso.com", "--config", config]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("reset"));
    let (code, _, err) = stsgate(&["lockout", "reset", "nobody@contoso.com", "--config", config]);
    assert_eq!(code, 1);
    assert!(err.contains("no lockout counts"), "{err}");
    assert_eq!(
        signin(&gate, &up, "alice@contoso.com", "guess11", "192.0.2.6").await,
        (500, true)
    );
}

#[tokio::test]
async fn after_the_window_one_attempt_then_locked_again() {
    let (gate, up) = start("1s").await;
    for i in 0..3 {
        signin(&gate, &up, "bob@contoso.com", &format!("w{i}"), "192.0.2.1").await;
    }
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", "w3", "192.0.2.1").await,
        (500, false)
    );
    std::thread::sleep(Duration::from_millis(1100));
    // One attempt reaches the STS; it fails; locked again.
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", "w4", "192.0.2.1").await,
        (500, true)
    );
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", "w5", "192.0.2.1").await,
        (500, false)
    );
    std::thread::sleep(Duration::from_millis(1100));
    // A good sign-in from an unfamiliar IP resets its count.
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", RIGHT, "192.0.2.1").await,
        (200, true)
    );
    assert_eq!(
        signin(&gate, &up, "bob@contoso.com", "w6", "192.0.2.2").await,
        (500, true)
    );
}

#[tokio::test]
async fn a_repeated_wrong_password_counts_once() {
    let (gate, up) = start("30m").await;
    // A phone retrying a stale password all day never locks its owner out.
    for _ in 0..8 {
        assert_eq!(
            signin(&gate, &up, "carol@contoso.com", "OldPassword1", "192.0.2.7").await,
            (500, true)
        );
    }
    assert_eq!(
        signin(&gate, &up, "carol@contoso.com", RIGHT, "192.0.2.7").await,
        (200, true)
    );
    let (_, locked) = gate.api("GET", "/api/v1/lockouts", None);
    assert_eq!(locked.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn sprays_are_refused_by_password_and_by_ip() {
    let (gate, up) = start("30m").await;
    // One password over three users from three IPs: sprayed.
    for (user, from) in [
        ("u1@contoso.com", "203.0.113.1"),
        ("u2@contoso.com", "203.0.113.2"),
        ("u3@contoso.com", "203.0.113.3"),
    ] {
        assert_eq!(
            signin(&gate, &up, user, "Winter2026!", from).await,
            (500, true)
        );
    }
    // Any user, any IP, with that password: refused at the gate.
    assert_eq!(
        signin(&gate, &up, "u4@contoso.com", "Winter2026!", "203.0.113.4").await,
        (500, false)
    );
    let d = decision(&gate, 4);
    assert_eq!(
        (d["stage"].as_str(), d["list"].as_str()),
        (Some("spray"), Some("password"))
    );
    // The same user with another password still reaches the STS.
    assert_eq!(
        signin(&gate, &up, "u4@contoso.com", RIGHT, "203.0.113.4").await,
        (200, true)
    );
    assert!(gate.wait_until(
        Duration::from_secs(3),
        |g| g.metric("stsgate_sprayed_passwords_active") == 1.0
    ));

    // One IP failing for four users: that IP is blocked, visible in the API.
    for (i, user) in ["v1", "v2", "v3", "v4"].iter().enumerate() {
        signin(
            &gate,
            &up,
            &format!("{user}@contoso.com"),
            &format!("Spring{i}"),
            "198.51.100.66",
        )
        .await;
    }
    let (_, blocks) = gate.api("GET", "/api/v1/blocks?ip=198.51.100.66", None);
    assert_eq!(blocks[0]["origin"], "spray", "{blocks}");
    assert!(blocks[0]["reason"].as_str().unwrap().contains("4 users"));
    assert_eq!(
        signin(&gate, &up, "v5@contoso.com", RIGHT, "198.51.100.66").await,
        (500, false)
    );
    let d = decision(&gate, 10);
    assert_eq!(d["stage"], "dynamic_block");
    assert!(gate.wait_stderr("password spray detected"));
}

#[tokio::test]
async fn no_password_or_hash_appears_anywhere() {
    let (gate, up) = start("30m").await;
    let secrets = ["S3cret-Spray-2026", "Other-Guess-77", RIGHT];
    for (i, pw) in secrets.iter().enumerate() {
        for u in 0..4 {
            signin(
                &gate,
                &up,
                &format!("p{u}@contoso.com"),
                pw,
                &format!("192.0.2.{}", 10 + i),
            )
            .await;
        }
    }
    // And one carried in the 2005 fixture ("correct horse & battery", escaped).
    send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[],
            fixture("rst-2005-usernamemixed.xml"),
        ),
    )
    .await;
    let config = gate.dir.path().join("stsgate.toml");
    let explain = stsgate(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--ip",
        "192.0.2.10",
        "--user",
        "p0@contoso.com",
        "--json",
    ])
    .1;
    let (_, metrics) = gate.admin_get("/metrics");
    let (_, blocks) = gate.api("GET", "/api/v1/blocks", None);
    let (_, locked) = gate.api("GET", "/api/v1/lockouts", None);
    let stdout = gate.stdout().join("\n");
    let stderr = gate.stderr().join("\n");
    let dir = gate.stop();
    let mut store = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "secret.key" {
            store.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    let store = String::from_utf8_lossy(&store).into_owned();
    for pw in secrets.iter().chain(["correct horse &amp; battery"].iter()) {
        for (what, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("metrics", &metrics),
            ("blocks", &blocks.to_string()),
            ("lockouts", &locked.to_string()),
            ("explain", &explain),
            ("store", &store),
        ] {
            assert!(!text.contains(pw), "{pw:?} in {what}");
        }
    }
}

#[tokio::test]
async fn lockout_and_sprayed_passwords_survive_a_restart() {
    let (gate, up) = start("30m").await;
    for i in 0..3 {
        signin(
            &gate,
            &up,
            "dave@contoso.com",
            &format!("d{i}"),
            "192.0.2.1",
        )
        .await;
    }
    for (user, from) in [
        ("s1@contoso.com", "203.0.113.1"),
        ("s2@contoso.com", "203.0.113.2"),
        ("s3@contoso.com", "203.0.113.3"),
    ] {
        signin(&gate, &up, user, "Autumn2026!", from).await;
    }
    // Written behind within a second; a graceful stop flushes it too.
    std::thread::sleep(Duration::from_millis(1200));
    let gate = gate.restart(true);
    assert_eq!(
        signin(&gate, &up, "dave@contoso.com", "d9", "192.0.2.9").await,
        (500, false)
    );
    assert_eq!(
        signin(&gate, &up, "s4@contoso.com", "Autumn2026!", "203.0.113.4").await,
        (500, false)
    );
    let (_, locked) = gate.api("GET", "/api/v1/lockouts", None);
    assert_eq!(locked[0]["user"], "dave@contoso.com", "{locked}");
    // With the gate stopped, explain reads the same state from state.dir.
    let kept = gate.stop();
    let config = kept.path().join("stsgate.toml");
    let (code, out, err) = stsgate(&[
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--ip",
        "192.0.2.77",
        "--user",
        "Dave@Contoso.com",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["stage"].as_str(), v["state"].as_str()),
        (Some("lockout"), Some("stored")),
        "{v}"
    );
}
