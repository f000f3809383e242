//! Outbound mail: from an API request to a route. Service authentication, validation and
//! substitution, the TPS bucket, compose (Postfix's cleanup: unsubscribe, tracking, DKIM),
//! the queue and its routes (SMTP smarthost, SES), suppression policy and domain records.

pub mod auth;
pub mod compose;
pub mod dkim;
pub mod domains;
pub mod oauth;
pub mod queue;
pub mod route;
pub mod submit;
pub mod substitute;
pub mod suppression;
pub mod track;
pub mod validate;
