//! Compiled lists with their rule (`allow` / `deny`) and their entries, and
//! the compiler that builds them from the rule file, collecting every error.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use crate::decision::Entry;
use crate::error::{SourceError, SourceText, offset_in_literal};
use crate::ip::{for_each_item, parse_entry};
use crate::ipset::{EntryId, IpSet};
use crate::model::ListRule;
use crate::text::TextSet;

/// An IP list: compiled set plus the entries it names.
#[derive(Debug, Clone)]
pub struct IpList {
    /// `allow` or `deny`.
    pub rule: ListRule,
    set: IpSet,
    entries: Vec<Entry>,
}

impl IpList {
    /// Does this list fire for these addresses? `deny`: when any of them is
    /// listed (the entry is returned); `allow`: when any of them is not.
    #[inline]
    pub fn fires(&self, hops: &[IpAddr]) -> (bool, Option<&Entry>) {
        match self.rule {
            ListRule::Deny => {
                let hit = hops.iter().find_map(|&ip| self.set.lookup(ip));
                (hit.is_some(), hit.map(|id| &self.entries[id as usize]))
            }
            ListRule::Allow => (!hops.iter().all(|&ip| self.set.contains(ip)), None),
        }
    }

    /// Number of entries (items of comma-separated strings counted apart).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A header list: compiled automaton plus the entries it names.
#[derive(Debug, Clone)]
pub struct TextList {
    /// `allow` or `deny`.
    pub rule: ListRule,
    set: TextSet,
    entries: Vec<Entry>,
}

impl TextList {
    /// Does this list fire for this header value? `deny`: when an entry
    /// matches; `allow`: when none does.
    #[inline]
    pub fn fires(&self, value: Option<&str>) -> (bool, Option<&Entry>) {
        let hit = self.set.lookup(value).map(|id| &self.entries[id as usize]);
        match self.rule {
            ListRule::Deny => (hit.is_some(), hit),
            ListRule::Allow => (hit.is_none(), hit),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the list has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Builds lists from one source file, collecting errors instead of stopping
/// at the first.
pub(crate) struct Compiler<'a> {
    pub src: SourceText<'a>,
    pub file: Arc<str>,
    pub errors: Vec<SourceError>,
    pub warnings: Vec<SourceError>,
    /// (offset, line) of the last line lookup.
    cursor: std::cell::Cell<(usize, u32)>,
}

impl<'a> Compiler<'a> {
    pub fn new(path: &'a str, text: &'a str) -> Self {
        Compiler {
            src: SourceText::new(path, text),
            file: Arc::from(path),
            errors: Vec::new(),
            warnings: Vec::new(),
            cursor: std::cell::Cell::new((0, 1)),
        }
    }

    /// An entry written at `offset` of the source.
    pub fn entry(&self, text: &str, offset: usize) -> Entry {
        Entry {
            text: text.into(),
            file: self.file.clone(),
            line: self.line_of(offset),
        }
    }

    /// The 1-based line of `offset`. Lists are compiled in file order, so a
    /// cursor moving forward counts newlines instead of searching each time.
    fn line_of(&self, offset: usize) -> u32 {
        let (at, line) = self.cursor.get();
        if offset < at {
            return self.src.position(offset).0;
        }
        let newlines = self
            .src
            .text()
            .as_bytes()
            .get(at..offset)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
        let line = line + newlines as u32;
        self.cursor.set((offset, line));
        line
    }

    /// The 1-based line of a section header such as `[adaptive.geo_velocity]`
    /// (1 when the file writes the section another way).
    pub fn section_line(&self, header: &str) -> u32 {
        self.src
            .text()
            .find(header)
            .map_or(1, |at| self.src.position(at).0)
    }

    /// IP entries as written in the rule file (strings in an array).
    pub fn ip_entries(&mut self, items: &[Spanned<String>]) -> (IpSet, Vec<Entry>) {
        let mut patterns = Vec::with_capacity(items.len());
        let mut entries: Vec<Entry> = Vec::with_capacity(items.len());
        for item in items {
            let value = item.get_ref();
            let span = item.span();
            let mut last: Option<usize> = None;
            let parsed = for_each_item(value, |at, text, pattern| {
                if last != Some(at) {
                    let offset = offset_in_literal(self.src.text(), &span, value, at);
                    entries.push(self.entry(text, offset));
                    last = Some(at);
                }
                patterns.push((pattern, (entries.len() - 1) as EntryId));
            });
            if let Err((at, message)) = parsed {
                let offset = offset_in_literal(self.src.text(), &span, value, at);
                self.errors.push(self.src.error_at(offset, message));
            }
        }
        (IpSet::build(patterns), entries)
    }

    /// IP entries one a line (a threat feed); bad lines are warnings and skipped.
    pub fn feed_entries(
        &mut self,
        patterns: &mut Vec<(crate::ip::IpPattern, EntryId)>,
        entries: &mut Vec<Entry>,
    ) {
        let text = self.src.text();
        let mut line_start = 0;
        for raw_line in text.split_inclusive('\n') {
            let content = raw_line.split(['#', ';']).next().unwrap_or("");
            let lead = content.len() - content.trim_start().len();
            let item = content.trim();
            if !item.is_empty() {
                match parse_entry(item) {
                    Ok(parsed) => {
                        let mut last: Option<usize> = None;
                        for (at, text, pattern) in parsed {
                            if last != Some(at) {
                                entries.push(self.entry(text, line_start + lead + at));
                                last = Some(at);
                            }
                            patterns.push((pattern, (entries.len() - 1) as EntryId));
                        }
                    }
                    Err((at, message)) => {
                        let w = self
                            .src
                            .error_at(line_start + lead + at, format!("{message}; line skipped"));
                        self.warnings.push(w);
                    }
                }
            }
            line_start += raw_line.len();
        }
    }

    pub fn ip_list(&mut self, rule: ListRule, items: &[Spanned<String>]) -> IpList {
        let (set, entries) = self.ip_entries(items);
        IpList { rule, set, entries }
    }

    pub fn text_list(&mut self, rule: ListRule, items: &[Spanned<String>]) -> TextList {
        let mut entries = Vec::with_capacity(items.len());
        for item in items {
            if item.get_ref().is_empty() {
                self.errors.push(
                    self.src
                        .error(&item.span(), "empty entry (use \"*\" to match every value)"),
                );
                continue;
            }
            entries.push(self.entry(item.get_ref(), item.span().start));
        }
        let set = TextSet::build(
            entries
                .iter()
                .enumerate()
                .map(|(i, e)| (&*e.text, i as EntryId)),
        );
        TextList { rule, set, entries }
    }

    /// A duration string such as `30m`; `default` when absent.
    pub fn duration(&mut self, value: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(value) = value else { return default };
        match crate::units::parse_duration(value.get_ref()) {
            Ok(d) => d,
            Err(message) => {
                self.errors.push(self.src.error(&value.span(), message));
                default
            }
        }
    }

    /// A whole number at least `min`; `default` when absent.
    pub fn count(&mut self, value: Option<&Spanned<i64>>, min: i64, default: u32) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if i64::from(n) >= min => n,
            _ => {
                self.errors.push(self.src.error(
                    &value.span(),
                    format!("must be a whole number from {min} to {}", u32::MAX),
                ));
                default
            }
        }
    }
}

/// Compiles IP entries found in another TOML file (the main config's
/// `trusted_proxies`), with errors positioned in that file.
pub fn ip_set(
    path: &str,
    text: &str,
    items: &[Spanned<String>],
) -> Result<IpSet, Vec<SourceError>> {
    let mut c = Compiler::new(path, text);
    let (set, _) = c.ip_entries(items);
    if c.errors.is_empty() {
        Ok(set)
    } else {
        Err(c.errors)
    }
}
