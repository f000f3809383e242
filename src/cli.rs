//! `postern queue ...` and `postern send ...`: admin and Messaging API calls to the
//! running daemon (SPEC 14). Nothing here reads the store: the daemon decides, the CLI
//! asks and prints.

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
