//! The Messaging API v2 (SPEC 4): authentication, validation, rate limits and the routes.
//! Wire types live in [`wire`] and nowhere else.

pub mod auth;
pub mod ratelimit;
pub mod validate;
pub mod wire;
