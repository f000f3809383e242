//! Routes: how an outbound message leaves (SPEC 7.3). Delivery only: no retries, no
//! storage, no policy; the queue decides what an outcome means for the transaction.

pub mod smtp;

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The route took the message for this recipient (7501).
    Submitted,
    /// Permanent refusal of this recipient at RCPT (7520), with the server's reply.
    Bounced(String),
    /// Permanent refusal of the message (5xx at MAIL/DATA, auth refused): 7592.
    Refused(String),
    /// Try again later (4xx, timeouts, connection errors).
    Deferred(String),
}

impl RcptOutcome {
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptOutcome::Deferred(_))
    }
}
