//! Test harness: one `ConfigBuilder` (config.rs) for every daemon's configuration, the
//! daemon in-process on port 0 (or as a child process for crash tests), a real HTTP
//! webhook receiver, and a `wait_for` that polls a condition with a deadline.
#![allow(dead_code)]

mod config;
pub use config::*;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
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

/// A webhook receiver on a loopback port; answers `status` (200 by default) with a short
/// body, as real receivers do.
pub struct Receiver {
    pub addr: SocketAddr,
    pub hooks: Arc<Mutex<Vec<Hook>>>,
    pub status: Arc<AtomicU16>,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicUsize>,
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
) -> (StatusCode, axum::body::Body) {
    let status = s.status.load(Ordering::SeqCst);
    s.hooks.lock().unwrap().push(Hook {
        path: uri.path().to_string(),
        headers,
        body: body.to_vec(),
    });
    // The reply's body comes after its headers, in a later write, as from receivers that
    // flush headers first: a client must read it to reuse the connection.
    let body = futures::stream::unfold(0, |n| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (n < 2).then(|| {
            (
                Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"ok")),
                n + 1,
            )
        })
    });
    (
        StatusCode::from_u16(status).unwrap(),
        axum::body::Body::from_stream(body),
    )
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        use axum::serve::ListenerExt;
        let listener = TcpListener::bind(addr).await.expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let listener = listener.tap_io(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        });
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
            connections,
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
/// GET `url` with the test configuration's admin token (`admin-secret`); the JSON answer.
pub async fn admin_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    client
        .get(url)
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

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

/// A daemon started inside the test process on loopback port-0 listeners.
pub struct Started {
    pub handle: postern::Handle,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    /// The configuration as written to `dir/postern.toml` (for the command line).
    pub config_path: PathBuf,
}

/// Binds the SMTP and HTTP listeners, writes `config` on them to `dir/postern.toml` (data
/// in `dir/data` unless the config names a directory), and starts the daemon with it.
pub async fn start_in_process(dir: &Path, config: ConfigBuilder) -> Started {
    let smtp_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config.listen(smtp_l.local_addr().unwrap(), http_l.local_addr().unwrap());
    let config_path = config.write_in(dir);
    let text = std::fs::read_to_string(&config_path).unwrap();
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
        smtp: config.smtp_addr(),
        http: config.http_addr(),
        config_path,
    }
}

/// A daemon running inside the test process, in a temporary directory of its own.
pub struct TestDaemon {
    pub handle: Option<postern::Handle>,
    pub smtp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestDaemon {
    pub async fn start(config: ConfigBuilder) -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let Started {
            handle, smtp, http, ..
        } = start_in_process(dir.path(), config).await;
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
    /// Writes `config` (which names its listeners, e.g. `on_free_ports`) to
    /// `dir/postern.toml`, runs `postern serve` on it with stderr to `log`, and waits
    /// until it is ready.
    pub async fn spawn(dir: &Path, config: &ConfigBuilder, log: &Path) -> ChildDaemon {
        let config_path = config.write_in(dir);
        let (smtp, http) = (config.smtp_addr(), config.http_addr());
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

pub async fn wait_until(within: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
