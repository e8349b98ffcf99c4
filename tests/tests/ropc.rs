//! OAuth2 resource-owner password sign-ins (`/adfs/oauth2/token`) through the
//! running binary, beside WS-Trust and the forms sign-in page: MSAL Python's
//! `acquire_token_by_username_password` against the gate as an ADFS
//! authority, lockout and password spray across the three endpoints,
//! refusals shaped like the STS's own failures, hostile form bodies.
//! MSAL needs `python3` with `msal` (scripts/test.sh installs it).

use stsgate_tests::*;

const RULES: &str = "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n[spray]\ndistinct_users = 50\nsame_password_users = 4\nwindow = \"10m\"\nblock_for = \"1h\"\n";
const TRUST_LOOPBACK: &str =
    "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n";
const FORMS_TARGET: &str = "/adfs/ls/?client-request-id=6f1d2c3b-0000-4a5b-8c7d-9e0f1a2b3c4d&wa=wsignin1.0&wtrealm=urn%3afederation%3aMicrosoftOnline";

/// The three doors.
#[derive(Clone, Copy, Debug)]
enum Door {
    Ropc,
    Forms,
    WsTrust,
}

/// One sign-in through `door` from client IP `from`: (the answer, whether
/// it reached the STS).
async fn sign_in(
    gate: &Gate,
    up: &Upstream,
    door: Door,
    user: &str,
    password: &str,
    from: &str,
) -> (Got, bool) {
    let before = up.count();
    let via = [("x-ms-forwarded-client-ip", from)];
    let req = match door {
        Door::Ropc => form_post(&gate.url(TOKEN_PATH), &via, ropc_body(user, password)),
        Door::Forms => form_post(&gate.url(FORMS_TARGET), &via, forms_body(user, password)),
        Door::WsTrust => post(&gate.url(USERNAMEMIXED), &via, rst_for(user, password)),
    };
    let got = send(&http_client(), req).await;
    (got, up.count() > before)
}

async fn start(extra: &str) -> (Gate, Upstream) {
    let upstream = password_checking_sts().await;
    let extra = format!("{TRUST_LOOPBACK}{extra}");
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(RULES, &upstream)
    });
    (gate, upstream)
}

/// Is `got` the STS's own wrong-password answer for `door`?
fn looks_failed(door: Door, got: &Got) -> bool {
    match door {
        Door::Ropc => got.status == 400 && got.text() == ROPC_INVALID_GRANT,
        Door::Forms => got.status == 200 && got.text().contains(FORMS_ERROR_TEXT),
        Door::WsTrust => got.status == 500 && got.text().contains("FailedAuthentication"),
    }
}

/// One ROPC sign-in by MSAL Python: its JSON summary.
async fn msal_ropc(gate: &Gate, user: &str, password: &str) -> serde_json::Value {
    let script = workspace().join("tests/msal_ropc.py");
    let ca = gate.dir.path().join("ca.pem");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(gate.url("/adfs"))
        .arg(&ca)
        .args([user, password])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): scripts/test.sh installs python3 and msal")
        });
    assert!(
        out.status.success(),
        "msal_ropc.py failed (pip install msal; scripts/test.sh does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "msal_ropc.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test]
async fn msal_signs_in_through_the_gate_and_its_failures_lock_ws_trust_too() {
    let certs = Certs::new();
    let upstream = password_checking_sts().await;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        tls: Some(&certs),
        ..GateSpec::new(RULES, &upstream)
    });
    let good = msal_ropc(&gate, "alice@contoso.com", RIGHT_PASSWORD).await;
    assert_eq!(good["token"], true, "{good}");
    let d = gate.wait_decisions(|d| !d.is_empty());
    assert_eq!(d[0]["user"], "alice@contoso.com");
    assert_eq!(d[0]["protocol"], "oauth2_ropc");
    assert_eq!(d[0]["signin"], "success");
    assert!(
        upstream
            .seen()
            .iter()
            .any(|s| s.target == "/adfs/.well-known/openid-configuration"),
        "MSAL read the OpenID configuration through the gate"
    );

    for wrong in ["Winter2025", "Spring2026", "Summer2026"] {
        let bad = msal_ropc(&gate, "bob@contoso.com", wrong).await;
        assert_eq!(bad["error"], "invalid_grant", "{bad}");
    }
    let before = upstream.count();
    let locked = msal_ropc(&gate, "bob@contoso.com", RIGHT_PASSWORD).await;
    assert_eq!(
        locked["error"], "invalid_grant",
        "refused like a wrong password: {locked}"
    );
    assert!(
        locked["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("MSIS9659"),
        "{locked}"
    );
    let tokens = upstream.seen()[before..]
        .iter()
        .filter(|s| s.target.starts_with(TOKEN_PATH))
        .count();
    assert_eq!(tokens, 0, "a locked user's password never reaches the STS");
    let d =
        gate.wait_decisions(|d| d.iter().filter(|e| e["user"] == "bob@contoso.com").count() >= 4);
    let last = d
        .iter()
        .rev()
        .find(|e| e["user"] == "bob@contoso.com")
        .unwrap();
    assert_eq!(
        (last["stage"].as_str(), last["action"].as_str()),
        (Some("lockout"), Some("refuse"))
    );

    // The same user on WS-Trust is locked as well.
    let before = upstream.count();
    let got = send(
        &https_client(&certs, false),
        post(
            &gate.url(USERNAMEMIXED),
            &[],
            rst_for("bob@contoso.com", RIGHT_PASSWORD),
        ),
    )
    .await;
    assert_eq!(got.status, 500);
    assert!(got.text().contains("FailedAuthentication"));
    assert_eq!(upstream.count(), before);
}

