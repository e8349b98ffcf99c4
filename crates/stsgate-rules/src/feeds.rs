//! Threat feeds as the rule file names them: a file (`path`) or a download
//! (`url`, fetched by the proxy every `refresh`). The pure parts live here:
//! checking the keys of a URL feed, and judging a downloaded text (does it
//! look like a feed?) before it may replace the last good one. The I/O is
//! the caller's ([`crate::FeedSource`]).

use std::time::Duration;

use toml::Spanned;

use crate::lists::Compiler;
use crate::model::RawFeed;

/// `refresh` when absent.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(3600);
/// The shortest `refresh` (tests use it; public feeds ask for minutes).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// The longest `refresh`.
pub const MAX_REFRESH: Duration = Duration::from_secs(7 * 86400);
/// `timeout` when absent: one whole download, connect to last byte.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The shortest `timeout`.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest `timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest feed name, category or URL.
const MAX_NAME: usize = 64;
const MAX_URL: usize = 2048;

/// How a URL feed is fetched (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedFetch {
    /// `url`.
    pub url: String,
    /// `refresh`.
    pub refresh: Duration,
    /// `timeout`.
    pub timeout: Duration,
    /// `ca_file` as written (relative to the rule file).
    pub ca_file: Option<String>,
}

/// What a feed's text holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedCount {
    /// Entries that parse (items of one line counted apart).
    pub entries: usize,
    /// Lines with content (comments aside) that do not parse.
    pub bad_lines: usize,
    /// Lines with content.
    pub lines: usize,
}

/// Counts what a feed's text holds, as the compiler would read it.
pub fn count_feed(text: &str) -> FeedCount {
    let mut c = Compiler::new("feed", text);
    let mut patterns = Vec::new();
    let mut entries = Vec::new();
    c.feed_entries(&mut patterns, &mut entries);
    let lines = text
        .lines()
        .filter(|l| !l.split(['#', ';']).next().unwrap_or("").trim().is_empty())
        .count();
    FeedCount {
        entries: entries.len(),
        bad_lines: c.warnings.len(),
        lines,
    }
}

/// Why a downloaded text may not replace a URL feed's last good list, if
/// it may not: more than a tenth of its lines do not parse (an error page
/// served with 200, another format), or it has no entry where the last
/// good list had at least 10 (a feed does not empty itself in one step).
/// A file feed keeps its good lines whatever the others are.
pub fn judge_download(count: &FeedCount, last_entries: Option<usize>) -> Result<(), String> {
    if count.bad_lines * 10 > count.lines {
        return Err(format!(
            "{} of its {} lines do not parse as IP notation",
            count.bad_lines, count.lines
        ));
    }
    if count.entries == 0 && last_entries.is_some_and(|n| n >= 10) {
        return Err(format!(
            "no entries, where the last good list had {}",
            last_entries.unwrap_or(0)
        ));
    }
    Ok(())
}

