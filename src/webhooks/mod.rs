//! The webhook outbox worker (SPEC 5): every event kind (MO now, delivery notifications
//! and unsubscribes later) is delivered from the durable `outbox` tree, at least once,
//! with exponential backoff and jitter, `X-Postern-Event-Id`, an HMAC signature when the
//! asset has a `webhook_secret`, and a dead-letter store for what gives up. The worker
//! keeps only ids and due times in memory; the entries themselves stay in sled, so a
//! restart loses nothing.

pub mod confirm;
pub mod mo;
pub mod repair;
pub mod retry;

use crate::config::{Config, MoAttachments, SharedConfig};
use crate::metrics::{Metrics, WebhookResult};
use crate::model::links::Link;
use crate::model::time::now_ms;
use crate::model::tokens::Signer;
use crate::store::{OutboxEntry, Payload, SpoolRecord, Store};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Handle used by producers to wake the worker for new (or replayed) events. Events are
/// already durable when scheduled; a lost wake-up is repaired at the next start.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<(u64, String)>,
}

impl Outbox {
    pub fn channel() -> (Outbox, mpsc::UnboundedReceiver<(u64, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Outbox { tx }, rx)
    }

    pub fn schedule(&self, entries: impl IntoIterator<Item = OutboxEntry>) {
        for e in entries {
            let _ = self.tx.send((e.next_ms, e.id));
        }
    }
}

/// How one POST ended, decided by [`classify`].
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Timeouts, connection errors, 408, 429, 5xx; with the receiver's Retry-After, if any.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Any other 4xx (or a body that cannot be built): logged and dead-lettered at once.
    Refused(String),
}

/// Maps an HTTP status to what happens to the event.
pub fn classify(status: u16, retry_after: Option<Duration>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: format!("receiver answered {status}"),
            after: retry_after,
        },
        _ => Outcome::Refused(format!("receiver answered {status}")),
    }
}

