//! The `postern` command line: parse arguments, load the config, set up logging, run.
//! Exit codes: 0 ok, 1 failure, 2 usage (clap's own errors exit 2 as well), 75 the store
//! failed and cannot recover in process (systemd restarts the daemon).

mod cli;

use clap::{Parser, Subcommand};
use postern::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Self-hosted transactional mail daemon: inbound SMTP to JSON webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "POSTERN_CONFIG",
        default_value = "/etc/postern/postern.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd Type=notify).
    Serve,
    /// Validate the configuration; print problems as file:line and exit 1 on error.
    CheckConfig,
    /// DNS records of a sending/receiving domain.
    Domain {
        #[command(subcommand)]
        action: DomainAction,
    },
    /// The suppression list of the running daemon (through its admin API).
    Suppression {
        #[command(subcommand)]
        action: SuppressionAction,
    },
    /// Smarthost routes.
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
    /// Send one message through the running daemon's Messaging API; prints its tid(s).
    Send(cli::SendArgs),
    /// The running daemon's outbound queue (through its admin API).
    Queue {
        #[command(subcommand)]
        action: cli::QueueAction,
    },
    /// Several nodes on one PostgreSQL database (SPEC 13).
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// With this node stopped: apply the migrations and copy its shared state
    /// (suppressions, consent, frequency counters, templates, domain verdicts, the link
    /// key, DKIM keys, transactions with their status and history) from its data_dir into
    /// the empty database of the config's [cluster] table.
    Adopt,
}

#[derive(Subcommand)]
enum DomainAction {
    /// Print the records to publish: verification TXT, DKIM TXT, SPF, DMARC, MX.
    Records {
        domain: String,
        /// `table` or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Look the records up (through the running daemon, with its resolver) and report each
    /// as ok / missing / wrong; exit 0 only when the domain is verified.
    Verify {
        domain: String,
        /// `table` or `json`.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Start a DKIM key rotation: a new selector and key, published at once with the
    /// current one, signing after the grace period; the old key stays published for one
    /// more grace period. Works with the daemon running or stopped.
    RotateDkim {
        domain: String,
        /// Time for DNS to carry the new record before it signs: e.g. 48h, 90m, 0s.
        #[arg(long, default_value = "48h", value_parser = parse_duration)]
        grace: Duration,
        /// The new selector (default: the current one's number plus one).
        #[arg(long)]
        selector: Option<String>,
    },
}

/// "48h", "90m", "30s", "7d" or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration like 48h, 90m, 30s or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("\"{s}\": unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[derive(Subcommand)]
enum SuppressionAction {
    /// List active entries (optionally of one asset).
    List {
        #[arg(long)]
        asset: Option<String>,
    },
    /// Suppress an address: reason unsubscribed, bounced or complained.
    Add {
        asset: String,
        address: String,
        reason: String,
    },
    /// Remove an address from an asset's list.
    Remove { asset: String, address: String },
    /// Import a CSV file (asset_id,address,reason[,since,expires]); all lines or none.
    Import { file: PathBuf },
    /// Print the list as CSV.
    Export {
        #[arg(long)]
        asset: Option<String>,
    },
}

#[derive(Subcommand)]
enum RouteAction {
    /// Connect and authenticate to an asset's smarthost; report its answer; send nothing.
    Test { asset: String },
    /// Grant the asset's OAuth2 route access to its mailbox (SPEC 15): prints the consent
    /// URL and waits (up to 10 minutes) until the provider's callback completes it.
    Authorize {
        asset: String,
        /// The device-code flow: a code to enter on any device (Microsoft, or device_url).
        #[arg(long)]
        device: bool,
    },
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} asset(s), {} service(s))",
                path.display(),
                c.assets.len(),
                c.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config;
    match cli.command {
        Command::Serve => serve(path),
        Command::CheckConfig => check_config(&path),
        Command::Domain { action } => with_config(&path, |config| domain(config, action)),
        Command::Suppression { action } => with_config(&path, |config| suppression(config, action)),
        Command::Queue { action } => with_config(&path, |config| cli::queue(config, action)),
        Command::Send(args) => with_config(&path, |config| cli::send(config, args)),
        Command::Route {
            action: RouteAction::Test { asset },
        } => with_config(&path, |config| cli::route_test(config, &asset)),
        Command::Route {
            action: RouteAction::Authorize { asset, device },
        } => with_config(&path, |config| cli::route_authorize(config, &asset, device)),
        Command::Cluster {
            action: ClusterAction::Adopt,
        } => with_config(&path, |config| exit(cluster_adopt(config))),
    }
}

