//! Postfix's cleanup for outbound mail: the one last step before the route. Fetches
//! attachments (guarded client), builds the MIME with mail-builder, signs it with the
//! asset domain's DKIM key after every other header is final, and makes the VERP return
//! path. Header values were refused at the API if they held CR/LF.

use crate::config::{AssetConfig, Config, RouteConfig, DEFAULT_DKIM_KEY};
use crate::model::links::Link;
use crate::model::tokens::Signer;
use crate::outbound::dkim::{Coverage, Keys};
use crate::store::messages::MessageRecord;
use futures::StreamExt;
use mail_builder::headers::address::Address;
use mail_builder::MessageBuilder;
use std::path::Path;

/// Largest message after MIME encoding (SPEC 11).
pub const MAX_MESSAGE: usize = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// 7591: the attachment at this URL could not be fetched.
    #[error("attachment {name}: {reason}")]
    Attachment { name: String, reason: String },
    /// 7591: over 10 MB after encoding.
    #[error("message is {0} bytes after MIME encoding; the limit is 10 MB")]
    TooLarge(usize),
    /// 7591: the HTML could not be rewritten for tracking.
    #[error("html: {0}")]
    Html(String),
    /// Transient: the key could not be loaded or made.
    #[error("DKIM: {0}")]
    Dkim(String),
}

