//! The suppression store (SPEC 8): per asset, addresses that must not be mailed, with the
//! reason and (for hard bounces) an expiry. Keys are `asset \0 address` (address
//! lower-cased), so one address has one entry per asset; a later reason replaces an
//! earlier one.

use super::{codec, Durable, Quarantine, StoreError, StoreFuture};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Until resubscribed.
    Unsubscribed,
    /// Until `expires_ms` (the asset's bounce retention).
    Bounced,
    /// Until removed by an operator.
    Complained,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unsubscribed => "unsubscribed",
            Reason::Bounced => "bounced",
            Reason::Complained => "complained",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unsubscribed" | "unsubscribe" => Some(Reason::Unsubscribed),
            "bounced" | "bounce" => Some(Reason::Bounced),
            "complained" | "complaint" => Some(Reason::Complained),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppression {
    pub asset_id: String,
    pub address: String,
    pub reason: Reason,
    pub since_ms: u64,
    /// `None`: until removed.
    pub expires_ms: Option<u64>,
    /// Where it came from: a DSN diagnostic, "api", "csv", "one-click".
    pub source: String,
}

impl Suppression {
    pub fn active(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// How an address is compared and stored: trimmed and lower-cased.
pub(super) fn normalise(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

fn key(asset: &str, address: &str) -> Vec<u8> {
    let mut k = asset.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(normalise(address).as_bytes());
    k
}

/// The suppression list (SPEC 8). Shared by every node in cluster mode.
///
/// Addresses are compared lower-cased and trimmed. Every method is a future: on sled it
/// is ready at once, on PostgreSQL it is a query.
pub trait Suppressions: Send + Sync {
    /// The active entry for an address, if any. Expired entries are removed on sight.
    fn get<'a>(
        &'a self,
        asset: &'a str,
        address: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Suppression>>;

    /// Adds or replaces entries; durable when the future finishes.
    fn add<'a>(&'a self, entries: &'a [Suppression]) -> StoreFuture<'a, ()>;

    /// Removes an entry; returns whether there was one. Durable when the future finishes.
    fn remove<'a>(&'a self, asset: &'a str, address: &'a str) -> StoreFuture<'a, bool>;

    /// Active entries of one asset (or all), in (asset, address) order.
    fn list<'a>(&'a self, asset: Option<&'a str>, now_ms: u64)
        -> StoreFuture<'a, Vec<Suppression>>;
}

/// [`Suppressions`] on sled: the `suppression` tree.
pub(super) struct SledSuppressions {
    pub(super) tree: sled::Tree,
    pub(super) quarantine: Quarantine,
    pub(super) durable: Durable,
}

impl SledSuppressions {
    fn get_now(
        &self,
        asset: &str,
        address: &str,
        now_ms: u64,
    ) -> Result<Option<Suppression>, StoreError> {
        let k = key(asset, address);
        let Some(v) = self.tree.get(&k)? else {
            return Ok(None);
        };
        let entry: Suppression = match codec::decode(&v) {
            Ok(e) => e,
            Err(reason) => {
                self.quarantine.put("suppression", &k, &v, &reason);
                self.tree.remove(&k)?;
                return Ok(None);
            }
        };
        if entry.active(now_ms) {
            Ok(Some(entry))
        } else {
            self.tree.remove(&k)?;
            Ok(None)
        }
    }

    fn list_now(&self, asset: Option<&str>, now_ms: u64) -> Result<Vec<Suppression>, StoreError> {
        let iter = match asset {
            Some(a) => {
                let mut p = a.as_bytes().to_vec();
                p.push(0);
                self.tree.scan_prefix(p)
            }
            None => self.tree.scan_prefix(b""),
        };
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item?;
            if let Ok(e) = codec::decode::<Suppression>(&v) {
                if e.active(now_ms) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }
}

impl Suppressions for SledSuppressions {
    fn get<'a>(
        &'a self,
        asset: &'a str,
        address: &'a str,
        now_ms: u64,
    ) -> StoreFuture<'a, Option<Suppression>> {
        Box::pin(std::future::ready(self.get_now(asset, address, now_ms)))
    }

    fn add<'a>(&'a self, entries: &'a [Suppression]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for e in entries {
                let mut e = e.clone();
                e.address = normalise(&e.address);
                self.tree
                    .insert(key(&e.asset_id, &e.address), codec::encode(&e))?;
            }
            self.durable.commit().await
        })
    }

    fn remove<'a>(&'a self, asset: &'a str, address: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let existed = self.tree.remove(key(asset, address))?.is_some();
            self.durable.commit().await?;
            Ok(existed)
        })
    }

    fn list<'a>(
        &'a self,
        asset: Option<&'a str>,
        now_ms: u64,
    ) -> StoreFuture<'a, Vec<Suppression>> {
        Box::pin(std::future::ready(self.list_now(asset, now_ms)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn bounce_entries_expire_with_the_clock_passed_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 86_400_000;
        let suppressions = store.suppressions();
        suppressions
            .add(&[Suppression {
                asset_id: "a".into(),
                address: "X@Example.org".into(),
                reason: Reason::Bounced,
                since_ms: 0,
                expires_ms: Some(7 * day),
                source: "test".into(),
            }])
            .await
            .unwrap();
        assert!(
            suppressions
                .get("a", "x@example.org", 7 * day - 1)
                .await
                .unwrap()
                .is_some(),
            "case-insensitive, still active"
        );
        assert!(
            suppressions
                .get("b", "x@example.org", 0)
                .await
                .unwrap()
                .is_none(),
            "per asset"
        );
        assert!(
            suppressions
                .get("a", "x@example.org", 7 * day)
                .await
                .unwrap()
                .is_none(),
            "expired after retention"
        );
        assert!(
            suppressions.list(Some("a"), 0).await.unwrap().is_empty(),
            "and removed when seen expired"
        );
    }
}
