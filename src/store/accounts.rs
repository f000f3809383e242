//! OAuth2 accounts of smarthost routes (SPEC 15): each asset's grant (`route_tokens`) and
//! the authorization flows under way (`oauth_flows`). Shared by every node in cluster
//! mode: the newest refresh token is the one every node continues from, a refresh is
//! made under a lease so one node refreshes at a time, and a consent granted through any
//! node's callback completes the flow another node started.

use super::{codec, Durable, StoreError, StoreFuture};
use crate::model::time::now_ms;
use serde::{Deserialize, Serialize};

/// An asset's grant as the store holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteToken {
    /// The newest refresh token; empty until an authorization or a rotation stored one
    /// (the route then starts from its configured `refresh_token`).
    pub refresh_token: String,
    /// One more at each authorization: a refresh begun under an older grant is not
    /// written over a newer one.
    #[serde(default)]
    pub generation: u64,
    /// Set when the provider refused the grant (`invalid_grant`): why.
    #[serde(default)]
    pub needs_authorization: Option<String>,
    /// SHA-256 (hex) of the refresh token that was refused.
    #[serde(default)]
    pub refused_sha256: String,
    pub updated_ms: u64,
    /// The node refreshing now, and until when its lease holds.
    #[serde(default)]
    pub lease_holder: Option<String>,
    #[serde(default)]
    pub lease_until_ms: u64,
}

/// What a refresh made under the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refreshed {
    /// The provider issued a new refresh token: it replaces the stored one.
    Rotated(String),
    /// The provider refused the grant: the route needs a new authorization. The hash is
    /// that of the refused token.
    Refused {
        reason: String,
        token_sha256: String,
    },
    /// Nothing to write (the same token, or a failure that says nothing about the grant).
    Unchanged,
}

/// An authorization under way: the authorization-code flow (PKCE, `state`) or the
/// device-code flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthFlow {
    pub id: String,
    pub asset_id: String,
    pub device: bool,
    /// Code flow: SHA-256 (hex) of the secret half of `state` (`<id>.<secret>`).
    pub secret_sha256: String,
    /// Code flow: the PKCE verifier; device flow: the device code.
    pub verifier: String,
    pub redirect_uri: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub status: FlowStatus,
    /// `Failed`: why.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Pending,
    /// The callback came and its code is being exchanged: the `state` is used.
    Exchanging,
    Authorized,
    Failed,
}

impl FlowStatus {
    pub fn label(self) -> &'static str {
        match self {
            FlowStatus::Pending => "pending",
            FlowStatus::Exchanging => "exchanging",
            FlowStatus::Authorized => "authorized",
            FlowStatus::Failed => "failed",
        }
    }
}

/// What [`Accounts::claim_flow`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowClaim {
    /// The caller holds the flow, now `Exchanging`: it completes it.
    Claimed(OAuthFlow),
    Unknown,
    /// Claimed before (its `state` is single use).
    Used,
    Expired,
}

pub trait Accounts: Send + Sync {
    /// The asset's grant, if the store holds one.
    fn token<'a>(&'a self, asset_id: &'a str) -> StoreFuture<'a, Option<RouteToken>>;

    /// Takes the asset's refresh lease for `holder` for `ttl_ms`: the grant as it is now
    /// (a default one when none is stored), or `None` while another holder's lease lasts.
    fn lease<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        ttl_ms: u64,
    ) -> StoreFuture<'a, Option<RouteToken>>;

    /// Records what a refresh under the lease found, if the grant is still the
    /// `generation` leased, and gives the lease back. True when written.
    fn finish_refresh<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        generation: u64,
        found: &'a Refreshed,
    ) -> StoreFuture<'a, bool>;

    /// A new grant: its refresh token replaces the stored one, the generation goes up and
    /// a refusal is forgotten. Durable when the future finishes.
    fn authorize<'a>(
        &'a self,
        asset_id: &'a str,
        refresh_token: &'a str,
    ) -> StoreFuture<'a, RouteToken>;

    /// Keeps a new flow (or an update of one).
    fn put_flow<'a>(&'a self, flow: &'a OAuthFlow) -> StoreFuture<'a, ()>;

    fn flow<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<OAuthFlow>>;

    /// Marks a pending, unexpired flow `Exchanging` and hands it over; the check and the
    /// mark are one step, so a `state` completes one flow once.
    fn claim_flow<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, FlowClaim>;

    /// Forgets flows created before `cutoff_ms`.
    fn forget_flows_before<'a>(&'a self, cutoff_ms: u64) -> StoreFuture<'a, ()>;
}

/// SHA-256 (hex) of a secret, for comparing without keeping it.
pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The grant with the lease taken by `holder`, or `None` while another's lasts.
pub(super) fn take_lease(
    t: Option<RouteToken>,
    holder: &str,
    now: u64,
    ttl_ms: u64,
) -> Option<RouteToken> {
    let mut t = t.unwrap_or_default();
    if t.lease_holder.as_deref().is_some_and(|h| h != holder) && t.lease_until_ms > now {
        return None;
    }
    t.lease_holder = Some(holder.to_string());
    t.lease_until_ms = now + ttl_ms;
    Some(t)
}

