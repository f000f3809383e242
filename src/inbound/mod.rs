//! What an accepted message becomes. `classify_recipient` decides, without I/O, whether a
//! RCPT is ours (never an open relay); [`Inbound::accept`] verifies SPF/DKIM/DMARC/ARC,
//! writes the message and one MO event per asset in one durable batch, and only then lets
//! the session say 250. Feedback the message carries (DSN, ARF, unsubscribe by mail) is
//! acted on by `reports` only after that commit succeeded, so a refused commit (451) has
//! no side effect that the client's retry would repeat. Inbound mail only ever goes to
//! webhooks.

pub mod auth;
pub mod conns;
pub mod tls;

use crate::config::{Config, MoAttachments};
use crate::metrics::Metrics;
use crate::model::time::now_ms;
use crate::store::spool::{AuthSummary, FinishedBody};
use crate::store::{OutboxEntry, Payload, SpoolRecord, Store, StoreError};
use crate::webhooks::Outbox;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Whose mail a recipient is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An address at a domain of an inbound asset.
    Asset(String),
    /// `<asset-id>@<inbound_domain>`, the forwarding address.
    Forward(String),
    /// Anything at the bounce domain: DSNs and ARF reports.
    Bounce,
}

impl Destination {
    pub fn asset_id(&self) -> Option<&str> {
        match self {
            Destination::Asset(a) | Destination::Forward(a) => Some(a),
            Destination::Bounce => None,
        }
    }
}

/// Why a recipient is refused; each maps to one SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptRefusal {
    RelayDenied,
    AddressLiteral,
    BadSyntax,
}

/// Strips a source route (`@a,@b:user@domain`), then takes the domain after the last `@`
/// (quoted local parts may contain `@`). `%` and `!` are ordinary local-part characters.
pub fn split_address(addr: &str) -> Option<(&str, &str)> {
    let addr = match addr.strip_prefix('@') {
        Some(_) => addr.split_once(':').map(|(_, rest)| rest)?,
        None => addr,
    };
    let at = addr.rfind('@')?;
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, domain))
}

/// Whether `rcpt` is the unsubscribe address `mailto`, or it with a tag
/// (`local+tag@domain`); returns the tag.
pub fn mailto_tag<'a>(mailto: &str, rcpt: &'a str) -> Option<Option<&'a str>> {
    let (m_local, m_domain) = split_address(mailto)?;
    let (local, domain) = split_address(rcpt)?;
    if !domain.trim_end_matches('.').eq_ignore_ascii_case(m_domain) {
        return None;
    }
    if local.eq_ignore_ascii_case(m_local) {
        return Some(None);
    }
    let (base, tag) = local.split_once('+')?;
    base.eq_ignore_ascii_case(m_local).then_some(Some(tag))
}

/// Decides whether `addr` (RCPT TO) is mail we take, and for whom.
pub fn classify_recipient(config: &Config, addr: &str) -> Result<Destination, RcptRefusal> {
    let (local, domain) = split_address(addr).ok_or(RcptRefusal::BadSyntax)?;
    if domain.starts_with('[') {
        return Err(RcptRefusal::AddressLiteral);
    }
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain == config.server.bounce_domain {
        return Ok(Destination::Bounce);
    }
    if domain == config.server.inbound_domain {
        return match config.asset(local) {
            Some(a) if a.inbound => Ok(Destination::Forward(a.id.clone())),
            _ => Err(RcptRefusal::RelayDenied),
        };
    }
    match config.asset_for_domain(&domain) {
        Some(a) if a.inbound => Ok(Destination::Asset(a.id.clone())),
        _ => Err(RcptRefusal::RelayDenied),
    }
}

/// The largest message the recipients' assets accept.
pub fn size_limit(config: &Config, rcpts: &[(String, Destination)]) -> usize {
    rcpts
        .iter()
        .filter_map(|(_, d)| d.asset_id().and_then(|a| config.asset(a)))
        .map(|a| a.max_inbound_size)
        .chain(std::iter::once(config.smtp.max_message_size))
        .min()
        .unwrap_or(config.smtp.max_message_size)
}

/// The SMTP envelope of one transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub peer: IpAddr,
    pub helo: String,
    pub mail_from: String,
    pub rcpts: Vec<(String, Destination)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Everything the accept step needs; shared by all sessions.
