//! What routes and the feedback about their sends need kept: route message ids (an SES
//! MessageId -> its tid, `route_ids`), SNS de-duplication (`sns_seen`: SNS delivers at
//! least once).

use super::{codec, Durable, StoreError, StoreFuture};
use crate::model::time::now_ms;

/// Route message ids, SNS de-duplication and route tokens. Shared by every node in cluster
/// mode, so feedback about a send reaches its transaction whichever node it lands on, and
/// a rotated refresh token is the one every node continues from.
///
/// Lookups that feedback arriving at any node makes are futures (a query in a cluster);
/// the writes the queue makes stay on this node's sled (the mirror task copies route ids
/// with their transaction).
pub trait RouteState: Send + Sync {
    /// Maps a route's message id (SES MessageId) to its tid. Not made durable here: the
    /// caller's next commit (the update recording 7501) makes it durable with the rest.
    fn map_route_id(&self, id: &str, tid: &str) -> Result<(), StoreError>;

    /// The tid a route's message id belongs to.
    fn tid_for_route_id<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>>;

    /// Forgets route message ids (those of a collected transaction).
    fn forget_route_ids(&self, ids: &[String]) -> Result<(), StoreError>;

    /// Claims SNS message `id` for recording (SNS delivers at least once, and may deliver
    /// one message to two nodes at once): [`SnsClaim::Claimed`] when no one recorded it
    /// and no one else holds a claim made at or after `stale_before_ms` (an older claim
    /// is taken over: its holder died). The claim and its check are one step.
    fn claim_sns<'a>(&'a self, id: &'a str, stale_before_ms: u64) -> StoreFuture<'a, SnsClaim>;

    /// Marks a claimed SNS message `id` as recorded, until
    /// [`RouteState::forget_sns_seen_before`] forgets it with the transactions it could
    /// refer to. Durable when the future finishes.
    fn finish_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// Gives a claim back unrecorded (recording failed), so a redelivery need not wait
    /// for it to go stale.
    fn release_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// Forgets SNS messages recorded before `cutoff_ms`.
    fn forget_sns_seen_before(&self, cutoff_ms: u64) -> Result<(), StoreError>;
}

/// What [`RouteState::claim_sns`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnsClaim {
    /// The caller holds the claim: record, then finish (or release).
    Claimed,
    /// Recorded already.
    Recorded,
    /// Another delivery holds a fresh claim and is recording it now.
    Busy,
}

/// Appended to the claim time in an `sns_seen` value while the message is being recorded;
/// a recorded message's value is its time alone (what `codec::stamped_before` reads).
const CLAIMED: u8 = b'c';

/// [`RouteState`] on sled: the `route_ids` and `sns_seen` trees.
pub(super) struct SledRouteState {
    pub(super) route_ids: sled::Tree,
    pub(super) sns_seen: sled::Tree,
    pub(super) durable: Durable,
}

impl SledRouteState {
    /// [`RouteState::claim_sns`] as one compare-and-swap on the `sns_seen` entry.
    fn claim_sns_now(&self, id: &str, stale_before_ms: u64) -> Result<SnsClaim, StoreError> {
        let mut claim = now_ms().to_be_bytes().to_vec();
        claim.push(CLAIMED);
        loop {
            let current = self.sns_seen.get(id.as_bytes())?;
            if let Some(v) = &current {
                if v.last() != Some(&CLAIMED) {
                    return Ok(SnsClaim::Recorded);
                }
                let at = v[..v.len() - 1]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or_default();
                if at >= stale_before_ms {
                    return Ok(SnsClaim::Busy);
                }
            }
            let swapped =
                self.sns_seen
                    .compare_and_swap(id.as_bytes(), current, Some(claim.as_slice()))?;
            if swapped.is_ok() {
                return Ok(SnsClaim::Claimed);
            }
        }
    }
}

impl RouteState for SledRouteState {
    fn map_route_id(&self, id: &str, tid: &str) -> Result<(), StoreError> {
        self.route_ids.insert(id.as_bytes(), tid.as_bytes())?;
        Ok(())
    }

    fn tid_for_route_id<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        let found = self.route_ids.get(id.as_bytes());
        Box::pin(std::future::ready(
            found
                .map_err(StoreError::from)
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())),
        ))
    }

    fn forget_route_ids(&self, ids: &[String]) -> Result<(), StoreError> {
        for id in ids {
            self.route_ids.remove(id.as_bytes())?;
        }
        Ok(())
    }

    fn claim_sns<'a>(&'a self, id: &'a str, stale_before_ms: u64) -> StoreFuture<'a, SnsClaim> {
        Box::pin(std::future::ready(self.claim_sns_now(id, stale_before_ms)))
    }

    fn finish_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.sns_seen
                .insert(id.as_bytes(), &now_ms().to_be_bytes())?;
            self.durable.commit().await
        })
    }

    fn release_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        let released = self.sns_seen.fetch_and_update(id.as_bytes(), |v| match v {
            Some(v) if v.last() == Some(&CLAIMED) => None,
            other => other.map(|v| v.to_vec()),
        });
        Box::pin(std::future::ready(
            released.map(|_| ()).map_err(StoreError::from),
        ))
    }

    fn forget_sns_seen_before(&self, cutoff_ms: u64) -> Result<(), StoreError> {
        for k in codec::stamped_before(&self.sns_seen, cutoff_ms)? {
            self.sns_seen.remove(k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn an_sns_claim_is_taken_once_until_released_finished_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let routes = store.routes();
        let fresh = 0;
        assert_eq!(
            routes.claim_sns("m", fresh).await.unwrap(),
            SnsClaim::Claimed
        );
        assert_eq!(routes.claim_sns("m", fresh).await.unwrap(), SnsClaim::Busy);
        routes.release_sns("m").await.unwrap();
        assert_eq!(
            routes.claim_sns("m", fresh).await.unwrap(),
            SnsClaim::Claimed
        );
        // A claim made before the stale mark is taken over.
        let later = now_ms() + 1_000;
        assert_eq!(
            routes.claim_sns("m", later).await.unwrap(),
            SnsClaim::Claimed
        );
        routes.finish_sns("m").await.unwrap();
        assert_eq!(
            routes.claim_sns("m", later).await.unwrap(),
            SnsClaim::Recorded
        );
        // Releasing a recorded message keeps it recorded.
        routes.release_sns("m").await.unwrap();
        assert_eq!(
            routes.claim_sns("m", later).await.unwrap(),
            SnsClaim::Recorded
        );
        // Finished entries are what the purge reads as times.
        routes.forget_sns_seen_before(now_ms() + 1).unwrap();
        assert_eq!(
            routes.claim_sns("m", fresh).await.unwrap(),
            SnsClaim::Claimed
        );
    }
}
