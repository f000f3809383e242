//! Opens and clicks on postern's own tracked links (SPEC 6.3), reached by `/t/o/` and
//! `/t/c/`. The token is verified before anything is looked up: a forged click link never
//! redirects (no open redirect), a forged open records nothing. Hits are recorded by
//! [`record`](crate::feedback::record), which counts repeats instead of appending them.

use crate::feedback::{Parts, Report, USER_AGENT_MAX};
use crate::model::links::Link;
use crate::model::tokens::TokenKind;
use crate::model::types::DeliveryCode;
use crate::store::messages::cut;
use std::net::IpAddr;

/// Why a click link was refused (nothing was recorded).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("link token is altered or not a click link")]
    Forged,
}

/// A click from `client`: records 7528 (`url|client-ip`, the User-Agent) and returns the
/// URL to redirect to.
pub async fn click(
    parts: &Parts<'_>,
    token: &str,
    client: IpAddr,
    user_agent: Option<&[u8]>,
) -> Result<String, LinkError> {
    let Some(Link::Click {
        tid,
        recipient: rcpt,
        url,
    }) = Link::verify(parts.signer, TokenKind::Click, token)
    else {
        return Err(LinkError::Forged);
    };
    let agent = user_agent.map(user_agent_text).unwrap_or_default();
    let description = format!("{url}|{client}");
    hit(
        parts,
        &tid,
        &rcpt,
        DeliveryCode::Clicked,
        &description,
        &agent,
    )
    .await;
    Ok(url)
}

/// An open (the pixel was fetched): records 7502 when the token verifies.
pub async fn open(parts: &Parts<'_>, token: &str) {
    if let Some(Link::Open { tid, recipient }) = Link::verify(parts.signer, TokenKind::Open, token)
    {
        hit(parts, &tid, &recipient, DeliveryCode::Read, "Read", "").await;
    }
}

/// The User-Agent as recorded: cut to [`USER_AGENT_MAX`] octets on a character boundary;
/// octets that are not UTF-8 (obs-text) become U+FFFD rather than losing the whole header.
fn user_agent_text(raw: &[u8]) -> String {
    let head = &raw[..raw.len().min(USER_AGENT_MAX + 4)];
    cut(&String::from_utf8_lossy(head), USER_AGENT_MAX).to_string()
}

/// Records one hit for `tid`/`recipient` (in the history when the transaction is
/// finished; an active one is the queue's to write). The visitor gets the redirect or the
/// pixel either way: a hit the cluster database cannot take now (it is down, or the
/// transaction is still in another node's queue) is retried in the background for
/// [`HIT_RETRY_FOR`]; any other failure is logged.
async fn hit(
    parts: &Parts<'_>,
    tid: &str,
    recipient: &str,
    code: DeliveryCode,
    description: &str,
    additional: &str,
) {
    let report = Report::new(Some(recipient.to_string()), code, description).additional(additional);
    let recorded = crate::feedback::record(
        parts.store,
        parts.outbox,
        parts.config,
        tid,
        std::slice::from_ref(&report),
    )
    .await;
    match recorded {
        Ok(_) => {}
        Err(e) if e.is_database() => {
            let (store, outbox) = (parts.store.clone(), parts.outbox.clone());
            let (config, tid) = (parts.config.clone(), tid.to_string());
            tokio::spawn(retry_hit(store, outbox, config, tid, report));
        }
        Err(e) => tracing::error!(error = %e, "tracking event not recorded"),
    }
}

/// How long a hit the cluster database could not take is retried (in memory: a restart
/// meanwhile loses it, as it would lose a hit arriving during the restart).
const HIT_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(300);

async fn retry_hit(
    store: crate::store::Store,
    outbox: crate::webhooks::Outbox,
    config: crate::config::Config,
    tid: String,
    report: Report,
) {
    let deadline = tokio::time::Instant::now() + HIT_RETRY_FOR;
    let reports = [report];
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        match crate::feedback::record(&store, &outbox, &config, &tid, &reports).await {
            Ok(_) => return,
            Err(e) if e.is_database() => continue,
            Err(e) => {
                tracing::error!(error = %e, "tracking event not recorded");
                return;
            }
        }
    }
    tracing::error!(
        tid,
        "tracking event not recorded: the cluster database did not take it in time"
    );
}
