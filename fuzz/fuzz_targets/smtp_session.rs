//! A whole SMTP session over an in-memory stream.
//!
//! The input is not sent as is: each byte picks a token from [`TOKENS`] (SMTP commands,
//! message lines, line-ending fragments, raw bytes, BDAT chunks of fuzzed sizes, long
//! lines), so that libFuzzer reaches MAIL/RCPT/DATA/BDAT and the accept path instead of
//! spending its time on "500 command not recognized" (the approach of smtp-proto's own
//! fuzzer). The client writes everything, half-closes, and reads every reply until the
//! server closes; then the replies are checked.

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::config::{Config, ResolverSetting};
use postern::inbound::Inbound;
use postern::smtp::session::{Session, SessionParams};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// One piece of the client's byte stream.
#[derive(Clone, Copy)]
enum Tok {
    /// These bytes verbatim.
    Lit(&'static [u8]),
    /// The next input byte `n`, then `n % 64` input bytes verbatim.
    Raw,
    /// `BDAT <n>\r\n` (or `... LAST`) followed by `n` bytes of chunk: `n` is the next
    /// input byte; the chunk is the following input bytes, as many as there are.
    Bdat { last: bool },
    /// `MAIL FROM:<a@b.c> SIZE=<n>` with `n` from the next two input bytes, scaled.
    MailSize,
    /// `n * 1024` bytes of `x` without a line end, `n` from the next input byte (% 80):
    /// oversize messages, over-long lines, spool files past the inline limit.
    Fill,
}

use Tok::*;

const TOKENS: &[Tok] = &[
    // 0: greetings
    Lit(b"EHLO x\r\n"),
    Lit(b"HELO x\r\n"),
    Lit(b"LHLO x\r\n"),
    // 3: senders
    Lit(b"MAIL FROM:<a@b.c>\r\n"),
    Lit(b"MAIL FROM:<>\r\n"),
    Lit(b"MAIL FROM:<a@b.c> BODY=8BITMIME SMTPUTF8\r\n"),
    MailSize,
    Lit(b"MAIL FROM:<s@example.test>\r\n"),
    // 8: recipients
    Lit(b"RCPT TO:<s@example.test>\r\n"),
    Lit(b"RCPT TO:<S@Example.TEST.>\r\n"),
    Lit(b"RCPT TO:<a_demo@inbound.example.test>\r\n"),
    Lit(b"RCPT TO:<b+x@bounces.example.test>\r\n"),
    Lit(b"RCPT TO:<x@elsewhere.org>\r\n"),
    Lit(b"RCPT TO:<x@[192.0.2.1]>\r\n"),
    Lit(b"RCPT TO:<s@small.test>\r\n"),
    Lit(b"RCPT TO:<@relay.org:x@example.test>\r\n"),
    Lit(b"RCPT TO:<\"q@x\"@example.test>\r\n"),
    Lit(b"RCPT TO:<t@example.test> NOTIFY=NEVER\r\n"),
    // 18: data
    Lit(b"DATA\r\n"),
    Bdat { last: false },
    Bdat { last: true },
    Lit(b"BDAT 0 LAST\r\n"),
    Lit(b".\r\n"),
    Lit(b"\r\n"),
    Lit(b"\n"),
    Lit(b"\r"),
    Lit(b"."),
    Lit(b"\0"),
    // 28: other commands
    Lit(b"RSET\r\n"),
    Lit(b"NOOP\r\n"),
    Lit(b"VRFY x\r\n"),
    Lit(b"EXPN x\r\n"),
    Lit(b"HELP\r\n"),
    Lit(b"AUTH PLAIN\r\n"),
    Lit(b"ETRN x\r\n"),
    Lit(b"STARTTLS\r\n"),
    Lit(b"QUIT\r\n"),
    // 37: message content
    Lit(b"From: s@example.test\r\n"),
    Lit(b"From: A <a@example.org>\r\n"),
    Lit(b"Subject: hi\r\n"),
    Lit(b"Content-Type: multipart/mixed; boundary=b\r\n"),
    Lit(b"--b\r\n"),
    Lit(b"--b--\r\n"),
    Lit(b"Content-Transfer-Encoding: base64\r\n"),
    Lit(b"hello world\r\n"),
    // 45: fragments for building odd commands
    Lit(b" "),
    Lit(b"x"),
    Lit(b"MAIL "),
    Lit(b"RCPT "),
    Lit(b"FROM:"),
    Lit(b"TO:"),
    Lit(b"<"),
    Lit(b">"),
    Lit(b"@"),
    Lit(b"SIZE="),
    // 55: raw bytes and big things
    Raw,
    Raw,
    Raw,
    Fill,
];

const LONG_COMMAND: usize = 600;

/// Turns fuzz input into the client's byte stream.
fn client_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 8);
    let mut i = 0;
    let next = |i: &mut usize| -> Option<u8> {
        let b = data.get(*i).copied();
        *i += 1;
        b
    };
    while let Some(b) = next(&mut i) {
        // A few values beyond the table are long command lines.
        let idx = b as usize % (TOKENS.len() + 1);
        if idx == TOKENS.len() {
            out.extend(std::iter::repeat_n(b'X', LONG_COMMAND));
            out.extend_from_slice(b"\r\n");
            continue;
        }
        match TOKENS[idx] {
            Lit(bytes) => out.extend_from_slice(bytes),
            Raw => {
                let n = next(&mut i).unwrap_or(0) as usize % 64;
                for _ in 0..n {
                    match next(&mut i) {
                        Some(b) => out.push(b),
                        None => break,
                    }
                }
            }
            Bdat { last } => {
                let n = next(&mut i).unwrap_or(0) as usize;
                out.extend_from_slice(format!("BDAT {n}").as_bytes());
                if last {
                    out.extend_from_slice(b" LAST");
                }
                out.extend_from_slice(b"\r\n");
                for _ in 0..n {
                    match next(&mut i) {
                        Some(b) => out.push(b),
                        None => break,
                    }
                }
            }
            MailSize => {
                let hi = next(&mut i).unwrap_or(0) as usize;
                let lo = next(&mut i).unwrap_or(0) as usize;
                let size = ((hi << 8) | lo) * 4;
                out.extend_from_slice(format!("MAIL FROM:<a@b.c> SIZE={size}\r\n").as_bytes());
            }
            Fill => {
                let n = next(&mut i).unwrap_or(0) as usize % 80;
                out.extend(std::iter::repeat_n(b'x', n * 1024));
            }
        }
    }
    out
}

