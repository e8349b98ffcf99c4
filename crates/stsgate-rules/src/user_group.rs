//! Stage 3d: `[adaptive.user_group]`, the user / group restriction
//! (PRODUCT.md §3.3). A request is *listed* when its user matches `users`
//! (globs over the UPN, `DOMAIN\sam` or bare sAMAccountName, any case) or
//! one of the user's groups (nested membership included, from the
//! directory) is in `groups`. `deny` fires for listed requests, `allow` for
//! the others; a request without a user does not fire `deny` and fires
//! `allow`. The directory lookup itself is the proxy's: the rules read its
//! answer in [`Facts::groups`].

use std::cell::RefCell;
use std::collections::HashMap;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use crate::adaptive::{Check, Look, failure_action};
use crate::decision::{Detail, Entry, Facts, Groups, normalize_dn};
use crate::lists::Compiler;
use crate::model::{FailureAction, ListRule, RawUserGroup};

/// The compiled `[adaptive.user_group]` section.
#[derive(Debug, Clone)]
pub struct UserGroup {
    /// Switched on.
    pub enabled: bool,
    /// `allow` or `deny`.
    pub rule: ListRule,
    /// `users`, one glob set.
    users: GlobSet,
    /// The `users` entries, by glob index.
    pub user_entries: Vec<Entry>,
    /// Normalised group DN -> index in `group_entries`.
    groups: HashMap<Box<str>, usize>,
    /// The `groups` entries as written.
    pub group_entries: Vec<Entry>,
    /// What to do when it fires.
    pub action: FailureAction,
    /// For `redirect`.
    pub redirect_url: Option<String>,
    /// The line of the section's header in the rule file (1 when not found).
    pub line: u32,
}

thread_local! {
    /// Glob indices matched by one lookup (reused: no allocation per request).
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// Why a `users` entry is no glob.
fn glob_error(e: &globset::Error) -> String {
    format!("invalid user glob: {}", e.kind())
}

impl UserGroup {
    pub(crate) fn compile(raw: &RawUserGroup, c: &mut Compiler<'_>) -> Self {
        let mut set = GlobSetBuilder::new();
        let mut user_entries = Vec::new();
        for item in &raw.users {
            let text = item.get_ref().trim();
            if text.is_empty() {
                c.errors.push(
                    c.src
                        .error(&item.span(), "empty user (use \"*\" for every user)"),
                );
                continue;
            }
            // `\` separates DOMAIN and sam: never an escape here.
            match GlobBuilder::new(text)
                .case_insensitive(true)
                .backslash_escape(false)
                .literal_separator(false)
                .build()
            {
                Ok(glob) => {
                    set.add(glob);
                    user_entries.push(c.entry(text, item.span().start));
                }
                Err(e) => c.errors.push(c.src.error(&item.span(), glob_error(&e))),
            }
        }
        let users = set.build().unwrap_or_else(|e| {
            // Only past the regex engine's size limits.
            c.errors.push(c.src.error(
                &raw.users.first().map_or(0..0, |u| u.span()),
                format!("the users list cannot be compiled: {e}"),
            ));
            GlobSet::empty()
        });
        let mut groups = HashMap::new();
        let mut group_entries = Vec::new();
        for item in &raw.groups {
            let dn = normalize_dn(item.get_ref());
            if !dn.contains('=') {
                c.errors.push(c.src.error(
                    &item.span(),
                    format!(
                        "invalid group {:?}: expected a distinguished name such as \"CN=Legacy-Auth,OU=Groups,DC=corp,DC=example,DC=com\"",
                        item.get_ref()
                    ),
                ));
                continue;
            }
            group_entries.push(c.entry(item.get_ref().trim(), item.span().start));
            groups
                .entry(dn.into_boxed_str())
                .or_insert(group_entries.len() - 1);
        }
        let (action, redirect_url) = failure_action(
            c,
            raw.failure_action.as_ref(),
            FailureAction::Refuse,
            raw.redirect_url.as_ref(),
        );
        UserGroup {
            line: c.section_line("[adaptive.user_group]"),
            enabled: raw.enabled.unwrap_or(true),
            rule: raw.list.unwrap_or(ListRule::Deny),
            users,
            user_entries,
            groups,
            group_entries,
            action,
            redirect_url,
        }
    }

    /// Does the check need the user's groups from the directory?
    pub fn needs_groups(&self) -> bool {
        self.enabled && !self.groups.is_empty()
    }

    /// The `users` entry the user matches: the name as written, its sam
    /// after `DOMAIN\`, or the part of a UPN before `@`.
    pub fn user_entry(&self, user: &str) -> Option<&Entry> {
        if self.users.is_empty() {
            return None;
        }
        let user = user.trim();
        let sam = user.rsplit_once('\\').map(|(_, sam)| sam);
        let local = user.rsplit_once('@').map(|(local, _)| local);
        MATCHES.with(|m| {
            let mut m = m.borrow_mut();
            for name in std::iter::once(user).chain(sam).chain(local) {
                if name.is_empty() {
                    continue;
                }
                self.users
                    .matches_candidate_into(&Candidate::new(name), &mut m);
                if let Some(&first) = m.iter().min() {
                    return self.user_entries.get(first);
                }
            }
            None
        })
    }

    /// The `groups` entry one of `found` (normalised DNs) is in.
    pub fn group_entry(&self, found: &[Box<str>]) -> Option<&Entry> {
        found
            .iter()
            .filter_map(|dn| self.groups.get(dn))
            .min()
            .map(|&i| &self.group_entries[i])
    }
}

impl UserGroup {
    /// Fires with the failure action, or passes.
    fn says<'r>(
        &'r self,
        list: &'r str,
        entry: Option<&'r Entry>,
        fires: bool,
        note: &'static str,
    ) -> Look<'r> {
        Look::of(
            fires,
            self.action,
            self.redirect_url.as_deref(),
            Some(list),
            entry,
            note,
        )
    }
}

impl Check for UserGroup {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r> {
        let list = self.rule.as_str();
        let deny = self.rule == ListRule::Deny;
        let Some(user) = facts.user else {
            return self.says(list, None, !deny, "no user in the request");
        };
        if let Some(entry) = self.user_entry(user) {
            return self.says(list, Some(entry), deny, "the user is listed in users");
        }
        if self.groups.is_empty() {
            return self.says(list, None, !deny, "the user is not listed in users");
        }
        match facts.groups {
            Groups::Found(found) => match self.group_entry(found) {
                Some(entry) => self.says(list, Some(entry), deny, "in a listed group"),
                None => self.says(list, None, !deny, "in no listed group"),
            },
            Groups::NoSuchUser => self.says(
                list,
                None,
                !deny,
                "the directory knows no such user: in no listed group",
            ),
            Groups::NotLooked => self.says(
                list,
                None,
                !deny,
                "groups not looked up (no [directory]): in no listed group",
            ),
            Groups::Unavailable { refuse: true } => Look {
                action: Some(FailureAction::Refuse),
                list: Some(list),
                entry: None,
                redirect_url: None,
                note: "directory unavailable (directory.on_error = \"refuse\")",
                detail: Detail::None,
            },
            Groups::Unavailable { refuse: false } => self.says(
                list,
                None,
                false,
                "directory unavailable (directory.on_error = \"continue\"): decided on users alone",
            ),
        }
    }
}
