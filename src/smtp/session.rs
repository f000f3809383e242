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
use crate::store::spool::{BodyWriter, FinishedBody};
use crate::store::StoreError;
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

/// Where the mail transaction stands (RFC 5321 3.3). Each variant holds what its commands
/// need, so "RCPT without MAIL" or "DATA after BDAT" is a match arm, never a check
/// followed by an unwrap.
enum State {
    /// No transaction open (before or after the greeting: `helo` tells which).
    Idle,
    /// MAIL accepted; the recipients accepted so far (maybe none yet).
    Mail(Transaction),
    /// BDAT chunks received, the last one still to come (only with recipients).
    Bdat(Transaction, Box<Chunked>),
}

struct Transaction {
    mail_from: String,
    declared_size: usize,
    rcpts: Vec<(String, Destination)>,
}

/// A message body as it arrives. Past the size limit or a write error, bytes are
/// dropped (the reply comes at the end of the data, so the stream stays in step). The
/// writer deletes a partial body when dropped unfinished: an abandoned DATA or BDAT
/// (error, timeout, disconnect, shutdown) leaves no file behind.
struct Incoming {
    body: BodyWriter,
    limit: usize,
    oversize: bool,
    write_error: Option<StoreError>,
}

impl Incoming {
    fn new(body: BodyWriter, limit: usize) -> Self {
        Incoming {
            body,
            limit,
            oversize: false,
            write_error: None,
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.oversize || self.write_error.is_some() {
            return;
        }
        if self.body.len() as usize + bytes.len() > self.limit {
            self.oversize = true;
        } else if let Err(e) = self.body.write(bytes) {
            self.write_error = Some(e);
        }
    }
}

/// The body of a BDAT transaction between its chunks.
struct Chunked {
    incoming: Incoming,
    /// All chunks share one `data_timeout`, counted from the first.
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
    state: State,
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
            state: State::Idle,
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
        self.state = State::Idle;
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
            let idle = matches!(self.state, State::Idle);
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
            Request::Ehlo { host } => self.ehlo(host)?,
            Request::Helo { host } => {
                self.greet(host, false)?;
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

    /// Records a greeting (a repeated one is junk) and ends any transaction.
    fn greet(&mut self, host: String, esmtp: bool) -> Result<(), Stop> {
        if self.helo.is_some() {
            self.junk_command()?;
        }
        self.helo = Some(host);
        self.esmtp = esmtp;
        self.reset();
        Ok(())
    }

    fn ehlo(&mut self, host: String) -> Result<(), Stop> {
        self.greet(host, true)?;
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
        self.state = State::Idle;
    }

    fn mail(&mut self, address: String, size: usize) -> Result<(), Stop> {
        if self.helo.is_none() {
            return self.fail(503, "5.5.1", "MAIL: send EHLO or HELO first");
        }
        match self.state {
            State::Idle => {}
            State::Mail(_) | State::Bdat(..) => {
                return self.fail(503, "5.5.1", "MAIL: nested MAIL command; RSET first")
            }
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
        self.state = State::Mail(Transaction {
            mail_from: address,
            declared_size: size,
            rcpts: Vec::new(),
        });
        self.reply(250, "2.1.0", "sender OK");
        Ok(())
    }

    fn rcpt(&mut self, address: String) -> Result<(), Stop> {
        let max = self.p.config.smtp.max_recipients;
        let tx = match &mut self.state {
            State::Mail(tx) => tx,
            State::Idle => return self.fail(503, "5.5.1", "RCPT: need MAIL first"),
            State::Bdat(..) => return self.fail(503, "5.5.1", "RCPT: not during BDAT"),
        };
        if tx.rcpts.len() >= max {
            self.reply(
                452,
                "4.5.3",
                &format!("RCPT: too many recipients ({max} per transaction)"),
            );
            return Ok(());
        }
        let declared = tx.declared_size;
        let dest = match classify_recipient(&self.p.config, &address) {
            Ok(dest) => dest,
            Err(RcptRefusal::RelayDenied) => return self.fail(550, "5.7.1", "relaying denied"),
            Err(RcptRefusal::AddressLiteral) => {
                return self.fail(
                    550,
                    "5.7.1",
                    "relaying denied: address literals are not accepted",
                )
            }
            Err(RcptRefusal::BadSyntax) => {
                return self.fail(501, "5.1.3", "RCPT TO: bad recipient address syntax")
            }
        };
        let limit = size_limit(
            &self.p.config,
            std::slice::from_ref(&(address.clone(), dest.clone())),
        );
        if declared > limit {
            return self.fail(
                552,
                "5.3.4",
                &format!(
                    "RCPT: message size {declared} exceeds this recipient's limit of {limit} bytes"
                ),
            );
        }
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

    /// The transaction DATA transfers, taken out of the state: once DATA is accepted the
    /// transaction ends with it, whatever the outcome. Otherwise the state is kept and the
    /// refusal (code, text) returned.
    fn take_for_data(&mut self) -> Result<Transaction, (u16, &'static str)> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Mail(tx) if !tx.rcpts.is_empty() => Ok(tx),
            State::Idle => Err((503, "DATA: need MAIL first")),
            kept @ State::Bdat(..) => {
                self.state = kept;
                Err((503, "DATA: not after BDAT"))
            }
            kept @ State::Mail(_) => {
                self.state = kept;
                Err((554, "DATA: no valid recipients"))
            }
        }
    }

    async fn data(&mut self) -> Result<(), Stop> {
        let tx = match self.take_for_data() {
            Ok(tx) => tx,
            Err((code, text)) => return self.fail(code, "5.5.1", text),
        };
        self.reply(354, "", "start mail input; end with <CRLF>.<CRLF>");
        self.flush_by(self.command_deadline()).await?;

        let limit = size_limit(&self.p.config, &tx.rcpts);
        let mut incoming = Incoming::new(self.p.inbound.store.body_writer(), limit);
        let mut scanner = DataScanner::default();
        let mut out = Vec::with_capacity(READ_CHUNK);
        let deadline = Instant::now() + Duration::from_secs(self.p.config.smtp.data_timeout);
        loop {
            if self.rpos < self.rbuf.len() {
                out.clear();
                let r = scanner.feed(&self.rbuf[self.rpos..], &mut out);
                self.rpos += r.consumed;
                incoming.append(&out);
                if r.done {
                    break;
                }
            }
            // On any error the partial body is deleted by the writer's drop.
            self.fill(deadline, false).await?;
        }
        self.finish(tx, incoming, scanner.fault()).await
    }

    /// The transaction a BDAT chunk belongs to and its body (opened by the first chunk),
    /// taken out of the state while the chunk is read; or, when there is none, the state
    /// is kept and the refusal returned.
    fn take_for_bdat(
        &mut self,
        data_timeout: Duration,
    ) -> Result<(Transaction, Box<Chunked>), &'static str> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Bdat(tx, chunked) => Ok((tx, chunked)),
            State::Mail(tx) if !tx.rcpts.is_empty() => {
                let limit = size_limit(&self.p.config, &tx.rcpts);
                let chunked = Box::new(Chunked {
                    incoming: Incoming::new(self.p.inbound.store.body_writer(), limit),
                    deadline: Instant::now() + data_timeout,
                });
                Ok((tx, chunked))
            }
            State::Idle => Err("BDAT: need MAIL first"),
            kept @ State::Mail(_) => {
                self.state = kept;
                Err("BDAT: no valid recipients")
            }
        }
    }

