//! The outbound queue scheduler (Postfix's qmgr): one task keeps a due-time heap of tids
//! (the transactions themselves stay in sled), runs at most `queue.concurrency` at once,
//! and for each: expiry, build + sign, route, then one durable update with the events it
//! produced. A restart reloads every active tid. A recipient the route took is marked
//! `Submitted` in the same update that records 7501, so it is never submitted again.
//! Nothing is handed to a route while [`crate::model::health::Health`] refuses work or an earlier
//! outcome is still unrecorded: an outcome whose update failed stays in memory (saved to
//! `data_dir/queue-unrecorded.json` if the daemon must restart) and is recorded first.

pub mod control;
pub mod notify;

use crate::config::{Config, RouteConfig, RouteKind, SharedConfig};
use crate::metrics::RouteResult;
use crate::model::backoff::Backoff;
use crate::model::time::now_ms;
use crate::model::tokens::Signer;
use crate::model::types::DeliveryCode;
use crate::outbound::compose::{self, BuildError};
use crate::outbound::dkim::Keys;
use crate::outbound::route::{Envelope, RcptOutcome, Route, Sent};
use crate::store::messages::{MessageRecord, QueueState, RecipientPhase};
use crate::store::StoreError;
use crate::store::{OutboxEntry, Store};
use crate::webhooks::Outbox;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

/// Wakes the scheduler for new or retried tids.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<(u64, String)>,
}

impl Queue {
    pub fn channel() -> (Queue, mpsc::UnboundedReceiver<(u64, String)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Queue { tx }, rx)
    }

    pub fn schedule(&self, due_ms: u64, tid: String) {
        let _ = self.tx.send((due_ms, tid));
    }
}

/// The queue's backoff after deferrals: from `queue.retry_base` seconds, doubling, at
/// most an hour (before jitter).
pub fn backoff(retry_base_secs: u64) -> Backoff {
    Backoff {
        base: Duration::from_secs(retry_base_secs),
        cap: Duration::from_secs(3600),
    }
}

pub struct QueueWorker {
    pub store: Store,
    pub config: SharedConfig,
    pub outbox: Outbox,
    pub queue: Queue,
    pub keys: Arc<Keys>,
    pub signer: Signer,
    pub fetcher: reqwest::Client,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// OAuth2 grants of smarthost routes.
    pub oauth: Arc<crate::outbound::oauth::OAuth>,
    /// Routes by asset with the settings they were made from, kept so their connections
    /// are reused; a reload that changes an asset's route replaces it.
    pub routes: Mutex<HashMap<String, (RouteConfig, Arc<Route>)>>,
    /// Attempts the route answered whose update did not commit, by tid.
    pub unrecorded: Unrecorded,
    /// Tids being processed: the heap may hold a tid twice (a recheck and a retry), and
    /// two concurrent attempts at one tid would send it twice.
    pub in_flight: Mutex<std::collections::HashSet<String>>,
}

/// Removes a tid from `in_flight` when its attempt ends, however it ends.
struct InFlight<'a>(&'a Mutex<std::collections::HashSet<String>>, String);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

/// Outcomes of route calls not yet durable: (record after the attempt, its events, the
/// queue-state metric slot it came from). Recorded before any other send.
#[derive(Default)]
pub struct Unrecorded {
    map: Mutex<HashMap<String, KeptOutcome>>,
    /// One recorder at a time, so an outcome's events are scheduled once.
    recording: tokio::sync::Mutex<()>,
}

/// The record after an attempt, its events, and the metric slot it came from.
type KeptOutcome = (MessageRecord, Vec<OutboxEntry>, Option<usize>);

/// Where unrecorded outcomes are saved when the daemon exits to recover its store.
const UNRECORDED_FILE: &str = "queue-unrecorded.json";
/// When a tid refused by health or blocked by unrecorded outcomes is looked at again.
const RECHECK_MS: u64 = 2000;

impl QueueWorker {
    fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// The route of an asset (kept, so its connections are reused).
    pub fn route(&self, config: &Config, asset_id: &str) -> Option<Arc<Route>> {
        let settings = config.asset(asset_id)?.route.as_ref()?;
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        match routes.get(asset_id) {
            Some((made_from, route)) if made_from == settings => Some(route.clone()),
            _ => {
                let route =
                    Route::for_asset(settings, &config.server.hostname, &self.oauth, asset_id);
                routes.insert(asset_id.to_string(), (settings.clone(), route.clone()));
                Some(route)
            }
        }
    }

