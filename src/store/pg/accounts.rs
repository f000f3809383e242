//! [`Accounts`] on PostgreSQL: the `route_tokens` and `oauth_flows` tables, each row the
//! record's JSON. Every change reads its row `FOR UPDATE` and writes it in the same
//! transaction, with the same rules as on sled (`store::accounts`), so two nodes never
//! both hold a refresh lease and a `state` completes one flow once.

use super::Pg;
use crate::model::time::now_ms;
use crate::store::accounts::{
    after_refresh, claim, new_grant, take_lease, Accounts, FlowClaim, OAuthFlow, Refreshed,
    RouteToken,
};
use crate::store::{StoreError, StoreFuture};
use std::sync::Arc;

const TOKEN: &str = "SELECT body FROM route_tokens WHERE asset_id = $1";
const TOKEN_ROW: &str = "INSERT INTO route_tokens (asset_id, body) VALUES ($1, $2)
    ON CONFLICT (asset_id) DO NOTHING";
const TOKEN_LOCK: &str = "SELECT body FROM route_tokens WHERE asset_id = $1 FOR UPDATE";
const TOKEN_PUT: &str = "UPDATE route_tokens SET body = $2 WHERE asset_id = $1";
const FLOW: &str = "SELECT body FROM oauth_flows WHERE id = $1";
const FLOW_LOCK: &str = "SELECT body FROM oauth_flows WHERE id = $1 FOR UPDATE";
const FLOW_PUT: &str = "INSERT INTO oauth_flows (id, created_ms, body) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET body = excluded.body";
const FLOWS_FORGET: &str = "DELETE FROM oauth_flows WHERE created_ms < $1";

pub(in crate::store) struct PgAccounts(pub(in crate::store) Arc<Pg>);

fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    key: &str,
    body: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt {
        tree: table,
        key: key.into(),
        reason: e.to_string(),
    })
}

fn encode<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain records serialise")
}

impl PgAccounts {
    /// The record `sql` selects by `key` (its JSON body), decoded.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let body: Option<String> = self
            .0
            .run(|c| async move {
                let st = c.prepare_cached(sql).await?;
                Ok(c.query_opt(&st, &[&key]).await?.map(|r| r.get(0)))
            })
            .await?;
        body.map(|b| decode(table, key, &b)).transpose()
    }

    /// Applies `change` to the asset's grant in one transaction, its row locked (made
    /// first when there is none). `change` gets the grant (default when new) and returns
    /// the grant to write with its answer, or `None` to write nothing.
    async fn update_token<R: Send + 'static>(
        &self,
        asset_id: &str,
        change: impl FnOnce(RouteToken) -> Option<(RouteToken, R)> + Send + 'static,
    ) -> Result<Option<R>, StoreError> {
        let asset = asset_id.to_string();
        let empty = encode(&RouteToken::default());
        let body: Result<Option<(String, R)>, StoreError> = self
            .0
            .run(|mut c| async move {
                let tx = c.transaction().await?;
                tx.execute(TOKEN_ROW, &[&asset, &empty]).await?;
                let body: String = tx.query_one(TOKEN_LOCK, &[&asset]).await?.get(0);
                let Ok(current) = decode::<RouteToken>("route_tokens", &asset, &body) else {
                    return Ok(Err(StoreError::Corrupt {
                        tree: "route_tokens",
                        key: asset,
                        reason: "undecodable grant".into(),
                    }));
                };
                let Some((next, out)) = change(current) else {
                    return Ok(Ok(None));
                };
                let next = encode(&next);
                tx.execute(TOKEN_PUT, &[&asset, &next]).await?;
                tx.commit().await?;
                Ok(Ok(Some((next, out))))
            })
            .await?;
        Ok(body?.map(|(_, out)| out))
    }
}

impl Accounts for PgAccounts {
    fn token<'a>(&'a self, asset_id: &'a str) -> StoreFuture<'a, Option<RouteToken>> {
        Box::pin(self.read(TOKEN, "route_tokens", asset_id))
    }

    fn lease<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        ttl_ms: u64,
    ) -> StoreFuture<'a, Option<RouteToken>> {
        let holder = holder.to_string();
        Box::pin(self.update_token(asset_id, move |t| {
            take_lease(Some(t), &holder, now_ms(), ttl_ms).map(|t| (t.clone(), t))
        }))
    }

    fn finish_refresh<'a>(
        &'a self,
        asset_id: &'a str,
        holder: &'a str,
        generation: u64,
        found: &'a Refreshed,
    ) -> StoreFuture<'a, bool> {
        let (holder, found) = (holder.to_string(), found.clone());
        Box::pin(async move {
            let written = self
                .update_token(asset_id, move |t| {
                    Some(after_refresh(t, &holder, generation, &found))
                })
                .await?;
            Ok(written.unwrap_or(false))
        })
    }

    fn authorize<'a>(
        &'a self,
        asset_id: &'a str,
        refresh_token: &'a str,
    ) -> StoreFuture<'a, RouteToken> {
        let refresh_token = refresh_token.to_string();
        Box::pin(async move {
            self.update_token(asset_id, move |t| {
                let t = new_grant(t, &refresh_token);
                Some((t.clone(), t))
            })
            .await?
            .ok_or(StoreError::Closed)
        })
    }

    fn put_flow<'a>(&'a self, flow: &'a OAuthFlow) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let (body, created) = (encode(flow), super::ms(flow.created_ms));
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(FLOW_PUT).await?;
                    c.execute(&st, &[&flow.id, &created, &body]).await
                })
                .await?;
            Ok(())
        })
    }

    fn flow<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<OAuthFlow>> {
        Box::pin(self.read(FLOW, "oauth_flows", id))
    }

    fn claim_flow<'a>(&'a self, id: &'a str, now_ms: u64) -> StoreFuture<'a, FlowClaim> {
        Box::pin(async move {
            let id = id.to_string();
            self.0
                .run(|mut c| async move {
                    let tx = c.transaction().await?;
                    let body: Option<String> =
                        tx.query_opt(FLOW_LOCK, &[&id]).await?.map(|r| r.get(0));
                    let flow = body.and_then(|b| serde_json::from_str::<OAuthFlow>(&b).ok());
                    let found = claim(flow, now_ms);
                    if let FlowClaim::Claimed(f) = &found {
                        let created = super::ms(f.created_ms);
                        tx.execute(FLOW_PUT, &[&id, &created, &encode(f)]).await?;
                        tx.commit().await?;
                    }
                    Ok(found)
                })
                .await
        })
    }

    fn forget_flows_before<'a>(&'a self, cutoff_ms: u64) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let cutoff = super::ms(cutoff_ms);
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(FLOWS_FORGET).await?;
                    c.execute(&st, &[&cutoff]).await
                })
                .await?;
            Ok(())
        })
    }
}
