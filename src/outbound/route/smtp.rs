//! The SMTP smarthost route: mail-send over none / ssl / starttls, AUTH PLAIN/LOGIN or
//! XOAUTH2 (access token refreshed from `token_url` before it expires; a rotated refresh
//! token is flushed to the store before use), connections kept and reused across messages.
//! One call = one SMTP transaction; the result is per recipient. A connection goes back to
//! the pool only when the exchange ended in step (a late reply would otherwise answer the
//! next message's command): after a timeout, an I/O error, an unexpected or refused reply
//! at DATA, or a failed RSET it is closed.

use super::RcptOutcome;
use crate::config::{RouteAuth, Security, SmtpRouteConfig};
use crate::store::tokens::RouteToken;
use crate::store::Store;
use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per route: at least the queue's concurrency, or most messages
/// would pay for a new connection.
const MAX_IDLE: usize = 64;
/// A pooled connection older than this is not reused (servers drop idle clients).
const MAX_IDLE_AGE: Duration = Duration::from_secs(30);

enum Conn {
    Plain(SmtpClient<TcpStream>),
    Tls(Box<SmtpClient<TlsStream<TcpStream>>>),
}

macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Plain($c) => $body,
            Conn::Tls($c) => $body,
        }
    };
    ($conn:expr, mut $c:ident => $body:expr) => {
        match $conn {
            Conn::Plain(mut $c) => $body,
            Conn::Tls(mut $c) => $body,
        }
    };
}

struct Token {
    value: String,
    expires: Instant,
}

/// XOAUTH2 state: the access token in use and the refresh token to get the next one (the
/// configured one, or the newest the endpoint rotated to; loaded on first use).
#[derive(Default)]
struct OAuth {
    access: Option<Token>,
    refresh: Option<String>,
}

/// Where a route keeps rotated refresh tokens: the store, under its asset's id.
#[derive(Clone)]
pub struct TokenStore {
    pub store: Store,
    pub asset_id: String,
}

pub struct SmtpRoute {
    config: SmtpRouteConfig,
    hostname: String,
    idle: Mutex<Vec<(Conn, Instant)>>,
    oauth: tokio::sync::Mutex<OAuth>,
    tokens: Option<TokenStore>,
    http: reqwest::Client,
    timeout: Duration,
    /// Built once: mail-send's default builder reads and parses the system CA store for
    /// every connection (~100 ms, on the async worker), which stalled the queue's bursts.
    tls: Mutex<Option<tokio_rustls::TlsConnector>>,
}

/// Whether a connection may serve another message after a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    /// Every command got its reply and the session is back at its start.
    Reuse,
    /// Out of step or in doubt: closed.
    Close,
}

/// A failure before any recipient was tried.
fn setup_failure(e: &mail_send::Error) -> RcptOutcome {
    match e {
        mail_send::Error::AuthenticationFailed(r) if r.code() >= 500 => {
            RcptOutcome::Refused(format!("authentication refused: {}", format_reply(r)))
        }
        mail_send::Error::UnexpectedReply(r) if r.code() >= 500 => {
            RcptOutcome::Refused(format_reply(r))
        }
        other => RcptOutcome::Deferred(other.to_string()),
    }
}

/// The reply as the server sent it, enhanced status code included.
fn format_reply(r: &smtp_proto::Response<String>) -> String {
    match r.esc {
        [0, 0, 0] => format!("{} {}", r.code(), r.message()),
        [a, b, c] => format!("{} {a}.{b}.{c} {}", r.code(), r.message()),
    }
}

fn reply_text(e: &mail_send::Error) -> (u16, String) {
    match e {
        mail_send::Error::UnexpectedReply(r) => (r.code(), format_reply(r)),
        other => (0, other.to_string()),
    }
}

/// SHA-256 (hex) of the configured refresh token: what a stored rotation descends from.
fn fingerprint(configured: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(configured.as_bytes()))
}

