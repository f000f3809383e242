//! Contact-policy state: the consent list of each group (`consent`, key `group \0 address`)
//! and the recent send times of each recipient per group (`frequency`), pruned to the
//! group's window whenever they are written and by the garbage collector, which deletes a
//! recipient's counter once its window has ended.

use super::{codec, Durable, Quarantine, StoreError, StoreFuture};

pub(super) use super::suppression::normalise;

fn key(group: &str, address: &str) -> Vec<u8> {
    let mut k = group.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(normalise(address).as_bytes());
    k
}

/// Contact-policy state: consent lists and per-recipient send times of each group. Shared
/// by every node in cluster mode, so a consent change or a send made through one node
/// counts on all.
///
/// Every method is a future: ready at once on sled, a query on PostgreSQL.
pub trait Policy: Send + Sync {
    fn has_consent<'a>(&'a self, group: &'a str, address: &'a str) -> StoreFuture<'a, bool>;

    /// Grants or withdraws consent; returns whether that changed anything. Durable when
    /// the future finishes.
    fn set_consent<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        granted: bool,
    ) -> StoreFuture<'a, bool>;

    /// The addresses that consented to `group`.
    fn consents<'a>(&'a self, group: &'a str) -> StoreFuture<'a, Vec<String>>;

    /// Sends to `address` in `group` since `since_ms`.
    fn sends_since<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        since_ms: u64,
    ) -> StoreFuture<'a, usize>;

    /// Records a send at `at_ms`, dropping times older than `since_ms`. On sled it is not
    /// made durable on its own: it rides the commit of the queue update that follows.
    fn record_send<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        at_ms: u64,
        since_ms: u64,
    ) -> StoreFuture<'a, ()>;

    /// Counters held (one per group and recipient).
    fn frequency_len(&self) -> StoreFuture<'_, usize>;

    /// Drops send times older than their group's window (`window_ms(group)`) as seen at
    /// `now_ms`, deleting counters left empty. Returns how many counters were deleted. A
    /// send recorded meanwhile is never lost.
    fn prune_frequency<'a>(
        &'a self,
        now_ms: u64,
        window_ms: &'a (dyn Fn(&str) -> u64 + Sync),
    ) -> StoreFuture<'a, usize>;
}

/// [`Policy`] on sled: the `consent` and `frequency` trees.
pub(super) struct SledPolicy {
    pub(super) consent: sled::Tree,
    pub(super) frequency: sled::Tree,
    pub(super) quarantine: Quarantine,
    pub(super) durable: Durable,
}

impl Policy for SledPolicy {
    fn has_consent<'a>(&'a self, group: &'a str, address: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(std::future::ready(
            self.consent
                .contains_key(key(group, address))
                .map_err(StoreError::from),
        ))
    }

    fn consents<'a>(&'a self, group: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(std::future::ready(self.consents_now(group)))
    }

    fn sends_since<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        since_ms: u64,
    ) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(
            self.sends_since_now(group, address, since_ms),
        ))
    }

    fn record_send<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        at_ms: u64,
        since_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(std::future::ready(
            self.record_send_now(group, address, at_ms, since_ms),
        ))
    }

    fn frequency_len(&self) -> StoreFuture<'_, usize> {
        Box::pin(std::future::ready(Ok(self.frequency.len())))
    }

    fn prune_frequency<'a>(
        &'a self,
        now_ms: u64,
        window_ms: &'a (dyn Fn(&str) -> u64 + Sync),
    ) -> StoreFuture<'a, usize> {
        Box::pin(std::future::ready(
            self.prune_frequency_now(now_ms, window_ms),
        ))
    }

    fn set_consent<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        granted: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let k = key(group, address);
            let changed = if granted {
                self.consent.insert(k, &[])?.is_none()
            } else {
                self.consent.remove(k)?.is_some()
            };
            self.durable.commit().await?;
            Ok(changed)
        })
    }
}

