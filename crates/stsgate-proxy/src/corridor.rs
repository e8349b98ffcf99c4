//! The corridor, in one place: the request's facts, built once, then the
//! stages in PRODUCT.md order, each with one signature (continue, or a final
//! decision, writing to the trace):
//!
//! ```text
//! 1 client IP     (facts: client_ip::derive, from trusted proxies only)
//! 2 gate state    stsgate_state::stage::decide   dynamic blocks
//! 3 adaptive      RuleSet::decide_traced          ip_country, anonymous_ip, threat,
//!                                                 user_group, geo_velocity
//! 4 request       RuleSet::decide_traced          ip, application, user_agent
//! 5 forward       gate.rs                         upstream, answers watched
//! ```
//!
//! The live gate ([`crate::gate`]) and `stsgate explain` both call
//! [`decide`] on facts made by [`RequestFacts::build`], so `explain` shows
//! exactly what the gate does.

use std::borrow::Cow;
use std::net::IpAddr;

use http::HeaderMap;
use http::header::{self, HeaderName};
use stsgate_rules::{Action, Anonymous, Country, Decision, Facts, Place, RuleSet, Trace};
use stsgate_state::{BlockTable, Flow, Guard, PasswordKey};

use crate::client_ip::{self, ClientAddrs};
use crate::config::ClientIp;
use crate::geoip::GeoIp;

/// `X-MS-Client-Application`.
pub static X_MS_CLIENT_APPLICATION: HeaderName = HeaderName::from_static("x-ms-client-application");
/// `X-MS-Client-User-Agent`.
pub static X_MS_CLIENT_USER_AGENT: HeaderName = HeaderName::from_static("x-ms-client-user-agent");

/// Everything every stage reads about one request, derived once: the
/// client address chain and peer, application, user agent, path, user,
/// country and time. No stage re-reads headers.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// Peer, client IP, the believed hops.
    pub addrs: ClientAddrs,
    /// The request path (as received; the path filter normalised it to classify).
    pub path: &'a str,
    /// `X-MS-Client-Application`.
    pub application: Option<Cow<'a, str>>,
    /// `X-MS-Client-User-Agent` (set by Exchange Online).
    pub user_agent: Option<Cow<'a, str>>,
    /// The client's own `User-Agent` (a client talking to the farm directly).
    pub http_user_agent: Option<Cow<'a, str>>,
    /// The user name from the request's credentials.
    pub user: Option<String>,
    /// The keyed hash of the request's password (never the password).
    pub password_key: Option<PasswordKey>,
    /// The client's country, when a rule needs it.
    pub country: Option<Country>,
    /// The client's autonomous system number (0: unknown), when a rule needs it.
    pub asn: Option<u32>,
    /// The client IP's anonymity categories, when a rule needs them.
    pub anonymous: Option<Anonymous>,
    /// Where the client IP is, when a rule needs it and the city database knows.
    pub place: Option<Place>,
    /// When the request is decided (ms since the epoch).
    pub now_ms: u64,
    /// The sign-in protocol, by the path.
    pub protocol: stsgate_rules::Protocol,
}

/// What a request's credentials tell the stages: the door they came
/// through, the user, and the keyed hash of the password (never the
/// password).
#[derive(Debug, Clone, Default)]
pub struct Signer {
    /// The sign-in protocol ([`crate::signin::protocol_for`] its path).
    pub protocol: stsgate_rules::Protocol,
    /// The user name, as the request wrote it.
    pub user: Option<String>,
    /// The password's keyed hash.
    pub password_key: Option<PasswordKey>,
}

impl<'a> RequestFacts<'a> {
    /// Derives the facts of a request from its peer, headers, path and the
    /// credentials its body carries.
    pub fn build(
        peer: IpAddr,
        headers: &'a HeaderMap,
        path: &'a str,
        signer: Signer,
        client_ip: &ClientIp,
        rules: &RuleSet,
        geoip: Option<&GeoIp>,
    ) -> RequestFacts<'a> {
        let addrs = client_ip::derive(peer, headers, client_ip);
        let geo = crate::geoip::facts_for(rules, geoip, addrs.client);
        RequestFacts {
            path,
            application: header_text(headers, &X_MS_CLIENT_APPLICATION),
            user_agent: header_text(headers, &X_MS_CLIENT_USER_AGENT),
            http_user_agent: header_text(headers, &header::USER_AGENT),
            user: signer.user,
            password_key: signer.password_key,
            country: geo.country,
            asn: geo.asn,
            anonymous: geo.anonymous,
            place: geo.place,
            now_ms: stsgate_state::now_ms(),
            protocol: signer.protocol,
            addrs,
        }
    }

    /// The user agent the decision log shows: `X-MS-Client-User-Agent`, else `User-Agent`.
    pub fn shown_user_agent(&self) -> Option<&str> {
        self.user_agent
            .as_deref()
            .or(self.http_user_agent.as_deref())
    }

    /// The facts as the stages read them.
    pub fn facts(&self) -> Facts<'_> {
        Facts {
            path: self.path,
            user: self.user.as_deref(),
            password_key: self.password_key,
            http_user_agent: self.http_user_agent.as_deref(),
            now_ms: self.now_ms,
            protocol: self.protocol,
            asn: self.asn,
            anonymous: self.anonymous,
            place: self.place,
            ..self.addrs.facts(
                self.application.as_deref(),
                self.user_agent.as_deref(),
                self.country,
            )
        }
    }
}

