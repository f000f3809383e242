//! Domain verification state (`domains`, key the lower-case domain): the outcome of the
//! last `postern domain verify`, which `require_verified_domain` consults at submit.
//! (DKIM keys and their rotation state are files under `data_dir/dkim/`, kept by
//! `outbound::dkim`, not here.)

use super::{codec, Durable, StoreError, StoreFuture};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub verified: bool,
    pub checked_ms: u64,
}

/// Domain verification verdicts, keyed by the lower-cased domain. Shared by every node in
/// cluster mode.
///
/// Every method is a future: ready at once on sled, a query on PostgreSQL.
pub trait Domains: Send + Sync {
    /// The last verdict for `domain`, if it was ever verified.
    fn state<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainState>>;

    /// Records a verdict; durable when the future finishes.
    fn set_state<'a>(&'a self, domain: &'a str, state: &'a DomainState) -> StoreFuture<'a, ()>;

    /// Whether the last verdict for `domain` was a pass.
    fn verified<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move { Ok(self.state(domain).await?.is_some_and(|s| s.verified)) })
    }
}

/// [`Domains`] on sled: the `domains` tree.
pub(super) struct SledDomains {
    pub(super) tree: sled::Tree,
    pub(super) durable: Durable,
}

impl Domains for SledDomains {
    fn state<'a>(&'a self, domain: &'a str) -> StoreFuture<'a, Option<DomainState>> {
        Box::pin(std::future::ready(self.state_now(domain)))
    }

    fn set_state<'a>(&'a self, domain: &'a str, state: &'a DomainState) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.tree
                .insert(domain.to_ascii_lowercase().as_bytes(), codec::encode(state))?;
            self.durable.commit().await
        })
    }
}

impl SledDomains {
    fn state_now(&self, domain: &str) -> Result<Option<DomainState>, StoreError> {
        let key = domain.to_ascii_lowercase();
        match self.tree.get(key.as_bytes())? {
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| StoreError::Corrupt {
                    tree: "domains",
                    key,
                    reason,
                }),
            None => Ok(None),
        }
    }
}
