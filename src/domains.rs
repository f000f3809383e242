//! The DNS records a customer publishes for a domain (SPEC 9): verification TXT, DKIM TXT,
//! SPF and DMARC suggestions, MX for inbound. Works with the daemon stopped: the DKIM key
//! is a file in `data_dir/dkim/` (created under a lock when absent).

use crate::config::{Config, DkimAlgorithm, RouteKind};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    pub purpose: &'static str,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("domain {0} belongs to no asset in the configuration")]
    Unknown(String),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    #[error("signing key: {0}")]
    Key(std::io::Error),
}

/// Every record to publish for `domain`.
pub fn records(config: &Config, domain: &str) -> Result<Vec<Record>, DomainError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let asset = config
        .asset_for_domain(&domain)
        .ok_or_else(|| DomainError::Unknown(domain.clone()))?;
    let data_dir = &config.server.data_dir;
    let signer = crate::tokens::Signer::load_or_create(data_dir).map_err(DomainError::Key)?;
    let verification = signer.sign("domain-verification", &domain);
    let token: String = verification
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .chars()
        .take(32)
        .collect();
    let (selector, algorithm) = asset
        .dkim
        .as_ref()
        .map(|d| (d.selector.clone(), d.algorithm))
        .unwrap_or_else(|| ("postern1".into(), DkimAlgorithm::RsaSha256));
    let key = crate::dkim::load_or_create(data_dir, &domain, &selector, algorithm)?;
    let spf = match asset.route.as_ref() {
        Some(r) if r.kind == RouteKind::Ses => "v=spf1 include:amazonses.com ~all".to_string(),
        Some(r) => match r.host.as_deref() {
            Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => format!("v=spf1 ip4:{h} ~all"),
            Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => format!("v=spf1 ip6:{h} ~all"),
            Some(h) => format!("v=spf1 a:{h} ~all"),
            None => "v=spf1 mx ~all".to_string(),
        },
        None => "v=spf1 mx ~all".to_string(),
    };
    let mut out = vec![
        Record {
            purpose: "verification",
            name: format!("_postern.{domain}"),
            kind: "TXT",
            value: format!("postern-verification={token}"),
        },
        Record {
            purpose: "dkim",
            name: key.record_name(),
            kind: "TXT",
            value: key.txt_record(),
        },
        Record {
            purpose: "spf",
            name: domain.clone(),
            kind: "TXT",
            value: spf,
        },
        Record {
            purpose: "dmarc",
            name: format!("_dmarc.{domain}"),
            kind: "TXT",
            value: format!("v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"),
        },
    ];
    if asset.inbound {
        out.push(Record {
            purpose: "mx",
            name: domain.clone(),
            kind: "MX",
            value: format!("10 {}.", config.server.hostname),
        });
    }
    Ok(out)
}

/// A plain table for people.
pub fn table(records: &[Record]) -> String {
    let w = records
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:<12} {:<w$} {:<4} VALUE\n", "PURPOSE", "NAME", "TYPE");
    for r in records {
        s.push_str(&format!(
            "{:<12} {:<w$} {:<4} {}\n",
            r.purpose, r.name, r.kind, r.value
        ));
    }
    s
}
