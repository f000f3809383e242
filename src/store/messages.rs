//! Outbound transactions. `messages` holds every tid still to be worked on; when a tid is
//! finished it moves to `finished` (kept for `GET /v2/messages/{tid}`, then collected).
//! A transaction's history is bounded
//! whatever strangers do with its public links (SPEC 6.3): at most
//! [`HISTORY_PER_RECIPIENT`] entries per recipient and [`HISTORY_BUDGET`] octets of JSON;
//! repeated opens and clicks are counters in the `track` tree, not history entries.

use super::log::{self, LogPage, LogQuery};
use super::{codec, Durable, OutboxEntry, Quarantine, StoreError, StoreFuture};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueState {
    /// Waiting for its sendAt.
    Scheduled,
    /// Due now.
    Ready,
    /// A transient failure; due again at `next_ms`.
    Retry,
    /// Every recipient has a final state.
    Done,
    /// Cancelled by an operator.
    Cancelled,
    /// Held by an operator: never sent until released (SPEC 14).
    Held,
}

impl QueueState {
    pub fn label(self) -> &'static str {
        match self {
            QueueState::Scheduled => "scheduled",
            QueueState::Ready => "ready",
            QueueState::Retry => "retry",
            QueueState::Done => "done",
            QueueState::Cancelled => "cancelled",
            QueueState::Held => "held",
        }
    }

    /// The state a label names (as `label` gives it).
    pub fn parse(label: &str) -> Option<QueueState> {
        [
            QueueState::Scheduled,
            QueueState::Ready,
            QueueState::Retry,
            QueueState::Done,
            QueueState::Cancelled,
            QueueState::Held,
        ]
        .into_iter()
        .find(|s| s.label() == label)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientPhase {
    Pending,
    /// The route took it (250 / MessageId): never submitted again.
    Submitted,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    pub phase: RecipientPhase,
    pub code: Option<String>,
}

/// One event in a transaction's history (what `GET /v2/messages/{tid}` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: u64,
    pub destination: String,
    pub code: String,
    pub status: String,
    pub description: String,
    pub additional_info: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub mimetype: String,
    pub name: String,
    pub media_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactPolicy {
    pub group: String,
    pub check_consent: bool,
    pub apply_frequency_cap: bool,
}

/// A queued outbound email (one tid).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub tid: String,
    pub request_id: String,
    pub service_id: String,
    pub asset_id: String,
    pub from: String,
    pub from_name: Option<String>,
    pub reply_to: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub recipients: Vec<RecipientState>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Bits of `types::Receipts`.
    pub receipts: crate::model::types::Receipts,
    pub correlation_id: Option<String>,
    pub callback_data: String,
    pub notify_url: Option<String>,
    pub send_at_ms: u64,
    pub expire_at_ms: u64,
    pub track_clicks: bool,
    pub track_opens: bool,
    pub list_unsubscribe_url: Option<String>,
    pub unsubscribe_email: Option<String>,
    pub unsubscribe_subject: Option<String>,
    /// `contactPolicy`: the group, and whether consent and the frequency cap apply.
    #[serde(default)]
    pub contact_policy: Option<ContactPolicy>,
    pub state: QueueState,
    pub attempts: u32,
    pub next_ms: u64,
    pub created_ms: u64,
    pub last_error: String,
    pub history: Vec<HistoryEntry>,
    /// The route's ids for this message (SES MessageIds), which its events refer to.
    #[serde(default)]
    pub route_ids: Vec<String>,
}

impl MessageRecord {
    /// An empty record (no recipients, state `Ready`), for tests and benchmarks to fill.
    pub fn blank(tid: &str) -> MessageRecord {
        MessageRecord {
            tid: tid.into(),
            request_id: String::new(),
            service_id: String::new(),
            asset_id: String::new(),
            from: String::new(),
            from_name: None,
            reply_to: None,
            to: Vec::new(),
            cc: Vec::new(),
            recipients: Vec::new(),
            subject: String::new(),
            text: None,
            html: None,
            attachments: Vec::new(),
            receipts: crate::model::types::Receipts::none(),
            correlation_id: None,
            callback_data: String::new(),
            notify_url: None,
            send_at_ms: 0,
            expire_at_ms: u64::MAX,
            track_clicks: false,
            track_opens: false,
            list_unsubscribe_url: None,
            unsubscribe_email: None,
            unsubscribe_subject: None,
            contact_policy: None,
            state: QueueState::Ready,
            attempts: 0,
            next_ms: 0,
            created_ms: 0,
            last_error: String::new(),
            history: Vec::new(),
            route_ids: Vec::new(),
        }
    }

