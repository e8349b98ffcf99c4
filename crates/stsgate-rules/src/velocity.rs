//! Stage 3e: `[adaptive.geo_velocity]`, impossible travel (PRODUCT.md
//! §3.3): from the user's last successful sign-in ([`Facts::last_signin`],
//! kept by the gate state) to where the client IP is now ([`Facts::place`],
//! from the city database). Fires when the distance exceeds
//! `min_distance_km` plus both accuracy radii and the implied speed exceeds
//! `max_speed_kmh`. Familiar IPs of the user never fire.

use crate::adaptive::{Check, Look, failure_action};
use crate::decision::{Detail, Facts, Place};
use crate::lists::Compiler;
use crate::model::{FailureAction, RawGeoVelocity};

/// The compiled `[adaptive.geo_velocity]` section.
#[derive(Debug, Clone)]
pub struct GeoVelocity {
    /// Switched on.
    pub enabled: bool,
    /// Implied speeds above this fire.
    pub max_speed_kmh: u32,
    /// Hops up to this (plus both accuracy radii) never fire.
    pub min_distance_km: u32,
    /// What to do when it fires.
    pub action: FailureAction,
    /// For `redirect`.
    pub redirect_url: Option<String>,
    /// The line of the section's header in the rule file (1 when not found).
    pub line: u32,
}

/// Mean Earth radius (IUGG), km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle distance in km (haversine).
pub fn distance_km(a: Place, b: Place) -> f64 {
    let (p1, p2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let (dp, dl) = (p2 - p1, (b.longitude - a.longitude).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

impl GeoVelocity {
    pub(crate) fn compile(raw: &RawGeoVelocity, c: &mut Compiler<'_>) -> Self {
        let (action, redirect_url) = failure_action(
            c,
            raw.failure_action.as_ref(),
            FailureAction::Refuse,
            raw.redirect_url.as_ref(),
        );
        GeoVelocity {
            line: c.section_line("[adaptive.geo_velocity]"),
            enabled: raw.enabled.unwrap_or(true),
            max_speed_kmh: c.count(raw.max_speed_kmh.as_ref(), 1, 900),
            min_distance_km: c.count(raw.min_distance_km.as_ref(), 0, 500),
            action,
            redirect_url,
        }
    }

    /// What travel from `from` (at `from_ms`) to `to` (at `now_ms`) implies.
    pub fn travel(&self, from: Place, from_ms: u64, to: Place, now_ms: u64) -> Detail {
        let distance_km = distance_km(from, to);
        let hours = now_ms.saturating_sub(from_ms) as f64 / 3_600_000.0;
        Detail::Travel {
            distance_km,
            hours,
            speed_kmh: if hours > 0.0 {
                distance_km / hours
            } else {
                f64::INFINITY
            },
            threshold_km: f64::from(self.min_distance_km)
                + f64::from(from.accuracy_km)
                + f64::from(to.accuracy_km),
        }
    }
}

impl Check for GeoVelocity {
    fn enabled(&self) -> bool {
        self.enabled
    }

    fn look<'r>(&'r self, facts: &Facts<'_>) -> Look<'r> {
        let pass = |note| {
            Look::of(
                false,
                self.action,
                self.redirect_url.as_deref(),
                None,
                None,
                note,
            )
        };
        if facts.user.is_none() {
            return pass("no user in the request");
        }
        let Some(here) = facts.place else {
            return pass("the city database does not place the client IP");
        };
        let Some(last) = facts.last_signin else {
            return pass("no earlier successful sign-in of the user known");
        };
        let detail = self.travel(last.place, last.at_ms, here, facts.now_ms);
        if facts.familiar {
            return pass("a familiar IP of the user").with(detail);
        }
        let Detail::Travel {
            distance_km,
            speed_kmh,
            threshold_km,
            ..
        } = detail
        else {
            return pass("");
        };
        let (fires, note) = if distance_km <= threshold_km {
            (
                false,
                "a short hop (within min_distance_km and the accuracy radii)",
            )
        } else if speed_kmh <= f64::from(self.max_speed_kmh) {
            (false, "possible travel (within max_speed_kmh)")
        } else {
            (true, "impossible travel since the last successful sign-in")
        };
        Look::of(
            fires,
            self.action,
            self.redirect_url.as_deref(),
            None,
            None,
            note,
        )
        .with(detail)
    }
}
