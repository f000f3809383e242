//! Test harness: the daemon in-process on port 0 (or as a child process for crash tests),
//! a real HTTP webhook receiver, and a `wait_for` that polls a condition with a deadline.
#![allow(dead_code)]

mod config;
pub use config::*;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Hook {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Hook {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }
}

/// A webhook receiver on a loopback port; answers `status` (200 by default).
pub struct Receiver {
    pub addr: SocketAddr,
    pub hooks: Arc<Mutex<Vec<Hook>>>,
    pub status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct RecvState {
    hooks: Arc<Mutex<Vec<Hook>>>,
    status: Arc<AtomicU16>,
}

async fn record(
    State(s): State<RecvState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let status = s.status.load(Ordering::SeqCst);
    s.hooks.lock().unwrap().push(Hook {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let state = RecvState {
            hooks: hooks.clone(),
            status: status.clone(),
        };
        let app = Router::new()
            .route("/{*path}", post(record))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            hooks,
            status,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests answered 2xx so far.
    pub fn delivered(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// The shared request log, for `wait_for` predicates.
    pub fn clone_hooks(&self) -> Arc<Mutex<Vec<Hook>>> {
        self.hooks.clone()
    }

    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }

    /// Waits for the n-th request (1-based) and returns it.
    pub async fn wait_for_count(&self, n: usize, within: Duration) -> Vec<Hook> {
        let hooks = self.hooks.clone();
        wait_for(within, || hooks.lock().unwrap().len() >= n).await;
        self.delivered()
    }
}

/// Polls `cond` every 20 ms until it holds; panics after `within`.
pub async fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config text for a daemon on loopback; `extra_asset` lines go into the asset table.
pub fn config_text(
    data_dir: &Path,
    smtp: SocketAddr,
    http: SocketAddr,
    hook: &str,
    extra_asset: &str,
    extra_top: &str,
) -> String {
    config_text_dns(
        data_dir,
        smtp,
        http,
        hook,
        extra_asset,
        extra_top,
        "resolver = \"off\"",
    )
}

pub fn config_text_dns(
    data_dir: &Path,
    smtp: SocketAddr,
    http: SocketAddr,
    hook: &str,
    extra_asset: &str,
    extra_top: &str,
    dns: &str,
) -> String {
    format!(
        r#"
[server]
hostname = "mx.example.test"
data_dir = "{data}"
public_url = "http://{http}"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"

[smtp]
listen = ["{smtp}"]
{extra_top}

[http]
listen = "{http}"

[admin]
token = "admin-secret"

[dns]
{dns}

[[asset]]
id = "a_demo"
name = "Demo"
domains = ["example.test"]
inbound = true
incoming_webhook = "{hook}/mo"
delivery_webhook = "{hook}/dlr"
{extra_asset}
"#,
        data = data_dir.display()
    )
}

/// What varies between the sending tests' configurations.
pub struct Outbound<'a> {
    /// The body of `[asset.route]`.
    pub route: String,
    /// Tables placed before the services (e.g. `[ses]`, `[[contact_policy]]`).
    pub top: &'a str,
    /// Keys of the asset itself (before its sub-tables), e.g. `sandbox = true`.
    pub asset_keys: &'a str,
    /// Tables appended to the asset.
    pub asset_extra: &'a str,
    /// TPS of each service.
    pub tps: u32,
}

/// Starts a daemon in this process with `outbound_config` in a `data` directory of `dir`.
pub async fn start_outbound(dir: &Path, hook: &str, o: &Outbound<'_>) -> Started {
    let data = dir.join("data");
    start_in_process(dir, |smtp, http| {
        outbound_config(&data, smtp, http, hook, o)
    })
    .await
}

/// A sending configuration: services `svc_a` (`key-a`) and `svc_b` (`key-b`) on asset
/// `a_out` for example.test, DKIM `sel1` Ed25519, webhooks under `hook`, loopback
/// targets allowed, first retry after a second.
pub fn outbound_config(
    data: &Path,
    smtp: SocketAddr,
    http: SocketAddr,
    hook: &str,
    o: &Outbound,
) -> String {
    format!(
        r#"
[server]
hostname = "mx.example.test"
data_dir = "{data}"
public_url = "http://{http}"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[smtp]
listen = ["{smtp}"]
[http]
listen = "{http}"
max_body_size = 200000
[admin]
token = "admin-secret"
[dns]
resolver = "off"
[queue]
retry_base = 1
[outbound]
allow_private_targets = ["127.0.0.0/8"]
{top}
[[service]]
id = "svc_a"
key = "key-a"
secret = "{SERVICE_SECRET}"
tps = {tps}
assets = ["a_out"]
[[service]]
id = "svc_b"
key = "key-b"
secret = "{SERVICE_SECRET}"
tps = {tps}
assets = ["a_out"]
[[asset]]
id = "a_out"
domains = ["example.test"]
delivery_webhook = "{hook}/dlr"
incoming_webhook = "{hook}/mo"
{asset_keys}
[asset.route]
{route}
[asset.dkim]
selector = "sel1"
algorithm = "ed25519-sha256"
{asset_extra}
"#,
        data = data.display(),
        top = o.top,
        tps = o.tps,
        route = o.route,
        asset_keys = o.asset_keys,
        asset_extra = o.asset_extra,
    )
}

/// A daemon started inside the test process on loopback port-0 listeners.
pub struct Started {
    pub handle: postern::Handle,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    /// The configuration as written to `dir/postern.toml` (for the command line).
    pub config_path: PathBuf,
}

/// Binds the SMTP and HTTP listeners, asks `config` for the text given their addresses,
/// writes it to `dir/postern.toml`, and starts the daemon with it.
pub async fn start_in_process(
    dir: &Path,
    config: impl FnOnce(SocketAddr, SocketAddr) -> String,
) -> Started {
    let smtp_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (smtp, http) = (smtp_l.local_addr().unwrap(), http_l.local_addr().unwrap());
    let text = config(smtp, http);
    let config_path = dir.join("postern.toml");
    std::fs::write(&config_path, &text).unwrap();
    let parsed =
        postern::config::Config::parse(&text, "postern.toml").expect("test config is valid");
    let handle = postern::start(
        parsed,
        None,
        postern::Listeners {
            smtp: vec![smtp_l],
            http: http_l,
        },
    )
    .await
    .expect("daemon starts");
    Started {
        handle,
        smtp,
        http,
        config_path,
    }
}

/// A daemon running inside the test process.
pub struct TestDaemon {
    pub handle: Option<postern::Handle>,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestDaemon {
    pub async fn start(hook_base: &str, extra_asset: &str, extra_top: &str) -> TestDaemon {
        Self::start_with(hook_base, extra_asset, extra_top, "resolver = \"off\"").await
    }

    pub async fn start_with(
        hook_base: &str,
        extra_asset: &str,
        extra_top: &str,
        dns: &str,
    ) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let Started {
            handle, smtp, http, ..
        } = start_in_process(dir.path(), |smtp, http| {
            config_text_dns(&data, smtp, http, hook_base, extra_asset, extra_top, dns)
        })
        .await;
        TestDaemon {
            handle: Some(handle),
            smtp,
            http,
            dir,
        }
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
        self.dir
    }
}

/// A daemon as a child process (for kill -9 tests).
pub struct ChildDaemon {
    pub child: std::process::Child,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl ChildDaemon {
    pub async fn spawn(
        config_path: &PathBuf,
        smtp: SocketAddr,
        http: SocketAddr,
        log: &Path,
    ) -> ChildDaemon {
        let log = std::fs::File::create(log).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["serve", "--config"])
            .arg(config_path)
            .stderr(log)
            .spawn()
            .expect("spawn postern");
        let client = reqwest::Client::new();
        let url = format!("http://{http}/readyz");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "daemon did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ChildDaemon { child, smtp, http }
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal SMTP client over a raw socket, for dialogues that real clients refuse to
/// produce (bare LF, smuggling, over-long lines).
pub struct Raw {
    pub stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> (Raw, String) {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut raw = Raw {
            stream: tokio::io::BufReader::new(s),
        };
        let banner = raw.reply().await;
        (raw, banner)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; empty at end of stream.
    pub async fn reply(&mut self) -> String {
        use tokio::io::AsyncBufReadExt;
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read_line(&mut line))
                .await
                .expect("reply within 20 s")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }
}
