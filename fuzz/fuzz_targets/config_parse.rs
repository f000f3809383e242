//! Arbitrary UTF-8 text -> `config::Config::parse`.
//!
//! Checks: parsing never panics; it is deterministic; an error always starts with
//! `fuzz:<line>:` where `<line>` lies within the text (0 = "not written", a default).
//!
//! Texts containing `file:` are skipped: a secret written as `file:/dev/zero` makes the
//! parser read forever, which is the documented meaning of `file:` for a trusted
//! operator file, not a bug the fuzzer should report. (`env:` secrets only read the
//! environment and stay in.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains("file:") || text.contains("ile:") {
        return;
    }
    let first = Config::parse(text, "fuzz");
    let again = Config::parse(text, "fuzz");
    assert_eq!(
        first.is_ok(),
        again.is_ok(),
        "parsing the same text twice gave different results"
    );
    match first {
        Ok(config) => {
            // What validation promised.
            assert!(!config.server.hostname.is_empty());
            assert!(config.smtp.max_message_size >= 1024);
            assert!(config.smtp.command_timeout >= 1 && config.smtp.data_timeout >= 1);
            for a in &config.assets {
                assert!(a.max_inbound_size >= 1 && a.max_inbound_size <= config.smtp.max_message_size);
                assert!(!a.inbound || a.incoming_webhook.is_some());
                for d in &a.domains {
                    assert_eq!(d, &d.to_ascii_lowercase(), "domain not normalised");
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert_eq!(msg, again.unwrap_err().to_string(), "error text not deterministic");
            let rest = msg
                .strip_prefix("fuzz:")
                .unwrap_or_else(|| panic!("error without origin: {msg:?}"));
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            assert!(
                !digits.is_empty() && rest[digits.len()..].starts_with(':'),
                "error without a line number: {msg:?}"
            );
            let line: usize = digits.parse().expect("line number fits");
            let lines = text.matches('\n').count() + 1;
            assert!(line <= lines, "line {line} beyond the text's {lines} lines: {msg:?}");
        }
    }
});
