//! Disk use is bounded by retention (SPEC 6.3): the real daemon, SMTP in over TCP, a real
//! webhook receiver that refuses bodies over 1 MiB with 413 (as nginx does by default),
//! and garbage collection driven through `Daemon::collect_garbage(now)` with a later clock
//! instead of waiting days. "Deleted" is checked as the space coming back: `du` falls.

mod common;
#[path = "common/smarthost.rs"]
mod smarthost;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::*;
use mail_send::mail_builder::MessageBuilder;
use mail_send::SmtpClientBuilder;
use postern::model::time::now_ms;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(60);
const DAY_MS: u64 = 86_400_000;
const LIMIT: u64 = 1024 * 1024;

/// What the limited receiver saw: (event id, declared length, status answered).
type Seen = Arc<Mutex<Vec<(String, u64, u16)>>>;

/// A webhook receiver with nginx's default `client_max_body_size` of 1 MiB: a request
/// declaring a longer body gets 413; others get 200.
struct LimitedReceiver {
    addr: SocketAddr,
    seen: Seen,
}

async fn limited(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let len: u64 = header("content-length").parse().unwrap_or(0);
    // Like nginx's lingering close, the body is read (and dropped) before the 413, so the
    // answer is not lost to a reset of a connection with unread data.
    let mut body = body.into_data_stream();
    while let Some(Ok(_)) = futures::StreamExt::next(&mut body).await {}
    let status = if len > LIMIT {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        StatusCode::OK
    };
    seen.lock()
        .unwrap()
        .push((header("x-postern-event-id"), len, status.as_u16()));
    status
}

impl LimitedReceiver {
    async fn start() -> LimitedReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/{*path}", post(limited))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(seen.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LimitedReceiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<(String, u64, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

/// Disk use of a tree as `du` counts it: allocated blocks, not lengths.
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            total += du(&entry.path());
        }
    }
    total
}

fn eml_files(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".eml"))
        .collect();
    names.sort();
    names
}

/// A message of about `size` bytes (an attachment of incompressible bytes) over SMTP.
async fn send_large(smtp: SocketAddr, subject: &str, size: usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..size * 3 / 4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    SmtpClientBuilder::new("127.0.0.1", smtp.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .expect("connect")
        .send(
            MessageBuilder::new()
                .from("dave@example.org")
                .to("support@example.test")
                .subject(subject)
                .text_body("see attachment")
                .attachment("application/octet-stream", "blob.bin", blob),
        )
        .await
        .expect("accepted");
}

async fn dead_letters(http: SocketAddr) -> serde_json::Value {
    admin_json(
        &reqwest::Client::new(),
        format!("http://{http}/admin/dead-letters"),
    )
    .await
}

async fn wait_dead(http: SocketAddr, n: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let listed = dead_letters(http).await;
        if listed["count"] == n {
            return listed;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} dead letters expected: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One garbage-collection pass as the periodic task runs it, with the clock at `now_ms`.
async fn gc(d: &TestDaemon, now_ms: u64) -> postern::daemon::Collected {
    let daemon = d.handle.as_ref().unwrap().daemon.clone();
    tokio::task::spawn_blocking(move || daemon.collect_garbage(now_ms))
        .await
        .unwrap()
        .expect("garbage collection")
}

#[tokio::test]
async fn dead_letter_refused_with_413_and_its_body_go_after_dead_letter_days() {
    let rx = LimitedReceiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url()).dead_letter_days(7)).await;
    let data = d.dir.path().join("data");
    let spool = data.join("spool");
    let before = du(&data);

    send_large(d.smtp, "too large for the receiver", 3 * 1024 * 1024).await;
    let listed = wait_dead(d.http, 1).await;
    let reason = listed["deadLetters"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("413"), "{listed}");
    let event = listed["deadLetters"][0]["id"].as_str().unwrap().to_string();
    // Answering before reading the body, the receiver may close while the body is still
    // being sent: that attempt is a connection error and retried; every answer was 413.
    let seen = rx.seen();
    assert!(
        !seen.is_empty()
            && seen.iter().all(|(id, len, status)| {
                (id.as_str(), *status) == (event.as_str(), 413) && *len > LIMIT
            }),
        "only the over-limit MO event, refused: {seen:?}"
    );
    let attempts = seen.len();
    let files = eml_files(&spool);
    assert_eq!(files.len(), 1, "the body is a spool file");
    let body_size = std::fs::metadata(spool.join(&files[0])).unwrap().len();
    let held = du(&data);
    assert!(held >= before + body_size, "{before} -> {held}");

    // Within retention the dead letter and its body stay, and replay works: the receiver
    // gets the same event again (still too large for it, so it dies again, now).
    let collected = gc(&d, now_ms() + 6 * DAY_MS).await;
    assert_eq!(collected.dead_letters, 0);
    assert_eq!(eml_files(&spool), files);
    let replay = reqwest::Client::new()
        .post(format!(
            "http://{}/admin/dead-letters/{event}/replay",
            d.http
        ))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    let seen = rx.seen.clone();
    wait_for(WAIT, || seen.lock().unwrap().len() > attempts).await;
    assert_eq!(
        rx.seen()[attempts].0,
        event,
        "the same event, rendered from the kept body"
    );
    let listed = wait_dead(d.http, 1).await;
    let died_again = now_ms();
    assert_eq!(listed["deadLetters"][0]["id"], event.as_str());

    // Seven days after it died (again): the dead letter and the body it pinned are gone.
    let collected = gc(&d, died_again + 7 * DAY_MS + 60_000).await;
    assert_eq!(collected.dead_letters, 1, "{collected:?}");
    assert_eq!(dead_letters(d.http).await["count"], 0);
    assert!(eml_files(&spool).is_empty());
    let after = du(&data);
    assert!(
        after + body_size * 9 / 10 <= held,
        "du of data_dir falls by about the body ({body_size} B): {held} -> {after}"
    );
    eprintln!("du data_dir: empty {before}, holding {held}, after gc {after}; body {body_size}");
    d.stop().await;
}

