//! Fuzz target: the Messaging API request path without the network. Bytes are parsed as
//! JSON into `SendRequest` (as the handler does), then validated and expanded. Invariants:
//! no panic; an accepted request has at least one transaction, every transaction has at
//! least one recipient, tids are unique, and no header field of an accepted request holds
//! CR or LF (header injection).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::outbound::validate::validate;
use postern::model::wire::SendRequest;
use postern::config::Config;
use std::sync::OnceLock;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::parse(
            r#"
[server]
hostname = "mx.example.test"
data_dir = "/tmp/postern-fuzz-api"
public_url = "http://127.0.0.1:8080"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
[[service]]
id = "svc"
key = "k"
secret = "c2VjcmV0"
tps = 50
assets = ["a"]
[[asset]]
id = "a"
domains = ["example.test"]
[[contact_policy]]
group = "g"
frequency_cap = 1
"#,
            "fuzz",
        )
        .expect("fuzz config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(req) = serde_path_to_error::deserialize::<_, SendRequest>(value) else { return };
    let c = config();
    let mut n = 0u32;
    let mut tid = || {
        n += 1;
        format!("tid-{n}")
    };
    let policy = postern::model::urls::Policy::default();
    let Ok(sub) = validate(req, &c.services[0], c, None, &policy, 1_700_000_000_000, &mut tid) else { return };
    assert!(!sub.transactions.is_empty());
    let mut seen = std::collections::HashSet::new();
    for t in &sub.transactions {
        assert!(!t.recipients.is_empty());
        assert!(seen.insert(t.tid.clone()), "duplicate tid");
        assert!(!t.subject.contains(['\r', '\n']), "CR/LF in subject");
    }
    for h in [Some(&sub.from), sub.from_name.as_ref(), sub.reply_to.as_ref()].into_iter().flatten() {
        assert!(!h.contains(['\r', '\n']), "CR/LF in a header field");
    }
    assert!(sub.send_at_ms <= 1_700_000_000_000 + 7 * 86_400_000);
    assert!(sub.expire_at_ms > sub.send_at_ms);
});
