//! Time as the daemon stores and prints it: epoch milliseconds inside, RFC 3339 UTC with
//! milliseconds on the wire, and a [`Clock`] that code where time matters is handed, so a
//! test can move time instead of waiting for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock a test sets and advances by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock(AtomicU64::new(ms)))
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The clock handed around: the system's in the daemon, a [`ManualClock`] in tests.
pub type SharedClock = Arc<dyn Clock>;

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// Milliseconds since the Unix epoch: the time unit of every stored timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, the timestamp format of every event.
pub fn timestamp(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// The latest time a request may name: 9999-12-31T23:59:59.999Z, the last one RFC 3339 can
/// write (events and the status page print every stored time that way).
pub const LATEST_MS: u64 = 253_402_300_799_999;

/// Why a time given by a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("must be ISO 8601 with a time zone, or epoch seconds")]
    Format,
    #[error("is out of range (before 1970 or after 9999-12-31)")]
    OutOfRange,
}

/// ISO 8601 with a zone, or epoch seconds (number or digit string), as epoch ms, between
/// 1970 and [`LATEST_MS`].
pub fn parse_time(v: &serde_json::Value) -> Result<u64, TimeError> {
    let secs = |s: u64| {
        s.checked_mul(1000)
            .filter(|ms| *ms <= LATEST_MS)
            .ok_or(TimeError::OutOfRange)
    };
    match v {
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(s) => secs(s),
            None if n.is_i64() || n.is_f64() && n.as_f64().is_some_and(|f| f < 0.0) => {
                Err(TimeError::OutOfRange)
            }
            None => Err(TimeError::Format),
        },
        serde_json::Value::String(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            // All digits: only too many of them fails to parse.
            s.parse::<u64>()
                .map_err(|_| TimeError::OutOfRange)
                .and_then(secs)
        }
        serde_json::Value::String(s) => {
            let t =
                chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|_| TimeError::Format)?;
            u64::try_from(t.timestamp_millis())
                .ok()
                .filter(|ms| *ms <= LATEST_MS)
                .ok_or(TimeError::OutOfRange)
        }
        _ => Err(TimeError::Format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(500);
        assert_eq!(c.now_ms(), 1_500);
    }
}
