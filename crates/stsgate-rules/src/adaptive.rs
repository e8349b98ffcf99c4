//! Stage 3: adaptive checks, run when `request_blocking.use_adaptive` is
//! true, in PRODUCT.md order: (a) IP / country / ASN restriction, (b)
//! anonymous IPs, (c) the threat service, (d) user / group restriction, (e)
//! geo-velocity. Each is a [`Check`] with one signature; a check that fires
//! applies its failure action (PRODUCT.md §3.3).

use std::collections::{HashMap, HashSet};

pub use crate::anonymous::AnonymousIp;
use crate::decision::{
    Action, Country, Decision, Detail, Entry, Facts, Outcome, Stage, Step, Trace,
};
use crate::ip::IpPattern;
use crate::ipset::{EntryId, IpSet};
use crate::lists::{Compiler, IpList};
use crate::model::{FailureAction, ListRule, RawIpCountry, RawThreat, Restriction, Risk};
pub use crate::user_group::UserGroup;
pub use crate::velocity::GeoVelocity;

/// Where the rule engine gets threat feed contents: the caller does the I/O
/// (and keeps a feed's last good contents when it cannot be read).
pub trait FeedSource {
    /// The contents of the feed `name` read from `path` (as written in the
    /// rule file), with the path to report errors against.
    fn feed(&self, name: &str, path: &str) -> Result<(String, std::sync::Arc<str>), String>;

    /// The last good download of the URL feed `name` from `url`, when there
    /// is one (the caller fetches it, off the request path). Without one the
    /// feed compiles empty, with a warning.
    fn fetched(&self, name: &str, url: &str) -> Option<std::sync::Arc<str>> {
        let _ = (name, url);
        None
    }

    /// Checks a URL feed's `ca_file` (as written in the rule file): the
    /// message when it cannot be used. The default accepts it.
    fn ca_file(&self, path: &str) -> Result<(), String> {
        let _ = path;
        Ok(())
    }
}

/// What the IP / country check compares against.
#[derive(Debug, Clone)]
pub enum Restricted {
    /// IP notation.
    Ip(IpList),
    /// Country codes, with their entries.
    Country {
        rule: ListRule,
        codes: HashSet<Country>,
        entries: Vec<(Country, Entry)>,
    },
    /// Autonomous system numbers (0: unknown), with their entries.
    Asn {
        rule: ListRule,
        numbers: HashMap<u32, usize>,
        entries: Vec<(u32, Entry)>,
    },
}

/// The compiled `[adaptive.ip_country]` section.
#[derive(Debug, Clone)]
pub struct IpCountry {
    /// Switched on.
    pub enabled: bool,
    /// The list.
    pub restricted: Restricted,
    /// What to do when it fires.
    pub action: FailureAction,
    /// For `redirect`.
    pub redirect_url: Option<String>,
}

/// The compiled `[adaptive.threat]` section.
#[derive(Debug, Clone)]
pub struct Threat {
    /// Switched on.
    pub enabled: bool,
    /// Never reported.
    pub whitelist: IpSet,
    /// One set per risk level present, highest first, with its feed entries.
    pub levels: Vec<ThreatLevel>,
    /// For `redirect`.
    pub redirect_url: Option<String>,
    /// Feed summaries for `check`.
    pub feeds: Vec<FeedSummary>,
}

/// All feeds of one risk level, merged.
#[derive(Debug, Clone)]
pub struct ThreatLevel {
    /// The level.
    pub risk: Risk,
    /// Its action.
    pub action: FailureAction,
    set: IpSet,
    /// Entries, and the feed each comes from (index into `names`).
    entries: Vec<(Entry, u16)>,
    names: Vec<String>,
}

/// One feed as loaded.
#[derive(Debug, Clone)]
pub struct FeedSummary {
    /// `name`.
    pub name: String,
    /// The file, or the URL.
    pub path: String,
    /// Its risk.
    pub risk: Risk,
    /// Entries loaded.
    pub entries: usize,
    /// `category`, logged as `threat_category` when the feed fires.
    pub category: Option<std::sync::Arc<str>>,
    /// How a URL feed is fetched; `None` for a file.
    pub fetch: Option<crate::feeds::FeedFetch>,
    /// A URL feed with no download yet (empty until the first one).
    pub pending: bool,
}

