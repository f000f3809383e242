//! Heavy parsing (MO rendering, authentication of large messages, DSN/ARF reports) runs
//! here: on tokio's blocking threads, at most `permits` at a time, so a burst of hostile
//! 40 MB messages takes that many cores and never stalls the async workers that serve
//! SMTP, HTTP and every other webhook. Invariant: a permit is held until the work itself
//! ends, even when the task that asked for it was cancelled.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shared bound on heavy work; one per daemon, cheap to clone.
#[derive(Clone, Debug)]
pub struct Heavy {
    permits: Arc<Semaphore>,
    size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HeavyError {
    #[error("heavy work panicked or was cancelled: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// The right to run one piece of heavy work; see [`Heavy::permit`].
pub struct Permit {
    _slot: OwnedSemaphorePermit,
}

impl Heavy {
    /// At most `concurrency` (at least 1) pieces of heavy work at a time.
    pub fn new(concurrency: usize) -> Heavy {
        let size = concurrency.max(1);
        Heavy {
            permits: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// One piece of heavy work per core.
    pub fn per_core() -> Heavy {
        Heavy::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// How many pieces of heavy work may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many pieces of heavy work run now.
    pub fn running(&self) -> usize {
        self.size - self.permits.available_permits()
    }

    /// Waits for a free slot. Take the permit before preparing what the work needs (a
    /// copy of a large message, say), so that preparation is bounded too.
    pub async fn permit(&self) -> Permit {
        // The semaphore is never closed, so acquiring fails only if it were.
        let permit = self.permits.clone().acquire_owned().await;
        Permit {
            _slot: permit.expect("the heavy-work semaphore is never closed"),
        }
    }

    /// Runs `work` on a blocking thread once a slot is free: `heavy.run(|| parse(..)).await`.
    pub async fn run<T, F>(&self, work: F) -> Result<T, HeavyError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.permit().await.run(work).await
    }
}

impl Permit {
    /// Runs `work` on a blocking thread; the slot frees when `work` returns.
    pub async fn run<T, F>(self, work: F) -> Result<T, HeavyError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(tokio::task::spawn_blocking(move || {
            let _slot = self;
            work()
        })
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_size_run_at_once() {
        let heavy = Heavy::new(2);
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (heavy, now, peak) = (heavy.clone(), now.clone(), peak.clone());
                tokio::spawn(async move {
                    heavy
                        .run(move || {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(heavy.running(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_caller_keeps_the_slot_until_the_work_ends() {
        let heavy = Heavy::new(1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let h = heavy.clone();
        let caller = tokio::spawn(async move {
            h.run(move || {
                let _ = rx.recv();
            })
            .await
        });
        while heavy.running() == 0 {
            tokio::task::yield_now().await;
        }
        caller.abort();
        let _ = caller.await;
        assert_eq!(heavy.running(), 1, "slot freed while the work still runs");
        tx.send(()).unwrap();
        heavy.run(|| ()).await.unwrap();
    }
}
