//! A threat feed server for the feed tests: HTTPS on loopback (the rcgen
//! certificates of [`crate::Certs`]), one HTTP/1.1 request a connection,
//! `ETag` and `Last-Modified` on every list, `304` for a matching
//! `If-None-Match` (or, without one, `If-Modified-Since`), and on demand a
//! 500, a truncated body, a slow answer or a page that is no feed. Every
//! request is recorded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Certs;

/// How the server answers the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedAnswer {
    /// The list, or 304 when the client has it.
    Normal,
    /// This status, empty body.
    Status(u16),
    /// 200 announcing more bytes than are sent, then the connection closed.
    Truncated,
    /// The normal answer after this long.
    Slow(Duration),
    /// 200 with an HTML page (a portal or error page served as success).
    Html,
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    /// The request target.
    pub path: String,
    /// `If-None-Match`.
    pub if_none_match: Option<String>,
    /// `If-Modified-Since`.
    pub if_modified_since: Option<String>,
    /// The status answered.
    pub status: u16,
}

struct State {
    body: String,
    version: u32,
    answer: FeedAnswer,
    seen: Vec<FeedRequest>,
}

impl State {
    fn etag(&self) -> String {
        format!("\"v{}\"", self.version)
    }

    fn last_modified(&self) -> String {
        format!("Wed, 25 Nov 2026 10:{:02}:00 GMT", self.version % 60)
    }
}

/// The feed server; stops when dropped.
pub struct FeedServer {
    /// Its address.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

const HTML: &str = "<!DOCTYPE html>\n<html>\n<head><title>Maintenance</title></head>\n<body>\n<p>Back soon.</p>\n</body>\n</html>\n";

impl FeedServer {
    /// Serves `body` (version 1) over TLS with `certs`' leaf.
    pub async fn start(certs: &Certs, body: &str) -> FeedServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            body: body.to_string(),
            version: 1,
            answer: FeedAnswer::Normal,
            seen: Vec::new(),
        }));
        let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config());
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await
                    {
                        serve(tls, state).await;
                    }
                });
            }
        });
        FeedServer { addr, state, task }
    }

    /// `https://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// Publishes a new list (a new ETag and Last-Modified).
    pub fn publish(&self, body: &str) {
        let mut s = self.state.lock().unwrap();
        s.body = body.to_string();
        s.version += 1;
    }

    /// Changes how the next requests are answered.
    pub fn answer(&self, answer: FeedAnswer) {
        self.state.lock().unwrap().answer = answer;
    }

    /// The current list's ETag.
    pub fn etag(&self) -> String {
        self.state.lock().unwrap().etag()
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<FeedRequest> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Stops listening (new connections are refused).
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for FeedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(mut stream: S, state: Arc<Mutex<State>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let (if_none_match, if_modified_since) = (header("if-none-match"), header("if-modified-since"));
    let (answer, body, etag, last_modified) = {
        let s = state.lock().unwrap();
        (s.answer, s.body.clone(), s.etag(), s.last_modified())
    };
    if let FeedAnswer::Slow(d) = answer {
        tokio::time::sleep(d).await;
    }
    let fresh = match (&if_none_match, &if_modified_since) {
        (Some(inm), _) => *inm == etag,
        (None, Some(ims)) => *ims == last_modified,
        (None, None) => false,
    };
    let validators = format!("ETag: {etag}\r\nLast-Modified: {last_modified}\r\n");
    let (status, bytes) = match answer {
        FeedAnswer::Status(code) => (
            code,
            format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        ),
        FeedAnswer::Html => (
            200,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTML}",
                HTML.len()
            ),
        ),
        FeedAnswer::Truncated => (
            200,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{validators}Content-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len() + 1000,
                &body[..body.len() / 2]
            ),
        ),
        FeedAnswer::Normal | FeedAnswer::Slow(_) if fresh => (
            304,
            format!("HTTP/1.1 304 Not Modified\r\n{validators}Connection: close\r\n\r\n"),
        ),
        FeedAnswer::Normal | FeedAnswer::Slow(_) => (
            200,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n{validators}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        ),
    };
    state.lock().unwrap().seen.push(FeedRequest {
        path,
        if_none_match,
        if_modified_since,
        status,
    });
    let _ = stream.write_all(bytes.as_bytes()).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}