struct World {
    rt: tokio::runtime::Runtime,
    config: Arc<Config>,
    inbound: Arc<Inbound>,
    metrics: Arc<postern::metrics::Metrics>,
    /// Kept alive: a dropped sender reads as "shutting down" to every session.
    shutdown: watch::Sender<bool>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("postern-fuzz-smtp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp data dir");
        let text = format!(
            r#"
[server]
hostname = "mx.example.test"
data_dir = "{}"
public_url = "http://127.0.0.1:8080"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"

[smtp]
listen = ["127.0.0.1:2525"]
max_message_size = 65536
max_recipients = 4
command_timeout = 1
data_timeout = 1

[dns]
resolver = "off"

[[asset]]
id = "a_demo"
domains = ["example.test"]
inbound = true
max_inbound_size = 65536
incoming_webhook = "http://127.0.0.1:9/mo"

[[asset]]
id = "a_small"
domains = ["small.test"]
inbound = true
max_inbound_size = 2048
mo_attachments = "url"
incoming_webhook = "http://127.0.0.1:9/mo"
"#,
            dir.display()
        );
        let config = Config::parse(&text, "fuzz").expect("fuzz config is valid");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = postern::store::Store::open(&dir).expect("store");
        let metrics = Arc::new(postern::metrics::Metrics::default());
        let inbound = Arc::new(Inbound {
            store,
            auth: postern::inbound::auth::Verifier::new(&ResolverSetting::Off).expect("verifier"),
            signer: postern::model::tokens::Signer::new([7; 32]),
            outbox: postern::webhooks::Outbox::channel().0,
            metrics: metrics.clone(),
            // Nobody acts on feedback here: a send to the dropped receiver is ignored.
            feedback: tokio::sync::mpsc::unbounded_channel().0,
        });
        World {
            rt,
            config: Arc::new(config),
            inbound,
            metrics,
            shutdown: watch::channel(false).0,
        }
    })
}

