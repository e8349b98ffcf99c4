//! The forms sign-in page (`/adfs/ls/`) through the running binary: plain
//! form POSTs as a browser sends them, read, decided and learned from like
//! WS-Trust; GETs of the page and posts without credentials (an MFA step)
//! pass as they are.

use stsgate_tests::*;

const RULES: &str = "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n";
const EXTRA: &str = "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n";
const TARGET: &str = "/adfs/ls/?client-request-id=0c4b7f2e-1d3a-4e5f-a6b7-c8d9e0f1a2b3&wa=wsignin1.0&wtrealm=urn%3afederation%3aMicrosoftOnline&wctx=estsredirect%3d2";

#[tokio::test]
async fn a_plain_form_post_is_read_decided_and_learned() {
    let up = password_checking_sts().await;
    let gate = Gate::start(GateSpec {
        extra: EXTRA,
        ..GateSpec::new(RULES, &up)
    });
    let client = http_client();

    // The page itself: forwarded untouched, query and all, with no decision.
    let got = send(
        &client,
        http::Request::get(gate.url(TARGET))
            .header("user-agent", "Mozilla/5.0")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.text().contains(r#"name="UserName""#));
    assert_eq!(up.seen()[0].method, "GET");
    assert_eq!(up.seen()[0].target, TARGET);
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"forward\",stage=\"path\"}"),
        1.0
    );

    // The right password: ADFS's 302 with the MSISAuth cookie passes through.
    let got = send(
        &client,
        form_post(
            &gate.url(TARGET),
            &[],
            forms_body("CONTOSO\\frank", RIGHT_PASSWORD),
        ),
    )
    .await;
    assert_eq!(got.status, 302);
    assert!(
        got.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("MSISAuth=")
    );
    assert_eq!(
        up.seen()[1].body,
        forms_body("CONTOSO\\frank", RIGHT_PASSWORD).as_bytes()
    );

    // A wrong one: the sign-in page again, with its error.
    let got = send(
        &client,
        form_post(
            &gate.url(TARGET),
            &[("x-ms-forwarded-client-ip", "203.0.113.40")],
            forms_body("grace@contoso.com", "tulips"),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.text().contains(FORMS_ERROR_TEXT));

    // An MFA step posts no user name: forwarded, decided without a user, no sign-in counted.
    let got = send(
        &client,
        form_post(
            &gate.url(TARGET),
            &[],
            "AuthMethod=AzureMfaAuthentication&Context=abc&VerificationCode=123456",
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(up.count(), 4);

    let d = gate.wait_decisions(|d| d.len() >= 3);
    let summary: Vec<_> = d
        .iter()
        .map(|e| {
            (
                e["protocol"].as_str(),
                e["user"].as_str(),
                e["signin"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (Some("forms"), Some("CONTOSO\\frank"), Some("success")),
            (Some("forms"), Some("grace@contoso.com"), Some("failure")),
            (Some("forms"), None, None),
        ]
    );
    assert_eq!(
        gate.metric("stsgate_protocol_signins_total{protocol=\"forms\",result=\"success\"}"),
        1.0
    );

    // Three wrong passwords lock grace out of the page, as on WS-Trust.
    for guess in ["roses", "daisies"] {
        send(
            &client,
            form_post(
                &gate.url(TARGET),
                &[("x-ms-forwarded-client-ip", "203.0.113.41")],
                forms_body("grace@contoso.com", guess),
            ),
        )
        .await;
    }
    let before = up.count();
    let got = send(
        &client,
        form_post(
            &gate.url(TARGET),
            &[("x-ms-forwarded-client-ip", "203.0.113.42")],
            forms_body("grace@contoso.com", RIGHT_PASSWORD),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(got.text().contains(FORMS_ERROR_TEXT));
    assert!(got.text().contains(r#"value="grace@contoso.com""#));
    assert_eq!(up.count(), before, "refused at the gate");
}

#[tokio::test]
async fn refusals_use_the_configured_page_and_check_reports_a_bad_one() {
    let up = password_checking_sts().await;
    let pages = tempfile::tempdir().unwrap();
    let page = pages.path().join("signin.html");
    std::fs::write(&page, "<html><form action=\"{action}\"><input name=\"UserName\" value=\"{username}\"><span id=\"errorText\">{error}</span></form></html>\n").unwrap();
    let extra = format!("{EXTRA}forms_page = \"{}\"\n", page.display());
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(RULES, &up)
    });
    let (status, _) = gate.api(
        "POST",
        "/api/v1/blocks",
        Some(r#"{"user": "heidi@contoso.com", "ttl": "1h"}"#),
    );
    assert_eq!(status, 201);
    let got = send(
        &http_client(),
        form_post(
            &gate.url("/adfs/ls/?wa=wsignin1.0&a=%3Cb%3E"),
            &[],
            forms_body("heidi@contoso.com", "x"),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.text(),
        format!(
            "<html><form action=\"/adfs/ls/?wa=wsignin1.0&amp;a=%3Cb%3E\"><input name=\"UserName\" value=\"heidi@contoso.com\"><span id=\"errorText\">{FORMS_ERROR_TEXT}</span></form></html>\n"
        )
    );
    assert_eq!(up.count(), 0);

    // A page without {error}: `stsgate check` says where.
    std::fs::write(&page, "<html>no placeholder</html>").unwrap();
    let config = gate.dir.path().join("stsgate.toml");
    let (code, out, err) = stsgate(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("stsgate.toml:") && text.contains("{error}"),
        "{text}"
    );
}

/// An application allow list (Exchange Online's header) applies to WS-Trust
/// only by default: a browser's forms sign-in and an ROPC app carry no
/// `X-MS-Client-Application` and pass it; the ip deny list applies to every
/// protocol; `protocols` widens the allow list on purpose.
#[tokio::test]
async fn header_allow_lists_keep_to_wstrust_unless_told() {
    let up = password_checking_sts().await;
    let rules = |protocols: &str| {
        format!(
            "[request_blocking]\nlogic = \"or\"\n\
             [request_blocking.ip]\nrule = \"deny\"\nentries = [\"203.0.113.66\"]\n\
             [request_blocking.application]\nrule = \"allow\"\n\
             entries = [\"Microsoft.Exchange.ActiveSync\"]\n{protocols}"
        )
    };
    let text = rules("");
    let gate = Gate::start(GateSpec {
        extra: EXTRA,
        ..GateSpec::new(&text, &up)
    });
    let client = http_client();
    let sign_in = |from: &str, user: &str| {
        form_post(
            &gate.url(TARGET),
            &[("x-ms-forwarded-client-ip", from)],
            forms_body(user, RIGHT_PASSWORD),
        )
    };
    let got = send(&client, sign_in("192.0.2.10", "ivan@contoso.com")).await;
    assert_eq!(got.status, 302, "a browser's sign-in passes the allow list");
    let got = send(&client, sign_in("203.0.113.66", "ivan@contoso.com")).await;
    assert_eq!(got.status, 200, "the ip deny list refuses it");
    assert!(got.text().contains(FORMS_ERROR_TEXT));
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"ip\"}"),
        1.0
    );
    // WS-Trust without the header is refused by the allow list, as before.
    let got = send(
        &client,
        post(
            &gate.url("/adfs/services/trust/2005/usernamemixed"),
            &[],
            rst_for("ivan@contoso.com", RIGHT_PASSWORD),
        ),
    )
    .await;
    assert_eq!(got.status, 500);
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"application\"}"),
        1.0
    );
    // explain shows the section as not applicable to a forms sign-in.
    let out = gate.explain_json(&["--ip", "192.0.2.10", "--path", "/adfs/ls/"]);
    assert!(out.to_string().contains("\"not_applicable\""), "{out}");

    // protocols = all three: the allow list now refuses the browser too.
    std::fs::write(
        gate.rules_path(),
        rules("protocols = [\"wstrust\", \"oauth2_ropc\", \"forms\"]\n"),
    )
    .unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 200);
    let got = send(&client, sign_in("192.0.2.10", "judy@contoso.com")).await;
    assert_eq!(got.status, 200);
    assert!(got.text().contains(FORMS_ERROR_TEXT));
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"application\"}"),
        2.0
    );
}