/// Signature header value: `t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">`.
pub fn signature(secret: &str, unix: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// How much of a receiver's reply is read (and dropped) so its connection goes back to the
/// pool; a longer reply is cut off and that connection closed.
const REPLY_DRAIN: usize = 64 * 1024;

/// Reads the reply's body, up to [`REPLY_DRAIN`] octets, within the request's timeout.
/// hyper reuses a connection only once its response was read to the end: dropping it
/// unread closed the connection, so every POST of a burst opened a new one.
async fn drain_reply(resp: &mut reqwest::Response) {
    let mut left = REPLY_DRAIN;
    while let Ok(Some(chunk)) = resp.chunk().await {
        match left.checked_sub(chunk.len()) {
            Some(rest) => left = rest,
            None => return,
        }
    }
}

/// Messages up to this size have their MO JSON built in memory; larger ones in a file.
const RENDER_IN_MEMORY: u64 = 1024 * 1024;
/// Messages up to this size are rendered on the async worker itself (about 0.15 ms at
/// 100 KB; the repair keeps any structure linear). The hop to the heavy pool and back
/// costs two thread wake-ups, and context switches were the top of the 100 KB profile;
/// past this size the pool bounds how many big renders run at once.
const RENDER_INLINE: u64 = 128 * 1024;
/// How long a large MO event waits when every large slot is taken.
const LARGE_POSTPONE_MS: u64 = 500;

/// A webhook body ready to send.
pub struct Rendered {
    body: RenderedBody,
    signature: Option<String>,
    /// An MO event's summary, for the admin page's last mails of its asset.
    summary: Option<mo::MoSummary>,
}

enum RenderedBody {
    Memory(Vec<u8>),
    File { path: std::path::PathBuf, len: u64 },
}

impl Rendered {
    /// A body built in memory, signed when the asset has a secret.
    fn memory(bytes: Vec<u8>, secret: Option<String>, unix: u64) -> Self {
        let signature = secret.map(|k| signature(&k, unix, &bytes));
        Rendered {
            body: RenderedBody::Memory(bytes),
            signature,
            summary: None,
        }
    }
}

/// Everything one MO render needs, owned, so it can move to the heavy pool.
struct MoJob {
    store: Store,
    signer: Signer,
    record: SpoolRecord,
    tid: String,
    recipients: Vec<String>,
    mode: MoAttachments,
    /// How long url-mode links stay valid after the message was received.
    retention_ms: u64,
    public_url: String,
    secret: Option<String>,
    unix: u64,
    /// Where a body over [`RENDER_IN_MEMORY`] is rendered; `None`: in memory.
    file: Option<PathBuf>,
}

impl MoJob {
    /// Loads the stored message and renders its MO JSON (blocking work).
    fn render(self) -> Result<Rendered, String> {
        let raw = self
            .store
            .load_body(&self.record)
            .map_err(|e| e.to_string())?;
        let link = |n: Option<usize>| self.link(n);
        let ctx = mo::MoContext {
            tid: &self.tid,
            received_ms: self.record.received_ms,
            mail_from: &self.record.mail_from,
            recipients: &self.recipients,
            auth: &self.record.auth,
            attachments: self.mode,
            link: &link,
        };
        match &self.file {
            None => {
                let mut out = Vec::with_capacity(self.record.size as usize * 4 / 3 + 1024);
                let summary = mo::render(&raw, &ctx, &mut out).map_err(|e| e.to_string())?;
                let mut rendered = Rendered::memory(out, self.secret.clone(), self.unix);
                rendered.summary = Some(summary);
                Ok(rendered)
            }
            Some(path) => self.render_to_file(&raw, &ctx, path),
        }
    }

    /// The signed link of attachment `n` (`None`: the raw message), valid as long as the
    /// message is retained.
    fn link(&self, n: Option<usize>) -> String {
        let (tid, public_url) = (&self.tid, &self.public_url);
        let token = Link::InboundAttachment {
            tid: tid.clone(),
            part: n.map(|n| n.to_string()).unwrap_or_else(|| "raw".into()),
            expires_ms: self.record.received_ms + self.retention_ms,
        }
        .token(&self.signer);
        match n {
            Some(n) => format!("{public_url}/v2/inbound/{tid}/attachments/{n}?token={token}"),
            None => format!("{public_url}/v2/inbound/{tid}/raw?token={token}"),
        }
    }

    /// Renders into `path`, signing as it writes; the file is removed if rendering fails.
    fn render_to_file(
        &self,
        raw: &[u8],
        ctx: &mo::MoContext<'_>,
        path: &Path,
    ) -> Result<Rendered, String> {
        let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut w = MacWriter::new(
            std::io::BufWriter::with_capacity(256 * 1024, f),
            self.secret.as_deref(),
            self.unix,
        );
        let written = mo::render(raw, ctx, &mut w)
            .map_err(|e| e.to_string())
            .and_then(|summary| Ok((summary, w.finish().map_err(|e| e.to_string())?)));
        match written {
            Ok((summary, (len, signature))) => Ok(Rendered {
                body: RenderedBody::File {
                    path: path.to_path_buf(),
                    len,
                },
                signature,
                summary: Some(summary),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }
}

/// Counts and (with a secret) MACs everything written through it, so a file-rendered body
/// is signed without being read back.
struct MacWriter<W: std::io::Write> {
    inner: W,
    mac: Option<Hmac<Sha256>>,
    unix: u64,
    len: u64,
}

impl<W: std::io::Write> MacWriter<W> {
    fn new(inner: W, secret: Option<&str>, unix: u64) -> Self {
        let mac = secret.map(|k| {
            let mut m =
                Hmac::<Sha256>::new_from_slice(k.as_bytes()).expect("HMAC takes any key length");
            m.update(format!("{unix}.").as_bytes());
            m
        });
        MacWriter {
            inner,
            mac,
            unix,
            len: 0,
        }
    }

    fn finish(mut self) -> std::io::Result<(u64, Option<String>)> {
        self.inner.flush()?;
        let sig = self.mac.map(|m| {
            format!(
                "t={},v1={}",
                self.unix,
                hex::encode(m.finalize().into_bytes())
            )
        });
        Ok((self.len, sig))
    }
}

impl<W: std::io::Write> std::io::Write for MacWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(m) = &mut self.mac {
            m.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub struct Worker {
    pub store: Store,
    pub config: SharedConfig,
    pub metrics: Arc<Metrics>,
    pub signer: Signer,
    pub outbox: Outbox,
    pub client: reqwest::Client,
    /// For URLs that came from API requests (no private targets).
    pub guarded_client: reqwest::Client,
    /// Bounds MO rendering of large messages (SPEC 6.3 "MIME"), shared with inbound parsing.
    pub heavy: crate::heavy::Heavy,
    /// Deliveries of large MO events in flight (see [`Worker::large_slots`]).
    pub large: Arc<tokio::sync::Semaphore>,
}

impl Worker {
    pub fn http_client(timeout: Duration) -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static HTTP client settings are valid")
    }

    /// At most half of the webhook slots (at least one) may hold large MO events, which
    /// wait for the heavy pool and post big bodies; the rest always serve small events, so
    /// a burst of 40 MB messages never stalls other webhooks.
    pub fn large_slots(concurrency: usize) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new((concurrency / 2).max(1)))
    }

    fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// Runs until `shutdown` flips; in-flight POSTs finish first.
    pub async fn run(
        self: Arc<Self>,
        rx: mpsc::UnboundedReceiver<(u64, String)>,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut due: BinaryHeap<Reverse<(u64, String)>> = BinaryHeap::new();
        match self.store.outbox_all() {
            Ok(all) => {
                tracing::info!(pending = all.len(), "webhook outbox loaded");
                due.extend(all.into_iter().map(|e| Reverse((e.next_ms, e.id))));
            }
            Err(e) => tracing::error!(error = %e, "cannot read the webhook outbox"),
        }
        // In-flight deliveries finish on shutdown (bounded by the POST timeout).
        let concurrency = self.config().webhooks.concurrency;
        crate::schedule::run(
            due,
            rx,
            shutdown,
            concurrency,
            Duration::from_secs(15),
            |id| {
                let me = self.clone();
                async move { me.deliver(&id).await }
            },
        )
        .await;
    }

    async fn deliver(&self, id: &str) {
        let entry = match self.store.outbox_get(id) {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(event = id, error = %e, "outbox entry unreadable");
                return;
            }
        };
        // `instrument`, not `enter`: a guard held across `.await` would leak the span into
        // whatever the worker thread runs next.
        let span = tracing::info_span!("webhook", event = %entry.id, kind = entry.kind.label(), attempt = entry.attempts + 1);
        async move {
            // A large MO event takes one of the large slots, or comes back a little later
            // (no attempt counted) and frees its webhook slot for small events.
            let stored = self.stored_message(&entry);
            let large = matches!(&stored, Some(Ok(r)) if r.size > RENDER_INLINE);
            let _large = match large {
                false => None,
                true => match self.large.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let mut later = entry;
                        later.next_ms = now_ms() + LARGE_POSTPONE_MS;
                        self.outbox.schedule([later]);
                        return;
                    }
                },
            };
            let config = self.config();
            let outcome = match self.body(&config, &entry, stored).await {
                Ok(body) => self.post(&config, &entry, body).await,
                Err(reason) => Outcome::Refused(reason),
            };
            self.settle(&config, entry, outcome).await;
        }
        .instrument(span)
        .await
    }

    /// The stored message an MO event renders (read once per attempt); `None` for other
    /// events.
    fn stored_message(&self, entry: &OutboxEntry) -> Option<Result<SpoolRecord, String>> {
        let Payload::Mo { spool_id, .. } = &entry.payload else {
            return None;
        };
        Some(match self.store.spool_record(spool_id) {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(format!("stored message {spool_id} is missing")),
            Err(e) => Err(e.to_string()),
        })
    }

    /// The JSON to POST and its signature. MO bodies over [`RENDER_INLINE`] are rendered in the
    /// bounded heavy pool, off the async threads, so they never delay other webhooks; a
    /// large one is rendered to a file in the spool directory and streamed from there.
    async fn body(
        &self,
        config: &Config,
        entry: &OutboxEntry,
        stored: Option<Result<SpoolRecord, String>>,
    ) -> Result<Rendered, String> {
        let secret = config
            .asset(&entry.asset_id)
            .and_then(|a| a.webhook_secret.as_ref())
            .map(|s| s.expose().to_string());
        let unix = now_ms() / 1000;
        let job = match &entry.payload {
            Payload::Json(s) => {
                return Ok(Rendered::memory(s.clone().into_bytes(), secret, unix));
            }
            Payload::Mo {
                tid,
                asset_id,
                recipients,
                ..
            } => {
                let record = stored.ok_or("an MO event without its stored message")??;
                let asset = config.asset(asset_id);
                MoJob {
                    store: self.store.clone(),
                    signer: self.signer.clone(),
                    public_url: config.server.public_url.trim_end_matches('/').to_string(),
                    file: (record.size > RENDER_IN_MEMORY).then(|| {
                        self.store
                            .spool_dir()
                            .join(format!("render-{}.json", entry.id))
                    }),
                    record,
                    tid: tid.clone(),
                    recipients: recipients.clone(),
                    mode: asset.map(|a| a.mo_attachments).unwrap_or_default(),
                    retention_ms: asset
                        .map(|a| u64::from(a.inbound_retention_days) * 86_400_000)
                        .unwrap_or(0),
                    secret,
                    unix,
                }
            }
        };
        let (received_ms, tid, to) = (
            job.record.received_ms,
            job.tid.clone(),
            job.recipients.clone(),
        );
        let rendered = if job.record.size <= RENDER_INLINE {
            // Microseconds of work: cheaper than a hop to the blocking pool.
            job.render()
        } else {
            self.heavy
                .run(move || job.render())
                .await
                .map_err(|e| e.to_string())?
        }?;
        if let Some(summary) = &rendered.summary {
            self.note_inbound(&entry.asset_id, tid, to, received_ms, summary);
        }
        Ok(rendered)
    }

    /// Keeps what the admin page shows of a mail the asset received, with a forwarding
    /// confirmation's code and link picked out (a failure only costs the view).
    fn note_inbound(
        &self,
        asset: &str,
        tid: String,
        to: Vec<String>,
        received_ms: u64,
        summary: &mo::MoSummary,
    ) {
        let found =
            confirm::forwarding_confirmation(&summary.from, &summary.subject, &summary.text);
        let (code, link) = found.unwrap_or_default();
        let note = crate::store::recent::InboundNote {
            tid,
            received_ms,
            from: summary.from.clone(),
            to,
            subject: summary.subject.clone(),
            snippet: summary.text.chars().take(300).collect(),
            confirmation_code: code,
            confirmation_link: link,
        };
        if let Err(e) = self.store.note_inbound(asset, &note) {
            tracing::warn!(error = %e, "received mail not noted for the admin page");
        }
    }

    async fn post(&self, config: &Config, entry: &OutboxEntry, rendered: Rendered) -> Outcome {
        let client = if entry.guarded {
            &self.guarded_client
        } else {
            &self.client
        };
        let mut req = client
            .post(&entry.url)
            .header("content-type", "application/json")
            .header("x-postern-event-id", &entry.id)
            .timeout(Duration::from_secs(config.webhooks.timeout.max(1)));
        if let Some(sig) = &rendered.signature {
            req = req.header("x-postern-signature", sig);
        }
        let mut cleanup = None;
        req = match rendered.body {
            RenderedBody::Memory(bytes) => req.body(bytes),
            RenderedBody::File { path, len } => match tokio::fs::File::open(&path).await {
                Ok(f) => {
                    cleanup = Some(path);
                    req.header("content-length", len)
                        .body(reqwest::Body::wrap_stream(
                            tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024),
                        ))
                }
                Err(e) => {
                    return Outcome::Retry {
                        reason: format!("rendered body unreadable: {e}"),
                        after: None,
                    }
                }
            },
        };
        let result = req.send().await;
        if let Some(path) = cleanup {
            let _ = tokio::fs::remove_file(path).await;
        }
        match result {
            Ok(mut resp) => {
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let status = resp.status().as_u16();
                drain_reply(&mut resp).await;
                classify(status, retry_after)
            }
            Err(e) => Outcome::Retry {
                reason: if e.is_timeout() {
                    "timed out".into()
                } else {
                    format!("connection failed: {}", root_cause(&e))
                },
                after: None,
            },
        }
    }

    async fn settle(&self, config: &Config, mut entry: OutboxEntry, outcome: Outcome) {
        let kind = entry.kind;
        match outcome {
            Outcome::Delivered => {
                tracing::info!(url = %entry.url, "webhook delivered");
                self.metrics.webhook(kind, WebhookResult::Delivered);
                if let Err(e) = self.store.outbox_done(&entry.id) {
                    tracing::error!(error = %e, "could not remove a delivered event; it will be sent again");
                }
                if let Some(spool) = entry.spool_id() {
                    let _ = self.store.release_spool_if_done(spool);
                }
            }
            Outcome::Retry { reason, after } => {
                entry.attempts += 1;
                let now = now_ms();
                let deadline = entry.created_ms + config.webhooks.retry_for * 1000;
                if now >= deadline {
                    let why = format!("gave up after {} attempts: {reason}", entry.attempts);
                    self.to_dead(entry, why).await;
                    return;
                }
                let delay = retry::BACKOFF
                    .delay(entry.attempts, rand::random::<f64>())
                    .max(after.unwrap_or_default());
                entry.next_ms = (now + delay.as_millis() as u64).min(deadline);
                entry.last_error = reason.clone();
                tracing::info!(reason = %reason, retry_in_ms = entry.next_ms - now, "webhook will be retried");
                self.metrics.webhook(kind, WebhookResult::Retried);
                if let Err(e) = self.store.outbox_update(&entry) {
                    tracing::error!(error = %e, "could not record the retry");
                }
                self.outbox.schedule([entry]);
            }
            Outcome::Refused(reason) => {
                tracing::warn!(reason = %reason, "webhook refused; moved to dead letters");
                self.to_dead(entry, reason).await;
            }
        }
    }

    async fn to_dead(&self, entry: OutboxEntry, reason: String) {
        let kind = entry.kind;
        tracing::warn!(url = %entry.url, reason = %reason, "webhook event dead-lettered");
        if let Err(e) = self.store.outbox_to_dead(entry, reason).await {
            tracing::error!(error = %e, "could not dead-letter an event; it stays in the outbox");
        }
        self.metrics.webhook(kind, WebhookResult::Dead);
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(classify(204, None), Outcome::Delivered);
        assert!(matches!(classify(503, None), Outcome::Retry { .. }));
        assert!(matches!(
            classify(429, Some(Duration::from_secs(9))),
            Outcome::Retry { after: Some(_), .. }
        ));
        assert!(matches!(classify(408, None), Outcome::Retry { .. }));
        assert!(matches!(classify(404, None), Outcome::Refused(_)));
        assert!(matches!(classify(301, None), Outcome::Refused(_)));
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Computed independently with Python's hmac module.
        assert_eq!(
            signature("k", 1, b"{}"),
            "t=1,v1=3dd49b2593d0f9a349e9e71c4bde3e2b862c2be4003fe9b4ba81332029310158"
        );
    }
}
