//! Several STS servers through the real binary (`upstream.urls`): round
//! robin, passive ejection (connect failures, 5xx that is not a SOAP fault;
//! a SOAP fault is a failed sign-in and ejects nothing), the active health
//! check bringing a server back, and `stsgate_upstream_healthy{server}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use stsgate_tests::*;

const OFF: &str = "[request_blocking]\nenabled = false\n";

/// One STS server of a farm that can be killed (listener and every
/// connection closed) and started again on the same port.
struct Sts {
    addr: SocketAddr,
    /// Sign-ins answered.
    served: Arc<AtomicUsize>,
    /// What sign-ins get: 200 (success), 500 (SOAP fault), 503 (an HTML error page).
    answer: Arc<AtomicU16>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Sts {
    async fn start() -> Sts {
        let mut sts = Sts {
            addr: "127.0.0.1:0".parse().unwrap(),
            served: Arc::new(AtomicUsize::new(0)),
            answer: Arc::new(AtomicU16::new(200)),
            task: None,
        };
        sts.listen().await;
        sts
    }

    async fn listen(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.addr = listener.local_addr().unwrap();
        let (served, answer) = (self.served.clone(), self.answer.clone());
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (served, answer) = (served.clone(), answer.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (served, answer) = (served.clone(), answer.clone());
                        async move {
                            if req.uri().path() == "/adfs/probe" {
                                return Ok::<_, std::convert::Infallible>(Response::new(
                                    Full::new(Bytes::new()),
                                ));
                            }
                            served.fetch_add(1, Ordering::SeqCst);
                            let (status, ct, body) = match answer.load(Ordering::SeqCst) {
                                200 => (
                                    200,
                                    "application/soap+xml; charset=utf-8",
                                    fixture("rstr-2005-success.xml"),
                                ),
                                500 => (
                                    500,
                                    "application/soap+xml; charset=utf-8",
                                    fixture("fault-failed-authentication.xml"),
                                ),
                                s => (s, "text/html", b"<html>Service Unavailable</html>".to_vec()),
                            };
                            let mut resp = Response::new(Full::new(Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            resp.headers_mut()
                                .insert("content-type", ct.parse().unwrap());
                            Ok(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// A gate in front of `servers` with `upstream_extra` lines in `[upstream]`.
fn farm_gate(servers: &[&str], upstream_extra: &str) -> Gate {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/wstrust.toml"), OFF).unwrap();
    let token = "test-token-0123456789".to_string();
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    let urls = servers
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        dir.path().join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurls = [{urls}]\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n{upstream_extra}\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n"
        ),
    )
    .unwrap();
    Gate::spawn(dir, token)
}

fn signin(gate: &Gate) -> u16 {
    let body = fixture("rst-2005-usernamemixed.xml");
    let mut bytes = format!(
        "POST {USERNAMEMIXED} HTTP/1.1\r\nHost: sts.test\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    raw(gate.addr, &bytes).0
}

/// `stsgate_upstream_healthy{server="URL"}`, if the series exists.
fn healthy(gate: &Gate, server: &str) -> Option<f64> {
    let series = format!("stsgate_upstream_healthy{{server=\"{server}\"}}");
    let (_, body) = gate.admin_get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.trim().parse().ok()))
}

fn wait_healthy(gate: &Gate, server: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthy(gate, server) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{server} never {want}: {:?}",
            healthy(gate, server)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_ejects_a_dead_server_and_brings_it_back() {
    let a = Sts::start().await;
    let mut b = Sts::start().await;
    let gate = farm_gate(
        &[&a.url(), &b.url()],
        "health_check = \"/adfs/probe\"\nhealth_interval = \"200ms\"\neject_for = \"1h\"",
    );
    assert_eq!(healthy(&gate, &a.url()), Some(1.0));
    assert_eq!(healthy(&gate, &b.url()), Some(1.0));

    // Round robin: both serve.
    for _ in 0..6 {
        assert_eq!(signin(&gate), 200);
    }
    assert_eq!((a.served(), b.served()), (3, 3));

    // B dies: the health check leaves it out, every sign-in goes to A.
    b.kill();
    wait_healthy(&gate, &b.url(), 0.0);
    let (a0, b0) = (a.served(), b.served());
    for _ in 0..6 {
        assert_eq!(signin(&gate), 200);
    }
    assert_eq!((a.served() - a0, b.served() - b0), (6, 0));
    assert!(gate.wait_stderr("upstream server failed its health check"));

    // A failed sign-in (SOAP fault 500) is not a sick server.
    a.answer.store(500, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(signin(&gate), 500);
    }
    assert_eq!(healthy(&gate, &a.url()), Some(1.0));
    a.answer.store(200, Ordering::SeqCst);

    // B comes back on its port: the health check returns it to rotation
    // (its ejection of an hour notwithstanding).
    b.listen().await;
    wait_healthy(&gate, &b.url(), 1.0);
    assert!(gate.wait_stderr("upstream server healthy again"));
    let b0 = b.served();
    for _ in 0..4 {
        assert_eq!(signin(&gate), 200);
    }
    assert_eq!(b.served() - b0, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_on_connect_failures_and_sick_answers() {
    let a = Sts::start().await;
    let b = Sts::start().await;
    // A port nobody listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let gate = farm_gate(&[&a.url(), &b.url(), &dead], "eject_for = \"1h\"");

    // The dead server fails at most one sign-in (502), then is left out.
    let statuses: Vec<u16> = (0..9).map(|_| signin(&gate)).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(healthy(&gate, &dead), Some(0.0));
    assert!(gate.wait_stderr("upstream server ejected"));

    // B answers an HTML 503 (a sick server): forwarded once, then left out.
    b.answer.store(503, Ordering::SeqCst);
    let statuses: Vec<u16> = (0..6).map(|_| signin(&gate)).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 503).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(healthy(&gate, &b.url()), Some(0.0));
    assert_eq!(healthy(&gate, &a.url()), Some(1.0));
    let a0 = a.served();
    for _ in 0..4 {
        assert_eq!(signin(&gate), 200);
    }
    assert_eq!(a.served() - a0, 4, "only A is left");
}