impl IpCountry {
    pub(crate) fn compile(raw: &RawIpCountry, c: &mut Compiler<'_>) -> Self {
        let rule = raw.list.unwrap_or(ListRule::Deny);
        let restricted = match raw.restriction.unwrap_or(Restriction::Ip) {
            Restriction::Ip => Restricted::Ip(c.ip_list(rule, &raw.entries)),
            Restriction::Country => {
                let mut entries = Vec::new();
                for item in &raw.entries {
                    match Country::parse(item.get_ref().trim()) {
                        Some(code) => entries.push((code, c.entry(item.get_ref().trim(), item.span().start))),
                        None => c.errors.push(c.src.error(
                            &item.span(),
                            format!("invalid country {:?}: expected an ISO 3166 alpha-2 code such as \"KP\" (\"ZZ\": unknown)", item.get_ref()),
                        )),
                    }
                }
                Restricted::Country {
                    rule,
                    codes: entries.iter().map(|(c, _)| *c).collect(),
                    entries,
                }
            }
            Restriction::Asn => {
                let mut entries = Vec::new();
                for item in &raw.entries {
                    match parse_asn(item.get_ref().trim()) {
                        Some(n) => entries.push((n, c.entry(item.get_ref().trim(), item.span().start))),
                        None => c.errors.push(c.src.error(
                            &item.span(),
                            format!("invalid ASN {:?}: expected an autonomous system number such as \"AS15169\" (\"AS0\": unknown)", item.get_ref()),
                        )),
                    }
                }
                let mut numbers = HashMap::new();
                for (i, (n, _)) in entries.iter().enumerate() {
                    numbers.entry(*n).or_insert(i);
                }
                Restricted::Asn {
                    rule,
                    numbers,
                    entries,
                }
            }
        };
        let (action, redirect_url) = failure_action(
            c,
            raw.failure_action.as_ref(),
            FailureAction::Refuse,
            raw.redirect_url.as_ref(),
        );
        IpCountry {
            enabled: raw.enabled.unwrap_or(true),
            restricted,
            action,
            redirect_url,
        }
    }

    /// Does the restriction need the client's country?
    pub fn needs_country(&self) -> bool {
        self.enabled && matches!(self.restricted, Restricted::Country { .. })
    }

    /// Does the restriction need the client's ASN?
    pub fn needs_asn(&self) -> bool {
        self.enabled && matches!(self.restricted, Restricted::Asn { .. })
    }

    fn fires<'r>(&'r self, facts: &Facts<'_>) -> (bool, &'static str, Option<&'r Entry>, Detail) {
        match &self.restricted {
            Restricted::Ip(list) => {
                let (fires, entry) = list.fires(facts.hops());
                (fires, list.rule.as_str(), entry, Detail::None)
            }
            Restricted::Country {
                rule,
                codes,
                entries,
            } => {
                let country = facts.country.unwrap_or(Country::UNKNOWN);
                let listed = codes.contains(&country);
                let entry = entries.iter().find(|(c, _)| *c == country).map(|(_, e)| e);
                let fires = listed == (*rule == ListRule::Deny);
                (fires, rule.as_str(), entry, Detail::Country(country))
            }
            Restricted::Asn {
                rule,
                numbers,
                entries,
            } => {
                let asn = facts.asn.unwrap_or(0);
                let entry = numbers.get(&asn).map(|&i| &entries[i].1);
                let fires = entry.is_some() == (*rule == ListRule::Deny);
                (fires, rule.as_str(), entry, Detail::Asn(asn))
            }
        }
    }
}

