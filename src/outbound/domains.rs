//! The DNS records a customer publishes for a domain (SPEC 9): verification TXT, DKIM TXT
//! (every key the rotation publishes), SPF and DMARC suggestions, MX for inbound. Works with
//! the daemon stopped: DKIM keys are files in `data_dir/dkim/` (created under a lock when
//! absent). `verify` looks them up and judges each ok / missing / wrong; a domain is
//! verified when its verification TXT and its signing key's record are both right.

use crate::config::{Config, DkimAlgorithm, RouteConfig};
use crate::outbound::dkim::{Phase, Rotation};
use hickory_resolver::TokioResolver;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// verification, dkim (the signing key), dkim-next, dkim-retiring, spf, dmarc, mx.
    pub purpose: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("domain {0} belongs to no asset in the configuration")]
    Unknown(String),
    #[error(transparent)]
    Dkim(#[from] crate::outbound::dkim::DkimError),
    #[error("signing key: {0}")]
    Key(std::io::Error),
}

impl Record {
    fn new(purpose: &str, name: String, kind: &str, value: String) -> Record {
        Record {
            purpose: purpose.into(),
            name,
            kind: kind.into(),
            value,
        }
    }
}

/// Every record to publish for `domain`.
pub fn records(config: &Config, domain: &str) -> Result<Vec<Record>, DomainError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let asset = config
        .asset_for_domain(&domain)
        .ok_or_else(|| DomainError::Unknown(domain.clone()))?;
    let data_dir = &config.server.data_dir;
    let token = verification_token(data_dir, &domain)?;
    let mut out = vec![Record::new(
        "verification",
        format!("_postern.{domain}"),
        "TXT",
        format!("postern-verification={token}"),
    )];
    out.extend(dkim_records(data_dir, &domain, asset.dkim_key())?);
    out.extend([
        Record::new("spf", domain.clone(), "TXT", spf(asset.route.as_ref())),
        Record::new(
            "dmarc",
            format!("_dmarc.{domain}"),
            "TXT",
            format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"),
        ),
    ]);
    if asset.inbound {
        out.push(Record::new(
            "mx",
            domain.clone(),
            "MX",
            format!("10 {}.", config.server.hostname),
        ));
    }
    Ok(out)
}

/// The domain's verification token: 32 characters of its signature with the daemon's
/// signing key (made when absent), so nobody without the key can compute it.
fn verification_token(data_dir: &Path, domain: &str) -> Result<String, DomainError> {
    let signer =
        crate::model::tokens::Signer::load_or_create(data_dir).map_err(DomainError::Key)?;
    let verification = signer.sign(crate::model::tokens::TokenKind::DomainVerification, domain);
    Ok(verification
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .chars()
        .take(32)
        .collect())
}

/// The DKIM TXT records: every key the rotation publishes now, with its phase, or the
/// configured key alone when the domain was never rotated. Keys are made when absent.
fn dkim_records(
    data_dir: &Path,
    domain: &str,
    configured: (&str, DkimAlgorithm),
) -> Result<Vec<Record>, DomainError> {
    let record = |purpose: &str, selector: &str, algorithm| {
        let key = crate::outbound::dkim::load_or_create(data_dir, domain, selector, algorithm)?;
        Ok::<_, DomainError>(Record::new(
            purpose,
            key.record_name(),
            "TXT",
            key.txt_record(),
        ))
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let rotation = Rotation::load(data_dir, domain)?;
    match rotation.as_ref().map(|r| r.published(now)) {
        Some(published) if !published.is_empty() => published
            .into_iter()
            .map(|(s, phase)| record(dkim_purpose(phase), &s.selector, s.algorithm))
            .collect(),
        _ => Ok(vec![record("dkim", configured.0, configured.1)?]),
    }
}

/// The purpose a DKIM record is listed under, by its key's phase.
fn dkim_purpose(phase: Phase) -> &'static str {
    match phase {
        Phase::Signing => "dkim",
        Phase::Next => "dkim-next",
        Phase::Retiring => "dkim-retiring",
    }
}

/// The SPF suggestion for the asset's route: SES's include, the smarthost's address or
/// name, else the domain's MX hosts.
fn spf(route: Option<&RouteConfig>) -> String {
    match route {
        Some(RouteConfig::Ses(_)) => "v=spf1 include:amazonses.com ~all".to_string(),
        Some(RouteConfig::Smtp(smtp)) => {
            let h = &smtp.host;
            if h.parse::<std::net::Ipv4Addr>().is_ok() {
                format!("v=spf1 ip4:{h} ~all")
            } else if h.parse::<std::net::Ipv6Addr>().is_ok() {
                format!("v=spf1 ip6:{h} ~all")
            } else {
                format!("v=spf1 a:{h} ~all")
            }
        }
        None => "v=spf1 mx ~all".to_string(),
    }
}

