//! The Redis store: gate state shared by every instance behind one load
//! balancer (`state.redis_url`).
//!
//! - Records live under `stsgate:{ns}:{key}` (a block: `stsgate:block:b-…`,
//!   its value the block as JSON), each with a Redis TTL that ends with the
//!   record, so Redis drops ended blocks by itself.
//! - A batch of changes is one `MULTI`/`EXEC` transaction: `SET … PX <ms
//!   left>` or `DEL`, and per change a `PUBLISH` on [`CHANNEL`] of
//!   `{"instance","run","ns","key","op":"put"|"remove"}`.
//! - [`RedisStore::follow`] subscribes to [`CHANNEL`] and applies other
//!   instances' changes to the local [`GateState`]; after every (re)connect
//!   and every [`RESYNC_EVERY`] it asks for a full resync (`SCAN`, never
//!   `KEYS`), which catches messages missed while disconnected.
//! - Every Redis call is bounded by [`TIMEOUT`]; the request path never
//!   waits on Redis (it reads the in-memory table). A Redis that is down is
//!   counted, logged and shown in `/readyz`; the gate decides from memory
//!   and catches up once Redis answers.
//!
//! Only `redis://` (plain TCP) is supported; `rediss://` (TLS) is not yet.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Value};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use ::redis::{Cmd, FromRedisValue, Pipeline, Script, ScriptInvocation, cmd, pipe};

use crate::block::now_ms;
use crate::service::{GateState, decode};
use crate::store::{Change, Namespace, Record, Store, StoreError, StoreFuture, StoreKind};

/// The pub/sub channel every instance publishes its changes on.
pub const CHANNEL: &str = "stsgate:changes";
/// The first part of every key stsgate writes.
pub const PREFIX: &str = "stsgate";
/// The longest any one Redis call (connect, command, transaction) may take.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// How often the follower asks for a full resync (missed messages).
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// First and longest wait between reconnects of the follower.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// `SCAN … COUNT` hint, and keys read per `MGET`.
const SCAN_COUNT: usize = 1000;
const MGET_CHUNK: usize = 500;

/// The Redis backend of the gate state.
pub struct RedisStore {
    client: Client,
    /// The URL with any password masked, for messages.
    shown: String,
    instance: String,
    /// Random per process: an instance ignores its own messages even when
    /// another one carries the same name.
    run: String,
    config: AsyncConnectionConfig,
    /// The shared command connection, made on first use and dropped on any
    /// failure (the next call reconnects).
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

/// One change as published on [`CHANNEL`].
#[derive(Debug, Serialize, Deserialize)]
struct Message<'a> {
    instance: &'a str,
    #[serde(default)]
    run: &'a str,
    ns: &'a str,
    key: &'a str,
    op: &'a str,
}

impl RedisStore {
    /// Parses the URL (`redis://[user:pass@]host:port/db`); connects lazily,
    /// so a Redis that is down at start is not fatal (the gate decides from
    /// memory and catches up). `instance` names this gate in the messages.
    pub fn new(url: &str, instance: &str) -> Result<RedisStore, StoreError> {
        let shown = redact(url);
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("redis") => {}
            Some("rediss") => {
                return Err(StoreError(format!(
                    "state.redis_url {shown}: rediss:// (TLS) is not supported yet; use redis:// on a trusted network or through a TLS tunnel"
                )));
            }
            _ => {
                return Err(StoreError(format!(
                    "state.redis_url {shown}: expected redis://[user:password@]host:port/db"
                )));
            }
        }
        let client = Client::open(url).map_err(|e| {
            let e = e.to_string().replace(url, &shown);
            StoreError(format!("state.redis_url {shown}: {e}"))
        })?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        Ok(RedisStore {
            client,
            shown,
            instance: instance.to_string(),
            run: random_token(),
            config,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    /// The Redis key of a record: `stsgate:{ns}:{key}`.
    pub fn key(ns: Namespace, key: &str) -> String {
        format!("{PREFIX}:{}:{key}", ns.as_str())
    }

    /// The URL as logs may show it (password masked).
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Runs one command on the shared connection, bounded by [`TIMEOUT`]
    /// (for counters and windows kept next to the blocks).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(TIMEOUT, cmd.query_async(&mut conn)).await;
        self.settle("command", result).await
    }

    /// Runs a pipeline (atomic if built so) on the shared connection,
    /// bounded by [`TIMEOUT`].
    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(TIMEOUT, pipe.query_async(&mut conn)).await;
        self.settle("transaction", result).await
    }

    /// Runs a Lua script (`EVALSHA`, loading it when Redis lacks it) on the
    /// shared connection, bounded by [`TIMEOUT`].
    pub async fn run_script<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.connection().await?;
        let result = tokio::time::timeout(TIMEOUT, invocation.invoke_async(&mut conn)).await;
        self.settle("script", result).await
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let made = tokio::time::timeout(
            TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await;
        match made {
            Ok(Ok(conn)) => {
                *slot = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(e)) => Err(self.err("connect", e)),
            Err(_) => Err(self.err("connect", "timed out")),
        }
    }

