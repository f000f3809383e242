//! `postern queue ...`, `postern send ...` and `postern route test|authorize`: admin and
//! Messaging API calls to the running daemon (SPEC 14, 15). Nothing here reads the store:
//! the daemon decides, the CLI asks and prints.

use crate::{admin_base, admin_call};
use clap::Subcommand;
use postern::config::Config;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum QueueAction {
    /// This node's queue, oldest first (a table; `--json` for the API's JSON).
    List {
        /// scheduled, ready, retry or held.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        asset: Option<String>,
        /// An address or a domain.
        #[arg(long)]
        recipient: Option<String>,
        /// Accepted at least this many seconds ago.
        #[arg(long)]
        older_than: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One transaction: recipients with their states, attempts, last reply, history.
    Show { tid: String },
    /// Due now.
    Retry { tid: String },
    /// Recipients not yet submitted end with 7592 "cancelled by operator".
    Cancel { tid: String },
    /// Never sent until released.
    Hold { tid: String },
    /// A held transaction, due now.
    Release { tid: String },
}

/// `postern queue ...`: one admin API call.
pub fn queue(config: &Config, action: QueueAction) -> ExitCode {
    let base = format!("{}/admin/queue", admin_base(config));
    let (path, verb) = match &action {
        QueueAction::List { .. } => (base.clone(), None),
        QueueAction::Show { tid } => (format!("{base}/{tid}"), None),
        QueueAction::Retry { tid } => (format!("{base}/{tid}/retry"), Some("retry")),
        QueueAction::Cancel { tid } => (format!("{base}/{tid}/cancel"), Some("cancel")),
        QueueAction::Hold { tid } => (format!("{base}/{tid}/hold"), Some("hold")),
        QueueAction::Release { tid } => (format!("{base}/{tid}/release"), Some("release")),
    };
    let table = matches!(action, QueueAction::List { json: false, .. });
    let result = admin_call(config, |client| match action {
        QueueAction::List {
            state,
            asset,
            recipient,
            older_than,
            limit,
            cursor,
            ..
        } => {
            let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            let optional = [
                ("state", state),
                ("asset", asset),
                ("recipient", recipient),
                ("older_than", older_than.map(|s| s.to_string())),
                ("cursor", cursor),
            ];
            q.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            client.get(&path).query(&q)
        }
        _ if verb.is_some() => client.post(&path),
        _ => client.get(&path),
    });
    match result {
        Some((status, body)) if status.is_success() => {
            match serde_json::from_str::<Value>(&body) {
                Ok(v) if table => print_queue(&v),
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
                Err(_) => println!("{body}"),
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

/// The queue listing as a table, then the cursor of the next page if there is one.
fn print_queue(v: &Value) {
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<28} {:<9} {:<12} {:>8} {:<24} RECIPIENTS / LAST REPLY",
        "TID", "STATE", "ASSET", "ATTEMPTS", "NEXT ATTEMPT"
    );
    for e in &entries {
        let recipients: Vec<&str> = e["recipients"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<28} {:<9} {:<12} {:>8} {:<24} {}",
            e["tid"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
            e["asset"].as_str().unwrap_or(""),
            e["attempts"].as_u64().unwrap_or(0),
            e["nextAttempt"].as_str().unwrap_or("-"),
            recipients.join(", ")
        );
        if let Some(reply) = e["lastReply"].as_str().filter(|r| !r.is_empty()) {
            println!("{:<28} {reply}", "");
        }
    }
    println!(
        "{} entr{}",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" }
    );
    if let Some(next) = v["next"].as_str() {
        println!("next page: --cursor {next}");
    }
}

/// `postern send`'s arguments (SPEC 14).
#[derive(clap::Args)]
pub struct SendArgs {
    #[arg(long)]
    from: String,
    /// A recipient (repeat for several; each is its own transaction).
    #[arg(long, required = true)]
    to: Vec<String>,
    #[arg(long)]
    subject: String,
    #[arg(long)]
    text: String,
    /// An HTML body from this file (the text is its plain alternative).
    #[arg(long)]
    html: Option<std::path::PathBuf>,
    /// An attachment: an http(s) URL the daemon fetches, or a local FILE served to it
    /// from loopback while this command waits (needs `[outbound] allow_private_targets`
    /// to allow 127.0.0.1; implies --wait).
    #[arg(long)]
    attach: Vec<String>,
    /// The sending service (default: the first in the config).
    #[arg(long)]
    service: Option<String>,
    /// Print each notification until every recipient has a final one.
    #[arg(long)]
    wait: bool,
    /// Seconds --wait waits at most (then exit 1).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// A local file `postern send` serves to the daemon: its URL path and bytes.
struct Served {
    name: String,
    mimetype: &'static str,
    bytes: Vec<u8>,
}

/// `postern send`: one message through the running daemon's Messaging API.
pub fn send(config: &Config, args: SendArgs) -> ExitCode {
    match run_send(config, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern: {e}");
            ExitCode::from(1)
        }
    }
}

fn run_send(config: &Config, args: SendArgs) -> Result<ExitCode, String> {
    let service = match &args.service {
        Some(id) => config.services.iter().find(|s| &s.id == id),
        None => config.services.first(),
    }
    .ok_or_else(|| match &args.service {
        Some(id) => format!("--service: no service \"{id}\" in the config"),
        None => "the config has no [[service]] to send as".to_string(),
    })?;
    let html = match &args.html {
        Some(p) => {
            Some(std::fs::read_to_string(p).map_err(|e| format!("--html {}: {e}", p.display()))?)
        }
        None => None,
    };
    let mut urls = Vec::new();
    let mut files = Vec::new();
    for a in &args.attach {
        if a.starts_with("https://") || a.starts_with("http://") {
            urls.push(a.clone());
        } else {
            files.push(read_attachment(a)?);
        }
    }
    if !files.is_empty() {
        let policy = postern::model::urls::Policy::new(&config.outbound.allow_private_targets)?;
        if !policy.permits(std::net::Ipv4Addr::LOCALHOST.into()) {
            return Err("--attach FILE: the daemon may not fetch from loopback; add \"127.0.0.1/32\" to [outbound] allow_private_targets, or give an https URL".into());
        }
    }
    let runtime = crate::runtime().ok_or("no async runtime")?;
    runtime.block_on(send_and_wait(config, service, &args, html, urls, files))
}

fn read_attachment(path: &str) -> Result<Served, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--attach {path}: {e}"))?;
    let p = std::path::Path::new(path);
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "attachment".into());
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let mimetype = match ext.as_str() {
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "txt" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    };
    Ok(Served {
        name,
        mimetype,
        bytes,
    })
}

/// Serves `files` on a loopback port until the returned task is dropped; their URLs.
async fn serve_files(
    files: Vec<Served>,
) -> Result<(Vec<Value>, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("--attach: cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut refs = Vec::new();
    let mut router = axum::Router::new();
    for (i, f) in files.into_iter().enumerate() {
        refs.push(serde_json::json!({
            "mimetype": f.mimetype,
            "name": f.name,
            "mediaUrl": format!("http://{addr}/{i}"),
        }));
        let (mimetype, bytes) = (f.mimetype, f.bytes);
        router = router.route(
            &format!("/{i}"),
            axum::routing::get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, mimetype)], bytes)
            }),
        );
    }
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((refs, task))
}

