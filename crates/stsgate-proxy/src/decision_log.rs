//! The decision log (PRODUCT.md §4.7): one event per filtered request, as
//! JSON lines, readable text, or RFC 5424 syslog. Events go through a
//! bounded queue to a writer thread, so the request path never waits on
//! stdout or a collector; when the writer falls behind, events are dropped
//! and counted.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};

use serde::Serialize;

use crate::config::{Log, LogFormat, SyslogAddr};
use crate::metrics::Metrics;
use crate::recent::Recent;

/// Longest header value or user name written to the log.
const MAX_FIELD: usize = 256;
/// Events queued before new ones are dropped.
const QUEUE: usize = 16384;
/// How long the writer naps when the queue is empty.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// One decision. Keys absent when unknown.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// RFC 3339 time of the decision.
    pub ts: String,
    /// TCP peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_ip: Option<IpAddr>,
    /// The client IP the rules saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// User from the UsernameToken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// X-MS-Client-Application.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    /// X-MS-Client-User-Agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Sign-in protocol of the path: `wstrust`, `oauth2_ropc`, `forms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Stage that decided.
    pub stage: &'static str,
    /// List that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Entry that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// Action taken.
    pub action: &'static str,
    /// HTTP status sent to the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Upstream time, when the request was forwarded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_ms: Option<u64>,
    /// The `category` of the threat feed that decided (stage `threat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat_category: Option<Arc<str>>,
    /// What the STS answered: `success`, `failure` or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signin: Option<&'static str>,
}

impl Event {
    /// An event stamped now, with nothing decided yet.
    pub fn now() -> Event {
        Event {
            ts: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            stage: stsgate_rules::Stage::None.as_str(),
            action: stsgate_rules::Action::Forward.as_str(),
            ..Event::default()
        }
    }
}

/// Cuts a value taken from a request to a bounded length.
pub fn bounded(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct DecisionLog {
    tx: SyncSender<Event>,
    metrics: Metrics,
    closing: Arc<AtomicBool>,
    recent: Arc<Recent>,
}

impl DecisionLog {
    /// Starts the writer thread for `config`. It ends when every sender is gone.
    pub fn start(
        config: &Log,
        metrics: Metrics,
    ) -> std::io::Result<(DecisionLog, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let sink = Sink::open(config)?;
        let format = config.format;
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        let recent = Arc::new(Recent::default());
        let ring = recent.clone();
        let handle = std::thread::Builder::new()
            .name("decision-log".into())
            .spawn(move || write_loop(rx, sink, format, &stop, &ring))?;
        Ok((
            DecisionLog {
                tx,
                metrics,
                closing,
                recent,
            },
            handle,
        ))
    }

    /// The last refusals and failed sign-ins the writer wrote (the admin API's
    /// `GET /api/v1/events`).
    pub fn recent(&self) -> &Arc<Recent> {
        &self.recent
    }

    /// Asks the writer to write what is queued and end (at shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Queues one event; never blocks.
    pub fn send(&self, event: Event) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(event)
        {
            self.metrics.log_dropped.inc();
        }
    }
}

enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    Udp(std::net::UdpSocket, String),
    Tcp(Option<std::net::TcpStream>, String),
}

impl Sink {
    fn open(config: &Log) -> std::io::Result<Sink> {
        Ok(match &config.syslog_addr {
            Some(SyslogAddr::Udp(addr)) => {
                let bind = if addr.starts_with('[') {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                Sink::Udp(std::net::UdpSocket::bind(bind)?, addr.clone())
            }
            Some(SyslogAddr::Tcp(addr)) => Sink::Tcp(None, addr.clone()),
            None => Sink::Stdout(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            )),
        })
    }

    /// Pushes buffered lines out; called whenever the queue runs empty.
    fn flush(&mut self) {
        if let Sink::Stdout(out) = self {
            let _ = out.flush();
        }
    }

    fn write(&mut self, line: &str) {
        match self {
            Sink::Stdout(out) => {
                let _ = out.write_all(line.as_bytes()).and_then(|_| {
                    out.write_all(
                        b"
",
                    )
                });
            }
            Sink::Udp(sock, addr) => {
                let _ = sock.send_to(line.as_bytes(), addr.as_str());
            }
            Sink::Tcp(stream, addr) => {
                // RFC 6587 octet counting; reconnect once on failure.
                let frame = format!("{} {}", line.len(), line);
                for _ in 0..2 {
                    if stream.is_none() {
                        *stream = std::net::TcpStream::connect(addr.as_str()).ok();
                    }
                    match stream.as_mut().map(|s| s.write_all(frame.as_bytes())) {
                        Some(Ok(())) => return,
                        _ => *stream = None,
                    }
                }
            }
        }
    }
}

fn write_loop(
    rx: Receiver<Event>,
    mut sink: Sink,
    format: LogFormat,
    closing: &AtomicBool,
    recent: &Recent,
) {
    let host = hostname();
    let pid = std::process::id();
    // Remote syslog always speaks syslog.
    let format = if matches!(sink, Sink::Stdout(_)) {
        format
    } else {
        LogFormat::Syslog
    };
    // Drain what is queued, write it with one flush, then nap: the request
    // path never has to wake this thread (a wake-up per event costs more
    // than the event). Lines reach the sink within BATCH_PAUSE.
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(event) => {
                    let line = match format {
                        LogFormat::Json => serde_json::to_string(&event).unwrap_or_default(),
                        LogFormat::Text => text_line(&event),
                        LogFormat::Syslog => syslog_line(&event, &host, pid),
                    };
                    sink.write(&line);
                    recent.offer(&event);
                    wrote = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    sink.flush();
                    return;
                }
            }
        }
        if wrote {
            sink.flush();
        }
        if closing.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(BATCH_PAUSE);
    }
}

