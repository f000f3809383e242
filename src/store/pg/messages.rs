//! Transactions in cluster mode (SPEC 13): [`Messages`] and [`RouteState`] over this
//! node's sled and the shared `transactions` table.
//!
//! Who holds a transaction's record:
//! - While it is in the queue, the node that accepted it (its owner) does, in its sled;
//!   every write there also marks the tid in the `mirror` tree in the same commit, and
//!   the mirror task copies the record to the database as soon as it answers. A node
//!   that cannot reach the database loses nothing: the marks wait in its sled.
//! - Once finished and mirrored, the database does: the local copy is dropped, and later
//!   writes (feedback arriving at any node) go to the database under a lock held across
//!   nodes. Feedback for a transaction still in another node's queue is refused with a
//!   database error, which every feedback path retries, so it is applied once that node
//!   has finished and mirrored it rather than overwritten by its next attempt.

use super::{from_ms, ms, Pg};
use crate::store::log::{LogPage, LogQuery};
use crate::store::messages::{Hit, MessageRecord, Messages, QueueState, SledMessages, TidLock};
use crate::store::routes::{RouteState, SledRouteState, SnsClaim};
use crate::store::{codec, OutboxEntry, StoreError, StoreFuture};
use std::sync::Arc;
use std::time::Duration;

const GET: &str = "SELECT record FROM transactions WHERE tid = $1";
/// A write of feedback to a finished transaction the database holds (under the tid's
/// lock across nodes).
const UPSERT: &str = "INSERT INTO transactions
        (tid, owner, state, finished, created_ms, updated_ms, record,
         sender, asset, correlation_id, recipients)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, string_to_array($11, E'\\n'))
    ON CONFLICT (tid) DO UPDATE SET state = excluded.state, finished = excluded.finished,
        updated_ms = excluded.updated_ms, record = excluded.record";
/// Many transactions in one statement (`$1`..`$11`: arrays, but `$2` the owner and `$6`
/// the time), without its conflict clause.
macro_rules! insert_many {
    () => {
        "INSERT INTO transactions
        (tid, owner, state, finished, created_ms, updated_ms, record,
         sender, asset, correlation_id, recipients)
    SELECT tid, $2::text, state, finished, created_ms, $6::bigint, record,
        sender, asset, correlation_id, string_to_array(recipients, E'\\n')
    FROM unnest($1::text[], $3::text[], $4::bool[], $5::bigint[], $7::bytea[],
            $8::text[], $9::text[], $10::text[], $11::text[])
        AS r (tid, state, finished, created_ms, record,
            sender, asset, correlation_id, recipients)
    "
    };
}

/// The owner's mirror copies, many rows in one statement: never over a finished row, which
/// the database holds from the owner's first finished copy on (feedback from any node may
/// have been added to it since; a later copy of the owner's is that same copy again,
/// after a crash).
const MIRROR_UPSERT: &str = concat!(
    insert_many!(),
    "ON CONFLICT (tid) DO UPDATE SET state = excluded.state, finished = excluded.finished,
        updated_ms = excluded.updated_ms, record = excluded.record
    WHERE NOT transactions.finished"
);
/// `cluster adopt`'s copies: what the database has is kept.
pub(super) const ADOPT_INSERT: &str = concat!(insert_many!(), "ON CONFLICT DO NOTHING");
pub(super) const MIRROR_ROUTE_IDS: &str = "INSERT INTO route_ids (id, tid)
    SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (id) DO NOTHING";
const ROUTE_IDS: &str = "INSERT INTO route_ids (id, tid)
    SELECT unnest($1::text[]), $2 ON CONFLICT (id) DO NOTHING";
const TID_FOR_ROUTE_ID: &str = "SELECT tid FROM route_ids WHERE id = $1";
/// Claims an SNS message: a new row, or a stale unrecorded claim taken over. No row
/// returned: someone recorded it or holds a fresh claim (`SNS_STATE` says which).
const SNS_CLAIM: &str = "INSERT INTO sns_seen (message_id, seen_ms, recorded)
    VALUES ($1, $2, false)
    ON CONFLICT (message_id) DO UPDATE SET seen_ms = excluded.seen_ms
        WHERE NOT sns_seen.recorded AND sns_seen.seen_ms < $3
    RETURNING true";
