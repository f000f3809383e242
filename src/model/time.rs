//! Time as the daemon stores and prints it: epoch milliseconds inside, RFC 3339 UTC with
//! milliseconds on the wire. The clock is read at the edges, once per request, attempt or
//! pass; the code where time matters (validation, notifications, history bounds, retention,
//! garbage collection, token expiry) takes that `now` as an argument, so a test moves time
//! by passing another value instead of waiting for it.

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
}
