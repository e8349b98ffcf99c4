//! The live rule set and its reloads. Parsing and compiling happen off the
//! request path (a blocking thread); the new [`RuleSet`] is swapped in whole
//! with arc-swap, so a request sees the old rules or the new ones, never a
//! mix. A bad file is refused and the old rules stay (so is a file that
//! configures no stage: see [`RuleSet::compile`]); a reload that drops
//! sections in force is logged at WARN naming them. Triggers: a change of
//! the file on disk (its directory is watched, since editors and `mv`
//! replace files), SIGHUP, and `POST /api/v1/reload`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use stsgate_rules::{FeedSource, RuleSet, SourceError};

use crate::feeds::{FeedResult, FeedStore};
use crate::metrics::Metrics;

/// The rules in force.
pub struct Rules {
    current: ArcSwap<RuleSet>,
    path: PathBuf,
    metrics: Metrics,
    /// Last good contents of each feed file.
    feeds: Arc<Mutex<HashMap<PathBuf, Arc<str>>>>,
    /// Last good downloads of the URL feeds ([`crate::feeds`]).
    fetched: Arc<FeedStore>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Called at each reload with its trigger (the trusted proxies and the
    /// TLS files reload too).
    also: Mutex<Vec<ReloadHook>>,
    /// When and from what the rules in force were compiled.
    loaded: Mutex<Loaded>,
}

/// When and from what the rules in force were compiled (`GET /api/v1/rules`).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// SHA-256 of the rule file's bytes, lower-case hex.
    pub sha256: String,
    /// `start`, `api`, `admin-ui`, `SIGHUP`, `file change`...
    pub trigger: &'static str,
}

impl Loaded {
    fn now(sha256: String, trigger: &'static str) -> Loaded {
        Loaded {
            at_ms: stsgate_state::now_ms(),
            sha256,
            trigger,
        }
    }
}

/// A hook run at the start of every reload, with its trigger.
type ReloadHook = Box<dyn Fn(&'static str) + Send + Sync>;

/// Reads threat feeds next to the rule file; a feed that cannot be read
/// keeps its last good contents (logged and counted).
struct FileFeeds<'a> {
    base: &'a Path,
    cache: &'a Mutex<HashMap<PathBuf, Arc<str>>>,
    fetched: &'a FeedStore,
    metrics: &'a Metrics,
}

impl FeedSource for FileFeeds<'_> {
    fn feed(&self, name: &str, path: &str) -> Result<(String, Arc<str>), String> {
        self.metrics.feed_seen(name);
        let full = self.base.join(path);
        let shown = full.display().to_string();
        match std::fs::read_to_string(&full) {
            Ok(text) => {
                let text: Arc<str> = Arc::from(text);
                let before = self
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(full, text.clone());
                let result = match before {
                    Some(b) if b == text => FeedResult::NotModified,
                    _ => FeedResult::Success,
                };
                self.metrics.feed_reload(name, result);
                Ok((shown, text))
            }
            Err(e) => {
                self.metrics.feed_failures.inc();
                self.metrics.feed_reload(name, FeedResult::Failure);
                match self
                    .cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&full)
                {
                    Some(last) => {
                        tracing::warn!(feed = %shown, error = %e, "threat feed unreadable: keeping its last good contents");
                        Ok((shown, last.clone()))
                    }
                    None => Err(format!("cannot read threat feed {shown}: {e}")),
                }
            }
        }
    }

    fn fetched(&self, name: &str, url: &str) -> Option<Arc<str>> {
        self.fetched.get(name, url)
    }

    fn ca_file(&self, path: &str) -> Result<(), String> {
        let full = self.base.join(path);
        crate::tls::load_certs(&full)
            .map(drop)
            .map_err(|e| format!("ca_file: {e:#}"))
    }
}

/// What a reload did.
pub type ReloadResult = Result<Vec<String>, Vec<SourceError>>;

impl Rules {
    /// Loads the rule file for the first time; URL feeds without their
    /// downloads (see [`Rules::load_with_feeds`]).
    pub fn load(path: &Path, metrics: Metrics) -> Result<Rules, Vec<SourceError>> {
        Rules::load_with_feeds(path, metrics, FeedStore::new(None))
    }

    /// Loads the rule file for the first time, URL feeds from `fetched`
    /// (the copies kept in `state.dir`, then what the fetch task downloads).
    pub fn load_with_feeds(
        path: &Path,
        metrics: Metrics,
        fetched: Arc<FeedStore>,
    ) -> Result<Rules, Vec<SourceError>> {
        let feeds = Arc::new(Mutex::new(HashMap::new()));
        let (rules, sha256) = compile_file(path, &feeds, &fetched, &metrics)?;
        for w in &rules.warnings {
            tracing::warn!("{w}");
        }
        Ok(Rules {
            current: ArcSwap::from_pointee(rules),
            path: path.to_path_buf(),
            metrics,
            feeds,
            fetched,
            reloading: tokio::sync::Mutex::new(()),
            also: Mutex::new(Vec::new()),
            loaded: Mutex::new(Loaded::now(sha256, "start")),
        })
    }

