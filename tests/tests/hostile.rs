//! Hostile input and broken upstreams, against the real binary: limits,
//! protocol abuse, hostile bodies, and faults. Raw sockets where a normal
//! client would not send the bad input. Every case is bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use stsgate_tests::*;

const ALLOW_ALL: &str =
    "[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python-requests\"]\n";

/// Sends raw bytes, returns the status line's code (0: no answer).
fn status_of(addr: SocketAddr, bytes: &[u8]) -> u16 {
    raw(addr, bytes).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_answer_431() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(ALLOW_ALL, &upstream));
    let many: String = (0..150).map(|i| format!("X-H{i}: 1\r\n")).collect();
    assert_eq!(
        status_of(
            gate.addr,
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n").as_bytes()
        ),
        431
    );
    let big = "a".repeat(70_000);
    assert_eq!(
        status_of(
            gate.addr,
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
                .as_bytes()
        ),
        431
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_answer_431_over_http2_too() {
    let upstream = Upstream::start().await;
    let certs = Certs::new();
    let gate = Gate::start(GateSpec {
        tls: Some(&certs),
        ..GateSpec::new(ALLOW_ALL, &upstream)
    });
    let client = https_client(&certs, true);
    let big = "a".repeat(70_000);
    let got = send(
        &client,
        post(&gate.url(USERNAMEMIXED), &[("x-big", &big)], "x"),
    )
    .await;
    assert_eq!((got.status, got.version), (431, http::Version::HTTP_2));
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-h{i}"), "1".to_string()))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let got = send(&client, post(&gate.url(USERNAMEMIXED), &many, "x")).await;
    assert_eq!(got.status, 431);
    // The connection is still good for a normal request.
    let got = send(
        &client,
        post(
            &gate.url(USERNAMEMIXED),
            &[],
            fixture("rst-2005-usernamemixed.xml"),
        ),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(upstream.count(), 1);
    assert_eq!(
        gate.metric("stsgate_rejected_requests_total{reason=\"header_too_large\"}"),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_abuse_is_refused_or_reframed_and_never_smuggled() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(ALLOW_ALL, &upstream));
    let p = USERNAMEMIXED;
    // refused outright
    for bad in [
        format!(
            "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!"
        ),
        format!(
            "POST {p} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
        ),
        format!("GET {p} HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\nConnection: close\r\n\r\n"),
        format!("POST {p} HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\nConnection: close\r\n\r\n".to_string(),
    ] {
        assert_eq!(status_of(gate.addr, bad.as_bytes()), 400, "{bad:?}");
    }
    assert_eq!(
        upstream.count(),
        0,
        "nothing malformed reached the upstream"
    );
    // Content-Length with Transfer-Encoding: read by Transfer-Encoding alone,
    // and the smuggled second request never becomes a request of its own.
    let smuggle = format!(
        "POST {p} HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    );
    assert_eq!(status_of(gate.addr, smuggle.as_bytes()), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(&seen[0].body[..], b"hello");
    assert!(
        !seen[0].headers.contains_key("transfer-encoding")
            || seen[0].headers.get("content-length").is_none()
    );
    // absolute-form targets are classified by their path, like the forwarded request
    let (status, _) = raw(gate.addr, b"GET http://evil.example/adfs/services/trust/13/windowstransport HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 500);
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_decided_at_bounded_cost() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(ALLOW_ALL, &upstream));
    let bomb = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header>&lol9;</s:Header></s:Envelope>",
        (1..10)
            .map(|i| format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&lol{};", i - 1).repeat(10)
            ))
            .collect::<String>()
    );
    let external = "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>".to_string();
    let deep = "<a>".repeat(60_000);
    let attrs = format!(
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" {}>",
        (0..20_000)
            .map(|i| format!("a{i}=\"1\" "))
            .collect::<String>()
    );
    let mut invalid = fixture("rst-2005-usernamemixed.xml");
    invalid.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3]);
    let client = http_client();
    for (name, body) in [
        ("bomb", bomb.into_bytes()),
        ("external", external.into_bytes()),
        ("deep", deep.into_bytes()),
        ("attrs", attrs.into_bytes()),
        ("invalid utf-8", invalid),
    ] {
        let started = Instant::now();
        let got = send(&client, post(&gate.url(USERNAMEMIXED), &[], body.clone())).await;
        assert_eq!(
            got.status, 200,
            "{name} is forwarded as it came (the STS judges it)"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            &upstream.seen().last().unwrap().body[..],
            &body[..],
            "{name} passes untouched"
        );
    }
    let log = gate.wait_decisions(|d| d.len() >= 5);
    assert!(
        log.iter().all(|e| e.get("user").is_none()),
        "no user is read from hostile bodies: {log:?}"
    );
    assert!(
        !gate.stdout().join("\n").contains("root:"),
        "no external entity was resolved"
    );
}

/// A raw TCP "upstream" whose every connection is handled by `f`.
fn raw_upstream(f: fn(TcpStream)) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64).flatten() {
            std::thread::spawn(move || f(stream));
        }
    });
    addr
}

