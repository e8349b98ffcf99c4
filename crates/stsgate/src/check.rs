//! `stsgate check`: everything `run` would refuse, in one run. The config
//! (every error, not only the first), the rule file it names (compiled even
//! when the config has errors, if it names one), the files the config names
//! (the same preflight as `run`, each problem at the key that names the
//! file), and what the two say together. Each message once. Exit 0 with a
//! summary, or 1 with every error as `PATH:LINE:COLUMN: message`; `--json`
//! prints one object instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use stsgate_proxy::Config;
use stsgate_proxy::metrics::Metrics;
use stsgate_proxy::reload::Rules;
use stsgate_rules::SourceError;

/// `stsgate check` arguments.
#[derive(clap::Args)]
pub struct Args {
    /// The main config file.
    #[arg(long, short)]
    config: PathBuf,
    /// Print one JSON object: `ok`, `config`, `rules`, `errors` and
    /// `warnings` (each with `path`, `line`, `column`, `message`), `summary`.
    #[arg(long)]
    json: bool,
}

/// What a check found.
#[derive(Default)]
struct Report {
    rules: Option<PathBuf>,
    errors: Vec<SourceError>,
    warnings: Vec<SourceError>,
    summary: Vec<String>,
}

pub fn check(args: &Args) -> ExitCode {
    let report = run(&args.config);
    let ok = report.errors.is_empty();
    if args.json {
        let list = |v: &[SourceError]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|e| {
                    serde_json::json!({
                        "path": e.path, "line": e.line, "column": e.column, "message": e.message,
                    })
                })
                .collect()
        };
        let out = serde_json::json!({
            "ok": ok,
            "config": args.config.display().to_string(),
            "rules": report.rules.as_ref().map(|r| r.display().to_string()),
            "errors": list(&report.errors),
            "warnings": list(&report.warnings),
            "summary": report.summary,
        });
        println!("{out}");
    } else if ok {
        for line in &report.summary {
            println!("{line}");
        }
        for w in &report.warnings {
            println!("warning: {w}");
        }
    } else {
        crate::print_errors(&report.errors);
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run(path: &Path) -> Report {
    let mut report = Report::default();
    let shown = path.display().to_string();
    let config = match std::fs::read_to_string(path) {
        Ok(text) => {
            let (config, errors) = Config::parse_all(&shown, &text);
            report.errors.extend(errors);
            config
        }
        Err(e) => {
            report.errors.push(SourceError::whole_file(
                &shown,
                format!("cannot read the config file: {e}"),
            ));
            None
        }
    };
    report.rules = match &config {
        Some(c) => Some(c.rules.clone()),
        None => rules_named_in(path),
    };
    let rules = report.rules.as_deref().and_then(|r| {
        // URL threat feeds as the gate would start with them: their copies in state.dir.
        let feeds =
            stsgate_proxy::feeds::FeedStore::new(config.as_ref().map(|c| c.state.dir.as_path()));
        match Rules::load_with_feeds(r, Metrics::new(), feeds) {
            Ok(rules) => Some(rules.current()),
            Err(errors) => {
                report.errors.extend(errors);
                None
            }
        }
    });
    if let Some(config) = &config {
        if let Err(errors) = stsgate_proxy::preflight::open(config) {
            report.errors.extend(errors);
        }
        if let Err(errors) = stsgate_proxy::alerts::AlertSender::check(config) {
            report.errors.extend(errors);
        }
        // The password file and the ldaps trust roots (no connection made).
        if let Err(errors) = stsgate_proxy::directory::open(config, Metrics::new().registry()) {
            report.errors.extend(errors);
        }
    }
    if let Some(rules) = &rules {
        report.warnings.extend(rules.warnings.iter().cloned());
        if let Some(config) = &config {
            let found = stsgate_proxy::preflight::rules_with_config(config, rules);
            report.errors.extend(found.errors);
            report.warnings.extend(found.warnings);
            report
                .errors
                .extend(stsgate_proxy::directory::rules_with_config(config, rules));
        }
    }
    dedup(&mut report.errors, path);
    dedup(&mut report.warnings, path);
    if !report.errors.is_empty() {
        return report;
    }
    if let (Some(config), Some(rules)) = (&config, &rules) {
        report.summary.push(format!(
            "config {}: listen {}{}, upstream {}, admin {}",
            config.path.display(),
            config
                .listen
                .addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            if config.listen.tls.is_some() {
                " (TLS)"
            } else {
                ""
            },
            config.upstream.url,
            config.admin.addr
        ));
        if let Some(d) = &config.directory {
            report.summary.push(format!(
                "directory {}: base {}, timeout {}, cache_for {}, on_error {}",
                d.url,
                d.base_dn,
                humantime::format_duration(d.timeout),
                humantime::format_duration(d.cache_for),
                d.on_error.as_str()
            ));
        }
        report
            .summary
            .push(format!("rules {}:", config.rules.display()));
        report
            .summary
            .extend(rules.summary().into_iter().map(|l| format!("  {l}")));
    }
    report
}

/// The rule file a config that did not validate names, when it can be
/// read at all: so its errors are reported in the same run.
fn rules_named_in(config: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let rules = Path::new(table.get("rules")?.as_str()?);
    if table.contains_key("request_blocking") {
        return None; // a rule file handed over as the config: said already
    }
    Some(if rules.is_absolute() {
        rules.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new("")).join(rules)
    })
}

/// Each message once; the config's first, then by file and position.
fn dedup(v: &mut Vec<SourceError>, config: &Path) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|e| seen.insert(e.to_string()));
    let config = config.display().to_string();
    v.sort_by_key(|e| (e.path != config, e.path.clone(), e.line, e.column));
}
