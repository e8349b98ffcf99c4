//! The LDAP side: one bound connection, reused by every lookup (LDAP
//! multiplexes operations on it) and made again after a failure; the
//! user's entry by `user_filter`, then its groups, nested ones included:
//! Active Directory's `LDAP_MATCHING_RULE_IN_CHAIN` where the server is
//! Active Directory, else a walk of `memberOf` level by level (cycle-safe,
//! bounded in depth and count).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry, SearchOptions};

use crate::filter::{self, escape_filter_value};
use crate::{Settings, Unavailable};
use stsgate_rules::normalize_dn;

/// Most groups one user is reported in (in-chain answers and walks stop there).
pub const MAX_GROUPS: usize = 1000;
/// Deepest nesting the `memberOf` walk follows.
pub const MAX_DEPTH: usize = 16;
/// Group entries the walk reads at once.
const WALK_CONCURRENCY: usize = 16;
/// After a failed connect, lookups fail at once for this long (a directory
/// that is down is not asked again by every request).
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// `LDAP_MATCHING_RULE_IN_CHAIN`.
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// `supportedCapabilities` of Active Directory (and AD LDS).
const AD_CAPABILITIES: [&str; 2] = ["1.2.840.113556.1.4.800", "1.2.840.113556.1.4.1851"];

/// What a directory said about a user.
pub enum Found {
    /// The user's groups, normalised, sorted, each once.
    Groups(Vec<Box<str>>),
    /// No entry matches `user_filter`.
    NoSuchUser,
}

/// A bound connection and what the server can do.
#[derive(Clone)]
struct Conn {
    ldap: Ldap,
    in_chain: bool,
}

enum State {
    Idle,
    Up(Conn),
    /// The last connect failed: why, and when to try again.
    Down(Arc<str>, Instant),
}

/// The LDAP client.
pub struct Client {
    settings: Arc<Settings>,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    state: tokio::sync::Mutex<State>,
    /// Bound of one LDAP operation (and of connect + bind).
    op_timeout: Duration,
}

fn error(e: impl std::fmt::Display) -> Unavailable {
    Unavailable::Error(e.to_string().into())
}

impl Client {
    pub fn new(
        settings: Arc<Settings>,
        password: Option<String>,
        tls: Option<Arc<rustls::ClientConfig>>,
        op_timeout: Duration,
    ) -> Client {
        Client {
            settings,
            password,
            tls,
            state: tokio::sync::Mutex::new(State::Idle),
            op_timeout,
        }
    }

    /// The server is Active Directory (in-chain queries): `None` before
    /// the first connection.
    pub async fn server_in_chain(&self) -> Option<bool> {
        match &*self.state.lock().await {
            State::Up(c) => Some(c.in_chain),
            _ => None,
        }
    }

