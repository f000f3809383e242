//! The model: the values every layer speaks, validated at the edge and typed from there on.
//! Imports nothing else of the crate (checked by `scripts/layers.py`).

pub mod backoff;
pub mod health;
pub mod links;
pub mod time;
pub mod tokens;
pub mod types;
pub mod urls;
pub mod wire;