impl SledPolicy {
    fn consents_now(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let mut p = group.as_bytes().to_vec();
        p.push(0);
        let mut out = Vec::new();
        for item in self.consent.scan_prefix(&p) {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k[p.len()..]).into_owned());
        }
        Ok(out)
    }

    fn sends_since_now(
        &self,
        group: &str,
        address: &str,
        since_ms: u64,
    ) -> Result<usize, StoreError> {
        let times: Vec<u64> = match self.frequency.get(key(group, address))? {
            Some(v) => codec::decode(&v).unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(times.iter().filter(|t| **t >= since_ms).count())
    }

    fn record_send_now(
        &self,
        group: &str,
        address: &str,
        at_ms: u64,
        since_ms: u64,
    ) -> Result<(), StoreError> {
        let k = key(group, address);
        let mut times: Vec<u64> = match self.frequency.get(&k)? {
            Some(v) => codec::decode(&v).unwrap_or_default(),
            None => Vec::new(),
        };
        times.retain(|t| *t >= since_ms);
        times.push(at_ms);
        self.frequency.insert(k, codec::encode(&times))?;
        Ok(())
    }

    /// Drops send times older than their group's window (`window_ms(group)`) as seen at
    /// `now_ms`, deleting counters left empty. Returns how many counters were deleted.
    /// Each write is a compare-and-swap against the value read, so a send recorded
    /// meanwhile is never lost (that counter is simply looked at again next time).
    fn prune_frequency_now(
        &self,
        now_ms: u64,
        window_ms: &dyn Fn(&str) -> u64,
    ) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for item in self.frequency.iter() {
            let (k, v) = item?;
            let group = k.split(|b| *b == 0).next().unwrap_or_default();
            let since = now_ms.saturating_sub(window_ms(&String::from_utf8_lossy(group)));
            let times: Vec<u64> = match codec::decode(&v) {
                Ok(t) => t,
                Err(reason) => {
                    // A counter only ever caps sends: losing one is harmless, keeping an
                    // unreadable one for ever is not.
                    self.quarantine.put("frequency", &k, &v, &reason);
                    let _ = self
                        .frequency
                        .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?;
                    continue;
                }
            };
            let kept: Vec<u64> = times.iter().copied().filter(|t| *t >= since).collect();
            if kept.len() == times.len() {
                continue;
            }
            let new = (!kept.is_empty()).then(|| codec::encode(&kept));
            let swapped = self
                .frequency
                .compare_and_swap(&k, Some(&v), new.as_deref())?;
            if swapped.is_ok() && kept.is_empty() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    #[tokio::test]
    async fn counters_are_trimmed_to_their_window_and_deleted_when_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let hour = 3_600_000;
        store
            .policy()
            .record_send("promo", "a@x.org", 10 * hour, 0)
            .await
            .unwrap();
        store
            .policy()
            .record_send("promo", "a@x.org", 11 * hour, 0)
            .await
            .unwrap();
        store
            .policy()
            .record_send("promo", "b@x.org", 10 * hour, 0)
            .await
            .unwrap();
        store
            .policy()
            .record_send("daily", "a@x.org", 10 * hour, 0)
            .await
            .unwrap();
        let window = |g: &str| if g == "daily" { 24 * hour } else { hour };
        // At 11:30 the promo window (1 h) holds only the 11:00 send of a@.
        assert_eq!(
            store
                .policy()
                .prune_frequency(11 * hour + hour / 2, &window)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .policy()
                .sends_since("promo", "a@x.org", 0)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .policy()
                .sends_since("promo", "b@x.org", 0)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            store
                .policy()
                .sends_since("daily", "a@x.org", 0)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store
                .policy()
                .prune_frequency(35 * hour, &window)
                .await
                .unwrap(),
            2
        );
        assert_eq!(store.policy().frequency_len().await.unwrap(), 0);
    }
}
