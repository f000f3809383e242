//! Domains as an operator handles them (SPEC 9): `postern domain records`, `verify` against
//! a DNS server on loopback whose zone the test edits, `require_verified_domain` at the
//! API, and `rotate-dkim` switching a running daemon's signing key.

mod common;
#[path = "common/dns.rs"]
mod dns;
#[path = "common/smarthost.rs"]
mod smarthost;

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn postern(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Domains {
    handle: Option<postern::Handle>,
    api: String,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Domains {
    /// A daemon on asset `a_demo` sending through the relay at `relay_port` as service
    /// `key-a`, changed by `edit`, whose config is also on disk for the command line.
    async fn start(relay_port: u16, edit: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Domains {
        let dir = tempfile::tempdir().unwrap();
        let config = ConfigBuilder::inbound("http://127.0.0.1:9")
            .retry_base(1)
            .service(Service::new("svc_a", "key-a", "a_demo"))
            .asset(|a| a.route(Route::smtp(relay_port)).dkim_ed25519("sel1"));
        let Started {
            handle,
            http,
            config_path: config,
            ..
        } = start_in_process(dir.path(), edit(config)).await;
        Domains {
            handle: Some(handle),
            api: format!("http://{http}"),
            config,
            _dir: dir,
        }
    }

    async fn send(&self) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/v2/messages", self.api))
            .header("key", "key-a")
            .json(&json!({
                "channel": "email",
                "from": "news@example.test",
                "to": [{"email": ["ann@example.org"]}],
                "content": {"type": "text", "subject": "Hi", "text": "Hello"},
            }))
            .send()
            .await
            .unwrap();
        (
            resp.status().as_u16(),
            resp.json().await.unwrap_or(Value::Null),
        )
    }

    /// The CLI, run off the async runtime (it blocks on the daemon's answer).
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.config.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            postern(&config, &args)
        })
        .await
        .unwrap()
    }

    async fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