#[tokio::test]
async fn lockout_and_spray_span_the_three_endpoints() {
    let (gate, up) = start("").await;
    // Three wrong passwords for carol, one per door, from three addresses.
    for (i, door) in [Door::Ropc, Door::Forms, Door::WsTrust]
        .into_iter()
        .enumerate()
    {
        let (got, reached) = sign_in(
            &gate,
            &up,
            door,
            "carol@contoso.com",
            &format!("guess-{i}"),
            &format!("203.0.113.{}", i + 1),
        )
        .await;
        assert!(
            reached && looks_failed(door, &got),
            "{door:?}: {} {}",
            got.status,
            got.text()
        );
    }
    // Locked on every door, each refusal shaped like that door's failure.
    for door in [Door::Ropc, Door::Forms, Door::WsTrust] {
        let (got, reached) = sign_in(
            &gate,
            &up,
            door,
            "carol@contoso.com",
            RIGHT_PASSWORD,
            "203.0.113.9",
        )
        .await;
        assert!(!reached, "{door:?}: refused at the gate");
        assert!(
            looks_failed(door, &got),
            "{door:?}: {} {}",
            got.status,
            got.text()
        );
    }
    let d = gate.wait_decisions(|d| d.len() >= 6);
    let protocols: Vec<_> = d[3..6]
        .iter()
        .map(|e| {
            (
                e["protocol"].as_str().unwrap(),
                e["stage"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        [
            ("oauth2_ropc", "lockout"),
            ("forms", "lockout"),
            ("wstrust", "lockout")
        ]
    );

    // One password sprayed over four users, spread over the doors and addresses...
    let doors = [Door::Ropc, Door::Forms, Door::WsTrust, Door::Ropc];
    for (i, door) in doors.into_iter().enumerate() {
        let (got, reached) = sign_in(
            &gate,
            &up,
            door,
            &format!("user{i}@contoso.com"),
            "Autumn2026!",
            &format!("198.51.100.{}", i + 1),
        )
        .await;
        assert!(reached && looks_failed(door, &got), "{door:?}");
    }
    // ...is refused on every door from then on, for anyone, from anywhere.
    for (i, door) in [Door::Forms, Door::WsTrust, Door::Ropc]
        .into_iter()
        .enumerate()
    {
        let (got, reached) = sign_in(
            &gate,
            &up,
            door,
            &format!("next{i}@contoso.com"),
            "Autumn2026!",
            &format!("192.0.2.{}", i + 1),
        )
        .await;
        assert!(
            !reached && looks_failed(door, &got),
            "{door:?}: {} {}",
            got.status,
            got.text()
        );
    }
    let d = gate.wait_decisions(|d| d.len() >= 13);
    let stages: Vec<_> = d[10..13]
        .iter()
        .map(|e| {
            (
                e["protocol"].as_str().unwrap(),
                e["stage"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("forms", "spray"),
            ("wstrust", "spray"),
            ("oauth2_ropc", "spray")
        ]
    );

    // New counters by protocol; the contract's counters keep their labels.
    assert_eq!(
        gate.metric("stsgate_protocol_requests_total{action=\"refuse\",protocol=\"forms\"}"),
        2.0
    );
    assert_eq!(
        gate.metric("stsgate_protocol_signins_total{protocol=\"oauth2_ropc\",result=\"failure\"}"),
        3.0
    );
    assert_eq!(
        gate.metric("stsgate_signins_total{result=\"failure\"}"),
        7.0
    );
    let (_, metrics) = gate.admin_get("/metrics");
    for line in metrics.lines().filter(|l| {
        l.starts_with("stsgate_signins_total{") || l.starts_with("stsgate_decisions_total{")
    }) {
        assert!(
            !line.contains("protocol"),
            "contract label sets unchanged: {line}"
        );
    }
}

#[tokio::test]
async fn refusals_look_like_the_sts_own_failures() {
    let (gate, up) = start("").await;
    let (failed, reached) = sign_in(
        &gate,
        &up,
        Door::Ropc,
        "dave@contoso.com",
        "nope",
        "203.0.113.5",
    )
    .await;
    assert!(reached);
    let (page, reached) = sign_in(
        &gate,
        &up,
        Door::Forms,
        "dave@contoso.com",
        "nope",
        "203.0.113.5",
    )
    .await;
    assert!(reached);
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"user": "dave@contoso.com", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    let (refused, reached) = sign_in(
        &gate,
        &up,
        Door::Ropc,
        "dave@contoso.com",
        RIGHT_PASSWORD,
        "203.0.113.5",
    )
    .await;
    assert!(!reached);
    let (refused_page, reached) = sign_in(
        &gate,
        &up,
        Door::Forms,
        "dave@contoso.com",
        RIGHT_PASSWORD,
        "203.0.113.5",
    )
    .await;
    assert!(!reached);
    for (sts, gate_answer, headers) in [
        (
            &failed,
            &refused,
            &["content-type", "cache-control", "pragma"][..],
        ),
        (
            &page,
            &refused_page,
            &["content-type", "cache-control", "pragma", "expires"][..],
        ),
    ] {
        assert_eq!(sts.status, gate_answer.status);
        for h in headers {
            assert_eq!(sts.headers.get(*h), gate_answer.headers.get(*h), "{h}");
        }
        assert_eq!(sts.text(), gate_answer.text(), "same body, byte for byte");
    }
    assert!(
        refused_page
            .text()
            .contains(r#"action="/adfs/ls/?client-request-id="#)
    );
    assert!(refused_page.text().contains(r#"value="dave@contoso.com""#));
}

#[tokio::test]
async fn hostile_form_bodies_are_refused_and_never_forwarded() {
    let (gate, up) = start("[limits]\nmax_body = \"4KiB\"\n").await;
    let token = gate.url(TOKEN_PATH);
    let forms = gate.url(FORMS_TARGET);
    let many = "a=1&".repeat(300) + "grant_type=password&username=x&password=y";
    let huge = format!(
        "grant_type=password&username=x&password={}",
        "A".repeat(5000)
    );
    #[rustfmt::skip]
    let cases: Vec<(&str, String, &str, u16)> = vec![
        (&token, "grant_type=password&username=a&username=b&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, "grant_type=password&username=a&UserName=b&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, "grant_type=password&grant_type=password&username=a&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, "grant_type=password&username=a%zz&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, "grant_type=password&%u0075sername=a&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, "grant_type=password&username=%C3%28&password=x".into(), "application/x-www-form-urlencoded", 400),
        (&token, many, "application/x-www-form-urlencoded", 400),
        (&token, huge, "application/x-www-form-urlencoded", 413),
        (&token, r#"{"grant_type":"password","username":"a","password":"x"}"#.into(), "application/json", 400),
        (&forms, "UserName=a&Password=x&Password=y&AuthMethod=FormsAuthentication".into(), "application/x-www-form-urlencoded", 400),
        (&forms, "--b\r\nContent-Disposition: form-data; name=\"UserName\"\r\n\r\na\r\n--b--\r\n".into(), "multipart/form-data; boundary=b", 400),
    ];
    for (url, body, content_type, want) in &cases {
        let req = http::Request::post(*url)
            .header("content-type", *content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let got = send(&http_client(), req).await;
        assert_eq!(
            got.status,
            *want,
            "{} {}",
            &body[..body.len().min(80)],
            got.text()
        );
    }
    // Credentials in the query string.
    let got = send(
        &http_client(),
        form_post(&format!("{}&Password=x", forms), &[], forms_body("a", "x")),
    )
    .await;
    assert_eq!(got.status, 400);
    assert_eq!(up.count(), 0, "nothing ambiguous reached the STS");
    assert_eq!(
        gate.metric("stsgate_rejected_requests_total{reason=\"bad_form\"}"),
        11.0
    );

    // A chunked body is read whole: the user is known and the answer learned.
    let body = ropc_body("erin@contoso.com", "wrong");
    let (a, b) = body.split_at(17);
    let req = format!(
        "POST {TOKEN_PATH} HTTP/1.1\r\nHost: sts.test\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let addr = gate.addr;
    let (status, text) = tokio::task::spawn_blocking(move || raw(addr, req.as_bytes()))
        .await
        .unwrap();
    assert_eq!((status, text.as_str()), (400, ROPC_INVALID_GRANT));
    let d = gate.wait_decisions(|d| d.iter().any(|e| e["user"] == "erin@contoso.com"));
    let e = d.iter().find(|e| e["user"] == "erin@contoso.com").unwrap();
    assert_eq!(
        (e["protocol"].as_str(), e["signin"].as_str()),
        (Some("oauth2_ropc"), Some("failure"))
    );
    assert_eq!(up.seen().last().unwrap().body, body.as_bytes());
}
