//! The live gate state: what the request path reads (an immutable
//! [`BlockTable`] swapped whole), what the admin API changes (a master map
//! under a lock, off the request path), and the owned background tasks that
//! write every change to the stores through bounded queues, purge expired
//! blocks, and catch a failed store up once it is back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::{mpsc, watch};

use crate::block::{Block, BlockTable, NewBlock, now_ms};
use crate::store::{Change, Namespace, Record, Store, StoreError, StoreKind};

/// Changes queued for one store before the queue overflows (then the store
/// is caught up by a full resync: nothing is lost, memory is the truth).
const QUEUE: usize = 8192;
/// Changes written in one batch.
const BATCH: usize = 512;
/// How often a failed store is retried.
const RETRY: Duration = Duration::from_secs(2);
/// How often expired blocks are purged.
const PURGE: Duration = Duration::from_secs(1);
/// Removals remembered for a store that is down, so its catch-up does not
/// bring them back.
const MAX_TOMBSTONES: usize = 100_000;

/// Something that happened to the state, for alerts and logs.
#[derive(Debug, Clone)]
pub enum StateEvent {
    /// A block was added (or extended).
    BlockAdded(Arc<Block>),
    /// A block was removed through the API.
    BlockRemoved(Arc<Block>),
    /// A block reached its end.
    BlockExpired(Arc<Block>),
    /// Smart lockout locked a user for unfamiliar locations.
    Lockout(Arc<LockoutAlert>),
    /// A correct password from an unfamiliar location while the user was locked.
    CompromiseSuspected(Arc<CompromiseAlert>),
    /// A password spray: one client IP failing for many users, or one wrong
    /// password failing for many users.
    Spray(Arc<SprayAlert>),
}

impl StateEvent {
    /// The alert's `event` name.
    pub fn name(&self) -> &'static str {
        match self {
            StateEvent::BlockAdded(_) => "block_added",
            StateEvent::BlockRemoved(_) => "block_removed",
            StateEvent::BlockExpired(_) => "block_expired",
            StateEvent::Lockout(_) => "lockout",
            StateEvent::CompromiseSuspected(_) => "compromise_suspected",
            StateEvent::Spray(_) => "spray",
        }
    }

    /// Every event name, for metrics.
    pub const NAMES: [&'static str; 6] = [
        "lockout",
        "compromise_suspected",
        "spray",
        "block_added",
        "block_removed",
        "block_expired",
    ];
}

/// What a `lockout` alert says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutAlert {
    /// The user (lower case).
    pub user: String,
    /// The client IP of the failure that locked.
    pub client_ip: std::net::IpAddr,
    /// Failures from unfamiliar locations in the window.
    pub unfamiliar_failures: u32,
    /// Failures from familiar locations in the window.
    pub familiar_failures: u32,
    /// `lockout.threshold`.
    pub threshold: u32,
    /// Until when unfamiliar locations are refused (ms since the epoch).
    pub locked_until_ms: u64,
    /// `enforce` or `log_only`.
    pub mode: &'static str,
}

/// What a `compromise_suspected` alert says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompromiseAlert {
    /// The user (lower case).
    pub user: String,
    /// The unfamiliar client IP that had the right password.
    pub client_ip: std::net::IpAddr,
    /// Until when the user is locked.
    pub locked_until_ms: u64,
}

/// What a `spray` alert says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SprayAlert {
    /// `ip` (one client IP failing for many users) or `password` (one wrong
    /// password failing for many users).
    pub kind: &'static str,
    /// The spraying IP, for `ip`.
    pub client_ip: Option<std::net::IpAddr>,
    /// The users seen failing (bounded).
    pub users: Vec<String>,
    /// The client IPs seen (bounded).
    pub client_ips: Vec<std::net::IpAddr>,
    /// Until when requests are refused (ms since the epoch).
    pub until_ms: u64,
    /// The block it created, for `ip`.
    pub block: Option<Arc<Block>>,
}

/// Where state events go (the alert sender). It must not block: a full
/// queue drops the event and counts it.
pub trait EventSink: Send + Sync {
    /// Takes one event.
    fn send(&self, event: StateEvent);
}

impl EventSink for mpsc::Sender<StateEvent> {
    fn send(&self, event: StateEvent) {
        let _ = self.try_send(event);
    }
}

