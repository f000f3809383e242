//! One SMTP session (RFC 5321) over any async stream. Commands are framed here (line
//! length, NUL, bare CR/LF), parsed by `smtp-proto`, and answered in place; DATA goes
//! through the pure [`DataScanner`], BDAT is counted. Replies are buffered and written
//! when the client has nothing more pipelined. The `250` after DATA/BDAT LAST is written
//! only after [`Inbound::accept`] returned, i.e. once the message is on disk.
//!
//! Hostile clients are bounded (SPEC 6.3): every read and every write of replies has a
//! deadline (a client that never reads its replies is cut off like one that never
//! writes), junk commands and error replies are counted against `junk_command_limit`,
//! and the daemon's shutdown ends the session within `shutdown_grace` whatever it waits
//! for, except the store step itself, which is never cut between "stored" and "250".

use super::data::{DataFault, DataScanner};
use super::stream::MaybeTls;
use crate::config::Config;
use crate::inbound::{classify_recipient, size_limit, Destination, Envelope, Inbound, RcptRefusal};
use crate::store::spool::BodyWriter;
use smtp_proto::{EhloResponse, Request};
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{timeout_at, Duration, Instant};
use tokio_rustls::TlsAcceptor;

/// Longest command line, CRLF included (RFC 5321 4.5.3.1.4).
pub const MAX_COMMAND: usize = 512;
const READ_CHUNK: usize = 64 * 1024;
/// Longest wait for the last reply (221, 421) once the session is over.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// What a session needs from the daemon; a snapshot taken when it starts.
#[derive(Clone)]
pub struct SessionParams {
    pub config: Arc<Config>,
    pub tls: Option<TlsAcceptor>,
    pub inbound: Arc<Inbound>,
    pub shutdown: watch::Receiver<bool>,
}

/// Why a session ends.
#[derive(Debug)]
enum Stop {
    Eof,
    Quit,
    Io(std::io::Error),
    /// Timeout, too many junk commands or errors, shutdown or a failed handshake: a 421
    /// was already queued (when the client can still be told).
    Closed,
    /// The client did not take its replies within the command timeout (or the shutdown
    /// grace): nothing more can be written to it.
    Unread,
}

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        Stop::Io(e)
    }
}

/// A complete command line after framing checks.
enum CommandLine {
    Ok(Vec<u8>),
    TooLong,
    BareLf,
    BareCr,
    Nul,
}

struct Transaction {
    mail_from: String,
    declared_size: usize,
    rcpts: Vec<(String, Destination)>,
    /// Set once a BDAT chunk arrived.
    bdat: Option<Chunked>,
}

struct Chunked {
    body: BodyWriter,
    oversize: bool,
    deadline: Instant,
}

/// Why an I/O wait was cut short.
enum Cut {
    Timeout,
    Shutdown,
}

/// The daemon's shutdown as one session sees it.
struct Stopping {
    rx: watch::Receiver<bool>,
    grace: Duration,
    /// When the shutdown was first seen, plus the grace: the session ends then, whatever
    /// it waits for.
    hard: Option<Instant>,
}

impl Stopping {
    /// The hard deadline once the daemon is shutting down (a dropped sender, i.e. a
    /// daemon that is gone, counts as shutting down).
    fn hard_deadline(&mut self) -> Option<Instant> {
        if self.hard.is_none() && (*self.rx.borrow() || self.rx.has_changed().is_err()) {
            self.hard = Some(Instant::now() + self.grace);
        }
        self.hard
    }

    /// Runs `io` until it completes or `deadline` passes. The shutdown cuts it at once
    /// when `idle` (the session waits for a command outside a transaction), at the end of
    /// the grace otherwise, so in-flight transactions may finish.
    async fn run<F: Future>(
        &mut self,
        deadline: Instant,
        idle: bool,
        io: F,
    ) -> Result<F::Output, Cut> {
        tokio::pin!(io);
        loop {
            if let Some(hard) = self.hard_deadline() {
                if idle {
                    return Err(Cut::Shutdown);
                }
                return match timeout_at(deadline.min(hard), &mut io).await {
                    Ok(v) => Ok(v),
                    Err(_) if hard <= deadline => Err(Cut::Shutdown),
                    Err(_) => Err(Cut::Timeout),
                };
            }
            tokio::select! {
                r = timeout_at(deadline, &mut io) => return r.map_err(|_| Cut::Timeout),
                // Seen by `hard_deadline` on the next turn (an error: the sender is gone).
                _ = self.rx.changed() => {}
            }
        }
    }
}

