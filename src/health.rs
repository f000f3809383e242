//! The storage monitor (SPEC 6.3): measures `data_dir`'s free space and probes the store,
//! setting the [`Health`] flags that every door asks, and asks the daemon to exit when the
//! store cannot recover in this process.

use crate::config::SharedConfig;
use crate::model::health::{Health, Refusal};
use crate::outbound::queue::QueueWorker;
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

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
pub async fn monitor(
    health: Arc<Health>,
    store: Store,
    config: SharedConfig,
    queue: Arc<QueueWorker>,
) {
    let mut tick = tokio::time::interval(MONITOR_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_probes = 0u32;
    loop {
        tick.tick().await;
        let config = config.get();
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
        if store.flush_stalled(Duration::from_secs(10)) {
            health.store_failed();
        }
        // Space "returned" means above min_free_space and RESTART_FLOOR, so a restart does
        // not land on a disk still full (with min_free_space = 0 sled itself hit ENOSPC).
        let low = health.free() < min.max(RESTART_FLOOR);
        let was_failing = health.is_store_failing();
        match store.probe().await {
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
                    let saved = queue.save_unrecorded(&config.server.data_dir);
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
