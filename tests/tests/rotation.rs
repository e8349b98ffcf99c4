//! Certificate rotation without a restart, through the real binary: the
//! listener's certificate and key replaced on disk (atomic rename and
//! in-place write) are served to new connections while a connection opened
//! before keeps working; a bad pair (garbage, a key that does not match)
//! keeps the one in force, counted; SIGHUP and `POST /api/v1/reload` reload
//! too; `upstream.ca_file` replaced on disk is trusted by new upstream
//! connections.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use stsgate_tests::*;

const SUCCESS: &str = "stsgate_tls_reloads_total{result=\"success\"}";
const FAILURE: &str = "stsgate_tls_reloads_total{result=\"failure\"}";

const RULES: &str = "[request_blocking.ip]\nrule = \"deny\"\nentries = [\"192.0.2.1\"]\n";

/// The leaf certificate (first of the chain) of `certs`, DER.
fn leaf(certs: &Certs) -> Vec<u8> {
    CertificateDer::pem_slice_iter(certs.chain_pem.as_bytes())
        .next()
        .expect("a chain")
        .expect("PEM")
        .to_vec()
}

/// A client trusting every CA of `trusted`, without session resumption (a
/// resumed session would not show the server's certificate again).
fn client_config(trusted: &[&Certs]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certs in trusted {
        for c in CertificateDer::pem_slice_iter(certs.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A new TLS connection to the gate and the leaf certificate it presented.
async fn connect(gate: &Gate, config: &Arc<rustls::ClientConfig>) -> (TlsStream, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake within 10 s")
    .expect("handshake");
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .to_vec();
    (stream, peer)
}

/// The leaf certificate a new connection sees.
async fn served(gate: &Gate, config: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    connect(gate, config).await.1
}

/// Polls `f` every 100 ms until it holds; panics with `what` after 15 s.
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 5 s) for a log line holding every one of `needles`.
fn logged(gate: &Gate, needles: &[&str]) -> bool {
    gate.wait_until(Duration::from_secs(5), |g| {
        g.stderr()
            .iter()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    })
}

/// A keep-alive HTTP/1.1 connection held open across rotations.
struct Held {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Held {
    async fn open(stream: TlsStream) -> Held {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Held { sender }
    }

    /// GET /adfs/ls/ on this connection: the status.
    async fn get(&mut self) -> u16 {
        let req = http::Request::get("/adfs/ls/")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), async {
            self.sender.ready().await.expect("the connection is open");
            self.sender.send_request(req).await.expect("an answer")
        })
        .await
        .expect("an answer within 10 s");
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_certificate_rotates_without_a_restart() {
    let upstream = Upstream::start().await;
    let (a, b, c) = (Certs::new(), Certs::new(), Certs::new());
    let gate = Gate::start(GateSpec {
        tls: Some(&a),
        ..GateSpec::new(RULES, &upstream)
    });
    let client = client_config(&[&a, &b, &c]);
    let (cert, key) = (
        gate.dir.path().join("cert.pem"),
        gate.dir.path().join("key.pem"),
    );

    // Cert A, on a connection held open across every rotation below.
    let (stream, seen) = connect(&gate, &client).await;
    assert_eq!(seen, leaf(&a));
    let mut held = Held::open(stream).await;
    assert_eq!(held.get().await, 200);
    let failures = gate.metric(FAILURE);

    // B by atomic rename (how most tools and cert-manager's copy jobs write).
    replace(&cert, &b.chain_pem);
    replace(&key, &b.key_pem);
    eventually("a new connection sees certificate B", || async {
        served(&gate, &client).await == leaf(&b)
    })
    .await;
    assert_eq!(held.get().await, 200, "the connection opened before works");
    assert!(gate.metric(SUCCESS) >= 1.0);

    // C by in-place write (the same inodes); the chain lands a moment
    // before its key, which is not counted as a failure.
    std::fs::write(&cert, &c.chain_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    eventually("a new connection sees certificate C", || async {
        served(&gate, &client).await == leaf(&c)
    })
    .await;
    assert_eq!(held.get().await, 200);
    assert_eq!(gate.metric(FAILURE), failures, "good rotations never fail");

    // A chain that is not PEM: refused, counted, C kept.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    eventually("the garbage chain is counted", || async {
        gate.metric(FAILURE) >= failures + 1.0
    })
    .await;
    assert_eq!(served(&gate, &client).await, leaf(&c));
    assert!(gate.wait_stderr("TLS reload refused"));

    // A chain with someone else's key: refused, counted, C kept.
    std::fs::write(&cert, &b.chain_pem).unwrap();
    eventually("the mismatched pair is counted", || async {
        gate.metric(FAILURE) >= failures + 2.0
    })
    .await;
    assert_eq!(served(&gate, &client).await, leaf(&c));
    assert_eq!(held.get().await, 200);
    assert!(
        logged(&gate, &["ERROR", "do not make a valid pair"]),
        "the mismatch is logged at ERROR: {:?}",
        gate.stderr()
    );

    // Back to a good pair, then SIGHUP and the API reload it too.
    std::fs::write(&cert, &c.chain_pem).unwrap();
    let ok = gate.metric(SUCCESS);
    eventually("the good pair is reloaded", || async {
        gate.metric(SUCCESS) > ok
    })
    .await;
    let ok = gate.metric(SUCCESS);
    gate.signal("HUP");
    eventually("SIGHUP reloads the certificate", || async {
        gate.metric(SUCCESS) > ok
    })
    .await;
    assert!(
        logged(&gate, &["TLS reloaded", "SIGHUP"]),
        "{:?}",
        gate.stderr()
    );
    let ok = gate.metric(SUCCESS);
    assert_eq!(gate.api_post("/api/v1/reload").0, 200);
    eventually("the API reloads the certificate", || async {
        gate.metric(SUCCESS) > ok
    })
    .await;
    assert_eq!(served(&gate, &client).await, leaf(&c));
    assert_eq!(held.get().await, 200);
    assert_eq!(
        gate.stderr()
            .iter()
            .filter(|l| l.contains("TLS reload refused"))
            .count(),
        2,
        "only the two bad pairs were refused: {:?}",
        gate.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_style_secret_update_rotates_the_certificate() {
    // A mounted secret: cert.pem -> ..data/tls.crt, ..data -> a versioned
    // directory, swapped by one rename of the ..data link.
    let upstream = Upstream::start().await;
    let (a, b) = (Certs::new(), Certs::new());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let version = |name: &str, certs: &Certs| {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("tls.crt"), &certs.chain_pem).unwrap();
        std::fs::write(d.join("tls.key"), &certs.key_pem).unwrap();
    };
    version("..v1", &a);
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", root.join("cert.pem")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", root.join("key.pem")).unwrap();
    std::fs::create_dir(root.join("rules")).unwrap();
    std::fs::write(root.join("rules/wstrust.toml"), RULES).unwrap();
    let token = "test-token-0123456789".to_string();
    std::fs::write(root.join("admin.token"), format!("{token}\n")).unwrap();
    std::fs::write(
        root.join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n[upstream]\nurl = \"http://{}\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    let gate = Gate::spawn(dir, token);
    let client = client_config(&[&a, &b]);
    assert_eq!(served(&gate, &client).await, leaf(&a));

    version("..v2", &b);
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    eventually("a new connection sees certificate B", || async {
        served(&gate, &client).await == leaf(&b)
    })
    .await;
    assert_eq!(gate.metric(FAILURE), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_ca_file_is_reloaded() {
    let sts = Certs::new();
    let other = Certs::new();
    let upstream = Upstream::start_with(Some(sts.server_config())).await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("rules")).unwrap();
    std::fs::write(root.join("rules/wstrust.toml"), RULES).unwrap();
    let token = "test-token-0123456789".to_string();
    std::fs::write(root.join("admin.token"), format!("{token}\n")).unwrap();
    // At first the file holds a CA that did not sign the STS's certificate.
    std::fs::write(root.join("upstream-ca.pem"), &other.ca_pem).unwrap();
    std::fs::write(
        root.join("stsgate.toml"),
        format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\n[upstream]\nurl = \"https://127.0.0.1:{}\"\nca_file = \"upstream-ca.pem\"\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n",
            upstream.addr.port()
        ),
    )
    .unwrap();
    let gate = Gate::spawn(dir, token);
    let client = http_client();
    let get = || {
        http::Request::get(gate.url("/adfs/ls/"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(send(&client, get()).await.status, 502, "untrusted STS");
    assert_eq!(upstream.count(), 0);

    // The right CA, by atomic rename: new upstream connections trust it.
    replace(&gate.dir.path().join("upstream-ca.pem"), &sts.ca_pem);
    eventually("the STS is trusted", || async {
        send(&client, get()).await.status == 200
    })
    .await;
    assert!(upstream.count() >= 1);
    assert!(gate.metric(SUCCESS) >= 1.0);

    // A CA file that is not PEM: refused, counted, the roots in force kept.
    std::fs::write(gate.dir.path().join("upstream-ca.pem"), "garbage\n").unwrap();
    eventually("the garbage CA file is counted", || async {
        gate.metric(FAILURE) >= 1.0
    })
    .await;
    assert_eq!(send(&client, get()).await.status, 200);
}