/// `AS15169` (any case) as a number.
fn parse_asn(text: &str) -> Option<u32> {
    let digits = text
        .get(..2)
        .filter(|p| p.eq_ignore_ascii_case("as"))
        .map(|_| &text[2..])?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Threat {
    pub(crate) fn compile(raw: &RawThreat, c: &mut Compiler<'_>, feeds: &dyn FeedSource) -> Self {
        let (whitelist, _) = c.ip_entries(&raw.whitelist);
        let actions = &raw.actions;
        let mut levels = Vec::new();
        let mut summaries = Vec::new();
        let mut redirect_needed = None;
        for (risk, action, default) in [
            (
                Risk::Extreme,
                actions.extreme.as_ref(),
                FailureAction::Refuse,
            ),
            (Risk::High, actions.high.as_ref(), FailureAction::Refuse),
            (
                Risk::Medium,
                actions.medium.as_ref(),
                FailureAction::Continue,
            ),
            (Risk::Low, actions.low.as_ref(), FailureAction::Continue),
        ] {
            let action_value = action.map_or(default, |a| *a.get_ref());
            if action_value == FailureAction::Redirect && redirect_needed.is_none() {
                redirect_needed = action;
            }
            let mut patterns: Vec<(IpPattern, EntryId)> = Vec::new();
            let mut entries: Vec<(Entry, u16)> = Vec::new();
            let mut names = Vec::new();
            for feed in raw.feeds.iter().filter(|f| f.risk == risk) {
                let index = names.len() as u16;
                let name = feed.name.get_ref();
                names.push(name.clone());
                let before = entries.len();
                let (category, fetch) = crate::feeds::check_keys(feed, c);
                if let (Some(_), Some(ca)) = (&fetch, &feed.ca_file) {
                    if let Err(message) = feeds.ca_file(ca.get_ref()) {
                        c.errors.push(c.src.error(&ca.span(), message));
                    }
                }
                let mut pending = false;
                let text = match (&feed.path, &fetch) {
                    (Some(path), _) => match feeds.feed(name, path.get_ref()) {
                        Ok(found) => Some(found),
                        Err(message) => {
                            c.errors.push(c.src.error(&path.span(), message));
                            None
                        }
                    },
                    (None, Some(fetch)) => match feeds.fetched(name, &fetch.url) {
                        Some(text) => Some((fetch.url.clone(), text)),
                        None => {
                            pending = true;
                            if let Some(url) = &feed.url {
                                c.warnings.push(c.src.error(
                                    &url.span(),
                                    format!("feed {name:?}: no download yet; it is empty until the first one succeeds"),
                                ));
                            }
                            None
                        }
                    },
                    (None, None) => None,
                };
                if let Some((path, text)) = text {
                    let mut fc = Compiler::new(&path, &text);
                    let mut feed_entries = Vec::new();
                    let mut feed_patterns = Vec::new();
                    fc.feed_entries(&mut feed_patterns, &mut feed_entries);
                    c.warnings.append(&mut fc.warnings);
                    let base = entries.len() as EntryId;
                    patterns.extend(feed_patterns.into_iter().map(|(p, id)| (p, id + base)));
                    entries.extend(feed_entries.into_iter().map(|e| (e, index)));
                }
                summaries.push(FeedSummary {
                    name: name.clone(),
                    path: feed
                        .path
                        .as_ref()
                        .or(feed.url.as_ref())
                        .map(|p| p.get_ref().clone())
                        .unwrap_or_default(),
                    risk,
                    entries: entries.len() - before,
                    category: category.map(std::sync::Arc::from),
                    fetch,
                    pending,
                });
            }
            if !names.is_empty() {
                levels.push(ThreatLevel {
                    risk,
                    action: action_value,
                    set: IpSet::build(patterns),
                    entries,
                    names,
                });
            }
        }
        let mut seen = HashSet::new();
        for feed in &raw.feeds {
            if !seen.insert(feed.name.get_ref().as_str()) {
                c.errors.push(c.src.error(
                    &feed.name.span(),
                    format!("duplicate feed name {:?}", feed.name.get_ref()),
                ));
            }
        }
        let redirect_url = match redirect_needed {
            Some(action) => redirect_target(c, action, raw.redirect_url.as_ref()),
            None => raw.redirect_url.as_ref().map(|u| u.get_ref().clone()),
        };
        Threat {
            enabled: raw.enabled.unwrap_or(true),
            whitelist,
            levels,
            redirect_url,
            feeds: summaries,
        }
    }

    /// The category of the feed named `feed`, when it has one: what the
    /// decision log (`threat_category`) and `explain` show when it fires.
    pub fn category(&self, feed: &str) -> Option<&std::sync::Arc<str>> {
        self.feeds
            .iter()
            .find(|f| f.name == feed)
            .and_then(|f| f.category.as_ref())
    }

    /// The highest level listing one of the addresses (whitelisted ones aside).
    fn fires<'r>(&'r self, facts: &Facts<'_>) -> Option<(&'r ThreatLevel, &'r str, &'r Entry)> {
        for level in &self.levels {
            for &ip in facts.hops() {
                if self.whitelist.contains(ip) {
                    continue;
                }
                if let Some(id) = level.set.lookup(ip) {
                    let (entry, feed) = &level.entries[id as usize];
                    return Some((level, &level.names[*feed as usize], entry));
                }
            }
        }
        None
    }
}