    pub fn pending(&self) -> impl Iterator<Item = &RecipientState> {
        self.recipients
            .iter()
            .filter(|r| r.phase == RecipientPhase::Pending)
    }

    /// Whether the history is within its bounds already (the common case: no copy needed).
    pub fn history_bounded(&self) -> bool {
        history_bounded(&self.history)
    }

    /// Brings the history within its bounds (see [`bound_history`]).
    pub fn bound_history(&mut self) {
        bound_history(&mut self.history)
    }
}

/// Whether `history` is within its bounds already.
pub fn history_bounded(history: &[HistoryEntry]) -> bool {
    let mut size = 0;
    let mut per: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for h in history {
        let n = per.entry(h.destination.as_str()).or_default();
        *n += 1;
        if *n > HISTORY_PER_RECIPIENT
            || h.description.len() > HISTORY_FIELD_MAX
            || h.additional_info.len() > HISTORY_FIELD_MAX
        {
            return false;
        }
        size += h.json_cost();
    }
    size <= HISTORY_BUDGET
}

/// Brings `history` within its bounds: long texts are cut, then the oldest opens and
/// clicks go first, then the oldest entries other than each recipient's first (its
/// acceptance), until every recipient has at most [`HISTORY_PER_RECIPIENT`] entries and
/// the whole fits [`HISTORY_BUDGET`].
pub fn bound_history(history: &mut Vec<HistoryEntry>) {
    for h in history.iter_mut() {
        cut_in_place(&mut h.description, HISTORY_FIELD_MAX);
        cut_in_place(&mut h.additional_info, HISTORY_FIELD_MAX);
    }
    let mut per: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for h in history.iter() {
        *per.entry(h.destination.clone()).or_default() += 1;
    }
    for (dest, n) in per {
        for _ in HISTORY_PER_RECIPIENT..n {
            match evict_index(history, Some(&dest)) {
                Some(i) => {
                    history.remove(i);
                }
                None => break,
            }
        }
    }
    let mut size: usize = history.iter().map(HistoryEntry::json_cost).sum();
    while size > HISTORY_BUDGET {
        match evict_index(history, None) {
            Some(i) => size -= history.remove(i).json_cost(),
            None => break,
        }
    }
}

/// The entry to drop next: the oldest open or click (of `dest`, if given), else the
/// oldest entry that is not the first of its recipient.
fn evict_index(history: &[HistoryEntry], dest: Option<&str>) -> Option<usize> {
    let mine = |h: &HistoryEntry| dest.is_none_or(|d| h.destination == d);
    if let Some(i) = history
        .iter()
        .position(|h| mine(h) && matches!(h.code.as_str(), "7502" | "7528"))
    {
        return Some(i);
    }
    let mut seen = std::collections::HashSet::new();
    history
        .iter()
        .enumerate()
        .find(|(_, h)| !seen.insert(h.destination.as_str()) && mine(h))
        .map(|(i, _)| i)
}

/// At most this many history entries per recipient (SPEC 6.3).
pub const HISTORY_PER_RECIPIENT: usize = 50;
/// Description and additionalInfo in the history are cut to this many octets.
pub const HISTORY_FIELD_MAX: usize = 512;
/// The history's JSON stays under this, so `GET /v2/messages/{tid}` stays under 64 KB.
pub const HISTORY_BUDGET: usize = 48 * 1024;

impl HistoryEntry {
    /// An upper bound on the entry's size in the API's JSON (field names, timestamp and
    /// escaping included).
    fn json_cost(&self) -> usize {
        140 + json_len(&self.destination)
            + json_len(&self.code)
            + json_len(&self.status)
            + json_len(&self.description)
            + json_len(&self.additional_info)
    }
}

