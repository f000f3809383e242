//! Retry timing, pure so tests can check it: exponential from a base, capped, with "equal
//! jitter" (half fixed, half random) so a peer that comes back is not hit by every retry
//! at the same instant. The webhook outbox and the outbound queue each hold one.

use std::time::Duration;

/// Exponential backoff: `base * 2^(attempts - 1)`, at most `cap`, then jittered into
/// `[half, whole]` of that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay (before jitter) after the first failure.
    pub base: Duration,
    /// The longest delay (before jitter), reached after enough failures.
    pub cap: Duration,
}

impl Backoff {
    /// Delay before attempt `attempts + 1`, given `attempts` failures so far (>= 1) and a
    /// random `jitter` in [0, 1] (clamped).
    pub fn delay(&self, attempts: u32, jitter: f64) -> Duration {
        let exp = millis(self.base)
            .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
            .min(millis(self.cap));
        let half = exp / 2;
        Duration::from_millis(half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64)
    }
}

/// Whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn doubles_from_the_base_and_stops_at_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(10),
            cap: HOUR,
        };
        for (attempts, whole_secs) in [(0, 10), (1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600)] {
            assert_eq!(b.delay(attempts, 1.0), Duration::from_secs(whole_secs));
            assert_eq!(b.delay(attempts, 0.0), Duration::from_secs(whole_secs) / 2);
        }
        assert_eq!(b.delay(u32::MAX, 1.0), HOUR);
    }

    #[test]
    fn jitter_outside_the_unit_interval_is_clamped() {
        let b = Backoff {
            base: Duration::from_secs(8),
            cap: HOUR,
        };
        assert_eq!(b.delay(1, -3.0), Duration::from_secs(4));
        assert_eq!(b.delay(1, 7.0), Duration::from_secs(8));
    }

    #[test]
    fn a_huge_base_saturates_at_the_cap() {
        let b = Backoff {
            base: Duration::from_secs(u64::MAX),
            cap: HOUR,
        };
        assert_eq!(b.delay(5, 1.0), HOUR);
    }
}