fn status_of(v: &Value, purpose: &str) -> (String, Value) {
    let r = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["purpose"] == purpose)
        .unwrap_or_else(|| panic!("no {purpose} in {v}"));
    (
        r["status"].as_str().unwrap().to_string(),
        r["found"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_record_and_gates_sending() {
    let zone: dns::Zone = Default::default();
    let dns_addr = dns::serve_zone(zone.clone()).await;
    let d = Domains::start(9, |c| {
        c.dns(dns_addr).asset(|a| a.require_verified_domain())
    })
    .await;

    let (status, body) = d.send().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "7004");
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .starts_with("from: domain 'example.test' is not verified"),
        "{body}"
    );

    let (code, out, err) = d
        .cli(&["domain", "records", "example.test", "--format", "json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let value = |purpose: &str| {
        records
            .iter()
            .find(|r| r["purpose"] == purpose)
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    r["value"].as_str().unwrap().to_string(),
                )
            })
            .unwrap()
    };
    let (ver_name, ver_value) = value("verification");
    let (dkim_name, dkim_value) = value("dkim");
    assert_eq!(ver_name, "_postern.example.test");
    assert_eq!(dkim_name, "sel1._domainkey.example.test");

    // Nothing published: every record missing, exit 1.
    let (code, out, _) = d.cli(&["domain", "verify", "example.test"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("missing") && out.contains("NOT verified"),
        "{out}"
    );

    // Verification and DKIM right, SPF and MX wrong, DMARC missing: verified (the two
    // that matter are right) and the others reported with what was found.
    {
        let mut z = zone.lock().unwrap();
        z.insert((ver_name.clone(), RecordType::TXT), vec![ver_value.clone()]);
        // Published split and spaced as DNS consoles do: still the same key.
        let spaced = dkim_value.replace("; p=", ";  p=");
        z.insert((dkim_name.clone(), RecordType::TXT), vec![spaced]);
        z.insert(
            ("example.test".into(), RecordType::TXT),
            vec!["v=spf1 -all".into()],
        );
        z.insert(
            ("example.test".into(), RecordType::MX),
            vec!["10 mail.elsewhere.test.".into()],
        );
    }
    let (code, out, err) = d
        .cli(&["domain", "verify", "example.test", "--format", "json"])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(status_of(&v, "verification").0, "ok");
    assert_eq!(status_of(&v, "dkim").0, "ok");
    assert_eq!(
        status_of(&v, "spf"),
        ("wrong".into(), json!(["v=spf1 -all"]))
    );
    assert_eq!(status_of(&v, "dmarc").0, "missing");
    assert_eq!(
        status_of(&v, "mx"),
        ("wrong".into(), json!(["10 mail.elsewhere.test."]))
    );
    let (status, body) = d.send().await;
    assert_eq!(status, 202, "{body}");

    // A wrong DKIM key un-verifies the domain, and sending stops again.
    zone.lock().unwrap().insert(
        (dkim_name.clone(), RecordType::TXT),
        vec!["v=DKIM1; k=ed25519; p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()],
    );
    let (code, out, _) = d.cli(&["domain", "verify", "example.test"]).await;
    assert_eq!(code, 1);
    assert!(
        out.contains("wrong") && out.contains("found: v=DKIM1; k=ed25519; p=AAAA"),
        "{out}"
    );
    assert_eq!(d.send().await.0, 400);

    // The admin list shows the state.
    let list: Value = admin_json(&reqwest::Client::new(), format!("{}/admin/domains", d.api)).await;
    assert_eq!(list["domains"][0]["domain"], "example.test");
    assert_eq!(list["domains"][0]["verified"], false);
    assert_eq!(list["domains"][0]["requireVerified"], true);
    assert!(list["domains"][0]["checkedAt"].is_string());

    // An unknown domain is named as such.
    let (code, _, err) = d.cli(&["domain", "verify", "other.test"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("other.test belongs to no asset"), "{err}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_dkim_publishes_both_keys_then_switches_the_running_signer() {
    let relay = smarthost::Smarthost::start(smarthost::Script::default()).await;
    // The loop below sends until the signer switches (up to a second after the rotation):
    // a fast machine sends more than the default 50 a second.
    let d = Domains::start(relay.addr.port(), |c| c.services_tps(10_000)).await;
    let selector_of = |data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let sig = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string();
        sig.split(';')
            .find_map(|t| t.trim().strip_prefix("s=").map(str::to_string))
            .unwrap_or_default()
    };
    assert_eq!(d.send().await.0, 202);
    let received = relay.received.clone();
    wait_for(WAIT, || received.lock().unwrap().len() == 1).await;
    assert_eq!(selector_of(&relay.messages()[0].data), "sel1");

    // A rotation with a grace period: both published, the old one still signs.
    let (code, out, err) = d
        .cli(&["domain", "rotate-dkim", "example.test", "--grace", "1h"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("new selector sel2"), "{out}");
    let (_, out, _) = d
        .cli(&["domain", "records", "example.test", "--format", "json"])
        .await;
    let records: Vec<Value> = serde_json::from_str(&out).unwrap();
    let dkim: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["purpose"].as_str().unwrap().starts_with("dkim"))
        .map(|r| {
            (
                r["purpose"].as_str().unwrap().to_string(),
                r["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        dkim,
        [
            (
                "dkim".to_string(),
                "sel1._domainkey.example.test".to_string()
            ),
            (
                "dkim-next".to_string(),
                "sel2._domainkey.example.test".to_string()
            )
        ]
    );

    // Rotating again with no grace: sel3 signs at once; sel2, which never signed, is
    // dropped; sel1 stays published (retiring) for mail it signed that is still in flight.
    let (code, _, err) = d
        .cli(&[
            "domain",
            "rotate-dkim",
            "example.test",
            "--grace",
            "0s",
            "--selector",
            "sel3",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = d.cli(&["domain", "records", "example.test"]).await;
    assert!(
        out.contains("dkim          sel3._domainkey.example.test"),
        "{out}"
    );
    assert!(
        out.contains("dkim-retiring sel1._domainkey.example.test"),
        "{out}"
    );
    assert!(!out.contains("sel2._domainkey"), "{out}");

    // The running daemon picks the new key up without a signal.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let n = relay.messages().len() + 1;
        assert_eq!(d.send().await.0, 202);
        wait_for(WAIT, || received.lock().unwrap().len() >= n).await;
        if selector_of(&relay.messages()[n - 1].data) == "sel3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "signing never switched to sel3"
        );
    }
    d.stop().await;
}