/// Runs one session over `input`; returns everything the server wrote.
async fn drive(w: &World, input: &[u8]) -> Vec<u8> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let params = SessionParams {
        config: w.config.clone(),
        tls: None,
        inbound: w.inbound.clone(),
        shutdown: w.shutdown.subscribe(),
    };
    let session = Session::new(server, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), params);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async move {
        // The server may close early (QUIT, too many errors): then writes fail.
        let _ = wr.write_all(input).await;
        let _ = wr.shutdown().await;
        // Keep the write half alive until the end, or the duplex reads as closed.
        wr
    };
    let read = async move {
        let mut replies = Vec::new();
        rd.read_to_end(&mut replies).await.expect("in-memory read");
        replies
    };
    let (_, _wr, replies) = tokio::join!(session.run(), write, read);
    replies
}

/// How many times `needle` occurs in `hay`, ASCII case-insensitively.
fn count_ci(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .filter(|w| w.eq_ignore_ascii_case(needle))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let input = client_bytes(data);
    let accepted_before = w.metrics.inbound_accepted.load(Relaxed);
    let replies = w.rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(30), drive(w, &input)).await {
            Ok(r) => r,
            Err(_) => panic!("session did not end within 30 s of the client's half-close"),
        }
    });
    let accepted = w.metrics.inbound_accepted.load(Relaxed) - accepted_before;

    // Every reply line is `DDD SP text CRLF` or `DDD - text CRLF`, DDD in 200..=599, with
    // no CR or LF inside the text (no reply injection).
    assert!(
        replies.ends_with(b"\r\n"),
        "replies do not end with CRLF: {:?}",
        String::from_utf8_lossy(&replies)
    );
    let body = &replies[..replies.len() - 2];
    let lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    // Splitting on LF and stripping one CR per line: reconstructing must give the input
    // back with CRLF everywhere, i.e. no bare LF and no stray CR anywhere.
    for l in &lines {
        assert!(
            !l.contains(&b'\r'),
            "bare CR in reply {:?}",
            String::from_utf8_lossy(l)
        );
        assert!(l.len() >= 4, "short reply line {:?}", String::from_utf8_lossy(l));
        assert!(
            l[..3].iter().all(u8::is_ascii_digit) && (b'2'..=b'5').contains(&l[0]),
            "bad reply code {:?}",
            String::from_utf8_lossy(l)
        );
        assert!(
            l[3] == b' ' || l[3] == b'-',
            "bad separator {:?}",
            String::from_utf8_lossy(l)
        );
        assert!(l.len() + 2 <= 512, "reply line over 512 octets: {}", l.len() + 2);
    }
    assert!(
        body.windows(2).all(|w| w != b"\r\r"),
        "stray CR in replies"
    );
    // Multi-line replies keep one code and end with a `DDD SP` line.
    for pair in lines.windows(2) {
        if pair[0][3] == b'-' {
            assert_eq!(
                pair[0][..3],
                pair[1][..3],
                "multi-line reply changes its code"
            );
        }
    }
    assert_eq!(lines.last().unwrap()[3], b' ', "replies end inside a multi-line reply");
    // The banner comes first.
    assert!(lines[0].starts_with(b"220 "), "no banner: {:?}", String::from_utf8_lossy(lines[0]));
    // The client never stalls, so no command or data timeout may fire.
    for l in &lines {
        assert!(
            !l.starts_with(b"421 4.4.2"),
            "timeout although the client half-closed: {:?}",
            String::from_utf8_lossy(&replies)
        );
    }
    // 221 (QUIT) and 421 close the session: nothing may follow them.
    for l in &lines[..lines.len() - 1] {
        assert!(
            !l.starts_with(b"221") && !l.starts_with(b"421"),
            "reply after the session was closed: {:?}",
            String::from_utf8_lossy(&replies)
        );
    }
    // A 250 after the data is said once per stored message, and a message needs a DATA or
    // BDAT command (the input is an upper bound: those words may also sit in content).
    let queued = lines.iter().filter(|l| l.starts_with(b"250 2.0.0 OK queued as ")).count();
    assert_eq!(queued as u64, accepted, "250 queued replies vs messages stored");
    let data_cmds = count_ci(&input, b"DATA") + count_ci(&input, b"BDAT");
    assert!(
        queued <= data_cmds,
        "{queued} messages queued with {data_cmds} DATA/BDAT commands"
    );
    // No 354 without a DATA command.
    let go_ahead = lines.iter().filter(|l| l.starts_with(b"354")).count();
    assert!(go_ahead <= count_ci(&input, b"DATA"), "354 without DATA");
});
