//! Listeners and connections: TLS (HTTP/2 and HTTP/1.1 by ALPN) or plain
//! HTTP, a cap on open connections, header read timeouts, and graceful
//! shutdown (stop accepting, finish in-flight requests within the drain
//! timeout). Thin main, injectable server: tests bind `127.0.0.1:0` and pass
//! the listeners in.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::admin::Admin;
use crate::config::Config;
use crate::decision_log::DecisionLog;
use crate::gate::{Conn, Gate};
use crate::idle::{Activity, Tracked};
use crate::metrics::Metrics;
use crate::reload::Rules;
use crate::upstream::Upstream;
use stsgate_state::embedded::Embedded;
use stsgate_state::redis::RedisStore;
use stsgate_state::{GateState, Store};

/// A gate ready to serve: config validated, rules compiled, upstream client
/// and decision log set up.
pub struct Server {
    gate: Arc<Gate>,
    redis: Option<Arc<RedisStore>>,
    tls: Option<TlsAcceptor>,
    /// The listener's certificate, reloaded in place (`crate::tls`).
    listener_tls: Option<Arc<crate::tls::ListenerTls>>,
    admin: Arc<Admin>,
    log_thread: Option<std::thread::JoinHandle<()>>,
    /// Alerts to `alerts.webhook_url`: its task runs from `serve`.
    alerts: Option<crate::alerts::AlertSender>,
}

