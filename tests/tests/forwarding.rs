//! Forwarding through the real binary: HTTP/1.1 and HTTP/2 over real TLS to
//! a real upstream, bytes passed untouched, forwarded headers, refusals.

use stsgate_tests::*;

const DENY_5143: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\"]\n";
/// Forward everything, on purpose (an empty rule file is refused).
const OFF: &str = "[request_blocking]\nenabled = false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_h1_and_h2_pass_fixtures_byte_for_byte() {
    let certs = Certs::new();
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        tls: Some(&certs),
        ..GateSpec::new(DENY_5143, &upstream)
    });
    for (h2, fixture_name) in [
        (false, "rst-2005-usernamemixed.xml"),
        (true, "rst-13-usernamemixed.xml"),
    ] {
        let client = https_client(&certs, h2);
        let request_body = fixture(fixture_name);
        let got = send(
            &client,
            post(&gate.url(USERNAMEMIXED), &[], request_body.clone()),
        )
        .await;
        assert_eq!(got.status, 200, "h2={h2}");
        assert_eq!(
            got.version,
            if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(
            &got.body[..],
            &fixture("rstr-2005-success.xml")[..],
            "answer passes untouched"
        );
        let seen = upstream.seen();
        let last = seen.last().unwrap();
        assert_eq!(
            &last.body[..],
            &request_body[..],
            "request body passes untouched"
        );
        assert_eq!(last.target, USERNAMEMIXED);
        assert_eq!(last.headers["x-forwarded-proto"], "https");
        assert_eq!(last.headers["x-forwarded-for"], "127.0.0.1");
        assert_eq!(last.headers["host"], gate.addr.to_string().as_str());
    }
    // every answer fixture comes back as the STS sent it, status included
    for (status, name) in [
        (500, "fault-failed-authentication.xml"),
        (500, "fault-access-denied-2005.xml"),
        (500, "fault-request-failed.xml"),
    ] {
        let body = bytes::Bytes::from(fixture(name));
        upstream.respond(move |_| Answer::soap(status, body.clone()));
        let got = send(
            &https_client(&certs, true),
            post(
                &gate.url(USERNAMEMIXED),
                &[],
                fixture("rst-2005-usernamemixed.xml"),
            ),
        )
        .await;
        assert_eq!(
            (got.status, &got.body[..]),
            (status, &fixture(name)[..]),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_never_reach_upstream_and_look_like_a_failed_sign_in() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[client_ip]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        ..GateSpec::new(DENY_5143, &upstream)
    });
    let client = http_client();
    let refused = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", "5.143.7.7")],
            fixture("rst-2005-usernamemixed.xml"),
        ),
    )
    .await;
    assert_eq!(upstream.count(), 0);
    assert_eq!(refused.status, 500);
    assert_eq!(
        refused.headers["content-type"],
        "application/soap+xml; charset=utf-8"
    );
    let text = refused.text();
    assert!(text.contains("<s:Value>s:Sender</s:Value>"));
    assert!(text.contains(">a:FailedAuthentication</s:Value>"));
    assert!(text.contains("ID3242"));
    for leak in ["stsgate", "5.143", "deny", "blocked"] {
        assert!(
            !text.to_lowercase().contains(leak),
            "the refusal leaks {leak:?}"
        );
        assert!(
            !format!("{:?}", refused.headers)
                .to_lowercase()
                .contains(leak),
            "a header leaks {leak:?}"
        );
    }
    // the same request from an allowed client is forwarded
    let ok = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", "8.8.4.4")],
            fixture("rst-2005-usernamemixed.xml"),
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(upstream.count(), 1);
    let log = gate.wait_decisions(|d| d.len() >= 2);
    assert_eq!(log[0]["stage"], "ip");
    assert_eq!(log[0]["action"], "refuse");
    assert_eq!(log[0]["entry"], "5.143.*.*");
    assert_eq!(log[0]["client_ip"], "5.143.7.7");
    assert_eq!(log[0]["user"], "d'arcy@contoso.com");
    assert_eq!(log[0]["status"], 500);
    assert_eq!(log[1]["action"], "forward");
    assert!(log[1]["upstream_ms"].is_number());
    for line in gate.stdout() {
        assert!(
            !line.contains("correct horse"),
            "a password reached the log: {line}"
        );
    }
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"ip\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_style_is_a_plain_403() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[blocked]\nstyle = \"forbidden\"\n",
        ..GateSpec::new(DENY_5143.replace("5.143.*.*", "*").as_str(), &upstream)
    });
    let got = send(&http_client(), post(&gate.url(USERNAMEMIXED), &[], "x")).await;
    assert_eq!(got.status, 403);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_headers_are_replaced_for_untrusted_peers() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(OFF, &upstream));
    let got = send(
        &http_client(),
        post(
            &gate.url(USERNAMEMIXED),
            &[
                ("x-ms-forwarded-client-ip", "1.2.3.4"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-stsgate-step-up", "required"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ],
            "<x/>",
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = &upstream.seen()[0];
    assert_eq!(seen.headers["x-ms-forwarded-client-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.headers.contains_key("x-stsgate-step-up"));
    assert!(!seen.headers.contains_key("x-hop"));
    let log = gate.wait_decisions(|d| !d.is_empty());
    assert_eq!(log[0]["client_ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_give_the_client_ip_and_keep_their_chain() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[client_ip]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n",
        ..GateSpec::new(DENY_5143, &upstream)
    });
    let client = http_client();
    // rightmost untrusted address of the list is the client
    let got = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-ms-forwarded-client-ip", "5.143.1.1, 9.9.9.9, 10.1.1.1")],
            "<x/>",
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = &upstream.seen()[0];
    assert_eq!(
        seen.headers["x-ms-forwarded-client-ip"], "5.143.1.1, 9.9.9.9, 10.1.1.1",
        "a trusted proxy's header passes"
    );
    // a header that does not parse leaves the peer as the client
    let got = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-forwarded-for", "5.143.1.1, garbage")],
            "<x/>",
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    // the second configured header is read when the first is absent
    let got = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[("x-forwarded-for", "5.143.1.1")],
            "<x/>",
        ),
    )
    .await;
    assert_eq!(got.status, 500);
    let log = gate.wait_decisions(|d| d.len() >= 3);
    assert_eq!(log[0]["client_ip"], "9.9.9.9");
    assert_eq!(log[1]["client_ip"], "127.0.0.1");
    assert_eq!(log[2]["client_ip"], "5.143.1.1");
    assert!(gate.wait_stderr("forwarded-IP header ignored"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_classified_after_normalisation() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(
        "[request_blocking.ip]\nrule = \"allow\"\n",
        &upstream,
    ));
    for path in [
        "/adfs/services/trust/2005/windowstransport",
        "/ADFS/services/trust/13/WindowsTransport",
        "/adfs//services/trust/13/windowstransport",
        "/adfs/services/trust/./13/windowstransport",
        "/adfs/ls/../services/trust/13/windowstransport",
        "/adfs/services%2Ftrust/13/windowstransport",
        "/adfs/services/trust/2005/usernamemixed",
        "/adfs/Services/Trust/13/usernamemixed",
    ] {
        let (status, _) = raw(gate.addr, format!("POST {path} HTTP/1.1\r\nHost: sts\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
        assert_eq!(
            status, 500,
            "{path} must be refused (empty allow list / refuse_paths)"
        );
    }
    assert_eq!(upstream.count(), 0);
    // other paths are forwarded untouched, query and all
    let (status, _) = raw(
        gate.addr,
        b"GET /adfs/ls/?wa=wsignin1.0 HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(upstream.seen()[0].target, "/adfs/ls/?wa=wsignin1.0");
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"forward\",stage=\"path\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_refuse() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec {
        extra: "[filter]\nother_paths = \"refuse\"\n",
        ..GateSpec::new(OFF, &upstream)
    });
    let (status, _) = raw(
        gate.addr,
        b"GET /adfs/portal/ HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 500);
    let (status, _) = raw(
        gate.addr,
        b"GET /adfs/services/trust/mex HTTP/1.1\r\nHost: sts\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(upstream.count(), 1);
}