    pub async fn run(
        self: Arc<Self>,
        rx: mpsc::UnboundedReceiver<(u64, String)>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.apply_saved(&self.config().server.data_dir).await;
        let mut due: BinaryHeap<Reverse<(u64, String)>> = BinaryHeap::new();
        match self.store.messages().active() {
            Ok(all) => {
                tracing::info!(active = all.len(), "outbound queue loaded");
                for m in &all {
                    self.metrics
                        .queue_move(None, crate::metrics::queue_slot(m.state));
                }
                due.extend(all.into_iter().map(|m| Reverse((m.next_ms, m.tid))));
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbound queue"),
        }
        let concurrency = self.config().queue.concurrency;
        // Route calls in flight finish before the store is closed.
        crate::schedule::run(
            due,
            rx,
            shutdown,
            concurrency,
            Duration::from_secs(60),
            |tid| {
                let me = self.clone();
                let span = tracing::info_span!("tid", tid = %tid);
                async move { me.process(&tid).await }.instrument(span)
            },
        )
        .await;
    }

    /// Records the outcomes kept in memory; true when none is left.
    async fn record_unrecorded(&self) -> bool {
        let _one = self.unrecorded.recording.lock().await;
        let pending: Vec<_> = {
            let map = self
                .unrecorded
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map.is_empty() {
                return true;
            }
            map.values().cloned().collect()
        };
        for (record, events, was) in pending {
            if let Err(e) = self.store.messages().update(&record, &events).await {
                tracing::warn!(tid = %record.tid, error = %e, "outcome still not recorded; sending nothing until it is");
                return false;
            }
            tracing::info!(tid = %record.tid, "outcome kept in memory now recorded");
            self.unrecorded
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&record.tid);
            self.recorded(&record, events, was);
        }
        true
    }

    /// After an attempt's update committed: metrics, its events, the next attempt.
    fn recorded(&self, record: &MessageRecord, events: Vec<OutboxEntry>, was: Option<usize>) {
        self.metrics
            .queue_move(was, crate::metrics::queue_slot(record.state));
        self.outbox.schedule(events);
        if record.state == QueueState::Retry {
            self.queue.schedule(record.next_ms, record.tid.clone());
        }
    }