fn read_request(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 65536];
    let _ = s.read(&mut buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_upstreams_are_502_and_never_stall_others() {
    let reset_mid_answer = raw_upstream(|mut s| {
        read_request(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/soap+xml\r\n\r\n<s:Envelope");
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let garbage = raw_upstream(|mut s| {
        read_request(&mut s);
        let _ = s.write_all(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n");
    });
    let closes = raw_upstream(|mut s| {
        read_request(&mut s);
    });
    for (name, upstream) in [
        ("reset mid-answer", format!("http://{reset_mid_answer}")),
        ("garbage", format!("http://{garbage}")),
        ("closed without answer", format!("http://{closes}")),
        ("dns failure", "http://no-such-host.invalid:80".to_string()),
    ] {
        let spec = GateSpec {
            upstream,
            ..GateSpec::new(ALLOW_ALL, &Upstream::start().await)
        };
        let gate = Gate::start(spec);
        let started = Instant::now();
        let got = send(
            &http_client(),
            post(
                &gate.url(USERNAMEMIXED),
                &[],
                fixture("rst-2005-usernamemixed.xml"),
            ),
        )
        .await;
        assert_eq!(got.status, 502, "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{name} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            gate.metric("stsgate_upstream_responses_total{class=\"error\"}"),
            1.0,
            "{name}"
        );
        assert_eq!(
            gate.admin_get("/healthz").0,
            200,
            "{name}: the gate still runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_does_not_stall_other_requests() {
    let upstream = Upstream::start().await;
    upstream.respond(|seen| {
        let mut a = Answer::soap(200, "<ok/>");
        if seen
            .headers
            .get("x-ms-client-user-agent")
            .is_some_and(|v| v == "slow")
        {
            a.delay = Duration::from_secs(3);
        }
        a
    });
    let gate = Gate::start(GateSpec::new(ALLOW_ALL, &upstream));
    let client = http_client();
    let slow = {
        let client = client.clone();
        let url = gate.url(USERNAMEMIXED);
        tokio::spawn(async move {
            send(
                &client,
                post(&url, &[("x-ms-client-user-agent", "slow")], "<x/>"),
            )
            .await
            .status
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(
            send(&client, post(&gate.url(USERNAMEMIXED), &[], "<x/>"))
                .await
                .status,
            200
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "fast requests waited for the slow one: {:?}",
        started.elapsed()
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_file_deleted_or_half_written_keeps_the_old_rules() {
    let upstream = Upstream::start().await;
    let rules = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"127.0.0.1\"]\n";
    let gate = Gate::start(GateSpec::new(rules, &upstream));
    let client = http_client();
    let refused = || async {
        send(&http_client(), post(&gate.url(USERNAMEMIXED), &[], "<x/>"))
            .await
            .status
    };
    assert_eq!(refused().await, 500);
    std::fs::remove_file(gate.rules_path()).unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 422);
    assert_eq!(refused().await, 500, "deleted file: old rules kept");
    std::fs::write(gate.rules_path(), &rules[..rules.len() - 20]).unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 422);
    assert_eq!(refused().await, 500, "half-written file: old rules kept");
    assert!(gate.metric("stsgate_rule_reloads_total{result=\"failure\"}") >= 2.0);
    std::fs::write(gate.rules_path(), "").unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 422);
    assert_eq!(refused().await, 500, "emptied file: old rules kept");
    std::fs::write(gate.rules_path(), "[request_blocking]\nenabled = false\n").unwrap();
    assert_eq!(gate.api_post("/api/v1/reload").0, 200);
    assert_eq!(
        send(&client, post(&gate.url(USERNAMEMIXED), &[], "<x/>"))
            .await
            .status,
        200
    );
}

/// A gate with `limits` and `n` idle connections holding its slots.
async fn gate_with_held_connections(limits: &str, n: usize) -> (Gate, Upstream, Vec<TcpStream>) {
    let upstream = Upstream::start().await;
    let extra = format!("[limits]\n{limits}\n");
    let gate = Gate::start(GateSpec {
        extra: &extra,
        ..GateSpec::new(ALLOW_ALL, &upstream)
    });
    let held = (0..n)
        .map(|_| TcpStream::connect(gate.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    (gate, upstream, held)
}

/// After the held connections close, a new one is served again.
fn freed_slots_are_usable(gate: &Gate, held: Vec<TcpStream>) {
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        status_of(
            gate.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ),
        200,
        "freed slots are usable again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_are_refused_not_queued() {
    // three idle connections hold the cap
    let (gate, _upstream, held) = gate_with_held_connections("max_connections_per_ip = 3", 3).await;
    let mut fourth = TcpStream::connect(gate.addr).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut buf = Vec::new();
    let read = fourth.read_to_end(&mut buf);
    assert!(
        read.is_err() || buf.is_empty(),
        "the fourth connection was served: {:?}",
        String::from_utf8_lossy(&buf)
    );
    freed_slots_are_usable(&gate, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_overall_cap_are_refused_not_queued() {
    let (gate, _upstream, held) = gate_with_held_connections("max_connections = 2", 2).await;
    let (status, _) = raw(
        gate.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        status, 0,
        "a third connection was served past max_connections = 2"
    );
    assert!(
        gate.wait_stderr("connection limit reached"),
        "no connection-limit warning: {:?}",
        gate.stderr()
    );
    freed_slots_are_usable(&gate, held);
}

/// The HTTP/2 limits a client is told in the server's first SETTINGS frame
/// (h2c with prior knowledge on the plain listener, read off the wire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_window_and_frame_limits_are_announced() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(ALLOW_ALL, &upstream));
    let mut s = TcpStream::connect(gate.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    assert_eq!(head[3], 0x4, "the first frame is SETTINGS");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    let settings: std::collections::HashMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert_eq!(
        settings.get(&0x3),
        Some(&100),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    assert_eq!(
        settings.get(&0x4),
        Some(&(256 * 1024)),
        "INITIAL_WINDOW_SIZE: {settings:?}"
    );
    assert_eq!(
        settings.get(&0x6),
        Some(&(256 * 1024)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );
    assert!(
        settings.get(&0x5).is_none_or(|&v| v == 16 * 1024),
        "MAX_FRAME_SIZE: {settings:?}"
    );
}