const SNS_STATE: &str = "SELECT recorded FROM sns_seen WHERE message_id = $1";
const SNS_FINISH: &str = "INSERT INTO sns_seen (message_id, seen_ms, recorded)
    VALUES ($1, $2, true)
    ON CONFLICT (message_id) DO UPDATE SET recorded = true, seen_ms = excluded.seen_ms";
const SNS_RELEASE: &str = "DELETE FROM sns_seen WHERE message_id = $1 AND NOT recorded";
/// Counts a hit on an existing counter; the second column says it opened a new window.
const TRACK_BUMP: &str = "WITH old AS (
        SELECT window_ms AS w FROM track
        WHERE tid = $1 AND recipient = $2 AND key = $3 FOR UPDATE)
    UPDATE track t SET count = t.count + 1,
        window_ms = CASE WHEN $4 >= old.w + $5 THEN $4 ELSE old.w END
    FROM old WHERE t.tid = $1 AND t.recipient = $2 AND t.key = $3
    RETURNING t.count, $4 >= old.w + $5";
const TRACK_NEW: &str = "INSERT INTO track (tid, recipient, key, window_ms, count)
    VALUES ($1, $2, $3, $4, 1) ON CONFLICT DO NOTHING RETURNING count";
const TRACK_COUNT: &str = "SELECT count FROM track WHERE tid = $1 AND recipient = $2 AND key = $3";
/// Finished transactions past retention, with their counters and route ids.
const PURGE: &str = "WITH gone AS (
        DELETE FROM transactions WHERE finished AND created_ms < $1 RETURNING tid),
    r AS (DELETE FROM route_ids WHERE tid IN (SELECT tid FROM gone)),
    t AS (DELETE FROM track WHERE tid IN (SELECT tid FROM gone))
    SELECT count(*) FROM gone";

/// How long the mirror task lets changes gather after it is woken: a transaction
/// accepted and sent within it is copied once (SPEC 13 allows 2 s).
const MIRROR_BATCH: Duration = Duration::from_millis(200);

/// Transactions copied in one statement.
const MIRROR_CHUNK: usize = 256;

fn finished(state: QueueState) -> bool {
    matches!(state, QueueState::Done | QueueState::Cancelled)
}

fn decode(tid: &str, bytes: &[u8]) -> Result<MessageRecord, StoreError> {
    codec::decode(bytes).map_err(|reason| StoreError::Corrupt {
        tree: "transactions",
        key: tid.into(),
        reason,
    })
}

/// [`Messages`] of a cluster node: its sled for its own queue, the database for the rest.
pub(in crate::store) struct ClusterMessages {
    pub(in crate::store) local: SledMessages,
    pub(in crate::store) pg: Arc<Pg>,
    /// tid -> a sequence number: the record changed here and is not yet in the database.
    pub(in crate::store) mirror: sled::Tree,
    pub(in crate::store) wake: Arc<tokio::sync::Notify>,
    /// Kept alive for the mirror task, which holds it weakly.
    pub(in crate::store) _state: Arc<MirrorState>,
}

impl ClusterMessages {
    /// Marks `tid` for the mirror task, after its record was written and before the
    /// commit that makes both durable: a mark the task sees always has its record there.
    fn mark(&self, tid: &str) -> Result<(), StoreError> {
        let seq = self.local.db.generate_id()?;
        self.mirror.insert(tid.as_bytes(), &seq.to_be_bytes())?;
        Ok(())
    }

    /// A finished transaction that lives in the database: written there, its events here.
    async fn update_shared(
        &self,
        record: &MessageRecord,
        events: &[OutboxEntry],
    ) -> Result<(), StoreError> {
        let mut bounded = record.clone();
        bounded.bound_history();
        self.pg.upsert(&bounded).await?;
        for e in events {
            self.local
                .outbox
                .insert(e.id.as_bytes(), codec::encode(e))?;
        }
        self.local.durable.commit().await
    }
}

