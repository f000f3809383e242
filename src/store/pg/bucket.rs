//! [`Buckets`] on PostgreSQL: one row per service holding the bucket as GCRA's theoretical
//! arrival time (`tat`, seconds since the epoch on the database's clock, so nodes' clocks
//! do not matter). Taking tokens is one atomic statement. The table is unlogged: taking
//! waits for no WAL flush, and a database crash empties it (forgetting the last second's
//! sends, the most a bucket holds).

use super::Pg;
use crate::store::bucket::Buckets;
use crate::store::StoreFuture;
use std::sync::Arc;
use std::time::Duration;

/// `$2` = n / tps (the time the tokens cover), `$3` = the burst (1 s: capacity TPS).
/// Returns a row when the tokens were taken.
const TAKE: &str = "WITH now AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS t)
    INSERT INTO buckets AS b (service, tat) SELECT $1, now.t + $2 FROM now
    ON CONFLICT (service) DO UPDATE
        SET tat = greatest(b.tat, (SELECT t FROM now)) + $2
        WHERE greatest(b.tat, (SELECT t FROM now)) + $2 - (SELECT t FROM now) <= $3
    RETURNING tat";

/// Seconds until `$2` seconds of tokens fit in the `$3` burst.
const WAIT: &str = "SELECT greatest(tat, extract(epoch FROM clock_timestamp())::float8) + $2
        - extract(epoch FROM clock_timestamp())::float8 - $3
    FROM buckets WHERE service = $1";

pub(in crate::store) struct PgBuckets(pub(in crate::store) Arc<Pg>);

impl Buckets for PgBuckets {
    fn take<'a>(
        &'a self,
        service: &'a str,
        tps: u32,
        n: u32,
    ) -> StoreFuture<'a, Result<(), Duration>> {
        Box::pin(async move {
            let tps = f64::from(tps.max(1));
            if f64::from(n) > tps {
                // More than a full bucket: never, as in memory.
                return Ok(Err(Duration::from_secs_f64((f64::from(n) - tps) / tps)));
            }
            let cost = f64::from(n) / tps;
            let burst = 1.0_f64;
            let wait: Option<f64> = self
                .0
                .run(|c| async move {
                    let st = c.prepare_cached(TAKE).await?;
                    if c.query_opt(&st, &[&service, &cost, &burst])
                        .await?
                        .is_some()
                    {
                        return Ok(None);
                    }
                    let st = c.prepare_cached(WAIT).await?;
                    let w = c.query_opt(&st, &[&service, &cost, &burst]).await?;
                    Ok(Some(w.map(|r| r.get::<_, f64>(0)).unwrap_or(0.0)))
                })
                .await?;
            Ok(match wait {
                None => Ok(()),
                Some(w) => Err(Duration::from_secs_f64(w.clamp(0.001, 3600.0))),
            })
        })
    }
}