pub struct Inbound {
    pub store: Store,
    pub auth: auth::Verifier,
    /// Verifies VERP return paths of incoming DSNs.
    pub signer: crate::model::tokens::Signer,
    pub outbox: Outbox,
    pub metrics: Arc<Metrics>,
    /// Ids of committed messages whose feedback `reports::run` acts on.
    pub feedback: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Inbound {
    /// Verifies, stores and schedules events. Returns the spool id once durable.
    pub async fn accept(
        &self,
        config: &Config,
        env: Envelope,
        mut body: FinishedBody,
    ) -> Result<String, AcceptError> {
        let raw = match body.inline_bytes() {
            Some(b) => crate::store::spool::Body::Bytes(b.into()),
            None => match &body.location {
                crate::store::BodyLocation::File(name) => {
                    crate::store::spool::map_file(&self.store.spool_dir().join(name))?
                }
                crate::store::BodyLocation::Inline => {
                    crate::store::spool::Body::Bytes(Default::default())
                }
            },
        };
        let (auth_header, summary) = self.auth.verify(&config.server.hostname, &env, &raw).await;
        let sender = header_from(&raw).unwrap_or_else(|| env.mail_from.to_ascii_lowercase());
        drop(raw);

        let mut by_asset: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut bounce = false;
        for (addr, dest) in &env.rcpts {
            match dest.asset_id() {
                Some(a) => by_asset
                    .entry(a.to_string())
                    .or_default()
                    .push(addr.clone()),
                None => bounce = true,
            }
        }
        let received_ms = now_ms();
        let mut keep_until_ms = 0;
        let mut events = Vec::new();
        let mut tids = Vec::new();
        // Mail to the bounce domain or to an unsubscribe address carries feedback, acted on
        // after the commit (reports::process), then deleted.
        let mut carries_feedback = bounce;
        for (asset_id, mut recipients) in by_asset {
            let Some(asset) = config.asset(&asset_id) else {
                continue;
            };
            // Mail to the asset's unsubscribe mailto is an unsubscribe request; no MO event.
            if let Some(mailto) = asset.unsubscribe.as_ref().and_then(|u| u.mailto.as_deref()) {
                let before = recipients.len();
                recipients.retain(|r| mailto_tag(mailto, r).is_none());
                carries_feedback |= recipients.len() < before;
                if recipients.is_empty() {
                    continue;
                }
            }
            if recipients.iter().all(|r| r.eq_ignore_ascii_case(&sender)) {
                tracing::info!(asset = %asset_id, sender = %sender, id = %body.id,
                    "sender equals recipient: logged, no MO event");
                continue;
            }
            let Some(url) = asset.incoming_webhook.clone() else {
                continue;
            };
            if asset.mo_attachments == MoAttachments::Url {
                let keep = received_ms + u64::from(asset.inbound_retention_days) * 86_400_000;
                keep_until_ms = keep_until_ms.max(keep);
            }
            let tid = uuid::Uuid::new_v4().to_string();
            tids.push((tid.clone(), body.id.clone()));
            events.push(OutboxEntry::new(
                crate::store::outbox::EventKind::Mo,
                url,
                asset_id.clone(),
                Payload::Mo {
                    spool_id: body.id.clone(),
                    tid,
                    asset_id,
                    recipients,
                },
            ));
        }
        let record = SpoolRecord {
            id: body.id.clone(),
            received_ms,
            peer: env.peer.to_string(),
            helo: env.helo,
            mail_from: env.mail_from,
            rcpts: env.rcpts.into_iter().map(|(a, _)| a).collect(),
            auth_header,
            auth: summary,
            body: body.location.clone(),
            size: body.size,
            keep_until_ms,
            events: events.iter().map(|e| e.id.clone()).collect(),
            // Kept (never collected) until its feedback was acted on.
            bounce: carries_feedback,
        };
        if carries_feedback {
            self.store.mark_feedback_pending(&record.id, received_ms)?;
        }
        if let Err(e) = self
            .store
            .accept_message(&record, &body, &events, &tids)
            .await
        {
            // Nothing durable may name the body: forget the entries, then the .eml goes
            // with `body` (kept for garbage collection if the entries could not be removed).
            // A feedback mark left behind names no record: the sweep drops it.
            if !self.store.forget_message(&record, &events, &tids) {
                body.keep();
            }
            return Err(e.into());
        }
        body.keep();
        let id = record.id;
        if carries_feedback {
            // After the commit: a refused commit never recorded feedback. A lost id is
            // found again by the sweep of marks.
            let _ = self.feedback.send(id.clone());
        } else if events.is_empty() {
            // Nothing refers to it (sender == recipient): keep no copy.
            let _ = self.store.release_spool_if_done(&id);
        }
        self.outbox.schedule(events);
        Ok(id)
    }
}

/// The header From address, lower-cased, read from the headers only.
fn header_from(raw: &[u8]) -> Option<String> {
    let msg = mail_parser::MessageParser::new().parse_headers(raw)?;
    msg.from()?
        .first()?
        .address()
        .map(|a| a.to_ascii_lowercase())
}

impl AuthSummary {
    pub fn none() -> Self {
        AuthSummary {
            spf: "none".into(),
            dkim: "none".into(),
            dmarc: "none".into(),
            arc: "none".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            r#"
[server]
hostname = "mx.example.test"
data_dir = "./data"
public_url = "http://127.0.0.1:8080"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[[asset]]
id = "a_in"
domains = ["example.test"]
inbound = true
incoming_webhook = "http://127.0.0.1:9/mo"
[[asset]]
id = "a_out"
domains = ["sendonly.test"]
"#,
            "t",
        )
        .unwrap()
    }

    #[test]
    fn recipients_we_take_and_refuse() {
        let c = config();
        let cases: &[(&str, Result<Destination, RcptRefusal>)] = &[
            (
                "support@example.test",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "Support@EXAMPLE.test.",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "a_in@inbound.example.test",
                Ok(Destination::Forward("a_in".into())),
            ),
            ("a_out@inbound.example.test", Err(RcptRefusal::RelayDenied)),
            ("b+x@bounces.example.test", Ok(Destination::Bounce)),
            ("x@sendonly.test", Err(RcptRefusal::RelayDenied)),
            ("x@elsewhere.org", Err(RcptRefusal::RelayDenied)),
            (
                "x%elsewhere.org@example.test",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "elsewhere.org!x@example.test",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "\"x@elsewhere.org\"@example.test",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "\"x@example.test\"@elsewhere.org",
                Err(RcptRefusal::RelayDenied),
            ),
            (
                "@relay.org:x@example.test",
                Ok(Destination::Asset("a_in".into())),
            ),
            (
                "@example.test:x@elsewhere.org",
                Err(RcptRefusal::RelayDenied),
            ),
            ("x@[192.0.2.1]", Err(RcptRefusal::AddressLiteral)),
            ("nodomain", Err(RcptRefusal::BadSyntax)),
        ];
        for (addr, want) in cases {
            assert_eq!(&classify_recipient(&c, addr), want, "{addr}");
        }
    }
}
