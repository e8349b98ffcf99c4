//! # stsgate-directory
//!
//! One question of stage 3's user / group check (PRODUCT.md §3.3): which
//! groups is this user in? Asked of LDAP (`[directory]` of the main config:
//! Active Directory, or any server with `memberOf` such as OpenLDAP's
//! memberof overlay), nested groups included, and answered within
//! `directory.timeout`: found and not-found answers are cached for
//! `directory.cache_for` (at most [`cache::DEFAULT_CAPACITY`] users, oldest
//! out first), concurrent requests for one user share one query, and a
//! query that outlives the timeout goes on in the background and fills the
//! cache. The LDAP work runs on the directory's own small runtime, never on
//! the request workers.
//!
//! Metrics: `stsgate_directory_lookups_total{result}` and
//! `stsgate_directory_lookup_duration_seconds` (see [`DirectoryMetrics`]).

pub mod cache;
mod client;
pub mod filter;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

pub use client::{MAX_DEPTH, MAX_GROUPS};
pub use filter::{account_name, check_url, check_user_filter, escape_filter_value};
pub use stsgate_rules::normalize_dn;

use cache::{Cache, Lookup};

/// `directory.on_error`: what a request gets when the directory cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Decide without the groups (the default).
    #[default]
    Continue,
    /// The user / group check refuses the request.
    Refuse,
}

impl OnError {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Continue => "continue",
            OnError::Refuse => "refuse",
        }
    }
}

/// `[directory]`, validated (see the README for each key).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// The service account's DN; absent: an anonymous bind.
    pub bind_dn: Option<String>,
    /// The file whose first line is the service account's password.
    pub password_file: Option<PathBuf>,
    /// Where users are searched (subtree).
    pub base_dn: String,
    /// The LDAP filter that finds a user's entry, `{user}` standing for the
    /// account name (escaped).
    pub user_filter: String,
    /// Extra trust roots for `ldaps://` (the system's are used too).
    pub ca_file: Option<PathBuf>,
    /// Longest a request waits for an answer.
    pub timeout: Duration,
    /// How long found and not-found answers are kept.
    pub cache_for: Duration,
    /// What a request gets when the directory cannot answer.
    pub on_error: OnError,
}

/// The default `directory.user_filter` (Active Directory).
pub const DEFAULT_USER_FILTER: &str = "(|(userPrincipalName={user})(sAMAccountName={user}))";
/// The default `directory.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(300);
/// The default `directory.cache_for`.
pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(15 * 60);
/// The shortest bound of one LDAP query in the background (a request stops
/// waiting at `timeout`; the query may take this long to fill the cache).
pub const MIN_QUERY_BOUND: Duration = Duration::from_secs(5);
/// Most queries under way at once (many distinct users at once, a spray
/// of made-up names, must not become a flood on the domain controllers):
/// a lookup beyond them is answered at once as an error.
pub const MAX_QUERIES: usize = 64;

impl Settings {
    /// The service account's password: the first line of `password_file`.
    /// Never logged.
    pub fn read_password(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(format!("{} holds no password", path.display()));
        }
        Ok(Some(line.to_string()))
    }

    /// `ldaps://`?
    pub fn is_ldaps(&self) -> bool {
        self.url.starts_with("ldaps://")
    }
}

/// Why the directory could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No answer within `directory.timeout`.
    Timeout,
    /// The server could not be reached, refused the bind, or failed.
    Error(Arc<str>),
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Timeout => f.write_str("no answer within directory.timeout"),
            Unavailable::Error(why) => f.write_str(why),
        }
    }
}

/// The directory's answer about one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Every group the user is in, nested included, each normalised by
    /// [`normalize_dn`], sorted.
    Found(Arc<[Box<str>]>),
    /// No entry matches `user_filter`.
    NoSuchUser,
    /// No answer.
    Unavailable(Unavailable),
}

/// Errors of [`Directory::new`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `password_file` could not be read.
    #[error("directory.password_file: {0}")]
    Password(String),
    /// `bind_dn` without `password_file`.
    #[error("directory.bind_dn needs directory.password_file")]
    NoPassword,
    /// The directory's runtime could not start.
    #[error("directory: {0}")]
    Runtime(#[from] std::io::Error),
}

/// `stsgate_directory_lookups_total{result}` and
/// `stsgate_directory_lookup_duration_seconds`.
///
/// `result`: `found`, `not_found`, `error` — queries made to the directory,
/// by their answer (each also observed in the histogram; `error` also
/// counts lookups refused because [`MAX_QUERIES`] were under way); `hit` — requests
/// answered from the cache; `coalesced` — requests that waited for a query
/// already under way for the same user; `timeout` — requests that stopped
/// waiting at `directory.timeout` (the query goes on and counts its own
/// result).
#[derive(Clone)]
pub struct DirectoryMetrics {
    found: IntCounter,
    not_found: IntCounter,
    error: IntCounter,
    hit: IntCounter,
    coalesced: IntCounter,
    timeout: IntCounter,
    duration: Histogram,
}

impl DirectoryMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Result<DirectoryMetrics, prometheus::Error> {
        let lookups = IntCounterVec::new(
            Opts::new(
                "stsgate_directory_lookups_total",
                "Directory lookups of users' groups, by result: queries found, not_found, error; requests hit (cache), coalesced (waited on a query under way), timeout.",
            ),
            &["result"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "stsgate_directory_lookup_duration_seconds",
                "Time a directory query took (user entry and nested groups).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        let c = |r: &str| lookups.with_label_values(&[r]);
        Ok(DirectoryMetrics {
            found: c("found"),
            not_found: c("not_found"),
            error: c("error"),
            hit: c("hit"),
            coalesced: c("coalesced"),
            timeout: c("timeout"),
            duration,
        })
    }
}

/// The directory's health as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Not asked yet.
    Unknown,
    /// The last query was answered.
    Ok,
    /// The last query failed: why.
    Failing(Arc<str>),
}