async fn send_and_wait(
    config: &Config,
    service: &postern::config::ServiceConfig,
    args: &SendArgs,
    html: Option<String>,
    urls: Vec<String>,
    files: Vec<Served>,
) -> Result<ExitCode, String> {
    let wait = args.wait || !files.is_empty();
    let (mut attachments, server) = serve_files(files).await?;
    for u in urls {
        let name = u
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("attachment");
        attachments.push(serde_json::json!({
            "mimetype": "application/octet-stream", "name": name, "mediaUrl": u,
        }));
    }
    let mut content = serde_json::json!({
        "type": if html.is_some() { "html" } else { "text" },
        "subject": args.subject,
        "text": args.text,
        "attachments": attachments,
    });
    if let Some(h) = html {
        content["html"] = h.into();
    }
    let body = serde_json::json!({
        "channel": "email",
        "from": args.from,
        "to": args.to.iter().map(|t| serde_json::json!({"email": [t]})).collect::<Vec<_>>(),
        "content": content,
    });
    let api = admin_base(config);
    let client = reqwest::Client::new();
    let key = service.key.expose();
    let resp = client
        .post(format!("{api}/v2/messages"))
        .header("key", key)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach the daemon at {api}: {e}"))?;
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("the daemon answered {status}: {answer}"));
    }
    let tids: Vec<String> = answer["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|x| x["tid"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for t in &tids {
        println!("{t}");
    }
    let code = if wait {
        let ses = ses_route(config, service, &args.from);
        watch(&client, &api, key, &tids, ses, args.timeout).await
    } else {
        ExitCode::SUCCESS
    };
    server.abort();
    Ok(code)
}

/// Whether mail from `from` leaves through an SES route (then 7501 is not final).
fn ses_route(config: &Config, service: &postern::config::ServiceConfig, from: &str) -> bool {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    service
        .assets
        .iter()
        .filter_map(|id| config.asset(id))
        .find(|a| a.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)))
        .and_then(|a| a.route.as_ref())
        .is_some_and(|r| matches!(r, postern::config::RouteConfig::Ses(_)))
}

