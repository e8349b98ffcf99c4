//! Test support for the black-box tests: run the real `stsgate` binary on
//! loopback, a real recording upstream (plain or TLS), TLS certificates made
//! with rcgen, HTTP/1.1 and HTTP/2 clients, and raw sockets for what a
//! normal client would not send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub mod browser;
pub mod feed_server;
pub mod redis_server;
pub use redis_server::RedisServer;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// A file of `testdata/wstrust/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = workspace().join("testdata/wstrust").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The `stsgate` binary, built once per test process (cargo releases its
/// lock while tests run, so building here is safe).
pub fn stsgate_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent()?.parent().map(Path::to_path_buf))
            .expect("test binary lives in target/<profile>/deps");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "--quiet", "-p", "stsgate", "--bin", "stsgate"])
            .current_dir(workspace());
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p stsgate failed");
        profile_dir.join("stsgate")
    })
    .clone()
}

/// Runs `stsgate ARGS...` to completion: (exit code, stdout, stderr).
pub fn stsgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(stsgate_bin())
        .args(args)
        .output()
        .expect("run stsgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---- certificates -------------------------------------------------------

/// A CA and a leaf certificate for `localhost` and 127.0.0.1, as PEM.
pub struct Certs {
    /// The CA certificate.
    pub ca_pem: String,
    /// The leaf chain (leaf then CA).
    pub chain_pem: String,
    /// The leaf's private key.
    pub key_pem: String,
}

impl Certs {
    /// Makes fresh certificates.
    pub fn new() -> Certs {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stsgate test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "sts.test".to_string()])
                .expect("params");
        leaf_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        Certs {
            ca_pem: ca.pem(),
            chain_pem: format!("{}{}", leaf.pem(), ca.pem()),
            key_pem: leaf_key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `cert.pem`, `key.pem` into `dir`.
    pub fn write(&self, dir: &Path) {
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        std::fs::write(dir.join("cert.pem"), &self.chain_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &self.key_pem).unwrap();
    }

    /// A rustls server config for this leaf.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A rustls client config trusting this CA.
    pub fn client_config(&self) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }
}

impl Default for Certs {
    fn default() -> Self {
        Certs::new()
    }
}

