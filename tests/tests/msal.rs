//! A real client library's envelopes: MSAL Python builds and sends its own
//! WS-Trust 2005 and 1.3 requests (`msal.wstrust_request.send_request`, which
//! uses `_build_rst`) through the gate to a loopback STS that checks
//! passwords. The gate reads the user from them, and smart lockout applies.
//! Needs `python3` with `msal` (scripts/test.sh installs it).

use stsgate_tests::*;

const RULES: &str = "[request_blocking]\nenabled = false\n[lockout]\nthreshold = 3\nobservation_window = \"30m\"\nfamiliar_for = \"1h\"\n[spray]\ndistinct_users = 10\nsame_password_users = 5\nwindow = \"10m\"\nblock_for = \"1h\"\n";
const TRUST_LOOPBACK: &str =
    "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n[blocked]\ndelay = \"0s\"\n";
const RIGHT: &str = "Tr0ub4dor&3 'quoted' <angle>";
const PATH_13: &str = "/adfs/services/trust/13/usernamemixed";

/// The text of the request's `...:Password` element, XML escapes decoded.
fn password_of(body: &str) -> Option<String> {
    let start = body.find(":Password")?;
    let text = &body[start..];
    let text = &text[text.find('>')? + 1..];
    let text = &text[..text.find("</")?];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

async fn sts() -> Upstream {
    let upstream = Upstream::start().await;
    let success = bytes::Bytes::from(fixture("rstr-2005-success.xml"));
    let fault = bytes::Bytes::from(fixture("fault-failed-authentication.xml"));
    upstream.respond(move |seen| {
        if password_of(&String::from_utf8_lossy(&seen.body)).as_deref() == Some(RIGHT) {
            Answer::soap(200, success.clone())
        } else {
            Answer::soap(500, fault.clone())
        }
    });
    upstream
}

/// One sign-in by MSAL: (HTTP status, MSAL's reading of the answer, reached the STS).
async fn msal(
    gate: &Gate,
    up: &Upstream,
    path: &str,
    user: &str,
    password: &str,
    from: &str,
) -> (u16, serde_json::Value, bool) {
    let before = up.count();
    let script = workspace().join("tests/msal_signin.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args([&gate.url(path), user, password, from])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): scripts/test.sh installs python3 and msal")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "msal_signin.py failed (pip install msal; scripts/test.sh does): {stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "msal_signin.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (
        v["status"].as_u64().unwrap_or(0) as u16,
        v,
        up.count() > before,
    )
}

#[tokio::test]
async fn msal_envelopes_are_read_and_locked_out() {
    let up = sts().await;
    let gate = Gate::start(GateSpec {
        extra: TRUST_LOOPBACK,
        ..GateSpec::new(RULES, &up)
    });
    let user = "Adele.Vance@Contoso.com";

    // At home, with the 2005 endpoint: MSAL gets its token, the gate read the user.
    let (status, got, reached) = msal(&gate, &up, USERNAMEMIXED, user, RIGHT, "10.0.0.1").await;
    assert_eq!((status, reached), (200, true), "{got}");
    assert_eq!(
        got["token_type"], "urn:oasis:names:tc:SAML:1.0:assertion",
        "{got}"
    );
    let d = gate.wait_decisions(|d| !d.is_empty());
    assert_eq!(d[0]["user"], user, "{d:?}");
    assert_eq!(d[0]["signin"], "success");
    assert!(
        up.seen()[0]
            .body
            .starts_with(b"<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope'")
    );

    // From elsewhere, with the 1.3 endpoint: a stale password retried counts once...
    for _ in 0..4 {
        let (status, got, reached) =
            msal(&gate, &up, PATH_13, user, "Autumn2025!", "192.0.2.1").await;
        assert_eq!((status, reached), (500, true), "{got}");
        assert!(
            got["error"]
                .as_str()
                .unwrap()
                .contains("FailedAuthentication"),
            "{got}"
        );
    }
    // ...then two more distinct wrong passwords make three: locked.
    for pw in ["Winter2025!", "Spring2026!"] {
        assert!(msal(&gate, &up, PATH_13, user, pw, "192.0.2.2").await.2);
    }
    let (status, got, reached) = msal(&gate, &up, PATH_13, user, "Summer2026!", "192.0.2.3").await;
    assert_eq!(
        (status, reached),
        (500, false),
        "refused at the gate: {got}"
    );
    // MSAL reads the refusal as it reads a wrong password at the STS.
    assert!(
        got["error"]
            .as_str()
            .unwrap()
            .contains("FailedAuthentication"),
        "{got}"
    );
    let d = gate.wait_decisions(|d| d.len() >= 8);
    assert_eq!(d[7]["user"], user);
    assert_eq!(
        (d[7]["stage"].as_str(), d[7]["action"].as_str()),
        (Some("lockout"), Some("refuse"))
    );
    assert_eq!(d[7]["path"], PATH_13);

    // Home still works through the 1.3 endpoint; the lockout API names the user.
    let (status, got, reached) = msal(&gate, &up, PATH_13, user, RIGHT, "10.0.0.1").await;
    assert_eq!((status, reached), (200, true), "{got}");
    let (_, locked) = gate.api("GET", "/api/v1/lockouts", None);
    assert_eq!(locked[0]["user"], "adele.vance@contoso.com", "{locked}");
    assert_eq!(
        locked[0]["unfamiliar_failures"], 3,
        "the stale password counted once: {locked}"
    );
}

/// MSAL's own metadata-exchange fetch passes the gate, even under rules
/// that refuse every request without `X-MS-Client-Application` (it carries
/// no credential: `filter.pass_paths`).
#[tokio::test]
async fn msal_mex_fetch_passes_the_gate() {
    let up = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(
        "[request_blocking.application]\nrule = \"allow\"\nentries = [\"Microsoft.Exchange.ActiveSync\"]\n",
        &up,
    ));
    let script = workspace().join("tests/msal_signin.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--mex", &gate.url("/adfs/services/trust/mex")])
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], 200, "{v}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].target.as_str()),
        ("GET", "/adfs/services/trust/mex")
    );
    // The same GET on a sign-in path is decided, and refused by these rules.
    let got = send(
        &http_client(),
        http::Request::get(gate.url(USERNAMEMIXED))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 500);
    assert_eq!(up.count(), 1);
}