    /// The connection, made (and bound) when there is none.
    async fn conn(&self) -> Result<Conn, Unavailable> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Up(c) => {
                let mut ldap = c.ldap.clone();
                if !ldap.is_closed() {
                    return Ok(c.clone());
                }
            }
            State::Down(why, retry_at) if Instant::now() < *retry_at => {
                return Err(Unavailable::Error(why.clone()));
            }
            _ => {}
        }
        match self.connect().await {
            Ok(c) => {
                *state = State::Up(c.clone());
                Ok(c)
            }
            Err(e) => {
                let why: Arc<str> = match &e {
                    Unavailable::Error(why) => why.clone(),
                    Unavailable::Timeout => "connect timed out".into(),
                };
                tracing::warn!(url = %self.settings.url, error = %why, "directory: cannot connect");
                *state = State::Down(why, Instant::now() + RECONNECT_AFTER);
                Err(e)
            }
        }
    }

    /// Forgets the connection (after a failed operation).
    pub async fn reset(&self) {
        let mut state = self.state.lock().await;
        if let State::Up(c) = &*state {
            let mut ldap = c.ldap.clone();
            tokio::spawn(async move {
                let _ = ldap.unbind().await;
            });
        }
        *state = State::Idle;
    }

    async fn connect(&self) -> Result<Conn, Unavailable> {
        let mut conn_settings = LdapConnSettings::new().set_conn_timeout(self.op_timeout);
        if let Some(tls) = &self.tls {
            conn_settings = conn_settings.set_config(tls.clone());
        }
        let (driver, mut ldap) = LdapConnAsync::with_settings(conn_settings, &self.settings.url)
            .await
            .map_err(error)?;
        ldap3::drive!(driver);
        ldap.with_timeout(self.op_timeout);
        if let (Some(dn), Some(pw)) = (&self.settings.bind_dn, &self.password) {
            ldap.simple_bind(dn, pw)
                .await
                .map_err(error)?
                .success()
                .map_err(|e| error(format!("bind as {dn} refused: {e}")))?;
        }
        // Active Directory announces itself in the root DSE.
        let (entries, _) = ldap
            .with_timeout(self.op_timeout)
            .search(
                "",
                Scope::Base,
                "(objectClass=*)",
                vec!["supportedCapabilities"],
            )
            .await
            .map_err(error)?
            .success()
            .map_err(error)?;
        let in_chain = entries
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .any(|e| {
                attr(&e, "supportedCapabilities")
                    .iter()
                    .any(|c| AD_CAPABILITIES.contains(&c.as_str()))
            });
        tracing::info!(url = %self.settings.url, in_chain, "directory: connected");
        Ok(Conn { ldap, in_chain })
    }

    /// The groups of the account `name`. A failure forgets the connection.
    pub async fn lookup(&self, name: &str) -> Result<Found, Unavailable> {
        let conn = self.conn().await?;
        let result = self.lookup_on(&conn, name).await;
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    async fn lookup_on(&self, conn: &Conn, name: &str) -> Result<Found, Unavailable> {
        let s = &self.settings;
        let filter = filter::user_filter(&s.user_filter, name);
        let mut ldap = conn.ldap.clone();
        let result = ldap
            .with_timeout(self.op_timeout)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&s.base_dn, Scope::Subtree, &filter, vec!["memberOf"])
            .await
            .map_err(error)?;
        let users: Vec<SearchEntry> = result
            .0
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect();
        match result.1.rc {
            0 => {}
            4 => return Err(error("user_filter matches more than one entry")),
            // A referral (AD outside the base's naming context): nothing here.
            10 if users.is_empty() => return Ok(Found::NoSuchUser),
            rc => {
                return Err(error(format!(
                    "user search failed: rc={rc} {}",
                    result.1.text
                )));
            }
        }
        let user = match users.as_slice() {
            [] => return Ok(Found::NoSuchUser),
            [one] => one,
            _ => return Err(error("user_filter matches more than one entry")),
        };
        let direct: Vec<String> = attr(user, "memberOf").to_vec();
        let mut groups: HashSet<String> = direct.iter().map(|g| normalize_dn(g)).collect();
        let mut walk = !conn.in_chain;
        if conn.in_chain {
            match self.in_chain_groups(conn, &user.dn).await {
                // Nothing while the entry names groups: the server did not
                // evaluate the rule after all.
                Ok(found) if found.is_empty() && !direct.is_empty() => walk = true,
                Ok(found) => groups.extend(found),
                Err(e) => {
                    tracing::debug!(error = %e, "directory: in-chain query failed, walking memberOf");
                    walk = true;
                }
            }
        }
        if walk {
            self.walk(conn, direct, &mut groups).await?;
        }
        let mut groups: Vec<Box<str>> = groups.into_iter().map(Box::from).collect();
        groups.sort_unstable();
        groups.truncate(MAX_GROUPS);
        Ok(Found::Groups(groups))
    }

    /// Every group `dn` is in, nesting followed by the server.
    async fn in_chain_groups(&self, conn: &Conn, dn: &str) -> Result<Vec<String>, String> {
        let filter = format!("(member:{IN_CHAIN}:={})", escape_filter_value(dn));
        let mut ldap = conn.ldap.clone();
        let result = ldap
            .with_timeout(self.op_timeout)
            .with_search_options(SearchOptions::new().sizelimit(MAX_GROUPS as i32))
            .search(&self.settings.base_dn, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| e.to_string())?;
        if !matches!(result.1.rc, 0 | 4 | 10) {
            return Err(format!("rc={} {}", result.1.rc, result.1.text));
        }
        Ok(result
            .0
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(|e| normalize_dn(&SearchEntry::construct(e).dn))
            .collect())
    }

    /// Adds to `groups` the groups of `frontier`'s groups, level by level.
    async fn walk(
        &self,
        conn: &Conn,
        mut frontier: Vec<String>,
        groups: &mut HashSet<String>,
    ) -> Result<(), Unavailable> {
        for _ in 0..MAX_DEPTH {
            if frontier.is_empty() || groups.len() >= MAX_GROUPS {
                break;
            }
            let mut next = Vec::new();
            for chunk in frontier.chunks(WALK_CONCURRENCY) {
                let reads = chunk.iter().map(|dn| {
                    let mut ldap = conn.ldap.clone();
                    let timeout = self.op_timeout;
                    async move {
                        ldap.with_timeout(timeout)
                            .search(dn, Scope::Base, "(objectClass=*)", vec!["memberOf"])
                            .await
                    }
                });
                for result in futures_util::future::join_all(reads).await {
                    let result = result.map_err(error)?;
                    // A group that is gone (32) or out of reach is not followed.
                    for entry in result.0 {
                        if entry.is_ref() || entry.is_intermediate() {
                            continue;
                        }
                        for parent in attr(&SearchEntry::construct(entry), "memberOf") {
                            if groups.len() < MAX_GROUPS && groups.insert(normalize_dn(parent)) {
                                next.push(parent.clone());
                            }
                        }
                    }
                }
            }
            frontier = next;
        }
        Ok(())
    }
}

/// The values of attribute `name` (any case) of an entry.
fn attr<'e>(entry: &'e SearchEntry, name: &str) -> &'e [String] {
    entry
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}
