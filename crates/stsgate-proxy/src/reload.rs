//! The live rule set and its reloads. Parsing and compiling happen off the
//! request path (a blocking thread); the new [`RuleSet`] is swapped in whole
//! with arc-swap, so a request sees the old rules or the new ones, never a
//! mix. A bad file is refused and the old rules stay. Triggers: a change of
//! the file on disk (its directory is watched, since editors and `mv`
//! replace files), SIGHUP, and `POST /api/v1/reload`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use stsgate_rules::{FeedSource, RuleSet, SourceError};

use crate::metrics::Metrics;

/// The rules in force.
pub struct Rules {
    current: ArcSwap<RuleSet>,
    path: PathBuf,
    metrics: Metrics,
    /// Last good contents of each feed file.
    feeds: Arc<Mutex<HashMap<PathBuf, Arc<str>>>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// Reads threat feeds next to the rule file; a feed that cannot be read
/// keeps its last good contents (logged and counted).
struct FileFeeds<'a> {
    base: &'a Path,
    cache: &'a Mutex<HashMap<PathBuf, Arc<str>>>,
    metrics: &'a Metrics,
}

impl FeedSource for FileFeeds<'_> {
    fn feed(&self, path: &str) -> Result<(String, Arc<str>), String> {
        let full = self.base.join(path);
        let shown = full.display().to_string();
        match std::fs::read_to_string(&full) {
            Ok(text) => {
                let text: Arc<str> = Arc::from(text);
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(full, text.clone());
                Ok((shown, text))
            }
            Err(e) => {
                self.metrics.feed_failures.inc();
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
}

/// What a reload did.
pub type ReloadResult = Result<Vec<String>, Vec<SourceError>>;

impl Rules {
    /// Loads the rule file for the first time.
    pub fn load(path: &Path, metrics: Metrics) -> Result<Rules, Vec<SourceError>> {
        let feeds = Arc::new(Mutex::new(HashMap::new()));
        let rules = compile_file(path, &feeds, &metrics)?;
        for w in &rules.warnings {
            tracing::warn!("{w}");
        }
        Ok(Rules {
            current: ArcSwap::from_pointee(rules),
            path: path.to_path_buf(),
            metrics,
            feeds,
            reloading: tokio::sync::Mutex::new(()),
        })
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The rule file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reloads the rule file; on error the old rules stay. `trigger` is logged.
    pub async fn reload(self: &Arc<Self>, trigger: &'static str) -> ReloadResult {
        let _one_at_a_time = self.reloading.lock().await;
        let this = self.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            compile_file(&this.path, &this.feeds, &this.metrics)
        })
        .await
        .unwrap_or_else(|e| {
            Err(vec![SourceError {
                path: self.path.display().to_string(),
                line: 1,
                column: 1,
                message: format!("reload failed: {e}"),
            }])
        });
        match compiled {
            Ok(rules) => {
                let summary = rules.summary();
                for w in &rules.warnings {
                    tracing::warn!("{w}");
                }
                let old = self.current.swap(Arc::new(rules));
                // The old set may be large: free it off the async threads.
                tokio::task::spawn_blocking(move || drop(old));
                self.metrics.reload(true);
                tracing::info!(trigger, rules = %self.path.display(), "rules reloaded");
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

    /// Watches the rule file's directory (and its feeds' directories) and
    /// reloads on change, debounced. Runs until `shutdown` resolves.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watched: Vec<PathBuf> = vec![self.path.clone()];
        watched.extend(
            self.feeds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned(),
        );
        let names: Vec<PathBuf> = watched.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.kind.is_access() {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|p| names.iter().any(|n| same_file_name(p, n)))
                {
                    let _ = tx.try_send(());
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the rule file; reload with SIGHUP or the API");
                return;
            }
        };
        let mut dirs: Vec<PathBuf> = watched
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in &dirs {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
            }
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                got = rx.recv() => {
                    if got.is_none() { break; }
                    // Let a burst of events (editor save, mv) settle.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.reload("file change").await;
                }
            }
        }
        drop(watcher);
    }
}

fn same_file_name(event_path: &Path, watched: &Path) -> bool {
    event_path.file_name().is_some() && event_path.file_name() == watched.file_name()
}

fn compile_file(
    path: &Path,
    feeds: &Mutex<HashMap<PathBuf, Arc<str>>>,
    metrics: &Metrics,
) -> Result<RuleSet, Vec<SourceError>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![SourceError {
            path: shown.clone(),
            line: 1,
            column: 1,
            message: format!("cannot read the rule file: {e}"),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    RuleSet::compile(
        &shown,
        &text,
        &FileFeeds {
            base,
            cache: feeds,
            metrics,
        },
    )
}
