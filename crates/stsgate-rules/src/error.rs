//! Errors that say where: every problem in a rule or config file carries the
//! file, line and column of the offending text.

use std::fmt;
use std::ops::Range;

/// One problem found in a file, printed as `PATH:LINE:COLUMN: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceError {
    /// The file as the user named it.
    pub path: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column, counted in characters.
    pub column: u32,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.line, self.column, self.message
        )
    }
}

impl SourceError {
    /// A problem with a file as a whole (it cannot be read, say), reported
    /// at its first line and column.
    pub fn whole_file(path: impl Into<String>, message: impl Into<String>) -> SourceError {
        SourceError {
            path: path.into(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

/// Maps byte offsets of one source text to lines and columns.
#[derive(Debug, Clone)]
pub struct SourceText<'a> {
    path: &'a str,
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    /// Indexes `text`, read from `path`.
    pub fn new(path: &'a str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceText {
            path,
            text,
            line_starts,
        }
    }

    /// The whole text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// 1-based line and column of a byte offset.
    pub fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line as u32, column as u32 + 1)
    }

    /// An error at a byte offset.
    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> SourceError {
        let (line, column) = self.position(offset);
        SourceError {
            path: self.path.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error at the start of a span.
    pub fn error(&self, span: &Range<usize>, message: impl Into<String>) -> SourceError {
        self.error_at(span.start, message)
    }

    /// Turns a TOML parse or type error into a positioned error.
    pub fn toml_error(&self, err: &toml::de::Error) -> SourceError {
        let offset = err.span().map_or(0, |s| s.start);
        // toml's message may span several lines; the first says what is wrong.
        let message = err.message().trim().replace('\n', " ");
        self.error_at(offset, message)
    }
}

/// Byte offset, inside the source, of `offset` bytes into the value of the
/// string literal at `span` (the span includes the quotes). Falls back to the
/// literal's own start when the literal holds escapes, so that the position
/// is never wrong, only less precise.
pub(crate) fn offset_in_literal(
    text: &str,
    span: &Range<usize>,
    value: &str,
    offset: usize,
) -> usize {
    let Some(raw) = text.get(span.clone()) else {
        return span.start;
    };
    let quote = if raw.starts_with("'''") || raw.starts_with("\"\"\"") {
        3
    } else {
        1
    };
    match raw.get(quote..raw.len().saturating_sub(quote)) {
        Some(inner) if inner == value => span.start + quote + offset,
        _ => span.start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = SourceText::new("r.toml", "a = 1\nbé = \"x\"\n");
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(6), (2, 1));
        // 'é' is two bytes but one column.
        assert_eq!(src.position(10), (2, 4));
        assert_eq!(src.error_at(6, "bad").to_string(), "r.toml:2:1: bad");
    }

    #[test]
    fn literal_offsets_point_inside_plain_strings_only() {
        let text = r#"x = "ab,cd""#;
        let span = 4..11;
        assert_eq!(offset_in_literal(text, &span, "ab,cd", 3), 8);
        let text = r#"x = "a\u0062""#;
        assert_eq!(offset_in_literal(text, &(4..13), "ab", 1), 4);
    }
}