pub(crate) fn failure_action(
    c: &mut Compiler<'_>,
    action: Option<&toml::Spanned<FailureAction>>,
    default: FailureAction,
    url: Option<&toml::Spanned<String>>,
) -> (FailureAction, Option<String>) {
    let value = action.map_or(default, |a| *a.get_ref());
    match action {
        Some(a) if value == FailureAction::Redirect => (value, redirect_target(c, a, url)),
        _ => (
            value,
            url.map(|u| u.get_ref().clone()).filter(|u| !u.is_empty()),
        ),
    }
}

fn redirect_target(
    c: &mut Compiler<'_>,
    action: &toml::Spanned<FailureAction>,
    url: Option<&toml::Spanned<String>>,
) -> Option<String> {
    match url.map(|u| (u, u.get_ref().trim())) {
        Some((_, u))
            if u.starts_with("https://") || u.starts_with("http://") || u.starts_with('/') =>
        {
            Some(u.to_string())
        }
        Some((span, _)) => {
            c.errors.push(c.src.error(
                &span.span(),
                "redirect_url must be an http(s) URL or an absolute path",
            ));
            None
        }
        None => {
            c.errors.push(c.src.error(
                &action.span(),
                "failure action \"redirect\" needs redirect_url",
            ));
            None
        }
    }
}

/// The compiled adaptive stage: its checks, in corridor order.
#[derive(Debug, Clone, Default)]
pub struct Adaptive {
    /// 3a.
    pub ip_country: Option<IpCountry>,
    /// 3b.
    pub anonymous_ip: Option<AnonymousIp>,
    /// 3c.
    pub threat: Option<Threat>,
    /// 3d.
    pub user_group: Option<UserGroup>,
    /// 3e.
    pub geo_velocity: Option<GeoVelocity>,
}

/// What one adaptive check concluded for one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look<'r> {
    /// Fired, with this action; `None`: passed.
    pub action: Option<FailureAction>,
    /// The list compared (`allow` / `deny`, a feed's name, ...).
    pub list: Option<&'r str>,
    /// The entry that matched.
    pub entry: Option<&'r Entry>,
    /// For `redirect`.
    pub redirect_url: Option<&'r str>,
    /// Why.
    pub note: &'static str,
    /// What was computed, for `explain`.
    pub detail: Detail,
}

impl<'r> Look<'r> {
    /// Fires with `action` when `fires`, else passes.
    pub fn of(
        fires: bool,
        action: FailureAction,
        redirect_url: Option<&'r str>,
        list: Option<&'r str>,
        entry: Option<&'r Entry>,
        note: &'static str,
    ) -> Look<'r> {
        Look {
            action: fires.then_some(action),
            list,
            entry,
            redirect_url,
            note,
            detail: Detail::None,
        }
    }

    /// The same, showing `detail`.
    pub fn with(self, detail: Detail) -> Look<'r> {
        Look { detail, ..self }
    }
}

/// One adaptive check: the one signature every check of stage 3 has.
pub(crate) trait Check {
    /// `enabled` in the rule file.
    fn enabled(&self) -> bool;
    /// Looks at the request. Allocation-free.
    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r>;
}

