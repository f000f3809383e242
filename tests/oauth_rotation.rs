//! XOAUTH2 with a token endpoint that rotates refresh tokens on every use and refuses the
//! old one (as Microsoft's does): mail keeps flowing across refreshes and across a daemon
//! restart (the newest refresh token was stored). Once the store holds a token, the
//! configured `route.refresh_token` is only ever the first (SPEC 15): a grant the provider
//! refuses defers mail and flags the route, and another token in the file changes nothing.

mod common;
#[path = "common/pg.rs"]
mod pg;

use axum::extract::State;
use axum::routing::post;
use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);

/// The identity provider: one valid refresh token at a time.
#[derive(Default)]
struct Idp {
    /// The refresh token it accepts next.
    current: String,
    /// Access tokens issued, in order; the smarthost accepts only the newest.
    issued: Vec<String>,
    /// Refresh tokens presented, accepted or not.
    presented: Vec<String>,
    refused: usize,
    /// Token requests being answered now, and the most there ever were at once.
    in_flight: usize,
    max_in_flight: usize,
}

type Shared = Arc<Mutex<Idp>>;

async fn token(State(idp): State<Shared>, body: String) -> axum::response::Response {
    {
        let mut idp = idp.lock().unwrap();
        idp.in_flight += 1;
        idp.max_in_flight = idp.max_in_flight.max(idp.in_flight);
    }
    // A provider takes a while: long enough for overlapping refreshes to be seen.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let answer = redeem(&idp, &body);
    idp.lock().unwrap().in_flight -= 1;
    answer
}

fn redeem(idp: &Shared, body: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let mut idp = idp.lock().unwrap();
    idp.presented.push(presented.clone());
    if form.get("grant_type").map(String::as_str) != Some("refresh_token")
        || presented != idp.current
    {
        idp.refused += 1;
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_grant", "error_description": "AADSTS70000: refresh token was already used"})),
        )
            .into_response();
    }
    let n = idp.issued.len() + 1;
    let (access, refresh) = (format!("at-{n}"), format!("{presented}+{n}"));
    idp.issued.push(access.clone());
    idp.current = refresh.clone();
    // expires_in 1: below the route's one-minute margin, so every connection refreshes.
    axum::Json(json!({"token_type": "Bearer", "access_token": access, "refresh_token": refresh, "expires_in": 1}))
        .into_response()
}

async fn start_idp(first: &str) -> (Shared, SocketAddr) {
    let idp: Shared = Arc::new(Mutex::new(Idp {
        current: first.into(),
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route("/token", post(token))
        .with_state(idp.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (idp, addr)
}

/// A smarthost offering only AUTH XOAUTH2, accepting only the newest access token, and
/// closing the connection after each message (so each message connects, and refreshes).
/// Records the bearer token each accepted message came with.
async fn start_smarthost(idp: Shared) -> (Arc<Mutex<Vec<String>>>, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let rec = accepted.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            let (idp, rec) = (idp.clone(), rec.clone());
            tokio::spawn(async move {
                let _ = session(sock, idp, rec).await;
            });
        }
    });
    (accepted, addr)
}

async fn session(
    sock: tokio::net::TcpStream,
    idp: Shared,
    accepted: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 oauth.test ESMTP\r\n").await?;
    let mut bearer: Option<String> = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-oauth.test\r\n250-AUTH XOAUTH2\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("AUTH XOAUTH2") {
            let b64 = line.split_whitespace().nth(2).unwrap_or("");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default();
            let newest = idp.lock().unwrap().issued.last().cloned();
            let token = decoded
                .split('\x01')
                .find_map(|p| p.strip_prefix("auth=Bearer "))
                .map(str::to_string);
            if token.is_some() && token == newest {
                bearer = token;
                b"235 2.7.0 Accepted\r\n"
            } else {
                b"535 5.7.3 Authentication unsuccessful\r\n"
            }
        } else if bearer.is_none() {
            b"530 5.7.0 Authentication required\r\n"
        } else if upper.starts_with("MAIL FROM:") || upper.starts_with("RCPT TO:") {
            b"250 2.1.0 OK\r\n"
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            loop {
                let mut buf = Vec::new();
                if r.read_until(b'\n', &mut buf).await? == 0 {
                    return Ok(());
                }
                if buf == b".\r\n" {
                    break;
                }
            }
            accepted
                .lock()
                .unwrap()
                .push(bearer.clone().unwrap_or_default());
            w.write_all(b"250 2.0.0 queued\r\n").await?;
            return Ok(()); // one message per connection
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            b"250 2.0.0 OK\r\n"
        };
        w.write_all(reply).await?;
    }
}

struct Daemon {
    handle: postern::Handle,
    api: String,
}

async fn start(
    dir: &std::path::Path,
    hooks: &Receiver,
    relay: SocketAddr,
    idp: SocketAddr,
    refresh: &str,
) -> Daemon {
    let route = Route::smtp(relay.port()).oauth2(&format!("http://{idp}/token"), refresh);
    let started = start_in_process(dir, ConfigBuilder::outbound(&hooks.url(""), route)).await;
    Daemon {
        handle: started.handle,
        api: format!("http://{}", started.http),
    }
}

