//! The SMTP smarthost route: mail-send over none / ssl / starttls, AUTH PLAIN/LOGIN or
//! XOAUTH2 (the access token from [`crate::outbound::oauth`]), connections kept and
//! reused across messages.
//! One call = one SMTP transaction; the result is per recipient. A connection goes back to
//! the pool only when the exchange ended in step (a late reply would otherwise answer the
//! next message's command): after a timeout, an I/O error, an unexpected or refused reply
//! at DATA, or a failed RSET it is closed.

use super::RcptOutcome;
use crate::config::{RouteAuth, Security, SmtpRouteConfig};
use crate::outbound::oauth::{OAuth, TokenError};
use mail_send::smtp::message::Parameters;
use mail_send::{Credentials, SmtpClient, SmtpClientBuilder};
use std::sync::Arc;
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

/// Whose OAuth2 grant a route authenticates with: the asset's, through the daemon's
/// accounts.
#[derive(Clone)]
pub struct Grant {
    pub oauth: Arc<OAuth>,
    pub asset_id: String,
}

pub struct SmtpRoute {
    config: SmtpRouteConfig,
    hostname: String,
    idle: Mutex<Vec<(Conn, Instant)>>,
    grant: Option<Grant>,
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

/// A failure before any recipient was tried. With XOAUTH2 a refused login is deferred:
/// it means a token the server no longer takes, and the grant decides what happens next.
fn setup_failure(e: &mail_send::Error, auth: RouteAuth) -> RcptOutcome {
    match e {
        mail_send::Error::AuthenticationFailed(r) if auth == RouteAuth::Oauth2 => {
            RcptOutcome::Deferred(format!("XOAUTH2 refused: {}", format_reply(r)))
        }
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

impl SmtpRoute {
    /// A route; `grant` is needed for `auth = "oauth2"` (the daemon's routes have one).
    pub fn new(config: SmtpRouteConfig, hostname: String, grant: Option<Grant>) -> SmtpRoute {
        SmtpRoute {
            config,
            hostname,
            idle: Mutex::new(Vec::new()),
            grant,
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

    /// The XOAUTH2 access token of the route's grant.
    async fn access_token(&self) -> Result<String, TokenError> {
        let Some(g) = &self.grant else {
            return Err(TokenError::Failed(
                "an oauth2 route is tested through the running daemon, whose store holds its grant"
                    .into(),
            ));
        };
        g.oauth.access_token(&g.asset_id, &self.config).await
    }

    /// Why the route cannot authenticate before a new authorization, if so.
    pub fn needs_authorization(&self) -> Option<crate::outbound::oauth::Need> {
        let g = self.grant.as_ref()?;
        g.oauth.needs_authorization(&g.asset_id)
    }

    /// A connection, authenticated. A refused XOAUTH2 login is tried once more with a
    /// fresh access token (the server may have stopped taking the one kept).
    async fn open(&self) -> Result<Conn, mail_send::Error> {
        match self.connect().await {
            Err(mail_send::Error::AuthenticationFailed(_))
                if self.config.auth == RouteAuth::Oauth2 =>
            {
                if let Some(g) = &self.grant {
                    g.oauth.forget_access_token(&g.asset_id).await;
                }
                self.connect().await
            }
            other => other,
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
                    .map_err(|e| mail_send::Error::Io(std::io::Error::other(e.to_string())))?;
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
            .open()
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
            None => match self.open().await {
                Ok(c) => c,
                Err(e) => return vec![setup_failure(&e, self.config.auth); rcpts.len()],
            },
        };
        let mut mail = on_conn!(&mut conn, c => c.mail_from(from, &Parameters::default()).await);
        if matches!(
            mail,
            Err(mail_send::Error::Io(_)
                | mail_send::Error::Timeout
                | mail_send::Error::UnparseableReply)
        ) {
            conn = match self.open().await {
                Ok(c) => c,
                Err(e) => return vec![setup_failure(&e, self.config.auth); rcpts.len()],
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
