//! Retry timing for webhooks: exponential from 6 s, capped at one hour, with equal jitter
//! (see [`Backoff`]). The first retry is always within 10 s.

use crate::model::backoff::Backoff;
use std::time::Duration;

/// The webhook outbox's backoff.
pub const BACKOFF: Backoff = Backoff {
    base: Duration::from_secs(6),
    cap: Duration::from_secs(3600),
};

#[cfg(test)]
mod tests {
    use super::*;

    fn delay(attempts: u32, jitter: f64) -> Duration {
        BACKOFF.delay(attempts, jitter)
    }

    #[test]
    fn first_retry_within_ten_seconds_then_growing_to_an_hour() {
        assert!(delay(1, 0.999) <= Duration::from_secs(10));
        assert!(delay(1, 0.0) >= Duration::from_secs(3));
        assert!(delay(2, 0.0) > delay(1, 0.0));
        assert_eq!(delay(30, 0.999_999).as_secs(), 3599);
        assert!(delay(30, 0.0) >= Duration::from_secs(1800));
    }
}