/// Runs a command that needs a valid configuration (and never starts the daemon).
fn with_config(path: &std::path::Path, command: impl FnOnce(&Config) -> ExitCode) -> ExitCode {
    match Config::load(path) {
        Ok(config) => command(&config),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The result of a command that prints its output itself: 0, or 1 after printing the error.
fn exit(result: Result<(), impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::from(1)
        }
    }
}

/// `postern domain ...`.
fn domain(config: &Config, action: DomainAction) -> ExitCode {
    match action {
        DomainAction::Records { domain, format } => exit(domain_records(config, &domain, &format)),
        DomainAction::Verify { domain, format } => domain_verify(config, &domain, &format),
        DomainAction::RotateDkim {
            domain,
            grace,
            selector,
        } => exit(rotate_dkim(config, &domain, grace, selector.as_deref())),
    }
}

/// `postern domain records`: the records to publish, as a table or JSON.
fn domain_records(
    config: &Config,
    domain: &str,
    format: &str,
) -> Result<(), postern::outbound::domains::DomainError> {
    let records = postern::outbound::domains::records(config, domain)?;
    if format == "json" {
        println!(
            "{}",
            serde_json::to_string_pretty(&records).unwrap_or_default()
        );
    } else {
        print!("{}", postern::outbound::domains::table(&records));
    }
    Ok(())
}

