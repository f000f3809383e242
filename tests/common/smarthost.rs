//! A scriptable SMTP server on loopback, the smarthost of outbound tests. Behaviour by
//! recipient local part: `reject*` gets 550 5.1.1 at RCPT; `tempfail*` gets 451 4.3.0 the
//! first `tempfail_times` times; a message containing `datafail` gets 554 5.6.0 after DATA.
//! With `xoauth2_token` set, EHLO offers AUTH XOAUTH2 and only that bearer token passes.
#![allow(dead_code)]

use base64::Engine;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
    pub at: SystemTime,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct Script {
    pub tempfail_times: usize,
    pub xoauth2_token: Option<String>,
}

pub struct Smarthost {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Smarthost {
    pub async fn start(script: Script) -> Smarthost {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    pub async fn start_on(addr: SocketAddr, script: Script) -> Smarthost {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (rec, script, counts) = (rec.clone(), script.clone(), counts.clone());
                tokio::spawn(async move {
                    let _ = session(sock, rec, script, counts).await;
                });
            }
        });
        Smarthost {
            addr,
            received,
            task,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    rec: Arc<Mutex<Vec<Received>>>,
    script: Arc<Script>,
    counts: Arc<Mutex<HashMap<String, usize>>>,
) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 smarthost.test ESMTP test\r\n").await?;
    let mut from = String::new();
    let mut rcpts = Vec::new();
    let mut auth = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        let arg = |prefix: &str| {
            line[prefix.len()..]
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_string()
        };
        if upper.starts_with("EHLO") {
            let auth_line = if script.xoauth2_token.is_some() {
                "250-AUTH XOAUTH2\r\n"
            } else {
                ""
            };
            w.write_all(
                format!("250-smarthost.test\r\n{auth_line}250-SIZE 52428800\r\n250 8BITMIME\r\n")
                    .as_bytes(),
            )
            .await?;
        } else if upper.starts_with("AUTH XOAUTH2") {
            let b64 = line.split_whitespace().nth(2).unwrap_or("").to_string();
            let decoded = String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default(),
            )
            .into_owned();
            let ok = script
                .xoauth2_token
                .as_ref()
                .is_some_and(|t| decoded.contains(&format!("auth=Bearer {t}\x01")));
            auth = Some(decoded);
            if ok {
                w.write_all(b"235 2.7.0 Accepted\r\n").await?;
            } else {
                w.write_all(b"535 5.7.8 bad token\r\n").await?;
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = arg("MAIL FROM:");
            rcpts.clear();
            w.write_all(b"250 2.1.0 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            let to = arg("RCPT TO:");
            let local = to.split('@').next().unwrap_or("").to_string();
            if local.starts_with("reject") {
                w.write_all(b"550 5.1.1 <recipient> no such user here\r\n")
                    .await?;
            } else if local.starts_with("tempfail") && {
                let mut c = counts.lock().unwrap();
                let n = c.entry(to.clone()).or_insert(0);
                *n += 1;
                *n <= script.tempfail_times
            } {
                w.write_all(b"451 4.3.0 try again later\r\n").await?;
            } else {
                rcpts.push(to);
                w.write_all(b"250 2.1.5 OK\r\n").await?;
            }
        } else if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            let mut data = Vec::new();
            loop {
                let mut buf = Vec::new();
                if r.read_until(b'\n', &mut buf).await? == 0 {
                    return Ok(());
                }
                if buf == b".\r\n" {
                    break;
                }
                let line = if buf.starts_with(b"..") {
                    &buf[1..]
                } else {
                    &buf[..]
                };
                data.extend_from_slice(line);
            }
            if memchr::memmem::find(&data, b"datafail").is_some() {
                w.write_all(b"554 5.6.0 content refused\r\n").await?;
            } else {
                rec.lock().unwrap().push(Received {
                    mail_from: from.clone(),
                    rcpts: rcpts.clone(),
                    data,
                    at: SystemTime::now(),
                    auth: auth.clone(),
                });
                w.write_all(b"250 2.0.0 queued\r\n").await?;
            }
        } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
            w.write_all(b"250 2.0.0 OK\r\n").await?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            let mut sink = [0u8; 0];
            let _ = r.read(&mut sink).await;
            w.write_all(b"502 5.5.1 not implemented\r\n").await?;
        }
    }
}
