//! # stsgate-rules
//!
//! The rule engine of stsgate, and nothing else: no I/O, no async. It turns
//! a rule file into an immutable [`RuleSet`] and decides requests from their
//! [`Facts`]. In the corridor (listener → client facts → gate state →
//! adaptive → request blocking → upstream) it owns stages 3 and 4; the proxy
//! crate derives the facts, runs gate state and does everything with sockets.
//!
//! Compile once, match many: IP lists become sorted disjoint intervals
//! (binary search), header lists one Aho-Corasick automaton each.

pub mod adaptive;
pub mod anonymous;
pub mod blocking;
pub mod decision;
pub mod error;
pub mod feeds;
pub mod ip;
pub mod ipset;
pub mod lists;
pub mod model;
pub mod ruleset;
pub mod text;
pub mod units;
pub mod user_group;
pub mod velocity;

pub use adaptive::FeedSource;
pub use decision::{
    Action, Anonymous, Country, Decision, Detail, Entry, Facts, Groups, Outcome, Place, Protocol,
    Protocols, SignedIn, Stage, Step, Trace, normalize_dn,
};
pub use error::{SourceError, SourceText};
pub use ipset::IpSet;
pub use model::{FailureAction, ListRule, Logic, Mode, Risk};
pub use ruleset::{LockoutSettings, NoFeeds, RuleSet, SpraySettings};

#[cfg(test)]
mod stage3_tests;
#[cfg(test)]
mod tests;