pub struct Session<S> {
    stream: MaybeTls<S>,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    peer: IpAddr,
    p: SessionParams,
    helo: Option<String>,
    esmtp: bool,
    tls_active: bool,
    tx: Option<Transaction>,
    /// Junk commands and error replies so far (SPEC 6.3 `junk_command_limit`).
    junk: u32,
    /// The last command completed a message (250 after DATA/BDAT LAST): the RSET that
    /// connection-reusing clients (mail-send, Postfix's smtp) send next is not junk.
    just_delivered: bool,
    /// A closing 421 is queued: nothing more is written, the session ends.
    closing: bool,
    stop: Stopping,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    pub fn new(stream: S, peer: IpAddr, params: SessionParams) -> Self {
        let stop = Stopping {
            rx: params.shutdown.clone(),
            grace: Duration::from_secs(params.config.smtp.shutdown_grace),
            hard: None,
        };
        Session {
            stream: MaybeTls::Plain(stream),
            rbuf: Vec::with_capacity(READ_CHUNK),
            rpos: 0,
            wbuf: Vec::with_capacity(1024),
            peer,
            p: params,
            helo: None,
            esmtp: false,
            tls_active: false,
            tx: None,
            junk: 0,
            just_delivered: false,
            closing: false,
            stop,
        }
    }

    /// Runs the session to its end; errors are logged, never propagated.
    pub async fn run(mut self) {
        let banner = format!("220 {} ESMTP Postern\r\n", self.p.config.server.hostname);
        self.wbuf.extend_from_slice(banner.as_bytes());
        let end = self.serve().await;
        match &end {
            Err(Stop::Io(e)) => tracing::debug!(error = %e, "session ended by I/O error"),
            Err(Stop::Unread) => {
                tracing::info!("client does not read its replies: connection closed")
            }
            Err(stop) => tracing::debug!(?stop, "session ended"),
            Ok(()) => {}
        }
        // A partial BDAT body is deleted by its writer's drop.
        self.tx = None;
        // The last reply is a courtesy: bounded, and not waited for at all past the
        // shutdown grace or when the client already left its replies unread.
        let allowed = match (&end, self.stop.hard) {
            (Err(Stop::Unread), _) => None,
            (_, Some(hard)) => Some(hard.max(Instant::now())),
            (_, None) => Some(Instant::now() + LAST_WRITE),
        };
        if let Some(until) = allowed {
            let (stream, wbuf) = (&mut self.stream, &self.wbuf);
            let _ = timeout_at(until, async move {
                stream.write_all(wbuf).await?;
                stream.flush().await?;
                stream.shutdown().await
            })
            .await;
        }
    }

    async fn serve(&mut self) -> Result<(), Stop> {
        loop {
            if self.closing {
                return Err(Stop::Closed);
            }
            match self.next_command().await? {
                CommandLine::Ok(line) => self.command(&line).await?,
                CommandLine::TooLong => {
                    self.fail(500, "5.5.2", "line too long (512 octets at most)")?
                }
                CommandLine::BareLf => {
                    self.fail(500, "5.5.2", "bare LF in command; lines end with CRLF")?
                }
                CommandLine::BareCr => {
                    self.fail(500, "5.5.2", "bare CR in command is not allowed")?
                }
                CommandLine::Nul => self.fail(500, "5.5.2", "NUL in command is not allowed")?,
            }
        }
    }

    // ---- I/O ----

