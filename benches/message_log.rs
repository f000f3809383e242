//! The message log's search at scale (SPEC 14: "an index, not a scan"): fills a store
//! with `--count` transactions (default 1,000,000) through the store's own interface,
//! then times each kind of `GET /admin/messages` query against sled's `log_index` and,
//! with `--pg URL`, against PostgreSQL's indexes (the same records moved there by
//! `cluster adopt`). The reference is what the log would cost without an index: one
//! pass over every record, decoding and filtering it.
//!
//!     cargo bench --bench message_log -- [--count N] [--pg postgres://...] [--dir DIR]
//!
//! `bench/message_log.sh` starts a private PostgreSQL and runs this with `--pg`.

use postern::store::log::{LogPage, LogQuery};
use postern::store::messages::{MessageRecord, QueueState, RecipientPhase, RecipientState};
use postern::store::Store;
use std::time::{Duration, Instant};

/// One accepted transaction every 600 ms: 1,000,000 span the 7-day retention.
const SPACING_MS: u64 = 600;
const RECIPIENTS: usize = 200_000;
const SENDERS: usize = 20;
const ASSETS: usize = 5;
const RUNS: usize = 25;

fn record(i: usize, base_ms: u64) -> MessageRecord {
    let mut r = MessageRecord::blank(&format!("bench-{i:09}"));
    r.created_ms = base_ms + i as u64 * SPACING_MS;
    r.asset_id = format!("asset-{}", i % ASSETS);
    r.service_id = "bench".into();
    r.from = format!("sender{}@example.test", i % SENDERS);
    r.subject = format!("Order {i} shipped");
    r.text = Some("Your order is on its way.".into());
    r.correlation_id = Some(format!("order-{}", i / 4));
    r.recipients = vec![RecipientState {
        address: format!("user{}@domain{}.example", i % RECIPIENTS, i % 1000),
        phase: RecipientPhase::Submitted,
        code: Some("7501".into()),
    }];
    // One in a hundred still waits for a retry.
    r.state = if i % 100 == 7 {
        QueueState::Retry
    } else {
        QueueState::Done
    };
    r
}

async fn fill(store: &Store, count: usize, base_ms: u64) -> Duration {
    let started = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..count {
        batch.push(record(i, base_ms));
        if batch.len() == 1000 || i + 1 == count {
            store.messages().submit(&batch, &[]).await.expect("submit");
            batch.clear();
        }
    }
    started.elapsed()
}

/// The queries timed, by name; `n` is the count (to place them inside the data).
fn queries(count: usize, base_ms: u64) -> Vec<(&'static str, LogQuery)> {
    let q = LogQuery {
        limit: 100,
        ..Default::default()
    };
    let mid = count / 2;
    let at = |i: usize| base_ms + i as u64 * SPACING_MS;
    vec![
        ("newest page (no filter)", q.clone()),
        (
            "recipient (5 of 1M)",
            LogQuery {
                recipient: Some(format!(
                    "USER{}@domain{}.example",
                    mid % RECIPIENTS,
                    mid % 1000
                )),
                ..q.clone()
            },
        ),
        (
            "tid",
            LogQuery {
                tid: Some(format!("bench-{mid:09}")),
                ..q.clone()
            },
        ),
        (
            "correlationId (4 of 1M)",
            LogQuery {
                correlation_id: Some(format!("order-{}", mid / 4)),
                ..q.clone()
            },
        ),
        (
            "sender, page of 100",
            LogQuery {
                sender: Some("sender3@example.test".into()),
                ..q.clone()
            },
        ),
        (
            "asset + state=retry, page of 100",
            LogQuery {
                asset: Some("asset-2".into()),
                state: Some(QueueState::Retry),
                ..q.clone()
            },
        ),
        (
            "1-hour window mid-week",
            LogQuery {
                since_ms: Some(at(mid)),
                until_ms: Some(at(mid) + 3_600_000),
                ..q.clone()
            },
        ),
        (
            "recipient, absent",
            LogQuery {
                recipient: Some("nobody@nowhere.example".into()),
                ..q
            },
        ),
    ]
}

async fn time(store: &Store, q: &LogQuery) -> (Duration, Duration, usize) {
    let mut took = Vec::with_capacity(RUNS);
    let mut found = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let page: LogPage = store.messages().search(q).await.expect("search");
        took.push(t.elapsed());
        found = page.messages.len();
    }
    took.sort();
    (took[RUNS / 2], took[RUNS * 95 / 100], found)
}

/// What the recipient query costs without an index: decode and filter every record.
async fn scan(store: &Store, count: usize, base_ms: u64) -> Duration {
    let want = format!(
        "user{}@domain{}.example",
        (count / 2) % RECIPIENTS,
        (count / 2) % 1000
    );
    let t = Instant::now();
    let mut hits = 0;
    for i in 0..count {
        let tid = format!("bench-{i:09}");
        if let Some(r) = store.messages().get(&tid).await.expect("get") {
            if r.recipients
                .iter()
                .any(|x| x.address.eq_ignore_ascii_case(&want))
            {
                hits += 1;
            }
        }
    }
    let _ = (hits, base_ms);
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut count, mut pg, mut dir) = (1_000_000usize, None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--pg" => pg = args.next(),
            "--dir" => dir = args.next(),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let tmp = match &dir {
        Some(d) => tempfile::tempdir_in(d),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    let sled_dir = tmp.path().join("sled");
    let base_ms = postern::model::time::now_ms() - count as u64 * SPACING_MS;
    let store = Store::open(&sled_dir).expect("open");
    let filled = fill(&store, count, base_ms).await;
    eprintln!(
        "sled: {count} transactions written in {:.1} s",
        filled.as_secs_f64()
    );
    let qs = queries(count, base_ms);
    let mut rows: Vec<(String, String)> = Vec::new();
    for (name, q) in &qs {
        let (p50, p95, n) = time(&store, q).await;
        rows.push((
            name.to_string(),
            format!("{:>8} {:>8} {:>5}", ms(p50), ms(p95), n),
        ));
    }
    let scanned = scan(&store, count, base_ms).await;
    drop(store);
    let mut pg_rows = vec![String::new(); rows.len()];
    if let Some(url) = &pg {
        let opts = postern::store::pg::ClusterOptions {
            database_url: url.clone(),
            node_id: "bench".into(),
        };
        let t = Instant::now();
        Store::adopt(&sled_dir, [7; 32], &opts)
            .await
            .expect("adopt");
        eprintln!("PostgreSQL: adopted in {:.1} s", t.elapsed().as_secs_f64());
        let node_dir = tmp.path().join("node");
        let store = Store::open_cluster(&node_dir, &opts, Duration::from_secs(10))
            .await
            .expect("open cluster");
        for (i, (_, q)) in qs.iter().enumerate() {
            let (p50, p95, n) = time(&store, q).await;
            pg_rows[i] = format!("{:>8} {:>8} {:>5}", ms(p50), ms(p95), n);
        }
    }
    println!(
        "message log search, {count} transactions over 7 days, {RUNS} runs each, page size 100"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>5}   {:>8} {:>8} {:>5}",
        "query", "sled p50", "p95 ms", "found", "PG p50", "p95 ms", "found"
    );
    for ((name, sled), pg) in rows.iter().zip(&pg_rows) {
        println!("{name:<34} {sled}   {pg}");
    }
    println!(
        "reference: the recipient query as a scan of every record (sled, decode + filter): {} ms",
        ms(scanned)
    );
}
