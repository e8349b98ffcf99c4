//! Dynamic blocks: an IP (any IP notation of PRODUCT.md §3.1) or a user put
//! on the block list for a while, by the admin API, the CLI, a SOAR or
//! spray detection. [`NewBlock`] validates what the API is given;
//! [`BlockTable`] is the immutable, compiled form the request path reads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stsgate_rules::Entry;
use stsgate_rules::ip::for_each_item;
use stsgate_rules::ipset::{EntryId, IpSet};

/// Longest `reason` the API accepts, in characters.
pub const MAX_REASON: usize = 256;
/// Longest `origin` the API accepts.
pub const MAX_ORIGIN: usize = 32;
/// Longest user name a block may name.
pub const MAX_USER: usize = 256;
/// Longest IP notation a block may hold.
pub const MAX_IP_TEXT: usize = 4096;

/// What a block does to a request it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockAction {
    /// The blocked response; nothing reaches upstream.
    Refuse,
    /// Forwarded with `X-Stsgate-Step-Up: required` (the request still goes
    /// through stages 3 and 4).
    #[serde(rename = "require_2fa")]
    Require2fa,
}

impl BlockAction {
    /// The name in the API, logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockAction::Refuse => "refuse",
            BlockAction::Require2fa => "require_2fa",
        }
    }
}

/// What a block is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// IP notation, normalised (no spaces, lower case).
    Ip(String),
    /// A user name, lower case (user names compare ignoring case).
    User(String),
}

impl Target {
    /// `ip` or `user`: the decision log's `list` and the metric's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Ip(_) => "ip",
            Target::User(_) => "user",
        }
    }

    /// The IP notation or the user name.
    pub fn value(&self) -> &str {
        match self {
            Target::Ip(v) | Target::User(v) => v,
        }
    }
}

/// One live block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Stable identifier: the same target and action always get the same id,
    /// on every instance, so posting a block twice extends it.
    pub id: String,
    /// What is blocked.
    #[serde(flatten)]
    pub target: Target,
    /// What happens to a matching request.
    pub action: BlockAction,
    /// Free text from whoever added it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who added it: `api` (default), `cli`, `ui`, `spray`, or what the caller named.
    pub origin: String,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Milliseconds since the Unix epoch; the block ends then.
    pub expires_at_ms: u64,
}

impl Block {
    /// A new block. Its id follows from its target and action.
    pub fn new(
        target: Target,
        action: BlockAction,
        reason: Option<String>,
        origin: String,
        now_ms: u64,
        ttl: Duration,
    ) -> Block {
        Block {
            id: block_id(&target, action),
            target,
            action,
            reason,
            origin,
            created_at_ms: now_ms,
            expires_at_ms: now_ms
                .saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Still in force at `now_ms`?
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_at_ms > now_ms
    }

    /// The block as the API shows it: RFC 3339 times and the seconds left.
    pub fn to_api(&self, now_ms: u64) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            self.target.kind(): self.target.value(),
            "action": self.action.as_str(),
            "origin": self.origin,
            "created_at": rfc3339(self.created_at_ms),
            "expires_at": rfc3339(self.expires_at_ms),
            "ttl_left_seconds": self.expires_at_ms.saturating_sub(now_ms) / 1000,
        });
        if let Some(reason) = &self.reason {
            v["reason"] = serde_json::Value::String(reason.clone());
        }
        v
    }

    /// What the decision log and `explain` show as the matching entry.
    pub fn entry(&self) -> Entry {
        match &self.reason {
            Some(reason) => Entry::dynamic(format!("{} ({reason})", self.id)),
            None => Entry::dynamic(self.id.clone()),
        }
    }
}

/// `b-` and 16 hex digits of SHA-256 over the kind, target and action.
fn block_id(target: &Target, action: BlockAction) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [target.kind(), target.value(), action.as_str()] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    let mut id = String::with_capacity(18);
    id.push_str("b-");
    for b in &digest.as_ref()[..8] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// Milliseconds since the epoch as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(rfc3339_time(ms)).to_string()
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(rfc3339_time(ms)).to_string()
}

/// The time RFC 3339 writes for `ms`: a time past the last one it can write
/// (9999-12-31T23:59:59.999Z; a record from a misbehaving peer, say) is
/// written as that one, where the formatter would fail.
fn rfc3339_time(ms: u64) -> std::time::SystemTime {
    const LAST_MS: u64 = 253_402_300_799_999;
    std::time::UNIX_EPOCH + Duration::from_millis(ms.min(LAST_MS))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A bad API request: the field it is about and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// The JSON key at fault, or empty for the body as a whole.
    pub field: &'static str,
    /// A sentence for the caller.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

/// A block as the API is asked for it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBlock {
    /// What to block.
    pub target: Target,
    /// How long.
    pub ttl: Duration,
    /// What it does.
    pub action: BlockAction,
    /// Why.
    pub reason: Option<String>,
    /// Who asks.
    pub origin: String,
}

