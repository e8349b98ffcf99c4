//! Two real `stsgate run` processes sharing one real `redis-server`
//! (`[state] redis_url`), in front of one loopback STS that checks
//! passwords like ADFS: blocks, lockouts and sprays are shared, and Redis
//! stopped and restarted under traffic fails no request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use stsgate_tests::*;

/// Upper bound of a wait for something to reach the other instance (it
/// takes milliseconds; the bound only keeps a broken build from hanging).
const PROPAGATION: Duration = Duration::from_secs(10);
/// Upper bound of a catch-up once Redis is back (reconnect backoff of at
/// most 5 s, then a resync).
const CATCH_UP: Duration = Duration::from_secs(30);

const RULES: &str = "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n[spray]\ndistinct_users = 4\nsame_password_users = 3\nwindow = \"10m\"\nblock_for = \"1h\"\n";

use stsgate_tests::RIGHT_PASSWORD as RIGHT;

/// An upstream that checks the password like an STS.
async fn sts() -> Upstream {
    password_checking_sts().await
}

/// One instance of the farm, sharing `redis`.
fn instance(up: &Upstream, redis: &RedisServer, name: &str) -> Gate {
    let extra = format!(
        "redis_url = \"{}\"\ninstance = \"{name}\"\n[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n",
        redis.url()
    );
    Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(RULES, up)
    })
}

/// One sign-in: (status the client got, whether it reached the STS: the
/// STS saw one more request with this user and password; other traffic
/// runs at the same time).
async fn signin(gate: &Gate, up: &Upstream, user: &str, password: &str, from: &str) -> (u16, bool) {
    let body = rst_for(user, password);
    let seen = || {
        up.seen()
            .iter()
            .filter(|s| s.body == body.as_bytes())
            .count()
    };
    let before = seen();
    let got = send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", from)],
            body.clone(),
        ),
    )
    .await;
    (got.status, seen() > before)
}

fn locked_users(gate: &Gate) -> Vec<String> {
    let (status, v) = gate.api("GET", "/api/v1/lockouts", None);
    assert_eq!(status, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| l["user"].as_str().unwrap().to_string())
        .collect()
}

fn blocks_on(gate: &Gate, ip: &str) -> usize {
    gate.api("GET", &format!("/api/v1/blocks?ip={ip}"), None)
        .1
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn two_instances_share_blocks_lockouts_and_sprays() {
    let redis = RedisServer::start();
    let up = sts().await;
    let a = instance(&up, &redis, "gw-a");
    let b = instance(&up, &redis, "gw-b");

    // A block added on A is enforced by B; removed on B, gone on A.
    let (status, added) = a.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "198.51.100.7", "ttl": "1h"}"#),
    );
    assert!(status == 201 || status == 200, "{status} {added}");
    assert!(b.wait_until(PROPAGATION, |b| blocks_on(b, "198.51.100.7") == 1));
    assert_eq!(
        signin(&b, &up, "zed@contoso.com", RIGHT, "198.51.100.7").await,
        (500, false)
    );
    let id = added["id"].as_str().unwrap();
    assert_eq!(
        b.api("DELETE", &format!("/api/v1/blocks/{id}"), None).0,
        204
    );
    assert!(a.wait_until(PROPAGATION, |a| blocks_on(a, "198.51.100.7") == 0));
    assert_eq!(
        signin(&a, &up, "zed@contoso.com", RIGHT, "198.51.100.7").await,
        (200, true)
    );

    // Alice at home (through B); an attacker's guesses spread over A and B.
    assert_eq!(
        signin(&b, &up, "alice@contoso.com", RIGHT, "10.0.0.1").await,
        (200, true)
    );
    // (A barrier: once B's lockout of a test user shows on A, A has learned
    // everything B learned before, Alice's success included. A success
    // learned after a later failure would reset that failure, as it does on
    // one instance.)
    for i in 0..3 {
        signin(
            &b,
            &up,
            "barrier@contoso.com",
            &format!("b{i}"),
            "192.0.2.200",
        )
        .await;
    }
    assert!(a.wait_until(PROPAGATION, |a| locked_users(a) == ["barrier@contoso.com"]));
    assert_eq!(
        b.api("DELETE", "/api/v1/lockouts/barrier@contoso.com", None)
            .0,
        204
    );
    assert!(a.wait_until(PROPAGATION, |a| locked_users(a).is_empty()));
    for (gate, guess, from) in [
        (&a, "guess1", "192.0.2.1"),
        (&b, "guess2", "192.0.2.2"),
        (&a, "guess3", "192.0.2.3"),
    ] {
        assert_eq!(
            signin(gate, &up, "Alice@Contoso.com", guess, from).await,
            (500, true),
            "{guess}"
        );
    }
    // Locked on both (neither saw three failures alone): refused at either gate.
    for gate in [&a, &b] {
        assert!(gate.wait_until(PROPAGATION, |g| locked_users(g) == ["alice@contoso.com"]));
        assert_eq!(
            signin(gate, &up, "alice@contoso.com", "guess9", "192.0.2.9").await,
            (500, false)
        );
    }
    // Familiar on both: home still passes through A, which never saw Alice succeed.
    assert_eq!(
        signin(&a, &up, "alice@contoso.com", RIGHT, "10.0.0.1").await,
        (200, true)
    );
    assert!(b.wait_until(PROPAGATION, |b| b.metric("stsgate_users_locked") == 1.0));
    // The help desk resets on B: unlocked on A too.
    assert_eq!(
        b.api("DELETE", "/api/v1/lockouts/alice@contoso.com", None)
            .0,
        204
    );
    assert!(a.wait_until(PROPAGATION, |a| locked_users(a).is_empty()));
    assert_eq!(
        signin(&a, &up, "alice@contoso.com", "guess10", "192.0.2.10").await,
        (500, true)
    );

    // One password over three users, spread over both: refused by both.
    for (gate, user, from) in [
        (&a, "u1", "203.0.113.1"),
        (&b, "u2", "203.0.113.2"),
        (&a, "u3", "203.0.113.3"),
    ] {
        signin(
            gate,
            &up,
            &format!("{user}@contoso.com"),
            "Winter2026!",
            from,
        )
        .await;
    }
    for gate in [&a, &b] {
        assert!(gate.wait_until(
            PROPAGATION,
            |g| g.metric("stsgate_sprayed_passwords_active") == 1.0
        ));
        assert_eq!(
            signin(gate, &up, "u4@contoso.com", "Winter2026!", "203.0.113.4").await,
            (500, false)
        );
        assert_eq!(
            signin(gate, &up, "u4@contoso.com", RIGHT, "203.0.113.4").await,
            (200, true)
        );
    }

    // Redis holds users, IPs and keyed hashes: never a password.
    let dump = redis.dump();
    assert!(
        dump.contains("alice@contoso.com") && dump.contains("\"result\":\"failure\""),
        "{dump}"
    );
    for pw in [
        "guess1",
        "guess2",
        "guess3",
        "Winter2026!",
        RIGHT,
        "correct horse &amp; battery",
    ] {
        assert!(!dump.contains(pw), "{pw:?} in redis");
        for gate in [&a, &b] {
            assert!(!gate.stderr().join("\n").contains(pw), "{pw:?} in the log");
        }
    }
}