    /// When and from what the rules in force were compiled.
    pub fn loaded(&self) -> Loaded {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The URL feeds' last good downloads.
    pub fn feeds(&self) -> &Arc<FeedStore> {
        &self.fetched
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Has `f` called at the start of every reload (hooks add up).
    pub fn also_on_reload(&self, f: impl Fn(&'static str) + Send + Sync + 'static) {
        self.also
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the rule file; on error the old rules stay. `trigger` is logged.
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> ReloadResult {
        for also in self.also.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            also(trigger);
        }
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile_file(&this.path, &this.feeds, &this.fetched, &this.metrics)
        })
        .await
        .unwrap_or_else(|e| {
            Err(vec![SourceError::whole_file(
                self.path.display().to_string(),
                format!("reload failed: {e}"),
            )])
        });
        match compiled {
            Ok((rules, sha256)) => {
                *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) =
                    Loaded::now(sha256, trigger);
                let summary = rules.summary();
                for w in &rules.warnings {
                    tracing::warn!("{w}");
                }
                let kept = rules.active_sections();
                let old = self.current.swap(Arc::new(rules));
                let removed: Vec<&str> = old
                    .active_sections()
                    .into_iter()
                    .filter(|s| !kept.contains(s))
                    .collect();
                // The old set may be large: free it off the async threads.
                tokio::task::spawn_blocking(move || drop(old));
                self.metrics.reload(true);
                if removed.is_empty() {
                    tracing::info!(trigger, rules = %self.path.display(), "rules reloaded");
                } else {
                    tracing::warn!(
                        trigger,
                        rules = %self.path.display(),
                        removed = %removed.join(", "),
                        "rules reloaded without sections that were in force: {}",
                        removed.join(", ")
                    );
                }
                Ok(summary)
            }
            Err(errors) => {
                self.metrics.reload(false);
                for e in &errors {
                    tracing::error!(trigger, "rule reload refused, old rules kept: {e}");
                }
                Err(errors)
            }
        }
    }

    /// Reloads when the rule file or a threat feed changes on disk, until
    /// `shutdown` resolves. Their directories are watched (editors and `mv`
    /// replace files), and every second each file's identity (inode, size,
    /// modification time, following symlinks) is compared with the last
    /// load, which also catches Kubernetes ConfigMap updates (a symlink swap
    /// that directory watches cannot follow). Debounced; the watch list is
    /// renewed after each reload, so feeds added later are watched too.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let mut files = self.watched_files();
        let mut seen = fingerprints(&files).await;
        let mut _watcher = watch_dirs(&files, tx.clone());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rx.recv() => {}
                _ = tick.tick() => {}
            }
            if fingerprints(&files).await == seen {
                continue;
            }
            // Let a burst of writes (editor save, mv, ConfigMap swap) settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let _ = self.reload("file change").await;
            files = self.watched_files();
            seen = fingerprints(&files).await;
            _watcher = watch_dirs(&files, tx.clone());
        }
    }

    /// The rule file and every feed the last compile read.
    fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(
            self.feeds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        files
    }
}

/// What identifies a file's contents cheaply: `None` when it cannot be read.
type Fingerprint = Option<(u64, u64, u64, std::time::SystemTime)>;

pub(crate) async fn fingerprints(files: &[PathBuf]) -> Vec<Fingerprint> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        out.push(tokio::fs::metadata(f).await.ok().map(|m| {
            (
                m.dev(),
                m.ino(),
                m.len(),
                m.modified().unwrap_or(std::time::UNIX_EPOCH),
            )
        }));
    }
    out
}

/// Watches the directories of `files`; any event there wakes the watch loop.
pub(crate) fn watch_dirs(
    files: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the rule file's directory: changes are seen within a second"))
    .ok()?;
    let mut dirs: Vec<&Path> = files
        .iter()
        .filter_map(|p| p.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch directory");
        }
    }
    Some(watcher)
}

fn compile_file(
    path: &Path,
    feeds: &Mutex<HashMap<PathBuf, Arc<str>>>,
    fetched: &FeedStore,
    metrics: &Metrics,
) -> Result<(RuleSet, String), Vec<SourceError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![SourceError::whole_file(
            &shown,
            format!("cannot read the rule file: {e}"),
        )]
    })?;
    let sha256 = ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = path.parent().unwrap_or(Path::new("."));
    let rules = RuleSet::compile(
        &shown,
        &text,
        &FileFeeds {
            base,
            cache: feeds,
            fetched,
            metrics,
        },
    )?;
    Ok((rules, sha256))
}
