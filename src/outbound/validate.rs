//! Request validation and expansion (SPEC 4.2), pure: a parsed request, the service, the
//! config and the clock in; either a refusal naming the field and the rule, or the list of
//! transactions to queue (one per tid). Nothing here touches the store or the network.
//! In two steps, so the TPS bucket is charged between them (SPEC 6.3 "API"): [`check`]
//! costs about the size of the request; [`expand`] first sizes every destination's subject,
//! text and html without building them, and builds them only when all fit.

use super::substitute::normalise_keys;
use crate::config::{Config, ServiceConfig};
use crate::model::time::{parse_time, TimeError, LATEST_MS};
use crate::model::types::{check_address, ApiCode, DeliveryCode, Receipt, Receipts};
use crate::model::urls::Policy;
use crate::model::wire::{AttachmentRef, Destination, SendRequest, Template};
use std::collections::BTreeMap;

pub const MAX_DESTINATIONS: usize = 1000;
pub const MAX_HTML: usize = 500 * 1024;
/// A text body after substitution, like html.
pub const MAX_TEXT: usize = 500 * 1024;
/// A subject after substitution: RFC 5322's line limit.
pub const MAX_SUBJECT: usize = 998;
pub const MAX_CALLBACK: usize = 2000;
pub const MAX_SEND_AHEAD_MS: u64 = 7 * 86_400_000;
pub const DEFAULT_EXPIRY_MS: u64 = 72 * 3_600_000;

/// A refusal: HTTP 400 with a code, or 7009 for too many destinations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub code: ApiCode,
    pub description: String,
}

fn invalid(field: &str, rule: impl std::fmt::Display) -> Invalid {
    Invalid {
        code: ApiCode::InvalidValue,
        description: format!("{field}: {rule}"),
    }
}

fn missing(field: &str) -> Invalid {
    Invalid {
        code: ApiCode::MissingField,
        description: format!("missing mandatory field: {field}"),
    }
}

/// One transaction to queue (or to fail at once, when `immediate` is set).
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    pub tid: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// Header To and Cc.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub correlation_id: Option<String>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    /// Set for an address that fails syntax (7523) or length (7524): notified, not queued.
    pub immediate: Option<DeliveryCode>,
}

/// Everything a transaction shares with the others of its request.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub service_id: String,
    pub asset_id: String,
    pub from: String,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub attachments: Vec<AttachmentRef>,
    pub receipts: Receipts,
    pub callback_data: String,
    pub notify_url: Option<String>,
    pub send_at_ms: u64,
    pub expire_at_ms: u64,
    pub track_clicks: bool,
    pub track_opens: bool,
    pub list_unsubscribe_url: Option<String>,
    pub unsubscribe_email: Option<String>,
    pub unsubscribe_subject: Option<String>,
    pub contact_policy: Option<crate::store::messages::ContactPolicy>,
    pub transactions: Vec<Transaction>,
}

/// A request that passed [`check`]: everything but its expansion into transactions.
pub struct Checked {
    /// The submission without its transactions.
    base: Submission,
    /// `content` or `template`: where subject, text and html came from (for refusals).
    source: &'static str,
    subject: String,
    text: Option<String>,
    html: Option<String>,
    to: Vec<Destination>,
    cc: Vec<String>,
    bcc: Vec<String>,
    global: BTreeMap<String, String>,
    multiple: bool,
    correlation: Option<String>,
    /// Destinations (addresses in to, cc and bcc): the tokens the request takes.
    pub destinations: usize,
}

impl Checked {
    /// The sender address, trimmed.
    pub fn from(&self) -> &str {
        &self.base.from
    }
}

/// Validates and expands a request in one go (tests, and callers without a TPS bucket).
pub fn validate(
    req: SendRequest,
    service: &ServiceConfig,
    config: &Config,
    template: Option<Template>,
    policy: &Policy,
    now_ms: u64,
    new_tid: &mut dyn FnMut() -> String,
) -> Result<Submission, Invalid> {
    expand(
        check(req, service, config, template, policy, now_ms)?,
        new_tid,
    )
}

/// The refusal of a channel other than email (SPEC 4.2), whatever else the body holds.
pub fn channel_refusal(channel: &str) -> Option<Invalid> {
    if channel.eq_ignore_ascii_case("email") {
        return None;
    }
    let ch: String = channel
        .chars()
        .filter(|c| !c.is_control())
        .take(32)
        .collect();
    Some(invalid(
        "channel",
        format!("channel '{ch}' is not served by postern"),
    ))
}