    /// Saves the outcomes still in memory to `data_dir` (written, fsynced, renamed) before
    /// the daemon exits to recover its store; [`QueueWorker::apply_saved`] records them at
    /// the next start. Returns how many were saved.
    pub fn save_unrecorded(&self, data_dir: &std::path::Path) -> usize {
        let items: Vec<(MessageRecord, Vec<OutboxEntry>)> = {
            let map = self
                .unrecorded
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            map.values()
                .map(|(r, e, _)| (r.clone(), e.clone()))
                .collect()
        };
        if items.is_empty() {
            return 0;
        }
        let path = data_dir.join(UNRECORDED_FILE);
        let tmp = data_dir.join(format!("{UNRECORDED_FILE}.tmp"));
        let written = serde_json::to_vec(&items)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(data_dir)?.sync_all()
            });
        match written {
            Ok(()) => items.len(),
            Err(e) => {
                // Then a restart sends these again: at-least-once, as after a crash.
                tracing::error!(error = %e, path = %path.display(), "cannot save unrecorded outcomes");
                0
            }
        }
    }

    /// Records outcomes a previous run saved before exiting (see `save_unrecorded`).
    async fn apply_saved(&self, data_dir: &std::path::Path) {
        let path = data_dir.join(UNRECORDED_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "cannot read saved outcomes");
                return;
            }
        };
        let items: Vec<(MessageRecord, Vec<OutboxEntry>)> = match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "saved outcomes do not decode; kept aside");
                let _ = std::fs::rename(&path, path.with_extension("json.bad"));
                return;
            }
        };
        for (record, events) in &items {
            if let Err(e) = self.store.messages().update(record, events).await {
                tracing::error!(error = %e, "cannot record saved outcomes; file kept for the next start");
                return;
            }
            self.outbox.schedule(events.clone());
        }
        tracing::info!(
            count = items.len(),
            "outcomes saved before a restart recorded"
        );
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, "cannot remove the saved outcomes file");
        }
    }

    /// One attempt at one transaction: expiry or a send, then one durable update.
    async fn process(&self, tid: &str) {
        let Some(_in_flight) = self.claim(tid) else {
            // The attempt in progress reschedules it if it needs another.
            return;
        };
        if !self.may_send(tid).await {
            self.queue.schedule(now_ms() + RECHECK_MS, tid.to_string());
            return;
        }
        let Some(mut record) = self.due_record(tid).await else {
            return;
        };
        let config = self.config();
        let was = crate::metrics::queue_slot(record.state);
        let mut events = Vec::new();
        let handed = self.advance(&config, &mut record, &mut events).await;
        let quiet = record.last_error.contains(crate::outbound::oauth::AWAITING);
        schedule_next(&config, &mut record, quiet);
        self.record_attempt(record, events, was, handed).await;
    }

    /// Marks `tid` in flight until the guard drops; `None` when an attempt at it is
    /// already running.
    fn claim(&self, tid: &str) -> Option<InFlight<'_>> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tid.to_string())
            .then(|| InFlight(&self.in_flight, tid.to_string()))
    }

    /// Whether anything may be handed to a route now: a send whose outcome could not be
    /// recorded is not attempted, and an outcome already in memory is recorded before
    /// anything else is sent.
    async fn may_send(&self, tid: &str) -> bool {
        if !self.record_unrecorded().await {
            return false;
        }
        if let Err(why) = self.store.health().check_shared() {
            tracing::debug!(tid, reason = %why, "queue paused");
            return false;
        }
        true
    }

    /// The transaction, when it is still active and due; one scheduled before its time
    /// is put back for it.
    async fn due_record(&self, tid: &str) -> Option<MessageRecord> {
        let record = match self.store.messages().get(tid).await {
            Ok(Some(r))
                if matches!(
                    r.state,
                    QueueState::Scheduled | QueueState::Ready | QueueState::Retry
                ) =>
            {
                r
            }
            Ok(_) => return None,
            Err(e) => {
                tracing::error!(tid, error = %e, "queue entry unreadable");
                return None;
            }
        };
        if record.next_ms > now_ms() {
            // Scheduled twice (e.g. a retry raced a restart): wait for its time.
            self.queue.schedule(record.next_ms, record.tid.clone());
            return None;
        }
        Some(record)
    }

    /// Expires the transaction (7590), or ends the recipients policy refuses and hands
    /// the rest to the route; true when the route was called.
    async fn advance(
        &self,
        config: &Config,
        record: &mut MessageRecord,
        events: &mut Vec<OutboxEntry>,
    ) -> bool {
        if now_ms() >= record.expire_at_ms {
            let last = record.last_error.clone();
            self.fail_pending(
                config,
                record,
                DeliveryCode::Expired,
                "Expired before it could be submitted",
                &last,
                events,
            );
            return false;
        }
        if !self.drop_refused(config, record, events).await {
            return false;
        }
        record.pending().next().is_some() && self.attempt(config, record, events).await
    }

    /// Makes the attempt durable with its events. A route answer that cannot be recorded
    /// is kept in memory (nothing is sent until it is); an attempt that reached no route
    /// is simply tried again.
    async fn record_attempt(
        &self,
        record: MessageRecord,
        events: Vec<OutboxEntry>,
        was: Option<usize>,
        handed: bool,
    ) {
        let tid = record.tid.clone();
        match self.store.messages().update(&record, &events).await {
            Ok(()) => self.recorded(&record, events, was),
            Err(e) if handed => {
                tracing::error!(tid, error = %e, "cannot record the route's answer; kept in memory, nothing is sent until it is recorded");
                self.unrecorded
                    .map
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(tid.clone(), (record, events, was));
                self.queue.schedule(now_ms() + RECHECK_MS, tid);
            }
            Err(e) => {
                tracing::error!(tid, error = %e, "cannot record the attempt; it will be retried");
                self.queue.schedule(now_ms() + 5000, tid);
            }
        }
    }

    /// Builds and hands the message to the route; true when the route was called.
    async fn attempt(
        &self,
        config: &Config,
        record: &mut MessageRecord,
        events: &mut Vec<OutboxEntry>,
    ) -> bool {
        let Some(message) = self.build(config, record, events).await else {
            return false;
        };
        let Some(route) = self.ready_route(config, record) else {
            return false;
        };
        let rcpts: Vec<String> = record.pending().map(|r| r.address.clone()).collect();
        let sent = self.send(config, &route, record, &rcpts, &message).await;
        self.keep_route_ids(record, &sent.message_ids);
        self.apply_outcomes(config, route.kind(), record, &rcpts, sent.outcomes, events)
            .await;
        true
    }

    /// The signed message, or `None` after ending the pending recipients (7591: it can
    /// never be built) or noting why it waits (its DKIM key is unavailable).
    async fn build(
        &self,
        config: &Config,
        record: &mut MessageRecord,
        events: &mut Vec<OutboxEntry>,
    ) -> Option<Vec<u8>> {
        let built = compose::build(
            record,
            config,
            &self.fetcher,
            &self.keys,
            &self.signer,
            &config.server.data_dir,
        )
        .await;
        match built {
            Ok(message) => Some(message),
            Err(
                e @ (BuildError::Attachment { .. } | BuildError::TooLarge(_) | BuildError::Html(_)),
            ) => {
                self.fail_pending(
                    config,
                    record,
                    DeliveryCode::BuildFailed,
                    &e.to_string(),
                    "",
                    events,
                );
                None
            }
            Err(e @ BuildError::Dkim(_)) => {
                record.last_error = e.to_string();
                None
            }
        }
    }

    /// The asset's route, when it has one and the store can record its answer now.
    fn ready_route(&self, config: &Config, record: &mut MessageRecord) -> Option<Arc<Route>> {
        let Some(route) = self.route(config, &record.asset_id) else {
            record.last_error = format!("asset {} has no route", record.asset_id);
            return None;
        };
        // Building can take a while (attachments): look again just before the send.
        if self.store.health().check_shared().is_err() {
            record.last_error = "the store cannot record an outcome right now".into();
            return None;
        }
        // Waits for an authorization without asking the provider again (SPEC 15); made
        // due again when one arrives (`wake_asset`).
        if let Some(need) = route.needs_authorization() {
            record.last_error = format!("{}{need}", crate::outbound::oauth::AWAITING);
            return None;
        }
        Some(route)
    }

    /// One route call for `rcpts` from the transaction's signed VERP return path, timed.
    async fn send(
        &self,
        config: &Config,
        route: &Route,
        record: &MessageRecord,
        rcpts: &[String],
        message: &[u8],
    ) -> Sent {
        let return_path =
            crate::model::links::verp(&self.signer, &record.tid, &config.server.bounce_domain);
        let envelope = Envelope {
            return_path: &return_path,
            from: &record.from,
        };
        let started = std::time::Instant::now();
        let sent = route.send(&envelope, rcpts, message).await;
        let elapsed = started.elapsed();
        self.metrics.route_latency(route.kind(), elapsed);
        tracing::debug!(
            elapsed_ms = elapsed.as_millis() as u64,
            message_ids = ?sent.message_ids,
            "route call"
        );
        sent
    }

    /// Maps the provider's message ids to the transaction, so its later events find it.
    fn keep_route_ids(&self, record: &mut MessageRecord, ids: &[String]) {
        for id in ids {
            // Written before the update that records 7501 commits both: an SES event
            // arriving right after the answer finds its transaction.
            if let Err(e) = self.store.routes().map_route_id(id, &record.tid) {
                tracing::error!(error = %e, message_id = %id, "route message id not recorded; its events will be ignored");
            }
            record.route_ids.push(id.clone());
        }
    }

    /// The route's answer per recipient: a final outcome ends the recipient with its
    /// code and notification, a deferral keeps it pending with the reason.
    async fn apply_outcomes(
        &self,
        config: &Config,
        route: RouteKind,
        record: &mut MessageRecord,
        rcpts: &[String],
        outcomes: Vec<RcptOutcome>,
        events: &mut Vec<OutboxEntry>,
    ) {
        let now = now_ms();
        for (addr, outcome) in rcpts.iter().zip(outcomes) {
            let Some(slot) = record.recipients.iter().position(|r| &r.address == addr) else {
                continue;
            };
            let ending = match outcome {
                RcptOutcome::Submitted => Ending::submitted(),
                RcptOutcome::Bounced(reply) => Ending::bounced(&reply),
                RcptOutcome::Refused(reply) => Ending::refused(reply),
                RcptOutcome::Deferred(reason) => {
                    record.last_error = reason;
                    continue;
                }
            };
            if ending.phase == RecipientPhase::Submitted {
                self.count_send(config, record, addr, now).await;
            }
            self.metrics.outbound(route, ending.result);
            record.recipients[slot].phase = ending.phase;
            record.recipients[slot].code = Some(ending.code.code().to_string());
            tracing::info!(tid = %record.tid, rcpt = %addr, code = ending.code.code(), "{}", ending.description);
            events.extend(notify::notify(
                config,
                record,
                addr,
                ending.code,
                &ending.description,
                &ending.additional,
                now,
            ));
        }
    }

    /// Counts a submitted send against the frequency cap of the request's contact
    /// policy, when it applies one.
    async fn count_send(&self, config: &Config, record: &MessageRecord, addr: &str, now: u64) {
        let Some(cp) = record
            .contact_policy
            .as_ref()
            .filter(|c| c.apply_frequency_cap)
        else {
            return;
        };
        let window = config
            .contact_policy(&cp.group)
            .map(|g| g.window)
            .unwrap_or(86_400);
        if let Err(e) = self
            .store
            .policy()
            .record_send(&cp.group, addr, now, now.saturating_sub(window * 1000))
            .await
        {
            tracing::warn!(error = %e, "frequency counter not updated");
        }
    }

    /// Ends the pending recipients that policy refuses: sandbox (7522), contact policy
    /// (7593/7594), suppression (7240/7241). False when the store could not answer for one
    /// of them: the attempt is then deferred whole, never sent on a guess (one rule for
    /// consent, frequency caps and suppressions).
    async fn drop_refused(
        &self,
        config: &Config,
        record: &mut MessageRecord,
        events: &mut Vec<OutboxEntry>,
    ) -> bool {
        let now = now_ms();
        let pending: Vec<String> = record.pending().map(|r| r.address.clone()).collect();
        for addr in pending {
            match self.refusal(config, record, &addr, now).await {
                Ok(Some((code, description))) => {
                    end_recipient(config, record, &addr, code, &description, "", now, events)
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(tid = %record.tid, error = %e, "policy lookup failed; deferring rather than risk a complaint");
                    record.last_error = e.to_string();
                    return false;
                }
            }
        }
        true
    }

    /// Why `addr` may not be mailed, if it may not.
    async fn refusal(
        &self,
        config: &Config,
        record: &MessageRecord,
        addr: &str,
        now: u64,
    ) -> Result<Option<(DeliveryCode, String)>, StoreError> {
        let with_default =
            |code: DeliveryCode| Some((code, code.default_description().to_string()));
        let sandboxed = config
            .asset(&record.asset_id)
            .filter(|a| a.sandbox)
            .is_some_and(|a| {
                !a.verified_recipients
                    .iter()
                    .any(|v| v.eq_ignore_ascii_case(addr))
            });
        if sandboxed {
            return Ok(with_default(DeliveryCode::NotVerified));
        }
        if let Some(code) = self
            .contact_policy_refusal(config, record, addr, now)
            .await?
        {
            return Ok(with_default(code));
        }
        Ok(self
            .store
            .suppressions()
            .get(&record.asset_id, addr, now)
            .await?
            .map(|entry| {
                self.metrics.suppression_hit(entry.reason);
                crate::outbound::suppression::refusal(&entry, addr)
            }))
    }

    /// 7593 without consent, 7594 over the frequency cap, for a request with a contact policy.
    async fn contact_policy_refusal(
        &self,
        config: &Config,
        record: &MessageRecord,
        addr: &str,
        now: u64,
    ) -> Result<Option<DeliveryCode>, StoreError> {
        let Some(cp) = record.contact_policy.as_ref() else {
            return Ok(None);
        };
        let Some(group) = config.contact_policy(&cp.group) else {
            return Ok(None);
        };
        if cp.check_consent && !self.store.policy().has_consent(&cp.group, addr).await? {
            return Ok(Some(DeliveryCode::NoConsent));
        }
        if cp.apply_frequency_cap && group.frequency_cap > 0 {
            let since = now.saturating_sub(group.window * 1000);
            if self
                .store
                .policy()
                .sends_since(&cp.group, addr, since)
                .await?
                >= group.frequency_cap as usize
            {
                return Ok(Some(DeliveryCode::FrequencyCap));
            }
        }
        Ok(None)
    }

    fn fail_pending(
        &self,
        config: &Config,
        record: &mut MessageRecord,
        code: DeliveryCode,
        description: &str,
        additional: &str,
        events: &mut Vec<OutboxEntry>,
    ) {
        let now = now_ms();
        let pending: Vec<String> = record.pending().map(|r| r.address.clone()).collect();
        for addr in pending {
            end_recipient(
                config,
                record,
                &addr,
                code,
                description,
                additional,
                now,
                events,
            );
        }
    }
}

