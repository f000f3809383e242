//! The last mails each asset received (SPEC 14's admin page: "per asset, the forwarding
//! address with the last mails it received"), node-local: the `recent_inbound` tree, keyed
//! `<asset> \0 <received ms, 8 bytes big-endian> <tid>`, at most [`KEEP`] per asset. Noted
//! when the mail's MO event is rendered, not made durable on its own (it is a view: a
//! crash forgets at most the last few, and the next mail is noted again).

use super::{codec, StoreError};
use serde::{Deserialize, Serialize};

/// Mails kept per asset.
pub const KEEP: usize = 20;

/// What the admin page shows of a received mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundNote {
    pub tid: String,
    pub received_ms: u64,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    /// The start of the text body.
    pub snippet: String,
    /// A forwarding-confirmation mail's code and link (Gmail, Outlook), shown up front.
    pub confirmation_code: Option<String>,
    pub confirmation_link: Option<String>,
}

fn key(asset: &str, received_ms: u64, tid: &str) -> Vec<u8> {
    let mut k = asset.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&received_ms.to_be_bytes());
    k.extend_from_slice(tid.as_bytes());
    k
}

fn prefix(asset: &str) -> Vec<u8> {
    let mut p = asset.as_bytes().to_vec();
    p.push(0);
    p
}

/// Notes `note` for `asset` (again: the same key) and drops the asset's oldest beyond KEEP.
pub(super) fn note(tree: &sled::Tree, asset: &str, note: &InboundNote) -> Result<(), StoreError> {
    tree.insert(key(asset, note.received_ms, &note.tid), codec::encode(note))?;
    let keys: Vec<sled::IVec> = tree
        .scan_prefix(prefix(asset))
        .keys()
        .collect::<Result<_, _>>()?;
    for k in keys.iter().take(keys.len().saturating_sub(KEEP)) {
        tree.remove(k)?;
    }
    Ok(())
}

/// The asset's noted mails, newest first.
pub(super) fn recent(tree: &sled::Tree, asset: &str) -> Result<Vec<InboundNote>, StoreError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(prefix(asset)).rev() {
        let (_, v) = item?;
        if let Ok(n) = codec::decode::<InboundNote>(&v) {
            out.push(n);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_per_asset_newest_first() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("recent_inbound").unwrap();
        let n = |i: u64| InboundNote {
            tid: format!("t{i}"),
            received_ms: i,
            from: "a@b".into(),
            to: vec![],
            subject: String::new(),
            snippet: String::new(),
            confirmation_code: None,
            confirmation_link: None,
        };
        for i in 0..(KEEP as u64 + 5) {
            note(&tree, "x", &n(i)).unwrap();
        }
        note(&tree, "y", &n(1)).unwrap();
        note(&tree, "x", &n(24)).unwrap(); // noted again (a re-render): once
        let got = recent(&tree, "x").unwrap();
        assert_eq!(got.len(), KEEP);
        assert_eq!(got[0].tid, "t24");
        assert_eq!(got[KEEP - 1].tid, "t5");
        assert_eq!(recent(&tree, "y").unwrap().len(), 1);
    }
}