/// Checks a feed URL: `https://`, or `http://` to a loopback host
/// (`localhost`, `127.0.0.0/8`, `[::1]`); a host, an optional port; no
/// credentials (they would be logged). Returns the message for an error.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(format!("a feed URL is at most {MAX_URL} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a feed URL has no spaces or control characters".into());
    }
    let lower = url.to_ascii_lowercase();
    let (https, rest) = if let Some(rest) = lower.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "feed URL {url:?}: expected https://... (http:// only to a loopback host)"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "feed URL {url:?}: credentials in the URL are not supported (they would be logged)"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) if h.parse::<std::net::Ipv6Addr>().is_ok() => (h, p),
            _ => return Err(format!("feed URL {url:?}: bad IPv6 host")),
        }
    } else {
        match authority.find(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        }
    };
    if host.is_empty() {
        return Err(format!("feed URL {url:?}: no host"));
    }
    if !port.is_empty() {
        let ok = port
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p > 0);
        if !ok {
            return Err(format!("feed URL {url:?}: bad port"));
        }
    }
    if !https && !is_loopback(host) {
        return Err(format!(
            "feed URL {url:?}: plain http:// only to a loopback host (a feed decides who may sign in: fetch it over https://)"
        ));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL feed's name is its file name in `state.dir/feeds/`; a category
/// goes into logs: letters, digits, `.`, `_`, `-`, at most 64, not
/// starting with a dot.
fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The keys of one feed that the compiler checks beside its entries: the
/// category, and for a URL feed how it is fetched (`None` for a file feed,
/// or when the URL feed has errors, pushed to `c`).
pub(crate) fn check_keys(
    raw: &RawFeed,
    c: &mut Compiler<'_>,
) -> (Option<String>, Option<FeedFetch>) {
    let category = match &raw.category {
        Some(cat) if plain_name(cat.get_ref()) => Some(cat.get_ref().clone()),
        Some(cat) => {
            c.errors.push(c.src.error(
                &cat.span(),
                "a category is letters, digits, '.', '_' or '-' (at most 64), e.g. \"botnet\"",
            ));
            None
        }
        None => None,
    };
    let url_only = [
        ("refresh", raw.refresh.as_ref()),
        ("timeout", raw.timeout.as_ref()),
        ("ca_file", raw.ca_file.as_ref()),
    ];
    let url = match (&raw.path, &raw.url) {
        (Some(_), Some(url)) => {
            c.errors.push(
                c.src
                    .error(&url.span(), "a feed has `path` or `url`, not both"),
            );
            return (category, None);
        }
        (None, None) => {
            c.errors.push(c.src.error(
                &raw.name.span(),
                format!(
                    "feed {:?} needs `path` (a file) or `url`",
                    raw.name.get_ref()
                ),
            ));
            return (category, None);
        }
        (Some(_), None) => {
            for (key, value) in url_only {
                if let Some(v) = value {
                    c.errors.push(
                        c.src
                            .error(&v.span(), format!("`{key}` is for `url` feeds")),
                    );
                }
            }
            return (category, None);
        }
        (None, Some(url)) => url,
    };
    let mut ok = true;
    if let Err(message) = check_url(url.get_ref()) {
        c.errors.push(c.src.error(&url.span(), message));
        ok = false;
    }
    if !plain_name(raw.name.get_ref()) {
        c.errors.push(c.src.error(
            &raw.name.span(),
            "a URL feed's name is its file name in state.dir/feeds: letters, digits, '.', '_' or '-' (at most 64)",
        ));
        ok = false;
    }
    let refresh = bounded(
        c,
        raw.refresh.as_ref(),
        DEFAULT_REFRESH,
        MIN_REFRESH,
        MAX_REFRESH,
        &mut ok,
    );
    let timeout = bounded(
        c,
        raw.timeout.as_ref(),
        DEFAULT_TIMEOUT,
        MIN_TIMEOUT,
        MAX_TIMEOUT,
        &mut ok,
    );
    let ca_file = match &raw.ca_file {
        Some(f) if f.get_ref().trim().is_empty() => {
            c.errors.push(c.src.error(&f.span(), "ca_file is empty"));
            ok = false;
            None
        }
        Some(f) => Some(f.get_ref().clone()),
        None => None,
    };
    let fetch = ok.then(|| FeedFetch {
        url: url.get_ref().clone(),
        refresh,
        timeout,
        ca_file,
    });
    (category, fetch)
}

fn bounded(
    c: &mut Compiler<'_>,
    value: Option<&Spanned<String>>,
    default: Duration,
    min: Duration,
    max: Duration,
    ok: &mut bool,
) -> Duration {
    let errors = c.errors.len();
    let d = c.duration(value, default);
    if c.errors.len() > errors {
        *ok = false;
        return default;
    }
    match value {
        Some(v) if d < min || d > max => {
            c.errors.push(c.src.error(
                &v.span(),
                format!(
                    "must be from {} to {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
            *ok = false;
            default
        }
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use crate::{Action, Facts, FeedSource, RuleSet, Stage};

    /// URL feeds: `c2` has a download, `late` none yet; `bad-ca.pem` is unusable.
    struct Fetched;

    impl FeedSource for Fetched {
        fn feed(&self, _name: &str, path: &str) -> Result<(String, Arc<str>), String> {
            Ok((path.to_string(), Arc::from("192.0.2.1\n")))
        }
        fn fetched(&self, name: &str, _url: &str) -> Option<Arc<str>> {
            (name == "c2").then(|| Arc::from("# c2\n198.51.100.0/24\n"))
        }
        fn ca_file(&self, path: &str) -> Result<(), String> {
            if path == "bad-ca.pem" {
                Err("no certificate in bad-ca.pem".into())
            } else {
                Ok(())
            }
        }
    }

    const RULES: &str = r#"[request_blocking]
use_adaptive = true
[[adaptive.threat.feeds]]
name = "c2"
url = "https://feeds.example.net/c2.txt"
refresh = "10m"
ca_file = "ca.pem"
risk = "high"
category = "botnet"
[[adaptive.threat.feeds]]
name = "late"
url = "https://feeds.example.net/late.txt"
risk = "low"
[[adaptive.threat.feeds]]
name = "local"
path = "feeds/local.txt"
risk = "medium"
category = "scanner"
"#;

    #[test]
    fn url_feeds_compile_with_their_category_and_fetch() {
        let r = RuleSet::compile("r.toml", RULES, &Fetched).unwrap();
        let t = r.adaptive.threat.as_ref().unwrap();
        let c2 = t.feeds.iter().find(|f| f.name == "c2").unwrap();
        assert_eq!(c2.entries, 1);
        assert_eq!(c2.path, "https://feeds.example.net/c2.txt");
        assert!(!c2.pending);
        assert_eq!(
            c2.fetch,
            Some(FeedFetch {
                url: "https://feeds.example.net/c2.txt".into(),
                refresh: Duration::from_secs(600),
                timeout: DEFAULT_TIMEOUT,
                ca_file: Some("ca.pem".into()),
            })
        );
        let late = t.feeds.iter().find(|f| f.name == "late").unwrap();
        assert!(late.pending && late.entries == 0);
        assert_eq!(late.fetch.as_ref().unwrap().refresh, DEFAULT_REFRESH);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.line == 12 && w.message.contains("no download yet")),
            "{:?}",
            r.warnings
        );
        assert_eq!(t.category("c2").map(|c| &**c), Some("botnet"));
        assert_eq!(t.category("local").map(|c| &**c), Some("scanner"));
        assert_eq!(t.category("late"), None);
        assert!(
            t.feeds
                .iter()
                .find(|f| f.name == "local")
                .unwrap()
                .fetch
                .is_none()
        );
        let summary = r.summary().join("\n");
        for line in [
            "adaptive.threat.feeds.c2: high risk, 1 entry from https://feeds.example.net/c2.txt (last good download; every 10m), category botnet",
            "adaptive.threat.feeds.late: low risk, 0 entries from https://feeds.example.net/late.txt (no download yet; every 1h)",
            "adaptive.threat.feeds.local: medium risk, 1 entry from feeds/local.txt, category scanner",
        ] {
            assert!(summary.contains(line), "{line}\n{summary}");
        }
        let d = r.decide(&Facts::new("198.51.100.7".parse().unwrap()));
        assert_eq!(
            (d.stage, d.action, d.list),
            (Stage::Threat, Action::Refuse, Some("c2"))
        );
        let e = d.entry.unwrap();
        assert_eq!((&*e.file, e.line), ("https://feeds.example.net/c2.txt", 2));
    }

    #[test]
    fn an_unusable_ca_file_is_an_error_where_it_is_named() {
        let text = RULES.replace("\"ca.pem\"", "\"bad-ca.pem\"");
        let errors = RuleSet::compile("r.toml", &text, &Fetched).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].column), (7, 11));
        assert!(errors[0].message.contains("no certificate"));
    }

    #[test]
    fn urls() {
        for good in [
            "https://feeds.example.net/firehol_level1.netset",
            "HTTPS://a.example:8443/x?y=1",
            "http://127.0.0.1:8080/drop.txt",
            "http://localhost/x",
            "http://[::1]:9/x",
            "https://[2001:db8::1]/x",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("http://feeds.example.net/x", "loopback"),
            ("http://10.0.0.1/x", "loopback"),
            ("ftp://a/x", "expected https"),
            ("feeds/drop.txt", "expected https"),
            ("https:///x", "no host"),
            ("https://user:pw@a.example/x", "credentials"),
            ("https://a.example:0/x", "bad port"),
            ("https://a.example:http/x", "bad port"),
            ("https://a.example/x y", "spaces"),
            ("https://[::1/x", "IPv6"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn counts_and_judgement() {
        let c = count_feed("# comment\n192.0.2.1\n198.51.100.0/24 ; x\n\nnot an ip\n");
        assert_eq!(
            c,
            FeedCount {
                entries: 2,
                bad_lines: 1,
                lines: 3
            }
        );
        assert!(
            judge_download(&c, None)
                .unwrap_err()
                .contains("1 of its 3 lines")
        );
        let html = count_feed("<html>\n<body>oops</body>\n</html>\n");
        assert!(judge_download(&html, None).is_err());
        let many = count_feed(&"192.0.2.1\n".repeat(20));
        assert_eq!(judge_download(&many, Some(5)), Ok(()));
        let mostly = format!("{}junk\n", "192.0.2.1\n".repeat(20));
        assert_eq!(judge_download(&count_feed(&mostly), None), Ok(()));
        let empty = count_feed("# nothing listed today\n");
        assert_eq!(judge_download(&empty, Some(3)), Ok(()));
        assert!(
            judge_download(&empty, Some(10))
                .unwrap_err()
                .contains("no entries")
        );
        assert_eq!(judge_download(&empty, None), Ok(()));
    }
}