/// Every positioned error, one a line, as one error.
fn all_errors(errors: &[stsgate_rules::SourceError]) -> anyhow::Error {
    anyhow::anyhow!(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// The file in `state.dir` that holds the admin listener's bound address
/// while the gate runs.
pub const ADMIN_ADDR_FILE: &str = "admin.addr";

/// Opens the stores named by `[state]` and loads what they hold: the
/// embedded store must open (a clear error otherwise); Redis may be down
/// (the gate then decides from memory and catches up).
pub async fn open_state(
    config: &Config,
    metrics: &Metrics,
) -> Result<(Arc<GateState>, Option<Arc<RedisStore>>)> {
    let embedded = Embedded::open(&config.state.dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut stores: Vec<Arc<dyn Store>> = vec![Arc::new(embedded)];
    let redis = match &config.state.redis_url {
        Some(url) => {
            let redis = Arc::new(
                RedisStore::new(url, &config.state.instance)
                    .map_err(|e| anyhow::anyhow!("state.redis_url: {e}"))?,
            );
            stores.push(redis.clone());
            Some(redis)
        }
        None => None,
    };
    let state = Arc::new(GateState::with_stores(
        stores,
        config.state.max_ttl,
        config.state.instance.clone(),
        metrics.registry(),
    ));
    let secret = stsgate_state::Secret::load_or_create(&config.state.dir).with_context(|| {
        format!(
            "cannot read or make the password-hash key in {}",
            config.state.dir.display()
        )
    })?;
    state.set_secret(secret);
    // With Redis, every instance hashes passwords with the same key.
    if let Some(redis) = &redis {
        stsgate_state::share::adopt_secret(&state, redis, &config.state.dir).await;
    }
    let n = state.load().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(dir = %config.state.dir.display(), redis = redis.as_ref().map(|r| r.url()).unwrap_or("none"), blocks = n, "gate state loaded");
    Ok((state, redis))
}

impl Server {
    /// Builds everything that can fail before binding.
    pub async fn new(config: Config) -> Result<Server> {
        let metrics = Metrics::new();
        // URL threat feeds start from their copies in state.dir (fetched by `serve`).
        let feeds = crate::feeds::FeedStore::new(Some(&config.state.dir));
        let rules = Rules::load_with_feeds(&config.rules, metrics.clone(), feeds)
            .map_err(|errors| all_errors(&errors))?;
        let rules = Arc::new(rules);
        let files = crate::preflight::open(&config).map_err(|errors| all_errors(&errors))?;
        let listener_tls = files.tls;
        let tls = match &listener_tls {
            Some(l) => Some(TlsAcceptor::from(l.server_config()?)),
            None => None,
        };
        let upstream = Upstream::new(&config.upstream)?;
        let geoip = files.geoip;
        if let Some(g) = &geoip {
            g.count_reloads(metrics.registry());
        }
        let found = crate::preflight::rules_with_config(&config, &rules.current());
        for w in &found.warnings {
            tracing::warn!("{w}");
        }
        if let Some(e) = found.errors.first() {
            anyhow::bail!("{e}");
        }
        if let Some(e) = crate::directory::rules_with_config(&config, &rules.current()) {
            anyhow::bail!("{e}");
        }
        let directory = crate::directory::open(&config, metrics.registry())
            .map_err(|errors| all_errors(&errors))?;
        let token = files.admin_token;
        let (state, redis) = open_state(&config, &metrics).await?;
        // Other instances' lessons are learned with these until this one learns its own.
        let current = rules.current();
        state
            .guard
            .remember(current.lockout.as_ref(), current.spray.as_ref());
        // Alerts: the state's events go to the alert queue (never waiting).
        let alerts = crate::alerts::AlertSender::new(&config, metrics.registry())
            .map_err(|errors| all_errors(&errors))?;
        if let Some(alerts) = &alerts {
            state.set_sink(alerts.sink());
        }
        let (log, log_thread) = DecisionLog::start(&config.log, metrics.clone())
            .context("cannot start the decision log")?;
        let gate = Arc::new(
            Gate::new(
                Arc::new(config),
                rules,
                metrics,
                upstream,
                log,
                geoip,
                state,
            )
            .with_directory(directory),
        );
        let admin = Arc::new(Admin::new(
            gate.clone(),
            crate::admin::Tokens {
                admin: token,
                read: files.admin_read_token,
            },
        ));
        Ok(Server {
            gate,
            redis,
            tls,
            listener_tls,
            admin,
            log_thread: Some(log_thread),
            alerts,
        })
    }

    /// The live rules (for SIGHUP wiring).
    pub fn rules(&self) -> Arc<Rules> {
        self.gate.rules.clone()
    }

    /// Binds every listen address and the admin address.
    pub async fn bind(&self) -> Result<(Vec<TcpListener>, TcpListener)> {
        let mut listeners = Vec::new();
        for addr in &self.gate.config.listen.addrs {
            listeners.push(bind(*addr).await?);
        }
        let admin = bind(self.gate.config.admin.addr).await?;
        Ok((listeners, admin))
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests
    /// (bounded by `listen.drain_timeout`).
    pub async fn serve(
        mut self,
        listeners: Vec<TcpListener>,
        admin: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let limits = &self.gate.config.limits;
        let admission = Admission {
            limit: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Arc::new(PerIp::new(limits.max_connections_per_ip)),
            max_connections: limits.max_connections,
        };
        let shared = Arc::new(Shared {
            tls: self.tls.clone(),
            builder: connection_builder(&self.gate.config),
        });
        let graceful = Arc::new(GracefulShutdown::new());
        let workers = Arc::new(Workers::start(&self.gate, shared.clone())?);

        let bound: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let admin_addr = admin
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut tasks = tokio::task::JoinSet::new();
        for listener in listeners {
            tasks.spawn(accept_loop(
                listener,
                workers.clone(),
                graceful.clone(),
                self.tls.is_some(),
                admission.clone(),
                stop_rx.clone(),
            ));
        }
        tasks.spawn(self.admin.clone().serve(admin, stop_rx.clone()));
        tasks.spawn(self.gate.rules.clone().watch(wait_for(stop_rx.clone())));
        tasks.spawn(crate::trusted::hot_reload(
            &self.gate.config,
            &self.gate.rules,
            &self.gate.metrics,
            wait_for(stop_rx.clone()),
        ));
        // Certificate rotation: the listener's pair and upstream.ca_file.
        tasks.spawn(crate::tls::hot_reload(
            self.listener_tls.clone(),
            self.gate.config.upstream.farm.trust_in_use(),
            &self.gate.rules,
            &self.gate.metrics,
            wait_for(stop_rx.clone()),
        ));
        tasks.spawn(crate::upstream::watch_health(
            &self.gate.config.upstream,
            &self.gate.metrics,
            wait_for(stop_rx.clone()),
        ));
        tasks.spawn(reload_on_hangup(self.gate.rules.clone(), stop_rx.clone()));
        // GeoIP databases reloaded when their files change.
        if let Some(geoip) = self.gate.geoip_shared() {
            tasks.spawn(geoip.watch(wait_for(stop_rx.clone())));
        }
        // URL threat feeds, fetched every `refresh` (crate::feeds).
        tasks.spawn(crate::feeds::run(
            self.gate.rules.clone(),
            self.gate.metrics.clone(),
            wait_for(stop_rx.clone()),
        ));
        // Gate state's writers and purge run until the listeners are closed
        // and the connections drained, so nothing decided is left unwritten.
        let (state_stop, state_stop_rx) = watch::channel(false);
        let state_task = tokio::spawn(self.gate.state.clone().run(state_stop_rx.clone()));
        let redis_task = self
            .redis
            .clone()
            .map(|r| tokio::spawn(r.follow(self.gate.state.clone(), state_stop_rx.clone())));
        // Lessons shared with the other instances (stsgate_state::share).
        let share_task = self.redis.clone().map(|r| {
            tokio::spawn(stsgate_state::share::run(
                r,
                self.gate.state.clone(),
                state_stop_rx,
            ))
        });
        // The alert sender outlives the state's tasks, then flushes (bounded).
        let (alerts_stop, alerts_stop_rx) = watch::channel(false);
        let alerts_task = self
            .alerts
            .take()
            .map(|a| tokio::spawn(a.run(alerts_stop_rx)));
        // Where the admin API really is (admin.addr may say port 0): for the
        // CLI (`block`, `lockout`, `explain`) run with --config.
        let addr_file = self.gate.config.state.dir.join(ADMIN_ADDR_FILE);
        if let Err(e) = std::fs::write(&addr_file, format!("{admin_addr}\n")) {
            tracing::warn!(file = %addr_file.display(), error = %e, "cannot write the admin address file");
        }
        self.admin.ready.store(true, Ordering::SeqCst);
        tracing::info!(listen = %bound.join(","), admin = %admin_addr, upstream = %self.gate.config.upstream.url, tls = self.tls.is_some(), "stsgate ready");

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.admin.ready.store(false, Ordering::SeqCst);
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        // The accept loops are gone: closing the queues lets each worker end
        // once its connections have.
        let threads = match Arc::try_unwrap(workers) {
            Ok(workers) => workers.close(),
            Err(_) => Vec::new(),
        };
        let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
        let drained = tokio::time::timeout(self.gate.drain_timeout(), graceful.shutdown())
            .await
            .is_ok();
        if !drained {
            tracing::warn!("drain timeout reached: closing remaining connections");
        }
        let _ = std::fs::remove_file(&addr_file);
        // Each worker ends once its connections have (or were cut).
        join_threads(threads, Duration::from_secs(2)).await;
        let _ = state_stop.send(true);
        let _ = state_task.await;
        if let Some(t) = redis_task {
            let _ = t.await;
        }
        if let Some(t) = share_task {
            let _ = t.await;
        }
        let _ = alerts_stop.send(true);
        if let Some(t) = alerts_task {
            let _ = t.await;
        }
        // The decision log writes what is queued, then ends.
        self.gate.close_log();
        if let Some(t) = self.log_thread.take() {
            join_threads(vec![t], Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn wait_for(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// SIGHUP reloads the rule file, until `stop`.
async fn reload_on_hangup(rules: Arc<Rules>, stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: reload with the API or by editing the file");
        return;
    };
    let stopped = wait_for(stop);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(()) = hup.recv() => {
                let _ = rules.reload("SIGHUP").await;
            }
        }
    }
}

/// Joins threads off the async runtime, waiting at most `bound` for all.
async fn join_threads(threads: Vec<std::thread::JoinHandle<()>>, bound: Duration) {
    let joined = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(bound, joined).await.is_err() {
        tracing::warn!("a thread did not end within {bound:?} at shutdown");
    }
}

fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper runs this timer whenever it waits for a request head, so on a
        // kept-alive connection also while the connection is idle: it must not
        // cut one before `idle_timeout` does. The first request's head is held
        // to `header_read_timeout` by the idle watchdog (crate::idle).
        .header_read_timeout(
            config
                .limits
                .header_read_timeout
                .max(config.limits.idle_timeout),
        )
        .max_headers(100)
        .max_buf_size(64 * 1024);
    // HTTP/2: bounded streams, windows and frames; rapid-reset floods cut off.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(100)
        // Above the gate's own 64 KiB limit, so a request between the two is
        // answered 431 by the gate (as HTTP/1.1 is), not reset by h2.
        .max_header_list_size(256 * 1024)
        .initial_stream_window_size(256 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_send_buf_size(256 * 1024)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// A connection accepted, on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    conn: Conn,
    permits: (OwnedSemaphorePermit, PerIpPermit),
    watcher: Watcher,
}

/// What every worker shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
}

/// Thread-per-core serving: each worker thread runs its own single-threaded
/// runtime and upstream connection pool and serves whole connections, so a
/// request never hops between threads. Accept loops deal connections out
/// round robin.
struct Workers {
    queues: Vec<mpsc::Sender<Accepted>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: AtomicUsize,
}

impl Workers {
    fn start(gate: &Gate, shared: Arc<Shared>) -> Result<Workers> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut queues = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::channel(1024);
            let gate = Arc::new(gate.with_own_upstream()?);
            let shared = shared.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("stsgate-worker-{i}"))
                    .spawn(move || runtime.block_on(worker(rx, gate, shared)))?,
            );
            queues.push(tx);
        }
        Ok(Workers {
            queues,
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Closes the queues (each worker ends once its connections have) and
    /// hands back the threads to join.
    fn close(self) -> Vec<std::thread::JoinHandle<()>> {
        drop(self.queues);
        self.threads
    }

    async fn dispatch(&self, accepted: Accepted) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        let _ = self.queues[i].send(accepted).await;
    }
}

/// One worker: serves the connections it is given until its queue closes,
/// then until they end.
async fn worker(mut queue: mpsc::Receiver<Accepted>, gate: Arc<Gate>, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = queue.recv() => match accepted {
                Some(a) => {
                    connections.spawn(serve_connection(a, gate.clone(), shared.clone()));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(accepted: Accepted, gate: Arc<Gate>, shared: Arc<Shared>) {
    let Accepted {
        stream,
        conn,
        permits: _permits,
        watcher,
    } = accepted;
    let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else {
        return;
    };
    // Behind an L4 balancer: the client address of a trusted PROXY header.
    let Some(peer) = crate::proxy_protocol::peer(&mut stream, conn.peer, &gate.config).await else {
        return;
    };
    let conn = Conn { peer, ..conn };
    let limits = gate.config.limits.clone();
    let activity = Activity::new();
    let stream = Tracked::new(stream, activity.clone());
    let requests = activity.clone();
    let service = service_fn(move |req| {
        let gate = gate.clone();
        let in_flight = requests.request();
        async move {
            let response = gate.handle(req, conn).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let served = async {
        match &shared.tls {
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                let Ok(Ok(stream)) = handshake.await else {
                    return;
                };
                let _ = watcher
                    .watch(
                        shared
                            .builder
                            .serve_connection(TokioIo::new(stream), service),
                    )
                    .await;
            }
            None => {
                let _ = watcher
                    .watch(
                        shared
                            .builder
                            .serve_connection(TokioIo::new(stream), service),
                    )
                    .await;
            }
        }
    };
    // Whichever ends first: the connection, or its idleness (dropping the
    // connection closes the socket).
    tokio::select! {
        _ = served => {}
        _ = activity.idle(limits.header_read_timeout, limits.idle_timeout) => {}
    }
}

/// Who may open a connection: the caps, overall and per peer.
#[derive(Clone)]
struct Admission {
    limit: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    max_connections: usize,
}

async fn accept_loop(
    listener: TcpListener,
    workers: Arc<Workers>,
    graceful: Arc<GracefulShutdown>,
    tls: bool,
    admission: Admission,
    mut stop: watch::Receiver<bool>,
) {
    let Admission {
        limit,
        per_ip,
        max_connections,
    } = admission;
    let warned = AtomicBool::new(false);
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d: they are IPv4.
        let peer_ip = peer.ip().to_canonical();
        let Some(per_ip) = per_ip.acquire(peer_ip) else {
            drop(stream);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            if !warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = max_connections,
                    "connection limit reached: refusing new connections"
                );
            }
            drop(stream);
            continue;
        };
        warned.store(false, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let conn = Conn { peer: peer_ip, tls };
        let watcher = graceful.watcher();
        workers
            .dispatch(Accepted {
                stream,
                conn,
                permits: (permit, per_ip),
                watcher,
            })
            .await;
    }
}

/// Open connections per peer address, capped. The map holds only peers with
/// open connections, so it is bounded by `max_connections`.
pub struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection counted against its peer; released on drop.
pub struct PerIpPermit {
    owner: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    /// A cap of `max` connections per peer address.
    pub fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts a new connection from `ip`, or `None` when it has `max` open.
    pub fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PerIpPermit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpPermit {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpPermit {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_cap_counts_and_forgets() {
        let cap = Arc::new(PerIp::new(2));
        let ip: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let a = cap.acquire(ip).unwrap();
        let _b = cap.acquire(ip).unwrap();
        assert!(cap.acquire(ip).is_none());
        assert!(cap.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(a);
        let _c = cap.acquire(ip).unwrap();
        drop(_c);
        drop(_b);
        assert!(
            cap.open.lock().unwrap().is_empty(),
            "peers without connections are forgotten"
        );
    }
}
