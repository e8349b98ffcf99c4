//! The compiled rule file and the pure part of the corridor: stage 3
//! (adaptive) then stage 4 (request blocking).

use std::time::Duration;

use crate::adaptive::{
    Adaptive, AdaptiveOutcome, AnonymousIp, FeedSource, GeoVelocity, IpCountry, Restricted, Threat,
    UserGroup,
};
use crate::blocking::RequestBlocking;
use crate::decision::{Decision, Facts, Outcome, Stage, Step, Trace};
use crate::error::SourceError;
use crate::lists::Compiler;
use crate::model::{Mode, RawRules};

/// `[lockout]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutSettings {
    /// Switched on.
    pub enabled: bool,
    /// `enforce` / `log_only`.
    pub mode: Mode,
    /// Failures from unfamiliar IPs that lock a user.
    pub threshold: u32,
    /// How long failures are counted.
    pub observation_window: Duration,
    /// How long a good sign-in keeps an IP familiar.
    pub familiar_for: Duration,
}

/// `[spray]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpraySettings {
    /// Switched on.
    pub enabled: bool,
    /// Distinct users failing from one IP that make a spray.
    pub distinct_users: u32,
    /// Distinct users one wrong password fails for that make it sprayed.
    pub same_password_users: u32,
    /// Within this window.
    pub window: Duration,
    /// How long the IP is then blocked.
    pub block_for: Duration,
}

/// An immutable, compiled rule file. Cheap to query; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// The file it was compiled from.
    pub path: String,
    /// Stage 3 runs.
    pub use_adaptive: bool,
    /// Stage 3.
    pub adaptive: Adaptive,
    /// Stage 4.
    pub blocking: RequestBlocking,
    /// Smart lockout settings.
    pub lockout: Option<LockoutSettings>,
    /// Spray detection settings.
    pub spray: Option<SpraySettings>,
    /// Problems that did not stop the compile (skipped feed lines, sections that cannot run).
    pub warnings: Vec<SourceError>,
}

impl RuleSet {
    /// A rule set that forwards everything.
    pub fn empty() -> Self {
        RuleSet {
            path: String::new(),
            use_adaptive: false,
            adaptive: Adaptive::default(),
            blocking: RequestBlocking::off(),
            lockout: None,
            spray: None,
            warnings: Vec::new(),
        }
    }

