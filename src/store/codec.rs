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
