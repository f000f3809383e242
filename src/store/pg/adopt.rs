//! `postern cluster adopt` (SPEC 13): one stopped node's shared state (suppressions,
//! consent, frequency counters, templates, domain verdicts, the link key, transactions
//! with their status and history, smarthost routes' OAuth2 grants), from its sled into an empty database, in one
//! transaction. A user who outgrows one machine keeps
//! everything; a database that already holds state is refused, naming what it holds.

use super::{migrate, ms, pool, ClusterOptions};
use crate::model::wire::Template;
use crate::store::codec;
use crate::store::domains::DomainState;
use crate::store::messages::MessageRecord;
use crate::store::suppression::Suppression;
use crate::store::StoreError;

/// The tables adopt fills, which must be empty before it starts.
const SHARED_TABLES: [&str; 10] = [
    "files",
    "suppressions",
    "templates",
    "consent",
    "sends",
    "domains",
    "secrets",
    "transactions",
    "route_ids",
    "route_tokens",
];

/// What adopt copied: (table, rows), in [`SHARED_TABLES`] order.
pub type Adopted = Vec<(&'static str, u64)>;

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

fn split_key(k: &[u8]) -> (String, String) {
    let mut parts = k.splitn(2, |b| *b == 0);
    let a = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let b = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    (a, b)
}

type Tx<'a> = deadpool_postgres::Transaction<'a>;

/// Copies the shared concerns of the sled database `db` and the link-signing key into the
/// database `opts` names, after applying its migrations.
pub async fn adopt(
    db: &sled::Db,
    data_dir: &std::path::Path,
    link_key: [u8; 32],
    opts: &ClusterOptions,
) -> Result<Adopted, StoreError> {
    let pool = pool(&opts.database_url).map_err(db_err)?;
    let mut client = pool.get().await.map_err(db_err)?;
    migrate(&mut client).await.map_err(db_err)?;
    let tx = client.transaction().await.map_err(db_err)?;
    refuse_unless_empty(&tx).await?;
    let (consent, sends) = copy_policy(&tx, db).await?;
    let copied = vec![
        ("suppressions", copy_suppressions(&tx, db).await?),
        ("templates", copy_templates(&tx, db).await?),
        ("consent", consent),
        ("sends", sends),
        ("domains", copy_domains(&tx, db).await?),
        (
            "transactions",
            copy_transactions(&tx, db, &opts.node_id).await?,
        ),
        ("files", copy_dkim(&tx, &data_dir.join("dkim")).await?),
        ("route_tokens", copy_grants(&tx, db).await?),
        ("secrets", {
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES ('links', $1)",
                &[&link_key.as_slice()],
            )
            .await
            .map_err(db_err)?;
            1
        }),
    ];
    tx.commit().await.map_err(db_err)?;
    Ok(copied)
}

/// Refuses a database that holds any shared state, naming the tables and their rows.
async fn refuse_unless_empty(tx: &Tx<'_>) -> Result<(), StoreError> {
    let mut held = Vec::new();
    for t in SHARED_TABLES {
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .map_err(db_err)?
            .get(0);
        if n > 0 {
            held.push(format!("{t}: {n} rows"));
        }
    }
    if held.is_empty() {
        return Ok(());
    }
    Err(StoreError::Database(format!(
        "the database already holds shared state ({}); adopt only into an empty one",
        held.join(", ")
    )))
}

