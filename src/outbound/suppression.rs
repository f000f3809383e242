//! Suppression policy and its CSV form (SPEC 8). `check` says whether a recipient may be
//! mailed and, if not, which code ends it (7240 already bounced, 7241 unsubscribed or
//! complained). CSV import is all-or-nothing: every line is validated first, and a bad line
//! is reported with its number.

use crate::model::time::TimeError;
use crate::model::types::{check_address, DeliveryCode};
use crate::store::suppression::{Reason, Suppression};

/// The code and Description for a suppressed recipient.
pub fn refusal(entry: &Suppression, address: &str) -> (DeliveryCode, String) {
    match entry.reason {
        Reason::Bounced => (
            DeliveryCode::AlreadyBounced,
            format!("already bounced : {address}"),
        ),
        Reason::Unsubscribed | Reason::Complained => (
            DeliveryCode::Unsubscribed,
            format!("unsubscribed : {address}"),
        ),
    }
}

pub const CSV_HEADER: [&str; 5] = ["asset_id", "address", "reason", "since", "expires"];

/// Entries as CSV with a header line (times as RFC 3339, empty `expires` = never).
pub fn to_csv(entries: &[Suppression]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_HEADER)?;
    for e in entries {
        let expires = e
            .expires_ms
            .map(crate::model::time::timestamp)
            .unwrap_or_default();
        w.write_record([
            e.asset_id.as_str(),
            e.address.as_str(),
            e.reason.label(),
            &crate::model::time::timestamp(e.since_ms),
            &expires,
        ])?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses a CSV export (or a hand-written file with at least `asset_id,address,reason`).
/// `known_asset` says whether an asset id exists. All lines or none.
pub fn from_csv(
    text: &str,
    now_ms: u64,
    known_asset: &dyn Fn(&str) -> bool,
    bounce_retention_ms: &dyn Fn(&str) -> u64,
) -> Result<Vec<Suppression>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| format!("line 1: {e}"))?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(ca), Some(cd), Some(cr)) = (col("asset_id"), col("address"), col("reason")) else {
        return Err("line 1: the header must name asset_id, address and reason".into());
    };
    let ce = col("expires");
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let line = i + 2;
        let rec = rec.map_err(|e| format!("line {line}: {e}"))?;
        let get = |c: usize| rec.get(c).unwrap_or("").trim();
        let asset = get(ca);
        if !known_asset(asset) {
            return Err(format!("line {line}: asset_id '{asset}' is not configured"));
        }
        let address = get(cd);
        check_address(address).map_err(|_| {
            format!("line {line}: address '{address}' is not a valid email address")
        })?;
        let reason = Reason::parse(get(cr)).ok_or_else(|| {
            format!(
                "line {line}: reason '{}' is not unsubscribed, bounced or complained",
                get(cr)
            )
        })?;
        let expires_ms = match ce.map(get).filter(|s| !s.is_empty()) {
            Some(s) => Some(
                crate::model::time::parse_time(&serde_json::Value::String(s.to_string())).map_err(
                    |e| match e {
                        TimeError::Format => {
                            format!("line {line}: expires '{s}' is not an RFC 3339 time")
                        }
                        TimeError::OutOfRange => format!("line {line}: expires '{s}' {e}"),
                    },
                )?,
            ),
            None if reason == Reason::Bounced => {
                Some(now_ms.saturating_add(bounce_retention_ms(asset)))
            }
            None => None,
        };
        out.push(Suppression {
            asset_id: asset.to_string(),
            address: address.to_ascii_lowercase(),
            reason,
            since_ms: now_ms,
            expires_ms,
            source: "csv".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_and_line_numbered_errors() {
        let entries = vec![
            Suppression {
                asset_id: "a_1".into(),
                address: "x@example.org".into(),
                reason: Reason::Unsubscribed,
                since_ms: 1_000,
                expires_ms: None,
                source: "api".into(),
            },
            Suppression {
                asset_id: "a_1".into(),
                address: "y@example.org".into(),
                reason: Reason::Bounced,
                since_ms: 1_000,
                expires_ms: Some(86_401_000),
                source: "dsn".into(),
            },
        ];
        let text = to_csv(&entries).unwrap();
        let back = from_csv(&text, 5_000, &|a| a == "a_1", &|_| 7 * 86_400_000).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].expires_ms, Some(86_401_000));
        assert_eq!(back[0].expires_ms, None);

        let bad =
            "asset_id,address,reason\na_1,ok@example.org,bounced\na_1,not-an-address,bounced\n";
        assert_eq!(
            from_csv(bad, 0, &|_| true, &|_| 1).unwrap_err(),
            "line 3: address 'not-an-address' is not a valid email address"
        );
        let bad = "asset_id,address,reason\na_9,ok@example.org,bounced\n";
        assert!(from_csv(bad, 0, &|a| a == "a_1", &|_| 1)
            .unwrap_err()
            .starts_with("line 2: asset_id"));
        assert!(from_csv("a,b\n", 0, &|_| true, &|_| 1)
            .unwrap_err()
            .starts_with("line 1"));
        let bounced = from_csv(
            "asset_id,address,reason\na_1,B@Example.org,bounce\n",
            10,
            &|_| true,
            &|_| 100,
        )
        .unwrap();
        assert_eq!(bounced[0].address, "b@example.org");
        assert_eq!(bounced[0].expires_ms, Some(110));
    }

    #[test]
    fn expiry_times_out_of_range_are_refused_not_wrapped() {
        let csv = |expires: &str| {
            from_csv(
                &format!("asset_id,address,reason,expires\na_1,x@example.org,bounced,{expires}\n"),
                u64::MAX - 5,
                &|_| true,
                &|_| u64::MAX,
            )
        };
        assert_eq!(
            csv("99999999999999999").unwrap_err(),
            "line 2: expires '99999999999999999' is out of range (before 1970 or after 9999-12-31)"
        );
        assert_eq!(
            csv("999999999999999999999999").unwrap_err(),
            "line 2: expires '999999999999999999999999' is out of range (before 1970 or after 9999-12-31)"
        );
        assert_eq!(
            csv("1969-12-31T00:00:00Z").unwrap_err(),
            "line 2: expires '1969-12-31T00:00:00Z' is out of range (before 1970 or after 9999-12-31)"
        );
        assert_eq!(
            csv("soon").unwrap_err(),
            "line 2: expires 'soon' is not an RFC 3339 time"
        );
        assert_eq!(
            csv("1700000000").unwrap()[0].expires_ms,
            Some(1_700_000_000_000)
        );
        // No expires column value: retention counted from now, saturating, never wrapping.
        assert_eq!(csv("").unwrap()[0].expires_ms, Some(u64::MAX));
    }
}
