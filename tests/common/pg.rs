//! A private PostgreSQL server for the cluster tests (SPEC 13), started by the test and
//! gone with it: `initdb` into a temporary directory (trust authentication, superuser
//! `postgres`, UTF8, C locale, no sync), `postgres` listening on 127.0.0.1 only, on a
//! port free when it started, its unix socket in that directory, fsync off; one database
//! `postern`.
//!
//! The server binaries are `$POSTERN_TEST_PG_BIN/initdb` when that variable names a
//! directory, else the `initdb` on PATH (its real directory, symlinks followed), else the
//! newest `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package, which
//! `scripts/test` installs). initdb and postgres refuse to run as root: when the tests run
//! as root (CI does), they run as the `postgres` OS user (created as a system user if
//! missing), through `runuser` (or `su`), and the directory is chowned to that user.
//!
//! The API is async (tokio processes), except `Drop`, which stops the server with
//! `pg_ctl stop -m immediate` and removes the directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to start or stop.
const WITHIN: Duration = Duration::from_secs(60);

/// A running (or stopped, see `stop`) PostgreSQL server of one test.
pub struct PgServer {
    /// The directory of initdb, pg_ctl and postgres.
    bin: PathBuf,
    /// The OS user the server runs as when the tests run as root.
    run_as: Option<String>,
    port: u16,
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: tempfile::TempDir,
}

impl PgServer {
    /// Creates a cluster in a new temporary directory, starts it on a free loopback port,
    /// waits until it accepts connections and creates the database `postern`.
    pub async fn start() -> PgServer {
        let bin = server_binaries();
        let run_as = (effective_uid() == Some(0)).then(|| ensure_os_user("postgres"));
        // As root, somewhere the postgres user can reach (TMPDIR may be under /root).
        let base = match run_as {
            Some(_) => PathBuf::from("/tmp"),
            None => std::env::temp_dir(),
        };
        let dir = tempfile::Builder::new()
            .prefix("postern-pg-")
            .tempdir_in(base)
            .expect("temporary directory for PostgreSQL");
        if let Some(user) = &run_as {
            let (uid, gid) = (id(&["-u", user]), id(&["-g", user]));
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("chown the PostgreSQL directory");
        }
        let mut pg = PgServer {
            bin,
            run_as,
            port: 0,
            dir,
        };
        pg.initdb().await;
        // A port free when we looked may be taken before postgres binds it: try another.
        for attempt in 1.. {
            pg.port = free_port();
            match pg.launch().await {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("could not bind") => continue,
                Err(log) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        pg.wait_ready().await;
        pg.psql_in("postgres", "CREATE DATABASE postern")
            .await
            .unwrap_or_else(|e| panic!("create database postern: {e}"));
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/postern`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postern", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory (cluster in `data/`, log in `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: clients are disconnected, data kept); returns when
    /// it has exited and its port is closed.
    pub async fn stop(&self) {
        let out = self
            .run_server_tool("pg_ctl", &self.pg_ctl_args(&["stop", "-m", "fast"]))
            .await;
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + WITHIN;
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "port {} still open", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the stopped server again on the same port with the same data.
    pub async fn start_again(&self) {
        if let Err(log) = self.launch().await {
            panic!("PostgreSQL did not start again:\n{log}");
        }
        self.wait_ready().await;
    }

    /// Runs `sql` with psql in database `postern`; its unaligned, tuples-only output
    /// (trimmed), or psql's error.
    pub async fn psql(&self, sql: &str) -> Result<String, String> {
        self.psql_in("postern", sql).await
    }

    async fn psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let out = tokio::process::Command::new(self.client_tool("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-w"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(text(&out))
        }
    }

    async fn initdb(&self) {
        let data = self.data();
        let args = [
            "-D",
            path_str(&data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ];
        let out = self.run_server_tool("initdb", &args).await;
        assert!(out.status.success(), "initdb: {}", text(&out));
    }

    /// `pg_ctl start`, waiting (`-w`, its own condition loop with a timeout) until the
    /// server is ready or has failed; on failure, the log.
    async fn launch(&self) -> Result<(), String> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {sock} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB \
             -c max_connections=200",
            port = self.port,
            sock = path_str(self.dir()),
        );
        let log = self.dir().join("postgres.log");
        let args = self.pg_ctl_args(&["start", "-l", path_str(&log), "-o", &options]);
        let out = self.run_server_tool("pg_ctl", &args).await;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}\n{}", text(&out), self.log()))
        }
    }