/// Runs stages 2 to 4 on a request's facts. Allocation-free with `()` as
/// the trace.
pub fn decide<'r>(
    facts: &Facts<'_>,
    blocks: &'r BlockTable,
    guard: &Guard,
    rules: &'r RuleSet,
    trace: &mut impl Trace<'r>,
) -> Decision<'r> {
    // Stage 2: dynamic blocks, then smart lockout and sprayed passwords. A
    // step-up block or a log_only lockout is noted and the corridor goes on.
    let mut noted = match stsgate_state::stage::decide(blocks, facts, trace) {
        Flow::Final(decision) => return decision,
        Flow::StepUp(decision) => Some(decision),
        Flow::Continue => None,
    };
    let step_up = noted.is_some_and(|d| d.step_up);
    match guard.decide(facts, rules.lockout.as_ref(), rules.spray.as_ref(), trace) {
        Flow::Final(decision) => return decision,
        Flow::StepUp(decision) => noted = noted.or(Some(decision)),
        Flow::Continue => {}
    }
    // Stage 3's geo-velocity reads the user's last sign-in and familiar IPs
    // from the gate state (in memory, a short lock).
    let travelled;
    let facts = match facts.user {
        Some(user) if rules.needs_place() => {
            let (last_signin, familiar) = guard.travel(user, facts.locations(), facts.now_ms);
            travelled = Facts {
                last_signin,
                familiar,
                ..*facts
            };
            &travelled
        }
        _ => facts,
    };
    let later = rules.decide_traced(facts, trace);
    match noted {
        // Nothing later fired: stage 2's note is what was decided.
        Some(d) if later.stage == stsgate_rules::Stage::None => d,
        Some(_) if !step_up => later,
        Some(_) => Decision {
            step_up: true,
            action: if later.action == Action::Forward {
                Action::Require2fa
            } else {
                later.action
            },
            ..later
        },
        None => later,
    }
}

/// A decision with what it borrowed copied out, to keep across an await.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The stage that decided.
    pub stage: stsgate_rules::Stage,
    /// What happens.
    pub action: Action,
    /// The list that matched.
    pub list: Option<String>,
    /// The entry that matched (its text; a block's id and reason).
    pub entry: Option<String>,
    /// Forward with `X-Stsgate-Step-Up: required`.
    pub step_up: bool,
    /// Where a redirect goes.
    pub redirect_url: Option<String>,
}

impl From<Decision<'_>> for Verdict {
    fn from(d: Decision<'_>) -> Verdict {
        Verdict {
            stage: d.stage,
            action: d.action,
            list: d.list.map(str::to_string),
            entry: d.entry.map(|e| e.text.to_string()),
            step_up: d.step_up,
            redirect_url: d.redirect_url.map(str::to_string),
        }
    }
}

/// A header's value as text (UTF-8, lossy); several instances joined with
/// ", " as HTTP combines them. Borrowed in the common single-value case.
pub fn header_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut text = String::from_utf8_lossy(first.as_bytes());
    for more in values {
        let t = text.to_mut();
        t.push_str(", ");
        t.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;
    use stsgate_rules::{NoFeeds, Stage, Step};
    use stsgate_state::{GateState, NewBlock};

    fn rules(text: &str) -> RuleSet {
        RuleSet::compile("r.toml", text, &NoFeeds).unwrap()
    }

    fn client_ip() -> ClientIp {
        crate::config::Config::parse(
            "s.toml",
            "rules = \"r\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap()
        .client_ip
    }

    #[test]
    fn stage_two_before_the_rules() {
        let state = GateState::in_memory(
            std::time::Duration::from_secs(3600),
            &prometheus::Registry::new(),
        );
        let add = |v: serde_json::Value| {
            state.add(vec![
                NewBlock::from_json(&v, std::time::Duration::from_secs(3600)).unwrap(),
            ]);
        };
        add(serde_json::json!({"user": "Eve@Contoso.com", "ttl": 60}));
        add(serde_json::json!({"ip": "198.51.100.0/24", "ttl": 60, "action": "require_2fa"}));
        let r = rules(
            "[request_blocking]\nenabled = true\n[request_blocking.user_agent]\nrule = \"deny\"\nentries = [\"python\"]\n",
        );
        let h = headers(&[("User-Agent", "python-requests/2.31")]);
        let cip = client_ip();
        let run = |peer: &str, user: Option<&str>, h: &HeaderMap| {
            let f = RequestFacts::build(
                peer.parse().unwrap(),
                h,
                "/adfs/services/trust/2005/usernamemixed",
                Signer {
                    user: user.map(str::to_string),
                    ..Signer::default()
                },
                &cip,
                &r,
                None,
            );
            let table = state.table_full();
            let mut steps: Vec<Step> = Vec::new();
            let d = Verdict::from(decide(&f.facts(), &table, &state.guard, &r, &mut steps));
            (d, steps.first().map(|s| s.stage))
        };
        let (d, first) = run("192.0.2.1", Some("eve@contoso.COM"), &HeaderMap::new());
        assert_eq!(
            (d.stage, d.action, d.list.as_deref()),
            (Stage::DynamicBlock, Action::Refuse, Some("user"))
        );
        assert_eq!(first, Some(Stage::DynamicBlock));
        // A step-up block and nothing else: recorded as the block's require_2fa.
        let (d, _) = run("198.51.100.9", None, &HeaderMap::new());
        assert_eq!(
            (d.stage, d.action, d.step_up),
            (Stage::DynamicBlock, Action::Require2fa, true)
        );
        // A step-up block, then a refusal by request blocking (User-Agent read
        // when X-MS-Client-User-Agent is absent): refused.
        let (d, _) = run("198.51.100.9", None, &h);
        assert_eq!((d.stage, d.action), (Stage::UserAgent, Action::Refuse));
        let (d, _) = run("192.0.2.1", Some("bob@contoso.com"), &HeaderMap::new());
        assert_eq!((d.stage, d.action), (Stage::None, Action::Forward));
    }
}