impl SmtpRoute {
    /// A route; with `tokens`, rotated refresh tokens are kept in the store across restarts
    /// (without, as for `postern route test`, the configured token is used).
    pub fn new(config: SmtpRouteConfig, hostname: String, tokens: Option<TokenStore>) -> SmtpRoute {
        SmtpRoute {
            config,
            hostname,
            idle: Mutex::new(Vec::new()),
            oauth: tokio::sync::Mutex::new(OAuth::default()),
            tokens,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("static HTTP client settings are valid"),
            timeout: TIMEOUT,
            tls: Mutex::new(None),
        }
    }

    /// The route's TLS connector: the platform's roots for `ssl` and `starttls`; for
    /// `security = "none"` one with no roots, since it is never used.
    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector, mail_send::Error> {
        let mut slot = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let connector = if self.config.security == Security::None {
            let config = tokio_rustls::rustls::ClientConfig::builder()
                .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
                .with_no_client_auth();
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        } else {
            mail_send::smtp::tls::build_tls_connector(false)
                .map_err(|_| mail_send::Error::InvalidTLSName)?
        };
        *slot = Some(connector.clone());
        Ok(connector)
    }

    /// The same route with another command timeout (tests of late replies).
    #[doc(hidden)]
    pub fn with_timeout(mut self, timeout: Duration) -> SmtpRoute {
        self.timeout = timeout;
        self
    }

    fn host(&self) -> (&str, u16) {
        let port = self.config.port.unwrap_or(match self.config.security {
            Security::Ssl => 465,
            Security::Starttls => 587,
            Security::None => 25,
        });
        (self.config.host.as_str(), port)
    }

    /// The refresh token to start from: the stored rotation when it descends from the
    /// configured token, else the configured one (changed since: the operator re-authorized).
    fn first_refresh_token(&self, configured: &str) -> String {
        let Some(t) = &self.tokens else {
            return configured.to_string();
        };
        match t.store.routes().route_token(&t.asset_id) {
            Ok(Some(kept)) if kept.configured_sha256 == fingerprint(configured) => {
                tracing::info!(asset = %t.asset_id, "using the refresh token the endpoint last rotated to");
                kept.refresh_token
            }
            Ok(Some(_)) => {
                tracing::info!(asset = %t.asset_id, "route.refresh_token changed since the last rotation: using the configured one");
                configured.to_string()
            }
            Ok(None) => configured.to_string(),
            Err(e) => {
                tracing::error!(asset = %t.asset_id, error = %e, "stored refresh token unreadable: using the configured one");
                configured.to_string()
            }
        }
    }

