//! Stage 3b: `[adaptive.anonymous_ip]` (PRODUCT.md §3.3): fires when the
//! client IP has one of `categories` in MaxMind's Anonymous IP database
//! (the proxy looks it up into [`Facts::anonymous`]).

use crate::adaptive::{Check, Look, failure_action};
use crate::decision::{Anonymous, Detail, Entry, Facts};
use crate::lists::Compiler;
use crate::model::{FailureAction, RawAnonymousIp};

/// The compiled `[adaptive.anonymous_ip]` section.
#[derive(Debug, Clone)]
pub struct AnonymousIp {
    /// Switched on.
    pub enabled: bool,
    /// The categories that fire.
    pub categories: Anonymous,
    /// Each category's entry, in [`Anonymous::NAMES`] order (`None`: not listed).
    entries: [Option<Entry>; 5],
    /// What to do when it fires.
    pub action: FailureAction,
    /// For `redirect`.
    pub redirect_url: Option<String>,
    /// The line of the section's header in the rule file (1 when not found).
    pub line: u32,
}

impl AnonymousIp {
    pub(crate) fn compile(raw: &RawAnonymousIp, c: &mut Compiler<'_>) -> Self {
        let mut categories = Anonymous::default();
        let mut entries: [Option<Entry>; 5] = Default::default();
        for item in &raw.categories {
            let name = item.get_ref().trim();
            match Anonymous::NAMES.iter().position(|(n, _)| *n == name) {
                Some(i) => {
                    categories = categories.union(Anonymous::NAMES[i].1);
                    entries[i].get_or_insert_with(|| c.entry(name, item.span().start));
                }
                None => c.errors.push(c.src.error(
                    &item.span(),
                    format!(
                        "unknown anonymous IP category {:?}: expected one of {}",
                        item.get_ref(),
                        Anonymous::NAMES.map(|(n, _)| n).join(", ")
                    ),
                )),
            }
        }
        if raw.categories.is_empty() {
            let at = c.src.text().find("[adaptive.anonymous_ip]").unwrap_or(0);
            c.errors.push(c.src.error_at(
                at,
                format!(
                    "[adaptive.anonymous_ip] needs categories, some of {}",
                    Anonymous::NAMES.map(|(n, _)| n).join(", ")
                ),
            ));
        }
        let (action, redirect_url) = failure_action(
            c,
            raw.failure_action.as_ref(),
            FailureAction::Refuse,
            raw.redirect_url.as_ref(),
        );
        AnonymousIp {
            line: c.section_line("[adaptive.anonymous_ip]"),
            enabled: raw.enabled.unwrap_or(true),
            categories,
            entries,
            action,
            redirect_url,
        }
    }

    /// Does the check need the client IP's categories?
    pub fn needs_anonymous(&self) -> bool {
        self.enabled
    }
}

impl Check for AnonymousIp {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r> {
        let found = facts.anonymous.unwrap_or_default();
        let hit = found.intersection(self.categories);
        let entry = Anonymous::NAMES
            .iter()
            .position(|(_, a)| hit.0 & a.0 != 0)
            .and_then(|i| self.entries[i].as_ref());
        let note = if hit.is_empty() {
            "in none of the categories"
        } else {
            "in a listed category"
        };
        Look::of(
            !hit.is_empty(),
            self.action,
            self.redirect_url.as_deref(),
            Some("categories"),
            entry,
            note,
        )
        .with(Detail::Anonymous(found))
    }
}
