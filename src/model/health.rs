//! Whether the daemon may take new work (SPEC 6.3): enough free space on `data_dir`'s
//! filesystem and a store that can write. Both doors (SMTP at MAIL, the API before any
//! work), `/readyz` and the queue ask [`Health::check`]; the storage monitor
//! (`crate::health`) and the store's failure reports set it. It holds flags only, so asking
//! costs two atomic loads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Why new work is refused right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `data_dir`'s filesystem has less than `server.min_free_space` free.
    LowSpace { free: u64, min: u64 },
    /// The last write to the store failed (ENOSPC, EIO) and it has not written since.
    StoreFailing,
    /// Cluster mode: the shared database does not answer (SPEC 13). Only work that needs
    /// it is refused: inbound SMTP goes on.
    DatabaseDown,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::LowSpace { free, min } => write!(
                f,
                "data_dir has {free} bytes free, below server.min_free_space ({min})"
            ),
            Refusal::StoreFailing => f.write_str("the store cannot write (disk full or I/O error)"),
            Refusal::DatabaseDown => {
                f.write_str("the cluster database (cluster.database_url) is unreachable")
            }
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
    /// Cluster mode only: the shared database is down (false on a node alone).
    database_down: AtomicBool,
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

    /// [`Health::check`], and in cluster mode the shared database too: for work that
    /// needs it (the API, the queue, `/readyz`).
    pub fn check_shared(&self) -> Result<(), Refusal> {
        self.check()?;
        if self.database_down.load(Ordering::Acquire) {
            return Err(Refusal::DatabaseDown);
        }
        Ok(())
    }

    /// Cluster mode: whether the shared database answers. Always true on a node alone.
    pub fn database_up(&self) -> bool {
        !self.database_down.load(Ordering::Acquire)
    }

    /// Cluster mode: the database keeper's verdict.
    pub fn set_database_up(&self, up: bool) {
        self.database_down.store(!up, Ordering::Release);
    }

    /// The last free-space measurement of `data_dir`'s filesystem, in bytes.
    pub fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Whether the last write to the store failed.
    pub fn is_store_failing(&self) -> bool {
        self.store_failing.load(Ordering::Acquire)
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
        Health::RETRY_AFTER_SECS
    }

    /// See [`Health::retry_after_secs`].
    pub const RETRY_AFTER_SECS: u64 = 30;
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