    /// The XOAUTH2 access token, refreshed when it has less than a minute left. A new
    /// refresh token in the answer replaces the old one, on disk first: the endpoint may
    /// already have revoked the old.
    async fn access_token(&self) -> Result<String, String> {
        let mut slot = self.oauth.lock().await;
        if let Some(t) = slot.access.as_ref() {
            if t.expires > Instant::now() + Duration::from_secs(60) {
                return Ok(t.value.clone());
            }
        }
        let c = &self.config;
        let url = c.token_url.as_deref().ok_or("route.token_url is not set")?;
        let configured = c
            .refresh_token
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        let refresh = match &slot.refresh {
            Some(r) => r.clone(),
            None => {
                let r = self.first_refresh_token(&configured);
                slot.refresh = Some(r.clone());
                r
            }
        };
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh.clone()),
            ("client_id", c.client_id.clone().unwrap_or_default()),
            (
                "client_secret",
                c.client_secret
                    .as_ref()
                    .map(|s| s.expose().to_string())
                    .unwrap_or_default(),
            ),
        ];
        if let Some(scope) = &c.scope {
            form.push(("scope", scope.clone()));
        }
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        if !status.is_success() {
            return Err(format!("token endpoint answered {status}: {body}"));
        }
        let value = body["access_token"]
            .as_str()
            .ok_or("token endpoint sent no access_token")?
            .to_string();
        if let Some(rotated) = body["refresh_token"]
            .as_str()
            .filter(|r| !r.is_empty() && *r != refresh)
        {
            self.keep_refresh_token(rotated, &configured).await;
            slot.refresh = Some(rotated.to_string());
        }
        let ttl = body["expires_in"].as_u64().unwrap_or(3600);
        slot.access = Some(Token {
            value: value.clone(),
            expires: Instant::now() + Duration::from_secs(ttl),
        });
        Ok(value)
    }

    /// Flushes a rotated refresh token to the store. On failure it is still used (from
    /// memory): mail keeps flowing, and the next rotation tries the store again.
    async fn keep_refresh_token(&self, rotated: &str, configured: &str) {
        let Some(t) = &self.tokens else {
            return;
        };
        let record = RouteToken {
            refresh_token: rotated.to_string(),
            configured_sha256: fingerprint(configured),
            updated_ms: crate::model::time::now_ms(),
        };
        match t.store.routes().put_route_token(&t.asset_id, &record).await {
            Ok(()) => tracing::info!(asset = %t.asset_id, "refresh token rotated and stored"),
            Err(e) => tracing::error!(
                asset = %t.asset_id,
                error = %e,
                "rotated refresh token not stored: a restart would fall back to the configured one"
            ),
        }
    }

    async fn connect(&self) -> Result<Conn, mail_send::Error> {
        let (host, port) = self.host();
        let mut b = SmtpClientBuilder::new_with_tls_connector(
            host.to_string(),
            port,
            self.tls_connector()?,
        )
        .helo_host(self.hostname.clone())
        .timeout(self.timeout)
        .implicit_tls(self.config.security == Security::Ssl);
        match self.config.auth {
            RouteAuth::None => {}
            RouteAuth::Password => {
                b = b.credentials(Credentials::new(
                    self.config.username.clone().unwrap_or_default(),
                    self.config
                        .password
                        .as_ref()
                        .map(|s| s.expose().to_string())
                        .unwrap_or_default(),
                ));
            }
            RouteAuth::Oauth2 => {
                let token = self
                    .access_token()
                    .await
                    .map_err(|e| mail_send::Error::Io(std::io::Error::other(e)))?;
                b = b.credentials(Credentials::new_xoauth2(
                    self.config.username.clone().unwrap_or_default(),
                    token,
                ));
            }
        }
        // TCP_NODELAY: without it the short writes of an SMTP transaction (the end of DATA
        // above all) sit in Nagle's buffer waiting for a delayed ACK, about 40 ms a message.
        match self.config.security {
            Security::None => b.connect_plain().await.map(|c| {
                let _ = c.stream.set_nodelay(true);
                Conn::Plain(c)
            }),
            Security::Ssl | Security::Starttls => b.connect().await.map(|c| {
                let _ = c.stream.get_ref().0.set_nodelay(true);
                Conn::Tls(Box::new(c))
            }),
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((c, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, c: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((c, Instant::now()));
        }
    }

    /// Connects and authenticates, reporting the server's EHLO answer; sends nothing.
    pub async fn test(&self) -> Result<String, String> {
        let (host, port) = self.host();
        let conn = self
            .connect()
            .await
            .map_err(|e| format!("{host}:{port}: {e}"))?;
        let ehlo = on_conn!(conn, mut c => {
            let r = c.ehlo(&self.hostname).await.map_err(|e| e.to_string())?;
            let _ = c.quit().await;
            r
        });
        use crate::config::{RouteAuth, Security};
        let tls = match self.config.security {
            Security::None => "without TLS",
            Security::Ssl => "over implicit TLS",
            Security::Starttls => "with STARTTLS",
        };
        let auth = match self.config.auth {
            RouteAuth::None => "no authentication",
            RouteAuth::Password => "password authentication accepted",
            RouteAuth::Oauth2 => "OAuth2 (XOAUTH2) authentication accepted",
        };
        Ok(format!(
            "{host}:{port}: connected {tls}, {auth}; server {} (SIZE {})",
            ehlo.hostname, ehlo.size
        ))
    }

    /// One transaction: MAIL FROM `from`, RCPT TO each of `rcpts`, DATA `message`.
    pub async fn send(&self, from: &str, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        // A pooled connection may have been dropped by the server: on an I/O failure at
        // MAIL FROM, retry once on a fresh one.
        let mut conn = match self.take_idle() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return vec![setup_failure(&e); rcpts.len()],
            },
        };
        let mut mail = on_conn!(&mut conn, c => c.mail_from(from, &Parameters::default()).await);
        if matches!(
            mail,
            Err(mail_send::Error::Io(_)
                | mail_send::Error::Timeout
                | mail_send::Error::UnparseableReply)
        ) {
            conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => return vec![setup_failure(&e); rcpts.len()],
            };
            mail = on_conn!(&mut conn, c => c.mail_from(from, &Parameters::default()).await);
        }
        if let Err(e) = mail {
            // The connection is closed (dropped): a refused sender may mean a refused session.
            let (code, text) = reply_text(&e);
            let outcome = if code >= 500 {
                RcptOutcome::Refused(text)
            } else {
                RcptOutcome::Deferred(format!("MAIL FROM: {text}"))
            };
            return vec![outcome; rcpts.len()];
        }
        let (outcomes, after) = self.recipients_and_data(&mut conn, rcpts, message).await;
        match after {
            After::Reuse => self.put_idle(conn),
            After::Close => tracing::debug!("smarthost connection closed after the transaction"),
        }
        outcomes
    }

    /// RCPT TO each recipient, then DATA (or RSET when none was accepted), after a
    /// successful MAIL FROM on `conn`.
    async fn recipients_and_data(
        &self,
        conn: &mut Conn,
        rcpts: &[String],
        message: &[u8],
    ) -> (Vec<RcptOutcome>, After) {
        let mut results: Vec<RcptOutcome> = Vec::with_capacity(rcpts.len());
        for r in rcpts {
            let res = on_conn!(&mut *conn, c => c.rcpt_to(r, &Parameters::default()).await);
            results.push(match res {
                Ok(()) => RcptOutcome::Submitted,
                Err(e) => {
                    let (code, text) = reply_text(&e);
                    if code >= 500 {
                        RcptOutcome::Bounced(text)
                    } else if code >= 400 {
                        RcptOutcome::Deferred(format!("RCPT TO: {text}"))
                    } else {
                        // The connection broke, timed out or answered out of turn
                        // mid-transaction: everything is deferred.
                        return (vec![RcptOutcome::Deferred(text); rcpts.len()], After::Close);
                    }
                }
            });
        }
        if !results.contains(&RcptOutcome::Submitted) {
            // Every recipient refused, each with its own reply: the session is in step if
            // RSET says so.
            let after = match on_conn!(&mut *conn, c => c.rset().await) {
                Ok(()) => After::Reuse,
                Err(e) => {
                    tracing::debug!(error = %e, "RSET failed");
                    After::Close
                }
            };
            return (results, after);
        }
        let data = on_conn!(&mut *conn, c => c.data(message).await);
        let outcome = match data {
            Ok(_) => return (results, After::Reuse),
            Err(e) => {
                let (code, text) = reply_text(&e);
                if code >= 500 {
                    RcptOutcome::Refused(format!("DATA: {text}"))
                } else {
                    RcptOutcome::Deferred(format!("DATA: {text}"))
                }
            }
        };
        // A refused or missing answer to DATA: whatever the server still sends belongs to
        // this message, so the connection serves no other.
        let results = results
            .into_iter()
            .map(|r| {
                if r == RcptOutcome::Submitted {
                    outcome.clone()
                } else {
                    r
                }
            })
            .collect();
        (results, After::Close)
    }
}