/// How the adaptive stage ends.
pub(crate) enum AdaptiveOutcome<'r> {
    /// Nothing fired, or only `continue`: go on (carrying the last firing).
    Continue(Option<Decision<'r>>),
    /// Leave adaptive; run request blocking unless `skip_blocking`.
    Leave {
        decision: Decision<'r>,
        skip_blocking: bool,
    },
    /// Refuse or redirect now.
    Final(Decision<'r>),
}

impl Adaptive {
    /// The checks in PRODUCT.md order: ip_country, anonymous_ip, threat,
    /// user_group, geo_velocity (absent ones as `None`, with their stage).
    fn checks(&self) -> [(Stage, Option<&dyn Check>); 5] {
        [
            (
                Stage::IpCountry,
                self.ip_country.as_ref().map(|c| c as &dyn Check),
            ),
            (
                Stage::AnonymousIp,
                self.anonymous_ip.as_ref().map(|c| c as &dyn Check),
            ),
            (Stage::Threat, self.threat.as_ref().map(|c| c as &dyn Check)),
            (
                Stage::UserGroup,
                self.user_group.as_ref().map(|c| c as &dyn Check),
            ),
            (
                Stage::GeoVelocity,
                self.geo_velocity.as_ref().map(|c| c as &dyn Check),
            ),
        ]
    }

    /// Is any check configured (present in the rule file)?
    pub fn any_configured(&self) -> bool {
        self.checks().iter().any(|(_, c)| c.is_some())
    }

    /// Runs the checks in order; the first that fires with an action other
    /// than `continue` ends the stage.
    pub(crate) fn decide<'r>(
        &'r self,
        facts: &Facts<'_>,
        trace: &mut impl Trace<'r>,
    ) -> AdaptiveOutcome<'r> {
        let mut last = None;
        for (stage, check) in self.checks() {
            let check = match check {
                None => {
                    trace.step(Step::new(
                        stage,
                        Outcome::NotConfigured,
                        None,
                        None,
                        "section absent",
                    ));
                    continue;
                }
                Some(c) if !c.enabled() => {
                    trace.step(Step::new(
                        stage,
                        Outcome::Disabled,
                        None,
                        None,
                        "enabled = false",
                    ));
                    continue;
                }
                Some(c) => c,
            };
            let look = check.look(facts);
            let Some(action) = look.action else {
                trace.step(Step {
                    detail: look.detail,
                    ..Step::new(stage, Outcome::Passed, look.list, look.entry, look.note)
                });
                continue;
            };
            let decision = fired(stage, action, look.list, look.entry, look.redirect_url);
            trace.step(Step {
                detail: look.detail,
                ..fired_step(&decision, look.note)
            });
            match leave(decision, action) {
                Some(outcome) => return outcome,
                None => last = Some(decision),
            }
        }
        AdaptiveOutcome::Continue(last)
    }
}

impl Check for IpCountry {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r> {
        let (fires, list, entry, detail) = self.fires(facts);
        Look::of(
            fires,
            self.action,
            self.redirect_url.as_deref(),
            Some(list),
            entry,
            if fires {
                "the check fires"
            } else {
                "does not fire"
            },
        )
        .with(detail)
    }
}

impl Check for Threat {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r> {
        match self.fires(facts) {
            Some((level, feed, entry)) => Look::of(
                true,
                level.action,
                self.redirect_url.as_deref(),
                Some(feed),
                Some(entry),
                risk_note(level.risk),
            ),
            None => Look::of(
                false,
                FailureAction::Continue,
                None,
                None,
                None,
                "in no feed, or whitelisted",
            ),
        }
    }
}

fn fired<'r>(
    stage: Stage,
    action: FailureAction,
    list: Option<&'r str>,
    entry: Option<&'r Entry>,
    url: Option<&'r str>,
) -> Decision<'r> {
    Decision {
        stage,
        action: Action::from(action),
        list,
        entry,
        step_up: action == FailureAction::Require2fa,
        redirect_url: if action == FailureAction::Redirect {
            url
        } else {
            None
        },
    }
}

fn fired_step<'r>(d: &Decision<'r>, note: &'static str) -> Step<'r> {
    Step {
        stage: d.stage,
        outcome: Outcome::Fired,
        list: d.list,
        entry: d.entry,
        action: Some(d.action),
        note,
        detail: Detail::None,
    }
}

fn risk_note(risk: Risk) -> &'static str {
    match risk {
        Risk::Extreme => "listed in an extreme-risk feed",
        Risk::High => "listed in a high-risk feed",
        Risk::Medium => "listed in a medium-risk feed",
        Risk::Low => "listed in a low-risk feed",
    }
}

fn leave(decision: Decision<'_>, action: FailureAction) -> Option<AdaptiveOutcome<'_>> {
    match action {
        FailureAction::Continue => None,
        FailureAction::Refuse | FailureAction::Redirect => Some(AdaptiveOutcome::Final(decision)),
        FailureAction::Require2fa | FailureAction::Skip2fa | FailureAction::Resume => {
            Some(AdaptiveOutcome::Leave {
                decision,
                skip_blocking: false,
            })
        }
        FailureAction::PostAuth => Some(AdaptiveOutcome::Leave {
            decision,
            skip_blocking: true,
        }),
    }
}
