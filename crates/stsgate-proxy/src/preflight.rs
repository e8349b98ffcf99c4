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
    /// The GeoIP databases, when `[geoip]` names any.
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
    let geoip = match GeoIp::open_config(&config.geoip) {
        Ok(geoip) => geoip.map(Arc::new),
        Err(failed) => {
            for (key, e) in failed {
                let why = e.root_cause();
                errors.push(at(key, format!("{key}: {e}: {why}")));
            }
            None
        }
    };
    let admin_token = config.admin.token_file.as_deref().and_then(|path| {
        match read_token("admin.token_file", path) {
            Ok(token) => Some(token),
            Err(message) => {
                errors.push(at("admin.token_file", message));
                None
            }
        }
    });
    if let Some(path) = &config.blocked_forms_page {
        if let Err(message) = crate::blocked::read_forms_page(path) {
            errors.push(at("blocked.forms_page", message));
        }
    }
    let key = "admin.read_token_file";
    let admin_read_token =
        config
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

/// Checks that need a GeoIP database the config does not name. A country
/// or ASN restriction without its database sees every client as `ZZ` /
/// `AS0`: an allow list not listing it would fire for every request (an
/// error), a deny list would not fire (a warning). Anonymous IP and
/// geo-velocity checks without their database can never fire: errors.
pub fn rules_with_config(config: &Config, rules: &RuleSet) -> RuleFindings {
    let mut found = RuleFindings::default();
    let g = &config.geoip;
    let shown = config.path.display();
    let at = |line: u32, message: String| SourceError {
        path: rules.path.clone(),
        line,
        column: 1,
        message,
    };
    let restricted = rules.adaptive.ip_country.as_ref().map(|c| &c.restricted);
    if rules.needs_country() && g.country_db.is_none() && g.city_db.is_none() {
        if let Some(Restricted::Country {
            rule,
            codes,
            entries,
        }) = restricted
        {
            let line = entries.first().map_or(1, |(_, e)| e.line);
            if *rule == ListRule::Allow && !codes.contains(&Country::UNKNOWN) {
                found.errors.push(at(line, format!(
                    "[adaptive.ip_country] is a country allow list but {shown} sets no geoip.country_db: every client has country ZZ, so the check fires for every request"
                )));
            } else {
                found.warnings.push(at(line, format!(
                    "[adaptive.ip_country] restricts by country but {shown} sets no geoip.country_db: every client has country ZZ"
                )));
            }
        }
    }
    if rules.needs_asn() && g.asn_db.is_none() {
        if let Some(Restricted::Asn {
            rule,
            numbers,
            entries,
        }) = restricted
        {
            let line = entries.first().map_or(1, |(_, e)| e.line);
            if *rule == ListRule::Allow && !numbers.contains_key(&0) {
                found.errors.push(at(line, format!(
                    "[adaptive.ip_country] is an ASN allow list but {shown} sets no geoip.asn_db: every client is AS0, so the check fires for every request"
                )));
            } else {
                found.warnings.push(at(line, format!(
                    "[adaptive.ip_country] restricts by ASN but {shown} sets no geoip.asn_db: every client is AS0"
                )));
            }
        }
    }
    if let Some(a) = rules.adaptive.anonymous_ip.as_ref() {
        if rules.needs_anonymous() && g.anonymous_ip_db.is_none() {
            found.errors.push(at(a.line, format!(
                "[adaptive.anonymous_ip] needs geoip.anonymous_ip_db, which {shown} does not set: the check could never fire"
            )));
        }
    }
    if let Some(v) = rules.adaptive.geo_velocity.as_ref() {
        if rules.needs_place() && g.city_db.is_none() {
            found.errors.push(at(v.line, format!(
                "[adaptive.geo_velocity] needs geoip.city_db, which {shown} does not set: the check could never fire"
            )));
        }
    }
    found
}