struct Inner {
    settings: Arc<Settings>,
    client: client::Client,
    cache: Cache,
    metrics: DirectoryMetrics,
    health: Mutex<Health>,
    query_bound: Duration,
    queries: Arc<tokio::sync::Semaphore>,
}

/// The directory: ask it with [`Directory::groups`]. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
    runtime: Arc<Runtime>,
}

/// The directory's own runtime (one thread), shut down when the last
/// [`Directory`] goes.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Directory {
    /// Reads the password file and starts the directory's runtime; connects
    /// on the first lookup. `tls` is the client config for `ldaps://` (ring
    /// provider, the system's roots plus `ca_file`).
    pub fn new(
        settings: Settings,
        tls: Option<Arc<rustls::ClientConfig>>,
        metrics: DirectoryMetrics,
    ) -> Result<Directory, Error> {
        let password = settings.read_password().map_err(Error::Password)?;
        if settings.bind_dn.is_some() && password.is_none() {
            return Err(Error::NoPassword);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stsgate-directory")
            .enable_all()
            .build()?;
        let query_bound = (settings.timeout * 2).max(MIN_QUERY_BOUND);
        let settings = Arc::new(settings);
        let tls = if settings.is_ldaps() { tls } else { None };
        Ok(Directory {
            inner: Arc::new(Inner {
                client: client::Client::new(settings.clone(), password, tls, query_bound),
                cache: Cache::new(cache::DEFAULT_CAPACITY, settings.cache_for),
                settings,
                metrics,
                health: Mutex::new(Health::Unknown),
                query_bound,
                queries: Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES)),
            }),
            runtime: Arc::new(Runtime(Some(runtime))),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The groups of a request's user (UPN, `DOMAIN\sam` or sam), waiting
    /// at most `directory.timeout`.
    pub async fn groups(&self, user: &str) -> Answer {
        let Some(name) = account_name(user) else {
            return Answer::NoSuchUser;
        };
        let key = name.to_lowercase();
        let mut waiter = match self.inner.cache.get(&key, Instant::now()) {
            Lookup::Ready(answer) => {
                self.inner.metrics.hit.inc();
                return answer;
            }
            Lookup::Joined(waiter) => {
                self.inner.metrics.coalesced.inc();
                waiter
            }
            Lookup::Started(pending, waiter) => {
                let Ok(permit) = self.inner.queries.clone().try_acquire_owned() else {
                    self.inner.metrics.error.inc();
                    let busy = Answer::Unavailable(Unavailable::Error(
                        format!("{MAX_QUERIES} directory queries under way").into(),
                    ));
                    self.inner
                        .cache
                        .finish(pending, busy.clone(), Instant::now());
                    return busy;
                };
                let inner = self.inner.clone();
                let name = name.to_string();
                self.handle().spawn(async move {
                    let answer = inner.query(&name).await;
                    inner.cache.finish(pending, answer, Instant::now());
                    drop(permit);
                });
                waiter
            }
        };
        let answered = waiter.wait_for(Option::is_some);
        match tokio::time::timeout(self.inner.settings.timeout, answered).await {
            Ok(Ok(answer)) => answer.clone().expect("waited for an answer"),
            Ok(Err(_)) => {
                Answer::Unavailable(Unavailable::Error("the lookup was abandoned".into()))
            }
            Err(_) => {
                self.inner.metrics.timeout.inc();
                Answer::Unavailable(Unavailable::Timeout)
            }
        }
    }

    /// [`Directory::groups`] from a thread outside any async runtime (the
    /// CLI).
    pub fn groups_blocking(&self, user: &str) -> Answer {
        let this = self.clone();
        let user = user.to_string();
        self.handle()
            .block_on(async move { this.groups(&user).await })
    }

    /// What the last query said about the directory.
    pub fn health(&self) -> Health {
        self.inner
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The server evaluates `LDAP_MATCHING_RULE_IN_CHAIN` (Active
    /// Directory): `None` until connected.
    pub async fn in_chain(&self) -> Option<bool> {
        let inner = self.inner.clone();
        self.handle()
            .spawn(async move { inner.client.server_in_chain().await })
            .await
            .ok()
            .flatten()
    }

    /// Users in the cache now.
    pub fn cached_users(&self) -> usize {
        self.inner.cache.len()
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .0
            .as_ref()
            .expect("the runtime lives as long as the directory")
            .handle()
    }
}

impl Inner {
    /// One query, bounded, counted and timed.
    async fn query(&self, name: &str) -> Answer {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.query_bound, self.client.lookup(name)).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that stopped answering is not used again.
                self.client.reset().await;
                Err(Unavailable::Error(
                    format!(
                        "no answer from {} within {:?}",
                        self.settings.url, self.query_bound
                    )
                    .into(),
                ))
            }
        };
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        let (answer, health) = match result {
            Ok(client::Found::Groups(groups)) => {
                self.metrics.found.inc();
                (Answer::Found(groups.into()), Health::Ok)
            }
            Ok(client::Found::NoSuchUser) => {
                self.metrics.not_found.inc();
                (Answer::NoSuchUser, Health::Ok)
            }
            Err(e) => {
                self.metrics.error.inc();
                let why: Arc<str> = e.to_string().into();
                tracing::warn!(url = %self.settings.url, error = %why, "directory lookup failed");
                (Answer::Unavailable(e), Health::Failing(why))
            }
        };
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = health;
        answer
    }
}
