//! What the STS's answers teach the gate (PRODUCT.md §4.4): smart lockout
//! per user (familiar and unfamiliar locations counted apart), repeated
//! wrong passwords counted once, sprayed passwords refused for everyone,
//! and client IPs that fail for many users blocked.
//!
//! Passwords never reach this module: only a keyed hash ([`Secret::key`],
//! HMAC-SHA-256 with the gate's own secret, cut to 16 bytes). Everything is
//! in memory, bounded, and read on the request path under short locks;
//! entries end with their windows and are purged in the background.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stsgate_rules::{
    Action, Decision, Facts, LockoutSettings, Mode, Outcome, Place, SignedIn, SpraySettings, Stage,
    Step, Trace,
};

use crate::service::{CompromiseAlert, LockoutAlert, SprayAlert};
use crate::stage::Flow;

/// A keyed hash of a password.
pub type PasswordKey = [u8; 16];

/// Familiar IPs kept per user (the oldest dropped), as ADFS does.
pub const MAX_FAMILIAR: usize = 20;
/// Wrong-password hashes kept per user.
pub const MAX_WRONG: usize = 8;
/// How long a user's last successful sign-in (geo-velocity's starting
/// point) is kept: longer than any trip at a plausible speed.
pub const LAST_SIGNIN_KEPT: Duration = Duration::from_secs(30 * 86400);
/// Users tracked at once; beyond it new users are not tracked until purge.
pub const MAX_USERS: usize = 1_000_000;
/// Client IPs and passwords tracked for spray detection at once.
pub const MAX_SPRAY_KEYS: usize = 1_000_000;
/// Users and IPs named in one spray alert.
const ALERT_LIST: usize = 50;

/// The gate's secret for keyed password hashes: 32 random bytes in
/// `state.dir/secret.key` (mode 0600), made at first start.
pub struct Secret(ring::hmac::Key);

/// The secret's file name in `state.dir`.
pub const SECRET_FILE: &str = "secret.key";

impl Secret {
    /// Reads `dir/secret.key`, or makes it.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Secret> {
        let path = dir.join(SECRET_FILE);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => Ok(Secret::from_bytes(&bytes)),
            Ok(_) => Err(std::io::Error::other(format!(
                "{} does not hold a 32-byte key",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| std::io::Error::other("no randomness for the secret key"))?;
                std::fs::create_dir_all(dir)?;
                let tmp = dir.join(format!("{SECRET_FILE}.tmp"));
                {
                    use std::io::Write;
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(&bytes)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                Ok(Secret::from_bytes(&bytes))
            }
            Err(e) => Err(e),
        }
    }

    /// A secret from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes))
    }

    /// The keyed hash of `password`.
    pub fn key(&self, password: &[u8]) -> PasswordKey {
        let tag = ring::hmac::sign(&self.0, password);
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }
}

/// A failure count within a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Count {
    n: u32,
    last_ms: u64,
}

impl Count {
    /// Locked at `threshold` until the window has passed since the last
    /// failure; then one attempt (a new failure locks again).
    fn locked(&self, threshold: u32, window_ms: u64, now: u64) -> bool {
        self.n >= threshold && now < self.last_ms.saturating_add(window_ms)
    }

    /// The failures that still count at `now`.
    fn live(&self, threshold: u32, window_ms: u64, now: u64) -> u32 {
        if self.n < threshold && now >= self.last_ms.saturating_add(window_ms) {
            0
        } else {
            self.n
        }
    }

    fn until(&self, window_ms: u64) -> u64 {
        self.last_ms.saturating_add(window_ms)
    }

    fn fail(&mut self, threshold: u32, window_ms: u64, now: u64) {
        // Below the threshold, failures older than the window are forgotten;
        // at or above it, the count stays so the attempt after the window
        // that fails locks again.
        if self.n < threshold && now >= self.last_ms.saturating_add(window_ms) {
            self.n = 0;
        }
        self.n = self.n.saturating_add(1);
        self.last_ms = now;
    }
}

/// What the gate knows of one user (kept in the embedded store as JSON:
/// IPs, counts, times and keyed hashes; never a password).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct UserRecord {
    /// Familiar IPs and until when.
    familiar: Vec<(IpAddr, u64)>,
    unfamiliar: Count,
    familiar_count: Count,
    /// Wrong passwords seen in the window (keyed hashes) and until when.
    wrong: Vec<(PasswordKey, u64)>,
    /// The keyed hash of the last password that signed in, and until when:
    /// a locked user's request carrying it is a "correct password while
    /// locked" (possible compromise) without asking the directory.
    good: Option<(PasswordKey, u64)>,
    /// A lockout alert was raised for the current lock.
    alerted: bool,
    /// The last successful sign-in whose place the city database knew
    /// (geo-velocity). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<SignedIn>,
}

impl UserRecord {
    fn is_familiar(&self, locations: &[IpAddr], now: u64) -> bool {
        locations.iter().all(|ip| {
            self.familiar
                .iter()
                .any(|(f, until)| f == ip && *until > now)
        })
    }

    /// When everything in the record has ended.
    fn end(&self, window_ms: u64) -> u64 {
        let familiar = self.familiar.iter().map(|(_, t)| *t).max().unwrap_or(0);
        let wrong = self.wrong.iter().map(|(_, t)| *t).max().unwrap_or(0);
        let good = self.good.map_or(0, |(_, t)| t);
        let last = self
            .last
            .map_or(0, |l| l.at_ms.saturating_add(ms(LAST_SIGNIN_KEPT)));
        familiar
            .max(wrong)
            .max(good)
            .max(last)
            .max(self.unfamiliar.until(window_ms))
            .max(self.familiar_count.until(window_ms))
    }

