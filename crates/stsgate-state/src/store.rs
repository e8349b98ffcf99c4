//! Where gate state is kept beyond memory: records (a namespace, a key, a
//! value, an expiry) behind one trait, with two backends: the embedded
//! store ([`crate::embedded`], the default, so state survives a restart)
//! and Redis (so several instances share it). The request path never
//! touches a store: owned background tasks write to them through bounded
//! queues and read them back at start and on resync.

use std::future::Future;
use std::pin::Pin;

/// What a record is about. Lockout counters, familiar IPs and spray windows
/// get namespaces of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// Dynamic blocks, keyed by block id; the value is the block as JSON.
    Blocks,
    /// Smart lockout per user (counts, familiar IPs, keyed hashes of wrong
    /// passwords), keyed by the lower-case user; embedded store only.
    Users,
    /// Sprayed passwords (keyed hashes, hex) and until when; embedded store only.
    Sprayed,
}

impl Namespace {
    /// The namespace's name inside a store (a key prefix).
    pub const fn as_str(self) -> &'static str {
        match self {
            Namespace::Blocks => "block",
            Namespace::Users => "user",
            Namespace::Sprayed => "sprayed",
        }
    }
}

/// The `store` label of `stsgate_state_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreKind {
    /// The embedded store in `state.dir`.
    Embedded,
    /// Redis at `state.redis_url`.
    Redis,
}

impl StoreKind {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Redis => "redis",
        }
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its namespace.
    pub ns: Namespace,
    /// Its key inside the namespace.
    pub key: String,
    /// Its value (JSON for blocks).
    pub value: Vec<u8>,
    /// When it ends, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// One change to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a record.
    Put(Record),
    /// Remove a record (absent is fine).
    Remove {
        /// Its namespace.
        ns: Namespace,
        /// Its key.
        key: String,
    },
}

impl Change {
    /// The namespace and key the change is about.
    pub fn key(&self) -> (Namespace, &str) {
        match self {
            Change::Put(r) => (r.ns, &r.key),
            Change::Remove { ns, key } => (*ns, key),
        }
    }
}

/// A store failed; the gate keeps deciding from memory.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A backend for gate state.
pub trait Store: Send + Sync + 'static {
    /// Which backend (metrics, logs, `/readyz`).
    fn kind(&self) -> StoreKind;

    /// Writes a batch of changes, in order, all or nothing where the backend
    /// allows it.
    fn apply<'a>(&'a self, changes: &'a [Change]) -> StoreFuture<'a, ()>;

    /// Every live record of a namespace.
    fn load(&self, ns: Namespace) -> StoreFuture<'_, Vec<Record>>;
}