#[tokio::test]
async fn unreferenced_spool_file_is_collected_and_a_referenced_one_stays() {
    let rx = LimitedReceiver::start().await;
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url())).await;
    let spool = d.dir.path().join("data").join("spool");

    // A referenced body: dead-lettered, so its record and file are kept.
    send_large(d.smtp, "kept", 2 * 1024 * 1024).await;
    wait_dead(d.http, 1).await;
    let referenced = eml_files(&spool);
    assert_eq!(referenced.len(), 1);

    // Orphans as a store failure after the rename leaves them: `<uuid>.eml`, no record.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    let old = format!("{}.eml", uuid::Uuid::now_v7());
    let fresh = format!("{}.eml", uuid::Uuid::now_v7());
    for name in [&old, &fresh] {
        std::fs::write(spool.join(name), vec![b'x'; 1024 * 1024]).unwrap();
    }
    for name in [&old, &referenced[0]] {
        let f = std::fs::File::options()
            .write(true)
            .open(spool.join(name))
            .unwrap();
        f.set_modified(two_hours_ago).unwrap();
    }
    let before = du(&spool);

    let collected = gc(&d, now_ms()).await;
    assert_eq!(collected.spool, 1, "{collected:?}");
    let mut left = eml_files(&spool);
    let mut expected = vec![referenced[0].clone(), fresh.clone()];
    left.sort();
    expected.sort();
    assert_eq!(
        left, expected,
        "the old orphan went; the referenced file (old too) and the young orphan (an accept \
         may be in flight) stay"
    );
    assert!(du(&spool) + 1024 * 1024 <= before);

    // Once it is past the safe age, the young orphan goes too; the referenced body stays.
    gc(&d, now_ms() + 3_600_000 + 60_000).await;
    assert_eq!(eml_files(&spool), referenced);
    d.stop().await;
}

#[tokio::test]
async fn url_mode_inbound_is_kept_inbound_retention_days_then_collected() {
    let rx = LimitedReceiver::start().await;
    let d = TestDaemon::start(
        ConfigBuilder::inbound(&rx.url())
            .asset(|a| a.mo_attachments_url().inbound_retention_days(3)),
    )
    .await;
    let data = d.dir.path().join("data");
    let spool = data.join("spool");
    send_large(d.smtp, "by link", 3 * 1024 * 1024).await;
    let seen = rx.seen.clone();
    wait_for(WAIT, || seen.lock().unwrap().len() == 1).await;
    assert_eq!(rx.seen()[0].2, 200, "links keep the event small");
    let files = eml_files(&spool);
    assert_eq!(files.len(), 1, "kept for the links after delivery");
    let body_size = std::fs::metadata(spool.join(&files[0])).unwrap().len();
    let held = du(&data);

    assert_eq!(gc(&d, now_ms() + 2 * DAY_MS).await.spool, 0);
    assert_eq!(eml_files(&spool), files);
    let collected = gc(&d, now_ms() + 3 * DAY_MS + 60_000).await;
    assert_eq!(collected.spool, 1, "{collected:?}");
    assert!(eml_files(&spool).is_empty());
    let after = du(&data);
    assert!(
        after + body_size * 9 / 10 <= held,
        "du falls by about the body ({body_size} B): {held} -> {after}"
    );
    d.stop().await;
}

