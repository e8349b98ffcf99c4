//! The directory in the corridor: opened from `[directory]` (the password
//! file and, for `ldaps://`, the system's roots plus `directory.ca_file`,
//! each problem at its key), asked before the corridor when the rules need
//! groups ([`stsgate_rules::RuleSet::needs_groups`]) and the request has a
//! user, its answer turned into [`Groups`] for the user / group check.
//! The client itself, its cache and metrics are `stsgate-directory`.

use std::sync::Arc;

use prometheus::Registry;
use stsgate_directory::{Answer, Directory, DirectoryMetrics, OnError};
use stsgate_rules::{Groups, RuleSet, SourceError};

use crate::config::Config;

/// Opens `[directory]`, when configured (no connection yet: the first
/// lookup connects).
pub fn open(config: &Config, registry: &Registry) -> Result<Option<Directory>, Vec<SourceError>> {
    let Some(settings) = &config.directory else {
        return Ok(None);
    };
    let at = |key: &str, message: String| config.positions.error(&config.path, key, message);
    let tls = if settings.is_ldaps() {
        match crate::tls::client_config(settings.ca_file.as_deref()) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                return Err(vec![at(
                    "directory.ca_file",
                    format!("directory.ca_file: {e:#}"),
                )]);
            }
        }
    } else {
        None
    };
    let metrics = DirectoryMetrics::new(registry)
        .map_err(|e| vec![at("directory", format!("directory metrics: {e}"))])?;
    match Directory::new(settings.clone(), tls, metrics) {
        Ok(directory) => Ok(Some(directory)),
        Err(e @ stsgate_directory::Error::Password(_)) => {
            Err(vec![at("directory.password_file", e.to_string())])
        }
        Err(e) => Err(vec![at("directory", e.to_string())]),
    }
}

/// Rules that name groups need `[directory]`: without it no one is in any
/// group (an allow list would refuse everyone it does not name by user).
/// The error is at the rule file's first `groups` entry.
pub fn rules_with_config(config: &Config, rules: &RuleSet) -> Option<SourceError> {
    if !rules.needs_groups() || config.directory.is_some() {
        return None;
    }
    let first = rules
        .adaptive
        .user_group
        .as_ref()
        .and_then(|u| u.group_entries.first());
    Some(SourceError {
        path: first.map_or_else(
            || config.rules.display().to_string(),
            |e| e.file.to_string(),
        ),
        line: first.map_or(1, |e| e.line.max(1)),
        column: 1,
        message: format!(
            "[adaptive.user_group] names groups, which need [directory] in {} (where users' groups come from)",
            config.path.display()
        ),
    })
}

/// The user / group check's view of an answer.
pub fn groups(answer: &Answer, on_error: OnError) -> Groups<'_> {
    match answer {
        Answer::Found(groups) => Groups::Found(groups),
        Answer::NoSuchUser => Groups::NoSuchUser,
        Answer::Unavailable(_) => Groups::Unavailable {
            refuse: on_error == OnError::Refuse,
        },
    }
}

/// What `explain` shows of an answer.
pub fn describe(answer: &Answer) -> String {
    match answer {
        Answer::Found(groups) if groups.is_empty() => "found, in no group".to_string(),
        Answer::Found(groups) => format!("found, in {}", groups.join("; ")),
        Answer::NoSuchUser => "no such user in the directory".to_string(),
        Answer::Unavailable(why) => format!("unavailable: {why}"),
    }
}

/// Is the directory asked about `user`? When the rules need groups and
/// `users` does not already list the user by name (listed either way: the
/// groups would change nothing).
pub fn wanted(rules: &RuleSet, user: &str) -> bool {
    rules.needs_groups()
        && rules
            .adaptive
            .user_group
            .as_ref()
            .is_none_or(|g| g.user_entry(user).is_none())
}

/// The directory's `/readyz` line (never a reason to be unready:
/// `directory.on_error` decides what requests get meanwhile).
pub fn readyz_line(directory: &Directory) -> String {
    let url = &directory.settings().url;
    match directory.health() {
        stsgate_directory::Health::Unknown => format!("directory {url}: not asked yet\n"),
        stsgate_directory::Health::Ok => format!("directory {url}: ok\n"),
        stsgate_directory::Health::Failing(why) => {
            let then = directory.settings().on_error.as_str();
            format!("directory {url}: failing (on_error = {then}): {why}\n")
        }
    }
}
