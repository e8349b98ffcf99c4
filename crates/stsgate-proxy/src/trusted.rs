//! Trusted proxies (`client_ip.trusted_proxies`): the peers whose forwarded
//! headers (and PROXY protocol headers) are believed.
//!
//! Entries are IP notation, or named lists loaded from files:
//! `"@file:exchange-online.json"` (relative to the config's directory) in
//! the format of Microsoft's published endpoints data (a JSON array of
//! endpoint sets; only their `ips` are read), optionally only the sets of one
//! service area (`"@file:microsoft-365.json#Exchange"`), or a plain list (one
//! entry a line, `#` comments).
//!
//! The set is hot reloaded: the request path reads it through an
//! [`ArcSwap`]; [`Reloader`] re-reads the config's `trusted_proxies` and the
//! list files when they change on disk and whenever the rules reload
//! (SIGHUP, `POST /api/v1/reload`). A list that no longer reads or parses
//! keeps its last good contents (logged at ERROR and counted in
//! `stsgate_trusted_list_failures_total`); a config that no longer validates
//! keeps the whole set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use serde::Deserialize;
use stsgate_rules::ip::parse_entry;
use stsgate_rules::{IpSet, SourceError, SourceText};
use toml::Spanned;

/// The prefix of a named list in `trusted_proxies`.
pub const FILE_PREFIX: &str = "@file:";
/// Largest list file read.
pub const MAX_LIST_BYTES: u64 = 16 << 20;

/// A compiled set of trusted proxies: the config's own entries and each
/// list file's.
#[derive(Debug, Default)]
pub struct TrustedSet {
    sets: Vec<Arc<IpSet>>,
    files: Vec<PathBuf>,
}

impl TrustedSet {
    /// A set of IP notation only.
    pub fn from_set(set: IpSet) -> TrustedSet {
        TrustedSet {
            sets: vec![Arc::new(set)],
            files: Vec::new(),
        }
    }

    /// Is `ip` (canonical) a trusted proxy?
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.sets.iter().any(|s| s.contains(ip))
    }

    /// How many patterns, all sources together.
    pub fn len(&self) -> usize {
        self.sets.iter().map(|s| s.len()).sum()
    }

    /// True when nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list files it was read from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// The trusted proxies in force, shared by every clone (the config's copy,
/// each worker's, the reloader's).
#[derive(Clone, Default)]
pub struct TrustedProxies {
    live: Arc<ArcSwap<TrustedSet>>,
}

impl std::fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.live.load();
        f.debug_struct("TrustedProxies")
            .field("patterns", &set.len())
            .field("files", &set.files)
            .finish()
    }
}

impl TrustedProxies {
    /// Starts with `set`.
    pub fn new(set: TrustedSet) -> TrustedProxies {
        TrustedProxies {
            live: Arc::new(ArcSwap::from_pointee(set)),
        }
    }

    /// The set in force now (load once per request, then ask it).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<TrustedSet>> {
        self.live.load()
    }

    /// The set in force now, as an owned handle.
    pub fn load_full(&self) -> Arc<TrustedSet> {
        self.live.load_full()
    }

    /// Is `ip` (canonical) a trusted proxy now?
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.live.load().contains(ip)
    }

    fn store(&self, set: Arc<TrustedSet>) {
        self.live.store(set);
    }
}

/// The last good contents of each list file, for reloads to fall back on,
/// and what fell back during the last compile.
#[derive(Default)]
pub struct LastGood {
    lists: Mutex<HashMap<String, Arc<IpSet>>>,
    fell_back: Mutex<Vec<String>>,
}

