//! Per-service TPS as a token bucket (SPEC 4.2): capacity TPS, refilled at TPS per second,
//! one token per destination. A request the bucket cannot cover queues nothing and learns
//! how long to wait. On a node alone the bucket is in memory (a restart refills it, which
//! a one-second bucket does anyway); in cluster mode it is one database row per service,
//! so the limit holds across every node (SPEC 13).

use super::StoreFuture;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The TPS buckets of every service. Shared by every node in cluster mode.
pub trait Buckets: Send + Sync {
    /// Takes `n` tokens for `service`, or says how long until they would be there.
    fn take<'a>(
        &'a self,
        service: &'a str,
        tps: u32,
        n: u32,
    ) -> StoreFuture<'a, Result<(), Duration>>;
}

/// [`Buckets`] in this process's memory.
#[derive(Default)]
pub(super) struct MemoryBuckets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl MemoryBuckets {
    fn take_at(&self, service: &str, tps: u32, n: u32, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(tps);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(service.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * cap).min(cap);
        b.at = now;
        let need = f64::from(n);
        if b.tokens >= need {
            b.tokens -= need;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - b.tokens) / cap))
        }
    }
}

impl Buckets for MemoryBuckets {
    fn take<'a>(
        &'a self,
        service: &'a str,
        tps: u32,
        n: u32,
    ) -> StoreFuture<'a, Result<(), Duration>> {
        Box::pin(std::future::ready(Ok(self.take_at(
            service,
            tps,
            n,
            Instant::now(),
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_of_tps_then_refills() {
        let l = MemoryBuckets::default();
        let t0 = Instant::now();
        assert!(l.take_at("s", 10, 10, t0).is_ok());
        let wait = l.take_at("s", 10, 1, t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(l
            .take_at("s", 10, 5, t0 + Duration::from_millis(500))
            .is_ok());
        assert!(
            l.take_at("other", 10, 10, t0).is_ok(),
            "buckets are per service"
        );
    }
}