/// The length of `s` as a JSON string body (escapes included).
fn json_len(s: &str) -> usize {
    s.chars()
        .map(|c| match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum()
}

/// `s` cut to at most `max` octets, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn cut_in_place(s: &mut String, max: usize) {
    let n = cut(s, max).len();
    s.truncate(n);
}

/// What one open or click did to its counter (see [`Messages::track_hit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The first hit of this kind for this recipient: worth a history entry.
    pub first: bool,
    /// This hit opened a new window (the first one included): worth a notification when
    /// notifications of its kind are windowed.
    pub new_window: bool,
    pub count: u64,
}

/// `tid NUL recipient NUL sha256(kind)`: clicked URLs can be long, keys stay short, and
/// a transaction's counters share its prefix (collected with it).
fn track_key(tid: &str, recipient: &str, key: &str) -> Vec<u8> {
    use sha2::Digest;
    let mut k = format!("{tid}\0{}\0", recipient.to_ascii_lowercase()).into_bytes();
    k.extend_from_slice(hex::encode(sha2::Sha256::digest(key.as_bytes())).as_bytes());
    k
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HitCount {
    first_ms: u64,
    window_ms: u64,
    count: u64,
}

/// How long finished transactions stay queryable.
pub const FINISHED_RETENTION_MS: u64 = 7 * 86_400_000;

/// Held while a transaction's record is read, changed and written back (see
/// [`Messages::lock_tid`]); dropping it lets the next writer in.
pub struct TidLock<'a> {
    _guard: Box<dyn Send + Sync + 'a>,
}

impl<'a> TidLock<'a> {
    /// A lock held until `guard` drops.
    pub(super) fn new(guard: Box<dyn Send + Sync + 'a>) -> TidLock<'a> {
        TidLock { _guard: guard }
    }
}

/// Outbound transactions: every tid's record (status, recipients, history, per-request
/// data) and the open and click counters of its recipients. Shared by every node in
/// cluster mode, so `GET /v2/messages/{tid}` and feedback work on any node.
///
/// The writing methods also take the events (webhook notifications) their change produced:
/// those go to this node's outbox, durable with the record. Every implementation bounds
/// a record's history on write ([`MessageRecord::bound_history`]). Reads of records and
/// counters are futures (a query in a cluster); the queue's own scans stay synchronous:
/// they read this node's sled only.
pub trait Messages: Send + Sync {
    /// Queues transactions and their immediate notifications: the 202 may be written when
    /// the future finishes.
    fn submit<'a>(
        &'a self,
        records: &'a [MessageRecord],
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()>;

    /// Records a transaction's new state with the events it produced; a finished one
    /// leaves the active set. Durable when the future finishes.
    fn update<'a>(
        &'a self,
        record: &'a MessageRecord,
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()>;

    /// An active or finished transaction.
    fn get<'a>(&'a self, tid: &'a str) -> StoreFuture<'a, Option<MessageRecord>>;

    /// Every active transaction (for the scheduler at start): this node's queue, which
    /// stays on the node in cluster mode. Undecodable ones are quarantined, never deleted
    /// silently.
    fn active(&self) -> Result<Vec<MessageRecord>, StoreError>;

    /// Finished transactions created before `cutoff_ms` (for the garbage collector).
    fn finished_before(&self, cutoff_ms: u64) -> Result<Vec<MessageRecord>, StoreError>;

    /// Removes a finished transaction and its open and click counters.
    fn forget_finished(&self, tid: &str) -> Result<(), StoreError>;

    /// The message log (SPEC 14): transactions of the retention period matching `q`,
    /// newest first, found through an index.
    fn search<'a>(&'a self, q: &'a LogQuery) -> StoreFuture<'a, LogPage>;

    /// Counts an open or click (`key`: "open", or the clicked URL) of `tid` by
    /// `recipient`, in a small counter instead of rewriting the transaction on every hit.
    /// A window is `window_ms` long and starts at the first hit after the previous window
    /// ended. With `create` false, a missing counter is left missing (`None`): the caller
    /// has not yet checked that the recipient belongs to the tid. Not made durable here: a
    /// count lost in a crash is harmless, and a caller that emits a notification commits
    /// with it.
    #[allow(clippy::too_many_arguments)]
    fn track_hit<'a>(
        &'a self,
        tid: &'a str,
        recipient: &'a str,
        key: &'a str,
        now: u64,
        window_ms: u64,
        create: bool,
    ) -> StoreFuture<'a, Option<Hit>>;

