//! # stsgate-state
//!
//! Stage 2 of the corridor (listener → client facts → **gate state** →
//! adaptive → request blocking → upstream): dynamic blocks put on IPs or
//! users by the admin API, the CLI, a SOAR or spray detection, each with an
//! end. The request path reads an immutable [`BlockTable`] (in memory,
//! O(log n) for any number of IP blocks); changes are made off the request
//! path ([`GateState`]) and written by owned background tasks, through
//! bounded queues, to the embedded store ([`embedded`], so blocks survive a
//! restart) and to Redis (so instances share them). A store that fails
//! degrades to memory, is counted and logged, and is caught up once back.

pub mod block;
pub mod embedded;
pub mod guard;
pub mod redis;
pub mod service;
pub mod share;
pub mod stage;
pub mod store;

pub use block::{Block, BlockAction, BlockTable, FieldError, NewBlock, Target, now_ms};
pub use guard::{Guard, Learned, Lesson, Locked, PasswordKey, Secret, SignIn};
pub use service::{
    Added, CompromiseAlert, EventSink, GateState, LockoutAlert, SprayAlert, StateEvent,
    StateMetrics, StoreHealth,
};
pub use stage::Flow;
pub use store::{Change, Namespace, Record, Store, StoreError, StoreKind};