fn fields(e: &Event) -> Vec<(&'static str, String)> {
    let mut f = Vec::with_capacity(16);
    let mut opt = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            f.push((k, v));
        }
    };
    opt("peer_ip", e.peer_ip.map(|i| i.to_string()));
    opt("client_ip", e.client_ip.map(|i| i.to_string()));
    opt("user", e.user.clone());
    opt("application", e.application.clone());
    opt("user_agent", e.user_agent.clone());
    opt("path", e.path.clone());
    opt("protocol", e.protocol.map(str::to_string));
    opt("stage", Some(e.stage.to_string()));
    opt("list", e.list.clone());
    opt("entry", e.entry.clone());
    opt("action", Some(e.action.to_string()));
    opt("status", e.status.map(|s| s.to_string()));
    opt("upstream_ms", e.upstream_ms.map(|s| s.to_string()));
    opt(
        "threat_category",
        e.threat_category.as_deref().map(str::to_string),
    );
    opt("signin", e.signin.map(str::to_string));
    f
}

/// `ts key=value key="value with spaces"`; values escaped so a request
/// cannot forge a line.
pub fn text_line(e: &Event) -> String {
    let mut line = e.ts.clone();
    for (k, v) in fields(e) {
        let plain = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '=');
        if plain {
            line.push_str(&format!(" {k}={v}"));
        } else {
            line.push_str(&format!(
                " {k}={}",
                serde_json::to_string(&v).unwrap_or_default()
            ));
        }
    }
    line
}

/// RFC 5424: `<PRI>1 TS HOST stsgate PID decision [stsgate@32473 k="v" ...]`.
pub fn syslog_line(e: &Event, host: &str, pid: u32) -> String {
    // facility user (1), severity informational (6); notice (5) for refusals.
    let severity = if e.action == "refuse" || e.action == "redirect" {
        5
    } else {
        6
    };
    let mut sd = String::from("[stsgate@32473");
    for (k, v) in fields(e) {
        sd.push_str(&format!(" {k}=\""));
        for c in v.chars() {
            match c {
                '"' | '\\' | ']' => {
                    sd.push('\\');
                    sd.push(c);
                }
                c if c.is_control() => sd.push(' '),
                c => sd.push(c),
            }
        }
        sd.push('"');
    }
    sd.push(']');
    format!(
        "<{}>1 {} {} stsgate {} decision {}",
        8 + severity,
        e.ts,
        host,
        pid,
        sd
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            ts: "2026-11-23T10:00:00.000Z".into(),
            peer_ip: Some("10.0.0.1".parse().unwrap()),
            client_ip: Some("5.143.1.1".parse().unwrap()),
            user: Some("d'arcy@contoso.com".into()),
            user_agent: Some("evil\" ] x=\\y\nforged".into()),
            path: Some("/adfs/services/trust/2005/usernamemixed".into()),
            stage: "ip",
            list: Some("deny".into()),
            entry: Some("5.143.*.*".into()),
            action: "refuse",
            status: Some(500),
            ..Event::default()
        }
    }

    #[test]
    fn json_has_the_contract_keys_and_omits_unknown_ones() {
        let v: serde_json::Value = serde_json::to_value(event()).unwrap();
        for k in [
            "ts",
            "peer_ip",
            "client_ip",
            "user",
            "user_agent",
            "path",
            "stage",
            "list",
            "entry",
            "action",
            "status",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v.get("application").is_none() && v.get("upstream_ms").is_none());
    }

    #[test]
    fn text_and_syslog_cannot_be_forged() {
        let t = text_line(&event());
        assert!(!t.contains('\n'));
        assert!(t.contains(r#"user_agent="evil\" ] x=\\y\nforged""#), "{t}");
        let s = syslog_line(&event(), "gw1", 42);
        assert!(s.starts_with("<13>1 2026-11-23T10:00:00.000Z gw1 stsgate 42 decision [stsgate@32473 peer_ip=\"10.0.0.1\""), "{s}");
        assert!(s.contains(r#"user_agent="evil\" \] x=\\y forged""#), "{s}");
        assert!(
            s.ends_with("upstream_ms=\"\"]") || s.ends_with("status=\"500\"]"),
            "{s}"
        );
    }

    #[test]
    fn threat_category_in_every_format() {
        let e = Event {
            stage: "threat",
            list: Some("firehol1".into()),
            threat_category: Some(Arc::from("botnet")),
            ..event()
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["threat_category"], "botnet");
        assert!(text_line(&e).contains(" threat_category=botnet"));
        assert!(syslog_line(&e, "gw1", 42).contains(" threat_category=\"botnet\""));
        let none: serde_json::Value = serde_json::to_value(event()).unwrap();
        assert!(none.get("threat_category").is_none());
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(bounded(&"a".repeat(1000)).chars().count(), MAX_FIELD + 1);
        assert_eq!(bounded("short"), "short");
    }
}
