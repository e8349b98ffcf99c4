//! Live threat feeds: `[[adaptive.threat.feeds]]` with a `url` are fetched
//! by one owned background task, each every `refresh`, with conditional
//! requests (the last ETag as `If-None-Match`, the last `Last-Modified` as
//! `If-Modified-Since`; `304` keeps the list). A download is bounded in size
//! ([`MAX_FEED_BYTES`]) and time (the feed's `timeout`), and replaces the
//! last good list only when it is whole and looks like a feed
//! ([`stsgate_rules::feeds::judge_download`]); anything else keeps the last
//! good list, logged and counted in `stsgate_feed_reloads_total{feed,
//! result="failure"}`. The last good list and its validators are kept in
//! `state.dir/feeds/NAME` (written to a temporary file, then renamed), so a
//! restart without network still has it. A new list reloads the rules the
//! usual way ([`Rules::reload`], compiled off the request path): requests
//! never wait on a download.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use stsgate_rules::feeds::{FeedFetch, count_feed, judge_download};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::reload::Rules;

/// The largest feed download accepted (64 MiB); a bigger body is a failed
/// download. FireHOL's level 1 list is under 100 KiB; a full IPv4 list of
/// single addresses one a line would not fit, and should be a file feed.
pub const MAX_FEED_BYTES: usize = 64 << 20;

/// The directory of `state.dir` that holds the last good downloads.
pub const FEEDS_DIR: &str = "feeds";

/// The first line of a stored download: a comment, so the file is a valid
/// feed file itself.
const HEADER: &str = "# stsgate-feed ";

/// How often the fetch task looks at the rules in force for feeds added,
/// changed or removed.
const RESYNC: Duration = Duration::from_secs(1);

/// What `stsgate_feed_reloads_total{result}` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedResult {
    /// A new list (a download, or a file feed read with new contents).
    Success,
    /// `304`, the same bytes again, or a file feed unchanged.
    NotModified,
    /// Failed: the last good list is kept.
    Failure,
}

impl FeedResult {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            FeedResult::Success => "success",
            FeedResult::NotModified => "not_modified",
            FeedResult::Failure => "failure",
        }
    }
}

/// One URL feed's last good download.
#[derive(Debug, Clone)]
struct Held {
    url: String,
    text: Arc<str>,
    etag: Option<String>,
    last_modified: Option<String>,
    entries: usize,
}

/// The header line of a stored download.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
    fetched_at: String,
}

/// The last good downloads of the URL feeds, in memory and in
/// `state.dir/feeds/`. The rule compiler reads them through the
/// [`stsgate_rules::FeedSource`] of [`crate::reload`].
#[derive(Debug, Default)]
pub struct FeedStore {
    dir: Option<PathBuf>,
    held: Mutex<HashMap<String, Held>>,
    /// The last failure of each feed, until its next good download.
    failing: Mutex<HashMap<String, String>>,
}

/// One URL feed as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedStatus {
    /// The feed's name.
    pub name: String,
    /// Entries in the list in use; `None` while there is none yet.
    pub entries: Option<usize>,
    /// Why the last download failed, until one succeeds.
    pub failing: Option<String>,
}

impl FeedStore {
    /// A store keeping its downloads in `state_dir/feeds/` (only in memory
    /// without a directory).
    pub fn new(state_dir: Option<&Path>) -> Arc<FeedStore> {
        Arc::new(FeedStore {
            dir: state_dir.map(|d| d.join(FEEDS_DIR)),
            ..FeedStore::default()
        })
    }

    /// The last good download of `name` from `url`: in memory, else the copy
    /// on disk (read once). Blocking file I/O: call it off the async threads.
    pub fn get(&self, name: &str, url: &str) -> Option<Arc<str>> {
        self.held(name, url).map(|h| h.text)
    }