    async fn bdat(&mut self, size: usize, last: bool) -> Result<(), Stop> {
        let data_timeout = Duration::from_secs(self.p.config.smtp.data_timeout);
        let mut open = self.take_for_bdat(data_timeout);
        // The chunk's bytes are read (and dropped when refused) in every case, so the
        // command stream stays in step.
        let deadline = match &open {
            Ok((_, chunked)) => chunked.deadline,
            Err(_) => Instant::now() + data_timeout,
        };
        let mut remaining = size;
        loop {
            let take = remaining.min(self.rbuf.len() - self.rpos);
            if let Ok((_, chunked)) = &mut open {
                chunked
                    .incoming
                    .append(&self.rbuf[self.rpos..self.rpos + take]);
            }
            self.rpos += take;
            remaining -= take;
            if remaining == 0 {
                break;
            }
            // On any error the partial body is deleted by the writer's drop.
            self.fill(deadline, false).await?;
        }
        let (tx, chunked) = match open {
            Ok(open) => open,
            Err(why) => return self.fail(503, "5.5.1", why),
        };
        if !last && chunked.incoming.write_error.is_none() {
            self.state = State::Bdat(tx, chunked);
            self.reply(250, "2.0.0", &format!("{size} octets received"));
            return Ok(());
        }
        self.finish(tx, chunked.incoming, None).await
    }

    /// Ends a transaction after its data (or after a chunk that could not be spooled):
    /// 451 on a write error, a refusal for faulty or oversize data, else the store step.
    /// A body that is not stored is deleted by its writer's drop.
    async fn finish(
        &mut self,
        tx: Transaction,
        incoming: Incoming,
        fault: Option<DataFault>,
    ) -> Result<(), Stop> {
        if let Some(e) = incoming.write_error {
            tracing::error!(error = %e, "cannot spool message body");
            self.reply(451, "4.3.0", "temporary storage failure, try again later");
            return Ok(());
        }
        if let Some((code, status, text)) = data_refusal(fault, incoming.oversize, incoming.limit) {
            self.p
                .inbound
                .metrics
                .inbound_rejected
                .fetch_add(1, Relaxed);
            tracing::info!(code, reason = %text, "message refused");
            return self.fail(code, status, &text);
        }
        let finished = match incoming.body.finish() {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the message body durable");
                self.reply(451, "4.3.0", "temporary storage failure, try again later");
                return Ok(());
            }
        };
        self.store(tx, finished).await;
        Ok(())
    }

    /// Hands a complete message to [`Inbound::accept`] and answers 250 once it is durable,
    /// 451 when it is not.
    async fn store(&mut self, tx: Transaction, body: FinishedBody) {
        let env = Envelope {
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: tx.mail_from,
            rcpts: tx.rcpts,
        };
        let config = self.p.config.clone();
        match self.p.inbound.accept(&config, env, body).await {
            Ok(id) => {
                self.p
                    .inbound
                    .metrics
                    .inbound_accepted
                    .fetch_add(1, Relaxed);
                tracing::info!(id = %id, "message accepted");
                self.reply(250, "2.0.0", &format!("OK queued as {id}"));
                self.just_delivered = true;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot store message");
                self.reply(451, "4.3.0", "temporary storage failure, try again later");
            }
        }
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

/// The reply refusing data that ended with a fault or ran past `limit`; `None` when the
/// message may be stored.
fn data_refusal(
    fault: Option<DataFault>,
    oversize: bool,
    limit: usize,
) -> Option<(u16, &'static str, String)> {
    match (fault, oversize) {
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
    }
}