    fn is_stale(&self, now: u64, window_ms: u64) -> bool {
        self.familiar.iter().all(|(_, until)| *until <= now)
            && now >= self.unfamiliar.until(window_ms)
            && now >= self.familiar_count.until(window_ms)
            && self.good.is_none_or(|(_, until)| until <= now)
            && self
                .last
                .is_none_or(|l| l.at_ms.saturating_add(ms(LAST_SIGNIN_KEPT)) <= now)
    }
}

/// One client IP's or one password's failures in a spray window.
#[derive(Debug, Clone, Default)]
struct SprayWindow {
    start_ms: u64,
    users: Vec<String>,
    ips: Vec<IpAddr>,
}

/// A locked user, for the API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Locked {
    /// The user (lower case).
    pub user: String,
    /// Failures from unfamiliar locations.
    pub unfamiliar_failures: u32,
    /// Failures from familiar locations.
    pub familiar_failures: u32,
    /// Until when unfamiliar locations are refused (RFC 3339).
    pub locked_until: String,
    /// Until when familiar locations are refused too, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub familiar_locked_until: Option<String>,
    /// Familiar IPs kept for the user.
    pub familiar_ips: usize,
}

/// What the STS answered to a forwarded sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignIn {
    /// A token was issued.
    Success,
    /// Wrong password or unknown user.
    Failure,
}

/// What one answered sign-in teaches (shared between instances as JSON:
/// the keyed hash as hex, never a password).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lesson {
    /// The user (any case).
    pub user: String,
    /// The password's keyed hash, when the request carried one.
    #[serde(
        default,
        with = "crate::share::hex_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub password_key: Option<PasswordKey>,
    /// Every address the request carried (trusted proxies aside), client first.
    pub locations: Vec<IpAddr>,
    /// The client IP.
    pub client_ip: IpAddr,
    /// The STS's answer.
    pub result: SignIn,
    /// When (ms since the epoch).
    pub now_ms: u64,
    /// Where the client IP is (the city database), for a success when
    /// geo-velocity may need it; absent in lessons from older instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
}

/// What learning produced: alerts to raise and an IP to block.
#[derive(Debug, Default)]
pub struct Learned {
    /// A user was locked.
    pub lockout: Option<LockoutAlert>,
    /// A client IP failed for `distinct_users` users: block it.
    pub spray_ip: Option<SprayAlert>,
    /// A wrong password failed for `same_password_users` users: refused now.
    pub spray_password: Option<SprayAlert>,
}

/// Sign-ins forwarded and not answered yet: counted with the answered
/// failures, so guesses sent while the STS is still answering the one that
/// reaches a threshold do not get through.
#[derive(Default)]
struct Pending {
    /// Unfamiliar sign-ins in flight per user: how many carry each password
    /// key (zeros when none). Its length is the distinct guesses in flight.
    by_user: HashMap<String, HashMap<PasswordKey, u32>>,
    /// Sign-ins in flight per password key: how many for each user.
    by_password: HashMap<PasswordKey, HashMap<String, u32>>,
}

/// Takes one from `map[outer][inner]`, dropping emptied entries.
fn release<K: std::hash::Hash + Eq, I: std::hash::Hash + Eq>(
    map: &mut HashMap<K, HashMap<I, u32>>,
    outer: &K,
    inner: &I,
) {
    if let Some(m) = map.get_mut(outer) {
        if let Some(n) = m.get_mut(inner) {
            *n -= 1;
            if *n == 0 {
                m.remove(inner);
            }
        }
        if m.is_empty() {
            map.remove(outer);
        }
    }
}

/// A forwarded sign-in, counted in flight until dropped (after its answer
/// was learned, or when the upstream failed).
pub struct InFlight<'g> {
    guard: &'g Guard,
    /// Registered in `by_user`: the user and the key (zeros when none).
    by_user: Option<(String, PasswordKey)>,
    /// Registered in `by_password`: the key and the user (empty when none).
    by_password: Option<(PasswordKey, String)>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.guard.pending);
        if let Some((user, key)) = &self.by_user {
            release(&mut p.by_user, user, key);
        }
        if let Some((key, user)) = &self.by_password {
            release(&mut p.by_password, key, user);
        }
    }
}

/// Smart lockout and spray state.
#[derive(Default)]
pub struct Guard {
    pending: Mutex<Pending>,
    users: Mutex<HashMap<String, UserRecord>>,
    by_ip: Mutex<HashMap<IpAddr, SprayWindow>>,
    by_password: Mutex<HashMap<PasswordKey, SprayWindow>>,
    sprayed: Mutex<HashMap<PasswordKey, u64>>,
    /// The settings last learned with (for the background purge).
    settings: Mutex<(Option<LockoutSettings>, Option<SpraySettings>)>,
    /// Users and sprayed passwords changed since they were last written.
    dirty: Mutex<(std::collections::HashSet<String>, Vec<PasswordKey>)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// User names compare ignoring case.
pub fn user_key(user: &str) -> String {
    lookup_key(user).into_owned()
}

/// [`user_key`] without an allocation when the name is already in its
/// compared form (the common case: lower-case ASCII, no surrounding spaces).
fn lookup_key(user: &str) -> std::borrow::Cow<'_, str> {
    let plain = user
        .bytes()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        && user.trim().len() == user.len();
    if plain {
        std::borrow::Cow::Borrowed(user)
    } else {
        std::borrow::Cow::Owned(user.trim().to_lowercase())
    }
}