    /// Writes one reply line; `status` is the enhanced status code, empty for replies that
    /// carry none (HELO, 354).
    /// Every 4xx/5xx answer (but the closing 421s) counts towards the junk limit; past
    /// it, a 421 goes out instead and the session closes.
    fn reply(&mut self, code: u16, status: &str, text: &str) {
        if self.closing || ((400..600).contains(&code) && code != 421 && self.over_junk()) {
            return;
        }
        self.write_reply(code, status, text);
    }

    fn write_reply(&mut self, code: u16, status: &str, text: &str) {
        let line = if status.is_empty() {
            format!("{code} {text}\r\n")
        } else {
            format!("{code} {status} {text}\r\n")
        };
        self.wbuf.extend_from_slice(line.as_bytes());
    }

    /// Queues the session's last reply (a 421) and marks it closing.
    fn close_with(&mut self, status: &str, text: &str) -> Stop {
        if !self.closing {
            let host = self.p.config.server.hostname.clone();
            self.write_reply(421, status, &format!("{host} {text}"));
            self.closing = true;
        }
        Stop::Closed
    }

    /// Counts one junk command or error reply; true (and the closing 421 queued) when
    /// that is one more than `junk_command_limit`.
    fn over_junk(&mut self) -> bool {
        self.junk += 1;
        let limit = self.p.config.smtp.junk_command_limit;
        if self.junk <= limit {
            return false;
        }
        tracing::info!(limit, "too many junk commands or errors: closing");
        self.close_with(
            "4.7.0",
            &format!(
                "too many junk commands (NOOP, RSET, VRFY, EXPN, HELP, repeated EHLO/HELO) \
                 or error replies: more than {limit} in one session"
            ),
        );
        true
    }

    /// A junk command (SPEC 6.3): counted, and refused with 421 past the limit.
    fn junk_command(&mut self) -> Result<(), Stop> {
        if self.closing || self.over_junk() {
            return Err(Stop::Closed);
        }
        Ok(())
    }

    /// A 4xx/5xx reply; `Err` when it was one too many and the session closes.
    fn fail(&mut self, code: u16, status: &str, text: &str) -> Result<(), Stop> {
        self.reply(code, status, text);
        if self.closing {
            return Err(Stop::Closed);
        }
        Ok(())
    }

