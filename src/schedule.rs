//! The due-time scheduler shared by the outbound queue and the webhook outbox (Postfix's
//! qmgr in miniature): a heap of (due ms, id) with the records themselves in the store, at
//! most `concurrency` jobs at once, woken by new ids, by a freed slot or by the next due
//! time, never by polling. On shutdown it stops starting jobs and lets those in flight
//! finish (at most `drain`).

use crate::model::time::now_ms;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify, Semaphore};

/// Pending ids by due time (earliest first).
pub type Due = BinaryHeap<Reverse<(u64, String)>>;

/// Runs `job(id)` for every id once it is due, until `rx` closes or `shutdown` changes.
pub async fn run<F, Fut>(
    mut due: Due,
    mut rx: mpsc::UnboundedReceiver<(u64, String)>,
    mut shutdown: watch::Receiver<bool>,
    concurrency: usize,
    drain: Duration,
    job: F,
) where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency));
    // Woken when a job frees its slot, so due work never waits on a timer.
    let freed = Arc::new(Notify::new());
    loop {
        let now = now_ms();
        while due.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            let Some(Reverse((_, id))) = due.pop() else {
                break;
            };
            let work = job(id);
            let freed = freed.clone();
            tokio::spawn(async move {
                work.await;
                drop(permit);
                freed.notify_one();
            });
        }
        let wait = match due.peek() {
            Some(Reverse((t, _))) if slots.available_permits() > 0 => {
                Duration::from_millis(t.saturating_sub(now))
            }
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(item) => {
                    due.push(Reverse(item));
                    while let Ok(item) = rx.try_recv() {
                        due.push(Reverse(item));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep(wait) => {}
            _ = freed.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Jobs in flight finish before the store is closed.
    let _ = tokio::time::timeout(drain, slots.acquire_many(concurrency as u32)).await;
}