impl NewBlock {
    /// Validates one JSON object of `POST /api/v1/blocks`: `ip` or `user`,
    /// `ttl` (a duration string or seconds), optional `action`, `reason`,
    /// `origin`. Every problem names its field.
    pub fn from_json(value: &serde_json::Value, max_ttl: Duration) -> Result<NewBlock, FieldError> {
        let Some(map) = value.as_object() else {
            return Err(bad("", "expected a JSON object"));
        };
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "ip" | "user" | "ttl" | "action" | "reason" | "origin"
            ) {
                return Err(bad(
                    "",
                    format!(
                        "unknown field {key:?}: expected ip or user, ttl, action, reason, origin"
                    ),
                ));
            }
        }
        let text = |field: &'static str| -> Result<Option<&str>, FieldError> {
            match map.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(bad(field, format!("{field} must be a string"))),
            }
        };
        let target = match (text("ip")?, text("user")?) {
            (Some(_), Some(_)) => return Err(bad("ip", "give ip or user, not both")),
            (None, None) => return Err(bad("ip", "missing ip or user")),
            (Some(ip), None) => Target::Ip(normalize_ip(ip)?),
            (None, Some(user)) => Target::User(normalize_user(user)?),
        };
        let ttl = match map.get("ttl") {
            None | Some(serde_json::Value::Null) => {
                return Err(bad("ttl", "missing ttl (e.g. \"4h\" or 14400)"));
            }
            Some(serde_json::Value::String(s)) => stsgate_rules::units::parse_duration(s)
                .map_err(|m| bad("ttl", format!("ttl: {m}")))?,
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(secs) => Duration::from_secs(secs),
                None => return Err(bad("ttl", "ttl: seconds must be a whole positive number")),
            },
            Some(_) => {
                return Err(bad(
                    "ttl",
                    "ttl must be a duration string such as \"4h\" or a number of seconds",
                ));
            }
        };
        if ttl.is_zero() {
            return Err(bad("ttl", "ttl must be longer than zero"));
        }
        if ttl > max_ttl {
            return Err(bad(
                "ttl",
                format!(
                    "ttl {} is longer than state.max_ttl ({})",
                    humantime::format_duration(ttl),
                    humantime::format_duration(max_ttl)
                ),
            ));
        }
        let action = match text("action")? {
            None | Some("refuse") => BlockAction::Refuse,
            Some("require_2fa") => BlockAction::Require2fa,
            Some(other) => {
                return Err(bad(
                    "action",
                    format!("unknown action {other:?}: expected \"refuse\" or \"require_2fa\""),
                ));
            }
        };
        let reason = match text("reason")? {
            Some(r) if r.chars().count() > MAX_REASON => {
                return Err(bad(
                    "reason",
                    format!("reason is longer than {MAX_REASON} characters"),
                ));
            }
            Some(r) if r.chars().any(char::is_control) => {
                return Err(bad("reason", "reason holds control characters"));
            }
            Some(r) if !r.trim().is_empty() => Some(r.trim().to_string()),
            _ => None,
        };
        let origin = match text("origin")? {
            None => "api".to_string(),
            Some(o)
                if !o.is_empty()
                    && o.len() <= MAX_ORIGIN
                    && o.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                o.to_ascii_lowercase()
            }
            Some(_) => {
                return Err(bad(
                    "origin",
                    format!("origin must be 1 to {MAX_ORIGIN} letters, digits, '-' or '_'"),
                ));
            }
        };
        Ok(NewBlock {
            target,
            ttl,
            action,
            reason,
            origin,
        })
    }
}

/// Checks IP notation and writes it one way: items without spaces, lower case.
pub fn normalize_ip(text: &str) -> Result<String, FieldError> {
    if text.len() > MAX_IP_TEXT {
        return Err(bad("ip", format!("ip is longer than {MAX_IP_TEXT} bytes")));
    }
    let mut items: Vec<&str> = Vec::new();
    for_each_item(text, |_, item, _| {
        if items.last() != Some(&item) {
            items.push(item);
        }
    })
    .map_err(|(_, m)| bad("ip", format!("ip: {m}")))?;
    Ok(items.join(",").to_ascii_lowercase())
}

