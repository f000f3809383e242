//! Arbitrary bytes as a received message -> the MIME repair (`inbound::repair::repair`)
//! and mail-parser over its copy.
//!
//! Checks: the repair never panics; its copy stays within a constant factor of the input
//! (linear work); mail-parser finds in the copy exactly the parts the repair spelled out
//! (so it never searches for a boundary that is not there); no part it finds is nested
//! (nested messages are opaque) and multipart nesting stays within `MAX_DEPTH`; and the
//! attachments report a lower-case type and a name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_parser::PartType;
use postern::webhooks::mo::{attachments, parse};
use postern::webhooks::repair::{repair, MAX_DEPTH};

fuzz_target!(|raw: &[u8]| {
    let Some(fixed) = repair(raw) else {
        return;
    };
    // Per part the copy adds a fresh boundary line and a few header lines of our own (the
    // reported type, and the name hex-encoded: an octet that is not UTF-8 decodes to
    // U+FFFD, three octets, six hex digits, so at most six times the header it came from).
    assert!(
        fixed.bytes.len() <= 7 * raw.len() + fixed.parts * 160 + 64,
        "copy of {} bytes for {} input bytes and {} parts",
        fixed.bytes.len(),
        raw.len(),
        fixed.parts
    );
    let message = parse(&fixed.bytes).expect("the copy always parses");
    assert_eq!(
        message.parts.len(),
        fixed.parts,
        "mail-parser saw another structure than the repair built"
    );
    for part in &message.parts {
        assert!(
            !matches!(part.body, PartType::Message(_)),
            "a nested message was descended"
        );
    }
    // Depth of each multipart: parts are numbered depth-first from the root.
    let mut depth = vec![0usize; message.parts.len()];
    for (i, part) in message.parts.iter().enumerate() {
        if let PartType::Multipart(children) = &part.body {
            let here = depth[i];
            assert!(here < MAX_DEPTH, "multipart nested deeper than {MAX_DEPTH}");
            for &c in children {
                if let Some(d) = depth.get_mut(c as usize) {
                    *d = here + 1;
                }
            }
        }
    }
    for a in attachments(&message) {
        assert_eq!(a.content_type, a.content_type.to_ascii_lowercase());
        assert!(!a.name.is_empty());
    }
});