    /// How many opens or clicks (`key`) of `tid` by `recipient` were counted.
    fn track_count<'a>(
        &'a self,
        tid: &'a str,
        recipient: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, u64>;

    /// Held while a transaction's record is read, changed and written back by feedback
    /// (SES events, DSNs, opens), so two at once do not lose each other's history. On sled
    /// an in-process lock; an implementation shared by several nodes must lock across them.
    fn lock_tid<'a>(&'a self, tid: &'a str) -> futures::future::BoxFuture<'a, TidLock<'a>>;

    /// Whether this node holds the newest copy of `tid` (always, on a node alone). In a
    /// cluster, a transaction still in another node's queue is not: what this node reads
    /// of it may be behind, and feedback about it must wait (SPEC 13).
    fn held_here(&self, _tid: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// [`Messages`] on sled: `messages` (active), `finished`, and `track` (counters, keyed
/// under their tid); events go to the `outbox` tree. Clones share their locks.
#[derive(Clone)]
pub(super) struct SledMessages {
    pub(super) db: sled::Db,
    pub(super) messages: sled::Tree,
    pub(super) finished: sled::Tree,
    pub(super) outbox: sled::Tree,
    /// Serialise read-modify-write of one transaction's record (striped by tid).
    pub(super) tid_locks: std::sync::Arc<Vec<tokio::sync::Mutex<()>>>,
    /// The message log's index (`log.rs`); `None` on a cluster node, whose log is the
    /// database's.
    pub(super) log: Option<sled::Tree>,
    pub(super) quarantine: Quarantine,
    pub(super) durable: Durable,
}

impl SledMessages {
    /// Which of `tid_locks` [`Messages::lock_tid`] takes for `tid`.
    pub(super) fn stripe(&self, tid: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        tid.hash(&mut h);
        (h.finish() as usize) % self.tid_locks.len()
    }

    /// The locks of several tids at once (what [`Messages::lock_tid`] takes for each),
    /// taken in stripe order so two callers cannot wait on each other.
    pub(super) async fn lock_tids<'a>(
        &'a self,
        tids: impl Iterator<Item = &str>,
    ) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
        let stripes: std::collections::BTreeSet<usize> = tids.map(|t| self.stripe(t)).collect();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.tid_locks[i].lock().await);
        }
        guards
    }

    /// [`Messages::submit`]'s writes, not yet committed.
    pub(super) fn write_submit(
        &self,
        records: &[MessageRecord],
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        for r in records {
            let tree = if matches!(r.state, QueueState::Done) {
                &self.finished
            } else {
                &self.messages
            };
            tree.insert(r.tid.as_bytes(), codec::encode(r))?;
            if let Some(log) = &self.log {
                for k in log::index_keys(r) {
                    log.insert(k, &[])?;
                }
            }
        }
        for e in events {
            self.outbox.insert(e.id.as_bytes(), codec::encode(e))?;
        }
        Ok(())
    }

    /// [`Messages::update`]'s writes, not yet committed.
    pub(super) fn write_update(
        &self,
        record: &MessageRecord,
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        for e in events {
            self.outbox.insert(e.id.as_bytes(), codec::encode(e))?;
        }
        let key = record.tid.as_bytes();
        // Every writer's history goes through this bound (queue attempts, feedback).
        let value = if record.history_bounded() {
            codec::encode(record)
        } else {
            let mut bounded = record.clone();
            bounded.bound_history();
            codec::encode(&bounded)
        };
        if matches!(record.state, QueueState::Done | QueueState::Cancelled) {
            self.finished.insert(key, value)?;
            self.messages.remove(key)?;
        } else {
            self.messages.insert(key, value)?;
        }
        Ok(())
    }

    /// Indexes every record when the index is empty but records exist (a store written
    /// before the message log).
    pub(super) fn index_unindexed(&self) -> sled::Result<()> {
        let Some(log) = self.log.as_ref().filter(|l| l.is_empty()) else {
            return Ok(());
        };
        let mut n = 0;
        for item in self.messages.iter().chain(self.finished.iter()) {
            let (_, v) = item?;
            if let Ok(r) = codec::decode::<MessageRecord>(&v) {
                for k in log::index_keys(&r) {
                    log.insert(k, &[])?;
                }
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(transactions = n, "message log index built");
        }
        Ok(())
    }

    /// [`Messages::search`] over `log_index`.
    fn search_now(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        let Some(log) = &self.log else {
            return Ok(LogPage::default());
        };
        let limit = q.limit.max(1);
        if let Some(tid) = &q.tid {
            let found = self.get_now(tid)?.filter(|r| q.matches(r));
            return Ok(LogPage {
                messages: found.into_iter().collect(),
                next: None,
            });
        }
        let prefix = q.prefix();
        let at = |ms: u64| [prefix.as_slice(), &ms.to_be_bytes()].concat();
        let low = at(q.since_ms.unwrap_or(0));
        let mut high = [prefix.as_slice(), &[0xff; 9]].concat();
        if let Some(u) = q.until_ms {
            high = high.min(at(u));
        }
        if let Some((ms, tid)) = &q.cursor {
            high = high.min([at(*ms).as_slice(), tid.as_bytes()].concat());
        }
        let mut page = LogPage::default();
        if low >= high {
            return Ok(page);
        }
        let (mut last, mut scanned) = (None, 0);
        for item in log.range(low..high).rev().take(log::SCAN_BUDGET) {
            let (key, _) = item?;
            scanned += 1;
            let Some(pos) = log::key_position(&prefix, &key) else {
                continue;
            };
            if let Some(r) = self.get_now(&pos.1)?.filter(|r| q.matches(r)) {
                if page.messages.len() == limit {
                    page.next = last;
                    return Ok(page);
                }
                page.messages.push(r);
            }
            last = Some(pos);
        }
        if scanned == log::SCAN_BUDGET {
            // Filters that match rarely: what was found, and where to go on from.
            page.next = last;
        }
        Ok(page)
    }

    fn get_now(&self, tid: &str) -> Result<Option<MessageRecord>, StoreError> {
        for (name, tree) in [("messages", &self.messages), ("finished", &self.finished)] {
            if let Some(v) = tree.get(tid.as_bytes())? {
                return codec::decode(&v)
                    .map(Some)
                    .map_err(|reason| StoreError::Corrupt {
                        tree: name,
                        key: tid.into(),
                        reason,
                    });
            }
        }
        Ok(None)
    }

    fn track_hit_now(
        &self,
        tid: &str,
        recipient: &str,
        key: &str,
        now: u64,
        window_ms: u64,
        create: bool,
    ) -> Result<Option<Hit>, StoreError> {
        let tree = self.db.open_tree("track")?;
        let k = track_key(tid, recipient, key);
        let (hit, value) = match tree.get(&k)? {
            Some(v) => {
                let mut c: HitCount = codec::decode(&v).unwrap_or(HitCount {
                    first_ms: now,
                    window_ms: now,
                    count: 0,
                });
                c.count += 1;
                let new_window = now >= c.window_ms.saturating_add(window_ms);
                if new_window {
                    c.window_ms = now;
                }
                let hit = Hit {
                    first: false,
                    new_window,
                    count: c.count,
                };
                (hit, c)
            }
            None if create => (
                Hit {
                    first: true,
                    new_window: true,
                    count: 1,
                },
                HitCount {
                    first_ms: now,
                    window_ms: now,
                    count: 1,
                },
            ),
            None => return Ok(None),
        };
        tree.insert(k, codec::encode(&value))?;
        Ok(Some(hit))
    }

    fn track_count_now(&self, tid: &str, recipient: &str, key: &str) -> Result<u64, StoreError> {
        let tree = self.db.open_tree("track")?;
        let k = track_key(tid, recipient, key);
        Ok(tree
            .get(&k)?
            .and_then(|v| codec::decode::<HitCount>(&v).ok())
            .map(|c| c.count)
            .unwrap_or(0))
    }
}

