//! Rotated OAuth2 refresh tokens of smarthost routes, kept by [`super::RouteState`] (key
//! the asset id). A token endpoint that rotates (Microsoft's does on every use) invalidates
//! the configured refresh token; the newest one is written and flushed before it is relied
//! on, so a restart continues the chain. Each entry names (by hash) the configured token
//! it descends from: a changed configuration means the operator re-authorized, and the
//! entry is stale.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteToken {
    /// The newest refresh token the endpoint issued.
    pub refresh_token: String,
    /// SHA-256 (hex) of the configured refresh token this one was rotated from.
    pub configured_sha256: String,
    pub updated_ms: u64,
}