    /// Compiles a rule file. `path` is what errors are reported against;
    /// `feeds` provides threat feed contents. Every error found is returned.
    pub fn compile(
        path: &str,
        text: &str,
        feeds: &dyn FeedSource,
    ) -> Result<RuleSet, Vec<SourceError>> {
        let mut c = Compiler::new(path, text);
        let raw: RawRules = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => return Err(vec![c.src.toml_error(&e)]),
        };
        if !configures_a_stage(&raw) {
            return Err(vec![c.src.error_at(0, NO_STAGE)]);
        }
        let blocking = raw
            .request_blocking
            .as_ref()
            .map_or_else(RequestBlocking::off, |b| {
                RequestBlocking::compile(b, &mut c)
            });
        let use_adaptive = raw
            .request_blocking
            .as_ref()
            .and_then(|b| b.use_adaptive)
            .unwrap_or(false);
        let adaptive = match &raw.adaptive {
            None => Adaptive::default(),
            Some(a) => Adaptive {
                ip_country: a.ip_country.as_ref().map(|s| IpCountry::compile(s, &mut c)),
                anonymous_ip: a
                    .anonymous_ip
                    .as_ref()
                    .map(|s| AnonymousIp::compile(s, &mut c)),
                threat: a.threat.as_ref().map(|s| Threat::compile(s, &mut c, feeds)),
                user_group: a.user_group.as_ref().map(|s| UserGroup::compile(s, &mut c)),
                geo_velocity: a
                    .geo_velocity
                    .as_ref()
                    .map(|s| GeoVelocity::compile(s, &mut c)),
            },
        };
        if !use_adaptive && adaptive.any_configured() {
            c.warnings.push(c.src.error_at(
                0,
                "[adaptive] checks are configured but request_blocking.use_adaptive is not true: they do not run",
            ));
        }
        let lockout = raw.lockout.as_ref().map(|l| LockoutSettings {
            enabled: l.enabled.unwrap_or(true),
            mode: l.mode.unwrap_or(Mode::Enforce),
            threshold: c.count(l.threshold.as_ref(), 1, 5),
            observation_window: c
                .duration(l.observation_window.as_ref(), Duration::from_secs(30 * 60)),
            familiar_for: c.duration(l.familiar_for.as_ref(), Duration::from_secs(14 * 86400)),
        });
        let spray = raw.spray.as_ref().map(|s| SpraySettings {
            enabled: s.enabled.unwrap_or(true),
            distinct_users: c.count(s.distinct_users.as_ref(), 2, 10),
            same_password_users: c.count(s.same_password_users.as_ref(), 2, 5),
            window: c.duration(s.window.as_ref(), Duration::from_secs(10 * 60)),
            block_for: c.duration(s.block_for.as_ref(), Duration::from_secs(3600)),
        });
        if !c.errors.is_empty() {
            c.errors
                .sort_by(|a, b| (&a.path, a.line, a.column).cmp(&(&b.path, b.line, b.column)));
            return Err(c.errors);
        }
        Ok(RuleSet {
            path: path.to_string(),
            use_adaptive,
            adaptive,
            blocking,
            lockout,
            spray,
            warnings: c.warnings,
        })
    }

    /// The sections that take part in decisions, by their names in the rule
    /// file: what a reload that drops some of them should warn about.
    pub fn active_sections(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let b = &self.blocking;
        if b.enabled {
            for (name, on) in [
                ("request_blocking.ip", b.ip.is_some()),
                ("request_blocking.application", b.application.is_some()),
                ("request_blocking.user_agent", b.user_agent.is_some()),
            ] {
                if on {
                    out.push(name);
                }
            }
        }
        if self.use_adaptive {
            if self.adaptive.ip_country.as_ref().is_some_and(|c| c.enabled) {
                out.push("adaptive.ip_country");
            }
            let a = &self.adaptive;
            for (name, on) in [
                (
                    "adaptive.anonymous_ip",
                    a.anonymous_ip.as_ref().is_some_and(|c| c.enabled),
                ),
                (
                    "adaptive.threat",
                    a.threat.as_ref().is_some_and(|t| t.enabled),
                ),
                (
                    "adaptive.user_group",
                    a.user_group.as_ref().is_some_and(|c| c.enabled),
                ),
                (
                    "adaptive.geo_velocity",
                    a.geo_velocity.as_ref().is_some_and(|c| c.enabled),
                ),
            ] {
                if on {
                    out.push(name);
                }
            }
        }
        if self.lockout.as_ref().is_some_and(|l| l.enabled) {
            out.push("lockout");
        }
        if self.spray.as_ref().is_some_and(|s| s.enabled) {
            out.push("spray");
        }
        out
    }

    /// Does any check need the client's country in [`Facts::country`]?
    pub fn needs_country(&self) -> bool {
        self.use_adaptive
            && self
                .adaptive
                .ip_country
                .as_ref()
                .is_some_and(IpCountry::needs_country)
    }

    /// Does any check need the client's ASN in [`Facts::asn`] (`geoip.asn_db`)?
    pub fn needs_asn(&self) -> bool {
        self.use_adaptive
            && self
                .adaptive
                .ip_country
                .as_ref()
                .is_some_and(IpCountry::needs_asn)
    }

    /// Does any check need the client IP's anonymity categories in
    /// [`Facts::anonymous`] (`geoip.anonymous_ip_db`)?
    pub fn needs_anonymous(&self) -> bool {
        self.use_adaptive
            && self
                .adaptive
                .anonymous_ip
                .as_ref()
                .is_some_and(AnonymousIp::needs_anonymous)
    }

    /// Does any check need where the client is, [`Facts::place`]
    /// (`geoip.city_db`), and the user's last sign-in, [`Facts::last_signin`]?
    pub fn needs_place(&self) -> bool {
        self.use_adaptive
            && self
                .adaptive
                .geo_velocity
                .as_ref()
                .is_some_and(|g| g.enabled)
    }

    /// Does any check need the user's groups in [`Facts::groups`] (a
    /// directory lookup)? False when the rules name no group.
    pub fn needs_groups(&self) -> bool {
        self.use_adaptive
            && self
                .adaptive
                .user_group
                .as_ref()
                .is_some_and(UserGroup::needs_groups)
    }

    /// Decides stages 3 and 4 for one request. Allocation-free.
    #[inline]
    pub fn decide(&self, facts: &Facts<'_>) -> Decision<'_> {
        self.decide_traced(facts, &mut ())
    }

    /// [`RuleSet::decide`], recording each check in `trace`.
    pub fn decide_traced<'r>(
        &'r self,
        facts: &Facts<'_>,
        trace: &mut impl Trace<'r>,
    ) -> Decision<'r> {
        let mut decision = Decision::FORWARD;
        let mut run_blocking = true;
        if self.use_adaptive {
            match self.adaptive.decide(facts, trace) {
                AdaptiveOutcome::Final(d) => {
                    trace.step(Step::new(
                        Stage::Ip,
                        Outcome::Skipped,
                        None,
                        None,
                        "request blocking not reached",
                    ));
                    return d;
                }
                AdaptiveOutcome::Leave {
                    decision: d,
                    skip_blocking,
                } => {
                    decision = d;
                    run_blocking = !skip_blocking;
                }
                AdaptiveOutcome::Continue(d) => decision = d.unwrap_or(decision),
            }
        } else {
            trace.step(Step::new(
                Stage::IpCountry,
                Outcome::Disabled,
                None,
                None,
                "request_blocking.use_adaptive is not true",
            ));
        }
        if !run_blocking {
            trace.step(Step::new(
                Stage::Ip,
                Outcome::Skipped,
                None,
                None,
                "post_auth: request blocking skipped",
            ));
            return decision;
        }
        match self.blocking.decide(facts, trace) {
            Some(block) => Decision {
                step_up: decision.step_up,
                ..block
            },
            None => decision,
        }
    }

    /// One line per list, for `check` and reload answers.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let b = &self.blocking;
        lines.push(format!(
            "request_blocking: {}, logic {}, mode {}, use_adaptive {}",
            if b.enabled { "enabled" } else { "disabled" },
            if b.logic == crate::Logic::Or {
                "or"
            } else {
                "and"
            },
            if b.mode == Mode::Enforce {
                "enforce"
            } else {
                "log_only"
            },
            self.use_adaptive,
        ));
        // A section that does not apply to every sign-in protocol says which.
        let only = |i: usize| match b.protocols[i] {
            crate::Protocols::ALL => String::new(),
            p => format!(", {} only", p.names()),
        };
        if let Some(l) = &b.ip {
            lines.push(format!(
                "request_blocking.ip: {} list, {}{}",
                l.rule.as_str(),
                entries(l.len()),
                only(0)
            ));
        }
        for (i, name, list) in [
            (1, "application", &b.application),
            (2, "user_agent", &b.user_agent),
        ] {
            if let Some(l) = list {
                lines.push(format!(
                    "request_blocking.{name}: {} list, {}{}",
                    l.rule.as_str(),
                    entries(l.len()),
                    only(i)
                ));
            }
        }
        if let Some(c) = &self.adaptive.ip_country {
            let (kind, rule, n) = match &c.restricted {
                Restricted::Ip(l) => ("ip", l.rule, l.len()),
                Restricted::Country { rule, entries, .. } => ("country", *rule, entries.len()),
                Restricted::Asn { rule, entries, .. } => ("asn", *rule, entries.len()),
            };
            lines.push(format!(
                "adaptive.ip_country: {}, {kind} {} list, {}, failure_action {}",
                if c.enabled { "enabled" } else { "disabled" },
                rule.as_str(),
                entries(n),
                crate::Action::from(c.action).as_str(),
            ));
        }
        if let Some(a) = &self.adaptive.anonymous_ip {
            lines.push(format!(
                "adaptive.anonymous_ip: {}, categories {}, failure_action {}",
                enabled(a.enabled),
                a.categories.names().collect::<Vec<_>>().join(" "),
                crate::Action::from(a.action).as_str(),
            ));
        }
        if let Some(t) = &self.adaptive.threat {
            lines.push(format!(
                "adaptive.threat: {}, {} feeds, whitelist {}",
                if t.enabled { "enabled" } else { "disabled" },
                t.feeds.len(),
                entries(t.whitelist.len())
            ));
            for f in &t.feeds {
                let mut line = format!(
                    "adaptive.threat.feeds.{}: {} risk, {} from {}",
                    f.name,
                    f.risk.as_str(),
                    entries(f.entries),
                    f.path
                );
                if let Some(fetch) = &f.fetch {
                    let refresh = humantime::format_duration(fetch.refresh);
                    line.push_str(&if f.pending {
                        format!(" (no download yet; every {refresh})")
                    } else {
                        format!(" (last good download; every {refresh})")
                    });
                }
                if let Some(c) = &f.category {
                    line.push_str(&format!(", category {c}"));
                }
                lines.push(line);
            }
        }
        if let Some(u) = &self.adaptive.user_group {
            lines.push(format!(
                "adaptive.user_group: {}, {} list, users {}, groups {}, failure_action {}",
                enabled(u.enabled),
                u.rule.as_str(),
                u.user_entries.len(),
                u.group_entries.len(),
                crate::Action::from(u.action).as_str(),
            ));
        }
        if let Some(g) = &self.adaptive.geo_velocity {
            lines.push(format!(
                "adaptive.geo_velocity: {}, max_speed_kmh {}, min_distance_km {}, failure_action {}",
                enabled(g.enabled),
                g.max_speed_kmh,
                g.min_distance_km,
                crate::Action::from(g.action).as_str(),
            ));
        }
        if let Some(l) = &self.lockout {
            lines.push(format!(
                "lockout: {}, mode {}, threshold {}, observation_window {}, familiar_for {}",
                if l.enabled { "enabled" } else { "disabled" },
                if l.mode == Mode::Enforce {
                    "enforce"
                } else {
                    "log_only"
                },
                l.threshold,
                humantime::format_duration(l.observation_window),
                humantime::format_duration(l.familiar_for),
            ));
        }
        if let Some(s) = &self.spray {
            lines.push(format!(
                "spray: {}, distinct_users {}, same_password_users {}, window {}, block_for {}",
                if s.enabled { "enabled" } else { "disabled" },
                s.distinct_users,
                s.same_password_users,
                humantime::format_duration(s.window),
                humantime::format_duration(s.block_for),
            ));
        }
        lines
    }
}

