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

use crate::config::{AssetConfig, Config, MoAttachments};
use crate::metrics::Metrics;
use crate::model::time::now_ms;
use crate::store::outbox::EventKind;
use crate::store::spool::{file_body, AuthSummary, Body, FinishedBody};
use crate::store::{BodyLocation, OutboxEntry, Payload, SpoolRecord, Store, StoreError};
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

/// What one accepted message becomes besides its record: one MO event per asset (with
/// the tid that links back to the message), how long url-mode attachments keep it, and
/// whether it carries feedback.
#[derive(Default)]
struct FanOut {
    events: Vec<OutboxEntry>,
    /// (tid, spool id) of every MO event.
    tids: Vec<(String, String)>,
    keep_until_ms: u64,
    /// Mail to the bounce domain or to an unsubscribe address carries feedback, acted on
    /// after the commit (reports::process), then deleted.
    carries_feedback: bool,
}

impl Inbound {
    /// Verifies, stores and schedules events. Returns the spool id once durable.
    pub async fn accept(
        &self,
        config: &Config,
        env: Envelope,
        mut body: FinishedBody,
    ) -> Result<String, AcceptError> {
        let raw = self.raw_body(&body)?;
        let (auth_header, summary) = self.auth.verify(&config.server.hostname, &env, &raw).await;
        let sender = header_from(&raw).unwrap_or_else(|| env.mail_from.to_ascii_lowercase());
        drop(raw);

        let received_ms = now_ms();
        let fan = fan_out(config, &env.rcpts, &sender, &body.id, received_ms);
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
            keep_until_ms: fan.keep_until_ms,
            events: fan.events.iter().map(|e| e.id.clone()).collect(),
            // Kept (never collected) until its feedback was acted on.
            bounce: fan.carries_feedback,
        };
        self.write(&record, &mut body, &fan).await?;
        self.after_commit(&record.id, fan);
        Ok(record.id)
    }

    /// The message as received, for verification and the From header.
    fn raw_body(&self, body: &FinishedBody) -> Result<Body, StoreError> {
        match (body.inline_bytes(), &body.location) {
            (Some(b), _) => Ok(Body::Bytes(b.into())),
            (None, BodyLocation::File(name)) => file_body(&self.store.spool_dir().join(name)),
            (None, BodyLocation::Inline) => Ok(Body::Bytes(Default::default())),
        }
    }

    /// The store write: the feedback mark, then record, body and events in one commit.
    /// On failure nothing durable names the body any more (or, when the entries could not
    /// be removed, the body is left to garbage collection).
    async fn write(
        &self,
        record: &SpoolRecord,
        body: &mut FinishedBody,
        fan: &FanOut,
    ) -> Result<(), AcceptError> {
        if fan.carries_feedback {
            self.store
                .mark_feedback_pending(&record.id, record.received_ms)?;
        }
        if let Err(e) = self
            .store
            .accept_message(record, body, &fan.events, &fan.tids)
            .await
        {
            // Nothing durable may name the body: forget the entries, then the .eml goes
            // with `body` (kept for garbage collection if the entries could not be removed).
            // A feedback mark left behind names no record: the sweep drops it.
            if !self.store.forget_message(record, &fan.events, &fan.tids) {
                body.keep();
            }
            return Err(e.into());
        }
        body.keep();
        Ok(())
    }

    /// Once the message is durable: feedback is handed over (never before the commit, so
    /// a refused commit never recorded feedback), a message nothing refers to is
    /// released, and the MO events are scheduled.
    fn after_commit(&self, id: &str, fan: FanOut) {
        if fan.carries_feedback {
            // A lost id is found again by the sweep of marks.
            let _ = self.feedback.send(id.to_string());
        } else if fan.events.is_empty() {
            // Nothing refers to it (sender == recipient): keep no copy.
            let _ = self.store.release_spool_if_done(id);
        }
        self.outbox.schedule(fan.events);
    }
}

/// The recipients per asset (in asset order), and whether any is at the bounce domain.
fn group_by_asset(rcpts: &[(String, Destination)]) -> (BTreeMap<String, Vec<String>>, bool) {
    let mut by_asset: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut bounce = false;
    for (addr, dest) in rcpts {
        match dest.asset_id() {
            Some(a) => by_asset
                .entry(a.to_string())
                .or_default()
                .push(addr.clone()),
            None => bounce = true,
        }
    }
    (by_asset, bounce)
}

/// Fans the recipients out to one MO event per asset that takes them: not for mail to
/// the asset's unsubscribe address (feedback), not when the sender is the only recipient
/// (logged), not without an `incoming_webhook`.
fn fan_out(
    config: &Config,
    rcpts: &[(String, Destination)],
    sender: &str,
    spool_id: &str,
    received_ms: u64,
) -> FanOut {
    let (by_asset, bounce) = group_by_asset(rcpts);
    let mut fan = FanOut {
        carries_feedback: bounce,
        ..FanOut::default()
    };
    for (asset_id, mut recipients) in by_asset {
        let Some(asset) = config.asset(&asset_id) else {
            continue;
        };
        fan.carries_feedback |= take_unsubscribes(asset, &mut recipients);
        if recipients.is_empty() {
            continue;
        }
        if recipients.iter().all(|r| r.eq_ignore_ascii_case(sender)) {
            tracing::info!(asset = %asset_id, sender = %sender, id = %spool_id,
                "sender equals recipient: logged, no MO event");
            continue;
        }
        let Some(url) = asset.incoming_webhook.clone() else {
            continue;
        };
        if asset.mo_attachments == MoAttachments::Url {
            let keep = received_ms + u64::from(asset.inbound_retention_days) * 86_400_000;
            fan.keep_until_ms = fan.keep_until_ms.max(keep);
        }
        let tid = uuid::Uuid::new_v4().to_string();
        fan.tids.push((tid.clone(), spool_id.to_string()));
        fan.events.push(OutboxEntry::new(
            EventKind::Mo,
            url,
            asset_id.clone(),
            Payload::Mo {
                spool_id: spool_id.to_string(),
                tid,
                asset_id,
                recipients,
            },
        ));
    }
    fan
}

/// Removes the recipients that are the asset's unsubscribe mailto (an unsubscribe
/// request, no MO event); true when there were any.
fn take_unsubscribes(asset: &AssetConfig, recipients: &mut Vec<String>) -> bool {
    let Some(mailto) = asset.unsubscribe.as_ref().and_then(|u| u.mailto.as_deref()) else {
        return false;
    };
    let before = recipients.len();
    recipients.retain(|r| mailto_tag(mailto, r).is_none());
    recipients.len() < before
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
            &format!(
                "{}{}",
                crate::config::TEST_SERVER,
                r#"
[[asset]]
id = "a_in"
domains = ["example.test"]
inbound = true
incoming_webhook = "http://127.0.0.1:9/mo"
[[asset]]
id = "a_out"
domains = ["sendonly.test"]
"#
            ),
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
