//! The last decisions worth a look, in memory, for `GET /api/v1/events` and
//! the admin page's "recent refusals": every decision-log event whose action
//! is not a plain `forward`, and every failed sign-in. A bounded ring (the
//! oldest event leaves when a new one comes), fed by the decision log's
//! writer thread, so the request path never touches it. The events are the
//! decision log's own: no password, no hash.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::decision_log::Event;

/// Events kept.
pub const CAPACITY: usize = 200;

/// The ring.
#[derive(Debug, Default)]
pub struct Recent {
    events: Mutex<VecDeque<Event>>,
}

impl Recent {
    /// Keeps `event` when it is a refusal (or any action but `forward`) or a
    /// failed sign-in.
    pub fn offer(&self, event: &Event) {
        if !notable(event) {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == CAPACITY {
            events.pop_front();
        }
        events.push_back(event.clone());
    }

    /// The newest `limit` events, newest first.
    pub fn newest(&self, limit: usize) -> Vec<Event> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.iter().rev().take(limit).cloned().collect()
    }
}

/// Not a plain forward, or the STS said no.
fn notable(e: &Event) -> bool {
    e.action != stsgate_rules::Action::Forward.as_str() || e.signin == Some("failure")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: &'static str, signin: Option<&'static str>, n: usize) -> Event {
        Event {
            action,
            signin,
            entry: Some(n.to_string()),
            ..Event::default()
        }
    }

    #[test]
    fn keeps_refusals_and_failures_newest_first_bounded() {
        let r = Recent::default();
        r.offer(&event("forward", Some("success"), 0));
        r.offer(&event("forward", None, 1));
        r.offer(&event("forward", Some("failure"), 2));
        r.offer(&event("refuse", None, 3));
        let kept: Vec<_> = r.newest(10).into_iter().map(|e| e.entry).collect();
        assert_eq!(kept, [Some("3".to_string()), Some("2".to_string())]);
        for n in 0..CAPACITY + 5 {
            r.offer(&event("refuse", None, 100 + n));
        }
        let all = r.newest(usize::MAX);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].entry, Some((100 + CAPACITY + 4).to_string()));
        assert_eq!(r.newest(3).len(), 3);
    }
}
