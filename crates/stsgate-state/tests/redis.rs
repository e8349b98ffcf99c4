//! Gate state shared through a real `redis-server` (the Debian package
//! `redis-server`; `scripts/test.sh` installs it), started by each test on a
//! free loopback port and killed at the end.

mod common;
use common::RedisServer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::json;
use stsgate_state::embedded::Embedded;
use stsgate_state::redis::{self as shared, RedisStore, cmd};
use stsgate_state::{Block, GateState, NewBlock, Store, now_ms};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Upper bound of every wait for something to propagate through pub/sub
/// (it takes milliseconds; the bound only keeps a broken build from hanging,
/// and stays well under the 30 s periodic resync, so passing proves the
/// message path).
const PROPAGATION: Duration = Duration::from_secs(5);
/// Upper bound of a catch-up after Redis comes back (reconnect backoff of at
/// most 5 s, then a resync).
const CATCH_UP: Duration = Duration::from_secs(20);

/// One gate instance: an embedded store of its own and the shared Redis.
struct Node {
    state: Arc<GateState>,
    redis: Arc<RedisStore>,
    registry: Registry,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(url: &str, name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let embedded: Arc<dyn Store> = Arc::new(Embedded::open(dir.path()).unwrap());
        let redis = Arc::new(RedisStore::new(url, name).unwrap());
        let registry = Registry::new();
        let state = Arc::new(GateState::with_stores(
            vec![embedded, redis.clone()],
            Duration::from_secs(86400),
            name.into(),
            &registry,
        ));
        state.load().await.unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(state.clone().run(stop_rx.clone())),
            tokio::spawn(redis.clone().follow(state.clone(), stop_rx)),
        ];
        Node {
            state,
            redis,
            registry,
            stop,
            tasks,
            _dir: dir,
        }
    }

    async fn shutdown(self) {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("the tasks end once stopped")
                .unwrap();
        }
    }

    fn add(&self, v: serde_json::Value) -> Arc<Block> {
        let new = NewBlock::from_json(&v, self.state.max_ttl()).unwrap();
        self.state.add(vec![new]).remove(0).0
    }

    fn blocks_ip(&self, ip: &str) -> bool {
        self.state
            .table()
            .by_ip(&[ip.parse().unwrap()], now_ms())
            .is_some()
    }

    fn redis_errors(&self) -> u64 {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("stsgate_state_errors_total{store=\"redis\"} "))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    fn redis_ok(&self) -> bool {
        self.state
            .health()
            .iter()
            .find(|h| h.store == "redis")
            .unwrap()
            .ok
    }
}