/// Checks a user name (UPN, `DOMAIN\sam` or `sam`) and lower-cases it.
pub fn normalize_user(user: &str) -> Result<String, FieldError> {
    let user = user.trim();
    if user.is_empty() {
        return Err(bad("user", "user is empty"));
    }
    if user.chars().count() > MAX_USER {
        return Err(bad(
            "user",
            format!("user is longer than {MAX_USER} characters"),
        ));
    }
    if user.chars().any(char::is_control) {
        return Err(bad("user", "user holds control characters"));
    }
    Ok(user.to_lowercase())
}

/// Is a block read back from a store well formed: its target valid and
/// normalised, its id the one its target and action give?
pub fn normalize_check(b: &Block) -> bool {
    let target_ok = match &b.target {
        Target::Ip(text) => normalize_ip(text).is_ok_and(|n| &n == text),
        Target::User(user) => normalize_user(user).is_ok_and(|n| &n == user),
    };
    target_ok
        && b.id == block_id(&b.target, b.action)
        && b.reason
            .as_ref()
            .is_none_or(|r| r.chars().count() <= MAX_REASON)
        && b.origin.len() <= MAX_ORIGIN
}

/// The live blocks, compiled for the request path: IP blocks as sorted
/// disjoint intervals (one binary search), user blocks in a hash map.
/// Immutable; rebuilt off the request path and swapped whole.
#[derive(Debug, Default)]
pub struct BlockTable {
    /// Every block, `refuse` before `require_2fa`, then the longest-lived
    /// first: where blocks overlap, the lookup names the strongest.
    blocks: Vec<Arc<Block>>,
    entries: Vec<Entry>,
    ips: IpSet,
    users: HashMap<Box<str>, EntryId>,
    ip_blocks: usize,
}

impl BlockTable {
    /// Compiles `blocks` (their IP notation was validated when they were made;
    /// a block whose notation no longer parses is skipped).
    pub fn build(blocks: impl IntoIterator<Item = Arc<Block>>) -> BlockTable {
        let mut blocks: Vec<Arc<Block>> = blocks.into_iter().collect();
        blocks.sort_by(|a, b| {
            (
                a.action != BlockAction::Refuse,
                std::cmp::Reverse(a.expires_at_ms),
                &a.id,
            )
                .cmp(&(
                    b.action != BlockAction::Refuse,
                    std::cmp::Reverse(b.expires_at_ms),
                    &b.id,
                ))
        });
        let mut patterns = Vec::new();
        let mut users = HashMap::new();
        let mut ip_blocks = 0;
        for (i, block) in blocks.iter().enumerate() {
            let id = EntryId::try_from(i).unwrap_or(EntryId::MAX);
            match &block.target {
                Target::Ip(text) => {
                    ip_blocks += 1;
                    let _ = for_each_item(text, |_, _, pattern| patterns.push((pattern, id)));
                }
                Target::User(user) => {
                    users.entry(user.clone().into_boxed_str()).or_insert(id);
                }
            }
        }
        let entries = blocks.iter().map(|b| b.entry()).collect();
        BlockTable {
            ips: IpSet::build(patterns),
            users,
            entries,
            blocks,
            ip_blocks,
        }
    }

    /// The strongest live block on any of `addresses`.
    #[inline]
    pub fn by_ip(&self, addresses: &[IpAddr], now_ms: u64) -> Option<(&Block, &Entry)> {
        if self.ip_blocks == 0 {
            return None;
        }
        addresses
            .iter()
            .filter_map(|ip| self.ips.lookup(*ip))
            .min()
            .map(|i| self.at(i))
            .filter(|(b, _)| b.live(now_ms))
    }

