//! [`Domains`] on PostgreSQL: the `domains` table, one verdict per lower-cased domain.

use super::{from_ms, ms, Pg};
use crate::store::domains::{DomainState, Domains};
use crate::store::StoreFuture;
use std::sync::Arc;

const STATE: &str = "SELECT verified, checked_ms FROM domains WHERE domain = $1";
const SET: &str = "INSERT INTO domains (domain, verified, checked_ms) VALUES ($1, $2, $3)
    ON CONFLICT (domain) DO UPDATE SET verified = excluded.verified,
        checked_ms = excluded.checked_ms";

pub(in crate::store) struct PgDomains(pub(in crate::store) Arc<Pg>);

impl Domains for PgDomains {
    fn state<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainState>> {
        Box::pin(async move {
            let domain = domain.to_ascii_lowercase();
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(STATE).await?;
                    Ok(c.query_opt(&st, &[&domain]).await?.map(|r| DomainState {
                        verified: r.get(0),
                        checked_ms: from_ms(r.get(1)),
                    }))
                })
                .await
        })
    }

    fn set_state<'a>(&'a self, domain: &'a str, state: &'a DomainState) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let domain = domain.to_ascii_lowercase();
            self.0
                .run(|c| async move {
                    let st = c.prepare_cached(SET).await?;
                    c.execute(&st, &[&domain, &state.verified, &ms(state.checked_ms)])
                        .await
                })
                .await?;
            Ok(())
        })
    }
}