impl Messages for SledMessages {
    fn submit<'a>(
        &'a self,
        records: &'a [MessageRecord],
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.write_submit(records, events)?;
            self.durable.commit().await
        })
    }

    fn update<'a>(
        &'a self,
        record: &'a MessageRecord,
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.write_update(record, events)?;
            self.durable.commit().await
        })
    }

    fn get<'a>(&'a self, tid: &'a str) -> StoreFuture<'a, Option<MessageRecord>> {
        Box::pin(std::future::ready(self.get_now(tid)))
    }

    fn active(&self) -> Result<Vec<MessageRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.messages.iter() {
            let (k, v) = item?;
            match codec::decode::<MessageRecord>(&v) {
                Ok(r) => out.push(r),
                Err(reason) => {
                    self.quarantine.put("messages", &k, &v, &reason);
                    self.messages.remove(&k)?;
                }
            }
        }
        Ok(out)
    }

    fn finished_before(&self, cutoff_ms: u64) -> Result<Vec<MessageRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.finished.iter() {
            let (_, v) = item?;
            if let Ok(r) = codec::decode::<MessageRecord>(&v) {
                if r.created_ms < cutoff_ms {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn forget_finished(&self, tid: &str) -> Result<(), StoreError> {
        let track = self.db.open_tree("track")?;
        for item in track.scan_prefix(format!("{tid}\0").as_bytes()) {
            track.remove(item?.0)?;
        }
        if let (Some(log), Some(r)) = (&self.log, self.get_now(tid)?) {
            for k in log::index_keys(&r) {
                log.remove(k)?;
            }
        }
        self.finished.remove(tid.as_bytes())?;
        Ok(())
    }

    fn search<'a>(&'a self, q: &'a LogQuery) -> StoreFuture<'a, LogPage> {
        Box::pin(std::future::ready(self.search_now(q)))
    }

    fn track_hit<'a>(
        &'a self,
        tid: &'a str,
        recipient: &'a str,
        key: &'a str,
        now: u64,
        window_ms: u64,
        create: bool,
    ) -> StoreFuture<'a, Option<Hit>> {
        Box::pin(std::future::ready(
            self.track_hit_now(tid, recipient, key, now, window_ms, create),
        ))
    }

    fn track_count<'a>(
        &'a self,
        tid: &'a str,
        recipient: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, u64> {
        Box::pin(std::future::ready(
            self.track_count_now(tid, recipient, key),
        ))
    }

    fn lock_tid<'a>(&'a self, tid: &'a str) -> futures::future::BoxFuture<'a, TidLock<'a>> {
        let lock = &self.tid_locks[self.stripe(tid)];
        Box::pin(async move {
            TidLock {
                _guard: Box::new(lock.lock().await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dest: &str, code: &str, text: &str) -> HistoryEntry {
        HistoryEntry {
            at_ms: 1,
            destination: dest.into(),
            code: code.into(),
            status: "s".into(),
            description: text.into(),
            additional_info: text.into(),
        }
    }

    #[test]
    fn history_keeps_each_recipients_first_entry_and_drops_opens_and_clicks_first() {
        let mut h = vec![entry("a@x", "7501", "submitted"), entry("b@x", "7501", "")];
        for i in 0..60 {
            h.push(entry("a@x", if i % 2 == 0 { "7502" } else { "7520" }, "t"));
        }
        assert!(!history_bounded(&h));
        bound_history(&mut h);
        assert!(history_bounded(&h));
        let a: Vec<&HistoryEntry> = h.iter().filter(|e| e.destination == "a@x").collect();
        assert_eq!(a.len(), HISTORY_PER_RECIPIENT);
        assert_eq!(a[0].code, "7501", "the first entry stays");
        assert_eq!(a.iter().filter(|e| e.code == "7520").count(), 30);
        assert_eq!(h.iter().filter(|e| e.destination == "b@x").count(), 1);
    }

    #[test]
    fn history_texts_are_cut_on_char_boundaries_and_the_whole_fits_the_budget() {
        let long = "é".repeat(2000);
        let mut h: Vec<HistoryEntry> = (0..40)
            .map(|i| entry(&format!("r{i}@x"), "7528", &long))
            .collect();
        bound_history(&mut h);
        assert!(h.iter().all(|e| e.description.len() <= HISTORY_FIELD_MAX
            && e.additional_info.len() <= HISTORY_FIELD_MAX));
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.len() <= HISTORY_BUDGET, "{}", json.len());
        assert!(history_bounded(&h));
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("abc", 5), "abc");
    }
}