/// Gives a pending recipient its final code and queues the notification.
#[allow(clippy::too_many_arguments)]
fn end_recipient(
    config: &Config,
    record: &mut MessageRecord,
    addr: &str,
    code: DeliveryCode,
    description: &str,
    additional: &str,
    now: u64,
    events: &mut Vec<OutboxEntry>,
) {
    if let Some(r) = record.recipients.iter_mut().find(|r| r.address == addr) {
        r.phase = RecipientPhase::Failed;
        r.code = Some(code.code().to_string());
    }
    tracing::info!(tid = %record.tid, rcpt = %addr, code = code.code(), "{description}");
    events.extend(notify::notify(
        config,
        record,
        addr,
        code,
        description,
        additional,
        now,
    ));
}

/// After an attempt: done when no recipient is pending, else a retry after the queue's
/// backoff (never later than the expiry, which then ends it).
/// A `quiet` deferral (the route waits for an authorization, which `oauth` logs once a
/// minute) is logged at debug level, not once per message.
fn schedule_next(config: &Config, record: &mut MessageRecord, quiet: bool) {
    let pending = record.pending().count();
    if pending == 0 {
        record.state = QueueState::Done;
        return;
    }
    record.attempts += 1;
    let delay = backoff(config.queue.retry_base).delay(record.attempts, rand::random());
    record.next_ms = (now_ms() + delay.as_millis() as u64).min(record.expire_at_ms);
    record.state = QueueState::Retry;
    let retry_in_ms = record.next_ms.saturating_sub(now_ms());
    if !quiet {
        tracing::info!(tid = %record.tid, pending, retry_in_ms, reason = %record.last_error, "deferred");
    } else {
        tracing::debug!(tid = %record.tid, pending, retry_in_ms, reason = %record.last_error, "deferred");
    }
}