/// Checks every field of a request. `template` is the stored template named by
/// `template.id`, looked up by the caller (`None` when absent or not asked for).
pub fn check(
    req: SendRequest,
    service: &ServiceConfig,
    config: &Config,
    template: Option<Template>,
    policy: &Policy,
    now_ms: u64,
) -> Result<Checked, Invalid> {
    if let Some(refused) = channel_refusal(&req.channel) {
        return Err(refused);
    }
    no_crlf("from", &req.from)?;
    check_address(&req.from).map_err(|_| invalid("from", "is not a valid email address"))?;
    let from_domain = req
        .from
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let asset = config
        .asset_for_domain(&from_domain)
        .filter(|a| service.assets.iter().any(|s| s == &a.id))
        .ok_or_else(|| {
            invalid(
                "from",
                format!(
                    "domain '{from_domain}' is not a sending domain of service {}",
                    service.id
                ),
            )
        })?;

    let o = &req.options;
    for (field, value) in [
        ("options.fromName", &o.from_name),
        ("options.listUnsubscribeUrl", &o.list_unsubscribe_url),
        (
            "options.unsubscribeEmailAddress",
            &o.unsubscribe_email_address,
        ),
        (
            "options.unsubscribeEmailSubject",
            &o.unsubscribe_email_subject,
        ),
    ] {
        if let Some(v) = value {
            no_crlf(field, v)?;
        }
    }
    if let Some(u) = &o.unsubscribe_email_address {
        check_address(u).map_err(|_| {
            invalid(
                "options.unsubscribeEmailAddress",
                "is not a valid email address",
            )
        })?;
    }
    if let Some(u) = &o.list_unsubscribe_url {
        if !(u.starts_with("https://") || u.starts_with("http://")) {
            return Err(invalid(
                "options.listUnsubscribeUrl",
                "must be an http(s) URL",
            ));
        }
    }

    // Content: exactly one of content / template.
    let source = if req.template.is_some() {
        "template"
    } else {
        "content"
    };
    let (subject, text, html, reply_to, attachments) = match (req.content, req.template) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "content",
                "send either content or template, not both",
            ))
        }
        (None, None) => return Err(invalid("content", "one of content or template is required")),
        (Some(c), None) => {
            let kind = c.kind.to_ascii_lowercase();
            let (text, html) = match kind.as_str() {
                "text" => (Some(c.text.ok_or_else(|| missing("content.text"))?), None),
                "html" => (c.text, Some(c.html.ok_or_else(|| missing("content.html"))?)),
                other => {
                    return Err(invalid(
                        "content.type",
                        format!("'{other}' is not text or html"),
                    ))
                }
            };
            (
                c.subject.unwrap_or_default(),
                text,
                html,
                c.reply_to,
                c.attachments,
            )
        }
        (None, Some(t)) => {
            let tpl = template
                .ok_or_else(|| invalid("template.id", format!("no template with id '{}'", t.id)))?;
            let html = (!tpl.html.is_empty()).then_some(tpl.html);
            let text = (!tpl.text.is_empty()).then_some(tpl.text);
            if html.is_none() && text.is_none() {
                return Err(invalid(
                    "template.id",
                    format!("template '{}' has neither text nor html", t.id),
                ));
            }
            (
                t.subject.unwrap_or(tpl.subject),
                text,
                html,
                None,
                Vec::new(),
            )
        }
    };
    no_crlf("content.subject", &subject)?;
    let reply_to = reply_to.filter(|r| !r.trim().is_empty());
    if let Some(r) = &reply_to {
        no_crlf("content.replyTo", r)?;
        check_address(r).map_err(|_| invalid("content.replyTo", "is not a valid email address"))?;
    }
    for (i, a) in attachments.iter().enumerate() {
        no_crlf(&format!("content.attachments[{i}].name"), &a.name)?;
        no_crlf(&format!("content.attachments[{i}].mimetype"), &a.mimetype)?;
        if !is_mime_type(&a.mimetype) {
            return Err(invalid(
                &format!("content.attachments[{i}].mimetype"),
                "is not type/subtype",
            ));
        }
        policy
            .check_url(&a.media_url)
            .map_err(|e| invalid(&format!("content.attachments[{i}].mediaUrl"), e))?;
    }

    let callback_data = req.callback_data.unwrap_or_default();
    if callback_data.chars().count() > MAX_CALLBACK {
        return Err(invalid(
            "callbackData",
            format!("is longer than {MAX_CALLBACK} characters"),
        ));
    }
    let notify_url = req.notify_url.filter(|u| !u.trim().is_empty());
    if let Some(u) = &notify_url {
        policy.check_url(u).map_err(|e| invalid("notifyUrl", e))?;
    }
    let receipts = match req.requested_receipts {
        None => Receipts::all(),
        Some(list) => {
            let mut r = Receipts::none();
            for name in list {
                r = r.with(Receipt::parse(&name).ok_or_else(|| {
                    invalid("requestedReceipts", format!("'{name}' is not a receipt"))
                })?);
            }
            r
        }
    };

    let contact_policy = match req.contact_policy {
        Some(cp) if cp.channel_check_consent || cp.channel_apply_frequency_cap => {
            let group = cp
                .contact_policy_group
                .filter(|g| !g.is_empty())
                .ok_or_else(|| missing("contactPolicy.contactPolicyGroup"))?;
            if config.contact_policy(&group).is_none() {
                return Err(invalid(
                    "contactPolicy.contactPolicyGroup",
                    format!("'{group}' is not a configured contact-policy group"),
                ));
            }
            Some(crate::store::messages::ContactPolicy {
                group,
                check_consent: cp.channel_check_consent,
                apply_frequency_cap: cp.channel_apply_frequency_cap,
            })
        }
        _ => None,
    };

    // Scheduling. Times come from the client: all arithmetic on them is checked.
    let send_at_ms = match &req.send_at {
        None => now_ms,
        Some(v) => {
            let t = parse_time(v).map_err(|e| invalid("sendAt", e))?;
            if t > now_ms.saturating_add(MAX_SEND_AHEAD_MS) {
                return Err(invalid("sendAt", "is more than 7 days ahead"));
            }
            t.max(now_ms)
        }
    };
    let expire_at_ms = match (&req.expire_at, req.validity) {
        (Some(_), Some(_)) => {
            return Err(invalid("validity", "send expireAt or validity, not both"))
        }
        (Some(v), None) => {
            let t = parse_time(v).map_err(|e| invalid("expireAt", e))?;
            if t <= send_at_ms {
                return Err(invalid("expireAt", "is not after sendAt"));
            }
            t
        }
        (None, Some(secs)) => {
            if secs == 0 {
                return Err(invalid("validity", "must be at least 1 second"));
            }
            secs.checked_mul(1000)
                .and_then(|ms| send_at_ms.checked_add(ms))
                .filter(|t| *t <= LATEST_MS)
                .ok_or_else(|| invalid("validity", TimeError::OutOfRange))?
        }
        (None, None) => send_at_ms.saturating_add(DEFAULT_EXPIRY_MS),
    };

    // Destinations.
    if req.to.iter().all(|d| d.email.is_empty()) {
        return Err(missing("to[].email"));
    }
    let cc: Vec<String> = req
        .cc
        .into_iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let bcc: Vec<String> = req
        .bcc
        .into_iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let total = req.to.iter().map(|d| d.email.len()).sum::<usize>() + cc.len() + bcc.len();
    let cap = MAX_DESTINATIONS.min(service.tps as usize);
    if total > cap {
        return Err(Invalid {
            code: ApiCode::TooManyDestinations,
            description: format!(
                "too many destinations: {total}; at most {cap} per request for this service"
            ),
        });
    }
    for (field, list) in [("cc", &cc), ("bcc", &bcc)] {
        for a in list {
            no_crlf(field, a)?;
        }
    }
    let mut to = req.to;
    for a in to.iter_mut().flat_map(|d| d.email.iter_mut()) {
        *a = a.trim().to_string();
        no_crlf("to", a)?;
    }

    Ok(Checked {
        base: Submission {
            service_id: service.id.clone(),
            asset_id: asset.id.clone(),
            from: req.from.trim().to_string(),
            from_name: o.from_name.clone().filter(|n| !n.is_empty()),
            reply_to,
            attachments,
            receipts,
            callback_data,
            notify_url,
            send_at_ms,
            expire_at_ms,
            track_clicks: o.track_clicks,
            track_opens: o.track_opens,
            list_unsubscribe_url: o.list_unsubscribe_url.clone(),
            unsubscribe_email: o.unsubscribe_email_address.clone(),
            unsubscribe_subject: o.unsubscribe_email_subject.clone(),
            contact_policy,
            transactions: Vec::new(),
        },
        source,
        subject,
        text,
        html,
        to,
        cc,
        bcc,
        global: normalise_keys(&req.substitutions),
        multiple: req.multiple_to_recipients,
        correlation: req.correlation_id.filter(|c| !c.is_empty()),
        destinations: total,
    })
}

fn no_crlf(field: &str, value: &str) -> Result<(), Invalid> {
    if value.contains(['\r', '\n', '\0']) {
        Err(invalid(
            field,
            "must not contain CR, LF or NUL (header injection)",
        ))
    } else {
        Ok(())
    }
}

/// `type/subtype`, both RFC 2045 tokens.
fn is_mime_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
}

mod expand;
pub use expand::expand;

#[cfg(test)]
mod tests;
