//! How long a refusal waits before it is answered (`blocked.delay`,
//! issue 11 item 5): a refusal that answers in half a millisecond, while the
//! STS takes tens to hundreds of milliseconds to fail a sign-in, tells an
//! attacker that the gate said no, not the directory.
//!
//! In `auto` mode the delay is drawn at random from a small ring of the
//! STS's most recent failed sign-in latencies, so refusals and real failures
//! share one distribution. Before any failure is seen it is uniform in
//! [`FLOOR`]; it is never more than [`MAX_DELAY`]. The ring is a fixed array
//! of atomics: recording and drawing take no lock and allocate nothing.
//!
//! This type only says how long; the corridor waits with a timer (no worker
//! held) and counts the waiting connection against its caps.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// How many recent failed sign-in latencies are kept.
pub const RESERVOIR: usize = 128;
/// The delay before any failed sign-in is seen: uniform in this range (ms).
pub const FLOOR: Range<u64> = 50..150;
/// No refusal waits longer, whatever the STS takes.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// `blocked.delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayMode {
    /// Drawn from the STS's recent failed sign-in latencies.
    Auto,
    /// Always this long (`"0s"`: answer at once). At most [`MAX_DELAY`].
    Fixed(Duration),
}

impl DelayMode {
    /// Parses `"auto"` or a duration such as `"250ms"` / `"0s"`.
    pub fn parse(text: &str) -> Result<DelayMode, String> {
        if text.trim().eq_ignore_ascii_case("auto") {
            return Ok(DelayMode::Auto);
        }
        let d =
            stsgate_rules::units::parse_duration(text).map_err(|m| format!("{m} (or \"auto\")"))?;
        if d > MAX_DELAY {
            return Err(format!(
                "a refusal delay of {text:?} is too long: at most {}",
                humantime::format_duration(MAX_DELAY)
            ));
        }
        Ok(DelayMode::Fixed(d))
    }
}

/// The refusal delay: a mode and, for `auto`, the ring of recent failures.
/// Share one across workers (`Arc<RefusalDelay>`).
#[derive(Debug)]
pub struct RefusalDelay {
    mode: DelayMode,
    /// Latencies in microseconds; slot `i` is valid once `written > i`.
    samples: [AtomicU32; RESERVOIR],
    /// How many latencies were ever recorded (the next slot, modulo the size).
    written: AtomicUsize,
}

impl RefusalDelay {
    /// A delay in `mode`, with no failure seen yet.
    pub fn new(mode: DelayMode) -> RefusalDelay {
        RefusalDelay {
            mode,
            samples: std::array::from_fn(|_| AtomicU32::new(0)),
            written: AtomicUsize::new(0),
        }
    }

    /// The mode.
    pub fn mode(&self) -> DelayMode {
        self.mode
    }

    /// Records how long the STS took to answer a failed sign-in (from
    /// sending the request to the whole answer). Kept in `auto` mode only.
    pub fn record_failure(&self, latency: Duration) {
        if self.mode != DelayMode::Auto {
            return;
        }
        let micros = u32::try_from(latency.min(MAX_DELAY).as_micros()).unwrap_or(u32::MAX);
        let slot = self.written.fetch_add(1, Ordering::Relaxed) % RESERVOIR;
        self.samples[slot].store(micros, Ordering::Relaxed);
    }

    /// How long the next refusal waits.
    pub fn next(&self) -> Duration {
        match self.mode {
            DelayMode::Fixed(d) => d,
            DelayMode::Auto => {
                let seen = self.written.load(Ordering::Relaxed).min(RESERVOIR);
                if seen == 0 {
                    return Duration::from_millis(fastrand::u64(FLOOR));
                }
                let micros = self.samples[fastrand::usize(..seen)].load(Ordering::Relaxed);
                Duration::from_micros(u64::from(micros)).min(MAX_DELAY)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(DelayMode::parse("auto"), Ok(DelayMode::Auto));
        assert_eq!(DelayMode::parse("AUTO"), Ok(DelayMode::Auto));
        assert_eq!(
            DelayMode::parse("250ms"),
            Ok(DelayMode::Fixed(Duration::from_millis(250)))
        );
        assert_eq!(DelayMode::parse("0s"), Ok(DelayMode::Fixed(Duration::ZERO)));
        assert!(DelayMode::parse("soon").is_err());
        assert!(DelayMode::parse("1m").unwrap_err().contains("too long"));
    }

    #[test]
    fn fixed_is_fixed_and_records_nothing() {
        let d = RefusalDelay::new(DelayMode::Fixed(Duration::from_millis(40)));
        d.record_failure(Duration::from_secs(1));
        assert_eq!(d.next(), Duration::from_millis(40));
        assert_eq!(
            RefusalDelay::new(DelayMode::Fixed(Duration::ZERO)).next(),
            Duration::ZERO
        );
    }

    #[test]
    fn auto_has_a_floor_before_any_failure() {
        let d = RefusalDelay::new(DelayMode::Auto);
        for _ in 0..1000 {
            let n = d.next();
            assert!(n >= Duration::from_millis(FLOOR.start), "{n:?}");
            assert!(n < Duration::from_millis(FLOOR.end), "{n:?}");
        }
    }

    #[test]
    fn auto_draws_from_recorded_failures() {
        let d = RefusalDelay::new(DelayMode::Auto);
        let recorded = [120, 340, 610].map(Duration::from_millis);
        for r in recorded {
            d.record_failure(r);
        }
        let mut drawn = std::collections::HashSet::new();
        for _ in 0..1000 {
            let n = d.next();
            assert!(recorded.contains(&n), "{n:?} was never recorded");
            drawn.insert(n);
        }
        assert_eq!(drawn.len(), recorded.len(), "every sample is drawn");
    }

    #[test]
    fn auto_keeps_only_recent_failures_and_caps_them() {
        let d = RefusalDelay::new(DelayMode::Auto);
        d.record_failure(Duration::from_secs(60));
        assert_eq!(d.next(), MAX_DELAY, "capped");
        for _ in 0..RESERVOIR {
            d.record_failure(Duration::from_millis(80));
        }
        for _ in 0..1000 {
            assert_eq!(
                d.next(),
                Duration::from_millis(80),
                "old samples rolled out"
            );
        }
    }

    #[test]
    fn shared_across_threads() {
        let d = std::sync::Arc::new(RefusalDelay::new(DelayMode::Auto));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for j in 0..1000 {
                        d.record_failure(Duration::from_millis(10 + i * 1000 + j % 7));
                        assert!(d.next() <= MAX_DELAY);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(d.next() >= Duration::from_millis(10));
    }
}
