//! [`Suppressions`] on PostgreSQL: the `suppressions` table, one row per asset and
//! lower-cased address.

use super::{from_ms, ms, Pg};
use crate::store::suppression::{normalise, Reason, Suppression, Suppressions};
use crate::store::StoreFuture;
use std::sync::Arc;

const GET: &str = "SELECT asset_id, address, reason, since_ms, expires_ms, source
    FROM suppressions
    WHERE asset_id = $1 AND address = $2 AND (expires_ms IS NULL OR expires_ms > $3)";

/// Many rows in one statement; the caller removes duplicate keys first (one statement
/// may not update a row twice).
const ADD: &str =
    "INSERT INTO suppressions (asset_id, address, reason, since_ms, expires_ms, source)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])
    ON CONFLICT (asset_id, address) DO UPDATE SET reason = excluded.reason,
        since_ms = excluded.since_ms, expires_ms = excluded.expires_ms, source = excluded.source";

const REMOVE: &str = "DELETE FROM suppressions WHERE asset_id = $1 AND address = $2";

const LIST: &str = "SELECT asset_id, address, reason, since_ms, expires_ms, source
    FROM suppressions
    WHERE ($1::text IS NULL OR asset_id = $1) AND (expires_ms IS NULL OR expires_ms > $2)
    ORDER BY asset_id, address";

pub(in crate::store) struct PgSuppressions(pub(in crate::store) Arc<Pg>);

fn row(r: &tokio_postgres::Row) -> Suppression {
    let reason: String = r.get(2);
    Suppression {
        asset_id: r.get(0),
        address: r.get(1),
        // Written by this module only; an unknown word reads as the strictest.
        reason: Reason::parse(&reason).unwrap_or(Reason::Complained),
        since_ms: from_ms(r.get(3)),
        expires_ms: r.get::<_, Option<i64>>(4).map(from_ms),
        source: r.get(5),
    }
}

impl Suppressions for PgSuppressions {
    fn get<'a>(
        &'a self,
        asset: &'a str,
        address: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Suppression>> {
        Box::pin(async move {
            let address = normalise(address);
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(GET).await?;
                    let r = c.query_opt(&st, &[&asset, &address, &ms(now_ms)]).await?;
                    Ok(r.as_ref().map(row))
                })
                .await
        })
    }

    fn add<'a>(&'a self, entries: &'a [Suppression]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // The last entry for a key wins, as it would written one by one.
            let mut by_key = std::collections::BTreeMap::new();
            for e in entries {
                by_key.insert((e.asset_id.clone(), normalise(&e.address)), e);
            }
            let (mut assets, mut addrs, mut reasons, mut since, mut expires, mut sources) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for ((asset, addr), e) in by_key {
                assets.push(asset);
                addrs.push(addr);
                reasons.push(e.reason.label());
                since.push(ms(e.since_ms));
                expires.push(e.expires_ms.map(ms));
                sources.push(e.source.as_str());
            }
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(ADD).await?;
                    c.execute(
                        &st,
                        &[&assets, &addrs, &reasons, &since, &expires, &sources],
                    )
                    .await
                })
                .await?;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, asset: &'a str, address: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let address = normalise(address);
            let n = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(REMOVE).await?;
                    c.execute(&st, &[&asset, &address]).await
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn list<'a>(
        &'a self,
        asset: Option<&'a str>,
        now_ms: u64,
    ) -> StoreFuture<'a, Vec<Suppression>> {
        Box::pin(async move {
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(LIST).await?;
                    let rows = c.query(&st, &[&asset, &ms(now_ms)]).await?;
                    Ok(rows.iter().map(row).collect())
                })
                .await
        })
    }
}
