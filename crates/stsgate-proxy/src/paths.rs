//! Which requests go through the pipeline. Paths are compared after the
//! normalisation an STS applies itself (percent-decoding, `\` as `/`, `//`
//! collapsed, `.` and `..` resolved) and ignoring ASCII case, so that
//! `/ADFS//services/%74rust/./2005/windowstransport` is still refused.
//!
//! Order: `refuse_paths`, then `pass_paths` (metadata exchange: it carries
//! no credential, so it is forwarded without a decision), then `paths`
//! (decided), then `other_paths` for everything else.

use std::borrow::Cow;

use serde::Deserialize;

/// The default filtered paths: WS-Trust, the OAuth2 token endpoint (ROPC)
/// and the passive endpoint with the forms sign-in page (`/adfs/ls/`, also
/// without the slash and `/adfs/ls/IdpInitiatedSignOn.aspx`). Which
/// protocol a path speaks is [`crate::signin::protocol_for`].
pub const DEFAULT_PATHS: &[&str] = &["/adfs/services/trust/", "/adfs/oauth2/token", "/adfs/ls"];
/// The default refused paths: they bypass ADFS extranet lockout.
pub const DEFAULT_REFUSE_PATHS: &[&str] = &[
    "/adfs/services/trust/2005/windowstransport",
    "/adfs/services/trust/13/windowstransport",
];
/// The default passed paths: metadata exchange and federation metadata,
/// which MSAL and Office clients fetch before a sign-in and which carry no
/// credential.
pub const DEFAULT_PASS_PATHS: &[&str] = &[
    "/adfs/services/trust/mex",
    "/mex",
    "/FederationMetadata/2007-06/FederationMetadata.xml",
];

/// Which paths go through the pipeline (`[filter]`, prefixes normalised).
#[derive(Debug, Clone)]
pub struct Filter {
    /// Prefixes that are filtered (ASCII case-insensitive).
    pub paths: Vec<String>,
    /// What happens to every other path.
    pub other_paths: OtherPaths,
    /// Prefixes that are always refused.
    pub refuse_paths: Vec<String>,
    /// Prefixes forwarded without a decision, even inside `paths` or with
    /// `other_paths = "refuse"`. Matched on whole segments: `/mex` passes
    /// `/mex` and `/mex/x`, not `/mexico`.
    pub pass_paths: Vec<String>,
}

/// `filter.other_paths`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherPaths {
    /// Forward without filtering.
    Forward,
    /// Refuse with the blocked response.
    Refuse,
}

/// What a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathClass {
    /// A WS-Trust path: decide it.
    Filtered,
    /// Not filtered (or a `pass_paths` path): forward as is.
    Forward,
    /// Refused by `refuse_paths` or `other_paths = "refuse"`.
    Refuse,
}

/// Compiled path prefixes.
#[derive(Debug, Clone)]
pub struct PathFilter {
    paths: Vec<String>,
    refuse: Vec<String>,
    pass: Vec<String>,
    other: OtherPaths,
}

impl PathFilter {
    /// From the `[filter]` section (prefixes already normalised).
    pub fn new(filter: &Filter) -> Self {
        let lower = |v: &[String]| v.iter().map(|p| p.to_ascii_lowercase()).collect();
        PathFilter {
            paths: lower(&filter.paths),
            refuse: lower(&filter.refuse_paths),
            pass: lower(&filter.pass_paths),
            other: filter.other_paths,
        }
    }

    /// Classifies a request path (without the query).
    pub fn classify(&self, path: &str) -> PathClass {
        let path = normalize(path);
        let has = |prefixes: &[String]| prefixes.iter().any(|p| starts_with_ignore_case(&path, p));
        if has(&self.refuse) {
            PathClass::Refuse
        } else if self.pass.iter().any(|p| under(&path, p)) {
            PathClass::Forward
        } else if has(&self.paths) {
            PathClass::Filtered
        } else if self.other == OtherPaths::Refuse {
            PathClass::Refuse
        } else {
            PathClass::Forward
        }
    }
}

/// `path` is `prefix` or below it (whole segments), ignoring ASCII case.
fn under(path: &str, prefix: &str) -> bool {
    starts_with_ignore_case(path, prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
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
        let next = percent_encoding::percent_decode_str(&current)
            .decode_utf8_lossy()
            .into_owned();
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

    fn filter(other: OtherPaths) -> PathFilter {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        PathFilter::new(&Filter {
            paths: owned(DEFAULT_PATHS),
            refuse_paths: owned(DEFAULT_REFUSE_PATHS),
            pass_paths: owned(DEFAULT_PASS_PATHS),
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
            ("/adfs/services/trust/mex", PathClass::Forward),
            ("/ADFS/services/trust/MEX", PathClass::Forward),
            ("/adfs/services/trust/mex/", PathClass::Forward),
            ("/adfs/services/trust/mex/x", PathClass::Forward),
            ("/adfs/services/trust/%6Dex", PathClass::Forward),
            ("/adfs/services/trust/mexico", PathClass::Filtered),
            ("/adfs/services/trust/mex/../2005/usernamemixed", PathClass::Filtered),
            ("/adfs/services/trust/mex/../2005/windowstransport", PathClass::Refuse),
            ("/mex", PathClass::Forward),
            ("/federationmetadata/2007-06/federationmetadata.xml", PathClass::Forward),
            ("/adfs/ls/", PathClass::Filtered),
            ("/adfs/ls", PathClass::Filtered),
            ("/ADFS/LS/IdpInitiatedSignOn.aspx", PathClass::Filtered),
            ("/adfs/oauth2/token", PathClass::Filtered),
            ("/adfs/oauth2/token/", PathClass::Filtered),
            ("/adfs/oauth2/authorize", PathClass::Forward),
            ("/adfs/.well-known/openid-configuration", PathClass::Forward),
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
            filter(OtherPaths::Refuse).classify("/adfs/portal/"),
            PathClass::Refuse
        );
        assert_eq!(
            filter(OtherPaths::Refuse).classify("/adfs/services/trust/13/usernamemixed"),
            PathClass::Filtered
        );
        for pass in [
            "/FederationMetadata/2007-06/FederationMetadata.xml",
            "/mex",
            "/adfs/services/trust/mex",
        ] {
            assert_eq!(
                filter(OtherPaths::Refuse).classify(pass),
                PathClass::Forward,
                "{pass}"
            );
        }
        assert_eq!(
            filter(OtherPaths::Refuse).classify("/mexico"),
            PathClass::Refuse
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