#[tokio::test]
async fn frequency_counters_of_an_ended_window_are_pruned() {
    use smarthost::{Script, Smarthost};
    let relay = Smarthost::start(Script::default()).await;
    let hooks = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let started = start_in_process(
        dir.path(),
        ConfigBuilder::outbound(&hooks.url(""), Route::smtp(relay.addr.port()))
            .contact_policy("promo", 1, 3600),
    )
    .await;
    let body = serde_json::json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": ["fan@example.org"]}],
        "content": {"type": "text", "subject": "Offer", "text": "Buy"},
        "contactPolicy": {"contactPolicyGroup": "promo", "channelApplyFrequencyCap": true}
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/v2/messages", started.http))
        .header("key", "key-a")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    hooks.wait_for_count(1, WAIT).await;
    let store = started.handle.daemon.store.clone();
    let sent_at = now_ms();
    assert_eq!(
        store
            .policy()
            .sends_since("promo", "fan@example.org", 0)
            .await
            .unwrap(),
        1
    );

    let daemon = started.handle.daemon.clone();
    let gc = move |at: u64| {
        let d = daemon.clone();
        async move {
            tokio::task::spawn_blocking(move || d.collect_garbage(at))
                .await
                .unwrap()
                .unwrap()
        }
    };
    // Inside the window the counter is the cap's memory: kept.
    assert_eq!(gc(sent_at + 1_800_000).await.counters, 0);
    assert_eq!(
        store
            .policy()
            .sends_since("promo", "fan@example.org", 0)
            .await
            .unwrap(),
        1
    );
    // Once the window has ended it counts nothing: deleted.
    assert_eq!(gc(sent_at + 3_600_000 + 60_000).await.counters, 1);
    assert_eq!(
        store
            .policy()
            .sends_since("promo", "fan@example.org", 0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.policy().frequency_len().await.unwrap(), 0);
    started.handle.shutdown().await;
}

/// Sends `n` messages of about 50 KB (inline bodies: under 64 KiB) on one connection.
async fn send_inline_batch(smtp: SocketAddr, tag: &str, n: usize) {
    let mut client = SmtpClientBuilder::new("127.0.0.1", smtp.port())
        .unwrap()
        .implicit_tls(false)
        .connect_plain()
        .await
        .expect("connect");
    for i in 0..n {
        let text: String = (0..50_000)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        client
            .send(
                MessageBuilder::new()
                    .from("erin@example.org")
                    .to("support@example.test")
                    .subject(format!("{tag} {i}"))
                    .text_body(text),
            )
            .await
            .expect("accepted");
    }
}

/// A measurement, not a check (run with `--ignored --nocapture`): what `du` of the
/// database does when inline bodies (under 64 KiB, kept inside sled) are deleted, after a
/// restart, and when as many bodies are stored again.
#[tokio::test]
#[ignore]
async fn measure_du_of_sled_when_inline_bodies_are_deleted() {
    const N: usize = 400;
    let rx = Receiver::start().await;
    rx.status.store(404, std::sync::atomic::Ordering::SeqCst);
    let d = TestDaemon::start(ConfigBuilder::inbound(&rx.url(""))).await;
    let db = d.dir.path().join("data").join("db");
    let start = du(&db);
    send_inline_batch(d.smtp, "first", N).await;
    wait_dead(d.http, N as u64).await;
    let full = du(&db);
    assert_eq!(gc(&d, now_ms() + 8 * DAY_MS).await.dead_letters, N);
    let deleted = du(&db);
    let dir = d.stop().await;
    let stopped = du(&db);

    let again = start_in_process(dir.path(), ConfigBuilder::inbound(&rx.url(""))).await;
    let restarted = du(&db);
    send_inline_batch(again.smtp, "second", N).await;
    wait_dead(again.http, N as u64).await;
    let refilled = du(&db);
    eprintln!(
        "sled du, {N} inline bodies of 50 KB: empty {start}, holding {full}, after delete \
         {deleted}, stopped {stopped}, restarted {restarted}, refilled with {N} more {refilled}"
    );
    again.handle.shutdown().await;
}
