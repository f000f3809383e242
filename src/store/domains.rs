//! Domain verification state (`domains`, key the lower-case domain): the outcome of the
//! last `postern domain verify`, which `require_verified_domain` consults at submit.

use super::{codec, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainState {
    pub verified: bool,
    pub checked_ms: u64,
}

impl Store {
    pub fn domain_state(&self, domain: &str) -> Result<Option<DomainState>, StoreError> {
        let key = domain.to_ascii_lowercase();
        match self.inner.domains.get(key.as_bytes())? {
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

    pub fn domain_verified(&self, domain: &str) -> Result<bool, StoreError> {
        Ok(self.domain_state(domain)?.is_some_and(|s| s.verified))
    }

    pub async fn set_domain_state(
        &self,
        domain: &str,
        state: &DomainState,
    ) -> Result<(), StoreError> {
        self.inner
            .domains
            .insert(domain.to_ascii_lowercase().as_bytes(), codec::encode(state))?;
        self.commit().await
    }
}
