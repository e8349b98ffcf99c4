//! Which requests go through the pipeline. Paths are compared after the
//! normalisation an STS applies itself (percent-decoding, `\` as `/`, `//`
//! collapsed, `.` and `..` resolved) and ignoring ASCII case, so that
//! `/ADFS//services/%74rust/./2005/windowstransport` is still refused.

use std::borrow::Cow;

use crate::config::{Filter, OtherPaths};

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// A WS-Trust path: decide it.
    Filtered,
    /// Not filtered: forward as is.
    Forward,
    /// Refused by `refuse_paths` or `other_paths = "refuse"`.
    Refuse,
}

/// Compiled path prefixes.
#[derive(Debug, Clone)]
pub struct PathFilter {
    paths: Vec<String>,
    refuse: Vec<String>,
    other: OtherPaths,
}

impl PathFilter {
    /// From the `[filter]` section (prefixes already normalised).
    pub fn new(filter: &Filter) -> Self {
        let lower = |v: &[String]| v.iter().map(|p| p.to_ascii_lowercase()).collect();
        PathFilter {
            paths: lower(&filter.paths),
            refuse: lower(&filter.refuse_paths),
            other: filter.other_paths,
        }
    }

    /// Classifies a request path (without the query).
    pub fn classify(&self, path: &str) -> PathClass {
        let path = normalize(path);
        let has = |prefixes: &[String]| prefixes.iter().any(|p| starts_with_ignore_case(&path, p));
        if has(&self.refuse) {
            PathClass::Refuse
        } else if has(&self.paths) {
            PathClass::Filtered
        } else if self.other == OtherPaths::Refuse {
            PathClass::Refuse
        } else {
            PathClass::Forward
        }
    }
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The path as an STS resolves it. Borrowed when nothing changes (the common case).
pub fn normalize(path: &str) -> Cow<'_, str> {
    let plain = !path.contains(['%', '\\'])
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..");
    if plain {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode(path).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || out.is_empty()
    {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Decodes `%XX` repeatedly until stable (so `%252F` cannot hide a `/`);
/// malformed escapes stay as they are.
fn percent_decode(path: &str) -> String {
    let mut current = path.to_string();
    for _ in 0..4 {
        let bytes = current.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = |b: u8| (b as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DEFAULT_PATHS, DEFAULT_REFUSE_PATHS};

    fn filter(other: OtherPaths) -> PathFilter {
        PathFilter::new(&Filter {
            paths: DEFAULT_PATHS.iter().map(|s| s.to_string()).collect(),
            refuse_paths: DEFAULT_REFUSE_PATHS.iter().map(|s| s.to_string()).collect(),
            other_paths: other,
        })
    }

    #[test]
    fn classification() {
        let f = filter(OtherPaths::Forward);
        #[rustfmt::skip]
        let cases = [
            ("/adfs/services/trust/2005/usernamemixed", PathClass::Filtered),
            ("/ADFS/Services/Trust/13/UsernameMixed", PathClass::Filtered),
            ("/adfs/services/trust/mex", PathClass::Filtered),
            ("/adfs/ls/", PathClass::Forward),
            ("/adfs/services/trust", PathClass::Forward),
            ("/adfs/services/trust/2005/windowstransport", PathClass::Refuse),
            ("/adfs/services/trust/13/WindowsTransport", PathClass::Refuse),
            ("/adfs/services/trust/2005/windowstransport/x", PathClass::Refuse),
            ("/adfs//services/trust/2005/windowstransport", PathClass::Refuse),
            ("/adfs/services/trust/./2005/windowstransport", PathClass::Refuse),
            ("/adfs/ls/../services/trust/2005/windowstransport", PathClass::Refuse),
            ("/adfs/services%2Ftrust/2005/windowstransport", PathClass::Refuse),
            ("/adfs/services%252Ftrust%2f2005/windowstransport", PathClass::Refuse),
            ("/adfs\\services\\trust\\13\\windowstransport", PathClass::Refuse),
            ("/adfs/services/%74rust/2005/usernamemixed", PathClass::Filtered),
            ("/x/../adfs/services/trust/2005/usernamemixed", PathClass::Filtered),
            ("/../../adfs/services/trust/2005/usernamemixed", PathClass::Filtered),
        ];
        for (path, want) in cases {
            assert_eq!(f.classify(path), want, "{path}");
        }
        assert_eq!(
            filter(OtherPaths::Refuse).classify("/adfs/ls/"),
            PathClass::Refuse
        );
        assert_eq!(
            filter(OtherPaths::Refuse).classify("/adfs/services/trust/13/usernamemixed"),
            PathClass::Filtered
        );
    }

    #[test]
    fn normalisation_borrows_when_it_can() {
        assert!(matches!(
            normalize("/adfs/services/trust/2005/usernamemixed"),
            Cow::Borrowed(_)
        ));
        assert_eq!(normalize("/a/b/../c/./d//"), "/a/c/d/");
        assert_eq!(normalize("/%zz/%4"), "/%zz/%4");
        assert_eq!(normalize("/.."), "/");
    }
}