#[tokio::test]
async fn redis_stopped_and_restarted_under_traffic_fails_no_request() {
    let mut redis = RedisServer::start();
    let up = sts().await;
    let a = Arc::new(instance(&up, &redis, "gw-a"));
    let b = Arc::new(instance(&up, &redis, "gw-b"));
    let up = Arc::new(up);

    // Users sign in through both gates the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for (n, gate) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let stop = stop.clone();
        traffic.push(tokio::spawn(async move {
            let (mut sent, mut failed) = (0u32, Vec::new());
            let user = format!("user{n}@contoso.com");
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                // A 200 comes from the STS only (a token issued).
                let got = send(
                    &http_client(),
                    post(
                        &gate.url(USERNAMEMIXED),
                        &[("x-ms-forwarded-client-ip", &format!("10.0.1.{n}"))],
                        rst_for(&user, RIGHT),
                    ),
                )
                .await;
                if got.status != 200 {
                    failed.push(got.status);
                }
                sent += 1;
            }
            (sent, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    // Meanwhile an attacker fails three times for Dan through A: A locks at once.
    for i in 0..3 {
        assert_eq!(
            signin(&a, &up, "dan@contoso.com", &format!("g{i}"), "192.0.2.1").await,
            (500, true)
        );
    }
    assert_eq!(
        signin(&a, &up, "dan@contoso.com", "g3", "192.0.2.1").await,
        (500, false)
    );
    assert!(a.wait_until(
        PROPAGATION,
        |a| a.metric("stsgate_state_errors_total{store=\"redis\"}") > 0.0
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    // Back: what A learned meanwhile reaches B; blocks flow again.
    assert!(
        b.wait_until(CATCH_UP, |b| locked_users(b) == ["dan@contoso.com"]),
        "{:?}",
        b.stderr()
    );
    assert_eq!(
        signin(&b, &up, "dan@contoso.com", "g4", "192.0.2.5").await,
        (500, false)
    );
    a.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"ip": "198.51.100.8", "ttl": "1h"}"#),
    );
    assert!(b.wait_until(CATCH_UP, |b| blocks_on(b, "198.51.100.8") == 1));
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        let (sent, failed) = t.await.unwrap();
        assert!(sent >= 20);
        assert!(
            failed.is_empty(),
            "failed sign-ins while redis was away: {failed:?}"
        );
    }
    assert!(b.wait_until(PROPAGATION, |b| {
        let (status, text) = b.admin_get("/readyz");
        status == 200 && !text.contains("failing")
    }));
}
