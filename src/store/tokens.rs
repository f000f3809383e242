//! Rotated OAuth2 refresh tokens of smarthost routes (`route_tokens`, key the asset id).
//! A token endpoint that rotates (Microsoft's does on every use) invalidates the configured
//! refresh token; the newest one is written and flushed here before it is relied on, so a
//! restart continues the chain. Each entry names (by hash) the configured token it descends
//! from: a changed configuration means the operator re-authorized, and the entry is stale.

use super::{codec, Store, StoreError};
use serde::{Deserialize, Serialize};

const TREE: &str = "route_tokens";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteToken {
    /// The newest refresh token the endpoint issued.
    pub refresh_token: String,
    /// SHA-256 (hex) of the configured refresh token this one was rotated from.
    pub configured_sha256: String,
    pub updated_ms: u64,
}

impl Store {
    /// Opened on use rather than at start: rotations are rare (one per access token), and
    /// sled returns the open tree.
    fn route_tokens(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(TREE)?)
    }

    pub fn route_token(&self, asset_id: &str) -> Result<Option<RouteToken>, StoreError> {
        match self.route_tokens()?.get(asset_id.as_bytes())? {
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: TREE,
                    key: asset_id.to_string(),
                    reason,
                }),
            None => Ok(None),
        }
    }

    /// Replaces the asset's token and returns once it is on disk.
    pub async fn put_route_token(
        &self,
        asset_id: &str,
        token: &RouteToken,
    ) -> Result<(), StoreError> {
        self.route_tokens()?
            .insert(asset_id.as_bytes(), codec::encode(token))?;
        self.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_kept_per_asset_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.route_token("a").unwrap(), None);
        let t = |r: &str| RouteToken {
            refresh_token: r.into(),
            configured_sha256: "c".into(),
            updated_ms: 1,
        };
        store.put_route_token("a", &t("r-1")).await.unwrap();
        store.put_route_token("b", &t("r-9")).await.unwrap();
        store.put_route_token("a", &t("r-2")).await.unwrap();
        assert_eq!(store.route_token("a").unwrap(), Some(t("r-2")));
        assert_eq!(store.route_token("b").unwrap(), Some(t("r-9")));
    }
}