/// The state metrics of PRODUCT.md §4.6.
#[derive(Clone)]
pub struct StateMetrics {
    /// `stsgate_blocks_active{kind}`.
    pub blocks_active: IntGaugeVec,
    /// `stsgate_state_errors_total{store}`.
    pub state_errors: IntCounterVec,
    /// `stsgate_users_locked`.
    pub users_locked: prometheus::IntGauge,
    /// `stsgate_sprayed_passwords_active`.
    pub sprayed_passwords: prometheus::IntGauge,
}

impl StateMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> StateMetrics {
        let blocks_active = IntGaugeVec::new(
            Opts::new("stsgate_blocks_active", "Live dynamic blocks, by kind."),
            &["kind"],
        )
        .expect("valid metric");
        let state_errors = IntCounterVec::new(
            Opts::new(
                "stsgate_state_errors_total",
                "Failed reads and writes of a state store; the gate kept deciding from memory.",
            ),
            &["store"],
        )
        .expect("valid metric");
        let users_locked =
            prometheus::IntGauge::new("stsgate_users_locked", "Users locked by smart lockout now.")
                .expect("valid metric");
        let sprayed_passwords = prometheus::IntGauge::new(
            "stsgate_sprayed_passwords_active",
            "Sprayed passwords (keyed hashes) refused now.",
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(users_locked.clone()));
        let _ = registry.register(Box::new(sprayed_passwords.clone()));
        let _ = registry.register(Box::new(blocks_active.clone()));
        let _ = registry.register(Box::new(state_errors.clone()));
        for kind in ["ip", "user"] {
            blocks_active.with_label_values(&[kind]).set(0);
        }
        for store in [StoreKind::Embedded, StoreKind::Redis] {
            state_errors.with_label_values(&[store.as_str()]).reset();
        }
        StateMetrics {
            blocks_active,
            state_errors,
            users_locked,
            sprayed_passwords,
        }
    }
}

/// How a store is doing, for `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoreHealth {
    /// `embedded` or `redis`.
    pub store: &'static str,
    /// The last write or read worked.
    pub ok: bool,
    /// The last error, while not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One store, seen from the state: its queue and its health.
struct StoreLink {
    store: Arc<dyn Store>,
    queue: mpsc::Sender<Change>,
    /// The queue overflowed or a write failed: a full resync is due.
    behind: AtomicBool,
    error: Mutex<Option<String>>,
    /// Block ids removed while the store was behind.
    tombstones: Mutex<HashSet<String>>,
    /// Wakes the writer for a resync asked for by [`GateState::resync_soon`].
    wake: tokio::sync::Notify,
}

impl StoreLink {
    fn send(&self, change: Change) {
        if self.behind.load(Ordering::Relaxed) {
            if let Change::Remove { key, .. } = &change {
                let mut t = lock(&self.tombstones);
                if t.len() < MAX_TOMBSTONES {
                    t.insert(key.clone());
                }
            }
        }
        if self.queue.try_send(change).is_err() {
            self.behind.store(true, Ordering::Relaxed);
        }
    }
}

/// The gate state: dynamic blocks now; lockout and spray windows plug in
/// beside them.
pub struct GateState {
    table: ArcSwap<BlockTable>,
    blocks: Mutex<HashMap<String, Arc<Block>>>,
    /// Blocks removed here (id → `created_at_ms`, `expires_at_ms`), until
    /// they would have ended: a shared store or another instance that still
    /// has one (a missed message, a resync racing the removal) does not
    /// bring it back; it is removed there again instead.
    removed: Mutex<HashMap<String, (u64, u64)>>,
    max_ttl: Duration,
    instance: String,
    metrics: StateMetrics,
    links: Vec<Arc<StoreLink>>,
    /// Receivers of the writer queues, taken by [`GateState::run`].
    receivers: Mutex<Vec<(Arc<StoreLink>, mpsc::Receiver<Change>)>>,
    events: Mutex<Option<Arc<dyn EventSink>>>,
    /// Smart lockout and spray state.
    pub guard: crate::guard::Guard,
    secret: Mutex<Option<Arc<crate::guard::Secret>>>,
    /// Lessons shared with other instances (crate::share).
    outbox: crate::share::Outbox,
}