    fn held(&self, name: &str, url: &str) -> Option<Held> {
        if let Some(h) = lock(&self.held).get(name).filter(|h| h.url == url) {
            return Some(h.clone());
        }
        let held = self.read_disk(name, url)?;
        lock(&self.held).insert(name.to_string(), held.clone());
        Some(held)
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(name))
    }

    fn read_disk(&self, name: &str, url: &str) -> Option<Held> {
        let path = self.file(name)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(feed = name, file = %path.display(), error = %e, "cannot read the stored copy of a threat feed");
                return None;
            }
        };
        let (first, body) = text.split_once('\n').unwrap_or((&text, ""));
        let stored: Stored = match first
            .strip_prefix(HEADER)
            .map(serde_json::from_str)
            .transpose()
        {
            Ok(Some(stored)) => stored,
            _ => {
                tracing::warn!(feed = name, file = %path.display(), "the stored copy of a threat feed has no stsgate header: ignored");
                return None;
            }
        };
        if stored.url != url {
            tracing::info!(feed = name, stored = %shown(&stored.url), url = %shown(url), "the stored copy of a threat feed is from another URL: ignored");
            return None;
        }
        tracing::info!(feed = name, file = %path.display(), fetched_at = %stored.fetched_at, "threat feed: using the stored copy until the next download");
        Some(Held {
            url: stored.url,
            entries: count_feed(body).entries,
            text: Arc::from(body),
            etag: stored.etag,
            last_modified: stored.last_modified,
        })
    }

    /// Keeps a good download, on disk first (temp file, fsync, rename).
    /// A disk that fails is logged; the list is used all the same.
    fn keep(&self, name: &str, held: Held) {
        if let Some(path) = self.file(name) {
            if let Err(e) = write_atomically(&path, &held) {
                tracing::error!(feed = name, file = %path.display(), error = %e, "cannot store a threat feed's download: a restart without network would not have it");
            }
        }
        lock(&self.held).insert(name.to_string(), held);
    }

    fn failed(&self, name: &str, why: String) {
        lock(&self.failing).insert(name.to_string(), why);
    }

    fn succeeded(&self, name: &str) {
        lock(&self.failing).remove(name);
    }

    /// Each URL feed of `rules`, as `/readyz` reports it.
    pub fn status(&self, rules: &stsgate_rules::RuleSet) -> Vec<FeedStatus> {
        let held = lock(&self.held);
        let failing = lock(&self.failing);
        url_feeds(rules)
            .map(|(name, fetch)| FeedStatus {
                name: name.to_string(),
                entries: held
                    .get(name)
                    .filter(|h| h.url == fetch.url)
                    .map(|h| h.entries),
                failing: failing.get(name).cloned(),
            })
            .collect()
    }
}

/// One line per URL feed for `/readyz`: its list, or why it has none, and
/// the last failure until a download succeeds.
pub fn readyz_lines(rules: &Rules) -> String {
    let mut out = String::new();
    for f in rules.feeds().status(&rules.current()) {
        let list = match f.entries {
            Some(1) => "1 entry".to_string(),
            Some(n) => format!("{n} entries"),
            None => "no list yet (empty until the first download)".to_string(),
        };
        match &f.failing {
            None => out.push_str(&format!("feed {}: {list}\n", f.name)),
            Some(why) => out.push_str(&format!(
                "feed {}: {list}; last download failed: {why}\n",
                f.name
            )),
        }
    }
    out
}

