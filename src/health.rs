//! Whether the daemon may take new work (SPEC 6.3): enough free space on `data_dir`'s
//! filesystem and a store that can write. Both doors (SMTP at MAIL, the API before any
//! work), `/readyz` and the queue ask [`Health::check`]; the storage monitor and the store's
//! failure reports set it. It holds flags only, so asking costs two atomic loads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why new work is refused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `data_dir`'s filesystem has less than `server.min_free_space` free.
    LowSpace { free: u64, min: u64 },
    /// The last write to the store failed (ENOSPC, EIO) and it has not written since.
    StoreFailing,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::LowSpace { free, min } => write!(
                f,
                "data_dir has {free} bytes free, below server.min_free_space ({min})"
            ),
            Refusal::StoreFailing => f.write_str("the store cannot write (disk full or I/O error)"),
        }
    }
}

/// Shared by the daemon's doors and workers; set by the storage monitor.
#[derive(Debug, Default)]
pub struct Health {
    low_space: AtomicBool,
    free: AtomicU64,
    min: AtomicU64,
    store_failing: AtomicBool,
    /// Set once the store cannot recover in this process: the daemon must exit non-zero.
    exit: AtomicBool,
    exit_notify: tokio::sync::Notify,
}

impl Health {
    /// `Ok` when new work may be taken; otherwise why not.
    pub fn check(&self) -> Result<(), Refusal> {
        if self.store_failing.load(Ordering::Acquire) {
            return Err(Refusal::StoreFailing);
        }
        if self.low_space.load(Ordering::Acquire) {
            return Err(Refusal::LowSpace {
                free: self.free.load(Ordering::Relaxed),
                min: self.min.load(Ordering::Relaxed),
            });
        }
        Ok(())
    }

    /// Records a free-space measurement of `data_dir`'s filesystem.
    pub fn set_free_space(&self, free: u64, min: u64) {
        self.free.store(free, Ordering::Relaxed);
        self.min.store(min, Ordering::Relaxed);
        self.low_space.store(free < min, Ordering::Release);
    }

    /// A store write or flush failed: refuse new work until [`Health::store_recovered`].
    pub fn store_failed(&self) {
        self.store_failing.store(true, Ordering::Release);
    }

    /// The store wrote successfully again.
    pub fn store_recovered(&self) {
        self.store_failing.store(false, Ordering::Release);
    }

    /// The store cannot recover in this process (sled 0.34 refuses every write after one
    /// failed): ask the binary to exit non-zero so systemd restarts it.
    pub fn request_exit(&self) {
        self.exit.store(true, Ordering::Release);
        self.exit_notify.notify_waiters();
        self.exit_notify.notify_one();
    }

    /// Resolves once [`Health::request_exit`] was called.
    pub async fn exit_requested(&self) {
        while !self.exit.load(Ordering::Acquire) {
            self.exit_notify.notified().await;
        }
    }

    /// Seconds a refused client should wait before trying again (`Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        30
    }
}

/// Extractor for the API's writing handlers: refuses the request up front, before its
/// body is read, with `503` `{"code":"7010"}` and `Retry-After` while [`Health::check`]
/// fails (SPEC 6.3). Reading endpoints do not take it.
pub struct Writable;

impl axum::extract::FromRequestParts<Arc<crate::Daemon>> for Writable {
    type Rejection = axum::response::Response;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        daemon: &Arc<crate::Daemon>,
    ) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        match daemon.health.check() {
            Ok(()) => Ok(Writable),
            Err(why) => {
                let mut resp = (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "code": "7010",
                        "description": format!("{why}; try again later"),
                    })),
                )
                    .into_response();
                resp.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    daemon.health.retry_after_secs().into(),
                );
                Err(resp)
            }
        }
    }
}

/// How often the monitor measures free space and probes the store (SPEC: at least every 5 s).
const MONITOR_INTERVAL: Duration = Duration::from_secs(2);

/// Free bytes below which a poisoned store waits rather than exits for a restart.
const RESTART_FLOOR: u64 = 8 << 20;

/// Bytes of `path`'s filesystem available to the daemon (statvfs `f_bavail * f_frsize`).
pub fn free_space(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data_dir contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is a properly sized out-parameter that
    // statvfs fills completely when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    // Both are u64 on Linux x86_64 and aarch64 (`as` keeps 32-bit targets building).
    #[allow(clippy::unnecessary_cast)]
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The storage monitor: every [`MONITOR_INTERVAL`] it measures free space, and probes the
/// store (a tiny write + commit), which also catches a failure of sled's own background
/// flush. A store that failed is probed again once space is back; if it still cannot
/// write (sled 0.34 stays poisoned in process), the queue's unrecorded outcomes are saved
/// and the daemon is asked to exit non-zero so systemd restarts it.
pub async fn monitor(daemon: Arc<crate::Daemon>) {
    let health = daemon.health.clone();
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_probes = 0u32;
    loop {
        tick.tick().await;
        let config = daemon.config();
        let dir = config.server.data_dir.clone();
        let min = config.server.min_free_space;
        match tokio::task::spawn_blocking(move || free_space(&dir)).await {
            Ok(Ok(free)) => {
                let was_low = matches!(health.check(), Err(Refusal::LowSpace { .. }));
                health.set_free_space(free, min);
                match (was_low, free < min) {
                    (false, true) => {
                        tracing::error!(free, min, "data_dir is low on space: refusing new work")
                    }
                    (true, false) => tracing::info!(free, min, "data_dir has space again"),
                    _ => {}
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot measure data_dir's free space"),
            Err(_) => {}
        }
        if daemon.store.flush_stalled(Duration::from_secs(10)) {
            health.store_failed();
        }
        // Space "returned" means above min_free_space and RESTART_FLOOR, so a restart does
        // not land on a disk still full (with min_free_space = 0 sled itself hit ENOSPC).
        let low = health.free.load(Ordering::Relaxed) < min.max(RESTART_FLOOR);
        let was_failing = health.store_failing.load(Ordering::Acquire);
        match daemon.store.probe().await {
            Ok(()) => {
                if was_failing {
                    tracing::info!("the store writes again: taking new work");
                }
                failed_probes = 0;
                health.store_recovered();
            }
            Err(e) => {
                health.store_failed();
                failed_probes += 1;
                tracing::error!(error = %e, "store probe failed: refusing new work");
                // Once space is back (or was never the problem), a store that still
                // fails cannot recover in this process.
                if failed_probes >= 2 && !low {
                    let saved = daemon.queue_worker.save_unrecorded(&config.server.data_dir);
                    tracing::error!(
                        saved_outcomes = saved,
                        "the store cannot recover in this process: exiting for a restart"
                    );
                    health.request_exit();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_min_free_space_and_while_the_store_fails() {
        let h = Health::default();
        assert_eq!(h.check(), Ok(()));
        h.set_free_space(10, 100);
        assert_eq!(h.check(), Err(Refusal::LowSpace { free: 10, min: 100 }));
        h.set_free_space(200, 100);
        assert_eq!(h.check(), Ok(()));
        h.store_failed();
        assert_eq!(h.check(), Err(Refusal::StoreFailing));
        h.store_recovered();
        assert_eq!(h.check(), Ok(()));
    }
}
