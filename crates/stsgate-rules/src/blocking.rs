//! Stage 4: WS-Trust request blocking (PRODUCT.md §3.2). Each configured
//! section (ip, application, user agent) answers "does it block this
//! request?"; `or` refuses when one does, `and` when all do.

use toml::Spanned;

use crate::decision::{
    Action, Decision, Entry, Facts, Outcome, Protocol, Protocols, Stage, Step, Trace,
};
use crate::lists::{Compiler, IpList, TextList};
use crate::model::{ListRule, Logic, Mode, RawRequestBlocking};

/// The compiled `[request_blocking]` section.
#[derive(Debug, Clone)]
pub struct RequestBlocking {
    /// Stage switched on.
    pub enabled: bool,
    /// `or` / `and`.
    pub logic: Logic,
    /// `enforce` / `log_only`.
    pub mode: Mode,
    /// `[request_blocking.ip]`.
    pub ip: Option<IpList>,
    /// `[request_blocking.application]`.
    pub application: Option<TextList>,
    /// `[request_blocking.user_agent]`.
    pub user_agent: Option<TextList>,
    /// The header the user agent list reads.
    pub user_agent_header: crate::model::UserAgentHeader,
    /// The protocols each section applies to: ip, application, user agent.
    pub protocols: [Protocols; 3],
}

impl RequestBlocking {
    /// Nothing configured: blocks nothing.
    pub fn off() -> Self {
        RequestBlocking {
            enabled: false,
            logic: Logic::Or,
            mode: Mode::Enforce,
            ip: None,
            application: None,
            user_agent: None,
            user_agent_header: crate::model::UserAgentHeader::Auto,
            protocols: [Protocols::ALL; 3],
        }
    }

    pub(crate) fn compile(raw: &RawRequestBlocking, c: &mut Compiler<'_>) -> Self {
        RequestBlocking {
            enabled: raw.enabled.unwrap_or(true),
            logic: raw.logic.unwrap_or(Logic::Or),
            mode: raw.mode.unwrap_or(Mode::Enforce),
            ip: raw.ip.as_ref().map(|l| c.ip_list(l.rule, &l.entries)),
            application: raw
                .application
                .as_ref()
                .map(|l| c.text_list(l.rule, &l.entries)),
            user_agent: raw
                .user_agent
                .as_ref()
                .map(|l| c.text_list(l.rule, &l.entries)),
            user_agent_header: raw
                .user_agent
                .as_ref()
                .and_then(|l| l.header)
                .unwrap_or_default(),
            protocols: [
                raw.ip
                    .as_ref()
                    .map_or(Protocols::ALL, |l| protocols(c, l.protocols.as_ref(), None)),
                raw.application.as_ref().map_or(Protocols::ALL, |l| {
                    protocols(c, l.protocols.as_ref(), Some(l.rule))
                }),
                raw.user_agent.as_ref().map_or(Protocols::ALL, |l| {
                    protocols(c, l.protocols.as_ref(), Some(l.rule))
                }),
            ],
        }
    }

    /// Runs the stage: `Some` when the request is refused (or, in
    /// `log_only`, would be), naming the section that decided.
    #[inline]
    pub fn decide<'r>(
        &'r self,
        facts: &Facts<'_>,
        trace: &mut impl Trace<'r>,
    ) -> Option<Decision<'r>> {
        if !self.enabled {
            trace.step(Step::new(
                Stage::Ip,
                Outcome::Disabled,
                None,
                None,
                "request_blocking.enabled = false",
            ));
            return None;
        }
        // Each configured section's verdict; the first that blocks names the decision.
        let sections = [
            self.ip
                .as_ref()
                .map(|l| (Stage::Ip, l.rule, l.fires(facts.hops()))),
            self.application
                .as_ref()
                .map(|l| (Stage::Application, l.rule, l.fires(facts.application))),
            self.user_agent.as_ref().map(|l| {
                let value = match self.user_agent_header {
                    crate::model::UserAgentHeader::Auto => facts.user_agent(),
                    crate::model::UserAgentHeader::MsClient => facts.user_agent,
                    crate::model::UserAgentHeader::UserAgent => facts.http_user_agent,
                };
                (Stage::UserAgent, l.rule, l.fires(value))
            }),
        ];
        let mut first_block: Option<(Stage, &'static str, Option<&'r Entry>)> = None;
        let (mut configured, mut blocking) = (0, 0);
        for ((stage, section), protocols) in [Stage::Ip, Stage::Application, Stage::UserAgent]
            .into_iter()
            .zip(sections)
            .zip(self.protocols)
        {
            let Some((stage, rule, (fires, entry))) = section else {
                trace.step(Step::new(
                    stage,
                    Outcome::NotConfigured,
                    None,
                    None,
                    "section absent: takes no part",
                ));
                continue;
            };
            if !protocols.contains(facts.protocol) {
                trace.step(Step::new(
                    stage,
                    Outcome::NotApplicable,
                    Some(rule.as_str()),
                    None,
                    "not for this sign-in protocol (see protocols): takes no part",
                ));
                continue;
            }
            let list = rule.as_str();
            configured += 1;
            if fires {
                blocking += 1;
                first_block.get_or_insert((stage, list, entry));
            }
            let note = match (rule, fires) {
                (crate::ListRule::Deny, true) => "deny list: an entry matches: blocks",
                (crate::ListRule::Deny, false) => "deny list: no entry matches",
                (crate::ListRule::Allow, true) => "allow list: no entry matches: blocks",
                (crate::ListRule::Allow, false) => "allow list: an entry matches",
            };
            let outcome = if fires {
                Outcome::Fired
            } else {
                Outcome::Passed
            };
            trace.step(Step::new(stage, outcome, Some(list), entry, note));
        }
        let refused = match self.logic {
            Logic::Or => blocking > 0,
            Logic::And => configured > 0 && blocking == configured,
        };
        if !refused {
            return None;
        }
        let (stage, list, entry) = first_block?;
        let action = if self.mode == Mode::LogOnly {
            Action::LogOnly
        } else {
            Action::Refuse
        };
        Some(Decision {
            stage,
            action,
            list: Some(list),
            entry,
            step_up: false,
            redirect_url: None,
        })
    }
}

/// A section's `protocols`: as written, or its default — every protocol,
/// but WS-Trust alone for an allow list of a header section (`reads_headers`
/// gives its rule): browsers and ROPC clients carry no `X-MS-Client-*`
/// headers, so such a list would refuse every one of them.
fn protocols(
    c: &mut Compiler<'_>,
    raw: Option<&Spanned<Vec<Protocol>>>,
    reads_headers: Option<ListRule>,
) -> Protocols {
    match raw {
        Some(list) if list.get_ref().is_empty() => {
            c.errors.push(c.src.error(
                &list.span(),
                "protocols = [] makes the section apply to nothing: remove the section instead",
            ));
            Protocols::ALL
        }
        Some(list) => Protocols::of(list.get_ref().iter().copied()),
        None if reads_headers == Some(ListRule::Allow) => Protocols::WSTRUST,
        None => Protocols::ALL,
    }
}