/// What a final route outcome records for its recipient.
struct Ending {
    phase: RecipientPhase,
    code: DeliveryCode,
    description: String,
    additional: String,
    /// The `result` label of the outbound metric.
    result: RouteResult,
}

impl Ending {
    /// 7501: the route took it.
    fn submitted() -> Ending {
        Ending {
            phase: RecipientPhase::Submitted,
            code: DeliveryCode::Submitted,
            description: "Submitted".to_string(),
            additional: String::new(),
            result: RouteResult::Submitted,
        }
    }

    /// 7520: refused at RCPT; the description and `status|failed|smtp; reply` come from
    /// the reply.
    fn bounced(reply: &str) -> Ending {
        let status = notify::enhanced_status(reply).unwrap_or("5.0.0");
        Ending {
            phase: RecipientPhase::Failed,
            code: DeliveryCode::Bounce,
            description: notify::bounce_description(reply).to_string(),
            additional: format!("{status}|failed|smtp; {reply}"),
            result: RouteResult::Bounced,
        }
    }

    /// 7592: the route refused the message.
    fn refused(reply: String) -> Ending {
        Ending {
            phase: RecipientPhase::Failed,
            code: DeliveryCode::RouteRefused,
            description: "Refused by the route".to_string(),
            additional: reply,
            result: RouteResult::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let retry_delay = |base, attempts, jitter| backoff(base).delay(attempts, jitter);
        assert!(retry_delay(30, 1, 0.0) >= Duration::from_secs(15));
        assert!(retry_delay(30, 1, 1.0) <= Duration::from_secs(30));
        assert!(retry_delay(30, 3, 0.0) >= Duration::from_secs(60));
        assert!(retry_delay(30, 40, 1.0) <= Duration::from_secs(3600));
    }
}