impl LastGood {
    fn take_fallbacks(&self) -> Vec<String> {
        std::mem::take(&mut *self.fell_back.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Compiles `trusted_proxies` as written in the config at `path` (whose
/// text is `text`); list files are relative to `base`. With `last_good`, a
/// list file that fails keeps its last good contents (noted in it);
/// without, it is an error.
pub fn compile(
    path: &str,
    text: &str,
    items: &[Spanned<String>],
    base: &Path,
    last_good: Option<&LastGood>,
) -> Result<TrustedSet, Vec<SourceError>> {
    let src = SourceText::new(path, text);
    let mut errors = Vec::new();
    let (inline, named): (Vec<_>, Vec<_>) = items
        .iter()
        .cloned()
        .partition(|i| !i.get_ref().trim_start().starts_with('@'));
    let mut out = TrustedSet::default();
    match stsgate_rules::lists::ip_set(path, text, &inline) {
        Ok(set) => out.sets.push(Arc::new(set)),
        Err(mut e) => errors.append(&mut e),
    }
    for item in &named {
        let value = item.get_ref().trim();
        let Some(spec) = value.strip_prefix(FILE_PREFIX) else {
            errors.push(src.error(
                &item.span(),
                format!("unknown named list {value:?}: write \"@file:PATH\" (a file of addresses, or Microsoft's endpoints JSON; \"@file:PATH#Area\" for one serviceArea)"),
            ));
            continue;
        };
        let (file, area) = match spec.rsplit_once('#') {
            Some((file, area)) if !area.is_empty() => (file, Some(area)),
            _ => (spec, None),
        };
        if file.is_empty() {
            errors.push(src.error(&item.span(), "\"@file:\" names no file"));
            continue;
        }
        let full = base.join(file);
        let key = value.to_string();
        match read_list(&full, area) {
            Ok(set) => {
                let set = Arc::new(set);
                if let Some(lg) = last_good {
                    lock(&lg.lists).insert(key, set.clone());
                }
                out.sets.push(set);
            }
            Err(list_errors) => {
                let kept = last_good.and_then(|lg| lock(&lg.lists).get(&key).cloned());
                match (kept, last_good) {
                    (Some(set), Some(lg)) => {
                        lock(&lg.fell_back).extend(list_errors.iter().map(|e| {
                            if e.path.is_empty() {
                                e.message.clone()
                            } else {
                                e.to_string()
                            }
                        }));
                        out.sets.push(set);
                    }
                    _ => {
                        if list_errors
                            .iter()
                            .all(|e| e.path != full.display().to_string())
                        {
                            // Unreadable: say so where the config names it.
                            errors.extend(list_errors.into_iter().map(|e| {
                                src.error(
                                    &item.span(),
                                    format!("trusted proxy list {value:?}: {}", e.message),
                                )
                            }));
                        } else {
                            errors.extend(list_errors);
                        }
                    }
                }
            }
        }
        out.files.push(full);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads and compiles one list file. A file that cannot be read is an
/// error without a position in it (path `""`); parse errors are positioned
/// in the file.
fn read_list(file: &Path, area: Option<&str>) -> Result<IpSet, Vec<SourceError>> {
    let unreadable = |message: String| vec![SourceError::whole_file("", message)];
    let meta = std::fs::metadata(file)
        .map_err(|e| unreadable(format!("cannot read {}: {e}", file.display())))?;
    if meta.len() > MAX_LIST_BYTES {
        return Err(unreadable(format!(
            "{} is larger than {} MiB",
            file.display(),
            MAX_LIST_BYTES >> 20
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| unreadable(format!("cannot read {}: {e}", file.display())))?;
    parse_list(&file.display().to_string(), &text, area)
}

/// One endpoint set of Microsoft's endpoints web service; other keys ignored.
#[derive(Debug, Deserialize)]
struct EndpointSet {
    #[serde(rename = "serviceArea")]
    service_area: Option<String>,
    #[serde(default)]
    ips: Vec<String>,
}

/// Compiles a list file's text: Microsoft's endpoints JSON (it starts with
/// `[`) or one entry a line. `area` keeps only that `serviceArea` (JSON).
pub fn parse_list(shown: &str, text: &str, area: Option<&str>) -> Result<IpSet, Vec<SourceError>> {
    let src = SourceText::new(shown, text);
    let mut patterns = Vec::new();
    let mut errors = Vec::new();
    let json = text.trim_start().starts_with(['[', '{']);
    if json {
        let sets: Vec<EndpointSet> = serde_json::from_str(text).map_err(|e| {
            let offset = offset_of(text, e.line(), e.column());
            vec![src.error_at(
                offset,
                format!("not Microsoft's endpoints data (a JSON array of endpoint sets with \"ips\"): {e}"),
            )]
        })?;
        // Positions: each address is found after the previous one.
        let mut cursor = 0;
        for set in sets.iter().filter(|s| {
            area.is_none_or(|a| {
                s.service_area
                    .as_deref()
                    .is_some_and(|sa| sa.eq_ignore_ascii_case(a))
            })
        }) {
            for ip in &set.ips {
                let quoted = format!("\"{ip}\"");
                let at = text[cursor..].find(&quoted).map_or(0, |i| cursor + i + 1);
                cursor = at.max(cursor);
                match parse_entry(ip) {
                    Ok(items) => patterns.extend(items.into_iter().map(|(_, _, p)| (p, 0))),
                    Err((off, m)) => errors.push(src.error_at(at + off, m)),
                }
            }
        }
    } else {
        let mut line_start = 0;
        for line in text.split_inclusive('\n') {
            let content = line.split('#').next().unwrap_or("");
            let lead = content.len() - content.trim_start().len();
            let item = content.trim();
            if !item.is_empty() {
                match parse_entry(item) {
                    Ok(items) => patterns.extend(items.into_iter().map(|(_, _, p)| (p, 0))),
                    Err((off, m)) => errors.push(src.error_at(line_start + lead + off, m)),
                }
            }
            line_start += line.len();
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    if patterns.is_empty() {
        let what = match (json, area) {
            (true, Some(a)) => format!("no \"ips\" for serviceArea {a:?}"),
            (true, None) => "no \"ips\"".to_string(),
            (false, _) => "no entries".to_string(),
        };
        return Err(vec![src.error_at(
            0,
            format!("{what}: an empty trusted proxy list is refused (a failed download?)"),
        )]);
    }
    Ok(IpSet::build(patterns))
}

/// The byte offset of a 1-based line and column (serde_json's).
fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (start + column.saturating_sub(1)).min(text.len())
}

/// Re-reads `trusted_proxies` and its list files, and swaps the new set in.
pub struct Reloader {
    config: PathBuf,
    live: TrustedProxies,
    last_good: LastGood,
    failures: IntCounter,
    reloading: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The reloader of `config`'s trusted proxies; `failures` counts lists
    /// and configs that failed (their last good contents kept).
    pub fn new(config: &crate::Config, failures: IntCounter) -> Arc<Reloader> {
        let reloader = Reloader {
            config: config.path.clone(),
            live: config.client_ip.trusted_proxies.clone(),
            last_good: LastGood::default(),
            failures,
            reloading: tokio::sync::Mutex::new(()),
        };
        // Remember what the lists hold now, for a later failure to fall back on.
        let _ = crate::Config::load_with(&reloader.config, Some(&reloader.last_good));
        reloader.last_good.take_fallbacks();
        Arc::new(reloader)
    }

    /// Re-reads and swaps; on error the set in force stays. `trigger` is logged.
    pub async fn reload(
        self: &Arc<Self>,
        trigger: &'static str,
    ) -> Result<usize, Vec<SourceError>> {
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::Config::load_with(&this.config, Some(&this.last_good))
        })
        .await
        .unwrap_or_else(|e| Err(vec![SourceError::whole_file("", e.to_string())]));
        for stale in self.last_good.take_fallbacks() {
            self.failures.inc();
            tracing::error!(
                trigger,
                "trusted proxy list refused, its last good contents kept: {stale}"
            );
        }
        match loaded {
            Ok(config) => {
                let set = config.client_ip.trusted_proxies.load_full();
                let n = set.len();
                self.live.store(set);
                tracing::info!(trigger, patterns = n, "trusted proxies reloaded");
                Ok(n)
            }
            Err(errors) => {
                self.failures.inc();
                for e in &errors {
                    tracing::error!(
                        trigger,
                        "trusted proxies not reloaded, the set in force kept: {e}"
                    );
                }
                Err(errors)
            }
        }
    }

    /// Reloads when the config file or a list file changes on disk (the
    /// same directory watch and one-second fingerprint check as the rules),
    /// until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let mut files = self.watched_files();
        let mut seen = crate::reload::fingerprints(&files).await;
        let mut _watcher = crate::reload::watch_dirs(&files, tx.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rx.recv() => {}
                _ = tick.tick() => {}
            }
            if crate::reload::fingerprints(&files).await == seen {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let _ = self.reload("file change").await;
            files = self.watched_files();
            seen = crate::reload::fingerprints(&files).await;
            _watcher = crate::reload::watch_dirs(&files, tx.clone());
        }
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.config.clone()];
        files.extend(self.live.load().files.iter().cloned());
        files
    }
}

/// Sets up hot reload of the trusted proxies of `config`: with every rule
/// reload (SIGHUP, the API, a rule file change), and when the config file
/// or a list file changes. The returned future watches the files until
/// `shutdown` resolves.
pub fn hot_reload(
    config: &crate::Config,
    rules: &crate::reload::Rules,
    metrics: &crate::metrics::Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let reloader = Reloader::new(config, metrics.trusted_list_failures.clone());
    let on_reload = reloader.clone();
    rules.also_on_reload(move |trigger| {
        let r = on_reload.clone();
        tokio::spawn(async move {
            let _ = r.reload(trigger).await;
        });
    });
    reloader.watch(shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ENDPOINTS: &str = r#"[
  {"id": 1, "serviceArea": "Exchange", "serviceAreaDisplayName": "Exchange Online",
   "urls": ["outlook.office.com"], "ips": ["13.107.6.152/31", "2603:1006::/40"],
   "tcpPorts": "80,443", "expressRoute": true, "category": "Optimize", "required": true},
  {"id": 2, "serviceArea": "Exchange", "urls": ["smtp.office365.com"], "tcpPorts": "587",
   "expressRoute": false, "category": "Allow", "required": true},
  {"id": 46, "serviceArea": "Common", "ips": ["52.108.0.0/14"], "tcpPorts": "443",
   "expressRoute": true, "category": "Allow", "required": true}
]"#;

    #[test]
    fn endpoints_json_all_or_one_area() {
        let all = parse_list("m.json", ENDPOINTS, None).unwrap();
        assert!(all.contains(ip("13.107.6.153")));
        assert!(all.contains(ip("2603:1006::1")));
        assert!(all.contains(ip("52.108.1.1")));
        let exchange = parse_list("m.json", ENDPOINTS, Some("exchange")).unwrap();
        assert!(exchange.contains(ip("13.107.6.152")));
        assert!(!exchange.contains(ip("52.108.1.1")));
        assert!(!exchange.contains(ip("13.107.6.154")));
    }

    #[test]
    fn endpoints_json_errors_are_positioned() {
        let e = parse_list(
            "m.json",
            "[{\"ips\": [\"1.2.3.4\",\n \"1.2.3.999\"]}]",
            None,
        )
        .unwrap_err();
        assert_eq!(
            e[0].to_string().split(": ").next(),
            Some("m.json:2:3"),
            "{e:?}"
        );
        let e = parse_list("m.json", "[{\"ips\": [1]}]", None).unwrap_err();
        assert!(e[0].to_string().starts_with("m.json:1:"), "{e:?}");
        assert!(e[0].message.contains("endpoints data"), "{e:?}");
        let e = parse_list("m.json", "{\"error\": \"throttled\"}", None).unwrap_err();
        assert!(e[0].message.contains("endpoints data"), "{e:?}");
        let e = parse_list("m.json", ENDPOINTS, Some("Skype")).unwrap_err();
        assert!(e[0].message.contains("no \"ips\" for serviceArea"), "{e:?}");
        assert!(parse_list("m.json", "[]", None).is_err());
    }

    #[test]
    fn plain_lists() {
        let set = parse_list(
            "p.txt",
            "# Exchange Online\n  40.92.0.0/15   # EOP\n\n2603:1006::/40\n10.1.*.*\n",
            None,
        )
        .unwrap();
        assert!(set.contains(ip("40.93.1.1")));
        assert!(set.contains(ip("2603:1006::5")));
        assert!(set.contains(ip("10.1.2.3")));
        let e = parse_list("p.txt", "1.1.1.1\n  bogus\n", None).unwrap_err();
        assert!(
            e[0].to_string().starts_with("p.txt:2:3: invalid IP entry"),
            "{e:?}"
        );
        assert!(parse_list("p.txt", "# nothing\n\n", None).is_err());
        assert!(parse_list("p.txt", "", None).is_err());
    }

    fn items(text: &str) -> Vec<Spanned<String>> {
        #[derive(Deserialize)]
        struct T {
            t: Vec<Spanned<String>>,
        }
        toml::from_str::<T>(text).unwrap().t
    }

    #[test]
    fn config_entries_and_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("eo.json"), ENDPOINTS).unwrap();
        std::fs::write(dir.path().join("waps.txt"), "192.0.2.10\n").unwrap();
        let text = r#"t = ["10.0.0.0/8", "@file:eo.json#Exchange", "@file:waps.txt"]"#;
        let set = compile("c.toml", text, &items(text), dir.path(), None).unwrap();
        for yes in ["10.1.1.1", "13.107.6.152", "192.0.2.10"] {
            assert!(set.contains(ip(yes)), "{yes}");
        }
        assert!(!set.contains(ip("52.108.1.1")));
        assert_eq!(set.files().len(), 2);

        let text = r#"t = ["@file:missing.txt", "@web:x", "@file:"]"#;
        let e = compile("c.toml", text, &items(text), dir.path(), None).unwrap_err();
        let e: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(
            e[0].starts_with("c.toml:1:6: trusted proxy list \"@file:missing.txt\": cannot read"),
            "{e:?}"
        );
        assert!(e[1].starts_with("c.toml:1:27: unknown named list"), "{e:?}");
        assert!(
            e[2].starts_with("c.toml:1:37: \"@file:\" names no file"),
            "{e:?}"
        );

        std::fs::write(dir.path().join("bad.txt"), "1.1.1.1\nnope\n").unwrap();
        let text = r#"t = ["@file:bad.txt"]"#;
        let e = compile("c.toml", text, &items(text), dir.path(), None).unwrap_err();
        assert!(
            e[0].to_string().contains("bad.txt:2:1: invalid IP entry"),
            "{e:?}"
        );
    }

    #[test]
    fn a_broken_list_keeps_its_last_good_contents() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("eo.txt");
        std::fs::write(&list, "203.0.113.0/24\n").unwrap();
        let text = r#"t = ["@file:eo.txt", "10.0.0.1"]"#;
        let lg = LastGood::default();
        compile("c.toml", text, &items(text), dir.path(), Some(&lg)).unwrap();
        assert!(lg.take_fallbacks().is_empty());
        std::fs::write(&list, "").unwrap();
        let set = compile("c.toml", text, &items(text), dir.path(), Some(&lg)).unwrap();
        assert!(set.contains(ip("203.0.113.9")), "last good kept");
        assert!(set.contains(ip("10.0.0.1")));
        assert_eq!(lg.take_fallbacks().len(), 1);
        // Without a last good version it is an error.
        assert!(compile("c.toml", text, &items(text), dir.path(), None).is_err());
    }

    #[test]
    fn live_set_swaps() {
        let live = TrustedProxies::new(TrustedSet::default());
        let other = live.clone();
        assert!(!other.contains(ip("10.0.0.1")));
        let text = r#"t = ["10.0.0.0/8"]"#;
        live.store(Arc::new(
            compile("c.toml", text, &items(text), Path::new("."), None).unwrap(),
        ));
        assert!(other.contains(ip("10.0.0.1")), "clones share the set");
    }
}