/// What [`GateState::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new block.
    Created,
    /// The same block existed: its end moved later (or stayed), its reason was replaced.
    Extended,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GateState {
    /// State kept in memory only (tests, `explain`).
    pub fn in_memory(max_ttl: Duration, registry: &Registry) -> GateState {
        GateState::with_stores(Vec::new(), max_ttl, "local".into(), registry)
    }

    /// State written to `stores` (the embedded store first, then Redis).
    /// Call [`GateState::load`] before serving and [`GateState::run`] to
    /// start the writers.
    pub fn with_stores(
        stores: Vec<Arc<dyn Store>>,
        max_ttl: Duration,
        instance: String,
        registry: &Registry,
    ) -> GateState {
        let mut links = Vec::new();
        let mut receivers = Vec::new();
        for store in stores {
            let (tx, rx) = mpsc::channel(QUEUE);
            let link = Arc::new(StoreLink {
                store,
                queue: tx,
                behind: AtomicBool::new(false),
                error: Mutex::new(None),
                tombstones: Mutex::new(HashSet::new()),
                wake: tokio::sync::Notify::new(),
            });
            receivers.push((link.clone(), rx));
            links.push(link);
        }
        GateState {
            table: ArcSwap::from_pointee(BlockTable::default()),
            blocks: Mutex::new(HashMap::new()),
            removed: Mutex::new(HashMap::new()),
            max_ttl,
            instance,
            metrics: StateMetrics::new(registry),
            links,
            receivers: Mutex::new(receivers),
            events: Mutex::new(None),
            guard: crate::guard::Guard::new(),
            secret: Mutex::new(None),
            outbox: crate::share::Outbox::default(),
        }
    }

    /// Reads the blocks every store holds into memory. The first store (the
    /// embedded one) must answer; a later one (Redis) that cannot is logged,
    /// counted, and caught up by its writer once it answers.
    pub async fn load(&self) -> Result<usize, StoreError> {
        for (i, link) in self.links.iter().enumerate() {
            match link.store.load(Namespace::Blocks).await {
                Ok(records) => {
                    let blocks = records.iter().filter_map(decode).map(Arc::new);
                    let mut map = lock(&self.blocks);
                    for b in blocks {
                        merge(&mut map, b);
                    }
                }
                Err(e) if i == 0 => return Err(e),
                Err(e) => self.store_failed(link, &e),
            }
        }
        // Smart lockout and sprayed passwords live in the embedded store.
        if let Some(link) = self
            .links
            .iter()
            .find(|l| l.store.kind() == StoreKind::Embedded)
        {
            let mut records = link.store.load(Namespace::Users).await?;
            records.extend(link.store.load(Namespace::Sprayed).await?);
            let users = self.guard.restore(&records);
            tracing::debug!(users, "smart lockout state loaded");
        }
        // Whatever one store lacks, its writer brings over.
        for link in &self.links {
            link.behind.store(true, Ordering::Relaxed);
        }
        let n = lock(&self.blocks).len();
        self.publish(&lock(&self.blocks));
        Ok(n)
    }

    /// A stream of state events (alerts); the newest subscriber gets them.
    pub fn subscribe(&self, capacity: usize) -> mpsc::Receiver<StateEvent> {
        let (tx, rx) = mpsc::channel(capacity);
        self.set_sink(Arc::new(tx));
        rx
    }

    /// The key for password hashes (from `state.dir/secret.key`).
    pub fn set_secret(&self, secret: crate::guard::Secret) {
        *lock(&self.secret) = Some(Arc::new(secret));
    }

    /// The keyed hash of a password; `None` without a secret.
    pub fn password_key(&self, password: &[u8]) -> Option<crate::guard::PasswordKey> {
        let secret = lock(&self.secret).clone();
        secret.map(|s| s.key(password))
    }

    /// Learns from an answered sign-in: counts, familiar IPs, spray windows;
    /// raises the alerts and adds the per-IP spray block it calls for.
    pub fn learn(
        &self,
        lesson: &crate::guard::Lesson,
        lockout: Option<&stsgate_rules::LockoutSettings>,
        spray: Option<&stsgate_rules::SpraySettings>,
    ) {
        let learned = self.guard.learn(lesson, lockout, spray);
        self.share_lesson(lesson);
        if let Some(l) = learned.lockout {
            self.emit(StateEvent::Lockout(Arc::new(l)));
        }
        if let Some(mut alert) = learned.spray_ip {
            if let (Some(ip), Some(s)) = (alert.client_ip, spray) {
                let new = NewBlock {
                    target: crate::block::Target::Ip(ip.to_string()),
                    ttl: s.block_for,
                    action: crate::block::BlockAction::Refuse,
                    reason: Some(format!(
                        "spray: failed sign-ins for {} users",
                        alert.users.len()
                    )),
                    origin: "spray".to_string(),
                };
                alert.block = self.add(vec![new]).into_iter().next().map(|(b, _)| b);
            }
            self.emit(StateEvent::Spray(Arc::new(alert)));
        }
        if let Some(alert) = learned.spray_password {
            self.emit(StateEvent::Spray(Arc::new(alert)));
        }
    }

    /// Sends state events (alerts) to `sink` from now on.
    pub fn set_sink(&self, sink: Arc<dyn EventSink>) {
        *lock(&self.events) = Some(sink);
    }

    /// The blocks the request path sees now.
    #[inline]
    pub fn table(&self) -> arc_swap::Guard<Arc<BlockTable>> {
        self.table.load()
    }

    /// The same, owned (to hold across an await or hand to a thread).
    pub fn table_full(&self) -> Arc<BlockTable> {
        self.table.load_full()
    }

    /// The longest block the API accepts.
    pub fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    /// This instance's name (alerts, Redis messages).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Adds blocks (or extends the same ones), enforced as soon as this
    /// returns, and queued for the stores.
    pub fn add(&self, new: Vec<NewBlock>) -> Vec<(Arc<Block>, Added)> {
        let now = now_ms();
        let mut out = Vec::with_capacity(new.len());
        {
            let mut map = lock(&self.blocks);
            for n in new {
                let fresh = Block::new(n.target, n.action, n.reason, n.origin, now, n.ttl);
                let (block, added) = match map.get(&fresh.id) {
                    Some(old) if old.live(now) => {
                        let extended = Block {
                            created_at_ms: old.created_at_ms,
                            expires_at_ms: old.expires_at_ms.max(fresh.expires_at_ms),
                            reason: fresh.reason.clone().or_else(|| old.reason.clone()),
                            ..fresh
                        };
                        (Arc::new(extended), Added::Extended)
                    }
                    _ => (Arc::new(fresh), Added::Created),
                };
                map.insert(block.id.clone(), block.clone());
                out.push((block, added));
            }
            self.publish(&map);
        }
        {
            let mut removed = lock(&self.removed);
            if !removed.is_empty() {
                for (block, _) in &out {
                    removed.remove(&block.id);
                }
            }
        }
        for (block, _) in &out {
            self.write(|| Change::Put(encode(block)));
            self.emit(StateEvent::BlockAdded(block.clone()));
        }
        out
    }

    /// Removes a block; `None` when there is no such live block.
    pub fn remove(&self, id: &str) -> Option<Arc<Block>> {
        let now = now_ms();
        let removed = {
            let mut map = lock(&self.blocks);
            let removed = map.remove(id)?;
            self.publish(&map);
            removed
        };
        self.remember_removed(&removed);
        self.write(|| Change::Remove {
            ns: Namespace::Blocks,
            key: id.to_string(),
        });
        if !removed.live(now) {
            return None;
        }
        self.emit(StateEvent::BlockRemoved(removed.clone()));
        Some(removed)
    }

    /// One live block.
    pub fn get(&self, id: &str) -> Option<Arc<Block>> {
        let now = now_ms();
        lock(&self.blocks).get(id).filter(|b| b.live(now)).cloned()
    }

    /// Every live block, soonest to end first.
    pub fn list(&self) -> Vec<Arc<Block>> {
        let now = now_ms();
        let mut v: Vec<Arc<Block>> = lock(&self.blocks)
            .values()
            .filter(|b| b.live(now))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.expires_at_ms, &a.id).cmp(&(b.expires_at_ms, &b.id)));
        v
    }

    /// A block written by another instance (Redis): enforced here too, and
    /// kept in the stores other than the one it came from.
    pub fn remote_put(&self, block: Block, from: StoreKind) {
        if !block.live(now_ms()) {
            return;
        }
        let stale = lock(&self.removed)
            .get(&block.id)
            .is_some_and(|&(created, _)| block.created_at_ms <= created);
        if stale {
            // Removed here after it was made: remove it there again.
            for link in self.links.iter().filter(|l| l.store.kind() == from) {
                link.send(Change::Remove {
                    ns: Namespace::Blocks,
                    key: block.id.clone(),
                });
            }
            return;
        }
        let block = Arc::new(block);
        {
            let mut map = lock(&self.blocks);
            if map.get(&block.id).is_some_and(|old| **old == *block) {
                return;
            }
            merge(&mut map, block.clone());
            self.publish(&map);
        }
        self.write_except(from, || Change::Put(encode(&block)));
    }

    /// A block removed by another instance.
    pub fn remote_remove(&self, id: &str, from: StoreKind) {
        let removed = {
            let mut map = lock(&self.blocks);
            let Some(removed) = map.remove(id) else {
                return;
            };
            self.publish(&map);
            removed
        };
        self.remember_removed(&removed);
        self.write_except(from, || Change::Remove {
            ns: Namespace::Blocks,
            key: id.to_string(),
        });
    }

    /// A store's own task (e.g. the Redis follower) saw it fail: counted,
    /// logged, shown in `/readyz`, and a catch-up is due.
    pub fn report_store_error(&self, kind: StoreKind, e: &StoreError) {
        if let Some(link) = self.links.iter().find(|l| l.store.kind() == kind) {
            self.store_failed(link, e);
        }
    }

    /// Asks for a full resync of a store (e.g. after a reconnect, or
    /// periodically for a shared store, to catch missed notifications).
    pub fn resync_soon(&self, kind: StoreKind) {
        if let Some(link) = self.links.iter().find(|l| l.store.kind() == kind) {
            link.behind.store(true, Ordering::Relaxed);
            link.wake.notify_one();
        }
    }

    /// How each store is doing.
    pub fn health(&self) -> Vec<StoreHealth> {
        self.links
            .iter()
            .map(|l| {
                let error = lock(&l.error).clone();
                StoreHealth {
                    store: l.store.kind().as_str(),
                    ok: error.is_none(),
                    error,
                }
            })
            .collect()
    }

    /// Runs the background work until `stop` turns true: one writer per
    /// store, and the purge of expired blocks. Queued writes are flushed
    /// before it returns.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let receivers = std::mem::take(&mut *lock(&self.receivers));
        // The writers stop only after the last purge has queued what the
        // guard learned, so a graceful stop loses nothing.
        let (writers_stop, writers_stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (link, rx) in receivers {
            tasks.spawn(self.clone().writer(link, rx, writers_stop_rx.clone()));
        }
        self.clone().purge(stop).await;
        self.purge_now();
        let _ = writers_stop.send(true);
        while tasks.join_next().await.is_some() {}
    }

    fn publish(&self, map: &HashMap<String, Arc<Block>>) {
        let now = now_ms();
        let table = BlockTable::build(map.values().filter(|b| b.live(now)).cloned());
        let (ips, users) = table.counts();
        self.metrics
            .blocks_active
            .with_label_values(&["ip"])
            .set(i64::try_from(ips).unwrap_or(i64::MAX));
        self.metrics
            .blocks_active
            .with_label_values(&["user"])
            .set(i64::try_from(users).unwrap_or(i64::MAX));
        let old = self.table.swap(Arc::new(table));
        // A large table is freed off the async threads when there are any.
        if tokio::runtime::Handle::try_current().is_ok() && old.blocks().len() > 10_000 {
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    fn write(&self, change: impl Fn() -> Change) {
        for link in &self.links {
            link.send(change());
        }
    }

    fn write_except(&self, from: StoreKind, change: impl Fn() -> Change) {
        for link in self.links.iter().filter(|l| l.store.kind() != from) {
            link.send(change());
        }
    }

    fn emit(&self, event: StateEvent) {
        match &event {
            StateEvent::BlockAdded(b) => {
                tracing::info!(id = %b.id, kind = b.target.kind(), action = b.action.as_str(), origin = %b.origin, expires_at = %crate::block::rfc3339(b.expires_at_ms), "block added")
            }
            StateEvent::BlockRemoved(b) => {
                tracing::info!(id = %b.id, kind = b.target.kind(), "block removed")
            }
            StateEvent::BlockExpired(b) => {
                tracing::info!(id = %b.id, kind = b.target.kind(), "block expired")
            }
            StateEvent::Lockout(l) => {
                tracing::warn!(user = %l.user, client_ip = %l.client_ip, unfamiliar_failures = l.unfamiliar_failures, mode = l.mode, "user locked for unfamiliar locations")
            }
            StateEvent::CompromiseSuspected(c) => {
                tracing::warn!(user = %c.user, client_ip = %c.client_ip, "correct password from an unfamiliar location while locked: possible compromise")
            }
            StateEvent::Spray(sp) => {
                tracing::warn!(
                    kind = sp.kind,
                    users = sp.users.len(),
                    client_ips = sp.client_ips.len(),
                    "password spray detected"
                )
            }
        }
        let sink = lock(&self.events).clone();
        if let Some(sink) = sink {
            sink.send(event);
        }
    }

    /// Raises a state event (logged, and sent to the alert sink).
    pub fn raise(&self, event: StateEvent) {
        self.emit(event);
    }

    fn store_failed(&self, link: &StoreLink, e: &StoreError) {
        let kind = link.store.kind().as_str();
        self.metrics.state_errors.with_label_values(&[kind]).inc();
        let first = lock(&link.error).replace(e.to_string()).is_none();
        link.behind.store(true, Ordering::Relaxed);
        if first {
            tracing::error!(store = kind, error = %e, "state store failed: deciding from memory, will catch up");
        } else {
            tracing::debug!(store = kind, error = %e, "state store still failing");
        }
    }

    fn store_ok(&self, link: &StoreLink) {
        if lock(&link.error).take().is_some() {
            tracing::info!(
                store = link.store.kind().as_str(),
                "state store back: caught up"
            );
        }
    }

    async fn writer(
        self: Arc<Self>,
        link: Arc<StoreLink>,
        mut rx: mpsc::Receiver<Change>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    if !link.behind.load(Ordering::Relaxed) {
                        match link.store.apply(&batch).await {
                            Ok(()) => {}
                            Err(e) => self.store_failed(&link, &e),
                        }
                    }
                    // Behind: the resync writes the whole state anyway.
                    batch.clear();
                }
                () = link.wake.notified() => {
                    if link.behind.load(Ordering::Relaxed) {
                        match self.resync(&link).await {
                            Ok(()) => self.store_ok(&link),
                            Err(e) => self.store_failed(&link, &e),
                        }
                    }
                }
                _ = retry.tick() => {
                    if link.behind.load(Ordering::Relaxed) {
                        match self.resync(&link).await {
                            Ok(()) => self.store_ok(&link),
                            Err(e) => self.store_failed(&link, &e),
                        }
                    }
                }
            }
        }
        // Flush what is queued, once, bounded by the store's own timeouts.
        rx.close();
        while rx.recv_many(&mut batch, BATCH).await > 0 {}
        if link.behind.load(Ordering::Relaxed) {
            let _ = self.resync(&link).await;
        } else if !batch.is_empty() {
            if let Err(e) = link.store.apply(&batch).await {
                self.store_failed(&link, &e);
            }
        }
    }

    /// Brings a store in line with memory. Records the store has that memory
    /// lacks are, for a shared store (Redis), blocks other instances added
    /// (imported, unless this instance removed them meanwhile); for the
    /// embedded store, leftovers (removed).
    async fn resync(&self, link: &StoreLink) -> Result<(), StoreError> {
        // Clear first: changes made from here on are queued as usual.
        link.behind.store(false, Ordering::Relaxed);
        let result = async {
            let stored = link.store.load(Namespace::Blocks).await?;
            let tombstones = std::mem::take(&mut *lock(&link.tombstones));
            let shared = link.store.kind() == StoreKind::Redis;
            let mut changes = Vec::new();
            let mut imported = Vec::new();
            {
                let map = lock(&self.blocks);
                let mut seen = HashSet::new();
                for record in &stored {
                    seen.insert(record.key.as_str());
                    match map.get(&record.key) {
                        Some(b) if encode(b) == *record => {}
                        Some(b) => changes.push(Change::Put(encode(b))),
                        None if shared && !tombstones.contains(&record.key) => {
                            if let Some(b) = decode(record) {
                                imported.push(b);
                            }
                        }
                        None => changes.push(Change::Remove {
                            ns: Namespace::Blocks,
                            key: record.key.clone(),
                        }),
                    }
                }
                for (id, b) in map.iter() {
                    if !seen.contains(id.as_str()) {
                        changes.push(Change::Put(encode(b)));
                    }
                }
            }
            if link.store.kind() == StoreKind::Embedded {
                // Lockout records written while the store was behind were not kept.
                changes.extend(self.guard.snapshot());
            }
            for chunk in changes.chunks(BATCH) {
                link.store.apply(chunk).await?;
            }
            for b in imported {
                self.remote_put(b, link.store.kind());
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            link.behind.store(true, Ordering::Relaxed);
        }
        result
    }

    async fn purge(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PURGE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tick.tick() => self.purge_now(),
            }
        }
    }

    fn remember_removed(&self, block: &Block) {
        let mut removed = lock(&self.removed);
        if removed.len() < MAX_TOMBSTONES || removed.contains_key(&block.id) {
            removed.insert(block.id.clone(), (block.created_at_ms, block.expires_at_ms));
        }
    }

    /// Drops blocks that have ended (requests already ignore them).
    pub fn purge_now(&self) {
        let now = now_ms();
        let locked = self.guard.purge_remembered(now);
        // What lockout and spray detection learned this second, written
        // behind (at most a second of learning is lost to a crash).
        let changes = self.guard.take_changes();
        if let Some(link) = self
            .links
            .iter()
            .find(|l| l.store.kind() == StoreKind::Embedded)
        {
            for change in changes {
                link.send(change);
            }
        }
        self.metrics
            .users_locked
            .set(i64::try_from(locked).unwrap_or(i64::MAX));
        self.metrics
            .sprayed_passwords
            .set(i64::try_from(self.guard.sprayed_count(now)).unwrap_or(i64::MAX));
        lock(&self.removed).retain(|_, &mut (_, expires)| expires > now);
        let expired: Vec<Arc<Block>> = {
            let mut map = lock(&self.blocks);
            let expired: Vec<Arc<Block>> = map.values().filter(|b| !b.live(now)).cloned().collect();
            if expired.is_empty() {
                return;
            }
            for b in &expired {
                map.remove(&b.id);
            }
            self.publish(&map);
            expired
        };
        for b in expired {
            self.write(|| Change::Remove {
                ns: Namespace::Blocks,
                key: b.id.clone(),
            });
            self.emit(StateEvent::BlockExpired(b));
        }
    }
}