/// A plain table for people.
pub fn table(records: &[Record]) -> String {
    let w = records
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:<13} {:<w$} {:<4} VALUE\n", "PURPOSE", "NAME", "TYPE");
    for r in records {
        s.push_str(&format!(
            "{:<13} {:<w$} {:<4} {}\n",
            r.purpose, r.name, r.kind, r.value
        ));
    }
    s
}

/// How a published record compares with what postern expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Nothing of its kind at the name.
    Missing,
    /// Something is there, but not the expected value.
    Wrong,
    /// The lookup itself failed (timeout, SERVFAIL): no verdict.
    Error,
}

/// One record's verdict, with the values found at its name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    #[serde(flatten)]
    pub record: Record,
    pub status: Status,
    pub found: Vec<String>,
}

/// The result of `postern domain verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub domain: String,
    pub verified: bool,
    pub checked_at: String,
    pub records: Vec<Check>,
}

/// What a lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<String>),
    Nothing,
    Failed(String),
}

/// The value of tag `name` in a `k=v; k=v` record (DKIM, DMARC), whitespace removed.
fn tag(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|part| {
        let (k, v) = part.split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.split_whitespace().collect())
    })
}

/// Judges one record against what its name holds. Pure.
pub fn judge(record: &Record, lookup: &Lookup) -> (Status, Vec<String>) {
    let found = match lookup {
        Lookup::Failed(e) => return (Status::Error, vec![e.clone()]),
        Lookup::Nothing => return (Status::Missing, Vec::new()),
        Lookup::Found(f) => f.clone(),
    };
    let starts = |v: &str, p: &str| v.trim_start().to_ascii_lowercase().starts_with(p);
    let (relevant, ok): (Vec<&String>, bool) = match record.purpose.as_str() {
        "verification" => {
            let rel: Vec<&String> = found
                .iter()
                .filter(|v| starts(v, "postern-verification="))
                .collect();
            let ok = rel.iter().any(|v| v.trim() == record.value);
            (rel, ok)
        }
        p if p.starts_with("dkim") => {
            let rel: Vec<&String> = found.iter().filter(|v| tag(v, "p").is_some()).collect();
            let want = (tag(&record.value, "p"), tag(&record.value, "k"));
            let ok = rel.iter().any(|v| {
                tag(v, "p") == want.0
                    && tag(v, "k").unwrap_or_else(|| "rsa".into())
                        == want.1.clone().unwrap_or_default()
            });
            (rel, ok)
        }
        "spf" => {
            let rel: Vec<&String> = found.iter().filter(|v| starts(v, "v=spf1")).collect();
            // The suggestion's sending mechanism, e.g. include:amazonses.com.
            let mechanism = record
                .value
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_ascii_lowercase();
            // Two SPF records are a permerror (RFC 7208 4.5): wrong however right each is.
            let ok = rel.len() == 1
                && rel[0]
                    .split_whitespace()
                    .any(|m| m.trim_start_matches('+').eq_ignore_ascii_case(&mechanism));
            (rel, ok)
        }
        "dmarc" => {
            let rel: Vec<&String> = found.iter().filter(|v| starts(v, "v=dmarc1")).collect();
            let ok = rel.len() == 1 && tag(rel[0], "p").is_some();
            (rel, ok)
        }
        "mx" => {
            let want = record
                .value
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let rel: Vec<&String> = found.iter().collect();
            let ok = rel.iter().any(|v| {
                v.split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&want)
            });
            (rel, ok)
        }
        _ => (
            found.iter().collect(),
            found.iter().any(|v| v == &record.value),
        ),
    };
    let found: Vec<String> = found.clone();
    match (relevant.is_empty(), ok) {
        (_, true) => (Status::Ok, found),
        (true, false) => (Status::Missing, found),
        (false, false) => (Status::Wrong, found),
    }
}

