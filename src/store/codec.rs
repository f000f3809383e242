//! Versioned record encoding: one version byte, then JSON. A record whose version or body
//! this build does not understand is reported as corrupt so the caller can quarantine it.

use serde::{de::DeserializeOwned, Serialize};

const VERSION: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_writer(&mut out, value).expect("record serialises");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => serde_json::from_slice(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown record version {v}")),
        None => Err("empty record".into()),
    }
}

/// Keys of `tree` whose value is a big-endian millisecond stamp before `before_ms` (a
/// value that is not a stamp counts as 0, so it is collected rather than kept for ever).
pub fn stamped_before(tree: &sled::Tree, before_ms: u64) -> Result<Vec<sled::IVec>, sled::Error> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (k, v) = item?;
        // The time is the value's first eight bytes (a marker may follow).
        let at = v
            .get(..8)
            .and_then(|t| t.try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or_default();
        if at < before_ms {
            out.push(k);
        }
    }
    Ok(out)
}
