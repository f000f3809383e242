//! Public links in outbound mail (SPEC 4.3, 7.2): unsubscribe now; click and open tracking
//! follow. Every token is signed together with its kind and bound to its tid, so a token of
//! another kind, or a truncated or altered one, is refused without a lookup.

pub mod links;
pub mod unsubscribe;