    /// Polls `pg_isready` on the TCP port until the server accepts connections.
    async fn wait_ready(&self) {
        let port = self.port.to_string();
        let deadline = Instant::now() + WITHIN;
        loop {
            let ready = tokio::process::Command::new(self.client_tool("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-t", "1"])
                .args(["-d", "postgres"])
                .stdin(Stdio::null())
                .output()
                .await
                .expect("run pg_isready");
            if ready.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL not ready on port {port} within {WITHIN:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn data(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// `-D data -w -t SECS` followed by `rest`.
    fn pg_ctl_args(&self, rest: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-D".into(),
            path_str(&self.data()).into(),
            "-w".into(),
            "-t".into(),
            WITHIN.as_secs().to_string(),
        ];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    }

    async fn run_server_tool(&self, name: &str, args: &[impl AsRef<str>]) -> Output {
        tokio::process::Command::from(self.server_command(name, args))
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {name}: {e}"))
    }

    /// `bin/name args`, as the server's OS user when there is one, in the server's
    /// directory, stdin from /dev/null.
    fn server_command(&self, name: &str, args: &[impl AsRef<str>]) -> std::process::Command {
        let program = self.bin.join(name);
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let mut cmd = match &self.run_as {
            None => {
                let mut c = std::process::Command::new(&program);
                c.args(&args);
                c
            }
            Some(user) if on_path("runuser") => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program).args(&args);
                c
            }
            Some(user) => {
                let line = std::iter::once(path_str(&program))
                    .chain(args.iter().copied())
                    .map(shell_quote)
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = std::process::Command::new("su");
                c.args(["-s", "/bin/sh", user, "-c", &line]);
                c
            }
        };
        cmd.current_dir(self.dir()).stdin(Stdio::null());
        cmd
    }

    /// A client program (psql, pg_isready): beside the server binaries, else on PATH.
    fn client_tool(&self, name: &str) -> PathBuf {
        let beside = self.bin.join(name);
        if beside.is_file() {
            beside
        } else {
            PathBuf::from(name)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let args = self.pg_ctl_args(&["stop", "-m", "immediate"]);
            let _ = self.server_command("pg_ctl", &args).output();
        }
        // The TempDir field removes the directory (root, or its owner, may).
    }
}

/// The directory of initdb, pg_ctl and postgres (see the module comment).
fn server_binaries() -> PathBuf {
    let has_server = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("POSTERN_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            has_server(&dir),
            "POSTERN_TEST_PG_BIN={dir:?} lacks initdb/pg_ctl/postgres"
        );
        return dir;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("initdb"))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .filter(|d| has_server(d));
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install Debian's \
             `postgresql` package (scripts/test does), put initdb on PATH, or set \
             POSTERN_TEST_PG_BIN"
        )
    })
}

/// `id ARGS` as a number (`id -u`, `id -g USER`); None when id fails.
fn id_of(args: &[&str]) -> Option<u32> {
    let out = std::process::Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn id(args: &[&str]) -> u32 {
    id_of(args).unwrap_or_else(|| panic!("id {args:?} failed"))
}

fn effective_uid() -> Option<u32> {
    id_of(&["-u"])
}

/// The OS user `name`, created as a system user when missing (another test may be
/// creating it at the same moment: only its existence afterwards counts).
fn ensure_os_user(name: &str) -> String {
    if id_of(&["-u", name]).is_none() {
        let _ = std::process::Command::new("useradd")
            .args(["--system", "--user-group", "--no-create-home"])
            .args([
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output();
    }
    assert!(
        id_of(&["-u", name]).is_some(),
        "running as root: PostgreSQL needs the OS user {name}, and useradd could not create it"
    );
    name.to_string()
}

/// A loopback TCP port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A finished command's status, stdout and stderr, for assertion messages.
fn text(out: &Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A row lock on one transaction in the database, held until released: the owner's
/// mirror task cannot copy that transaction (nor, in the same pass, its route ids)
/// meanwhile; readers are not held.
pub struct RowLock {
    client: tokio_postgres::Client,
    conn: tokio::task::JoinHandle<()>,
}

impl RowLock {
    pub async fn take(url: &str, tid: &str) -> RowLock {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        let conn = tokio::spawn(async move {
            let _ = connection.await;
        });
        client.batch_execute("BEGIN").await.unwrap();
        let rows = client
            .query(
                "SELECT tid FROM transactions WHERE tid = $1 FOR UPDATE",
                &[&tid],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "the database holds {tid}");
        RowLock { client, conn }
    }

    /// Lock requests other sessions are waiting on now (for this row, or for a node's
    /// lock on a tid).
    pub async fn waiters(&self) -> i64 {
        self.client
            .query_one("SELECT count(*) FROM pg_locks WHERE NOT granted", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn release(self) {
        self.client.batch_execute("ROLLBACK").await.unwrap();
        drop(self.client);
        let _ = self.conn.await;
    }
}