    /// Writes the queued replies by `deadline`: a client that does not read them is
    /// treated like one that does not write (SPEC 6.3), and the session ends.
    async fn flush_by(&mut self, deadline: Instant) -> Result<(), Stop> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (stream, wbuf) = (&mut self.stream, &self.wbuf);
        let write = async move {
            stream.write_all(wbuf).await?;
            stream.flush().await
        };
        let written = self.stop.run(deadline, false, write).await;
        self.wbuf.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Stop::Io(e)),
            Err(_) => Err(Stop::Unread),
        }
    }

    fn command_deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.p.config.smtp.command_timeout)
    }

    /// Reads more input by `deadline`; returns the number of new bytes. End of stream,
    /// timeout and shutdown end the session (`idle`: see [`Stopping::run`]).
    async fn fill(&mut self, deadline: Instant, idle: bool) -> Result<usize, Stop> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > READ_CHUNK {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        let read = self.stream.read_buf(&mut self.rbuf);
        match self.stop.run(deadline, idle, read).await {
            Ok(Ok(0)) => Err(Stop::Eof),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Stop::Io(e)),
            Err(Cut::Timeout) => Err(self.close_with("4.4.2", "timeout")),
            Err(Cut::Shutdown) => Err(self.close_with("4.3.2", "shutting down, try again later")),
        }
    }

    /// The next command line, with replies to earlier commands flushed first when the
    /// client has sent nothing more (PIPELINING). Writing those replies and reading the
    /// command share one `command_timeout`.
    async fn next_command(&mut self) -> Result<CommandLine, Stop> {
        let deadline = self.command_deadline();
        let mut discarding = false;
        loop {
            let pending = &self.rbuf[self.rpos..];
            if let Some(i) = memchr::memchr(b'\n', pending) {
                let line = pending[..=i].to_vec();
                self.rpos += i + 1;
                return Ok(if discarding {
                    CommandLine::TooLong
                } else {
                    check_line(line)
                });
            }
            if pending.len() >= MAX_COMMAND {
                discarding = true;
                self.rpos = self.rbuf.len();
            }
            self.flush_by(deadline).await?;
            let idle = self.tx.is_none();
            self.fill(deadline, idle).await?;
        }
    }

    // ---- commands ----

    async fn command(&mut self, line: &[u8]) -> Result<(), Stop> {
        let delivered = std::mem::take(&mut self.just_delivered);
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => return self.parse_error(e, line),
        };
        match request {
            Request::Ehlo { host } => {
                if self.helo.is_some() {
                    self.junk_command()?;
                }
                self.helo = Some(host);
                self.esmtp = true;
                self.reset();
                let mut r = EhloResponse::new(self.p.config.server.hostname.as_str());
                r.capabilities = smtp_proto::EXT_PIPELINING
                    | smtp_proto::EXT_SIZE
                    | smtp_proto::EXT_8BIT_MIME
                    | smtp_proto::EXT_SMTP_UTF8
                    | smtp_proto::EXT_ENHANCED_STATUS_CODES
                    | smtp_proto::EXT_CHUNKING;
                if self.p.tls.is_some() && !self.tls_active {
                    r.capabilities |= smtp_proto::EXT_START_TLS;
                }
                r.size = self.p.config.smtp.max_message_size;
                r.write(&mut self.wbuf)?;
            }
            Request::Helo { host } => {
                if self.helo.is_some() {
                    self.junk_command()?;
                }
                self.helo = Some(host);
                self.esmtp = false;
                self.reset();
                let host = self.p.config.server.hostname.clone();
                self.reply(250, "", &host);
            }
            Request::Lhlo { .. } => self.fail(502, "5.5.1", "LHLO is not served here; use EHLO")?,
            Request::Mail { from } => self.mail(from.address, from.size)?,
            Request::Rcpt { to } => self.rcpt(to.address)?,
            Request::Data => self.data().await?,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await?,
            Request::Rset => {
                if !delivered {
                    self.junk_command()?;
                }
                self.reset();
                self.reply(250, "2.0.0", "OK");
            }
            Request::Noop { .. } => {
                self.junk_command()?;
                self.reply(250, "2.0.0", "OK")
            }
            Request::Quit => {
                self.reply(221, "2.0.0", "Bye");
                return Err(Stop::Quit);
            }
            Request::Vrfy { .. } => {
                self.junk_command()?;
                self.reply(252, "2.5.2", "cannot VRFY user, but will accept message")
            }
            // Junk, counted once: by its error reply.
            Request::Expn { .. } => self.fail(502, "5.5.1", "EXPN is not served here")?,
            Request::Help { .. } => {
                self.junk_command()?;
                self.reply(214, "2.0.0", "see RFC 5321; postern is an inbound MX")
            }
            Request::Auth { .. } => {
                self.fail(502, "5.5.1", "AUTH is not offered on this listener")?
            }
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                self.fail(502, "5.5.1", "command not implemented")?
            }
            Request::StartTls => self.starttls().await?,
        }
        Ok(())
    }

    fn parse_error(&mut self, e: smtp_proto::Error, line: &[u8]) -> Result<(), Stop> {
        use smtp_proto::Error as E;
        // smtp-proto refuses address literals as syntax; the SPEC wants them refused as relaying.
        if matches!(e, E::InvalidRecipientAddress) && memchr::memmem::find(line, b"@[").is_some() {
            return self.fail(
                550,
                "5.7.1",
                "relaying denied: address literals are not accepted",
            );
        }
        match e {
            E::UnknownCommand => self.fail(500, "5.5.1", "command not recognized"),
            E::InvalidSenderAddress => {
                self.fail(501, "5.1.7", "MAIL FROM: bad sender address syntax")
            }
            E::InvalidRecipientAddress => {
                self.fail(501, "5.1.3", "RCPT TO: bad recipient address syntax")
            }
            E::SyntaxError { syntax } => self.fail(501, "5.5.4", &format!("syntax: {syntax}")),
            E::InvalidParameter { param } => {
                self.fail(501, "5.5.4", &format!("invalid parameter {param}"))
            }
            E::UnsupportedParameter { param } => {
                let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
                self.fail(504, "5.5.4", &format!("unsupported parameter {param}"))
            }
            E::ResponseTooLong => self.fail(500, "5.5.2", "line too long (512 octets at most)"),
            E::NeedsMoreData { .. } | E::InvalidResponse { .. } => {
                self.fail(500, "5.5.2", "incomplete command")
            }
        }
    }

    /// Ends the transaction; a partial BDAT body goes with its writer.
    fn reset(&mut self) {
        self.tx = None;
    }

    fn mail(&mut self, address: String, size: usize) -> Result<(), Stop> {
        if self.helo.is_none() {
            return self.fail(503, "5.5.1", "MAIL: send EHLO or HELO first");
        }
        if self.tx.is_some() {
            return self.fail(503, "5.5.1", "MAIL: nested MAIL command; RSET first");
        }
        // SPEC 6.3: low space or a failing store refuses new transactions up front. Not
        // the client's error, so it does not count against the session's error limit.
        if let Err(why) = self.p.inbound.store.health().check() {
            self.reply(452, "4.3.1", &format!("MAIL: {why}; try again later"));
            return Ok(());
        }
        if size > self.p.config.smtp.max_message_size {
            let max = self.p.config.smtp.max_message_size;
            return self.fail(
                552,
                "5.3.4",
                &format!("MAIL: SIZE {size} exceeds the limit of {max} bytes"),
            );
        }
        self.tx = Some(Transaction {
            mail_from: address,
            declared_size: size,
            rcpts: Vec::new(),
            bdat: None,
        });
        self.reply(250, "2.1.0", "sender OK");
        Ok(())
    }

    fn rcpt(&mut self, address: String) -> Result<(), Stop> {
        let max = self.p.config.smtp.max_recipients;
        let Some(tx) = &self.tx else {
            return self.fail(503, "5.5.1", "RCPT: need MAIL first");
        };
        if tx.bdat.is_some() {
            return self.fail(503, "5.5.1", "RCPT: not during BDAT");
        }
        if tx.rcpts.len() >= max {
            self.reply(
                452,
                "4.5.3",
                &format!("RCPT: too many recipients ({max} per transaction)"),
            );
            return Ok(());
        }
        let declared = tx.declared_size;
        match classify_recipient(&self.p.config, &address) {
            Ok(dest) => {
                let limit = size_limit(
                    &self.p.config,
                    std::slice::from_ref(&(address.clone(), dest.clone())),
                );
                if declared > limit {
                    return self.fail(552, "5.3.4", &format!("RCPT: message size {declared} exceeds this recipient's limit of {limit} bytes"));
                }
                let tx = self.tx.as_mut().expect("checked above");
                if !tx
                    .rcpts
                    .iter()
                    .any(|(a, _)| a.eq_ignore_ascii_case(&address))
                {
                    tx.rcpts.push((address, dest));
                }
                self.reply(250, "2.1.5", "recipient OK");
                Ok(())
            }
            Err(RcptRefusal::RelayDenied) => self.fail(550, "5.7.1", "relaying denied"),
            Err(RcptRefusal::AddressLiteral) => self.fail(
                550,
                "5.7.1",
                "relaying denied: address literals are not accepted",
            ),
            Err(RcptRefusal::BadSyntax) => {
                self.fail(501, "5.1.3", "RCPT TO: bad recipient address syntax")
            }
        }
    }

    async fn data(&mut self) -> Result<(), Stop> {
        match &self.tx {
            None => return self.fail(503, "5.5.1", "DATA: need MAIL first"),
            Some(tx) if tx.bdat.is_some() => {
                return self.fail(503, "5.5.1", "DATA: not after BDAT")
            }
            Some(tx) if tx.rcpts.is_empty() => {
                return self.fail(554, "5.5.1", "DATA: no valid recipients")
            }
            Some(_) => {}
        }
        self.reply(354, "", "start mail input; end with <CRLF>.<CRLF>");
        self.flush_by(self.command_deadline()).await?;

        let tx = self.tx.as_ref().expect("checked above");
        let limit = size_limit(&self.p.config, &tx.rcpts);
        let mut body = self.p.inbound.store.body_writer();
        let mut scanner = DataScanner::default();
        let mut out = Vec::with_capacity(READ_CHUNK);
        let mut oversize = false;
        let mut write_error = None;
        let deadline = Instant::now() + Duration::from_secs(self.p.config.smtp.data_timeout);
        loop {
            if self.rpos < self.rbuf.len() {
                out.clear();
                let r = scanner.feed(&self.rbuf[self.rpos..], &mut out);
                self.rpos += r.consumed;
                if !oversize && write_error.is_none() {
                    if body.len() as usize + out.len() > limit {
                        oversize = true;
                    } else if let Err(e) = body.write(&out) {
                        write_error = Some(e);
                    }
                }
                if r.done {
                    break;
                }
            }
            // On any error the partial body is deleted by the writer's drop.
            self.fill(deadline, false).await?;
        }
        if let Some(e) = write_error {
            tracing::error!(error = %e, "cannot spool message body");
            body.discard();
            self.tx = None;
            self.reply(451, "4.3.0", "temporary storage failure, try again later");
            return Ok(());
        }
        self.finish(body, scanner.fault(), oversize, limit).await
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Result<(), Stop> {
        let ready = matches!(&self.tx, Some(tx) if !tx.rcpts.is_empty());
        let data_timeout = Duration::from_secs(self.p.config.smtp.data_timeout);
        let limit = self
            .tx
            .as_ref()
            .map(|tx| size_limit(&self.p.config, &tx.rcpts))
            .unwrap_or(0);
        let mut chunk = if ready {
            let store = self.p.inbound.store.clone();
            let tx = self.tx.as_mut().expect("checked above");
            Some(tx.bdat.take().unwrap_or_else(|| Chunked {
                body: store.body_writer(),
                oversize: false,
                deadline: Instant::now() + data_timeout,
            }))
        } else {
            None
        };
        // The chunk's bytes are read (and dropped when refused) in every case, so the
        // command stream stays in step.
        let deadline = chunk
            .as_ref()
            .map(|c| c.deadline)
            .unwrap_or_else(|| Instant::now() + data_timeout);
        let mut remaining = size;
        let mut write_error = None;
        loop {
            let take = remaining.min(self.rbuf.len() - self.rpos);
            if let Some(c) = chunk.as_mut() {
                let bytes = &self.rbuf[self.rpos..self.rpos + take];
                if !c.oversize && write_error.is_none() {
                    if c.body.len() as usize + take > limit {
                        c.oversize = true;
                    } else if let Err(e) = c.body.write(bytes) {
                        write_error = Some(e);
                    }
                }
            }
            self.rpos += take;
            remaining -= take;
            if remaining == 0 {
                break;
            }
            // On any error the partial body is deleted by the writer's drop.
            self.fill(deadline, false).await?;
        }
        let Some(c) = chunk else {
            let msg = if self.tx.is_none() {
                "BDAT: need MAIL first"
            } else {
                "BDAT: no valid recipients"
            };
            return self.fail(503, "5.5.1", msg);
        };
        if let Some(e) = write_error {
            tracing::error!(error = %e, "cannot spool message body");
            c.body.discard();
            self.tx = None;
            self.reply(451, "4.3.0", "temporary storage failure, try again later");
            return Ok(());
        }
        if !last {
            self.tx.as_mut().expect("checked above").bdat = Some(c);
            self.reply(250, "2.0.0", &format!("{size} octets received"));
            return Ok(());
        }
        self.finish(c.body, None, c.oversize, limit).await
    }

    /// Ends a transaction after its data: rejects, or stores and answers 250.
    async fn finish(
        &mut self,
        body: BodyWriter,
        fault: Option<DataFault>,
        oversize: bool,
        limit: usize,
    ) -> Result<(), Stop> {
        let tx = self.tx.take().expect("a transaction is open during data");
        let metrics = self.p.inbound.metrics.clone();
        let refusal = match (fault, oversize) {
            (Some(DataFault::BareLf), _) => Some((
                554,
                "5.5.2",
                "bare LF in message data is not allowed; lines end with CRLF".to_string(),
            )),
            (Some(DataFault::BareCr), _) => Some((
                554,
                "5.5.2",
                "bare CR in message data is not allowed".to_string(),
            )),
            (Some(DataFault::LineTooLong), _) => Some((
                554,
                "5.5.2",
                "message has a line over 998 octets (RFC 5322 2.1.1)".to_string(),
            )),
            (None, true) => Some((
                552,
                "5.3.4",
                format!("message exceeds the limit of {limit} bytes"),
            )),
            (None, false) => None,
        };
        if let Some((code, status, text)) = refusal {
            body.discard();
            metrics.inbound_rejected.fetch_add(1, Relaxed);
            tracing::info!(code, reason = %text, "message refused");
            return self.fail(code, status, &text);
        }
        let finished = match body.finish() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the message body durable");
                self.reply(451, "4.3.0", "temporary storage failure, try again later");
                return Ok(());
            }
        };
        let env = Envelope {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail_from,
            rcpts: tx.rcpts,
        };
        let config = self.p.config.clone();
        match self.p.inbound.accept(&config, env, finished).await {
            Ok(id) => {
                metrics.inbound_accepted.fetch_add(1, Relaxed);
                tracing::info!(id = %id, "message accepted");
                self.reply(250, "2.0.0", &format!("OK queued as {id}"));
                self.just_delivered = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store message");
                self.reply(451, "4.3.0", "temporary storage failure, try again later");
            }
        }
        Ok(())
    }

    async fn starttls(&mut self) -> Result<(), Stop> {
        if self.tls_active {
            return self.fail(503, "5.5.1", "STARTTLS: TLS is already active");
        }
        let Some(acceptor) = self.p.tls.clone() else {
            return self.fail(502, "5.5.1", "STARTTLS: not available");
        };
        self.reply(220, "2.0.0", "ready to start TLS");
        self.flush_by(self.command_deadline()).await?;
        // Anything pipelined behind STARTTLS was sent in plaintext: discard it
        // (CVE-2011-0411), never interpret it inside the TLS session.
        let dropped = self.rbuf.len() - self.rpos;
        if dropped > 0 {
            tracing::warn!(
                bytes = dropped,
                "discarding plaintext pipelined after STARTTLS"
            );
        }
        self.rbuf.clear();
        self.rpos = 0;
        let MaybeTls::Plain(plain) = std::mem::replace(&mut self.stream, MaybeTls::Switching)
        else {
            return Err(Stop::Closed);
        };
        let handshake = Duration::from_secs(self.p.config.smtp.command_timeout.min(60));
        match self
            .stop
            .run(Instant::now() + handshake, false, acceptor.accept(plain))
            .await
        {
            Ok(Ok(tls)) => {
                self.stream = MaybeTls::Tls(Box::new(tls));
                self.tls_active = true;
                self.helo = None;
                self.esmtp = false;
                self.reset();
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                Err(Stop::Closed)
            }
            Err(_) => Err(Stop::Closed),
        }
    }
}

fn check_line(line: Vec<u8>) -> CommandLine {
    if line.len() > MAX_COMMAND {
        return CommandLine::TooLong;
    }
    let body = match line.strip_suffix(b"\r\n") {
        Some(b) => b,
        None => return CommandLine::BareLf,
    };
    if body.contains(&b'\r') {
        return CommandLine::BareCr;
    }
    if body.contains(&b'\n') {
        return CommandLine::BareLf;
    }
    if body.contains(&0) {
        return CommandLine::Nul;
    }
    CommandLine::Ok(line)
}