/// Polls `f` until it holds; panics after `limit`.
async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `n` followers listen on the channel.
async fn subscribed(store: &RedisStore, n: i64) {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        let got: (String, i64) = store
            .query(cmd("PUBSUB").arg("NUMSUB").arg(shared::CHANNEL))
            .await
            .unwrap();
        if got.1 >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{n} followers never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn exists(store: &RedisStore, id: &str) -> bool {
    let key = RedisStore::key(stsgate_state::Namespace::Blocks, id);
    store.query::<i64>(cmd("EXISTS").arg(&key)).await.unwrap() == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_propagate_between_instances_with_redis_ttls() {
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), "a").await;
    let b = Node::start(&redis.url(), "b").await;
    subscribed(&a.redis, 2).await;

    let block = a.add(json!({"ip": "198.51.100.0/24", "ttl": "10m", "reason": "soar case 42"}));
    assert!(a.blocks_ip("198.51.100.7"), "enforced at once where added");
    until("b enforces a's block", PROPAGATION, || {
        b.blocks_ip("198.51.100.7")
    })
    .await;
    assert_eq!(
        *b.state.get(&block.id).unwrap(),
        *block,
        "the same block, same end"
    );

    // The key, its value and a TTL that ends with the block.
    let key = format!("stsgate:block:{}", block.id);
    let value: Vec<u8> = a.redis.query(cmd("GET").arg(&key)).await.unwrap();
    let stored: Block = serde_json::from_slice(&value).unwrap();
    assert_eq!(stored, *block);
    let pttl: i64 = a.redis.query(cmd("PTTL").arg(&key)).await.unwrap();
    let left = i64::try_from(block.expires_at_ms - now_ms()).unwrap();
    assert!(
        (left - pttl).abs() < 1000,
        "redis ttl {pttl} ms, block ends in {left} ms"
    );

    // User blocks too, in the other direction.
    let user = b.add(json!({"user": "Alice@Corp.Example", "ttl": 600, "action": "require_2fa"}));
    until("a enforces b's user block", PROPAGATION, || {
        a.state
            .table()
            .by_user("alice@corp.example", now_ms())
            .is_some()
    })
    .await;

    // Posting the same block again on the other instance extends it everywhere.
    let longer = b.add(json!({"ip": "198.51.100.0/24", "ttl": "2h"}));
    assert_eq!(longer.id, block.id);
    until("a sees the extension", PROPAGATION, || {
        a.state
            .get(&block.id)
            .is_some_and(|x| x.expires_at_ms == longer.expires_at_ms)
    })
    .await;

    // Removal propagates, and the key is gone.
    assert!(a.state.remove(&block.id).is_some());
    until("b drops the removed block", PROPAGATION, || {
        !b.blocks_ip("198.51.100.7")
    })
    .await;
    assert!(!exists(&a.redis, &block.id).await);
    assert!(exists(&a.redis, &user.id).await);
    assert_eq!(a.redis_errors(), 0);
    assert_eq!(b.redis_errors(), 0);
    assert!(a.redis_ok() && b.redis_ok());

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_and_coming_back() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis.url(), "a").await;
    let b = Node::start(&redis.url(), "b").await;
    subscribed(&a.redis, 2).await;
    let before = a.add(json!({"ip": "203.0.113.9", "ttl": "1h"}));
    until("b has the first block", PROPAGATION, || {
        b.blocks_ip("203.0.113.9")
    })
    .await;

    redis.stop();
    // The gate keeps deciding, and changing its state, from memory.
    let during = a.add(json!({"ip": "192.0.2.0/28", "ttl": "1h"}));
    assert!(a.blocks_ip("192.0.2.3"));
    assert!(a.state.remove(&before.id).is_some());
    assert!(!a.blocks_ip("203.0.113.9"));
    until("a counts and shows the failure", CATCH_UP, || {
        a.redis_errors() > 0 && !a.redis_ok()
    })
    .await;
    until("b notices too", CATCH_UP, || !b.redis_ok()).await;
    let health = serde_json::to_value(a.state.health()).unwrap();
    assert!(
        health
            .to_string()
            .contains(&format!("redis://127.0.0.1:{}", redis.port)),
        "the error says which store: {health}"
    );

    // Back, empty (no persistence): both catch up.
    redis.restart();
    until(
        "b sees the block a added while redis was down",
        CATCH_UP,
        || b.blocks_ip("192.0.2.3"),
    )
    .await;
    until("a back to ok", CATCH_UP, || a.redis_ok()).await;
    until("b back to ok", CATCH_UP, || b.redis_ok()).await;
    // b still held the block a removed meanwhile; it is not brought back.
    until(
        "b drops the block a removed while redis was down",
        CATCH_UP,
        || !b.blocks_ip("203.0.113.9"),
    )
    .await;
    assert!(!a.blocks_ip("203.0.113.9"), "a does not get it back");
    assert!(a.state.get(&during.id).is_some());

    // Settled: a fresh resync on both changes nothing.
    a.state.resync_soon(stsgate_state::StoreKind::Redis);
    b.state.resync_soon(stsgate_state::StoreKind::Redis);
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        assert!(!a.blocks_ip("203.0.113.9") && !b.blocks_ip("203.0.113.9"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !exists(&a.redis, &before.id).await,
        "the removed block's key is gone"
    );
    assert!(exists(&a.redis, &during.id).await);

    // And the live path works again.
    let after = b.add(json!({"user": "bob@corp.example", "ttl": 60}));
    until("a sees b's new block", PROPAGATION, || {
        a.state.get(&after.id).is_some()
    })
    .await;

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_is_not_fatal() {
    let mut redis = RedisServer::start();
    redis.stop();
    let a = Node::start(&redis.url(), "a").await;
    let block = a.add(json!({"ip": "2001:db8::/48", "ttl": 600}));
    assert!(a.blocks_ip("2001:db8::1"));
    until("a counts the failure", CATCH_UP, || a.redis_errors() > 0).await;

    redis.restart();
    until("a writes its block once redis is there", CATCH_UP, || {
        a.redis_ok()
    })
    .await;
    assert!(exists(&a.redis, &block.id).await);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_ignored() {
    let redis = RedisServer::start();
    let raw = RedisStore::new(&redis.url(), "raw").unwrap();
    for (key, value) in [
        ("stsgate:block:b-garbage", "this is not json"),
        (
            "stsgate:block:b-0000000000000000",
            r#"{"id":"b-1111111111111111","ip":"10.0.0.1","action":"refuse","origin":"x","created_at_ms":1,"expires_at_ms":99999999999999}"#,
        ),
        ("stsgate:block:", "{}"),
    ] {
        let () = raw.query(cmd("SET").arg(key).arg(value)).await.unwrap();
    }
    let a = Node::start(&redis.url(), "a").await;
    assert!(a.state.list().is_empty(), "nothing imported at load");
    subscribed(&raw, 1).await;
    // Messages that are not stsgate's, or name the garbage.
    for msg in [
        "not json".to_string(),
        json!({"instance": "x", "run": "y", "ns": "block", "key": "b-garbage", "op": "put"}).to_string(),
        json!({"instance": "x", "run": "y", "ns": "block", "key": "b-0000000000000000", "op": "put"}).to_string(),
        json!({"instance": "x", "run": "y", "ns": "block", "key": "b-nothing", "op": "remove"}).to_string(),
        json!({"instance": "x", "run": "y", "ns": "other", "key": "k", "op": "put"}).to_string(),
        json!({"instance": "x", "run": "y", "ns": "block", "key": "b-garbage", "op": "explode"}).to_string(),
    ] {
        let _: i64 = raw
            .query(cmd("PUBLISH").arg(shared::CHANNEL).arg(msg))
            .await
            .unwrap();
    }
    // The follower is alive and a real change still arrives.
    let b = Node::start(&redis.url(), "b").await;
    let block = b.add(json!({"ip": "10.9.8.7", "ttl": 60}));
    until("a follows after the garbage", PROPAGATION, || {
        a.blocks_ip("10.9.8.7")
    })
    .await;
    assert_eq!(a.state.list().len(), 1, "only the real block");
    assert_eq!(a.state.list()[0].id, block.id);
    a.shutdown().await;
    b.shutdown().await;
}
