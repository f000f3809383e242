//! Retry timing for webhooks, pure so tests can check it: exponential from 6 s, capped at
//! one hour, with "equal jitter" (half fixed, half random) so a receiver that comes back
//! is not hit by every event at the same instant. The first retry is always within 10 s.

use std::time::Duration;

const BASE_MS: u64 = 6_000;
const CAP_MS: u64 = 3_600_000;

/// Delay before attempt `attempts + 1`, given `attempts` failures so far (>= 1) and a
/// random `jitter` in [0, 1).
pub fn delay(attempts: u32, jitter: f64) -> Duration {
    let exp = BASE_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(CAP_MS);
    let half = exp / 2;
    Duration::from_millis(half + (half as f64 * jitter.clamp(0.0, 1.0)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_retry_within_ten_seconds_then_growing_to_an_hour() {
        assert!(delay(1, 0.999) <= Duration::from_secs(10));
        assert!(delay(1, 0.0) >= Duration::from_secs(3));
        assert!(delay(2, 0.0) > delay(1, 0.0));
        assert_eq!(delay(30, 0.999_999).as_secs(), 3599);
        assert!(delay(30, 0.0) >= Duration::from_secs(1800));
    }
}
