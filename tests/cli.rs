//! The binary as an operator runs it: check-config exit codes, sd_notify READY/RELOADING/
//! STOPPING over a real NOTIFY_SOCKET, SIGHUP reload of the config, SIGTERM clean exit.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

#[test]
fn check_config_accepts_the_example_and_names_the_line_of_an_unknown_key() {
    let ok = postern()
        .args([
            "check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/etc/postern.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/postern.toml")).unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "max_recipients = 100",
            "max_recipients = 100\nmax_recipents = 5",
        ),
    )
    .unwrap();
    let out = postern()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l.starts_with("max_recipients"))
        .unwrap()
        + 2;
    assert!(err.contains(&format!("bad.toml:{line}:")), "{err}");
    assert!(err.contains("max_recipents"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        postern().arg("frobnicate").output().unwrap().status.code(),
        Some(2)
    );
    assert_eq!(
        postern()
            .args(["serve", "--nope"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(2)
    );
    let help = postern().args(["serve", "--help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
}

fn recv_state(sock: &UnixDatagram, want: &str, log: &std::path::Path) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("no {want} from the daemon ({e}); its log:\n{log}");
            }
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.lines().any(|l| l == want) {
            return msg;
        }
    }
}

#[tokio::test]
async fn serve_notifies_systemd_reloads_on_sighup_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();

    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let daemon = ConfigBuilder::inbound(&first.url("")).on_free_ports();
    let smtp = daemon.smtp_addr();
    let config = daemon.write_in(dir.path());
    // 'static so the blocking closures below can all show it on failure.
    let log: &'static std::path::Path = Box::leak(dir.path().join("log").into_boxed_path());
    let mut child = postern()
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let notify = tokio::task::spawn_blocking(move || {
        recv_state(&notify, "READY=1", log);
        notify
    })
    .await
    .unwrap();

    // A broken file is refused and changes nothing.
    std::fs::write(&config, "[server]\nhostname = 5\n").unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let notify = tokio::task::spawn_blocking(move || {
        recv_state(&notify, "RELOADING=1", log);
        recv_state(&notify, "READY=1", log);
        notify
    })
    .await
    .unwrap();
    // Now a good one pointing the webhook elsewhere.
    daemon
        .asset(|a| a.webhooks(&second.url("")))
        .write_in(dir.path());
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let notify = tokio::task::spawn_blocking(move || {
        recv_state(&notify, "RELOADING=1", log);
        recv_state(&notify, "READY=1", log);
        notify
    })
    .await
    .unwrap();

    let (mut raw, _) = Raw::connect(smtp).await;
    raw.cmd("EHLO c").await;
    raw.cmd("MAIL FROM:<a@example.org>").await;
    raw.cmd("RCPT TO:<support@example.test>").await;
    raw.cmd("DATA").await;
    assert!(raw
        .cmd("Subject: after reload\r\n\r\nx\r\n.")
        .await
        .starts_with("250"));
    raw.cmd("QUIT").await;
    let hooks = second.wait_for_count(1, Duration::from_secs(30)).await;
    assert_eq!(hooks[0].json()["subject"], "after reload");
    assert!(first.delivered().is_empty());

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tokio::task::spawn_blocking(move || recv_state(&notify, "STOPPING=1", log))
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