impl Messages for ClusterMessages {
    fn submit<'a>(
        &'a self,
        records: &'a [MessageRecord],
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.local.write_submit(records, events)?;
            for r in records {
                self.mark(&r.tid)?;
            }
            self.local.durable.commit().await?;
            self.wake.notify_one();
            Ok(())
        })
    }

    fn update<'a>(
        &'a self,
        record: &'a MessageRecord,
        events: &'a [OutboxEntry],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.held_here(&record.tid)? {
                self.local.write_update(record, events)?;
                self.mark(&record.tid)?;
                self.local.durable.commit().await?;
                self.wake.notify_one();
                return Ok(());
            }
            if !finished(record.state) {
                return Err(StoreError::Database(format!(
                    "transaction {} is in another node's queue; feedback about it waits until that node has finished it",
                    record.tid
                )));
            }
            self.update_shared(record, events).await
        })
    }

    fn get<'a>(&'a self, tid: &'a str) -> StoreFuture<'a, Option<MessageRecord>> {
        Box::pin(async move {
            if self.held_here(tid)? {
                return self.local.get(tid).await;
            }
            let row = self
                .pg
                .run(|c| async move {
                    let st = c.prepare_cached(GET).await?;
                    Ok(c.query_opt(&st, &[&tid])
                        .await?
                        .map(|r| r.get::<_, Vec<u8>>(0)))
                })
                .await?;
            row.map(|bytes| decode(tid, &bytes)).transpose()
        })
    }

    fn active(&self) -> Result<Vec<MessageRecord>, StoreError> {
        self.local.active()
    }

    fn finished_before(&self, cutoff_ms: u64) -> Result<Vec<MessageRecord>, StoreError> {
        self.local.finished_before(cutoff_ms)
    }

    fn forget_finished(&self, tid: &str) -> Result<(), StoreError> {
        self.local.forget_finished(tid)
    }

    fn search<'a>(&'a self, q: &'a LogQuery) -> StoreFuture<'a, LogPage> {
        Box::pin(self.pg.search(q))
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
        Box::pin(async move {
            let (now, window) = (ms(now), ms(window_ms));
            self.pg
                .run(|c| async move {
                    let bump = c.prepare_cached(TRACK_BUMP).await?;
                    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                        [&tid, &recipient, &key, &now, &window];
                    if let Some(r) = c.query_opt(&bump, &args).await? {
                        return Ok(Some(Hit {
                            first: false,
                            new_window: r.get(1),
                            count: from_ms(r.get(0)),
                        }));
                    }
                    if !create {
                        return Ok(None);
                    }
                    let new = c.prepare_cached(TRACK_NEW).await?;
                    if c.query_opt(&new, &args[..4]).await?.is_some() {
                        return Ok(Some(Hit {
                            first: true,
                            new_window: true,
                            count: 1,
                        }));
                    }
                    // Another node created it meanwhile: count on it.
                    let r = c.query_one(&bump, &args).await?;
                    Ok(Some(Hit {
                        first: false,
                        new_window: r.get(1),
                        count: from_ms(r.get(0)),
                    }))
                })
                .await
        })
    }

    fn track_count<'a>(
        &'a self,
        tid: &'a str,
        recipient: &'a str,
        key: &'a str,
    ) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            self.pg
                .run(|c| async move {
                    let st = c.prepare_cached(TRACK_COUNT).await?;
                    let row = c.query_opt(&st, &[&tid, &recipient, &key]).await?;
                    Ok(row.map(|r| from_ms(r.get(0))).unwrap_or(0))
                })
                .await
        })
    }

    fn lock_tid<'a>(&'a self, tid: &'a str) -> futures::future::BoxFuture<'a, TidLock<'a>> {
        Box::pin(async move {
            let local = self.local.lock_tid(tid).await;
            let shared = self.pg.advisory_lock(tid).await;
            TidLock::new(Box::new((local, shared)))
        })
    }

    /// In this node's queue, or finished here and not mirrored yet.
    fn held_here(&self, tid: &str) -> Result<bool, StoreError> {
        let k = tid.as_bytes();
        Ok(self.local.messages.contains_key(k)?
            || (self.local.finished.contains_key(k)? && self.mirror.contains_key(k)?))
    }
}