/// Why a rule file that configures nothing is refused.
const NO_STAGE: &str = "the rule file configures no stage (no [request_blocking] list, no [adaptive] check, no [lockout] or [spray]): every request would be forwarded unchecked; to forward everything on purpose, say so with `[request_blocking]` and `enabled = false`";

/// Does the file configure at least one stage, or say explicitly that
/// request blocking is off? An empty (truncated, emptied by mistake) file
/// must not turn every check off silently: it fails closed at start and on
/// reload, where the old rules stay.
fn configures_a_stage(raw: &RawRules) -> bool {
    let blocking = raw.request_blocking.as_ref().is_some_and(|b| {
        b.enabled == Some(false)
            || b.ip.is_some()
            || b.application.is_some()
            || b.user_agent.is_some()
    });
    let adaptive = raw.adaptive.as_ref().is_some_and(|a| {
        a.ip_country.is_some()
            || a.anonymous_ip.is_some()
            || a.threat.is_some()
            || a.user_group.is_some()
            || a.geo_velocity.is_some()
    });
    blocking || adaptive || raw.lockout.is_some() || raw.spray.is_some()
}

/// "enabled" / "disabled".
fn enabled(on: bool) -> &'static str {
    if on { "enabled" } else { "disabled" }
}

/// "1 entry", "2 entries".
fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_string()
    } else {
        format!("{n} entries")
    }
}

/// A [`FeedSource`] for rule files without feeds: every feed is an error.
pub struct NoFeeds;

impl FeedSource for NoFeeds {
    fn feed(&self, _name: &str, path: &str) -> Result<(String, std::sync::Arc<str>), String> {
        Err(format!("feed {path:?} cannot be read here"))
    }
}
