//! The GeoIP databases the adaptive checks read (MaxMind DB format, each
//! optional): `geoip.country_db` (country restriction; `city_db` serves
//! too), `city_db` (geo-velocity's places), `asn_db` (`restriction =
//! "asn"`), `anonymous_ip_db` (`[adaptive.anonymous_ip]`).
//!
//! Each is loaded into memory; lookups read the loaded copy through an
//! `ArcSwap` (no lock, no I/O, no allocation on the request path). A file
//! that changes on disk (MaxMind ships weekly updates) is loaded again off
//! the request path and swapped in; a new file that does not open keeps the
//! one in force, logged at ERROR and counted in
//! `stsgate_geoip_reloads_total{db, result}`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use arc_swap::ArcSwapOption;
use prometheus::IntCounterVec;
use serde::Deserialize;
use stsgate_rules::{Anonymous, Country, Place, RuleSet};

/// The four databases, by their config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// `geoip.country_db`.
    Country,
    /// `geoip.city_db`.
    City,
    /// `geoip.asn_db`.
    Asn,
    /// `geoip.anonymous_ip_db`.
    AnonymousIp,
}

impl Db {
    /// Every database.
    pub const ALL: [Db; 4] = [Db::Country, Db::City, Db::Asn, Db::AnonymousIp];

    /// The config key that names it.
    pub const fn key(self) -> &'static str {
        match self {
            Db::Country => "geoip.country_db",
            Db::City => "geoip.city_db",
            Db::Asn => "geoip.asn_db",
            Db::AnonymousIp => "geoip.anonymous_ip_db",
        }
    }

    /// The `db` label of `stsgate_geoip_reloads_total`.
    pub const fn label(self) -> &'static str {
        match self {
            Db::Country => "country",
            Db::City => "city",
            Db::Asn => "asn",
            Db::AnonymousIp => "anonymous_ip",
        }
    }

    fn path(self, config: &crate::config::GeoIp) -> Option<&Path> {
        match self {
            Db::Country => config.country_db.as_deref(),
            Db::City => config.city_db.as_deref(),
            Db::Asn => config.asn_db.as_deref(),
            Db::AnonymousIp => config.anonymous_ip_db.as_deref(),
        }
    }
}

type Reader = maxminddb::Reader<Vec<u8>>;

/// One configured database file and what was last loaded from it.
struct Loaded {
    db: Db,
    path: PathBuf,
    reader: ArcSwapOption<Reader>,
}

/// The opened GeoIP databases.
pub struct GeoIp {
    dbs: Vec<Loaded>,
    reloads: std::sync::OnceLock<IntCounterVec>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.dbs.iter().map(|d| (d.db.key(), &d.path)))
            .finish()
    }
}

/// Opens one database file.
fn open_file(path: &Path) -> Result<Reader> {
    maxminddb::Reader::open_readfile(path)
        .with_context(|| format!("cannot open the GeoIP database {}", path.display()))
}

/// `location` of a City record (only what geo-velocity reads).
#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
    accuracy_radius: Option<u16>,
}

/// A City record, only its location.
#[derive(Deserialize)]
struct CityLocation {
    location: Option<Location>,
}

/// The geography facts of one client IP, as the rules need them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GeoFacts {
    /// `None` when no rule needs it; `ZZ` when not known.
    pub country: Option<Country>,
    /// `None` when no rule needs it; `Some(0)` when not known.
    pub asn: Option<u32>,
    /// `None` when no rule needs them.
    pub anonymous: Option<Anonymous>,
    /// `None` when no rule needs it or the city database does not place the IP.
    pub place: Option<Place>,
}

impl GeoIp {
    /// Opens only a country database at `path` (as `geoip.country_db`).
    pub fn open(path: &Path) -> Result<GeoIp> {
        Ok(GeoIp::from_parts(vec![(
            Db::Country,
            path.to_path_buf(),
            open_file(path)?,
        )]))
    }