impl Pg {
    /// The mirror task's copies of this node's records (and their route ids), in one
    /// statement each.
    async fn mirror_upsert(&self, copies: &[Copy]) -> Result<(), StoreError> {
        if copies.is_empty() {
            return Ok(());
        }
        let rows: Vec<(&MessageRecord, &[u8])> = copies
            .iter()
            .map(|c| (&c.record, c.bytes.as_ref()))
            .collect();
        let (owner, rows) = (self.node_id.as_str(), &rows);
        self.run(|c| async move {
            let st = c.prepare_cached(MIRROR_UPSERT).await?;
            let ids_st = c.prepare_cached(MIRROR_ROUTE_IDS).await?;
            insert_batch(&**c, (&st, &ids_st), owner, rows).await
        })
        .await
    }

    /// The message log from the `transactions` table: one statement whose WHERE names
    /// only the filters given, so each shape is planned on its own index.
    async fn search(&self, q: &LogQuery) -> Result<LogPage, StoreError> {
        use tokio_postgres::types::ToSql;
        let limit = q.limit.max(1);
        let lower = |v: &Option<String>| v.as_ref().map(|s| s.to_ascii_lowercase());
        let (recipient, sender) = (lower(&q.recipient), lower(&q.sender));
        let state = q.state.map(|s| s.label());
        let (since, until) = (q.since_ms.map(ms), q.until_ms.map(ms));
        let cursor = q.cursor.as_ref().map(|(at, tid)| (ms(*at), tid.as_str()));
        let fetch = (limit + 1) as i64;
        let mut clauses: Vec<(&str, &(dyn ToSql + Sync))> = Vec::new();
        if let Some(r) = &recipient {
            clauses.push((" AND recipients @> ARRAY[?::text]", r));
        }
        if let Some(v) = &sender {
            clauses.push((" AND sender = ?", v));
        }
        if let Some(v) = &q.tid {
            clauses.push((" AND tid = ?", v));
        }
        if let Some(v) = &q.correlation_id {
            clauses.push((" AND correlation_id = ?", v));
        }
        if let Some(v) = &q.asset {
            clauses.push((" AND asset = ?", v));
        }
        if let Some(v) = &state {
            clauses.push((" AND state = ?", v));
        }
        if let Some(v) = &since {
            clauses.push((" AND created_ms >= ?", v));
        }
        if let Some(v) = &until {
            clauses.push((" AND created_ms < ?", v));
        }
        if let Some((at, tid)) = &cursor {
            clauses.push((" AND (created_ms, tid) < (?", at));
            clauses.push((", ?)", tid));
        }
        clauses.push((" ORDER BY created_ms DESC, tid DESC LIMIT ?", &fetch));
        let mut sql = String::from("SELECT record FROM transactions WHERE true");
        for (i, (clause, _)) in clauses.iter().enumerate() {
            sql.push_str(&clause.replace('?', &format!("${}", i + 1)));
        }
        let params: Vec<&(dyn ToSql + Sync)> = clauses.iter().map(|(_, v)| *v).collect();
        let (sql, params) = (&sql, &params);
        let rows = self
            .run(|c| async move {
                let st = c.prepare_cached(sql).await?;
                c.query(&st, params).await
            })
            .await?;
        let mut page = LogPage::default();
        for row in rows {
            let bytes: Vec<u8> = row.get(0);
            let r = decode("transactions", &bytes)?;
            if page.messages.len() == limit {
                page.next = page.messages.last().map(|l| (l.created_ms, l.tid.clone()));
                break;
            }
            page.messages.push(r);
        }
        Ok(page)
    }