/// Submits one message and waits for its notification; returns its code.
async fn send_one(d: &Daemon, hooks: &Receiver, to: &str) -> String {
    let before = hooks.delivered().len();
    submit(d, to).await;
    let hooks = hooks.wait_for_count(before + 1, WAIT).await;
    let note: Value = hooks[before].json();
    note["deliveryInfoNotification"]["deliveryInfo"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn rotated_refresh_tokens_keep_mail_flowing_across_refreshes_and_restarts() {
    let (idp, idp_addr) = start_idp("r0").await;
    let (accepted, relay) = start_smarthost(idp.clone()).await;
    let hooks = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();

    // Three messages, three connections, three refreshes: each uses the token the one
    // before it was given.
    let d = start(dir.path(), &hooks, relay, idp_addr, "r0").await;
    for i in 0..3 {
        assert_eq!(
            send_one(&d, &hooks, &format!("ann{i}@example.org")).await,
            "7501"
        );
    }
    d.handle.shutdown().await;
    {
        let idp = idp.lock().unwrap();
        assert_eq!(idp.presented, ["r0", "r0+1", "r0+1+2"]);
        assert_eq!(idp.refused, 0);
    }
    assert_eq!(*accepted.lock().unwrap(), ["at-1", "at-2", "at-3"]);

    // Restarted with the same configuration: the configured r0 is dead, the stored one
    // carries on.
    let d = start(dir.path(), &hooks, relay, idp_addr, "r0").await;
    assert_eq!(send_one(&d, &hooks, "bob@example.org").await, "7501");
    d.handle.shutdown().await;
    {
        let idp = idp.lock().unwrap();
        assert_eq!(idp.presented.last().unwrap(), "r0+1+2+3");
        assert_eq!(
            idp.refused, 0,
            "the dead configured token was not presented"
        );
    }

    // The provider revoked the grant. A new token in the file does not replace the
    // store's (only `postern route authorize` does): mail is deferred, not bounced, the
    // route is flagged, and the provider is asked once, not once per message.
    idp.lock().unwrap().current = "fresh".into();
    let d = start(dir.path(), &hooks, relay, idp_addr, "fresh").await;
    let before = hooks.delivered().len();
    for to in ["carol@example.org", "dave@example.org"] {
        submit(&d, to).await;
    }
    let http = reqwest::Client::new();
    wait_until(
        WAIT,
        "/readyz names the route needing re-authorization",
        async || {
            let r = http.get(format!("{}/readyz", d.api)).send().await.unwrap();
            r.status() == 503 && {
                let body = r.text().await.unwrap();
                body.contains("a_out") && body.contains("needs re-authorization")
            }
        },
    )
    .await;
    wait_until(WAIT, "both messages deferred", async || {
        let q: Value = admin_json(&http, format!("{}/admin/queue?state=retry", d.api)).await;
        q["entries"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    let metrics = http
        .get(format!("{}/metrics", d.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("postern_route_needs_authorization{asset=\"a_out\"} 1"),
        "{metrics}"
    );
    d.handle.shutdown().await;
    let idp = idp.lock().unwrap();
    assert_eq!(
        idp.presented.last().unwrap(),
        "r0+1+2+3+4",
        "the stored token was presented"
    );
    assert_eq!(idp.refused, 1, "asked once for two messages");
    assert_eq!(hooks.delivered().len(), before, "nothing bounced");
    assert_eq!(accepted.lock().unwrap().len(), 4);
}

/// Submits one message; 202.
async fn submit(d: &Daemon, to: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v2/messages", d.api))
        .header("key", "key-a")
        .json(&json!({
            "channel": "email",
            "from": "news@example.test",
            "to": [{"email": [to]}],
            "content": {"type": "text", "subject": "Hello", "text": "Hi"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

/// SPEC 15 in a cluster: two nodes share one grant on PostgreSQL. Every message makes a
/// refresh (a fresh connection, a one-second access token), on both nodes at once, and
/// the provider rotates the refresh token each time and refuses the old one: the nodes
/// refresh one at a time (a lease in the database), each from the token the other
/// stored, so none is ever refused and all the mail goes out.
#[tokio::test]
async fn two_nodes_share_the_grant_and_refresh_one_at_a_time() {
    let pg = pg::PgServer::start().await;
    let (idp, idp_addr) = start_idp("r0").await;
    let (accepted, relay) = start_smarthost(idp.clone()).await;
    let hooks = Receiver::start().await;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for id in ["a", "b"] {
        let dir = tempfile::tempdir().unwrap();
        let route = Route::smtp(relay.port()).oauth2(&format!("http://{idp_addr}/token"), "r0");
        let config = ConfigBuilder::outbound(&hooks.url(""), route)
            .set("cluster.database_url", pg.url())
            .set("cluster.node_id", id);
        let started = start_in_process(dir.path(), config).await;
        nodes.push(Daemon {
            handle: started.handle,
            api: format!("http://{}", started.http),
        });
        dirs.push(dir);
    }
    let sends = (0..16).map(|i| {
        let d = &nodes[i % 2];
        async move { submit(d, &format!("r{i}@example.org")).await }
    });
    futures::future::join_all(sends).await;
    let delivered = hooks.wait_for_count(16, WAIT).await;
    for h in &delivered {
        let code = h.json()["deliveryInfoNotification"]["deliveryInfo"]["code"].clone();
        assert_eq!(code, "7501", "{}", h.json());
    }
    for d in nodes {
        d.handle.shutdown().await;
    }
    let idp = idp.lock().unwrap();
    assert_eq!(
        idp.refused, 0,
        "no node presented a replaced token: {:?}",
        idp.presented
    );
    assert_eq!(idp.max_in_flight, 1, "one refresh at a time in the cluster");
    assert!(idp.presented.len() >= 2, "{:?}", idp.presented);
    assert_eq!(accepted.lock().unwrap().len(), 16);
}
