//! Bounded load against the real binary: a burst over many connections with
//! zero errors, and SIGTERM under load draining every request in flight.
//! Counts and times are fixed; this measures correctness, not speed (speed
//! is the benches' job).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stsgate_tests::*;

const RULES: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"5.143.*.*\"]\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python-requests\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_10000_requests_over_200_connections_has_no_error() {
    let upstream = Upstream::start().await;
    let gate = Gate::start(GateSpec::new(RULES, &upstream));
    let url = gate.url(USERNAMEMIXED);
    let body = bytes::Bytes::from(fixture("rst-2005-usernamemixed.xml"));
    let (ok, refused, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for conn in 0..200 {
        let (url, body, ok, refused, failed) = (
            url.clone(),
            body.clone(),
            ok.clone(),
            refused.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // one client per task: one keep-alive connection each
            let client = http_client();
            for i in 0..50 {
                let ua = if (conn + i) % 10 == 0 {
                    "python-requests/2.32"
                } else {
                    "Apple-iPhone3C1/811.2"
                };
                let req = post(&url, &[("x-ms-client-user-agent", ua)], body.clone());
                match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                    Ok(Ok(resp)) => match resp.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        500 => refused.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    },
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert_eq!(ok.load(Ordering::Relaxed), 9000);
    assert_eq!(refused.load(Ordering::Relaxed), 1000);
    assert_eq!(upstream.count(), 9000, "every refusal stayed at the gate");
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"refuse\",stage=\"user_agent\"}"),
        1000.0
    );
    assert_eq!(
        gate.metric("stsgate_decisions_total{action=\"forward\",stage=\"none\"}"),
        9000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_every_request_in_flight() {
    let upstream = Upstream::start().await;
    upstream.respond(|_| Answer {
        delay: Duration::from_millis(700),
        ..Answer::soap(200, "<ok/>")
    });
    let mut gate = Gate::start(GateSpec::new(RULES, &upstream));
    let url = gate.url(USERNAMEMIXED);
    let mut in_flight = Vec::new();
    for _ in 0..100 {
        let url = url.clone();
        in_flight.push(tokio::spawn(async move {
            send(&http_client(), post(&url, &[], "<x/>")).await.status
        }));
    }
    // wait until they are all at the upstream, then stop the gate
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while upstream.count() < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} requests arrived",
            upstream.count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gate.signal("TERM");
    for t in in_flight {
        assert_eq!(t.await.unwrap(), 200, "a request in flight was cut");
    }
    assert_eq!(gate.wait_exit(Duration::from_secs(15)), Some(0));
    assert!(
        std::net::TcpStream::connect(gate.addr).is_err(),
        "still accepting after shutdown"
    );
}
