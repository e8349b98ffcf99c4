//! Lockout and spray state shared through a real `redis-server` (the Debian
//! package `redis-server`), started by each test on a free loopback port:
//! two (or three) `GateState`s, each with its own embedded store, share
//! what they learn through the `stsgate:lessons` stream.

mod common;
use common::RedisServer;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Encoder, Registry, TextEncoder};
use stsgate_rules::{Facts, LockoutSettings, Mode, SpraySettings, Stage};
use stsgate_state::embedded::Embedded;
use stsgate_state::redis::{RedisStore, cmd};
use stsgate_state::{Flow, GateState, Lesson, Secret, SignIn, StateEvent, Store, now_ms, share};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Upper bound of a wait for a lesson to reach another instance (it takes
/// milliseconds; the bound only keeps a broken build from hanging).
const PROPAGATION: Duration = Duration::from_secs(5);
/// Upper bound of a catch-up after Redis comes back (retry and reconnect
/// backoff of at most 5 s each).
const CATCH_UP: Duration = Duration::from_secs(25);

fn lockout() -> LockoutSettings {
    LockoutSettings {
        enabled: true,
        mode: Mode::Enforce,
        threshold: 3,
        observation_window: Duration::from_secs(30 * 60),
        familiar_for: Duration::from_secs(14 * 86400),
    }
}

fn spray() -> SpraySettings {
    SpraySettings {
        enabled: true,
        distinct_users: 4,
        same_password_users: 3,
        window: Duration::from_secs(600),
        block_for: Duration::from_secs(3600),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One gate instance, wired as `stsgate run` wires it.
struct Node {
    state: Arc<GateState>,
    redis: Arc<RedisStore>,
    registry: Registry,
    events: mpsc::Receiver<StateEvent>,
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
        state.set_secret(Secret::load_or_create(dir.path()).unwrap());
        share::adopt_secret(&state, &redis, dir.path()).await;
        state.guard.remember(Some(&lockout()), Some(&spray()));
        state.load().await.unwrap();
        let events = state.subscribe(64);
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(state.clone().run(stop_rx.clone())),
            tokio::spawn(redis.clone().follow(state.clone(), stop_rx.clone())),
            tokio::spawn(share::run(redis.clone(), state.clone(), stop_rx)),
        ];
        Node {
            state,
            redis,
            registry,
            events,
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

    /// Learns one answered sign-in here (as the gate does after the STS answers).
    fn signin(&self, user: &str, password: &str, from: &str, result: SignIn) {
        self.state.learn(
            &Lesson {
                user: user.into(),
                password_key: self.state.password_key(password.as_bytes()),
                locations: vec![ip(from)],
                client_ip: ip(from),
                result,
                now_ms: now_ms(),
                place: None,
            },
            Some(&lockout()),
            Some(&spray()),
        );
    }

    fn locked(&self, user: &str) -> bool {
        self.state
            .guard
            .locked(Some(&lockout()), now_ms())
            .iter()
            .any(|l| l.user == user)
    }

    /// The stage that stops this request here, if any.
    fn decide(&self, user: &str, password: &str, from: &str) -> Stage {
        let locations = [ip(from)];
        let facts = Facts {
            user: Some(user),
            password_key: self.state.password_key(password.as_bytes()),
            carried: &locations,
            now_ms: now_ms(),
            ..Facts::new(ip(from))
        };
        let (l, s) = (lockout(), spray());
        match self.state.guard.decide(&facts, Some(&l), Some(&s), &mut ()) {
            Flow::Final(d) | Flow::StepUp(d) => d.stage,
            Flow::Continue => Stage::None,
        }
    }

    /// Waits until this instance has applied `n` entries of the others.
    async fn received(&self, n: u64) {
        let ok = wait(PROPAGATION, || self.state.outbox().received() >= n).await;
        assert!(
            ok,
            "{} applied {} entries, expected {n}",
            self.state.instance(),
            self.state.outbox().received()
        );
    }

    fn alerts(&mut self) -> Vec<&'static str> {
        let mut names = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            names.push(e.name());
        }
        names
    }

    fn metric(&self, series: &str) -> f64 {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

async fn wait(bound: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_learned_on_a_lock_the_user_on_b() {
    let redis = RedisServer::start();
    let mut a = Node::start(&redis.url(), "a").await;
    let mut b = Node::start(&redis.url(), "b").await;
    // One password-hash key for both, kept in Redis.
    assert_eq!(a.state.password_key(b"pw"), b.state.password_key(b"pw"));
    let shared: String = a
        .redis
        .query(cmd("GET").arg(share::SECRET_KEY))
        .await
        .unwrap();
    assert_eq!(shared.len(), 64);

    // Alice is at home on B; an attacker fails from elsewhere, spread over A and B.
    // (Each waits for the last lesson to arrive: a success applied after a
    // later failure would reset it, as a local one would.)
    b.signin("Alice@Contoso.com", "right", "10.0.0.1", SignIn::Success);
    a.received(1).await;
    a.signin("alice@contoso.com", "guess1", "192.0.2.1", SignIn::Failure);
    b.received(1).await;
    b.signin("ALICE@contoso.com", "guess2", "192.0.2.2", SignIn::Failure);
    a.received(2).await;
    a.signin("alice@contoso.com", "guess3", "192.0.2.3", SignIn::Failure);
    b.received(2).await;
    // Locked on both, for unfamiliar locations only; home still passes on A (learned from B).
    assert!(a.locked("alice@contoso.com") && b.locked("alice@contoso.com"));
    for n in [&a, &b] {
        assert_eq!(
            n.decide("alice@contoso.com", "guess9", "192.0.2.9"),
            Stage::Lockout
        );
        assert_eq!(
            n.decide("alice@contoso.com", "right", "10.0.0.1"),
            Stage::None
        );
    }
    // The instance whose lesson locked raised the alert; the other none.
    assert_eq!(a.alerts(), ["lockout"]);
    assert!(b.alerts().is_empty());

    // A repeated wrong password counts once across instances.
    for (here, there, seen) in [(&a, &b, 3), (&b, &a, 3), (&a, &b, 4), (&b, &a, 4)] {
        here.signin(
            "carol@contoso.com",
            "OldPassword1",
            "192.0.2.7",
            SignIn::Failure,
        );
        there.received(seen).await;
    }
    assert!(!a.locked("carol@contoso.com") && !b.locked("carol@contoso.com"));

    // A help-desk reset on B unlocks on A too.
    assert!(b.state.reset_lockout("alice@contoso.com"));
    a.received(5).await;
    assert!(!a.locked("alice@contoso.com"));
    assert_eq!(
        a.decide("alice@contoso.com", "guess9", "192.0.2.9"),
        Stage::None
    );

    // The stream holds lessons: keyed hashes only, users lower case.
    let dump: redis_value::Raw = a
        .redis
        .query(cmd("XRANGE").arg(share::STREAM).arg("-").arg("+"))
        .await
        .unwrap();
    let dump = dump.0;
    assert!(
        dump.contains("\"user\":\"alice@contoso.com\"") && dump.contains("\"result\":\"failure\""),
        "{dump}"
    );
    for secret in ["guess1", "guess2", "OldPassword1", "right", "ALICE"] {
        assert!(!dump.contains(secret), "{secret} in the stream");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_sprayed_over_a_and_b_is_refused_by_both() {
    let redis = RedisServer::start();
    let mut a = Node::start(&redis.url(), "a").await;
    let mut b = Node::start(&redis.url(), "b").await;
    a.signin(
        "u1@contoso.com",
        "Winter2026!",
        "203.0.113.1",
        SignIn::Failure,
    );
    b.received(1).await;
    b.signin(
        "u2@contoso.com",
        "Winter2026!",
        "203.0.113.2",
        SignIn::Failure,
    );
    a.received(1).await;
    // Neither saw three users alone: the third, on A, makes it a spray on both.
    a.signin(
        "u3@contoso.com",
        "Winter2026!",
        "203.0.113.3",
        SignIn::Failure,
    );
    b.received(2).await;
    for n in [&a, &b] {
        assert_eq!(
            n.decide("u9@contoso.com", "Winter2026!", "198.51.100.9"),
            Stage::Spray
        );
        assert_eq!(
            n.decide("u9@contoso.com", "Summer2026!", "198.51.100.9"),
            Stage::None
        );
        assert_eq!(n.state.guard.sprayed_count(now_ms()), 1);
    }
    assert_eq!(a.alerts(), ["spray"]);
    assert!(b.alerts().is_empty());

    // One IP failing for four users spread over both: blocked (by the
    // instance that saw the fourth), enforced by both through the blocks sync.
    a.signin("v1@contoso.com", "p1", "198.51.100.66", SignIn::Failure);
    a.signin("v2@contoso.com", "p2", "198.51.100.66", SignIn::Failure);
    b.signin("v3@contoso.com", "p3", "198.51.100.66", SignIn::Failure);
    b.received(4).await;
    a.received(2).await;
    b.signin("v4@contoso.com", "p4", "198.51.100.66", SignIn::Failure);
    let blocked = |n: &Node| {
        n.state
            .table()
            .by_ip(&[ip("198.51.100.66")], now_ms())
            .is_some()
    };
    assert!(blocked(&b));
    assert!(
        wait(PROPAGATION, || blocked(&a)).await,
        "the block reaches A"
    );
    assert_eq!(b.alerts(), ["block_added", "spray"]);
    assert!(a.alerts().is_empty(), "A adds no block of its own");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_each_counts_locally_then_catches_up() {
    let mut redis = RedisServer::start();
    let a = Node::start(&redis.url(), "a").await;
    let b = Node::start(&redis.url(), "b").await;
    let key = a.state.password_key(b"pw");
    redis.stop();
    // Each instance goes on learning and deciding from memory.
    for i in 0..3 {
        a.signin(
            "dan@contoso.com",
            &format!("g{i}"),
            "192.0.2.1",
            SignIn::Failure,
        );
        b.signin(
            "eve@contoso.com",
            &format!("g{i}"),
            "192.0.2.2",
            SignIn::Failure,
        );
    }
    assert!(a.locked("dan@contoso.com") && b.locked("eve@contoso.com"));
    assert_eq!(
        a.decide("dan@contoso.com", "g9", "192.0.2.9"),
        Stage::Lockout
    );
    assert!(
        wait(PROPAGATION, || a
            .metric("stsgate_state_errors_total{store=\"redis\"}")
            > 0.0)
        .await
    );
    // Back (empty): what each learned meanwhile reaches the other.
    redis.restart();
    assert!(
        wait(CATCH_UP, || a.locked("eve@contoso.com")
            && b.locked("dan@contoso.com"))
        .await,
        "caught up"
    );
    assert_eq!(
        b.decide("dan@contoso.com", "g9", "192.0.2.9"),
        Stage::Lockout
    );
    // The key is back in Redis (the same one).
    let c = Node::start(&redis.url(), "c").await;
    assert_eq!(c.state.password_key(b"pw"), key);
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_reads_back_the_window() {
    let redis = RedisServer::start();
    let a = Node::start(&redis.url(), "a").await;
    for i in 0..3 {
        a.signin(
            "fay@contoso.com",
            &format!("g{i}"),
            "192.0.2.1",
            SignIn::Failure,
        );
    }
    assert!(wait(PROPAGATION, || a.state.outbox().sent() >= 3).await);
    // A new instance (or one restarted with an empty memory) has the counts.
    let c = Node::start(&redis.url(), "c").await;
    c.received(3).await;
    assert!(c.locked("fay@contoso.com"));
    assert_eq!(
        c.decide("fay@contoso.com", "g9", "192.0.2.9"),
        Stage::Lockout
    );
    a.shutdown().await;
    c.shutdown().await;
}

/// Reads any Redis reply as text (for grepping the stream).
mod redis_value {
    use stsgate_state::redis::FromRedisValue;

    pub struct Raw(pub String);

    fn flat(v: &redis::Value, out: &mut String) {
        match v {
            redis::Value::BulkString(b) => out.push_str(&String::from_utf8_lossy(b)),
            redis::Value::SimpleString(s) => out.push_str(s),
            redis::Value::Array(items) => {
                for i in items {
                    flat(i, out);
                    out.push(' ');
                }
            }
            redis::Value::Map(kv) => {
                for (k, v) in kv {
                    flat(k, out);
                    out.push(' ');
                    flat(v, out);
                    out.push(' ');
                }
            }
            other => out.push_str(&format!("{other:?}")),
        }
    }

    impl FromRedisValue for Raw {
        fn from_redis_value(v: redis::Value) -> Result<Self, redis::ParsingError> {
            let mut out = String::new();
            flat(&v, &mut out);
            Ok(Raw(out))
        }
    }
}