    /// Maps a call's outcome; any failure drops the connection, so the
    /// next call starts on a fresh one.
    async fn settle<T>(
        &self,
        what: &str,
        result: Result<::redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        let e = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => self.err(what, e),
            Err(_) => self.err(what, "timed out"),
        };
        *self.conn.lock().await = None;
        Err(e)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("redis {}: {what}: {e}", self.shown))
    }

    fn message(&self, ns: Namespace, key: &str, op: &str) -> String {
        serde_json::to_string(&Message {
            instance: &self.instance,
            run: &self.run,
            ns: ns.as_str(),
            key,
            op,
        })
        .unwrap_or_default()
    }

    /// Follows other instances' changes until `stop` turns true: subscribes
    /// to [`CHANNEL`] and applies each change from another instance to
    /// `state` (reading the record for a put). Reconnects with exponential
    /// backoff (capped at 5 s), reports failures to `state`, and asks for a
    /// resync after every (re)connect and every [`RESYNC_EVERY`].
    pub async fn follow(self: Arc<Self>, state: Arc<GateState>, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            if *stop.borrow() {
                return;
            }
            match self.subscribe().await {
                Ok(pubsub) => {
                    let since = Instant::now();
                    tracing::debug!(url = %self.shown, channel = CHANNEL, "redis: following changes");
                    state.resync_soon(StoreKind::Redis);
                    match self.listen(pubsub, &state, &mut stop).await {
                        Ok(()) => return,
                        Err(e) => state.report_store_error(StoreKind::Redis, &e),
                    }
                    if since.elapsed() >= MAX_BACKOFF {
                        backoff = FIRST_BACKOFF;
                    }
                }
                Err(e) => state.report_store_error(StoreKind::Redis, &e),
            }
            tokio::select! {
                _ = stopped(&mut stop) => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn subscribe(&self) -> Result<::redis::aio::PubSub, StoreError> {
        let mut pubsub = match tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(self.err("subscribe", e)),
            Err(_) => return Err(self.err("subscribe", "timed out")),
        };
        match tokio::time::timeout(TIMEOUT, pubsub.subscribe(CHANNEL)).await {
            Ok(Ok(())) => Ok(pubsub),
            Ok(Err(e)) => Err(self.err("subscribe", e)),
            Err(_) => Err(self.err("subscribe", "timed out")),
        }
    }

    /// Handles messages until stopped (`Ok`) or the subscription fails.
    async fn listen(
        &self,
        pubsub: ::redis::aio::PubSub,
        state: &GateState,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let (mut sink, mut stream) = pubsub.split();
        let start = tokio::time::Instant::now() + RESYNC_EVERY;
        let mut tick = tokio::time::interval_at(start, RESYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                msg = stream.next() => match msg {
                    Some(msg) => self.on_message(msg.get_payload_bytes(), state).await,
                    None => return Err(self.err("subscription", "connection lost")),
                },
                _ = tick.tick() => {
                    // A silent, dead connection shows here.
                    match tokio::time::timeout(TIMEOUT, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => state.resync_soon(StoreKind::Redis),
                        Ok(Err(e)) => return Err(self.err("subscription", e)),
                        Err(_) => return Err(self.err("subscription", "ping timed out")),
                    }
                }
            }
        }
    }

    async fn on_message(&self, payload: &[u8], state: &GateState) {
        let Ok(m) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!(
                channel = CHANNEL,
                "redis: message that is not stsgate's: ignored"
            );
            return;
        };
        if m.run == self.run || m.ns != Namespace::Blocks.as_str() {
            return;
        }
        match m.op {
            "put" => {
                let full = RedisStore::key(Namespace::Blocks, m.key);
                match self.query::<Option<Vec<u8>>>(cmd("GET").arg(&full)).await {
                    // Removed since: its own message follows.
                    Ok(None) => {}
                    Ok(Some(value)) => {
                        let record = Record {
                            ns: Namespace::Blocks,
                            key: m.key.to_string(),
                            expires_at_ms: expiry_in_value(&value).unwrap_or(0),
                            value,
                        };
                        if let Some(block) = decode(&record) {
                            state.remote_put(block, StoreKind::Redis);
                        }
                    }
                    Err(e) => {
                        // The resync brings the change over.
                        state.report_store_error(StoreKind::Redis, &e);
                        state.resync_soon(StoreKind::Redis);
                    }
                }
            }
            "remove" => state.remote_remove(m.key, StoreKind::Redis),
            _ => tracing::debug!(op = m.op, "redis: unknown change: ignored"),
        }
    }
}