// ---- the recording upstream --------------------------------------------

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub target: String,
    /// HTTP version.
    pub version: http::Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Answer {
    /// `status` with a SOAP body.
    pub fn soap(status: u16, body: impl Into<Bytes>) -> Answer {
        Answer {
            status,
            headers: vec![(
                "content-type".into(),
                "application/soap+xml; charset=utf-8".into(),
            )],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
}

type Responder = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

/// A real HTTP upstream on loopback that records what reaches it.
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    responder: Arc<Mutex<Responder>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Upstream {
    /// Starts a plain HTTP upstream answering with the success fixture.
    pub async fn start() -> Upstream {
        Upstream::start_with(None).await
    }

    /// Starts an upstream, over TLS when `tls` is given.
    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let success = Bytes::from(fixture("rstr-2005-success.xml"));
        let responder: Arc<Mutex<Responder>> = Arc::new(Mutex::new(Arc::new(move |_: &Seen| {
            Answer::soap(200, success.clone())
        })));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (seen2, responder2) = (seen.clone(), responder.clone());
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (seen, responder, acceptor) =
                    (seen2.clone(), responder2.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, responder) = (seen.clone(), responder.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let s = Seen {
                                method: parts.method.to_string(),
                                target: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                version: parts.version,
                                headers: parts.headers,
                                body,
                            };
                            let answer = (responder.lock().unwrap().clone())(&s);
                            seen.lock().unwrap().push(s);
                            if !answer.delay.is_zero() {
                                tokio::time::sleep(answer.delay).await;
                            }
                            let mut resp = Response::new(Full::new(answer.body));
                            *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap();
                            for (k, v) in answer.headers {
                                resp.headers_mut().append(
                                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                                    v.parse().unwrap(),
                                );
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            responder,
            _stop: stop_tx,
        }
    }

    /// Changes what it answers.
    pub fn respond(&self, f: impl Fn(&Seen) -> Answer + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Arc::new(f);
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

// ---- the gate under test -------------------------------------------------

/// A running `stsgate run` process with its files.
pub struct Gate {
    /// The process.
    pub child: Child,
    /// Its first listen address.
    pub addr: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
    /// Its directory (config, rules, token, certs).
    pub dir: tempfile::TempDir,
    /// The admin token.
    pub token: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// How to start a gate.
pub struct GateSpec<'a> {
    /// The rule file's text.
    pub rules: &'a str,
    /// Extra TOML appended to the generated config (sections after the
    /// generated ones: `[client_ip]`, `[limits]`, `[blocked]`, `[filter]`...).
    pub extra: &'a str,
    /// The upstream URL.
    pub upstream: String,
    /// Listen with TLS (certs written to the directory).
    pub tls: Option<&'a Certs>,
    /// Extra lines inside `[upstream]`.
    pub upstream_extra: &'a str,
}

impl<'a> GateSpec<'a> {
    /// A spec with rules, in front of `upstream`.
    pub fn new(rules: &'a str, upstream: &Upstream) -> GateSpec<'a> {
        GateSpec {
            rules,
            extra: "",
            upstream: format!("http://{}", upstream.addr),
            tls: None,
            upstream_extra: "",
        }
    }
}

impl Gate {
    /// Writes the files and starts `stsgate run`; waits until /readyz is 200.
    pub fn start(spec: GateSpec<'_>) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::write(dir.path().join("rules/wstrust.toml"), spec.rules).unwrap();
        let token = "test-token-0123456789".to_string();
        std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
        let tls = match spec.tls {
            Some(certs) => {
                certs.write(dir.path());
                "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n"
            }
            None => "",
        };
        let config = format!(
            "rules = \"rules/wstrust.toml\"\n[listen]\naddr = \"127.0.0.1:0\"\ndrain_timeout = \"10s\"\n{tls}\n[upstream]\nurl = \"{}\"\nconnect_timeout = \"2s\"\ntimeout = \"5s\"\n{}\n[admin]\naddr = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n[state]\ndir = \"state\"\n{}\n",
            spec.upstream, spec.upstream_extra, spec.extra
        );
        std::fs::write(dir.path().join("stsgate.toml"), config).unwrap();
        Gate::spawn(dir, token)
    }

    /// Starts `stsgate run` on an existing directory holding `stsgate.toml`.
    pub fn spawn(dir: tempfile::TempDir, token: String) -> Gate {
        let mut child = Command::new(stsgate_bin())
            .args(["run", "--config"])
            .arg(dir.path().join("stsgate.toml"))
            .env("STSGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stsgate");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect_lines(child.stdout.take().unwrap(), stdout.clone());
        collect_lines(child.stderr.take().unwrap(), stderr.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        let (addr, admin) = loop {
            if let Some(found) = stderr.lock().unwrap().iter().find_map(|l| ready_line(l)) {
                break found;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "stsgate exited with {status}: {}",
                    stderr.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "stsgate did not get ready: {}",
                stderr.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let gate = Gate {
            child,
            addr,
            admin,
            dir,
            token,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw(
            gate.admin,
            b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .0 != 200
        {
            assert!(Instant::now() < deadline, "readyz never 200");
            std::thread::sleep(Duration::from_millis(20));
        }
        gate
    }

    /// The rule file path.
    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules/wstrust.toml")
    }

    /// `http(s)://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.dir.path().join("cert.pem").exists() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// The decision log lines parsed as JSON (log.format = "json").
    pub fn decisions(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Raw stdout lines.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until a stderr line contains `needle`: lines arrive
    /// through a reader thread, a moment after the gate writes them.
    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.stderr().iter().any(|l| l.contains(needle)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `stsgate explain --config <this gate's config> ARGS... --json`, parsed.
    pub fn explain_json(&self, args: &[&str]) -> serde_json::Value {
        let config = self.dir.path().join("stsgate.toml").display().to_string();
        let mut all = vec!["explain", "--config", &config];
        all.extend_from_slice(args);
        all.push("--json");
        let (code, out, err) = stsgate(&all);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("explain --json printed no JSON ({e}): {out}"))
    }

    /// Raw stderr lines (operational log).
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `f` holds for the decision log, or panics after 5 s.
    pub fn wait_decisions(
        &self,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let d = self.decisions();
            if f(&d) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "decision log never matched: {d:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal (`HUP`, `TERM`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        // The shell's own `kill`: no procps needed.
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{sig} {}", self.child.id()))
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit (up to `timeout`); its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET an admin path: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        raw(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    /// POST an admin API path with the token: (status, body).
    pub fn api_post(&self, path: &str) -> (u16, String) {
        raw(
            self.admin,
            format!("POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", self.token)
                .as_bytes(),
        )
    }

    /// The value of one metric series, e.g. `stsgate_decisions_total{action="refuse",stage="ip"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect_lines(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            into.lock().unwrap().push(line);
        }
    });
}

fn ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    if !line.contains("stsgate ready") {
        return None;
    }
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(|v| v.split(',').next().unwrap_or(v).to_string())
    };
    Some((
        field("listen=")?.parse().ok()?,
        field("admin=")?.parse().ok()?,
    ))
}

// ---- clients -------------------------------------------------------------

/// Sends raw bytes and reads until the peer closes (or 10 s): (status, whole answer).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, if status == 0 { text } else { body })
}

/// A plain HTTP/1.1 client.
pub fn http_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTPS client trusting `certs`' CA; `h2` forces HTTP/2 (ALPN), else HTTP/1.1.
pub fn https_client(
    certs: &Certs,
    h2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(certs.client_config())
        .https_only();
    let connector = if h2 {
        builder.enable_http2().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(connector)
}

/// A received answer.
#[derive(Debug)]
pub struct Got {
    /// Status.
    pub status: u16,
    /// Version.
    pub version: http::Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Got {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a request with any client; panics on transport errors.
pub async fn send<C>(client: &Client<C, Full<Bytes>>, req: Request<Full<Bytes>>) -> Got
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let resp = client.request(req).await.expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Got {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// A POST of `body` to `url` with `headers`.
pub fn post(url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/soap+xml; charset=utf-8");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// The WS-Trust 2005 path.
pub const USERNAMEMIXED: &str = "/adfs/services/trust/2005/usernamemixed";

// ---- the admin API and restarts (gate state) -----------------------------

impl Gate {
    /// Calls the admin API with `token` (`None`: no Authorization header):
    /// (status, body parsed as JSON, or `Null`).
    pub fn api_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, text) = raw(self.admin, req.as_bytes());
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Calls the admin API with the gate's token.
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        self.api_as(Some(&self.token.clone()), method, path, body)
    }

    /// Stops the process (SIGTERM, or SIGKILL with `kill9`) and starts a new
    /// one on the same directory (config, rules, state).
    pub fn restart(mut self, kill9: bool) -> Gate {
        self.signal(if kill9 { "KILL" } else { "TERM" });
        let deadline = Instant::now() + Duration::from_secs(15);
        while !matches!(self.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "stsgate did not exit: {}",
            self.stderr().join("\n")
        );
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let token = self.token.clone();
        drop(self);
        Gate::spawn(dir, token)
    }

    /// Stops the process (SIGTERM) and hands back its directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        self.signal("TERM");
        assert!(
            self.wait_exit(Duration::from_secs(15)).is_some(),
            "stsgate did not exit: {}",
            self.stderr().join("\n")
        );
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Waits (bounded) until `f` holds; false when it never did.
    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut(&Gate) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A WS-Trust 2005 request for `user` (XML-escaped here) with odd prefixes.
pub fn rst_for(user: &str, password: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&apos;")
            .replace('"', "&quot;")
    };
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="utf-8"?><soapenv:Envelope xmlns:soapenv="http://www.w3.org/2003/05/soap-envelope" "#,
            r#"xmlns:x="http://www.w3.org/2005/08/addressing"><soapenv:Header><x:Action>http://schemas.xmlsoap.org/ws/2005/02/trust/RST/Issue</x:Action>"#,
            r#"<sec:Security xmlns:sec="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"><sec:UsernameToken>"#,
            r#"<sec:Username>{}</sec:Username><sec:Password>{}</sec:Password></sec:UsernameToken></sec:Security></soapenv:Header>"#,
            r#"<soapenv:Body><t:RequestSecurityToken xmlns:t="http://schemas.xmlsoap.org/ws/2005/02/trust"><t:RequestType>http://schemas.xmlsoap.org/ws/2005/02/trust/Issue</t:RequestType></t:RequestSecurityToken></soapenv:Body></soapenv:Envelope>"#
        ),
        esc(user),
        esc(password)
    )
}

// ---- an STS that checks passwords ----------------------------------------

/// The right password of every user of [`password_checking_sts`].
pub const RIGHT_PASSWORD: &str = "correct horse & battery";

/// An upstream that answers like ADFS for envelopes built by [`rst_for`]:
/// the success fixture for [`RIGHT_PASSWORD`], the FailedAuthentication
/// fault for anything else.
pub async fn password_checking_sts() -> Upstream {
    let upstream = Upstream::start().await;
    let success = Bytes::from(fixture("rstr-2005-success.xml"));
    let fault = Bytes::from(fixture("fault-failed-authentication.xml"));
    let right = format!(
        "<sec:Password>{}</sec:Password>",
        RIGHT_PASSWORD.replace('&', "&amp;")
    );
    upstream.respond(move |seen| {
        if let Some(answer) = adfs_form_answer(seen, RIGHT_PASSWORD) {
            answer
        } else if String::from_utf8_lossy(&seen.body).contains(&right) {
            Answer::soap(200, success.clone())
        } else {
            Answer::soap(500, fault.clone())
        }
    });
    upstream
}

// ---- OAuth2 ROPC and forms sign-in, as ADFS answers them -------------------

/// The ROPC token endpoint.
pub const TOKEN_PATH: &str = "/adfs/oauth2/token";
/// The passive endpoint with the forms sign-in page.
pub const FORMS_PATH: &str = "/adfs/ls/";
/// ADFS's answer to a password grant with a wrong user or password.
pub const ROPC_INVALID_GRANT: &str = r#"{"error":"invalid_grant","error_description":"MSIS9659: Invalid 'username' or 'password'."}"#;
/// The error text of the forms sign-in page after a wrong password.
pub const FORMS_ERROR_TEXT: &str =
    "Incorrect user ID or password. Type the correct user ID and password, and try again.";

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn form_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Encodes one form component (`+` for a space, `%XX` for the rest but
/// `*-._` and alphanumerics).
pub fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A POST of `application/x-www-form-urlencoded` `body` to `url`.
pub fn form_post(
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// The value of field `name` (ASCII case ignored) in a form body.
pub fn form_field(body: &str, name: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        form_decode(k)
            .eq_ignore_ascii_case(name)
            .then(|| form_decode(v))
    })
}

/// `grant_type=password&username=..&password=..&client_id=..` as MSAL sends it.
pub fn ropc_body(user: &str, password: &str) -> String {
    format!(
        "grant_type=password&username={}&password={}&client_id=8e3a7c1b-0d6f-4b2a-9c55-3f1e2d4a6b70&scope=openid",
        form_encode(user),
        form_encode(password)
    )
}

/// `UserName=..&Password=..&AuthMethod=FormsAuthentication`, as the sign-in page posts it.
pub fn forms_body(user: &str, password: &str) -> String {
    format!(
        "UserName={}&Password={}&AuthMethod=FormsAuthentication",
        form_encode(user),
        form_encode(password)
    )
}

/// The forms sign-in page (testdata/forms/signin-page.html) posting to
/// `action`, with `user` filled in and `error` shown (HTML-escaped).
pub fn forms_page(action: &str, user: &str, error: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    let page = std::fs::read_to_string(workspace().join("testdata/forms/signin-page.html"))
        .expect("testdata/forms/signin-page.html");
    page.replace("{action}", &esc(action))
        .replace("{username}", &esc(user))
        .replace("{error}", &esc(error))
}

/// ADFS's answers beside WS-Trust, for an STS whose every user has password
/// `right`: the OpenID configuration (GET `/adfs/.well-known/openid-configuration`,
/// which MSAL reads first), the token endpoint (200 JSON with `access_token`,
/// or 400 `invalid_grant` MSIS9659, with `Cache-Control: no-store`) and the
/// forms sign-in page (GET: the page; POST: 302 setting `MSISAuth`, or the
/// page again, 200, with the error text). `None` for other paths.
pub fn adfs_form_answer(seen: &Seen, right: &str) -> Option<Answer> {
    let path = seen
        .target
        .split('?')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let body = String::from_utf8_lossy(&seen.body);
    let host = seen
        .headers
        .get("x-forwarded-host")
        .or_else(|| seen.headers.get("host"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("sts.test")
        .to_string();
    let answer = |status: u16, headers: &[(&str, &str)], body: String| Answer {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
        delay: Duration::ZERO,
    };
    let json = [
        ("content-type", "application/json;charset=UTF-8"),
        ("cache-control", "no-store"),
        ("pragma", "no-cache"),
    ];
    let html = [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-cache,no-store"),
        ("pragma", "no-cache"),
        ("expires", "-1"),
    ];
    if path == "/adfs/.well-known/openid-configuration" {
        let doc = serde_json::json!({
            "issuer": format!("https://{host}/adfs"),
            "authorization_endpoint": format!("https://{host}/adfs/oauth2/authorize/"),
            "token_endpoint": format!("https://{host}/adfs/oauth2/token/"),
            "jwks_uri": format!("https://{host}/adfs/discovery/keys"),
            "response_types_supported": ["code", "id_token", "code id_token", "token"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", "password", "implicit"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic", "private_key_jwt", "windows_client"],
        });
        return Some(answer(200, &json[..1], doc.to_string()));
    }
    if path.starts_with(TOKEN_PATH) {
        let good = form_field(&body, "grant_type").as_deref() == Some("password")
            && form_field(&body, "username").is_some()
            && form_field(&body, "password").as_deref() == Some(right);
        return Some(if good {
            let token = serde_json::json!({
                "access_token": "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ0ZXN0In0.c2lnbmF0dXJl",
                "token_type": "bearer",
                "expires_in": 3600,
                "resource": "urn:microsoft:userinfo",
                "refresh_token": "cmVmcmVzaA",
                "refresh_token_expires_in": 28800,
                "scope": "openid",
            });
            answer(200, &json, token.to_string())
        } else {
            answer(400, &json, ROPC_INVALID_GRANT.to_string())
        });
    }
    if path.starts_with("/adfs/ls") {
        if seen.method != "POST" {
            return Some(answer(200, &html, forms_page(&seen.target, "", "")));
        }
        let user = form_field(&body, "UserName").unwrap_or_default();
        return Some(if form_field(&body, "Password").as_deref() == Some(right) {
            answer(
                302,
                &[
                    ("location", seen.target.as_str()),
                    (
                        "set-cookie",
                        "MSISAuth=AAEAAGVk; path=/adfs; HttpOnly; Secure",
                    ),
                    ("content-length", "0"),
                ],
                String::new(),
            )
        } else {
            answer(
                200,
                &html,
                forms_page(&seen.target, &user, FORMS_ERROR_TEXT),
            )
        });
    }
    None
}
