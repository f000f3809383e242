//! What routes and the feedback about their sends need kept: route message ids (an SES
//! MessageId -> its tid, `route_ids`), SNS de-duplication (`sns_seen`: SNS delivers at
//! least once) and rotated OAuth2 refresh tokens of smarthost routes (`route_tokens`, see
//! [`RouteToken`]).

use super::tokens::RouteToken;
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

    /// Whether the SNS message `id` was already recorded (SNS delivers at least once).
    fn sns_seen<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;

    /// Remembers SNS message `id` as recorded, until [`RouteState::forget_sns_seen_before`]
    /// forgets it with the transactions it could refer to. Durable when the future finishes.
    fn mark_sns_seen<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()>;

    /// Forgets SNS messages recorded before `cutoff_ms`.
    fn forget_sns_seen_before(&self, cutoff_ms: u64) -> Result<(), StoreError>;

    /// The newest refresh token of the asset's route, if one was rotated.
    fn route_token(&self, asset_id: &str) -> Result<Option<RouteToken>, StoreError>;

    /// Replaces the asset's token; durable when the future finishes.
    fn put_route_token<'a>(
        &'a self,
        asset_id: &'a str,
        token: &'a RouteToken,
    ) -> StoreFuture<'a, ()>;
}

const TOKENS: &str = "route_tokens";

/// [`RouteState`] on sled: the `route_ids`, `sns_seen` and `route_tokens` trees.
pub(super) struct SledRouteState {
    pub(super) db: sled::Db,
    pub(super) route_ids: sled::Tree,
    pub(super) sns_seen: sled::Tree,
    pub(super) durable: Durable,
}

impl SledRouteState {
    /// Opened on use rather than at start: rotations are rare (one per access token), and
    /// sled returns the open tree.
    fn route_tokens(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(TOKENS)?)
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

    fn sns_seen<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let seen = self.sns_seen.contains_key(id.as_bytes());
        Box::pin(std::future::ready(seen.map_err(StoreError::from)))
    }

    fn mark_sns_seen<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.sns_seen
                .insert(id.as_bytes(), &now_ms().to_be_bytes())?;
            self.durable.commit().await
        })
    }

    fn forget_sns_seen_before(&self, cutoff_ms: u64) -> Result<(), StoreError> {
        for k in codec::stamped_before(&self.sns_seen, cutoff_ms)? {
            self.sns_seen.remove(k)?;
        }
        Ok(())
    }

    fn route_token(&self, asset_id: &str) -> Result<Option<RouteToken>, StoreError> {
        match self.route_tokens()?.get(asset_id.as_bytes())? {
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: TOKENS,
                    key: asset_id.to_string(),
                    reason,
                }),
            None => Ok(None),
        }
    }

    fn put_route_token<'a>(
        &'a self,
        asset_id: &'a str,
        token: &'a RouteToken,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.route_tokens()?
                .insert(asset_id.as_bytes(), codec::encode(token))?;
            self.durable.commit().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn tokens_are_kept_per_asset_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let routes = store.routes();
        assert_eq!(routes.route_token("a").unwrap(), None);
        let t = |r: &str| RouteToken {
            refresh_token: r.into(),
            configured_sha256: "c".into(),
            updated_ms: 1,
        };
        routes.put_route_token("a", &t("r-1")).await.unwrap();
        routes.put_route_token("b", &t("r-9")).await.unwrap();
        routes.put_route_token("a", &t("r-2")).await.unwrap();
        assert_eq!(routes.route_token("a").unwrap(), Some(t("r-2")));
        assert_eq!(routes.route_token("b").unwrap(), Some(t("r-9")));
    }
}