    /// The strongest live block on `user` (compared ignoring case).
    #[inline]
    pub fn by_user(&self, user: &str, now_ms: u64) -> Option<(&Block, &Entry)> {
        if self.users.is_empty() {
            return None;
        }
        let found = if user.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
            self.users.get(user.to_lowercase().as_str())
        } else {
            self.users.get(user)
        };
        found.map(|&i| self.at(i)).filter(|(b, _)| b.live(now_ms))
    }

    fn at(&self, i: EntryId) -> (&Block, &Entry) {
        (&self.blocks[i as usize], &self.entries[i as usize])
    }

    /// Live IP blocks and user blocks (for the gauges).
    pub fn counts(&self) -> (usize, usize) {
        (self.ip_blocks, self.blocks.len() - self.ip_blocks)
    }

    /// Every block in the table.
    pub fn blocks(&self) -> &[Arc<Block>] {
        &self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn times_past_year_9999_are_written_as_its_last_moment() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_millis(1_500), "1970-01-01T00:00:01.500Z");
        // The formatter fails (and to_string panics) past 9999, e.g. for a
        // far-future time (a lesson or record from a misbehaving peer).
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339_millis(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    fn new(v: serde_json::Value) -> Result<NewBlock, FieldError> {
        NewBlock::from_json(&v, 30 * DAY)
    }

    #[test]
    fn validation_names_the_field() {
        for (body, field, words) in [
            (json!({"ip": "1.2.3.4"}), "ttl", "missing ttl"),
            (json!({"ip": "1.2.3.999", "ttl": "1h"}), "ip", "ip:"),
            (
                json!({"ip": "1.2.3.4", "user": "a", "ttl": "1h"}),
                "ip",
                "not both",
            ),
            (json!({"ttl": "1h"}), "ip", "missing ip or user"),
            (json!({"ip": "1.2.3.4", "ttl": "soon"}), "ttl", "ttl:"),
            (json!({"ip": "1.2.3.4", "ttl": "31d"}), "ttl", "max_ttl"),
            (
                json!({"ip": "1.2.3.4", "ttl": 0}),
                "ttl",
                "longer than zero",
            ),
            (json!({"ip": "1.2.3.4", "ttl": -5}), "ttl", "whole positive"),
            (
                json!({"ip": "1.2.3.4", "ttl": "1h", "action": "deny"}),
                "action",
                "unknown action",
            ),
            (
                json!({"ip": "1.2.3.4", "ttl": "1h", "colour": 1}),
                "",
                "unknown field \"colour\"",
            ),
            (json!({"user": "", "ttl": "1h"}), "user", "empty"),
            (json!({"user": 5, "ttl": "1h"}), "user", "must be a string"),
            (
                json!({"ip": "1.2.3.4", "ttl": "1h", "reason": "x".repeat(257)}),
                "reason",
                "longer",
            ),
            (
                json!({"ip": "1.2.3.4", "ttl": "1h", "origin": "a b"}),
                "origin",
                "origin must",
            ),
            (json!([1]), "", "object"),
        ] {
            let e = new(body.clone()).unwrap_err();
            assert_eq!(e.field, field, "{body}: {e:?}");
            assert!(e.message.contains(words), "{body}: {e:?}");
        }
    }

    #[test]
    fn same_target_same_id() {
        let a = new(json!({"ip": " 10.0.0.0/8 , 5.143.*.*", "ttl": 60})).unwrap();
        let b = new(json!({"ip": "10.0.0.0/8,5.143.*.*", "ttl": "2h", "reason": "x"})).unwrap();
        assert_eq!(a.target, b.target);
        let ba = Block::new(a.target, a.action, None, a.origin, 0, a.ttl);
        let bb = Block::new(b.target, b.action, None, b.origin, 0, b.ttl);
        assert_eq!(ba.id, bb.id);
        let u1 = new(json!({"user": "Alice@Contoso.com", "ttl": 60})).unwrap();
        let u2 =
            new(json!({"user": "alice@contoso.com", "ttl": 60, "action": "require_2fa"})).unwrap();
        assert_eq!(u1.target, u2.target);
        let b1 = Block::new(u1.target, u1.action, None, u1.origin, 0, u1.ttl);
        let b2 = Block::new(u2.target, u2.action, None, u2.origin, 0, u2.ttl);
        assert_ne!(b1.id, b2.id, "the action is part of the identity");
    }

    #[test]
    fn table_lookups() {
        let mk = |v: serde_json::Value, now: u64| {
            let n = new(v).unwrap();
            Arc::new(Block::new(
                n.target, n.action, n.reason, n.origin, now, n.ttl,
            ))
        };
        let soft = mk(
            json!({"ip": "10.0.0.0/8", "ttl": 100, "action": "require_2fa"}),
            0,
        );
        let hard = mk(json!({"ip": "10.1.0.0/16", "ttl": 10}), 0);
        let star = mk(json!({"ip": "5.143.*.*", "ttl": 10}), 0);
        let user = mk(json!({"user": "D'Arcy@Contoso.com", "ttl": 10}), 0);
        let t = BlockTable::build([soft.clone(), hard.clone(), star, user]);
        assert_eq!(t.counts(), (3, 1));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            t.by_ip(&[ip("10.1.2.3")], 1).unwrap().0.id,
            hard.id,
            "refuse wins"
        );
        assert_eq!(t.by_ip(&[ip("10.2.2.3")], 1).unwrap().0.id, soft.id);
        assert!(t.by_ip(&[ip("11.0.0.1")], 1).is_none());
        assert!(
            t.by_ip(&[ip("11.0.0.1"), ip("5.143.9.9")], 1).is_some(),
            "any address"
        );
        assert!(t.by_ip(&[ip("5.143.9.9")], 10_000).is_none(), "expired");
        assert!(t.by_user("d'arcy@CONTOSO.com", 1).is_some());
        assert!(t.by_user("darcy@contoso.com", 1).is_none());
        assert!(t.by_user("d'arcy@contoso.com", 10_000).is_none());
    }
}
