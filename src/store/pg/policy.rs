//! [`Policy`] on PostgreSQL: `consent` (one row per group and address) and `sends` (one
//! row per send, so nodes counting at once never lose each other's sends).

use super::{ms, Pg};
use crate::store::policy::{normalise, Policy};
use crate::store::StoreFuture;
use std::sync::Arc;

const HAS_CONSENT: &str = "SELECT 1 FROM consent WHERE grp = $1 AND address = $2";
const GRANT: &str = "INSERT INTO consent (grp, address) VALUES ($1, $2) ON CONFLICT DO NOTHING";
const REVOKE: &str = "DELETE FROM consent WHERE grp = $1 AND address = $2";
const CONSENTS: &str = "SELECT address FROM consent WHERE grp = $1 ORDER BY address";
const SENDS_SINCE: &str =
    "SELECT count(*) FROM sends WHERE grp = $1 AND address = $2 AND at_ms >= $3";
/// Records one send and drops the recipient's sends that fell out of the window.
const RECORD_SEND: &str = "WITH old AS (
        DELETE FROM sends WHERE grp = $1 AND address = $2 AND at_ms < $4)
    INSERT INTO sends (grp, address, at_ms) VALUES ($1, $2, $3)";
const COUNTERS: &str = "SELECT count(*) FROM (SELECT DISTINCT grp, address FROM sends) k";
const GROUPS: &str = "SELECT DISTINCT grp FROM sends";
/// Drops a group's sends older than `$2`; counts the recipients left with none.
const PRUNE_GROUP: &str = "WITH gone AS (
        DELETE FROM sends WHERE grp = $1 AND at_ms < $2 RETURNING address)
    SELECT count(DISTINCT address) FROM gone
    WHERE NOT EXISTS (SELECT 1 FROM sends s WHERE s.grp = $1 AND s.address = gone.address
        AND s.at_ms >= $2)";

pub(in crate::store) struct PgPolicy(pub(in crate::store) Arc<Pg>);

fn count(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

impl Policy for PgPolicy {
    fn has_consent<'a>(&'a self, group: &'a str, address: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let address = normalise(address);
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(HAS_CONSENT).await?;
                    Ok(c.query_opt(&st, &[&group, &address]).await?.is_some())
                })
                .await
        })
    }

    fn set_consent<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        granted: bool,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let address = normalise(address);
            let sql = if granted { GRANT } else { REVOKE };
            let n = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(sql).await?;
                    c.execute(&st, &[&group, &address]).await
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn consents<'a>(&'a self, group: &'a str) -> StoreFuture<'a, Vec<String>> {
        Box::pin(async move {
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(CONSENTS).await?;
                    let rows = c.query(&st, &[&group]).await?;
                    Ok(rows.iter().map(|r| r.get(0)).collect())
                })
                .await
        })
    }

    fn sends_since<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        since_ms: u64,
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            let address = normalise(address);
            let n: i64 = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(SENDS_SINCE).await?;
                    Ok(c.query_one(&st, &[&group, &address, &ms(since_ms)])
                        .await?
                        .get(0))
                })
                .await?;
            Ok(count(n))
        })
    }

    fn record_send<'a>(
        &'a self,
        group: &'a str,
        address: &'a str,
        at_ms: u64,
        since_ms: u64,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let address = normalise(address);
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(RECORD_SEND).await?;
                    c.execute(&st, &[&group, &address, &ms(at_ms), &ms(since_ms)])
                        .await
                })
                .await?;
            Ok(())
        })
    }

    fn frequency_len(&self) -> StoreFuture<'_, usize> {
        Box::pin(async move {
            let n: i64 = self
                .0
                .run(|c| async move { Ok(c.query_one(COUNTERS, &[]).await?.get(0)) })
                .await?;
            Ok(count(n))
        })
    }

    fn prune_frequency<'a>(
        &'a self,
        now_ms: u64,
        window_ms: &'a (dyn Fn(&str) -> u64 + Sync),
    ) -> StoreFuture<'a, usize> {
        Box::pin(async move {
            self.0
                .run(|c| async move {
                    let groups: Vec<String> = c
                        .query(GROUPS, &[])
                        .await?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let mut deleted = 0;
                    for g in groups {
                        let since = ms(now_ms.saturating_sub(window_ms(&g)));
                        let n: i64 = c.query_one(PRUNE_GROUP, &[&g, &since]).await?.get(0);
                        deleted += count(n);
                    }
                    Ok(deleted)
                })
                .await
        })
    }
}