    /// Opens every database `config` names; each failure with its config key.
    /// `Ok(None)` when none is named.
    pub fn open_config(
        config: &crate::config::GeoIp,
    ) -> Result<Option<GeoIp>, Vec<(&'static str, anyhow::Error)>> {
        let mut parts = Vec::new();
        let mut errors = Vec::new();
        for db in Db::ALL {
            if let Some(path) = db.path(config) {
                match open_file(path) {
                    Ok(reader) => parts.push((db, path.to_path_buf(), reader)),
                    Err(e) => errors.push((db.key(), e)),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok((!parts.is_empty()).then(|| GeoIp::from_parts(parts)))
    }

    fn from_parts(parts: Vec<(Db, PathBuf, Reader)>) -> GeoIp {
        GeoIp {
            dbs: parts
                .into_iter()
                .map(|(db, path, reader)| Loaded {
                    db,
                    path,
                    reader: ArcSwapOption::from_pointee(reader),
                })
                .collect(),
            reloads: std::sync::OnceLock::new(),
        }
    }

    /// Is `db` configured?
    pub fn has(&self, db: Db) -> bool {
        self.dbs.iter().any(|d| d.db == db)
    }

    fn reader(&self, db: Db) -> Option<arc_swap::Guard<Option<Arc<Reader>>>> {
        self.dbs
            .iter()
            .find(|d| d.db == db)
            .map(|d| d.reader.load())
    }

    /// The country of `ip` (from `country_db`, else `city_db`):
    /// `country.iso_code`, else `registered_country.iso_code`, else `ZZ`.
    pub fn country(&self, ip: IpAddr) -> Country {
        let reader = self.reader(Db::Country).or_else(|| self.reader(Db::City));
        let Some(reader) = reader else {
            return Country::UNKNOWN;
        };
        let Some(reader) = reader.as_deref() else {
            return Country::UNKNOWN;
        };
        let record = reader
            .lookup(ip)
            .ok()
            .and_then(|r| r.decode::<maxminddb::geoip2::Country<'_>>().ok().flatten());
        record
            .and_then(|r| {
                r.country
                    .iso_code
                    .or(r.registered_country.iso_code)
                    .and_then(Country::parse)
            })
            .unwrap_or(Country::UNKNOWN)
    }

    /// The autonomous system number of `ip`; 0 when not known.
    pub fn asn(&self, ip: IpAddr) -> u32 {
        let Some(reader) = self.reader(Db::Asn) else {
            return 0;
        };
        reader
            .as_deref()
            .and_then(|r| r.lookup(ip).ok())
            .and_then(|r| r.decode::<maxminddb::geoip2::Asn<'_>>().ok().flatten())
            .and_then(|a| a.autonomous_system_number)
            .unwrap_or(0)
    }

    /// The anonymity categories of `ip` (none when not known).
    pub fn anonymous(&self, ip: IpAddr) -> Anonymous {
        let Some(reader) = self.reader(Db::AnonymousIp) else {
            return Anonymous::default();
        };
        let Some(a) = reader
            .as_deref()
            .and_then(|r| r.lookup(ip).ok())
            .and_then(|r| r.decode::<maxminddb::geoip2::AnonymousIp>().ok().flatten())
        else {
            return Anonymous::default();
        };
        let mut out = Anonymous::default();
        for (flag, category) in [
            (a.is_anonymous_vpn, Anonymous::VPN),
            (a.is_hosting_provider, Anonymous::HOSTING),
            (a.is_public_proxy, Anonymous::PUBLIC_PROXY),
            (a.is_residential_proxy, Anonymous::RESIDENTIAL_PROXY),
            (a.is_tor_exit_node, Anonymous::TOR),
        ] {
            if flag == Some(true) {
                out = out.union(category);
            }
        }
        out
    }

    /// Where `ip` is, from `city_db`: `location.latitude/longitude` and
    /// `accuracy_radius` (0 when absent); `None` when not known.
    pub fn place(&self, ip: IpAddr) -> Option<Place> {
        let reader = self.reader(Db::City)?;
        let location = reader
            .as_deref()?
            .lookup(ip)
            .ok()?
            .decode::<CityLocation>()
            .ok()
            .flatten()?
            .location?;
        Some(Place {
            latitude: location.latitude?,
            longitude: location.longitude?,
            accuracy_km: location.accuracy_radius.unwrap_or(0),
        })
    }

    /// Loads `db`'s file again; on success swaps it in. The one in force is
    /// kept when the file does not open.
    fn reload_one(&self, i: usize) -> Result<()> {
        let d = &self.dbs[i];
        let reader = open_file(&d.path)?;
        d.reader.store(Some(Arc::new(reader)));
        Ok(())
    }

    fn report(&self, i: usize, trigger: &'static str, result: &Result<()>) {
        let d = &self.dbs[i];
        let label = if result.is_ok() { "success" } else { "failure" };
        if let Some(c) = self.reloads.get() {
            c.with_label_values(&[d.db.label(), label]).inc();
        }
        match result {
            Ok(()) => tracing::info!(
                trigger,
                db = d.db.key(),
                path = %d.path.display(),
                "GeoIP database reloaded"
            ),
            Err(e) => tracing::error!(
                trigger,
                db = d.db.key(),
                path = %d.path.display(),
                "GeoIP database reload refused, the one in force kept: {e:#}"
            ),
        }
    }

    /// Reloads every database now (SIGHUP, `POST /api/v1/reload`); true when
    /// all loaded. Blocking: call it off the async threads.
    pub fn reload_all(&self, trigger: &'static str) -> bool {
        let mut ok = true;
        for i in 0..self.dbs.len() {
            let result = self.reload_one(i);
            self.report(i, trigger, &result);
            ok &= result.is_ok();
        }
        ok
    }

    /// Counts reloads in `stsgate_geoip_reloads_total{db, result}` of `registry`.
    pub fn count_reloads(&self, registry: &prometheus::Registry) {
        let counter = IntCounterVec::new(
            prometheus::Opts::new(
                "stsgate_geoip_reloads_total",
                "GeoIP database reloads after a file change, by database and result.",
            ),
            &["db", "result"],
        )
        .expect("valid metric");
        if registry.register(Box::new(counter.clone())).is_ok() {
            for d in &self.dbs {
                for result in ["success", "failure"] {
                    counter.with_label_values(&[d.db.label(), result]);
                }
            }
            let _ = self.reloads.set(counter);
        }
    }

    /// Reloads each database when its file changes on disk (its directory
    /// watched, and every second the file's identity compared: a `mv` over
    /// it, an in-place write, a symlink swap), until `shutdown` resolves. A
    /// file that does not open is retried while it keeps changing (a copy
    /// still being written) and counted once it has settled.
    pub async fn watch(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        use crate::reload::{fingerprints, watch_dirs};
        if self.dbs.is_empty() {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let files: Vec<PathBuf> = self.dbs.iter().map(|d| d.path.clone()).collect();
        let _watcher = watch_dirs(&files, tx);
        let mut seen = fingerprints(&files).await;
        // Failed loads not counted yet: counted once the file stays as it was.
        let mut unreported: Vec<Option<anyhow::Error>> = files.iter().map(|_| None).collect();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = rx.recv() => {}
                _ = tick.tick() => {}
            }
            let now = fingerprints(&files).await;
            for (i, e) in unreported.iter_mut().enumerate() {
                if now[i] == seen[i] {
                    if let Some(e) = e.take() {
                        self.report(i, "file change", &Err(e));
                    }
                }
            }
            let due: Vec<usize> = (0..files.len()).filter(|&i| now[i] != seen[i]).collect();
            if due.is_empty() {
                continue;
            }
            // Let a burst of writes (a copy, mv, a symlink swap) settle.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let tried = fingerprints(&files).await;
            let this = self.clone();
            let results = tokio::task::spawn_blocking(move || {
                due.into_iter()
                    .map(|i| (i, this.reload_one(i)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (i, result) in results {
                seen[i] = tried[i];
                match result {
                    Ok(()) => {
                        unreported[i] = None;
                        self.report(i, "file change", &Ok(()));
                    }
                    Err(e) => unreported[i] = Some(e),
                }
            }
        }
    }
}

/// The geography facts the rules need for `ip` (each `None` when no rule
/// needs it; unknown when no database is configured or it does not know
/// the address).
pub fn facts_for(rules: &RuleSet, geoip: Option<&GeoIp>, ip: IpAddr) -> GeoFacts {
    GeoFacts {
        country: rules
            .needs_country()
            .then(|| geoip.map_or(Country::UNKNOWN, |g| g.country(ip))),
        asn: rules.needs_asn().then(|| geoip.map_or(0, |g| g.asn(ip))),
        anonymous: rules
            .needs_anonymous()
            .then(|| geoip.map(|g| g.anonymous(ip)).unwrap_or_default()),
        place: if rules.needs_place() {
            geoip.and_then(|g| g.place(ip))
        } else {
            None
        },
    }
}

/// Where a sign-in the STS answered happened, for geo-velocity: the city
/// database's place of `client` for a success, when `city_db` is configured.
pub fn place_of_success(
    geoip: Option<&GeoIp>,
    result: stsgate_state::SignIn,
    client: IpAddr,
) -> Option<Place> {
    (result == stsgate_state::SignIn::Success)
        .then(|| geoip.and_then(|g| g.place(client)))
        .flatten()
}

/// The country the rules should see for `ip`: `None` when no rule needs it,
/// `ZZ` when no database is configured or it does not know the address.
pub fn country_for(rules: &RuleSet, geoip: Option<&GeoIp>, ip: IpAddr) -> Option<Country> {
    rules
        .needs_country()
        .then(|| geoip.map_or(Country::UNKNOWN, |g| g.country(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/maxmind")
            .join(name)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn maxmind_test_database() {
        let geo = GeoIp::open(&testdata("GeoLite2-Country-Test.mmdb")).unwrap();
        for (ip, want) in [
            ("81.2.69.142", "GB"),
            ("89.160.20.112", "SE"),
            ("216.160.83.56", "US"),
            ("2001:218::1", "JP"),
            ("67.43.156.1", "BT"),
            ("2a02:d500::1", "ZZ"),
            ("8.8.8.8", "ZZ"),
            ("127.0.0.1", "ZZ"),
        ] {
            assert_eq!(geo.country(ip.parse().unwrap()).as_str(), want, "{ip}");
        }
    }

    fn all() -> GeoIp {
        let config = crate::config::GeoIp {
            country_db: None,
            city_db: Some(testdata("GeoLite2-City-Test.mmdb")),
            asn_db: Some(testdata("GeoLite2-ASN-Test.mmdb")),
            anonymous_ip_db: Some(testdata("GeoIP2-Anonymous-IP-Test.mmdb")),
        };
        GeoIp::open_config(&config).unwrap().unwrap()
    }

    #[test]
    fn city_asn_and_anonymous_databases() {
        let geo = all();
        // The city database serves the country too.
        assert_eq!(geo.country(ip("89.160.20.112")).as_str(), "SE");
        let london = geo.place(ip("81.2.69.142")).unwrap();
        assert_eq!(
            (london.latitude, london.longitude, london.accuracy_km),
            (51.5142, -0.0931, 10)
        );
        assert_eq!(geo.place(ip("175.16.199.1")).unwrap().accuracy_km, 100);
        assert_eq!(geo.place(ip("8.8.8.8")), None);
        assert_eq!(geo.asn(ip("1.0.0.1")), 15169);
        assert_eq!(geo.asn(ip("1.128.0.1")), 1221);
        assert_eq!(geo.asn(ip("8.8.8.8")), 0);
        let names = |a: Anonymous| a.names().collect::<Vec<_>>();
        assert_eq!(
            names(geo.anonymous(ip("1.124.213.1"))),
            ["anonymous_vpn", "tor_exit_node"]
        );
        assert_eq!(names(geo.anonymous(ip("186.30.236.9"))), ["public_proxy"]);
        assert_eq!(names(geo.anonymous(ip("81.2.69.1"))).len(), 5);
        assert!(geo.anonymous(ip("8.8.8.8")).is_empty());
    }

    #[test]
    fn a_database_that_does_not_open_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.mmdb");
        std::fs::write(&bad, b"not a database").unwrap();
        let config = crate::config::GeoIp {
            asn_db: Some(bad),
            ..Default::default()
        };
        let errors = GeoIp::open_config(&config).unwrap_err();
        assert_eq!(errors[0].0, "geoip.asn_db");
        assert!(
            GeoIp::open_config(&crate::config::GeoIp::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_reload_swaps_in_a_good_file_and_keeps_the_old_for_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let asn = dir.path().join("asn.mmdb");
        std::fs::copy(testdata("GeoLite2-ASN-Test.mmdb"), &asn).unwrap();
        let config = crate::config::GeoIp {
            asn_db: Some(asn.clone()),
            ..Default::default()
        };
        let geo = GeoIp::open_config(&config).unwrap().unwrap();
        let registry = prometheus::Registry::new();
        geo.count_reloads(&registry);
        assert_eq!(geo.asn(ip("1.0.0.1")), 15169);
        std::fs::write(&asn, b"garbage").unwrap();
        assert!(!geo.reload_all("test"));
        assert_eq!(geo.asn(ip("1.0.0.1")), 15169, "the old one kept");
        // Another database in its place: the new data is used.
        std::fs::copy(testdata("GeoLite2-City-Test.mmdb"), &asn).unwrap();
        assert!(geo.reload_all("test"));
        assert_eq!(geo.asn(ip("1.0.0.1")), 0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("stsgate_geoip_reloads_total{db=\"asn\",result=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("stsgate_geoip_reloads_total{db=\"asn\",result=\"success\"} 1"),
            "{text}"
        );
    }
}
