//! Acting on the feedback that inbound mail carries, after the message's own commit: DSNs
//! and ARF reports to the bounce domain, and mail to an asset's unsubscribe address. The
//! accept path marks such a message (`store::pending`) and sends its id here; a sweep
//! picks up marks left by a crash or a failed write. Parsing (up to 40 MB) runs on the
//! blocking pool, [`CONCURRENCY`] messages at a time, never on the async workers. Once
//! acted on, the message is deleted (unless MO events still need it).
//!
//! Feedback cannot be forged against others (SPEC 6.3): an ARF report acts only for the
//! recipient of the transaction its signed VERP address or Message-ID names; about a
//! message to several recipients, only when its sender passes aligned DMARC from a
//! `feedback.trusted_reporters` domain. Mail to the unsubscribe address acts for the
//! recipient whose signed token it carries, else for a From that passes aligned DMARC.

use super::{arf, dsn};
use crate::config::Config;
use crate::config::SharedConfig;
use crate::feedback::{self, Report};
use crate::heavy::Heavy;
use crate::inbound::{classify_recipient, mailto_tag, split_address, Destination};
use crate::model::time::now_ms;
use crate::model::tokens::Signer;
use crate::model::types::DeliveryCode;
use crate::store::spool::AuthSummary;
use crate::store::suppression::Reason;
use crate::store::Store;
use crate::store::{SpoolRecord, StoreError};
use crate::webhooks::Outbox;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Messages parsed and acted on at once. The shared bounded blocking-pool helper of
/// `inbound` (MIME) replaces this semaphore when it lands.
pub const CONCURRENCY: usize = 2;

/// How often marks are swept, and how old a mark must be before the sweep takes it (a
/// younger one is still being handled by the path that accepted it).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEP_GRACE_MS: u64 = 60_000;

/// What the feedback worker needs of the daemon.
pub struct Reports {
    pub store: Store,
    pub outbox: Outbox,
    pub signer: Signer,
    pub config: SharedConfig,
    /// The daemon's one bounded pool for heavy parsing.
    pub heavy: Heavy,
}

impl Reports {
    fn config(&self) -> Arc<Config> {
        self.config.get()
    }
}

/// Processes marked messages as they are sent, and sweeps left-over marks.
pub async fn run(d: Arc<Reports>, mut ids: mpsc::UnboundedReceiver<String>) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let store = d.store.clone();
    match tokio::task::spawn_blocking(move || store.mark_unmarked_bounces()).await {
        Ok(Ok(n)) if n > 0 => tracing::info!(n, "old bounce-domain mail queued for processing"),
        Ok(Err(e)) => tracing::warn!(error = %e, "old bounce-domain mail not scanned"),
        _ => {}
    }
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            id = ids.recv() => match id {
                Some(id) => vec![id],
                None => return,
            },
            _ = tick.tick() => {
                let cutoff = now_ms().saturating_sub(SWEEP_GRACE_MS);
                match d.store.feedback_pending(cutoff) {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "feedback marks not readable");
                        Vec::new()
                    }
                }
            }
        };
        for id in batch {
            let fresh = in_flight
                .lock()
                .map(|mut s| s.insert(id.clone()))
                .unwrap_or(false);
            if !fresh {
                continue;
            }
            let (d, permits, in_flight) = (d.clone(), permits.clone(), in_flight.clone());
            tokio::spawn(async move {
                if let Ok(_permit) = permits.acquire().await {
                    if let Err(e) = process(&d, &id).await {
                        tracing::warn!(id = %id, error = %e, "feedback of inbound mail not recorded; retried by the sweep");
                    }
                }
                if let Ok(mut s) = in_flight.lock() {
                    s.remove(&id);
                }
            });
        }
    }
}

/// What the blocking pool reads from one message.
struct Parsed {
    complaint: Option<arf::Complaint>,
    bounces: Vec<dsn::BounceReport>,
    from: Option<String>,
    subject: String,
}

fn parse(raw: &[u8], hostname: &str, want_dsn: bool) -> Parsed {
    let complaint = arf::parse(raw, hostname);
    let bounces = if want_dsn && complaint.is_none() {
        dsn::parse(raw)
    } else {
        Vec::new()
    };
    let headers = mail_parser::MessageParser::new().parse_headers(raw);
    let from = headers
        .as_ref()
        .and_then(|m| m.from()?.first()?.address().map(str::to_ascii_lowercase));
    let subject = headers
        .as_ref()
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default();
    Parsed {
        complaint,
        bounces,
        from,
        subject,
    }
}