    /// Writes a transaction's record (and its route ids) to the database.
    async fn upsert(&self, r: &MessageRecord) -> Result<(), StoreError> {
        let bytes = codec::encode(r);
        let owner = self.node_id.as_str();
        let log = LogColumns::of(r);
        let log = &log;
        self.run(|c| async move {
            let st = c.prepare_cached(UPSERT).await?;
            c.execute(
                &st,
                &[
                    &r.tid,
                    &owner,
                    &r.state.label(),
                    &finished(r.state),
                    &ms(r.created_ms),
                    &ms(crate::model::time::now_ms()),
                    &bytes,
                    &log.sender,
                    &log.asset,
                    &log.correlation_id,
                    &log.recipients,
                ],
            )
            .await?;
            if !r.route_ids.is_empty() {
                let st = c.prepare_cached(ROUTE_IDS).await?;
                c.execute(&st, &[&r.route_ids, &r.tid]).await?;
            }
            Ok(())
        })
        .await
    }

    /// A lock on `tid` across nodes, held by a pooled connection until the guard drops;
    /// `None` while the database is down (its writes fail then anyway).
    async fn advisory_lock(&self, tid: &str) -> Option<AdvisoryLock> {
        if !self.health.database_up() {
            return None;
        }
        let client = tokio::time::timeout(Duration::from_secs(5), self.pool.get())
            .await
            .ok()?
            .ok()?;
        client
            .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&tid])
            .await
            .ok()?;
        Some(AdvisoryLock(Some(client)))
    }
}

/// Unlocks on drop, on its own task (the connection then returns to the pool).
struct AdvisoryLock(Option<deadpool_postgres::Client>);

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            tokio::spawn(async move {
                if client
                    .simple_query("SELECT pg_advisory_unlock_all()")
                    .await
                    .is_err()
                {
                    // A connection that may still hold the lock must not be reused.
                    let _ = deadpool_postgres::Object::take(client);
                }
            });
        }
    }
}

/// What the mirror task works on: held by [`ClusterMessages`], reached by the task through
/// a weak handle, so dropping the store closes sled at once.
pub(in crate::store) struct MirrorState {
    pub(in crate::store) local: SledMessages,
    pub(in crate::store) tree: sled::Tree,
}

/// The mirror task: copies marked records to the database while it answers, in mark
/// order, then drops the local copies of finished ones; purges finished transactions
/// past retention hourly. Ends when the store is dropped.
pub(in crate::store) async fn mirror(
    pg: std::sync::Weak<Pg>,
    state: std::sync::Weak<MirrorState>,
    wake: Arc<tokio::sync::Notify>,
) {
    let mut last_purge = 0;
    loop {
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        // Changes that follow each other closely (accepted, then sent) go as one copy.
        tokio::time::sleep(MIRROR_BATCH).await;
        let (Some(pg), Some(state)) = (pg.upgrade(), state.upgrade()) else {
            return;
        };
        if !pg.health.database_up() {
            continue;
        }
        if let Err(e) = mirror_pass(&pg, &state.local, &state.tree).await {
            tracing::warn!(error = %e, "transactions not mirrored yet; retrying");
            continue;
        }
        let now = crate::model::time::now_ms();
        if now.saturating_sub(last_purge) >= 3_600_000 {
            last_purge = now;
            if let Err(e) = purge(&pg, now).await {
                tracing::warn!(error = %e, "finished transactions not purged");
            }
        }
    }
}

async fn mirror_pass(pg: &Pg, local: &SledMessages, mirror: &sled::Tree) -> Result<(), StoreError> {
    let mut tids = Vec::new();
    for item in mirror.iter() {
        tids.push(String::from_utf8_lossy(&item?.0).into_owned());
    }
    for chunk in tids.chunks(MIRROR_CHUNK) {
        mirror_chunk(pg, local, mirror, chunk).await?;
    }
    Ok(())
}

