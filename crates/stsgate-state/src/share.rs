//! What one instance learns, shared with the others through Redis, so an
//! attacker spread over several instances behind one load balancer is
//! counted once (issue 7 item 6, PRODUCT.md §4.4).
//!
//! - Every lesson an instance learns from the STS's answers (a user's
//!   success or failure, the password's keyed hash, the addresses) is added
//!   to the Redis stream [`STREAM`] (`XADD … MAXLEN ~ 100000`) by an owned
//!   task fed through a bounded queue: the request path never waits (a full
//!   queue drops the lesson and counts it in
//!   `stsgate_state_errors_total{store="redis"}`).
//! - Every instance follows the stream (`XREAD BLOCK` on a connection of its
//!   own) and learns the others' lessons with [`GateState::learn_remote`]:
//!   same counts, familiar IPs, wrong-password hashes and spray windows, but
//!   no alerts and no blocks (the instance that learned a lesson raises them;
//!   its blocks reach the others through the blocks sync).
//! - At start an instance reads back the last `max(lockout.observation_window,
//!   spray.window)` of the stream (1 h before the settings are known), so a
//!   restarted instance has the counts; after a reconnect it goes on from
//!   the last entry it saw (catches up). Lessons learned while Redis is down
//!   are kept (bounded by the queue) and written once it is back.
//! - A help-desk reset ([`GateState::reset_lockout`]) is shared the same way.
//! - The password-hash key is the same on every instance: [`adopt_secret`]
//!   puts this instance's key in `stsgate:secret` if Redis has none
//!   (`SET … NX`), then uses whatever Redis holds (and keeps it in
//!   `state.dir/secret.key`, so a restart without Redis still has it). Each
//!   entry names its key by a fingerprint; a lesson hashed with another key
//!   is learned without its password hash.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::redis::Value;
use ::redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};

use crate::block::now_ms;
use crate::guard::{Lesson, SECRET_FILE, Secret, user_key};
use crate::redis::{RedisStore, TIMEOUT, cmd, pipe};
use crate::service::GateState;
use crate::store::{StoreError, StoreKind};

/// The Redis stream of lessons.
pub const STREAM: &str = "stsgate:lessons";
/// The Redis key of the shared password-hash key (64 hex digits).
pub const SECRET_KEY: &str = "stsgate:secret";
/// The stream's approximate length cap (`MAXLEN ~`).
pub const MAXLEN: u64 = 100_000;
/// Lessons queued for Redis before new ones are dropped (and counted).
pub const QUEUE: usize = 8192;
/// How far back an instance reads at start while it knows no settings.
pub const READ_BACK_UNKNOWN: Duration = Duration::from_secs(3600);
/// Entries written in one pipeline.
const BATCH: usize = 512;
/// Entries read in one `XREAD`.
const READ_COUNT: usize = 1000;
/// How long one `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// First and longest wait between retries and reconnects.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// What the key fingerprint hashes (not a password anyone types).
const KEY_ID_INPUT: &[u8] = b"\0stsgate password-hash key id";

/// One stream entry's subject.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A lesson learned here (user already lower case).
    Lesson(Lesson),
    /// A help-desk reset of a user's lockout counts.
    Reset(String),
}