impl Guard {
    /// An empty guard.
    pub fn new() -> Guard {
        Guard::default()
    }

    /// Stage 2, after the dynamic blocks: smart lockout, then sprayed
    /// passwords. `lockout` and `spray` are the rule file's settings.
    pub fn decide<'r>(
        &self,
        facts: &Facts<'_>,
        lockout: Option<&'r LockoutSettings>,
        spray: Option<&'r SpraySettings>,
        trace: &mut impl Trace<'r>,
    ) -> Flow<'r> {
        let now = facts.now_ms;
        let mut noted = None;
        match (lockout.filter(|l| l.enabled), facts.user) {
            (Some(l), Some(user)) => {
                let window = ms(l.observation_window);
                let key = lookup_key(user);
                let key = key.as_ref();
                let users = lock(&self.users);
                let record = users.get(key);
                let familiar = record.is_some_and(|r| r.is_familiar(facts.locations(), now));
                let mut found = record.and_then(|r| {
                    let count = if familiar {
                        r.familiar_count
                    } else {
                        r.unfamiliar
                    };
                    count.locked(l.threshold, window, now).then_some(familiar)
                });
                if found.is_none() && !familiar {
                    // Answered failures and unfamiliar guesses still in flight.
                    let pending = lock(&self.pending);
                    if let Some(flying) = pending.by_user.get(key) {
                        // Distinct guesses in flight, less those already
                        // counted as a repeated wrong password.
                        let repeated = record.map_or(0, |r| {
                            r.wrong
                                .iter()
                                .filter(|(w, t)| *t > now && flying.contains_key(w))
                                .count()
                        });
                        let flying = flying.len().saturating_sub(repeated) as u32;
                        let answered =
                            record.map_or(0, |r| r.unfamiliar.live(l.threshold, window, now));
                        if flying > 0 && answered + flying >= l.threshold {
                            found = Some(false);
                        }
                    }
                }
                drop(users);
                match found {
                    Some(familiar) => {
                        let action = if l.mode == Mode::Enforce {
                            Action::Refuse
                        } else {
                            Action::LogOnly
                        };
                        let list = if familiar { "familiar" } else { "unfamiliar" };
                        trace.step(step(
                            Stage::Lockout,
                            Outcome::Fired,
                            Some(list),
                            Some(action),
                            if familiar {
                                "the user is locked, for familiar locations too"
                            } else {
                                "the user is locked for unfamiliar locations"
                            },
                        ));
                        let d = Decision {
                            list: Some(list),
                            ..Decision::plain(Stage::Lockout, action)
                        };
                        if action == Action::Refuse {
                            return Flow::Final(d);
                        }
                        noted = Some(d);
                    }
                    None => trace.step(step(
                        Stage::Lockout,
                        Outcome::Passed,
                        None,
                        None,
                        "the user is not locked",
                    )),
                }
            }
            (Some(_), None) => trace.step(step(
                Stage::Lockout,
                Outcome::Passed,
                None,
                None,
                "no user in the request",
            )),
            (None, _) => trace.step(step(
                Stage::Lockout,
                if lockout.is_some() {
                    Outcome::Disabled
                } else {
                    Outcome::NotConfigured
                },
                None,
                None,
                "[lockout]",
            )),
        }
        match (spray.filter(|s| s.enabled), facts.password_key) {
            (Some(s), Some(key)) => {
                let mut sprayed = lock(&self.sprayed)
                    .get(&key)
                    .is_some_and(|until| *until > now);
                if !sprayed {
                    // Users it failed for in the window, and users it is in flight for.
                    let by_pw = lock(&self.by_password);
                    let failed: &[String] = by_pw
                        .get(&key)
                        .filter(|w| now < w.start_ms.saturating_add(ms(s.window)))
                        .map_or(&[], |w| &w.users);
                    let pending = lock(&self.pending);
                    if let Some(flying) = pending.by_password.get(&key) {
                        // Other users it is in flight for, not yet among the failed.
                        let this = facts.user.map(user_key).unwrap_or_default();
                        let overlap = failed.iter().filter(|u| flying.contains_key(*u)).count()
                            + usize::from(flying.contains_key(&this) && !failed.contains(&this));
                        let others = flying.len().saturating_sub(overlap);
                        sprayed =
                            others > 0 && failed.len() + others >= s.same_password_users as usize;
                    }
                }
                if sprayed {
                    trace.step(step(
                        Stage::Spray,
                        Outcome::Fired,
                        Some("password"),
                        Some(Action::Refuse),
                        "the password is being sprayed",
                    ));
                    return Flow::Final(Decision {
                        list: Some("password"),
                        ..Decision::plain(Stage::Spray, Action::Refuse)
                    });
                }
                trace.step(step(
                    Stage::Spray,
                    Outcome::Passed,
                    None,
                    None,
                    "the password is not a sprayed one",
                ));
            }
            (Some(_), None) => trace.step(step(
                Stage::Spray,
                Outcome::Passed,
                None,
                None,
                "no password in the request",
            )),
            (None, _) => trace.step(step(
                Stage::Spray,
                if spray.is_some() {
                    Outcome::Disabled
                } else {
                    Outcome::NotConfigured
                },
                None,
                None,
                "[spray]",
            )),
        }
        noted.map_or(Flow::Continue, Flow::StepUp)
    }

    /// Counts a forwarded sign-in as in flight until the token is dropped
    /// (hold it until its answer has been learned).
    pub fn in_flight(&self, facts: &Facts<'_>) -> InFlight<'_> {
        let user = facts.user.map(user_key);
        let key = facts.password_key;
        let unfamiliar = user.as_ref().is_some_and(|u| {
            !lock(&self.users)
                .get(u)
                .is_some_and(|r| r.is_familiar(facts.locations(), facts.now_ms))
        });
        let mut p = lock(&self.pending);
        let mut held = InFlight {
            guard: self,
            by_user: None,
            by_password: None,
        };
        if let (true, Some(u)) = (unfamiliar, &user) {
            if p.by_user.len() < MAX_SPRAY_KEYS || p.by_user.contains_key(u) {
                let k = key.unwrap_or_default();
                *p.by_user
                    .entry(u.clone())
                    .or_default()
                    .entry(k)
                    .or_default() += 1;
                held.by_user = Some((u.clone(), k));
            }
        }
        if let Some(k) = key {
            if p.by_password.len() < MAX_SPRAY_KEYS || p.by_password.contains_key(&k) {
                let u = user.unwrap_or_default();
                *p.by_password
                    .entry(k)
                    .or_default()
                    .entry(u.clone())
                    .or_default() += 1;
                held.by_password = Some((k, u));
            }
        }
        held
    }

    /// Is this request a correct password from an unfamiliar location while
    /// the user is locked? (Checked on a refused lockout request: the
    /// password is compared with the keyed hash of the last good one.)
    pub fn compromise(
        &self,
        facts: &Facts<'_>,
        lockout: &LockoutSettings,
    ) -> Option<CompromiseAlert> {
        let user = facts.user?;
        let key = facts.password_key?;
        let now = facts.now_ms;
        let users = lock(&self.users);
        let r = users.get(&user_key(user))?;
        let good = r.good.is_some_and(|(k, until)| k == key && until > now);
        (good && !r.is_familiar(facts.locations(), now)).then(|| CompromiseAlert {
            user: user_key(user),
            client_ip: facts.client_ip,
            locked_until_ms: r.unfamiliar.until(ms(lockout.observation_window)),
        })
    }

    /// Learns from one answered sign-in.
    pub fn learn(
        &self,
        lesson: &Lesson,
        lockout: Option<&LockoutSettings>,
        spray: Option<&SpraySettings>,
    ) -> Learned {
        let mut out = Learned::default();
        *lock(&self.settings) = (lockout.cloned(), spray.cloned());
        let now = lesson.now_ms;
        let user = user_key(&lesson.user);
        let mut repeated = false;
        if let Some(l) = lockout.filter(|l| l.enabled) {
            let window = ms(l.observation_window);
            let familiar_for = ms(l.familiar_for);
            let mut users = lock(&self.users);
            if users.len() >= MAX_USERS && !users.contains_key(&user) {
                return out;
            }
            let r = users.entry(user.clone()).or_default();
            self.mark(&user);
            let familiar = r.is_familiar(&lesson.locations, now);
            r.wrong.retain(|(_, until)| *until > now);
            match lesson.result {
                SignIn::Success => {
                    if familiar {
                        r.familiar_count = Count::default();
                    } else {
                        r.unfamiliar = Count::default();
                        r.alerted = false;
                    }
                    for ip in &lesson.locations {
                        r.familiar.retain(|(f, _)| f != ip);
                        if r.familiar.len() >= MAX_FAMILIAR {
                            // The oldest (soonest to end) goes.
                            if let Some(i) = (0..r.familiar.len()).min_by_key(|&i| r.familiar[i].1)
                            {
                                r.familiar.remove(i);
                            }
                        }
                        r.familiar.push((*ip, now.saturating_add(familiar_for)));
                    }
                    if let Some(key) = lesson.password_key {
                        r.good = Some((key, now.saturating_add(familiar_for)));
                        r.wrong.retain(|(k, _)| *k != key);
                    }
                }
                SignIn::Failure => {
                    repeated = lesson
                        .password_key
                        .is_some_and(|key| r.wrong.iter().any(|(k, _)| *k == key));
                    if let Some(key) = lesson.password_key.filter(|_| !repeated) {
                        if r.wrong.len() >= MAX_WRONG {
                            r.wrong.remove(0);
                        }
                        r.wrong.push((key, now.saturating_add(window)));
                    }
                    if !repeated {
                        let count = if familiar {
                            &mut r.familiar_count
                        } else {
                            &mut r.unfamiliar
                        };
                        count.fail(l.threshold, window, now);
                        let locked_now = count.locked(l.threshold, window, now);
                        if !familiar && locked_now && !r.alerted {
                            r.alerted = true;
                            out.lockout = Some(LockoutAlert {
                                user: user.clone(),
                                client_ip: lesson.client_ip,
                                unfamiliar_failures: r.unfamiliar.n,
                                familiar_failures: r.familiar_count.n,
                                threshold: l.threshold,
                                locked_until_ms: r.unfamiliar.until(window),
                                mode: if l.mode == Mode::Enforce {
                                    "enforce"
                                } else {
                                    "log_only"
                                },
                            });
                        }
                    }
                }
            }
        }
        if let (Some(s), SignIn::Failure) = (spray.filter(|s| s.enabled), lesson.result) {
            let window = ms(s.window);
            let until = now.saturating_add(ms(s.block_for));
            // One client IP failing for many users (a user failing from a
            // place they sign in from, an office's mistypes, does not count).
            let familiar_here = lock(&self.users)
                .get(&user)
                .is_some_and(|r| r.is_familiar(&lesson.locations, now));
            if !familiar_here {
                let mut by_ip = lock(&self.by_ip);
                if by_ip.len() < MAX_SPRAY_KEYS || by_ip.contains_key(&lesson.client_ip) {
                    let w = by_ip.entry(lesson.client_ip).or_default();
                    if let Some(users) =
                        count_user(w, &user, lesson.client_ip, now, window, s.distinct_users)
                    {
                        by_ip.remove(&lesson.client_ip);
                        out.spray_ip = Some(SprayAlert {
                            kind: "ip",
                            client_ip: Some(lesson.client_ip),
                            users,
                            client_ips: vec![lesson.client_ip],
                            until_ms: until,
                            block: None,
                        });
                    }
                }
            }
            // One wrong password failing for many users (a repeat of the same
            // user's own wrong password counts once, as everywhere).
            if let Some(key) = lesson.password_key {
                let mut by_pw = lock(&self.by_password);
                if by_pw.len() < MAX_SPRAY_KEYS || by_pw.contains_key(&key) {
                    let w = by_pw.entry(key).or_default();
                    if let Some(users) = count_user(
                        w,
                        &user,
                        lesson.client_ip,
                        now,
                        window,
                        s.same_password_users,
                    ) {
                        let ips = std::mem::take(&mut w.ips);
                        by_pw.remove(&key);
                        lock(&self.sprayed).insert(key, until);
                        lock(&self.dirty).1.push(key);
                        out.spray_password = Some(SprayAlert {
                            kind: "password",
                            client_ip: None,
                            users,
                            client_ips: ips,
                            until_ms: until,
                            block: None,
                        });
                    }
                }
            }
        }
        if let (SignIn::Success, Some(place)) = (lesson.result, lesson.place) {
            let mut users = lock(&self.users);
            if users.len() < MAX_USERS || users.contains_key(&user) {
                let r = users.entry(user.clone()).or_default();
                // Lessons from other instances may arrive late: the newest wins.
                if r.last.is_none_or(|l| l.at_ms <= now) {
                    r.last = Some(SignedIn { place, at_ms: now });
                    drop(users);
                    self.mark(&user);
                }
            }
        }
        let _ = repeated;
        out
    }

    /// Geo-velocity's facts for `user`: the last successful sign-in the
    /// gate knows (with a place), and whether every one of `locations` is
    /// a familiar IP of the user now.
    pub fn travel(&self, user: &str, locations: &[IpAddr], now: u64) -> (Option<SignedIn>, bool) {
        let users = lock(&self.users);
        match users.get(lookup_key(user).as_ref()) {
            Some(r) => (r.last, r.is_familiar(locations, now)),
            None => (None, false),
        }
    }

    /// Users locked now (for unfamiliar locations), with their counts.
    pub fn locked(&self, lockout: Option<&LockoutSettings>, now: u64) -> Vec<Locked> {
        let Some(l) = lockout.filter(|l| l.enabled) else {
            return Vec::new();
        };
        let window = ms(l.observation_window);
        let users = lock(&self.users);
        let mut out: Vec<Locked> = users
            .iter()
            .filter(|(_, r)| {
                r.unfamiliar.locked(l.threshold, window, now)
                    || r.familiar_count.locked(l.threshold, window, now)
            })
            .map(|(u, r)| Locked {
                user: u.clone(),
                unfamiliar_failures: r.unfamiliar.n,
                familiar_failures: r.familiar_count.n,
                locked_until: crate::block::rfc3339(r.unfamiliar.until(window).max(now)),
                familiar_locked_until: r
                    .familiar_count
                    .locked(l.threshold, window, now)
                    .then(|| crate::block::rfc3339(r.familiar_count.until(window))),
                familiar_ips: r.familiar.iter().filter(|(_, t)| *t > now).count(),
            })
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// A help-desk reset: the user's counts and wrong passwords cleared
    /// (familiar IPs kept). False when the user has nothing to clear.
    pub fn reset(&self, user: &str) -> bool {
        let mut users = lock(&self.users);
        match users.get_mut(&user_key(user)) {
            Some(r) if r.unfamiliar.n > 0 || r.familiar_count.n > 0 || !r.wrong.is_empty() => {
                let mut dirty = lock(&self.dirty);
                if dirty.0.len() < MAX_USERS {
                    dirty.0.insert(user_key(user));
                }
                drop(dirty);
                r.unfamiliar = Count::default();
                r.familiar_count = Count::default();
                r.wrong.clear();
                r.alerted = false;
                true
            }
            _ => false,
        }
    }

    /// Sprayed passwords refused now.
    pub fn sprayed_count(&self, now: u64) -> usize {
        lock(&self.sprayed).values().filter(|u| **u > now).count()
    }

    fn mark(&self, user: &str) {
        let mut dirty = lock(&self.dirty);
        if dirty.0.len() < MAX_USERS && !dirty.0.contains(user) {
            dirty.0.insert(user.to_string());
        }
    }

    /// Records for what changed since the last call (users and sprayed
    /// passwords), to write to the embedded store: a user whose record is
    /// gone is a removal.
    pub fn take_changes(&self) -> Vec<crate::store::Change> {
        use crate::store::{Change, Namespace, Record};
        let (users_changed, sprayed_changed) = std::mem::take(&mut *lock(&self.dirty));
        if users_changed.is_empty() && sprayed_changed.is_empty() {
            return Vec::new();
        }
        let window = lock(&self.settings)
            .0
            .as_ref()
            .map_or(0, |l| ms(l.observation_window));
        let mut out = Vec::with_capacity(users_changed.len() + sprayed_changed.len());
        {
            let users = lock(&self.users);
            for user in users_changed {
                match users.get(&user) {
                    Some(r) => out.push(Change::Put(Record {
                        ns: Namespace::Users,
                        value: serde_json::to_vec(r).unwrap_or_default(),
                        expires_at_ms: r.end(window),
                        key: user,
                    })),
                    None => out.push(Change::Remove {
                        ns: Namespace::Users,
                        key: user,
                    }),
                }
            }
        }
        let sprayed = lock(&self.sprayed);
        for key in sprayed_changed {
            if let Some(until) = sprayed.get(&key) {
                out.push(Change::Put(Record {
                    ns: Namespace::Sprayed,
                    key: hex(&key),
                    value: Vec::new(),
                    expires_at_ms: *until,
                }));
            }
        }
        out
    }

    /// Every record the guard holds (a full rewrite of the embedded store).
    pub fn snapshot(&self) -> Vec<crate::store::Change> {
        {
            let users: Vec<String> = lock(&self.users).keys().cloned().collect();
            let keys: Vec<PasswordKey> = lock(&self.sprayed).keys().copied().collect();
            let mut dirty = lock(&self.dirty);
            dirty.0.extend(users);
            dirty.1.extend(keys);
        }
        self.take_changes()
    }

    /// Restores what the embedded store held (at start).
    pub fn restore(&self, records: &[crate::store::Record]) -> usize {
        use crate::store::Namespace;
        let now = crate::block::now_ms();
        let mut n = 0;
        for r in records.iter().filter(|r| r.expires_at_ms > now) {
            match r.ns {
                Namespace::Users => {
                    if let Ok(record) = serde_json::from_slice::<UserRecord>(&r.value) {
                        let mut users = lock(&self.users);
                        if users.len() < MAX_USERS {
                            users.insert(r.key.clone(), record);
                            n += 1;
                        }
                    }
                }
                Namespace::Sprayed => {
                    if let Some(key) = unhex(&r.key) {
                        lock(&self.sprayed).insert(key, r.expires_at_ms);
                    }
                }
                Namespace::Blocks => {}
            }
        }
        n
    }

    /// The settings last learned with (`None`s before the first lesson,
    /// unless [`Guard::remember`] set them).
    pub fn settings(&self) -> (Option<LockoutSettings>, Option<SpraySettings>) {
        lock(&self.settings).clone()
    }

    /// Sets the settings other instances' lessons are learned with until
    /// this instance learns one itself (at start, from the rule file).
    pub fn remember(&self, lockout: Option<&LockoutSettings>, spray: Option<&SpraySettings>) {
        *lock(&self.settings) = (lockout.cloned(), spray.cloned());
    }

    /// Drops what has ended, with the settings last learned with; the
    /// number of users locked now.
    pub fn purge_remembered(&self, now: u64) -> usize {
        let (l, s) = lock(&self.settings).clone();
        self.purge(l.as_ref(), s.as_ref(), now);
        self.locked(l.as_ref(), now).len()
    }

    /// Drops what has ended.
    pub fn purge(
        &self,
        lockout: Option<&LockoutSettings>,
        spray: Option<&SpraySettings>,
        now: u64,
    ) {
        let window = lockout.map_or(0, |l| ms(l.observation_window));
        let mut gone = Vec::new();
        lock(&self.users).retain(|u, r| {
            let stale = r.is_stale(now, window);
            if stale {
                gone.push(u.clone());
            }
            !stale
        });
        for u in gone {
            self.mark(&u);
        }
        let spray_window = spray.map_or(0, |s| ms(s.window));
        lock(&self.by_ip).retain(|_, w| now < w.start_ms.saturating_add(spray_window));
        lock(&self.by_password).retain(|_, w| now < w.start_ms.saturating_add(spray_window));
        lock(&self.sprayed).retain(|_, until| *until > now);
    }
}

fn hex(key: &PasswordKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<PasswordKey> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Adds `user` (and `ip`) to a spray window; the users when they reach `threshold`.
fn count_user(
    w: &mut SprayWindow,
    user: &str,
    ip: IpAddr,
    now: u64,
    window: u64,
    threshold: u32,
) -> Option<Vec<String>> {
    if now >= w.start_ms.saturating_add(window) {
        *w = SprayWindow {
            start_ms: now,
            ..SprayWindow::default()
        };
    }
    if !w.users.iter().any(|u| u == user) {
        w.users.push(user.to_string());
    }
    if w.ips.len() < ALERT_LIST && !w.ips.contains(&ip) {
        w.ips.push(ip);
    }
    (w.users.len() >= threshold as usize).then(|| {
        let mut users = std::mem::take(&mut w.users);
        users.truncate(ALERT_LIST);
        users
    })
}

fn step<'r>(
    stage: Stage,
    outcome: Outcome,
    list: Option<&'r str>,
    action: Option<Action>,
    note: &'static str,
) -> Step<'r> {
    Step {
        stage,
        outcome,
        list,
        entry: None,
        action,
        note,
        detail: stsgate_rules::Detail::None,
    }
}

