//! The suppression store (SPEC 8): per asset, addresses that must not be mailed, with the
//! reason and (for hard bounces) an expiry. Keys are `asset \0 address` (address
//! lower-cased), so one address has one entry per asset; a later reason replaces an
//! earlier one.

use super::{codec, Store, StoreError};
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

fn key(asset: &str, address: &str) -> Vec<u8> {
    let mut k = asset.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(address.trim().to_ascii_lowercase().as_bytes());
    k
}

impl Store {
    /// The active entry for an address, if any. Expired entries are removed on sight.
    pub fn suppression(
        &self,
        asset: &str,
        address: &str,
        now_ms: u64,
    ) -> Result<Option<Suppression>, StoreError> {
        let k = key(asset, address);
        let Some(v) = self.inner.suppression.get(&k)? else {
            return Ok(None);
        };
        let entry: Suppression = match codec::decode(&v) {
            Ok(e) => e,
            Err(reason) => {
                self.quarantine("suppression", &k, &v, &reason);
                self.inner.suppression.remove(&k)?;
                return Ok(None);
            }
        };
        if entry.active(now_ms) {
            Ok(Some(entry))
        } else {
            self.inner.suppression.remove(&k)?;
            Ok(None)
        }
    }

    /// Adds or replaces entries, then commits.
    pub async fn suppress(&self, entries: &[Suppression]) -> Result<(), StoreError> {
        for e in entries {
            let mut e = e.clone();
            e.address = e.address.trim().to_ascii_lowercase();
            self.inner
                .suppression
                .insert(key(&e.asset_id, &e.address), codec::encode(&e))?;
        }
        self.commit().await
    }

    /// Removes an entry; returns whether there was one.
    pub async fn unsuppress(&self, asset: &str, address: &str) -> Result<bool, StoreError> {
        let existed = self
            .inner
            .suppression
            .remove(key(asset, address))?
            .is_some();
        self.commit().await?;
        Ok(existed)
    }

    /// Active entries of one asset (or all), in key order.
    pub fn suppressions(
        &self,
        asset: Option<&str>,
        now_ms: u64,
    ) -> Result<Vec<Suppression>, StoreError> {
        let iter = match asset {
            Some(a) => {
                let mut p = a.as_bytes().to_vec();
                p.push(0);
                self.inner.suppression.scan_prefix(p)
            }
            None => self.inner.suppression.scan_prefix(b""),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounce_entries_expire_with_the_clock_passed_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = 86_400_000;
        store
            .suppress(&[Suppression {
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
            store
                .suppression("a", "x@example.org", 7 * day - 1)
                .unwrap()
                .is_some(),
            "case-insensitive, still active"
        );
        assert!(
            store
                .suppression("b", "x@example.org", 0)
                .unwrap()
                .is_none(),
            "per asset"
        );
        assert!(
            store
                .suppression("a", "x@example.org", 7 * day)
                .unwrap()
                .is_none(),
            "expired after retention"
        );
        assert!(
            store.suppressions(Some("a"), 0).unwrap().is_empty(),
            "and removed when seen expired"
        );
    }
}