/// Whether the message's From passed aligned DMARC (mail-auth's DMARC pass is aligned by
/// definition) from `trusted` or a subdomain of it.
fn dmarc_from(auth: &AuthSummary, from: Option<&str>, trusted: &[String]) -> bool {
    let Some(domain) = from.and_then(|f| f.rsplit_once('@')).map(|(_, d)| d) else {
        return false;
    };
    auth.dmarc == "pass"
        && trusted.iter().any(|t| {
            let t = t.trim_end_matches('.');
            domain.eq_ignore_ascii_case(t)
                || domain
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", t.to_ascii_lowercase()))
        })
}

/// Acts on the feedback message `id` carries, then releases it.
pub async fn process(d: &Reports, id: &str) -> Result<(), StoreError> {
    let Some(record) = d.store.spool_record(id)? else {
        return d.store.feedback_done(id).await;
    };
    let config = d.config();
    let body = match d.store.load_body(&record) {
        Ok(b) => b,
        // The body file is gone: nothing to read, but the mark must still be released.
        Err(StoreError::File { path, source }) => {
            tracing::warn!(id, path = %path.display(), error = %source, "feedback mail body missing: treated as empty");
            crate::store::spool::Body::Bytes(Default::default())
        }
        Err(e) => return Err(e),
    };
    let verp_tids = verp_tids(d, &config, &record);
    let hostname = config.server.hostname.clone();
    let want_dsn = !verp_tids.is_empty();
    // The daemon's one bounded pool for heavy parsing (shared with MO rendering and
    // DKIM body hashing), so reports of up to 40 MB never run on the async workers.
    let parsed = d
        .heavy
        .run(move || parse(&body, &hostname, want_dsn))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(id, error = %e, "feedback mail parser failed: treated as neither DSN nor ARF");
            Parsed {
                complaint: None,
                bounces: Vec::new(),
                from: None,
                subject: String::new(),
            }
        });
    let to_bounce_domain = record
        .rcpts
        .iter()
        .any(|r| classify_recipient(&config, r) == Ok(Destination::Bounce));
    if to_bounce_domain {
        bounce_domain(d, &config, &record, &parsed, &verp_tids).await?;
    }
    unsubscribe_by_mail(d, &config, &record, &parsed).await?;
    d.store.feedback_done(id).await
}

/// The tids of the signed VERP addresses the message was sent to.
fn verp_tids(d: &Reports, config: &Config, record: &SpoolRecord) -> Vec<String> {
    record
        .rcpts
        .iter()
        .filter(|r| classify_recipient(config, r) == Ok(Destination::Bounce))
        .filter_map(|a| {
            let local = split_address(a).map(|(l, _)| l).unwrap_or("");
            let tid = crate::model::links::verp_tid(&d.signer, local);
            if tid.is_none() {
                tracing::info!(rcpt = %a, "mail to an unsigned or forged bounce address: no DSN taken from it");
            }
            tid
        })
        .collect()
}

async fn bounce_domain(
    d: &Reports,
    config: &Config,
    record: &SpoolRecord,
    parsed: &Parsed,
    verp_tids: &[String],
) -> Result<(), StoreError> {
    if let Some(c) = &parsed.complaint {
        // A feedback loop may send to any bounce-domain address: the original's
        // Message-ID (our tid, unguessable) identifies the message, else the VERP.
        let Some(tid) = c.tid.clone().or_else(|| verp_tids.first().cloned()) else {
            tracing::info!(id = %record.id, "complaint report for a message that is not ours: ignored");
            return Ok(());
        };
        let Some(message) = d.store.messages().get(&tid).await? else {
            tracing::info!(tid = %tid, "complaint report for an unknown or expired transaction: ignored");
            return Ok(());
        };
        if message.recipients.len() > 1 {
            // Any of its recipients could report it naming another: only a trusted
            // feedback loop that authenticates is believed.
            let trusted = dmarc_from(
                &record.auth,
                parsed.from.as_deref(),
                &config.feedback.trusted_reporters,
            );
            if !trusted || c.recipient.is_none() {
                tracing::info!(tid = %tid, reporter = parsed.from.as_deref().unwrap_or(""),
                    dmarc = %record.auth.dmarc, names_recipient = c.recipient.is_some(),
                    "complaint about a message to several recipients from a reporter that is not trusted (feedback.trusted_reporters, aligned DMARC): ignored");
                return Ok(());
            }
        }
        // With one recipient, a report naming someone else changes nothing:
        // feedback::record ignores addresses the transaction never had.
        let report = Report::new(
            c.recipient.clone(),
            DeliveryCode::Complaint,
            c.feedback_type,
        )
        .suppress(Reason::Complained, format!("arf {}", c.feedback_type));
        feedback::record(&d.store, &d.outbox, config, &tid, &[report]).await?;
        return Ok(());
    }
    if parsed.bounces.is_empty() {
        if !verp_tids.is_empty() {
            tracing::info!(id = %record.id, "mail to a VERP address that is not a DSN: ignored");
        }
        return Ok(());
    }
    let reports: Vec<Report> = parsed
        .bounces
        .iter()
        .map(|r| {
            let report = Report::new(Some(r.recipient.clone()), DeliveryCode::Bounce, r.category)
                .additional(&r.additional_info());
            if r.permanent {
                report.suppress(Reason::Bounced, format!("dsn {}", r.status))
            } else {
                report
            }
        })
        .collect();
    for tid in verp_tids {
        feedback::record(&d.store, &d.outbox, config, tid, &reports).await?;
    }
    Ok(())
}