/// The guard shared by the gate (an `Arc` so explain and the API see the same one).
pub type SharedGuard = Arc<Guard>;

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

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

    fn lesson(user: &str, pw: u8, from: &str, result: SignIn, now: u64) -> Lesson {
        Lesson {
            user: user.into(),
            password_key: Some([pw; 16]),
            locations: vec![ip(from)],
            client_ip: ip(from),
            result,
            now_ms: now,
            place: None,
        }
    }

    fn decide(g: &Guard, user: &str, pw: u8, from: &str, now: u64) -> (Stage, Action) {
        let l = lockout();
        let s = spray();
        let locations = [ip(from)];
        let facts = Facts {
            user: Some(user),
            password_key: Some([pw; 16]),
            carried: &locations,
            now_ms: now,
            ..Facts::new(ip(from))
        };
        match g.decide(&facts, Some(&l), Some(&s), &mut ()) {
            Flow::Final(d) | Flow::StepUp(d) => (d.stage, d.action),
            Flow::Continue => (Stage::None, Action::Forward),
        }
    }

    #[test]
    fn smart_lockout_table() {
        let g = Guard::new();
        let (l, s) = (lockout(), spray());
        let learn = |user, pw, from, result, now| {
            g.learn(&lesson(user, pw, from, result, now), Some(&l), Some(&s))
        };
        // Alice signs in at home: 10.0.0.1 becomes familiar.
        learn("Alice@x", 1, "10.0.0.1", SignIn::Success, 0);
        // An attacker fails three times from elsewhere (different passwords).
        learn("alice@x", 2, "192.0.2.1", SignIn::Failure, MIN);
        learn("alice@x", 3, "192.0.2.2", SignIn::Failure, 2 * MIN);
        assert_eq!(
            decide(&g, "alice@x", 9, "192.0.2.3", 2 * MIN).0,
            Stage::None
        );
        let third = learn("alice@x", 4, "192.0.2.3", SignIn::Failure, 3 * MIN);
        assert!(third.lockout.is_some(), "locked at the threshold");
        assert_eq!(
            decide(&g, "alice@x", 9, "192.0.2.9", 4 * MIN),
            (Stage::Lockout, Action::Refuse)
        );
        // Home still works, and Alice's success at home does not reset the attacker's count.
        assert_eq!(decide(&g, "ALICE@x", 1, "10.0.0.1", 4 * MIN).0, Stage::None);
        learn("alice@x", 1, "10.0.0.1", SignIn::Success, 5 * MIN);
        assert_eq!(
            decide(&g, "alice@x", 9, "192.0.2.9", 6 * MIN).1,
            Action::Refuse
        );
        assert_eq!(g.locked(Some(&l), 6 * MIN).len(), 1);
        // After the window since the last failure: one attempt, a failure relocks.
        let later = 3 * MIN + 30 * MIN + 1;
        assert_eq!(decide(&g, "alice@x", 9, "192.0.2.9", later).0, Stage::None);
        learn("alice@x", 5, "192.0.2.9", SignIn::Failure, later);
        assert_eq!(
            decide(&g, "alice@x", 9, "192.0.2.9", later + 1).1,
            Action::Refuse
        );
        // The help desk resets.
        assert!(g.reset("Alice@X"));
        assert_eq!(
            decide(&g, "alice@x", 9, "192.0.2.9", later + 2).0,
            Stage::None
        );
        assert!(!g.reset("nobody@x"));
    }

    #[test]
    fn repeated_wrong_password_counts_once_and_compromise_is_seen() {
        let g = Guard::new();
        let (l, s) = (lockout(), spray());
        for i in 0..10 {
            g.learn(
                &lesson("bob@x", 7, "192.0.2.1", SignIn::Failure, i * 1000),
                Some(&l),
                None,
            );
        }
        assert_eq!(
            decide(&g, "bob@x", 8, "192.0.2.1", 20_000).0,
            Stage::None,
            "a phone retrying a stale password"
        );
        // Bob's good password, then three distinct wrong guesses lock him.
        g.learn(
            &lesson("bob@x", 1, "10.0.0.1", SignIn::Success, 30_000),
            Some(&l),
            Some(&s),
        );
        for pw in 20..23 {
            g.learn(
                &lesson("bob@x", pw, "192.0.2.5", SignIn::Failure, 40_000),
                Some(&l),
                Some(&s),
            );
        }
        let locations = [ip("192.0.2.6")];
        let facts = Facts {
            user: Some("bob@x"),
            password_key: Some([1; 16]),
            carried: &locations,
            now_ms: 50_000,
            ..Facts::new(ip("192.0.2.6"))
        };
        assert!(
            g.compromise(&facts, &l).is_some(),
            "the right password from an unfamiliar IP while locked"
        );
        let wrong = Facts {
            password_key: Some([99; 16]),
            ..facts
        };
        assert!(g.compromise(&wrong, &l).is_none());
    }

    #[test]
    fn guesses_in_flight_count_toward_the_thresholds() {
        let g = Guard::new();
        let (l, s) = (lockout(), spray());
        let facts = |user: &'static str, pw: u8, from: &'static str| {
            let locations: &'static [IpAddr] = Box::leak(Box::new([ip(from)]));
            Facts {
                user: Some(user),
                password_key: Some([pw; 16]),
                carried: locations,
                now_ms: 1000,
                ..Facts::new(ip(from))
            }
        };
        let run = |f: &Facts<'_>| match g.decide(f, Some(&l), Some(&s), &mut ()) {
            Flow::Final(d) => d.stage,
            _ => Stage::None,
        };
        // Three distinct guesses at one user in flight at once: the fourth is refused.
        let a = facts("eve@x", 1, "192.0.2.1");
        let b = facts("eve@x", 2, "192.0.2.2");
        let c = facts("eve@x", 3, "192.0.2.3");
        let (ha, hb, hc) = (g.in_flight(&a), g.in_flight(&b), g.in_flight(&c));
        assert_eq!(run(&facts("eve@x", 4, "192.0.2.4")), Stage::Lockout);
        // One password in flight for three users: the fourth is refused.
        let flying: Vec<_> = ["p@x", "q@x", "r@x"]
            .iter()
            .map(|u| g.in_flight(&facts(u, 50, "198.51.100.1")))
            .collect();
        assert_eq!(run(&facts("s@x", 50, "198.51.100.2")), Stage::Spray);
        drop((ha, hb, hc));
        drop(flying);
        assert_eq!(
            run(&facts("eve@x", 4, "192.0.2.4")),
            Stage::None,
            "answered: counts come from the answers again"
        );
        assert_eq!(run(&facts("s@x", 50, "198.51.100.2")), Stage::None);
    }

    #[test]
    fn sprays_by_ip_and_by_password() {
        let g = Guard::new();
        let (l, s) = (lockout(), spray());
        // One IP, four users: a per-IP spray.
        let mut ip_alert = None;
        for (i, u) in ["a@x", "b@x", "c@x", "d@x"].iter().enumerate() {
            let out = g.learn(
                &lesson(u, i as u8 + 50, "198.51.100.1", SignIn::Failure, 1000),
                Some(&l),
                Some(&s),
            );
            ip_alert = out.spray_ip.or(ip_alert);
        }
        assert_eq!(ip_alert.unwrap().users.len(), 4);
        // One password over three users from three IPs: sprayed, refused for anyone.
        let mut pw_alert = None;
        for (u, from) in [
            ("e@x", "203.0.113.1"),
            ("f@x", "203.0.113.2"),
            ("g@x", "203.0.113.3"),
        ] {
            pw_alert = g
                .learn(
                    &lesson(u, 77, from, SignIn::Failure, 2000),
                    Some(&l),
                    Some(&s),
                )
                .spray_password
                .or(pw_alert);
        }
        let a = pw_alert.unwrap();
        assert_eq!((a.users.len(), a.client_ips.len()), (3, 3));
        assert_eq!(
            decide(&g, "h@x", 77, "203.0.113.9", 3000),
            (Stage::Spray, Action::Refuse)
        );
        assert_eq!(g.sprayed_count(3000), 1);
        g.purge(Some(&l), Some(&s), 3000 + 3_600_001);
        assert_eq!(
            decide(&g, "h@x", 77, "203.0.113.9", 3000 + 3_600_001).0,
            Stage::None
        );
    }

    #[test]
    fn last_signin_learned_kept_and_restored() {
        let g = Guard::new();
        let london = Place {
            latitude: 51.5142,
            longitude: -0.0931,
            accuracy_km: 10,
        };
        let now = crate::block::now_ms();
        // A success with a place is remembered, even without [lockout]
        // (no familiar IPs then); a failure teaches no place.
        let mut l = lesson("Ann@X", 1, "81.2.69.142", SignIn::Success, now);
        l.place = Some(london);
        g.learn(&l, None, None);
        let mut failed = lesson("ann@x", 2, "89.160.20.112", SignIn::Failure, now + 5);
        failed.place = Some(Place {
            latitude: 58.4,
            longitude: 15.6,
            accuracy_km: 76,
        });
        g.learn(&failed, None, None);
        let at = [ip("81.2.69.142")];
        assert_eq!(
            g.travel("ann@x", &at, now + 10),
            (
                Some(SignedIn {
                    place: london,
                    at_ms: now
                }),
                false
            )
        );
        // A late lesson (from another instance) does not move it back in time.
        let mut older = lesson("ann@x", 1, "10.0.0.1", SignIn::Success, now - 1000);
        older.place = Some(Place {
            latitude: 0.0,
            longitude: 0.0,
            accuracy_km: 1,
        });
        g.learn(&older, None, None);
        assert_eq!(g.travel("ANN@x", &at, now).0.unwrap().place, london);
        // With lockout the IP becomes familiar too.
        g.learn(&l, Some(&lockout()), None);
        assert!(g.travel("ann@x", &at, now + 10).1);
        // Written and read back; a record written before `last` existed loads.
        let records: Vec<crate::store::Record> = g
            .snapshot()
            .into_iter()
            .filter_map(|c| match c {
                crate::store::Change::Put(r) => Some(r),
                _ => None,
            })
            .collect();
        assert!(records[0].expires_at_ms >= now + ms(LAST_SIGNIN_KEPT));
        let restored = Guard::new();
        assert_eq!(restored.restore(&records), 1);
        assert_eq!(
            restored.travel("ann@x", &at, now + 10).0.unwrap().place,
            london
        );
        let old = crate::store::Record {
            ns: crate::store::Namespace::Users,
            key: "old@x".into(),
            value: br#"{"familiar":[["10.0.0.1",99999999999999]],"unfamiliar":{"n":0,"last_ms":0},"familiar_count":{"n":0,"last_ms":0},"wrong":[],"good":null,"alerted":false}"#.to_vec(),
            expires_at_ms: u64::MAX,
        };
        let g = Guard::new();
        assert_eq!(g.restore(&[old]), 1, "a record without `last` loads");
        assert_eq!(g.travel("old@x", &[ip("10.0.0.1")], now), (None, true));
        // Purged only once the last sign-in is older than LAST_SIGNIN_KEPT.
        let g = Guard::new();
        g.learn(&l, None, None);
        g.purge(None, None, now + ms(LAST_SIGNIN_KEPT) - 1);
        assert!(g.travel("ann@x", &at, now).0.is_some());
        g.purge(None, None, now + ms(LAST_SIGNIN_KEPT));
        assert!(g.travel("ann@x", &at, now).0.is_none());
    }
}
