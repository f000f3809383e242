//! The message log (SPEC 14): every transaction of the retention period, searchable by
//! recipient, sender, tid, correlationId, asset, state and time, newest first, paged.
//!
//! On sled an index tree, `log_index`, holds one empty-valued key per searchable value of
//! each transaction, written in the same batch of writes as its record at submit and
//! removed with it by the collector:
//!
//! ```text
//! r \0 <recipient, lower case> \0 <created ms, 8 bytes big-endian> <tid>
//! s \0 <sender, lower case>    \0 <created ms> <tid>
//! c \0 <correlationId>         \0 <created ms> <tid>
//! a \0 <asset id>              \0 <created ms> <tid>
//! t \0                            <created ms> <tid>
//! ```
//!
//! A search walks the one prefix its most selective filter names, backwards from `until`
//! (or the cursor) to `since`, and reads the records it finds to apply the other filters.
//! A search whose filters match rarely stops after [`SCAN_BUDGET`] index keys and
//! returns a cursor to go on from.

use super::messages::{MessageRecord, QueueState};

/// Index keys one page may walk before it returns what it found with a cursor.
pub const SCAN_BUDGET: usize = 20_000;

/// A message-log search. Text filters are exact (recipient and sender case-insensitive).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    pub recipient: Option<String>,
    pub sender: Option<String>,
    pub tid: Option<String>,
    pub correlation_id: Option<String>,
    pub asset: Option<String>,
    pub state: Option<QueueState>,
    /// Accepted at or after (ms).
    pub since_ms: Option<u64>,
    /// Accepted before (ms).
    pub until_ms: Option<u64>,
    pub limit: usize,
    /// Where the previous page stopped: (created ms, tid), exclusive.
    pub cursor: Option<(u64, String)>,
}

/// One page, newest first; `next` continues it.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    pub messages: Vec<MessageRecord>,
    pub next: Option<(u64, String)>,
}

impl LogQuery {
    /// Whether `r` passes every filter (the index chose the candidates by one of them).
    pub fn matches(&self, r: &MessageRecord) -> bool {
        let ci = |want: &Option<String>, have: &str| {
            want.as_ref().is_none_or(|w| w.eq_ignore_ascii_case(have))
        };
        ci(&self.sender, &r.from)
            && self.tid.as_ref().is_none_or(|t| t == &r.tid)
            && self
                .correlation_id
                .as_ref()
                .is_none_or(|c| r.correlation_id.as_ref() == Some(c))
            && self.asset.as_ref().is_none_or(|a| a == &r.asset_id)
            && self.state.is_none_or(|s| s == r.state)
            && self.since_ms.is_none_or(|s| r.created_ms >= s)
            && self.until_ms.is_none_or(|u| r.created_ms < u)
            && self.recipient.as_ref().is_none_or(|want| {
                r.recipients
                    .iter()
                    .any(|x| x.address.eq_ignore_ascii_case(want))
            })
    }

    /// The index prefix the search walks: its most selective filter.
    pub(super) fn prefix(&self) -> Vec<u8> {
        let keyed = |tag: u8, value: &str| {
            let mut k = vec![tag, 0];
            k.extend_from_slice(value.as_bytes());
            k.push(0);
            k
        };
        if let Some(r) = &self.recipient {
            keyed(b'r', &r.to_ascii_lowercase())
        } else if let Some(c) = &self.correlation_id {
            keyed(b'c', c)
        } else if let Some(s) = &self.sender {
            keyed(b's', &s.to_ascii_lowercase())
        } else if let Some(a) = &self.asset {
            keyed(b'a', a)
        } else {
            vec![b't', 0]
        }
    }
}

/// The index keys of a record (see the module documentation).
pub(super) fn index_keys(r: &MessageRecord) -> Vec<Vec<u8>> {
    let tail = |mut k: Vec<u8>| {
        k.extend_from_slice(&r.created_ms.to_be_bytes());
        k.extend_from_slice(r.tid.as_bytes());
        k
    };
    let keyed = |tag: u8, value: &str| {
        let mut k = vec![tag, 0];
        k.extend_from_slice(value.as_bytes());
        k.push(0);
        tail(k)
    };
    let mut keys = vec![tail(vec![b't', 0]), keyed(b'a', &r.asset_id)];
    keys.push(keyed(b's', &r.from.to_ascii_lowercase()));
    if let Some(c) = &r.correlation_id {
        keys.push(keyed(b'c', c));
    }
    let mut seen = std::collections::HashSet::new();
    for x in &r.recipients {
        let lower = x.address.to_ascii_lowercase();
        if seen.insert(lower.clone()) {
            keys.push(keyed(b'r', &lower));
        }
    }
    keys
}

/// The (created ms, tid) at the end of an index key under `prefix`.
pub(super) fn key_position(prefix: &[u8], key: &[u8]) -> Option<(u64, String)> {
    let rest = key.get(prefix.len()..)?;
    let (at, tid) = rest.split_at_checked(8)?;
    let at = u64::from_be_bytes(at.try_into().ok()?);
    Some((at, String::from_utf8_lossy(tid).into_owned()))
}

/// The cursor as text (`<ms>.<tid>`), as the API gives and takes it.
pub fn cursor_text(c: &(u64, String)) -> String {
    format!("{}.{}", c.0, c.1)
}

/// A cursor from its text, or `None` when it is not one.
pub fn parse_cursor(s: &str) -> Option<(u64, String)> {
    let (ms, tid) = s.split_once('.')?;
    let ms = ms.parse().ok()?;
    (!tid.is_empty()).then(|| (ms, tid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::messages::{RecipientPhase, RecipientState};

    fn record(tid: &str, at: u64, to: &[&str]) -> MessageRecord {
        let mut r = MessageRecord::blank(tid);
        r.created_ms = at;
        r.from = "News@Example.test".into();
        r.asset_id = "a1".into();
        r.correlation_id = Some("corr-1".into());
        r.recipients = to
            .iter()
            .map(|a| RecipientState {
                address: a.to_string(),
                phase: RecipientPhase::Pending,
                code: None,
            })
            .collect();
        r
    }

    #[test]
    fn keys_name_every_searchable_value_once_and_end_in_time_then_tid() {
        let r = record("tid-9", 7, &["Ann@X.org", "ann@x.org", "bob@x.org"]);
        let keys = index_keys(&r);
        assert_eq!(
            keys.len(),
            6,
            "time, asset, sender, correlation, two recipients"
        );
        let q = LogQuery {
            recipient: Some("ANN@x.org".into()),
            ..Default::default()
        };
        let p = q.prefix();
        let k = keys.iter().find(|k| k.starts_with(&p)).unwrap();
        assert_eq!(key_position(&p, k), Some((7, "tid-9".into())));
        assert!(q.matches(&r));
        let q = LogQuery {
            sender: Some("news@example.TEST".into()),
            state: Some(QueueState::Done),
            ..Default::default()
        };
        assert!(!q.matches(&r), "state differs");
    }

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = (1_700_000_000_123, "abc.def".to_string());
        assert_eq!(parse_cursor(&cursor_text(&c)), Some(c));
        assert_eq!(parse_cursor("x.y"), None);
        assert_eq!(parse_cursor("12."), None);
    }
}
