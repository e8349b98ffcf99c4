//! Header lists (`application`, `user_agent`): an entry matches when the
//! header value contains it, ignoring ASCII case. All entries of a list are
//! compiled into one Aho-Corasick automaton, so a lookup scans the value
//! once whatever the list's size.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::ipset::EntryId;

/// A compiled list of substrings.
#[derive(Debug, Clone, Default)]
pub struct TextSet {
    /// `*`: matches every value and a missing header.
    wildcard: Option<EntryId>,
    automaton: Option<AhoCorasick>,
    /// Pattern index in the automaton -> entry.
    ids: Vec<EntryId>,
}

impl TextSet {
    /// Compiles `(text, entry)` pairs. `*` is the wildcard; other entries are
    /// literal substrings (no other character is special).
    pub fn build<'a>(entries: impl IntoIterator<Item = (&'a str, EntryId)>) -> Self {
        let mut set = TextSet::default();
        let mut patterns = Vec::new();
        for (text, id) in entries {
            if text == "*" {
                set.wildcard = Some(set.wildcard.map_or(id, |w| w.min(id)));
            } else {
                patterns.push(text);
                set.ids.push(id);
            }
        }
        if !patterns.is_empty() {
            let automaton = AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .kind(Some(if patterns.len() <= 5_000 {
                    AhoCorasickKind::DFA
                } else {
                    AhoCorasickKind::ContiguousNFA
                }))
                .build(&patterns)
                .or_else(|_| {
                    AhoCorasick::builder()
                        .ascii_case_insensitive(true)
                        .build(&patterns)
                });
            // Building only fails past internal size limits; the retry lets
            // the crate pick a smaller representation.
            set.automaton = automaton.ok();
        }
        set
    }

    /// The entry that matches `value` (`None`: the header is missing).
    #[inline]
    pub fn lookup(&self, value: Option<&str>) -> Option<EntryId> {
        if self.wildcard.is_some() {
            return self.wildcard;
        }
        let found = self.automaton.as_ref()?.find(value?)?;
        Some(self.ids[found.pattern().as_usize()])
    }

    /// How many entries were compiled.
    pub fn len(&self) -> usize {
        self.ids.len() + usize::from(self.wildcard.is_some())
    }

    /// True when nothing was compiled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(entries: &[&str]) -> TextSet {
        TextSet::build(entries.iter().enumerate().map(|(i, e)| (*e, i as EntryId)))
    }

    #[test]
    fn contains_ignoring_ascii_case() {
        let s = set(&["python-requests", "BAV2ROPC"]);
        assert_eq!(s.lookup(Some("Python-Requests/2.31")), Some(0));
        assert_eq!(s.lookup(Some("x bav2ropc y")), Some(1));
        assert_eq!(s.lookup(Some("Apple-iPhone3C1/811.2")), None);
        assert_eq!(s.lookup(Some("")), None);
        assert_eq!(s.lookup(None), None);
    }

    #[test]
    fn star_matches_everything_even_a_missing_header() {
        let s = set(&["ActiveSync", "*"]);
        assert_eq!(s.lookup(None), Some(1));
        assert_eq!(s.lookup(Some("")), Some(1));
        assert_eq!(set(&[]).lookup(Some("x")), None);
    }

    #[test]
    fn no_character_is_special() {
        let s = set(&["a.b", "(x)+"]);
        assert_eq!(s.lookup(Some("aXb")), None);
        assert_eq!(s.lookup(Some("A.B")), Some(0));
        assert_eq!(s.lookup(Some("((X)+)")), Some(1));
    }
}