/// The grant after `found`, with `holder`'s lease given back, and whether `found` was
/// written (not when a newer grant came meanwhile: then only the lease is given back).
pub(super) fn after_refresh(
    mut t: RouteToken,
    holder: &str,
    generation: u64,
    found: &Refreshed,
) -> (RouteToken, bool) {
    if t.lease_holder.as_deref() == Some(holder) {
        t.lease_holder = None;
        t.lease_until_ms = 0;
    }
    if t.generation != generation {
        return (t, false);
    }
    match found {
        Refreshed::Rotated(new) => {
            t.refresh_token = new.clone();
            t.updated_ms = now_ms();
        }
        Refreshed::Refused {
            reason,
            token_sha256,
        } => {
            t.needs_authorization = Some(reason.clone());
            t.refused_sha256 = token_sha256.clone();
            t.updated_ms = now_ms();
        }
        Refreshed::Unchanged => {}
    }
    (t, true)
}

/// What claiming `flow` at `now` finds; a `Claimed` flow is to be written back.
pub(super) fn claim(flow: Option<OAuthFlow>, now: u64) -> FlowClaim {
    match flow {
        None => FlowClaim::Unknown,
        Some(f) if f.status != FlowStatus::Pending => FlowClaim::Used,
        Some(f) if f.expires_ms <= now => FlowClaim::Expired,
        Some(mut f) => {
            f.status = FlowStatus::Exchanging;
            FlowClaim::Claimed(f)
        }
    }
}

const TOKENS: &str = "route_tokens";
const FLOWS: &str = "oauth_flows";

/// [`Accounts`] on sled: the `route_tokens` and `oauth_flows` trees, each change one
/// compare-and-swap.
pub(super) struct SledAccounts {
    pub(super) tokens: sled::Tree,
    pub(super) flows: sled::Tree,
    pub(super) durable: Durable,
}

impl SledAccounts {
    pub(super) fn open(db: &sled::Db, durable: &Durable) -> sled::Result<SledAccounts> {
        Ok(SledAccounts {
            tokens: db.open_tree(TOKENS)?,
            flows: db.open_tree(FLOWS)?,
            durable: durable.clone(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        tree: &'static str,
        key: &str,
        v: &[u8],
    ) -> Result<T, StoreError> {
        codec::decode(v).map_err(|reason| StoreError::Corrupt {
            tree,
            key: key.to_string(),
            reason,
        })
    }

    fn token_now(&self, asset_id: &str) -> Result<Option<RouteToken>, StoreError> {
        self.tokens
            .get(asset_id.as_bytes())?
            .map(|v| Self::decode(TOKENS, asset_id, &v))
            .transpose()
    }

    /// Applies `change` to the asset's grant as one compare-and-swap (retried on a race);
    /// returns what `change` returned with the grant written, or `None` if it declined.
    fn update_token<R>(
        &self,
        asset_id: &str,
        mut change: impl FnMut(Option<RouteToken>) -> Option<(RouteToken, R)>,
    ) -> Result<Option<R>, StoreError> {
        loop {
            let current = self.tokens.get(asset_id.as_bytes())?;
            let decoded = current
                .as_ref()
                .map(|v| Self::decode(TOKENS, asset_id, v))
                .transpose()?;
            let Some((next, out)) = change(decoded) else {
                return Ok(None);
            };
            let swapped = self.tokens.compare_and_swap(
                asset_id.as_bytes(),
                current,
                Some(codec::encode(&next)),
            )?;
            if swapped.is_ok() {
                return Ok(Some(out));
            }
        }
    }

    fn claim_now(&self, id: &str, now: u64) -> Result<FlowClaim, StoreError> {
        loop {
            let Some(current) = self.flows.get(id.as_bytes())? else {
                return Ok(FlowClaim::Unknown);
            };
            let found = claim(Some(Self::decode(FLOWS, id, &current)?), now);
            let FlowClaim::Claimed(flow) = &found else {
                return Ok(found);
            };
            let swapped = self.flows.compare_and_swap(
                id.as_bytes(),
                Some(current),
                Some(codec::encode(flow)),
            )?;
            if swapped.is_ok() {
                return Ok(found);
            }
        }
    }
}

impl Accounts for SledAccounts {
    fn token<'a>(&'a self, asset_id: &'a str) -> StoreFuture<'a, Option<RouteToken>> {
        Box::pin(std::future::ready(self.token_now(asset_id)))
    }

    fn lease<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        ttl_ms: u64,
    ) -> StoreFuture<'a, Option<RouteToken>> {
        let taken = self.update_token(asset_id, |t| {
            take_lease(t, holder, now_ms(), ttl_ms).map(|t| (t.clone(), t))
        });
        Box::pin(std::future::ready(taken))
    }

    fn finish_refresh<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        generation: u64,
        found: &'a Refreshed,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut written = false;
            self.update_token(asset_id, |t| {
                let (next, w) = after_refresh(t?, holder, generation, found);
                written = w;
                Some((next, ()))
            })?;
            self.durable.commit().await?;
            Ok(written)
        })
    }

    fn authorize<'a>(
        &'a self,
        asset_id: &'a str,
        refresh_token: &'a str,
    ) -> StoreFuture<'a, RouteToken> {
        Box::pin(async move {
            let t = self.update_token(asset_id, |t| {
                let t = new_grant(t.unwrap_or_default(), refresh_token);
                Some((t.clone(), t))
            })?;
            self.durable.commit().await?;
            t.ok_or(StoreError::Closed)
        })
    }

    fn put_flow<'a>(&'a self, flow: &'a OAuthFlow) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.flows.insert(flow.id.as_bytes(), codec::encode(flow))?;
            self.durable.commit().await
        })
    }

    fn flow<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<OAuthFlow>> {
        let found = self
            .flows
            .get(id.as_bytes())
            .map_err(StoreError::from)
            .and_then(|v| v.map(|v| Self::decode(FLOWS, id, &v)).transpose());
        Box::pin(std::future::ready(found))
    }

    fn claim_flow<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, FlowClaim> {
        Box::pin(async move {
            let claim = self.claim_now(id, now_ms)?;
            if matches!(claim, FlowClaim::Claimed(_)) {
                self.durable.commit().await?;
            }
            Ok(claim)
        })
    }

    fn forget_flows_before<'a>(&'a self, cutoff_ms: u64) -> StoreFuture<'a, ()> {
        let forget = || -> Result<(), StoreError> {
            for item in self.flows.iter() {
                let (k, v) = item?;
                let old = codec::decode::<OAuthFlow>(&v)
                    .map(|f| f.created_ms < cutoff_ms)
                    .unwrap_or(true);
                if old {
                    self.flows.remove(k)?;
                }
            }
            Ok(())
        };
        Box::pin(std::future::ready(forget()))
    }
}