/// The sharing side of a [`GateState`]: the queue to the writer (once
/// [`run`] started it) and the password-hash key in use.
#[derive(Default)]
pub struct Outbox {
    tx: OnceLock<mpsc::Sender<Entry>>,
    key: Mutex<Option<[u8; 32]>>,
    key_warned: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Outbox {
    /// Queues an entry when sharing runs; false when the queue is full.
    pub(crate) fn offer(&self, entry: impl FnOnce() -> Entry) -> bool {
        match self.tx.get() {
            Some(tx) => tx.try_send(entry()).is_ok(),
            None => true,
        }
    }

    /// Entries (lessons and resets) this instance wrote to the stream.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Entries of other instances this instance applied.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Starts sharing lessons through `redis`: from the moment this returns,
/// every lesson `state` learns is queued for the stream. The future writes
/// them and follows the other instances' until `stop` turns true (then
/// flushes what is queued, one bounded attempt).
pub fn run(
    redis: Arc<RedisStore>,
    state: Arc<GateState>,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let (tx, rx) = mpsc::channel(QUEUE);
    let started = state.outbox().tx.set(tx).is_ok();
    async move {
        if !started {
            tracing::warn!("lesson sharing already runs for this state");
            return;
        }
        tokio::join!(
            writer(redis.clone(), state.clone(), rx, stop.clone()),
            follower(redis, state, stop),
        );
    }
}

/// Makes the password-hash key the same on every instance: puts this
/// instance's key (from `dir/secret.key`) in Redis unless Redis has one,
/// then uses Redis's (kept in `dir/secret.key` too). With Redis down the
/// local key stays, and that is logged.
pub async fn adopt_secret(state: &GateState, redis: &RedisStore, dir: &Path) {
    let path = dir.join(SECRET_FILE);
    let local: [u8; 32] = match std::fs::read(&path).ok().and_then(|b| b.try_into().ok()) {
        Some(k) => k,
        None => {
            tracing::warn!(file = %path.display(), "cannot read the password-hash key: password hashes are not shared");
            return;
        }
    };
    *lock(&state.outbox().key) = Some(local);
    match shared_key(redis, &local).await {
        Ok(shared) if shared == local => {
            tracing::info!("password-hash key shared through redis");
        }
        Ok(shared) => {
            if let Err(e) = write_key(dir, &shared) {
                tracing::warn!(file = %path.display(), error = %e, "cannot keep the shared password-hash key in state.dir");
            }
            state.set_secret(Secret::from_bytes(&shared));
            *lock(&state.outbox().key) = Some(shared);
            tracing::info!("password-hash key taken from redis (shared by every instance)");
        }
        Err(e) => {
            tracing::warn!(error = %e, "redis unavailable at start: keeping this instance's password-hash key (state.dir); if it is not the shared one, password hashes are not shared until a restart with redis up (counts, familiar IPs and spray windows still are)");
        }
    }
}

/// `SET stsgate:secret <ours> NX`, then `GET` it.
async fn shared_key(redis: &RedisStore, ours: &[u8; 32]) -> Result<[u8; 32], StoreError> {
    let mut p = pipe();
    p.cmd("SET")
        .arg(SECRET_KEY)
        .arg(hex(ours))
        .arg("NX")
        .ignore();
    p.cmd("GET").arg(SECRET_KEY);
    let (value,): (Option<String>,) = redis.query_pipeline(&p).await?;
    value
        .as_deref()
        .and_then(unhex::<32>)
        .ok_or_else(|| redis.error("GET stsgate:secret", "not 64 hex digits"))
}

fn write_key(dir: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SECRET_FILE))
}

/// The fingerprint of the key `state` hashes passwords with.
fn key_id(state: &GateState) -> Option<String> {
    state.password_key(KEY_ID_INPUT).map(|k| hex(&k[..8]))
}

// ---- writing ----------------------------------------------------------------

