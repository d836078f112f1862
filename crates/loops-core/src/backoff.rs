//! The one backoff: how long to wait before trying again. Loop retries, job retries, model
//! requests and channel deliveries all wait `first · 2^step` (or `first` when the wait is
//! fixed), spread by a jitter fraction and held under a cap. Each caller chooses where the
//! spread comes from: a seed where a test must be able to predict it, chance where not.

use std::time::Duration;

/// Whether the wait grows with each attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    Fixed,
    Doubling,
}

/// The wait before retry number `step` (0 for the first retry): `first` doubled `step` times
/// (at most 30) when growing, times `1 + jitter · spread` (`spread` in [-1, 1]), at least
/// zero and at most `cap`.
pub fn wait(
    first: Duration,
    growth: Growth,
    step: u32,
    jitter: f64,
    spread: f64,
    cap: Duration,
) -> Duration {
    let base = match growth {
        Growth::Fixed => first.as_millis() as f64,
        Growth::Doubling => first.as_millis() as f64 * 2f64.powi(step.min(30) as i32),
    };
    let ms = (base * (1.0 + jitter * spread)).max(0.0);
    Duration::from_millis(ms.min(cap.as_millis() as f64) as u64)
}

/// A spread in [-1, 1) drawn from `seed` (the same seed, the same spread).
pub fn seeded_spread(seed: u64) -> f64 {
    (seed % 10_000) as f64 / 10_000.0 * 2.0 - 1.0
}

/// A spread in [-1, 1) by chance: a fresh, randomly keyed hasher over the time, which is
/// randomness enough for spreading retries without a dependency.
pub fn random_spread() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or(0),
    );
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_first_wait_and_stops_at_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(wait(s(30), Growth::Doubling, 0, 0.0, 0.0, s(3600)), s(30));
        assert_eq!(wait(s(30), Growth::Doubling, 2, 0.0, 0.0, s(3600)), s(120));
        assert_eq!(
            wait(s(30), Growth::Doubling, 20, 0.0, 0.0, s(3600)),
            s(3600)
        );
        assert_eq!(wait(s(30), Growth::Fixed, 5, 0.0, 0.0, s(3600)), s(30));
    }

    #[test]
    fn the_spread_stays_within_the_jitter() {
        let s = Duration::from_secs;
        assert_eq!(wait(s(10), Growth::Fixed, 0, 0.2, -1.0, s(60)), s(8));
        assert_eq!(wait(s(10), Growth::Fixed, 0, 0.2, 1.0, s(60)), s(12));
        for _ in 0..100 {
            let r = random_spread();
            assert!((-1.0..1.0).contains(&r), "{r}");
        }
        assert_eq!(seeded_spread(5_000), 0.0);
    }
}