async fn copy_suppressions(tx: &Tx<'_>, db: &sled::Db) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in db.open_tree("suppression")?.iter() {
        let (_, v) = item?;
        let Ok(e) = codec::decode::<Suppression>(&v) else {
            continue;
        };
        tx.execute(
            "INSERT INTO suppressions (asset_id, address, reason, since_ms, expires_ms, source)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[
                &e.asset_id,
                &e.address,
                &e.reason.label(),
                &ms(e.since_ms),
                &e.expires_ms.map(ms),
                &e.source,
            ],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

/// OAuth2 grants, without a lease (no node is refreshing during adopt).
async fn copy_grants(tx: &Tx<'_>, db: &sled::Db) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in db.open_tree("route_tokens")?.iter() {
        let (k, v) = item?;
        let Ok(mut grant) = codec::decode::<crate::store::accounts::RouteToken>(&v) else {
            continue;
        };
        grant.lease_holder = None;
        grant.lease_until_ms = 0;
        let asset = String::from_utf8_lossy(&k).into_owned();
        let body = serde_json::to_string(&grant).map_err(db_err)?;
        tx.execute(
            "INSERT INTO route_tokens (asset_id, body) VALUES ($1, $2)",
            &[&asset, &body],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

async fn copy_templates(tx: &Tx<'_>, db: &sled::Db) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in db.open_tree("templates")?.iter() {
        let (k, v) = item?;
        let Ok(t) = codec::decode::<Template>(&v) else {
            continue;
        };
        let key = String::from_utf8_lossy(&k).into_owned();
        let service = key.rsplit_once('/').map(|(s, _)| s).unwrap_or_default();
        let body = serde_json::to_string(&t).map_err(db_err)?;
        tx.execute(
            "INSERT INTO templates (service_id, template_id, body) VALUES ($1, $2, $3)",
            &[&service, &t.id, &body],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

/// Consent lists and frequency counters: (consent rows, send rows).
async fn copy_policy(tx: &Tx<'_>, db: &sled::Db) -> Result<(u64, u64), StoreError> {
    let (mut consent, mut sends) = (0, 0);
    for item in db.open_tree("consent")?.iter() {
        let (k, _) = item?;
        let (group, address) = split_key(&k);
        tx.execute(
            "INSERT INTO consent (grp, address) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&group, &address],
        )
        .await
        .map_err(db_err)?;
        consent += 1;
    }
    for item in db.open_tree("frequency")?.iter() {
        let (k, v) = item?;
        let (group, address) = split_key(&k);
        for at in codec::decode::<Vec<u64>>(&v).unwrap_or_default() {
            tx.execute(
                "INSERT INTO sends (grp, address, at_ms) VALUES ($1, $2, $3)",
                &[&group, &address, &ms(at)],
            )
            .await
            .map_err(db_err)?;
            sends += 1;
        }
    }
    Ok((consent, sends))
}

/// Every transaction, queued or finished, with its route ids; the queued ones stay in
/// this node's queue too, and it stays their owner.
async fn copy_transactions(tx: &Tx<'_>, db: &sled::Db, owner: &str) -> Result<u64, StoreError> {
    use super::messages::{insert_batch, ADOPT_INSERT, MIRROR_ROUTE_IDS};
    let st = tx.prepare(ADOPT_INSERT).await.map_err(db_err)?;
    let ids_st = tx.prepare(MIRROR_ROUTE_IDS).await.map_err(db_err)?;
    let mut n = 0;
    let mut batch: Vec<(MessageRecord, sled::IVec)> = Vec::with_capacity(ADOPT_BATCH);
    for tree in ["messages", "finished"] {
        let mut items = db.open_tree(tree)?.iter().peekable();
        while let Some(item) = items.next() {
            let (_, v) = item?;
            if let Ok(r) = codec::decode::<MessageRecord>(&v) {
                batch.push((r, v));
            }
            if batch.len() == ADOPT_BATCH || (items.peek().is_none() && !batch.is_empty()) {
                let rows: Vec<(&MessageRecord, &[u8])> =
                    batch.iter().map(|(r, v)| (r, v.as_ref())).collect();
                insert_batch(&**tx, (&st, &ids_st), owner, &rows)
                    .await
                    .map_err(db_err)?;
                n += batch.len() as u64;
                batch.clear();
            }
        }
    }
    // The message log's queries are planned on fresh statistics.
    tx.batch_execute("ANALYZE transactions")
        .await
        .map_err(db_err)?;
    Ok(n)
}

/// Transactions copied per statement.
const ADOPT_BATCH: usize = 1000;

/// The DKIM keys and rotation states (`data_dir/dkim/`), as the nodes keep them in step.
async fn copy_dkim(tx: &Tx<'_>, dir: &std::path::Path) -> Result<u64, StoreError> {
    let mut n = 0;
    for (name, file) in super::files::local_files(dir)? {
        tx.execute(
            "INSERT INTO files (dir, name, content, updated_ms) VALUES ('dkim', $1, $2, $3)",
            &[&name, &file.content, &ms(file.modified_ms)],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}

async fn copy_domains(tx: &Tx<'_>, db: &sled::Db) -> Result<u64, StoreError> {
    let mut n = 0;
    for item in db.open_tree("domains")?.iter() {
        let (k, v) = item?;
        let Ok(s) = codec::decode::<DomainState>(&v) else {
            continue;
        };
        tx.execute(
            "INSERT INTO domains (domain, verified, checked_ms) VALUES ($1, $2, $3)",
            &[
                &String::from_utf8_lossy(&k).as_ref(),
                &s.verified,
                &ms(s.checked_ms),
            ],
        )
        .await
        .map_err(db_err)?;
        n += 1;
    }
    Ok(n)
}
