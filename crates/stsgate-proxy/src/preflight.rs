//! The files a config names, opened once and checked the same way by
//! `stsgate run` ([`crate::Server::new`]) and `stsgate check`: the listener's
//! certificate and key, the upstream CA file, the GeoIP database and the
//! admin token file. Every problem is reported, each at the line and column
//! where the config names the file (`stsgate.toml:7:12: ...`).
//!
//! Also the checks that need the config and the rules together (a country
//! restriction without a GeoIP database).

use std::path::Path;
use std::sync::Arc;

use stsgate_rules::adaptive::Restricted;
use stsgate_rules::{Country, ListRule, RuleSet, SourceError};

use crate::config::Config;
use crate::geoip::GeoIp;

/// What the files gave.
pub struct Opened {
    /// The listener's certificate (reloadable), when `listen.tls_cert` is set.
    pub tls: Option<Arc<crate::tls::ListenerTls>>,
    /// The country database, when `geoip.country_db` is set.
    pub geoip: Option<Arc<GeoIp>>,
    /// The admin API's bearer token (first line of `admin.token_file`, trimmed).
    pub admin_token: Option<String>,
    /// The read-only token (`admin.read_token_file`).
    pub admin_read_token: Option<String>,
}

/// Opens every file the config names; all problems, positioned at the key
/// that names each file. Messages never hold a file's contents.
pub fn open(config: &Config) -> Result<Opened, Vec<SourceError>> {
    let at = |key: &str, message: String| config.positions.error(&config.path, key, message);
    let mut errors = Vec::new();
    let tls = config.listen.tls.as_ref().and_then(|files| {
        crate::tls::ListenerTls::load(files)
            .map_err(|e| {
                // Which of the two files: the key if the chain reads fine.
                let key = if crate::tls::load_certs(&files.cert).is_ok() {
                    "listen.tls_key"
                } else {
                    "listen.tls_cert"
                };
                errors.push(at(key, format!("listen TLS: {e:#}")));
            })
            .ok()
    });
    if let Some(ca) = &config.upstream.ca_file {
        if let Err(e) = crate::tls::load_certs(ca) {
            errors.push(at("upstream.ca_file", format!("upstream.ca_file: {e:#}")));
        }
    }
    let geoip = config.geoip.country_db.as_deref().and_then(|db| {
        GeoIp::open(db)
            .map(Arc::new)
            .map_err(|e| {
                let why = e.root_cause();
                let message = format!("geoip.country_db: cannot open {}: {why}", db.display());
                errors.push(at("geoip.country_db", message));
            })
            .ok()
    });
    let admin_token = config
        .admin
        .token_file
        .as_deref()
        .and_then(|path| match read_token("admin.token_file", path) {
            Ok(token) => Some(token),
            Err(message) => {
                errors.push(at("admin.token_file", message));
                None
            }
        });
    let key = "admin.read_token_file";
    let admin_read_token = config
        .admin
        .read_token_file
        .as_deref()
        .and_then(|path| match read_token(key, path) {
            Ok(token) if config.admin.token_file.is_none() => {
                errors.push(at(key, format!("{key} needs admin.token_file")));
                Some(token)
            }
            Ok(token) if admin_token.as_ref() == Some(&token) => {
                errors.push(at(
                    key,
                    format!("{key}: the read-only token is the admin token"),
                ));
                None
            }
            Ok(token) => Some(token),
            Err(message) => {
                errors.push(at(key, message));
                None
            }
        });
    if errors.is_empty() {
        Ok(Opened {
            tls,
            geoip,
            admin_token,
            admin_read_token,
        })
    } else {
        Err(errors)
    }
}

fn read_token(key: &str, path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!(
            "{key}: {} is empty (its first line is the bearer token)",
            path.display()
        ));
    }
    Ok(token.to_string())
}

/// What the config and the rules say together.
#[derive(Debug, Default)]
pub struct RuleFindings {
    /// The gate cannot work as written.
    pub errors: Vec<SourceError>,
    /// Worth knowing.
    pub warnings: Vec<SourceError>,
}

/// A country restriction without `geoip.country_db`: every client has
/// country `ZZ`. An allow list without `ZZ` would then refuse (or redirect…)
/// every client: an error; a deny list never fires: a warning.
pub fn rules_with_config(config: &Config, rules: &RuleSet) -> RuleFindings {
    let mut found = RuleFindings::default();
    if !rules.needs_country() || config.geoip.country_db.is_some() {
        return found;
    }
    let Some(Restricted::Country {
        rule,
        codes,
        entries,
    }) = rules.adaptive.ip_country.as_ref().map(|c| &c.restricted)
    else {
        return found;
    };
    let (path, line) = entries.first().map_or_else(
        || (rules.path.clone(), 1),
        |(_, e)| (e.file.to_string(), e.line),
    );
    let problem = |message: String| SourceError {
        path: path.clone(),
        line,
        column: 1,
        message,
    };
    if *rule == ListRule::Allow && !codes.contains(&Country::UNKNOWN) {
        found.errors.push(problem(format!(
            "[adaptive.ip_country] is a country allow list but {} sets no geoip.country_db: every client has country ZZ, so the check fires for every request",
            config.path.display()
        )));
    } else {
        found.warnings.push(problem(format!(
            "[adaptive.ip_country] restricts by country but {} sets no geoip.country_db: every client has country ZZ",
            config.path.display()
        )));
    }
    found
}