async fn lookup(resolver: &TokioResolver, record: &Record) -> Lookup {
    let name = format!("{}.", record.name.trim_end_matches('.'));
    let outcome = if record.kind == "MX" {
        resolver.mx_lookup(name.as_str()).await.map(|mx| {
            mx.answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::MX(m) => {
                        Some(format!("{} {}", m.preference, m.exchange))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
    } else {
        resolver.txt_lookup(name.as_str()).await.map(|txt| {
            txt.answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
    };
    match outcome {
        Ok(values) if values.is_empty() => Lookup::Nothing,
        Ok(values) => Lookup::Found(values),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Lookup::Nothing,
        Err(e) => Lookup::Failed(e.to_string()),
    }
}

/// Looks up every record and judges it.
pub async fn verify(resolver: &TokioResolver, domain: &str, records: Vec<Record>) -> Verification {
    let checks = futures::future::join_all(records.into_iter().map(|record| async move {
        let found = lookup(resolver, &record).await;
        let (status, found) = judge(&record, &found);
        Check {
            record,
            status,
            found,
        }
    }))
    .await;
    let verified = checks
        .iter()
        .filter(|c| matches!(c.record.purpose.as_str(), "verification" | "dkim"))
        .all(|c| c.status == Status::Ok);
    Verification {
        domain: domain.to_string(),
        verified,
        checked_at: crate::model::time::timestamp(crate::model::time::now_ms()),
        records: checks,
    }
}

/// A plain report for people: one line per record, then the verdict.
pub fn report(v: &Verification) -> String {
    let w = v
        .records
        .iter()
        .map(|c| c.record.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!(
        "{:<8} {:<13} {:<w$} {:<4} EXPECTED / FOUND\n",
        "STATUS", "PURPOSE", "NAME", "TYPE"
    );
    for c in &v.records {
        let status = match c.status {
            Status::Ok => "ok",
            Status::Missing => "missing",
            Status::Wrong => "wrong",
            Status::Error => "error",
        };
        s.push_str(&format!(
            "{:<8} {:<13} {:<w$} {:<4} {}\n",
            status, c.record.purpose, c.record.name, c.record.kind, c.record.value
        ));
        if c.status != Status::Ok {
            for f in &c.found {
                s.push_str(&format!(
                    "{:<8} {:<13} {:<w$} {:<4}   found: {f}\n",
                    "", "", "", ""
                ));
            }
        }
    }
    s.push_str(&format!(
        "{}: {}\n",
        v.domain,
        if v.verified {
            "verified (verification and DKIM records are right)"
        } else {
            "NOT verified (the verification and signing DKIM records must both be ok)"
        }
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(purpose: &str, kind: &str, value: &str) -> Record {
        Record {
            purpose: purpose.into(),
            name: "x".into(),
            kind: kind.into(),
            value: value.into(),
        }
    }

    fn found(v: &[&str]) -> Lookup {
        Lookup::Found(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn records_are_judged_by_what_matters() {
        let verification = rec("verification", "TXT", "postern-verification=abc");
        assert_eq!(
            judge(
                &verification,
                &found(&["postern-verification=abc", "other"])
            )
            .0,
            Status::Ok
        );
        assert_eq!(
            judge(&verification, &found(&["postern-verification=abd"])).0,
            Status::Wrong
        );
        assert_eq!(
            judge(&verification, &found(&["google-site-verification=x"])).0,
            Status::Missing
        );
        assert_eq!(judge(&verification, &Lookup::Nothing).0, Status::Missing);
        assert_eq!(
            judge(&verification, &Lookup::Failed("timeout".into())).0,
            Status::Error
        );

        let dkim = rec("dkim", "TXT", "v=DKIM1; k=ed25519; p=AAAA");
        assert_eq!(
            judge(&dkim, &found(&["v=DKIM1;k=ed25519;p=AA AA"])).0,
            Status::Ok,
            "whitespace in p= is ignored"
        );
        assert_eq!(
            judge(&dkim, &found(&["v=DKIM1; k=rsa; p=AAAA"])).0,
            Status::Wrong,
            "key type matters"
        );
        assert_eq!(
            judge(&dkim, &found(&["v=DKIM1; k=ed25519; p=BBBB"])).0,
            Status::Wrong
        );
        let rsa = rec("dkim", "TXT", "v=DKIM1; k=rsa; p=AAAA");
        assert_eq!(
            judge(&rsa, &found(&["v=DKIM1; p=AAAA"])).0,
            Status::Ok,
            "k defaults to rsa"
        );

        let spf = rec("spf", "TXT", "v=spf1 include:amazonses.com ~all");
        assert_eq!(
            judge(&spf, &found(&["v=spf1 mx include:amazonses.com -all"])).0,
            Status::Ok
        );
        assert_eq!(judge(&spf, &found(&["v=spf1 mx -all"])).0, Status::Wrong);
        assert_eq!(
            judge(
                &spf,
                &found(&["v=spf1 include:amazonses.com ~all", "v=spf1 mx ~all"])
            )
            .0,
            Status::Wrong,
            "two SPF records are a permerror"
        );
        assert_eq!(
            judge(&spf, &found(&["postern-verification=abc"])).0,
            Status::Missing
        );

        let dmarc = rec(
            "dmarc",
            "TXT",
            "v=DMARC1; p=none; rua=mailto:d@example.test",
        );
        assert_eq!(
            judge(&dmarc, &found(&["v=DMARC1; p=reject"])).0,
            Status::Ok,
            "any policy will do"
        );
        assert_eq!(
            judge(&dmarc, &found(&["v=DMARC1; rua=mailto:x@y"])).0,
            Status::Wrong
        );

        let mx = rec("mx", "MX", "10 mx.example.test.");
        assert_eq!(judge(&mx, &found(&["20 MX.example.test."])).0, Status::Ok);
        assert_eq!(
            judge(&mx, &found(&["10 mail.other.test."])).0,
            Status::Wrong
        );
    }
}
