//! Stage 2 of the corridor: gate state. It runs on every filtered request,
//! whatever the rule file says (a remediation asked for through the API is
//! never silently ignored), before the adaptive checks and request blocking.

use stsgate_rules::{Action, Decision, Facts, Outcome, Stage, Step, Trace};

use crate::block::{BlockAction, BlockTable};

/// What stage 2 concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow<'r> {
    /// Nothing here: on to stage 3.
    Continue,
    /// On to stage 3, but the request is forwarded (if it is) with
    /// `X-Stsgate-Step-Up: required`; the decision to record when nothing
    /// later fires.
    StepUp(Decision<'r>),
    /// Final: the request is refused here.
    Final(Decision<'r>),
}

/// Dynamic blocks: on any of the request's addresses (IP lists' addresses:
/// the client, or every believed hop with `match_all_hops`), then on its
/// user. `refuse` is final; `require_2fa` goes on with a step-up.
pub fn decide<'r>(
    blocks: &'r BlockTable,
    facts: &Facts<'_>,
    trace: &mut impl Trace<'r>,
) -> Flow<'r> {
    let by_ip = blocks.by_ip(facts.hops(), facts.now_ms).map(|m| ("ip", m));
    let by_user = facts
        .user
        .and_then(|u| blocks.by_user(u, facts.now_ms))
        .map(|m| ("user", m));
    // A refusing block wins over a step-up, whichever target it is on.
    let found = match (by_ip, by_user) {
        (Some(ip), Some(user)) if ip.1.0.action != BlockAction::Refuse => Some(user),
        (ip, user) => ip.or(user),
    };
    let Some((list, (block, entry))) = found else {
        trace.step(Step {
            stage: Stage::DynamicBlock,
            outcome: Outcome::Passed,
            list: None,
            entry: None,
            action: None,
            note: if facts.user.is_some() {
                "no live block on the client IP or the user"
            } else {
                "no live block on the client IP (no user in the request)"
            },
            detail: stsgate_rules::Detail::None,
        });
        return Flow::Continue;
    };
    let action = match block.action {
        BlockAction::Refuse => Action::Refuse,
        BlockAction::Require2fa => Action::Require2fa,
    };
    trace.step(Step {
        stage: Stage::DynamicBlock,
        outcome: Outcome::Fired,
        list: Some(list),
        entry: Some(entry),
        action: Some(action),
        note: if list == "ip" {
            "a live block on the client IP"
        } else {
            "a live block on the user"
        },
        detail: stsgate_rules::Detail::None,
    });
    let decision = Decision {
        stage: Stage::DynamicBlock,
        action,
        list: Some(list),
        entry: Some(entry),
        step_up: action == Action::Require2fa,
        redirect_url: None,
    };
    match block.action {
        BlockAction::Refuse => Flow::Final(decision),
        BlockAction::Require2fa => Flow::StepUp(decision),
    }
}