/// Writes `rows` (records and their encoded bytes) with `st` (prepared from
/// [`MIRROR_UPSERT`] or [`ADOPT_INSERT`]) in one statement, and their route ids with
/// `ids_st` (from [`MIRROR_ROUTE_IDS`]) in another.
pub(super) async fn insert_batch(
    c: &impl tokio_postgres::GenericClient,
    (st, ids_st): (&tokio_postgres::Statement, &tokio_postgres::Statement),
    owner: &str,
    rows: &[(&MessageRecord, &[u8])],
) -> Result<(), tokio_postgres::Error> {
    let now = ms(crate::model::time::now_ms());
    let tids: Vec<&str> = rows.iter().map(|(r, _)| r.tid.as_str()).collect();
    let states: Vec<&str> = rows.iter().map(|(r, _)| r.state.label()).collect();
    let done: Vec<bool> = rows.iter().map(|(r, _)| finished(r.state)).collect();
    let created: Vec<i64> = rows.iter().map(|(r, _)| ms(r.created_ms)).collect();
    let records: Vec<&[u8]> = rows.iter().map(|(_, b)| *b).collect();
    let log: Vec<LogColumns> = rows.iter().map(|(r, _)| LogColumns::of(r)).collect();
    let senders: Vec<&str> = log.iter().map(|l| l.sender.as_str()).collect();
    let assets: Vec<&str> = log.iter().map(|l| l.asset).collect();
    let correlations: Vec<Option<&str>> = log.iter().map(|l| l.correlation_id).collect();
    let recipients: Vec<&str> = log.iter().map(|l| l.recipients.as_str()).collect();
    let (mut ids, mut id_tids) = (Vec::new(), Vec::new());
    for (r, _) in rows {
        for id in &r.route_ids {
            ids.push(id.as_str());
            id_tids.push(r.tid.as_str());
        }
    }
    c.execute(
        st,
        &[
            &tids,
            &owner,
            &states,
            &done,
            &created,
            &now,
            &records,
            &senders,
            &assets,
            &correlations,
            &recipients,
        ],
    )
    .await?;
    if !ids.is_empty() {
        c.execute(ids_st, &[&ids, &id_tids]).await?;
    }
    Ok(())
}

/// A transaction's searchable columns (the message log, SPEC 14): sender and recipients
/// in lower case, the recipients joined by newlines (`string_to_array` splits them).
pub(super) struct LogColumns<'a> {
    pub(super) sender: String,
    pub(super) asset: &'a str,
    pub(super) correlation_id: Option<&'a str>,
    pub(super) recipients: String,
}