/// `postern domain verify`: the running daemon looks the records up; exit 0 only when
/// the domain is verified.
fn domain_verify(config: &Config, domain: &str, format: &str) -> ExitCode {
    let url = format!("{}/admin/domains/{domain}/verify", admin_base(config));
    let Some((status, body)) = admin_call(config, |c| c.post(&url)) else {
        return ExitCode::from(1);
    };
    let parsed: Option<postern::outbound::domains::Verification> = serde_json::from_str(&body).ok();
    match parsed {
        Some(v) if status.is_success() => {
            if format == "json" {
                println!("{body}");
            } else {
                print!("{}", postern::outbound::domains::report(&v));
            }
            if v.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        _ => {
            eprintln!("postern: the daemon answered {status}: {body}");
            ExitCode::from(1)
        }
    }
}

/// `postern domain rotate-dkim`: starts the rotation, then prints the new selector and
/// the DKIM records to publish now.
fn rotate_dkim(
    config: &Config,
    domain: &str,
    grace: Duration,
    selector: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = postern::outbound::dkim::rotate_domain(config, domain, selector, grace)?;
    if let Some(s) = started.rotation.selectors.last() {
        println!(
            "{}: new selector {} signs from {} (after {}s); publish its record now:",
            started.domain,
            s.selector,
            postern::model::time::timestamp(s.signing_from * 1000),
            grace.as_secs()
        );
    }
    let dkim: Vec<_> = postern::outbound::domains::records(config, &started.domain)?
        .into_iter()
        .filter(|r| r.purpose.starts_with("dkim"))
        .collect();
    print!("{}", postern::outbound::domains::table(&dkim));
    Ok(())
}

/// `postern cluster adopt`: prints the rows copied per table.
fn cluster_adopt(config: &Config) -> Result<(), String> {
    let runtime = runtime().ok_or("cannot start the async runtime")?;
    let copied = runtime.block_on(postern::cluster_adopt(config))?;
    for (table, rows) in copied {
        println!("{table}: {rows}");
    }
    println!("adopted: start this node and the others with the same [cluster] table");
    Ok(())
}

/// Exit status when the store cannot recover in process (EX_TEMPFAIL).
const EXIT_STORE: i32 = 75;

fn serve(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("postern: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(config: Config, path: PathBuf) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a SIGHUP or SIGTERM that arrives right after READY=1 must find them
    // installed, or its default action would kill the daemon.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let listeners = postern::Listeners::bind(&config).await?;
    let handle = postern::start(config, Some(path), listeners).await?;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    spawn_watchdog();

    let health = handle.daemon.health.clone();
    loop {
        tokio::select! {
            _ = health.exit_requested() => {
                // The store cannot recover in this process (sled stays poisoned after a
                // failed write): no drain, no flush (either could block on it); exit
                // non-zero so systemd (Restart=on-failure) starts a fresh process, which
                // recovers the store from disk.
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                eprintln!("postern: the store cannot write; exiting for a restart");
                std::process::exit(EXIT_STORE);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                if let Err(e) = handle.daemon.reload() {
                    tracing::error!("reload refused, old configuration kept: {e}");
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("shutting down: draining SMTP sessions and webhooks");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    handle.shutdown().await;
    Ok(())
}

/// A single-threaded runtime for a command's one network exchange, or `None` after
/// saying why there is none.
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("postern: {e}"))
        .ok()
}

/// The running daemon's base URL (its HTTP listener; a wildcard address means loopback).
fn admin_base(config: &Config) -> String {
    let mut addr = config.http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

/// One admin API call to the running daemon with the configured token: the status and
/// body, or `None` after saying why it could not be made.
fn admin_call(
    config: &Config,
    build: impl FnOnce(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Option<(reqwest::StatusCode, String)> {
    let runtime = runtime()?;
    let client = reqwest::Client::new();
    let request = build(&client).bearer_auth(config.admin.token.expose());
    let result = runtime.block_on(async {
        let resp = request.send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    match result {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "postern: cannot reach the daemon at {}: {e}",
                admin_base(config)
            );
            None
        }
    }
}

/// `postern suppression ...`: one admin API call to the running daemon.
fn suppression(config: &Config, action: SuppressionAction) -> ExitCode {
    let base = format!("{}/admin/suppressions", admin_base(config));
    let csv = match &action {
        SuppressionAction::Import { file } => match std::fs::read(file) {
            Ok(body) => body,
            Err(e) => {
                eprintln!("postern: {}: {e}", file.display());
                return ExitCode::from(1);
            }
        },
        _ => Vec::new(),
    };
    let result = admin_call(config, |client| match action {
        SuppressionAction::List { asset } => client.get(&base).query(&[("asset", asset)]),
        SuppressionAction::Export { asset } => client
            .get(format!("{base}/export"))
            .query(&[("asset", asset)]),
        SuppressionAction::Add {
            asset,
            address,
            reason,
        } => client
            .post(&base)
            .json(&serde_json::json!({"assetId": asset, "address": address, "reason": reason})),
        SuppressionAction::Remove { asset, address } => {
            client.delete(format!("{base}/{asset}/{address}"))
        }
        SuppressionAction::Import { .. } => client
            .post(format!("{base}/import"))
            .header("content-type", "text/csv")
            .body(csv),
    });
    match result {
        Some((status, body)) if status.is_success() => {
            print!("{body}");
            if !body.ends_with('\n') && !body.is_empty() {
                println!();
            }
            ExitCode::SUCCESS
        }
        Some((status, body)) => {
            eprintln!("postern: the daemon answered {status}: {body}");
            ExitCode::from(1)
        }
        None => ExitCode::from(1),
    }
}

/// Pings systemd's watchdog at half its interval when `WatchdogSec=` is set.
fn spawn_watchdog() {
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let every = Duration::from_micros(usec / 2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
        });
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(config.log.level.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}