/// `t` replaced by a new grant of `refresh_token`.
pub(super) fn new_grant(t: RouteToken, refresh_token: &str) -> RouteToken {
    RouteToken {
        refresh_token: refresh_token.to_string(),
        generation: t.generation + 1,
        needs_authorization: None,
        refused_sha256: String::new(),
        updated_ms: now_ms(),
        lease_holder: None,
        lease_until_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn flow(id: &str, expires_ms: u64) -> OAuthFlow {
        OAuthFlow {
            id: id.into(),
            asset_id: "a".into(),
            device: false,
            secret_sha256: sha256_hex("s"),
            verifier: "v".into(),
            redirect_uri: "http://127.0.0.1/oauth/callback".into(),
            created_ms: 1,
            expires_ms,
            status: FlowStatus::Pending,
            error: None,
        }
    }

    #[tokio::test]
    async fn one_lease_at_a_time_and_a_newer_grant_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.accounts();
        assert_eq!(a.token("a").await.unwrap(), None);
        let t = a.lease("a", "n1", 60_000).await.unwrap().unwrap();
        assert_eq!(t.refresh_token, "");
        assert!(a.lease("a", "n2", 60_000).await.unwrap().is_none());
        let rotated = Refreshed::Rotated("r-2".into());
        assert!(a.finish_refresh("a", "n1", 0, &rotated).await.unwrap());
        let t = a.lease("a", "n2", 60_000).await.unwrap().unwrap();
        assert_eq!(t.refresh_token, "r-2");
        // A new grant while n2 refreshes: n2's answer is not written over it.
        let g = a.authorize("a", "r-new").await.unwrap();
        assert_eq!(g.generation, 1);
        let refused = Refreshed::Refused {
            reason: "invalid_grant".into(),
            token_sha256: sha256_hex("r-2"),
        };
        assert!(!a.finish_refresh("a", "n2", 0, &refused).await.unwrap());
        let t = a.token("a").await.unwrap().unwrap();
        assert_eq!(
            (t.refresh_token.as_str(), t.needs_authorization),
            ("r-new", None)
        );
        assert!(a.finish_refresh("a", "n2", 1, &refused).await.unwrap());
        let t = a.token("a").await.unwrap().unwrap();
        assert_eq!(t.needs_authorization.as_deref(), Some("invalid_grant"));
        assert_eq!(
            a.authorize("a", "r-3").await.unwrap().needs_authorization,
            None
        );
    }

    #[tokio::test]
    async fn a_flow_is_claimed_once_and_not_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.accounts();
        a.put_flow(&flow("f1", 10_000)).await.unwrap();
        a.put_flow(&flow("f2", 10_000)).await.unwrap();
        assert_eq!(
            a.claim_flow("nope", 5_000).await.unwrap(),
            FlowClaim::Unknown
        );
        assert_eq!(
            a.claim_flow("f2", 10_000).await.unwrap(),
            FlowClaim::Expired
        );
        assert!(matches!(
            a.claim_flow("f1", 5_000).await.unwrap(),
            FlowClaim::Claimed(f) if f.status == FlowStatus::Exchanging
        ));
        assert_eq!(a.claim_flow("f1", 5_000).await.unwrap(), FlowClaim::Used);
        a.forget_flows_before(2).await.unwrap();
        assert_eq!(a.flow("f1").await.unwrap(), None);
    }
}