async fn writer(
    redis: Arc<RedisStore>,
    state: Arc<GateState>,
    mut rx: mpsc::Receiver<Entry>,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut backoff = FIRST_BACKOFF;
    loop {
        if batch.is_empty() {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
            }
        } else {
            // The last write failed: retry the same batch (new lessons wait
            // in the queue, and overflow it, counted).
            tokio::select! {
                _ = stopped(&mut stop) => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        match append(&redis, &state, &batch).await {
            Ok(()) => {
                state
                    .outbox()
                    .sent
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                state.report_store_error(StoreKind::Redis, &e);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // What is queued, once; the first failure ends it.
    rx.close();
    while let Ok(entry) = rx.try_recv() {
        batch.push(entry);
    }
    for chunk in batch.chunks(BATCH) {
        if let Err(e) = append(&redis, &state, chunk).await {
            tracing::warn!(error = %e, lessons = batch.len(), "lessons not shared at shutdown");
            break;
        }
    }
}

/// One pipeline of `XADD stsgate:lessons MAXLEN ~ 100000 * run … instance
/// … key … lesson <json>` (or `reset <user>`).
async fn append(
    redis: &RedisStore,
    state: &GateState,
    entries: &[Entry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let key = key_id(state).unwrap_or_default();
    let mut p = pipe();
    for entry in entries {
        let c = p
            .cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(MAXLEN)
            .arg("*")
            .arg("run")
            .arg(redis.run_id())
            .arg("instance")
            .arg(redis.instance());
        match entry {
            Entry::Lesson(l) => {
                c.arg("key")
                    .arg(&key)
                    .arg("lesson")
                    .arg(serde_json::to_vec(l).unwrap_or_default())
                    .ignore();
            }
            Entry::Reset(user) => {
                c.arg("reset").arg(user).ignore();
            }
        }
    }
    redis.query_pipeline::<()>(&p).await
}

// ---- following --------------------------------------------------------------

async fn follower(redis: Arc<RedisStore>, state: Arc<GateState>, mut stop: watch::Receiver<bool>) {
    // The last entry seen; at first, the start of the read-back window.
    let mut last = format!("{}-0", now_ms().saturating_sub(ms(read_back(&state))));
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *stop.borrow() {
            return;
        }
        match redis.dedicated(TIMEOUT + BLOCK).await {
            Ok(conn) => {
                let since = Instant::now();
                reassert_secret(&redis, &state).await;
                match follow_on(conn, &redis, &state, &mut last, &mut stop).await {
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

/// After a (re)connect: a Redis that restarted empty gets the key back; a
/// Redis that holds another key is reported (hashes are then not shared).
async fn reassert_secret(redis: &RedisStore, state: &GateState) {
    let Some(ours) = *lock(&state.outbox().key) else {
        return;
    };
    match shared_key(redis, &ours).await {
        Ok(shared) if shared != ours => {
            if !state.outbox().key_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "the password-hash key in redis is not this instance's: password hashes are not shared until this instance restarts with redis up"
                );
            }
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "redis: cannot check the shared password-hash key"),
    }
}

/// Reads the stream from `last` until stopped (`Ok`) or Redis fails.
async fn follow_on(
    mut conn: MultiplexedConnection,
    redis: &RedisStore,
    state: &GateState,
    last: &mut String,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    loop {
        let mut read = cmd("XREAD");
        read.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(ms(BLOCK))
            .arg("STREAMS")
            .arg(STREAM)
            .arg(last.as_str());
        let reply = tokio::select! {
            _ = stopped(stop) => return Ok(()),
            r = tokio::time::timeout(TIMEOUT + BLOCK, read.query_async::<Value>(&mut conn)) => r,
        };
        let value = match reply {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(redis.error("XREAD", e)),
            Err(_) => return Err(redis.error("XREAD", "timed out")),
        };
        let own_key = key_id(state);
        let (window, now) = (read_back(state), now_ms());
        for (id, fields) in entries(value) {
            apply(redis, state, &fields, own_key.as_deref(), window, now);
            *last = id;
        }
    }
}

/// Applies one entry of another run.
fn apply(
    redis: &RedisStore,
    state: &GateState,
    fields: &[(Vec<u8>, Vec<u8>)],
    own_key: Option<&str>,
    window: Duration,
    now: u64,
) {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(f, _)| f == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    if field("run") == Some(redis.run_id().as_bytes()) {
        return;
    }
    if let Some(user) = field("reset") {
        state.guard.reset(&String::from_utf8_lossy(user));
        state.outbox().received.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(mut lesson) = field("lesson").and_then(|v| serde_json::from_slice::<Lesson>(v).ok())
    else {
        tracing::debug!(
            stream = STREAM,
            "redis: entry that is not a lesson: ignored"
        );
        return;
    };
    if lesson.now_ms.saturating_add(ms(window)) <= now {
        return;
    }
    if lesson.password_key.is_some() && field("key") != own_key.map(str::as_bytes) {
        // Hashed with another key: the count stays, the hash means nothing here.
        lesson.password_key = None;
        if !state.outbox().key_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a lesson from another instance was hashed with another password-hash key: password hashes are not shared until the instances restart with redis up"
            );
        }
    }
    state.learn_remote(&lesson);
    state.outbox().received.fetch_add(1, Ordering::Relaxed);
}

/// A stream entry's fields, in order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `XREAD`'s reply (RESP2 arrays or RESP3 maps) as (id, fields).
fn entries(value: Value) -> Vec<(String, Fields)> {
    let streams: Vec<Value> = match value {
        Value::Array(v) => v
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for s in streams {
        let Value::Array(items) = s else { continue };
        for item in items {
            let Value::Array(mut pair) = item else {
                continue;
            };
            if pair.len() != 2 {
                continue;
            }
            let fields = pair.pop();
            let Some(id) = pair.pop().and_then(text) else {
                continue;
            };
            let mut kv = Vec::new();
            match fields {
                Some(Value::Array(flat)) => {
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                            kv.push((k, v));
                        }
                    }
                }
                Some(Value::Map(m)) => {
                    for (k, v) in m {
                        if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                            kv.push((k, v));
                        }
                    }
                }
                _ => {}
            }
            out.push((id, kv));
        }
    }
    out
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

/// How far back lessons matter: the longer of the lockout and spray windows.
fn read_back(state: &GateState) -> Duration {
    let (lockout, spray) = state.guard.settings();
    let windows = [
        lockout.filter(|l| l.enabled).map(|l| l.observation_window),
        spray.filter(|s| s.enabled).map(|s| s.window),
    ];
    windows
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(READ_BACK_UNKNOWN)
}

// ---- small helpers ----------------------------------------------------------

/// A lesson as queued for the stream: the user lower case.
pub(crate) fn entry_of(lesson: &Lesson) -> Entry {
    Entry::Lesson(Lesson {
        user: user_key(&lesson.user),
        ..lesson.clone()
    })
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.trim().as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// `#[serde(with)]` for an optional password key: 32 hex digits.
pub mod hex_key {
    use crate::guard::PasswordKey;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the key as hex.
    pub fn serialize<S: Serializer>(key: &Option<PasswordKey>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(k) => s.serialize_some(&super::hex(k)),
            None => s.serialize_none(),
        }
    }

    /// Reads hex (or null).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PasswordKey>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(h) => super::unhex::<16>(&h)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("a password key is 32 hex digits")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::SignIn;

    #[test]
    fn a_lesson_as_json() {
        let lesson = Lesson {
            user: "alice@x".into(),
            password_key: Some([0xab; 16]),
            locations: vec!["192.0.2.1".parse().unwrap(), "10.0.0.1".parse().unwrap()],
            client_ip: "192.0.2.1".parse().unwrap(),
            result: SignIn::Failure,
            now_ms: 42,
            place: None,
        };
        let json = serde_json::to_value(&lesson).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"user": "alice@x", "password_key": "abababababababababababababababab",
                "locations": ["192.0.2.1", "10.0.0.1"], "client_ip": "192.0.2.1", "result": "failure", "now_ms": 42})
        );
        assert_eq!(serde_json::from_value::<Lesson>(json).unwrap(), lesson);
        let none = Lesson {
            password_key: None,
            result: SignIn::Success,
            ..lesson
        };
        let json = serde_json::to_value(&none).unwrap();
        assert!(json.get("password_key").is_none());
        assert_eq!(serde_json::from_value::<Lesson>(json).unwrap(), none);
        assert!(serde_json::from_str::<Lesson>(r#"{"user":"a","password_key":"zz","locations":[],"client_ip":"192.0.2.1","result":"failure","now_ms":1}"#).is_err());
        // Geo-velocity's place travels with a success; lessons of older
        // instances (no "place") still parse.
        let placed = Lesson {
            place: Some(stsgate_rules::Place {
                latitude: 51.5142,
                longitude: -0.0931,
                accuracy_km: 10,
            }),
            ..none
        };
        let json = serde_json::to_value(&placed).unwrap();
        assert_eq!(
            json["place"],
            serde_json::json!({"latitude": 51.5142, "longitude": -0.0931, "accuracy_km": 10})
        );
        assert_eq!(serde_json::from_value::<Lesson>(json).unwrap(), placed);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(unhex::<2>("0aF"), None);
        assert_eq!(unhex::<1>("g0"), None);
        assert_eq!(hex(&[1, 254]), "01fe");
    }

    #[test]
    fn xread_replies_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("run"), bulk("r1"), bulk("lesson"), bulk("{}")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk(STREAM),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk(STREAM), Value::Array(vec![entry]))]);
        for v in [resp2, resp3] {
            let e = entries(v);
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].0, "1-0");
            assert_eq!(e[0].1[0], (b"run".to_vec(), b"r1".to_vec()));
        }
        assert!(entries(Value::Nil).is_empty());
    }
}