impl<'a> LogColumns<'a> {
    pub(super) fn of(r: &'a MessageRecord) -> LogColumns<'a> {
        let recipients: Vec<String> = r
            .recipients
            .iter()
            .map(|x| x.address.to_ascii_lowercase())
            .collect();
        LogColumns {
            sender: r.from.to_ascii_lowercase(),
            asset: &r.asset_id,
            correlation_id: r.correlation_id.as_deref(),
            recipients: recipients.join("\n"),
        }
    }
}

/// A marked tid's record as read for one copy.
struct Copy {
    tid: String,
    mark: sled::IVec,
    bytes: sled::IVec,
    record: MessageRecord,
}

/// Copies the newest local records of `tids` to the database in one statement, then
/// clears each mark unless a newer write re-marked it, and drops finished ones' local
/// copies. The database takes a finished one over: no feedback here may write it
/// meanwhile, so finished ones are copied under their local locks (feedback on other
/// nodes waits until the database has the finished copy, and a copy never overwrites a
/// finished row); one that finished since it was looked at waits for the next pass.
async fn mirror_chunk(
    pg: &Pg,
    local: &SledMessages,
    mirror: &sled::Tree,
    tids: &[String],
) -> Result<(), StoreError> {
    let mut handed_over = Vec::new();
    for tid in tids {
        if local.finished.contains_key(tid.as_bytes())? {
            handed_over.push(tid.as_str());
        }
    }
    let _locks = local.lock_tids(handed_over.iter().copied()).await;
    let mut copies = Vec::with_capacity(tids.len());
    for tid in tids {
        let k = tid.as_bytes();
        let Some(mark) = mirror.get(k)? else {
            continue;
        };
        let Some(bytes) = local.messages.get(k)?.or(local.finished.get(k)?) else {
            let _ = mirror.compare_and_swap(k, Some(&mark), None as Option<&[u8]>)?;
            continue;
        };
        let record = decode(tid, &bytes)?;
        if finished(record.state) && !handed_over.contains(&tid.as_str()) {
            continue;
        }
        copies.push(Copy {
            tid: tid.clone(),
            mark,
            bytes,
            record,
        });
    }
    pg.mirror_upsert(&copies).await?;
    for c in &copies {
        let k = c.tid.as_bytes();
        let unmarked = mirror
            .compare_and_swap(k, Some(&c.mark), None as Option<&[u8]>)?
            .is_ok();
        if unmarked && finished(c.record.state) {
            let _ = local
                .finished
                .compare_and_swap(k, Some(&c.bytes), None as Option<&[u8]>)?;
        }
    }
    Ok(())
}

async fn purge(pg: &Pg, now: u64) -> Result<(), StoreError> {
    let cutoff = ms(now.saturating_sub(crate::store::messages::FINISHED_RETENTION_MS));
    let n: i64 = pg
        .run(|c| async move {
            c.execute("DELETE FROM sns_seen WHERE seen_ms < $1", &[&cutoff])
                .await?;
            Ok(c.query_one(PURGE, &[&cutoff]).await?.get(0))
        })
        .await?;
    if n > 0 {
        tracing::info!(
            transactions = n,
            "finished transactions purged from the database"
        );
    }
    Ok(())
}

/// [`RouteState`] of a cluster node: route ids found on any node (the mirror task writes
/// each record's), SNS de-duplication in the database.
pub(in crate::store) struct ClusterRouteState {
    pub(in crate::store) local: SledRouteState,
    pub(in crate::store) pg: Arc<Pg>,
}

impl RouteState for ClusterRouteState {
    fn map_route_id(&self, id: &str, tid: &str) -> Result<(), StoreError> {
        self.local.map_route_id(id, tid)
    }

    fn tid_for_route_id<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            if let Some(tid) = self.local.tid_for_route_id(id).await? {
                return Ok(Some(tid));
            }
            self.pg
                .run(|c| async move {
                    let st = c.prepare_cached(TID_FOR_ROUTE_ID).await?;
                    Ok(c.query_opt(&st, &[&id]).await?.map(|r| r.get(0)))
                })
                .await
        })
    }

    fn forget_route_ids(&self, ids: &[String]) -> Result<(), StoreError> {
        self.local.forget_route_ids(ids)
    }

    fn claim_sns<'a>(&'a self, id: &'a str, stale_before_ms: u64) -> StoreFuture<'a, SnsClaim> {
        Box::pin(async move {
            let (now, stale) = (ms(crate::model::time::now_ms()), ms(stale_before_ms));
            self.pg
                .run(|c| async move {
                    let claim = c.prepare_cached(SNS_CLAIM).await?;
                    if c.query_opt(&claim, &[&id, &now, &stale]).await?.is_some() {
                        return Ok(SnsClaim::Claimed);
                    }
                    let state = c.prepare_cached(SNS_STATE).await?;
                    Ok(match c.query_opt(&state, &[&id]).await? {
                        Some(r) if r.get::<_, bool>(0) => SnsClaim::Recorded,
                        // Held, or released between the two statements: asked again.
                        _ => SnsClaim::Busy,
                    })
                })
                .await
        })
    }

    fn finish_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let now = ms(crate::model::time::now_ms());
            self.pg
                .run(|c| async move {
                    let st = c.prepare_cached(SNS_FINISH).await?;
                    c.execute(&st, &[&id, &now]).await
                })
                .await?;
            Ok(())
        })
    }

    fn release_sns<'a>(&'a self, id: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.pg
                .run(|c| async move {
                    let st = c.prepare_cached(SNS_RELEASE).await?;
                    c.execute(&st, &[&id]).await
                })
                .await?;
            Ok(())
        })
    }

    fn forget_sns_seen_before(&self, cutoff_ms: u64) -> Result<(), StoreError> {
        self.local.forget_sns_seen_before(cutoff_ms)
    }
}