/// Polls each transaction's status, printing every new event, until every recipient has
/// a final code (7501 counts for an smtp route) or `timeout` seconds pass.
async fn watch(
    client: &reqwest::Client,
    api: &str,
    key: &str,
    tids: &[String],
    ses: bool,
    timeout: u64,
) -> ExitCode {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    let mut printed = std::collections::HashMap::<&str, usize>::new();
    loop {
        let mut all_final = true;
        for tid in tids {
            let status: Value = match client
                .get(format!("{api}/v2/messages/{tid}"))
                .header("key", key)
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let events = status["events"].as_array().cloned().unwrap_or_default();
            let seen = printed.entry(tid.as_str()).or_default();
            for e in events.iter().skip(*seen) {
                println!(
                    "{tid} {} {} {} {} {}",
                    e["timeStamp"].as_str().unwrap_or(""),
                    e["destination"].as_str().unwrap_or(""),
                    e["code"].as_str().unwrap_or(""),
                    e["description"].as_str().unwrap_or(""),
                    e["additionalInfo"].as_str().unwrap_or("")
                );
            }
            *seen = (*seen).max(events.len());
            let recipients = status["recipients"].as_array().cloned().unwrap_or_default();
            all_final &= !recipients.is_empty()
                && recipients.iter().all(|r| match r["code"].as_str() {
                    Some("7501") => !ses,
                    Some(_) => true,
                    None => false,
                });
        }
        if all_final {
            return ExitCode::SUCCESS;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("postern: --timeout: not every recipient has a final notification yet");
            return ExitCode::from(1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `postern route test`: the running daemon's route connects and authenticates (with its
/// stored OAuth2 grant), sends nothing; exit 1 when it fails or needs re-authorization.
/// Without a running daemon, a route of its own does the same (not for OAuth2, whose
/// grant only the daemon's store holds).
pub fn route_test(config: &Config, asset: &str) -> ExitCode {
    let Some(route) = config.asset(asset).and_then(|a| a.route.clone()) else {
        eprintln!("postern: asset {asset} has no route in the configuration");
        return ExitCode::from(1);
    };
    let url = format!("{}/admin/routes/{asset}/test", admin_base(config));
    let answer = crate::runtime().and_then(|rt| {
        rt.block_on(async {
            let client = reqwest::Client::new();
            let resp = client
                .post(&url)
                .bearer_auth(config.admin.token.expose())
                .send()
                .await
                .ok()?;
            Some((resp.status(), resp.text().await.ok()?))
        })
    });
    let result = match answer {
        Some((status, body)) if status.is_success() => {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            match v["ok"].as_bool() {
                Some(true) => Ok(v["report"].as_str().unwrap_or_default().to_string()),
                _ => Err(v["error"].as_str().unwrap_or(&body).to_string()),
            }
        }
        Some((status, body)) => Err(format!("the daemon answered {status}: {body}")),
        None => {
            let Some(rt) = crate::runtime() else {
                return ExitCode::from(1);
            };
            eprintln!(
                "postern: no daemon answers at {}: testing from here",
                admin_base(config)
            );
            let route = postern::outbound::route::Route::new(&route, &config.server.hostname);
            rt.block_on(route.test())
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postern: route test failed: {e}");
            ExitCode::from(1)
        }
    }
}

/// How long `postern route authorize` waits: the flow's lifetime, and a little more for
/// the code's exchange.
const AUTHORIZE_WAIT: std::time::Duration = std::time::Duration::from_secs(630);

/// `postern route authorize ASSET [--device]` (SPEC 15): the running daemon starts the
/// flow; this prints the consent URL (or the device code) and polls the flow until it is
/// authorized (exit 0) or failed (exit 1).
pub fn route_authorize(config: &Config, asset: &str, device: bool) -> ExitCode {
    let base = format!("{}/admin/routes/{asset}/authorize", admin_base(config));
    let body = serde_json::json!({ "device": device }).to_string();
    let started = admin_call(config, |c| {
        c.post(&base)
            .header("content-type", "application/json")
            .body(body)
    });
    let v: Value = match started {
        Some((status, body)) if status.is_success() => {
            serde_json::from_str(&body).unwrap_or_default()
        }
        Some((status, body)) => {
            eprintln!("postern: authorization not started: the daemon answered {status}: {body}");
            return ExitCode::from(1);
        }
        None => return ExitCode::from(1),
    };
    let flow = v["flow"].as_str().unwrap_or_default().to_string();
    if device {
        println!(
            "On any device, open {} and enter the code {}",
            v["verificationUri"].as_str().unwrap_or_default(),
            v["userCode"].as_str().unwrap_or_default()
        );
    } else {
        println!("Open this address in a browser and grant access (it expires in 10 minutes):");
        println!("  {}", v["url"].as_str().unwrap_or_default());
    }
    println!("Waiting for the authorization...");
    let status_url = format!("{base}/{flow}");
    let deadline = std::time::Instant::now() + AUTHORIZE_WAIT;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let Some((status, body)) = admin_call(config, |c| c.get(&status_url)) else {
            continue;
        };
        if !status.is_success() {
            eprintln!("postern: authorization failed: the daemon answered {status}: {body}");
            return ExitCode::from(1);
        }
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        match v["status"].as_str() {
            Some("authorized") => {
                println!(
                    "Authorized: the route of {asset} has a new refresh token in postern's store."
                );
                return ExitCode::SUCCESS;
            }
            Some("failed") => {
                eprintln!(
                    "postern: authorization failed: {}",
                    v["error"].as_str().unwrap_or("no reason given")
                );
                return ExitCode::from(1);
            }
            _ => {}
        }
    }
    eprintln!("postern: authorization failed: nothing came back within 10 minutes");
    ExitCode::from(1)
}