async fn unsubscribe_by_mail(
    d: &Reports,
    config: &Config,
    record: &SpoolRecord,
    parsed: &Parsed,
) -> Result<(), StoreError> {
    let mut done: HashSet<String> = HashSet::new();
    for rcpt in &record.rcpts {
        let asset_id = match classify_recipient(config, rcpt) {
            Ok(Destination::Asset(a)) | Ok(Destination::Forward(a)) => a,
            _ => continue,
        };
        let Some(asset) = config.asset(&asset_id) else {
            continue;
        };
        let Some(mailto) = asset.unsubscribe.as_ref().and_then(|u| u.mailto.as_deref()) else {
            continue;
        };
        let Some(tag) = mailto_tag(mailto, rcpt) else {
            continue;
        };
        let words: Vec<&str> = tag.into_iter().chain([parsed.subject.as_str()]).collect();
        let subject = match crate::outbound::track::unsubscribe::token_in_mail(
            &d.signer, &asset_id, &words,
        ) {
            Some(s) => s,
            None => {
                let from = parsed.from.clone().unwrap_or_default();
                let aligned = record.auth.dmarc == "pass"
                    && crate::model::types::check_address(&from).is_ok();
                if !aligned {
                    tracing::info!(asset = %asset_id, from = %from, dmarc = %record.auth.dmarc,
                        "mail to the unsubscribe address without its token or an aligned-DMARC From: nothing changed");
                    continue;
                }
                crate::outbound::track::unsubscribe::Unsubscribe {
                    asset_id: asset_id.clone(),
                    tid: uuid::Uuid::new_v4().to_string(),
                    recipient: from,
                    sender: mailto.to_string(),
                }
            }
        };
        if !done.insert(format!(
            "{}\0{}",
            subject.asset_id,
            subject.recipient.to_ascii_lowercase()
        )) {
            continue;
        }
        crate::feedback::unsubscribe::apply(&d.store, &d.outbox, config, &subject, true, "mailto")
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsubscribe_address_with_and_without_tag() {
        let m = "unsub@example.test";
        assert_eq!(mailto_tag(m, "Unsub@Example.test"), Some(None));
        assert_eq!(
            mailto_tag(m, "unsub+abc.def@example.test"),
            Some(Some("abc.def"))
        );
        assert_eq!(mailto_tag(m, "unsubx@example.test"), None);
        assert_eq!(mailto_tag(m, "unsub@other.test"), None);
        assert_eq!(mailto_tag(m, "other+unsub@example.test"), None);
    }

    #[test]
    fn trusted_reporters_need_aligned_dmarc_from_their_domain() {
        let pass = AuthSummary {
            dmarc: "pass".into(),
            ..AuthSummary::none()
        };
        let trusted = vec!["fbl.example.net".to_string()];
        assert!(dmarc_from(&pass, Some("x@fbl.example.net"), &trusted));
        assert!(dmarc_from(&pass, Some("x@eu.FBL.example.net"), &trusted));
        assert!(!dmarc_from(&pass, Some("x@evilfbl.example.net"), &trusted));
        assert!(!dmarc_from(
            &AuthSummary::none(),
            Some("x@fbl.example.net"),
            &trusted
        ));
        assert!(!dmarc_from(&pass, Some("x@fbl.example.net"), &[]));
        assert!(!dmarc_from(&pass, None, &trusted));
    }
}