impl Store for RedisStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Redis
    }

    fn apply<'a>(&'a self, changes: &'a [Change]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = now_ms();
            let mut tx = pipe();
            tx.atomic();
            let mut n = 0;
            for change in changes {
                let (ns, key) = change.key();
                let full = RedisStore::key(ns, key);
                let op = match change {
                    Change::Put(record) => {
                        let left = record.expires_at_ms.saturating_sub(now);
                        if left == 0 {
                            continue;
                        }
                        tx.cmd("SET")
                            .arg(&full)
                            .arg(&record.value)
                            .arg("PX")
                            .arg(left)
                            .ignore();
                        "put"
                    }
                    Change::Remove { .. } => {
                        tx.cmd("DEL").arg(&full).ignore();
                        "remove"
                    }
                };
                tx.cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(self.message(ns, key, op))
                    .ignore();
                n += 1;
            }
            if n == 0 {
                return Ok(());
            }
            self.query_pipeline::<()>(&tx).await
        })
    }

    fn load(&self, ns: Namespace) -> StoreFuture<'_, Vec<Record>> {
        Box::pin(async move {
            let pattern = format!("{PREFIX}:{}:*", ns.as_str());
            let prefix = &pattern[..pattern.len() - 1];
            let mut keys = HashSet::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<Vec<u8>>) = self
                    .query(
                        cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(SCAN_COUNT),
                    )
                    .await?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            let keys: Vec<Vec<u8>> = keys.into_iter().collect();
            let now = now_ms();
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MGET_CHUNK) {
                let values: Vec<Option<Vec<u8>>> = self.query(cmd("MGET").arg(chunk)).await?;
                let mut need_ttl = Vec::new();
                for (full, value) in chunk.iter().zip(values) {
                    let (Some(value), Some(key)) = (
                        value,
                        std::str::from_utf8(full)
                            .ok()
                            .and_then(|k| k.strip_prefix(prefix)),
                    ) else {
                        continue;
                    };
                    let record = Record {
                        ns,
                        key: key.to_string(),
                        expires_at_ms: 0,
                        value,
                    };
                    match expiry_in_value(&record.value) {
                        Some(at) if at > now => out.push(Record {
                            expires_at_ms: at,
                            ..record
                        }),
                        Some(_) => {}
                        None => need_ttl.push((full, record)),
                    }
                }
                if need_ttl.is_empty() {
                    continue;
                }
                // A value that does not carry its end: its TTL tells it.
                let mut ttls = pipe();
                for (full, _) in &need_ttl {
                    ttls.cmd("PTTL").arg(*full);
                }
                let ttls: Vec<i64> = self.query_pipeline(&ttls).await?;
                for ((_, record), ttl) in need_ttl.into_iter().zip(ttls) {
                    let expires_at_ms = match ttl {
                        -1 => u64::MAX,
                        t if t > 0 => now.saturating_add(t.unsigned_abs()),
                        _ => continue,
                    };
                    out.push(Record {
                        expires_at_ms,
                        ..record
                    });
                }
            }
            Ok(out)
        })
    }
}

/// The end a value carries (`"expires_at_ms"` in a JSON object, as blocks do).
fn expiry_in_value(value: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Ends {
        expires_at_ms: u64,
    }
    serde_json::from_slice::<Ends>(value)
        .ok()
        .map(|e| e.expires_at_ms)
}

/// The URL with the password (or the whole user part) masked.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "(redacted)".into()
        } else {
            url.into()
        };
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.into(),
    }
}

fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // Unique enough: the process id and the time.
        let mix = u64::from(std::process::id()) << 32 ^ now_ms();
        bytes = mix.to_be_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

// ---- used by lesson sharing (crate::share) ----

impl RedisStore {
    /// This process's random run id (in its messages and lesson entries).
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// This gate's instance name.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`) that must
    /// not hold up the shared one; each call on it is bounded by `response`.
    pub async fn dedicated(&self, response: Duration) -> Result<MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(response));
        match tokio::time::timeout(
            TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(self.err("connect", e)),
            Err(_) => Err(self.err("connect", "timed out")),
        }
    }

    /// An error about this Redis (the URL's password masked).
    pub fn error(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        self.err(what, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(RedisStore::new("redis://127.0.0.1:6379/0", "a").is_ok());
        assert!(RedisStore::new("redis://:secret@127.0.0.1:6379/2", "a").is_ok());
        let e = RedisStore::new("rediss://u:secret@h:6379/0", "a")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not supported") && !e.contains("secret"), "{e}");
        let e = RedisStore::new("http://u:secret@h/0", "a")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("expected redis://") && !e.contains("secret"),
            "{e}"
        );
        let e = RedisStore::new("redis://u:secret@h:6379/x", "a")
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            RedisStore::key(Namespace::Blocks, "b-0123"),
            "stsgate:block:b-0123"
        );
    }

    #[test]
    fn expiry_from_the_value() {
        assert_eq!(
            expiry_in_value(br#"{"id":"b-1","expires_at_ms":42}"#),
            Some(42)
        );
        assert_eq!(expiry_in_value(b"garbage"), None);
    }
}