/// A feed URL as logged: without its query, which may hold an API key.
fn shown(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_atomically(path: &Path, held: &Held) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("feed");
    let tmp = dir.join(format!(".{name}.tmp"));
    let header = serde_json::to_string(&Stored {
        url: held.url.clone(),
        etag: held.etag.clone(),
        last_modified: held.last_modified.clone(),
        fetched_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
    .map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(HEADER.as_bytes())?;
    f.write_all(header.as_bytes())?;
    f.write_all(b"\n")?;
    f.write_all(held.text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    // The rename itself survives a crash once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The URL feeds of a rule set, with how each is fetched.
fn url_feeds(rules: &stsgate_rules::RuleSet) -> impl Iterator<Item = (&str, &FeedFetch)> {
    rules
        .adaptive
        .threat
        .iter()
        .flat_map(|t| t.feeds.iter())
        .filter_map(|f| f.fetch.as_ref().map(|fetch| (f.name.as_str(), fetch)))
}

/// What one download brought.
enum Downloaded {
    /// `304 Not Modified`.
    NotModified,
    /// A whole body.
    Body {
        text: String,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// One feed's schedule in the fetch task.
struct Schedule {
    fetch: FeedFetch,
    next: Instant,
    running: bool,
}

/// Fetches every URL feed of the rules in force, each every `refresh`
/// (the first time at once), until `shutdown` resolves; feeds added,
/// changed or removed by a reload are followed within a second. Downloads
/// run concurrently, one at a time per feed.
pub async fn run(rules: Arc<Rules>, metrics: Metrics, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let store = rules.feeds().clone();
    let mut schedules: HashMap<String, Schedule> = HashMap::new();
    let mut running = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        follow(&mut schedules, &rules.current(), now, &metrics);
        for (name, s) in schedules.iter_mut() {
            if !s.running && s.next <= now {
                s.running = true;
                let (name, fetch) = (name.clone(), s.fetch.clone());
                let (store, base) = (store.clone(), rule_dir(&rules));
                running.spawn(async move {
                    let outcome = fetch_once(&name, &fetch, &store, &base).await;
                    (name, fetch, outcome)
                });
            }
        }
        let wake = schedules
            .values()
            .filter(|s| !s.running)
            .map(|s| s.next)
            .min()
            .map_or(now + RESYNC, |next| next.min(now + RESYNC));
        tokio::select! {
            _ = &mut shutdown => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((name, fetch, outcome)) = done else { continue };
                metrics.feed_reload(&name, outcome);
                if let Some(s) = schedules.get_mut(&name) {
                    s.running = false;
                    // A feed changed meanwhile keeps the time `follow` gave it.
                    if s.fetch == fetch {
                        s.next = Instant::now() + fetch.refresh;
                    }
                }
                if outcome == FeedResult::Success {
                    let _ = rules.reload("feed update").await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    // Downloads in flight are dropped: a stored copy is only ever replaced
    // whole (rename), so none is left half-written.
    running.abort_all();
}

/// Adds feeds new in `rules` (due now), restarts those whose fetch changed,
/// and forgets those gone.
fn follow(
    schedules: &mut HashMap<String, Schedule>,
    rules: &stsgate_rules::RuleSet,
    now: Instant,
    metrics: &Metrics,
) {
    let mut seen = Vec::new();
    for (name, fetch) in url_feeds(rules) {
        seen.push(name);
        match schedules.get_mut(name) {
            Some(s) if s.fetch == *fetch => {}
            Some(s) => {
                // The same name with another URL, refresh or CA: fetch now.
                s.next = if s.fetch.url == fetch.url {
                    s.next.min(now + fetch.refresh)
                } else {
                    now
                };
                s.fetch = fetch.clone();
            }
            None => {
                metrics.feed_seen(name);
                schedules.insert(
                    name.to_string(),
                    Schedule {
                        fetch: fetch.clone(),
                        next: now,
                        running: false,
                    },
                );
            }
        }
    }
    schedules.retain(|name, _| seen.contains(&name.as_str()));
}

fn rule_dir(rules: &Rules) -> PathBuf {
    rules
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Downloads one feed and keeps what is good: the result to count.
async fn fetch_once(
    name: &str,
    fetch: &FeedFetch,
    store: &Arc<FeedStore>,
    base: &Path,
) -> FeedResult {
    let held = {
        let (store, name, url) = (store.clone(), name.to_string(), fetch.url.clone());
        tokio::task::spawn_blocking(move || store.held(&name, &url))
            .await
            .ok()
            .flatten()
    };
    let failed = |why: String| {
        let kept = held.as_ref().map_or(0, |h| h.entries);
        tracing::warn!(feed = name, url = %shown(&fetch.url), error = %why, entries_kept = kept, "threat feed download failed: the last good list is kept");
        store.failed(name, why);
        FeedResult::Failure
    };
    let downloaded =
        match tokio::time::timeout(fetch.timeout, download(fetch, held.as_ref(), base)).await {
            Ok(Ok(d)) => d,
            Ok(Err(why)) => return failed(why),
            Err(_) => return failed(format!("no whole answer within {:?}", fetch.timeout)),
        };
    let (text, etag, last_modified) = match downloaded {
        Downloaded::NotModified => match &held {
            Some(_) => {
                tracing::debug!(feed = name, "threat feed not modified");
                store.succeeded(name);
                return FeedResult::NotModified;
            }
            None => return failed("304 Not Modified, but there is no list to keep".into()),
        },
        Downloaded::Body {
            text,
            etag,
            last_modified,
        } => (text, etag, last_modified),
    };
    let count = count_feed(&text);
    if let Err(why) = judge_download(&count, held.as_ref().map(|h| h.entries)) {
        return failed(why);
    }
    let same = held.as_ref().is_some_and(|h| *h.text == *text);
    let new = Held {
        url: fetch.url.clone(),
        text: Arc::from(text),
        etag,
        last_modified,
        entries: count.entries,
    };
    {
        let (store, name) = (store.clone(), name.to_string());
        let _ = tokio::task::spawn_blocking(move || store.keep(&name, new)).await;
    }
    store.succeeded(name);
    if same {
        tracing::debug!(feed = name, "threat feed downloaded again, unchanged");
        FeedResult::NotModified
    } else {
        tracing::info!(feed = name, url = %shown(&fetch.url), entries = count.entries, skipped_lines = count.bad_lines, "threat feed downloaded: reloading the rules");
        FeedResult::Success
    }
}

/// One conditional GET, bounded in size.
async fn download(
    fetch: &FeedFetch,
    held: Option<&Held>,
    base: &Path,
) -> Result<Downloaded, String> {
    let uri: Uri = fetch.url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let ca_file = fetch.ca_file.as_ref().map(|f| base.join(f));
    let tls = crate::tls::client_config(ca_file.as_deref()).map_err(|e| format!("TLS: {e:#}"))?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(fetch.timeout));
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .timer(TokioTimer::new())
        .build(connector);
    let mut req = Request::get(uri)
        .header(
            header::USER_AGENT,
            concat!("stsgate/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "text/plain, */*;q=0.5");
    if let Some(held) = held.filter(|h| h.url == fetch.url) {
        for (name, value) in [
            (header::IF_NONE_MATCH, &held.etag),
            (header::IF_MODIFIED_SINCE, &held.last_modified),
        ] {
            if let Some(v) = value.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
                req = req.header(name, v);
            }
        }
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = client.request(req).await.map_err(|e| {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        why
    })?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED {
        return Ok(Downloaded::NotModified);
    }
    if status != StatusCode::OK {
        return Err(if status.is_redirection() {
            format!("HTTP {status} (redirects are not followed: configure the final URL)")
        } else {
            format!("HTTP {status}")
        });
    }
    let header_text = |name: header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header_text(header::ETAG);
    let last_modified = header_text(header::LAST_MODIFIED);
    let declared = header_text(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FEED_BYTES as u64) {
        return Err(format!(
            "{} bytes announced, over the {} MiB limit",
            declared.unwrap_or(0),
            MAX_FEED_BYTES >> 20
        ));
    }
    // hyper ends the body with an error when the connection is cut before
    // Content-Length bytes (or the last chunk) arrived.
    let body = Limited::new(resp.into_body(), MAX_FEED_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("over the {} MiB limit", MAX_FEED_BYTES >> 20)
            } else {
                format!("truncated download: {e}")
            }
        })?
        .to_bytes();
    let text = String::from_utf8(Vec::from(body)).map_err(|_| "not UTF-8 text".to_string())?;
    Ok(Downloaded::Body {
        text,
        etag,
        last_modified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(url: &str, text: &str) -> Held {
        Held {
            url: url.into(),
            text: Arc::from(text),
            etag: Some("\"v1\"".into()),
            last_modified: Some("Wed, 25 Nov 2026 10:00:00 GMT".into()),
            entries: count_feed(text).entries,
        }
    }

    #[test]
    fn a_kept_download_is_read_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let url = "https://feeds.example.net/drop.txt";
        let store = FeedStore::new(Some(dir.path()));
        assert!(store.get("drop", url).is_none());
        store.keep("drop", held(url, "192.0.2.1\n198.51.100.0/24\n"));
        let file = std::fs::read_to_string(dir.path().join("feeds/drop")).unwrap();
        assert!(file.starts_with("# stsgate-feed {"), "{file}");
        let again = FeedStore::new(Some(dir.path()));
        let h = again.held("drop", url).unwrap();
        assert_eq!(&*h.text, "192.0.2.1\n198.51.100.0/24\n");
        assert_eq!(h.etag.as_deref(), Some("\"v1\""));
        assert_eq!(h.entries, 2);
        // Another URL under the same name does not use it.
        assert!(
            FeedStore::new(Some(dir.path()))
                .get("drop", "https://other.example/x")
                .is_none()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("feeds"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("drop")]);
    }

    fn url_rules(feeds: &[(&str, &str, &str)]) -> stsgate_rules::RuleSet {
        let mut text = String::from("[request_blocking]\nuse_adaptive = true\n");
        for (name, url, refresh) in feeds {
            text.push_str(&format!(
                "[[adaptive.threat.feeds]]\nname = \"{name}\"\nurl = \"{url}\"\nrefresh = \"{refresh}\"\nrisk = \"high\"\n"
            ));
        }
        stsgate_rules::RuleSet::compile("r.toml", &text, &stsgate_rules::NoFeeds).unwrap()
    }

    #[test]
    fn the_schedule_follows_the_rules() {
        let metrics = Metrics::new();
        let mut s = HashMap::new();
        let t0 = Instant::now();
        let a = "https://a.example/x";
        follow(
            &mut s,
            &url_rules(&[("a", a, "1h"), ("b", a, "1h")]),
            t0,
            &metrics,
        );
        assert_eq!(s.len(), 2);
        assert!(
            s.values().all(|x| x.next == t0 && !x.running),
            "new feeds are due at once"
        );
        for x in s.values_mut() {
            x.next = t0 + Duration::from_secs(3600);
        }
        // a: a shorter refresh brings it closer; b: another URL is due at once; c: new; gone ones forgotten.
        let t1 = t0 + Duration::from_secs(10);
        follow(
            &mut s,
            &url_rules(&[
                ("a", a, "1m"),
                ("b", "https://b.example/y", "1h"),
                ("c", a, "1h"),
            ]),
            t1,
            &metrics,
        );
        assert_eq!(s["a"].next, t1 + Duration::from_secs(60));
        assert_eq!(s["b"].next, t1);
        assert_eq!(s["b"].fetch.url, "https://b.example/y");
        assert_eq!(s["c"].next, t1);
        follow(&mut s, &url_rules(&[("c", a, "1h")]), t1, &metrics);
        assert_eq!(s.keys().collect::<Vec<_>>(), vec!["c"]);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains("stsgate_feed_reloads_total{feed=\"b\",result=\"failure\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_file_without_the_header_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("feeds")).unwrap();
        std::fs::write(dir.path().join("feeds/drop"), "192.0.2.1\n").unwrap();
        assert!(
            FeedStore::new(Some(dir.path()))
                .get("drop", "https://a.example/x")
                .is_none()
        );
    }
}