/// Fetches one attachment with a size cap.
async fn fetch(client: &reqwest::Client, url: &str, cap: usize) -> Result<Vec<u8>, String> {
    let resp = client.get(url).send().await.map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    })?;
    if !resp.status().is_success() {
        return Err(format!("GET answered {}", resp.status()));
    }
    if resp.content_length().is_some_and(|n| n as usize > cap) {
        return Err(format!(
            "larger than the {cap} bytes left under the 10 MB limit"
        ));
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > cap {
            return Err(format!(
                "larger than the {cap} bytes left under the 10 MB limit"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Builds and signs the message of `record`.
pub async fn build(
    record: &MessageRecord,
    config: &Config,
    fetcher: &reqwest::Client,
    keys: &Keys,
    signer: &Signer,
    data_dir: &Path,
) -> Result<Vec<u8>, BuildError> {
    let files = fetch_attachments(record, fetcher).await?;
    let msg = headers(record, config);
    let (msg, unsubscribe_url) = unsubscribe(msg, record, config, signer);
    let mut msg = bodies(msg, record, config, signer, &unsubscribe_url)?;
    for (a, bytes) in record.attachments.iter().zip(files) {
        msg = msg.attachment(a.mimetype.clone(), a.name.clone(), bytes);
    }
    let body = msg
        .write_to_vec()
        .map_err(|e| BuildError::Dkim(e.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(BuildError::TooLarge(body.len()));
    }
    sign(body, record, config, keys, data_dir)
}

/// Every attachment's content, in order, within the 10 MB budget of the message.
async fn fetch_attachments(
    record: &MessageRecord,
    fetcher: &reqwest::Client,
) -> Result<Vec<Vec<u8>>, BuildError> {
    let mut files = Vec::new();
    let mut budget = MAX_MESSAGE;
    for a in &record.attachments {
        let bytes = fetch(fetcher, &a.media_url, budget)
            .await
            .map_err(|reason| BuildError::Attachment {
                name: a.name.clone(),
                reason,
            })?;
        budget = budget.saturating_sub(bytes.len());
        files.push(bytes);
    }
    Ok(files)
}

/// An address list header value.
fn address_list(addresses: &[String]) -> Address<'static> {
    Address::new_list(
        addresses
            .iter()
            .map(|a| Address::new_address(None::<String>, a.clone()))
            .collect(),
    )
}

/// From, To, Cc, Reply-To, Subject, Message-ID and Date.
fn headers(record: &MessageRecord, config: &Config) -> MessageBuilder<'static> {
    let from = Address::new_address(record.from_name.clone(), record.from.clone());
    let mut msg = MessageBuilder::new()
        .from(from)
        .to(address_list(&record.to))
        .subject(record.subject.clone())
        .message_id(format!("{}@{}", record.tid, config.server.hostname))
        .date(mail_builder::headers::date::Date::now());
    if !record.cc.is_empty() {
        msg = msg.cc(address_list(&record.cc));
    }
    if let Some(r) = &record.reply_to {
        msg = msg.reply_to(r.clone());
    }
    msg
}

/// Adds the List-Unsubscribe headers the asset wants; returns the message and its
/// unsubscribe link (what `$(unsubscribe)` in a body becomes).
///
/// One link per message. It speaks for the message's only recipient; a message to several
/// (multipleToRecipients) cannot tell who clicked, so its link names nobody (the page asks
/// for the address), it gets no one-click header, and its mailto carries no token (mail to
/// it acts on an aligned-DMARC From only).
fn unsubscribe(
    mut msg: MessageBuilder<'static>,
    record: &MessageRecord,
    config: &Config,
    signer: &Signer,
) -> (MessageBuilder<'static>, String) {
    use crate::outbound::track::unsubscribe as unsub;
    let subject = unsub::subject_of(record);
    let token = unsub::token(signer, &subject);
    let url = format!(
        "{}/u/{token}",
        config.server.public_url.trim_end_matches('/'),
    );
    let mail_token = (!subject.recipient.is_empty()).then_some(token.as_str());
    if let Some((value, one_click)) = unsub::headers(config, record, &url, mail_token) {
        msg = msg.header(
            "List-Unsubscribe",
            mail_builder::headers::raw::Raw::new(value),
        );
        if one_click {
            msg = msg.header(
                "List-Unsubscribe-Post",
                mail_builder::headers::raw::Raw::new("List-Unsubscribe=One-Click"),
            );
        }
    }
    (msg, url)
}

/// The text and HTML bodies with `$(unsubscribe)` replaced; the HTML with click and open
/// tracking when the request asked for them.
fn bodies(
    mut msg: MessageBuilder<'static>,
    record: &MessageRecord,
    config: &Config,
    signer: &Signer,
    unsubscribe_url: &str,
) -> Result<MessageBuilder<'static>, BuildError> {
    let with_link = |body: &str| body.replace("$(unsubscribe)", unsubscribe_url);
    if let Some(t) = &record.text {
        msg = msg.text_body(with_link(t));
    }
    if let Some(h) = &record.html {
        let mut html = with_link(h);
        if record.track_clicks || record.track_opens {
            html = tracked(&html, record, config, signer)?;
        }
        msg = msg.html_body(html);
    }
    Ok(msg)
}

/// The HTML with its links through `/t/c/` and an open pixel from `/t/o/`, as the
/// request asked. Opens and clicks of a message to several recipients are bound to its
/// first.
fn tracked(
    html: &str,
    record: &MessageRecord,
    config: &Config,
    signer: &Signer,
) -> Result<String, BuildError> {
    let tracked = record
        .recipients
        .first()
        .map(|r| r.address.clone())
        .unwrap_or_default();
    let base = config.server.public_url.trim_end_matches('/');
    let click = |url: &str| {
        format!(
            "{base}/t/c/{}",
            Link::Click {
                tid: record.tid.clone(),
                recipient: tracked.clone(),
                url: url.to_string(),
            }
            .token(signer)
        )
    };
    let pixel = format!(
        "{base}/t/o/{}",
        Link::Open {
            tid: record.tid.clone(),
            recipient: tracked.clone(),
        }
        .token(signer)
    );
    crate::outbound::track::links::rewrite(
        html,
        record
            .track_clicks
            .then_some(&click as &dyn Fn(&str) -> String),
        record.track_opens.then_some(pixel.as_str()),
    )
    .map_err(BuildError::Html)
}

/// The message with its DKIM-Signature header first, signed with the key the From
/// domain's rotation (or the asset's configuration) names.
fn sign(
    body: Vec<u8>,
    record: &MessageRecord,
    config: &Config,
    keys: &Keys,
    data_dir: &Path,
) -> Result<Vec<u8>, BuildError> {
    let domain = record
        .from
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let configured = config
        .asset(&record.asset_id)
        .map(AssetConfig::dkim_key)
        .unwrap_or(DEFAULT_DKIM_KEY);
    let key = keys
        .signing_key(data_dir, &domain, configured)
        .map_err(|e| BuildError::Dkim(e.to_string()))?;
    // SES replaces Message-ID and Date: a signature over them would not survive it.
    let coverage = match config
        .asset(&record.asset_id)
        .and_then(|a| a.route.as_ref())
    {
        Some(RouteConfig::Ses(_)) => Coverage::Ses,
        Some(RouteConfig::Smtp(_)) | None => Coverage::Full,
    };
    let signature = key
        .sign_with(&body, coverage)
        .map_err(|e| BuildError::Dkim(e.to_string()))?;
    let mut signed = Vec::with_capacity(signature.len() + body.len());
    signed.extend_from_slice(signature.as_bytes());
    signed.extend_from_slice(&body);
    Ok(signed)
}
