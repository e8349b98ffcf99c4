//! Country lookup for the adaptive country restriction, from a MaxMind DB
//! file loaded at start. Lookups are in memory.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use stsgate_rules::Country;

/// An opened country database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl GeoIp {
    /// Opens the database at `path`.
    pub fn open(path: &Path) -> Result<GeoIp> {
        let reader = maxminddb::Reader::open_readfile(path)
            .with_context(|| format!("cannot open the GeoIP database {}", path.display()))?;
        Ok(GeoIp { reader })
    }

    /// The country of `ip`: `country.iso_code`, else
    /// `registered_country.iso_code`, else unknown (`ZZ`).
    pub fn country(&self, ip: IpAddr) -> Country {
        let record = self
            .reader
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
}

/// The country the rules should see for `ip`: `None` when no rule needs it,
/// `ZZ` when no database is configured or it does not know the address.
pub fn country_for(
    rules: &stsgate_rules::RuleSet,
    geoip: Option<&GeoIp>,
    ip: IpAddr,
) -> Option<Country> {
    rules
        .needs_country()
        .then(|| geoip.map_or(Country::UNKNOWN, |g| g.country(ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxmind_test_database() {
        let db = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/maxmind/GeoLite2-Country-Test.mmdb");
        let geo = GeoIp::open(&db).unwrap();
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
}