/// Lessons shared with other instances through Redis (crate::share).
impl GateState {
    /// Learns another instance's lesson with the settings this guard last
    /// saw: the same counts, familiar IPs, wrong-password hashes and spray
    /// windows as a local lesson, but no alert and no block (the instance
    /// that learned it raises them; its blocks come through the blocks sync).
    pub fn learn_remote(&self, lesson: &crate::guard::Lesson) {
        let (lockout, spray) = self.guard.settings();
        let _ = self.guard.learn(lesson, lockout.as_ref(), spray.as_ref());
    }

    /// A help-desk reset of a user's lockout counts, here and (with Redis)
    /// on every instance. False when the user had nothing to clear here.
    pub fn reset_lockout(&self, user: &str) -> bool {
        let reset = self.guard.reset(user);
        self.share(|| crate::share::Entry::Reset(crate::guard::user_key(user)));
        reset
    }

    /// The sharing side of the state.
    pub fn outbox(&self) -> &crate::share::Outbox {
        &self.outbox
    }

    /// Queues a local lesson for the other instances (never waits).
    fn share_lesson(&self, lesson: &crate::guard::Lesson) {
        self.share(|| crate::share::entry_of(lesson));
    }

    fn share(&self, entry: impl FnOnce() -> crate::share::Entry) {
        if !self.outbox.offer(entry) {
            // Full: dropped and counted; this instance still learned it.
            self.metrics
                .state_errors
                .with_label_values(&[StoreKind::Redis.as_str()])
                .inc();
            tracing::debug!("lesson queue for redis full: lesson not shared");
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps the later-ending of two copies of a block.
fn merge(map: &mut HashMap<String, Arc<Block>>, b: Arc<Block>) {
    match map.get(&b.id) {
        Some(old) if old.expires_at_ms >= b.expires_at_ms && old.reason.is_some() => {}
        _ => {
            map.insert(b.id.clone(), b);
        }
    }
}

/// A block as a store record.
pub fn encode(b: &Block) -> Record {
    Record {
        ns: Namespace::Blocks,
        key: b.id.clone(),
        value: serde_json::to_vec(b).unwrap_or_default(),
        expires_at_ms: b.expires_at_ms,
    }
}

/// A store record as a block; `None` (and a warning) when it does not decode.
pub fn decode(r: &Record) -> Option<Block> {
    match serde_json::from_slice::<Block>(&r.value) {
        Ok(b) if b.id == r.key && crate::block::normalize_check(&b) => Some(b),
        Ok(_) => {
            tracing::warn!(key = %r.key, "stored block does not match its key: ignored");
            None
        }
        Err(e) => {
            tracing::warn!(key = %r.key, error = %e, "stored block does not decode: ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::Embedded;
    use serde_json::json;

    fn nb(v: serde_json::Value) -> NewBlock {
        NewBlock::from_json(&v, Duration::from_secs(86400)).unwrap()
    }

    #[tokio::test]
    async fn add_extend_remove_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ip: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let id;
        {
            let store: Arc<dyn Store> = Arc::new(Embedded::open(dir.path()).unwrap());
            let state = Arc::new(GateState::with_stores(
                vec![store],
                Duration::from_secs(86400),
                "t".into(),
                &Registry::new(),
            ));
            state.load().await.unwrap();
            let (stop_tx, stop_rx) = watch::channel(false);
            let run = tokio::spawn(state.clone().run(stop_rx));
            let added = state.add(vec![nb(json!({"ip": "198.51.100.0/24", "ttl": 60}))]);
            assert_eq!(added[0].1, Added::Created);
            id = added[0].0.id.clone();
            assert!(state.table().by_ip(&[ip], now_ms()).is_some());
            let again = state.add(vec![nb(
                json!({"ip": "198.51.100.0/24", "ttl": 120, "reason": "soar"}),
            )]);
            assert_eq!(again[0].1, Added::Extended);
            assert_eq!(again[0].0.id, id);
            assert!(again[0].0.expires_at_ms > added[0].0.expires_at_ms);
            assert_eq!(state.list().len(), 1);
            let user = state.add(vec![nb(json!({"user": "x@y", "ttl": 60}))]);
            assert!(state.remove(&user[0].0.id).is_some());
            assert!(state.remove(&user[0].0.id).is_none());
            stop_tx.send(true).unwrap();
            run.await.unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(Embedded::open(dir.path()).unwrap());
        let state = GateState::with_stores(
            vec![store],
            Duration::from_secs(86400),
            "t".into(),
            &Registry::new(),
        );
        assert_eq!(state.load().await.unwrap(), 1);
        let b = state.get(&id).unwrap();
        assert_eq!(b.reason.as_deref(), Some("soar"));
        assert!(state.table().by_ip(&[ip], now_ms()).is_some());
    }

    #[tokio::test]
    async fn expired_blocks_are_purged() {
        let state = GateState::in_memory(Duration::from_secs(60), &Registry::new());
        let mut events = state.subscribe(8);
        let mut short = nb(json!({"user": "a@b", "ttl": 1}));
        short.ttl = Duration::from_millis(30);
        state.add(vec![short]);
        assert_eq!(state.table().counts(), (0, 1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(
            state.table().by_user("a@b", now_ms()).is_none(),
            "ended at once"
        );
        state.purge_now();
        assert_eq!(state.table().counts(), (0, 0));
        assert!(matches!(events.try_recv(), Ok(StateEvent::BlockAdded(_))));
        assert!(matches!(events.try_recv(), Ok(StateEvent::BlockExpired(_))));
    }
}
