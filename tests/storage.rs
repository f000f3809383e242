//! Storage faults and durability (SPEC 6.3) against the real daemon on a real, small
//! filesystem: a tmpfs mounted by the test (root needed; skipped with a message without).
//! Low space refuses new work at every door and recovers by itself; a disk that fills
//! mid-queue loses nothing and sends nothing twice (the daemon exits for a restart when
//! sled stays poisoned, and the test restarts it as systemd would); the 250 waits for an
//! fdatasync of sled's log (checked with strace).

mod common;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use serde_json::{json, Value};
use smarthost::{Script, Smarthost};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// A tmpfs of a given size, unmounted when dropped.
struct TmpMount {
    dir: tempfile::TempDir,
}

impl TmpMount {
    fn new(size: &str) -> Option<TmpMount> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root): storage tests not run");
            return None;
        }
        Some(TmpMount { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        postern::health::free_space(self.path()).unwrap()
    }

    /// Writes a filler file until the filesystem has at most `leave` bytes free
    /// (`leave == 0`: until ENOSPC).
    fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 1 << 20];
        loop {
            let free = self.free();
            if free <= leave {
                break;
            }
            let n = ((free - leave) as usize).min(chunk.len());
            if f.write_all(&chunk[..n]).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn email(to: &str, subject: &str) -> Value {
    json!({
        "channel": "email",
        "from": "news@example.test",
        "to": [{"email": [to]}],
        "content": {"type": "text", "subject": subject, "text": "Hello"},
    })
}

async fn post(client: &reqwest::Client, http: SocketAddr, body: &Value) -> reqwest::Response {
    client
        .post(format!("http://{http}/v2/messages"))
        .header("key", "key-a")
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn readyz(client: &reqwest::Client, http: SocketAddr) -> u16 {
    let req = client
        .get(format!("http://{http}/readyz"))
        .timeout(Duration::from_secs(5));
    match req.send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The reply to MAIL FROM in a fresh session.
async fn mail_reply(smtp: SocketAddr) -> String {
    let (mut raw, banner) = Raw::connect(smtp).await;
    assert!(banner.starts_with("220"), "{banner}");
    raw.cmd("EHLO client.example.org").await;
    let r = raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("QUIT").await;
    r
}

async fn wait_until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn low_space_refuses_at_every_door_and_serves_again_by_itself() {
    let Some(fs) = TmpMount::new("64m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = Smarthost::start(Script::default()).await;
    let data = fs.path().join("data");
    let min = 24u64 << 20;
    let config = ConfigBuilder::outbound("http://127.0.0.1:9", Route::smtp(relay.addr.port()))
        .services_tps(1000)
        .data_dir(&data)
        .min_free_space(min);
    let started = start_in_process(dir.path(), config).await;
    let (smtp, http) = (started.smtp, started.http);
    let client = reqwest::Client::new();
    wait_until(WAIT, "ready", async || readyz(&client, http).await == 200).await;

    let filler = fs.fill(min - (4 << 20));
    wait_until(Duration::from_secs(10), "/readyz 503", async || {
        readyz(&client, http).await == 503
    })
    .await;
    let ready: Value = client
        .get(format!("http://{http}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["code"], "7010", "{ready}");
    let r = mail_reply(smtp).await;
    assert!(r.starts_with("452 4.3.1 MAIL: "), "{r}");
    let resp = post(&client, http, &email("a@example.org", "refused")).await;
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "7010", "{body}");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("min_free_space"),
        "{body}"
    );
    // Reading stays open.
    let status = client
        .get(format!("http://{http}/v2/messages/none"))
        .header("key", "key-a")
        .send()
        .await
        .unwrap()
        .status();
    assert_ne!(status.as_u16(), 503);

    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();
    wait_until(Duration::from_secs(15), "serving again", async || {
        readyz(&client, http).await == 200
    })
    .await;
    eprintln!("serving again {:?} after space returned", freed.elapsed());
    let r = mail_reply(smtp).await;
    assert!(r.starts_with("250"), "{r}");
    let resp = post(&client, http, &email("b@example.org", "accepted")).await;
    assert_eq!(resp.status().as_u16(), 202);
    let received = relay.received.clone();
    wait_for(WAIT, || received.lock().unwrap().len() == 1).await;
    started.handle.shutdown().await;
    // Nothing refused was queued.
    assert_eq!(relay.messages().len(), 1);
}

fn message_id(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("message-id:"))
        .map(|l| l[11..].trim().to_string())
        .unwrap_or_default()
}

struct Binary {
    dir: PathBuf,
    config: ConfigBuilder,
    log: PathBuf,
    starts: usize,
}

impl Binary {
    async fn start(&mut self) -> ChildDaemon {
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        ChildDaemon::spawn(&self.dir, &self.config, &log).await
    }

    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                std::fs::read_to_string(self.log.with_extension(format!("{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n----- restart -----\n")
    }
}

#[tokio::test]
async fn disk_full_mid_queue_sends_every_message_exactly_once() {
    let Some(fs) = TmpMount::new("48m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let relay_addr = free_port();
    // min_free_space 0: the daemon learns of the full disk only from failed writes.
    let config = ConfigBuilder::outbound("http://127.0.0.1:9", Route::smtp(relay_addr.port()))
        .services_tps(1000)
        .data_dir(&fs.path().join("data"))
        .min_free_space(0)
        .on_free_ports();
    let (smtp, http) = (config.smtp_addr(), config.http_addr());
    let mut bin = Binary {
        dir: dir.path().to_path_buf(),
        config,
        log: dir.path().join("daemon"),
        starts: 0,
    };
    let mut child = bin.start().await;
    let client = reqwest::Client::new();

    // The smarthost is down: everything waits in the queue.
    const N: usize = 30;
    let mut tids = Vec::new();
    for i in 0..N {
        let resp = post(
            &client,
            http,
            &email(&format!("r{i}@example.org"), &format!("m{i}")),
        )
        .await;
        assert_eq!(resp.status().as_u16(), 202);
        let body: Value = resp.json().await.unwrap();
        tids.push(
            body["messages"][0]["tid"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    // The disk fills, then the smarthost comes back while it is full.
    let filler = fs.fill(0);
    let relay = Smarthost::start_on(relay_addr, Script::default()).await;
    wait_until(
        Duration::from_secs(20),
        "the daemon notices the full disk",
        async || readyz(&client, http).await != 200,
    )
    .await;
    let r = mail_reply(smtp).await;
    assert!(r.starts_with("452 4.3.1"), "{r}");
    let before_free = relay.messages().len();
    std::fs::remove_file(filler).unwrap();
    let freed = Instant::now();

    // Either it serves again in process, or it exits non-zero and is restarted (as
    // systemd's Restart=on-failure would).
    loop {
        if let Some(status) = child.child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "exit after a store failure must be non-zero"
            );
            eprintln!(
                "daemon exited with {status} {:?} after space returned",
                freed.elapsed()
            );
            drop(child);
            child = bin.start().await;
            break;
        }
        if readyz(&client, http).await == 200 {
            break;
        }
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "neither serving nor exited 15 s after space returned\n{}",
            bin.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "serving again {:?} after space returned ({before_free} sent while full)",
        freed.elapsed()
    );

    // New mail is accepted afterwards.
    let resp = post(&client, http, &email("late@example.org", "late")).await;
    assert_eq!(resp.status().as_u16(), 202, "{}", bin.logs());
    let received = relay.received.clone();
    wait_for(Duration::from_secs(60), || {
        received.lock().unwrap().len() > N
    })
    .await;
    // Every transaction finished: nothing is left to send again.
    for tid in &tids {
        wait_until(WAIT, "transaction finished", async || {
            let v: Value = client
                .get(format!("http://{http}/v2/messages/{tid}"))
                .header("key", "key-a")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or(Value::Null);
            v.to_string().contains("7501")
        })
        .await;
    }
    drop(child);
    let mut counts: HashMap<String, usize> = HashMap::new();
    for m in relay.messages() {
        *counts
            .entry(format!("{} {:?}", message_id(&m.data), m.rcpts))
            .or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sent more than once: {twice:?}\n{}",
        bin.logs()
    );
    assert_eq!(counts.len(), N + 1, "{}", bin.logs());
}

/// strace -f splits a call that another thread interrupts into `PID TIME call(args <unfinished ...>`
/// and `PID TIME <... call resumed>rest`; join each pair into one line at the call's start time.
fn joined_strace(text: &str) -> String {
    let mut open: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let pid = line.split_whitespace().next().unwrap_or_default();
        if let Some(head) = line.strip_suffix(" <unfinished ...>") {
            open.insert(pid, head.to_string());
        } else if let Some(at) = line.find(" resumed>") {
            let head = open.remove(pid).unwrap_or_default();
            out.push(format!("{head}{}", &line[at + " resumed>".len()..]));
        } else {
            out.push(line.to_string());
        }
    }
    out.join("\n")
}

fn reads_and_writes(text: &str) -> String {
    let calls: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["read(", "recvfrom(", "write(", "sendto(", "writev("]
                .iter()
                .any(|c| l.contains(c))
        })
        .collect();
    calls[calls.len().saturating_sub(40)..].join("\n")
}

#[tokio::test]
async fn the_250_waits_for_an_fdatasync_of_the_sled_log() {
    if !std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::inbound("http://127.0.0.1:9").on_free_ports();
    let (smtp, http) = (config.smtp_addr(), config.http_addr());
    let config_path = config.write_in(dir.path());
    let trace = dir.path().join("trace");
    let mut child = std::process::Command::new("strace")
        .args(["-f", "-y", "-ttt", "-s", "64", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=fsync,fdatasync,sync_file_range,read,recvfrom,write,sendto,writev",
        ])
        .arg(env!("CARGO_BIN_EXE_postern"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    wait_until(Duration::from_secs(60), "ready under strace", async || {
        readyz(&client, http).await == 200
    })
    .await;
    let (mut raw, _) = Raw::connect(smtp).await;
    raw.cmd("EHLO client.example.org").await;
    assert!(raw
        .cmd("MAIL FROM:<a@example.org>")
        .await
        .starts_with("250"));
    assert!(raw
        .cmd("RCPT TO:<support@example.test>")
        .await
        .starts_with("250"));
    assert!(raw.cmd("DATA").await.starts_with("354"));
    let r = raw
        .cmd("Subject: durable\r\n\r\nfinal-line-marker-7f3a\r\n.")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    raw.cmd("QUIT").await;
    // SIGTERM to the daemon (the tracee: the first pid in the trace), then strace ends.
    let text = std::fs::read_to_string(&trace).unwrap();
    let daemon_pid = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon_pid])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = joined_strace(&std::fs::read_to_string(&trace).unwrap());
    // `PID TIME call(...)`: the read that brought the end of data, the write of the 250.
    let time = |l: &str| -> f64 { l.split_whitespace().nth(1).unwrap().parse().unwrap() };
    let end_of_data = text
        .lines()
        .filter(|l| {
            (l.contains(" read(") || l.contains(" recvfrom("))
                && l.contains("final-line-marker-7f3a")
        })
        .map(time)
        .next_back()
        .unwrap_or_else(|| panic!("the end of data is read:\n{}", reads_and_writes(&text)));
    let reply = text
        .lines()
        .filter(|l| {
            (l.contains(" write(") || l.contains(" sendto(") || l.contains(" writev("))
                && l.contains("250 2.0.0")
        })
        .map(time)
        .find(|t| *t >= end_of_data)
        .unwrap_or_else(|| panic!("the 250 is written:\n{}", reads_and_writes(&text)));
    let synced: Vec<&str> = text
        .lines()
        .filter(|l| {
            // fdatasync only: sled's own periodic flusher fsyncs the log every second, which
            // could fall in the window by chance; the commit path uses fdatasync.
            l.contains(" fdatasync(")
                && l.contains("/db/db>")
                && (end_of_data..=reply).contains(&time(l))
        })
        .collect();
    assert!(
        !synced.is_empty(),
        "no fdatasync of data/db/db between the end of data ({end_of_data}) and the 250 ({reply})"
    );
}
