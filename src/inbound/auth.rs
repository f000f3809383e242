//! SPF, DKIM, DMARC and ARC verification of inbound mail with `mail-auth` over
//! hickory-resolver. Results never reject mail: they become an `Authentication-Results`
//! header and the `authResults` of the MO event. With `[dns] resolver = "off"` every
//! verdict is `none` and no lookup is made.

use super::Envelope;
use crate::config::ResolverSetting;
use crate::store::spool::AuthSummary;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters, AuthenticatedMessage,
    AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator, SpfResult,
};
use std::time::Duration;

/// Upper bound on the DNS work for one message, so a slow resolver delays a 250 but never
/// holds a session for minutes.
const VERIFY_BUDGET: Duration = Duration::from_secs(20);

pub struct Verifier {
    authenticator: Option<MessageAuthenticator>,
}

#[derive(Debug, thiserror::Error)]
#[error("DNS resolver: {0}")]
pub struct ResolverError(String);

impl Verifier {
    pub fn new(setting: &ResolverSetting) -> Result<Verifier, ResolverError> {
        let authenticator = match setting {
            ResolverSetting::Off => None,
            ResolverSetting::System => Some(
                MessageAuthenticator::new_system_conf()
                    .map_err(|e| ResolverError(e.to_string()))?,
            ),
            ResolverSetting::Servers(addrs) => {
                let servers = addrs
                    .iter()
                    .map(|a| {
                        let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                        for c in &mut ns.connections {
                            c.port = a.port();
                        }
                        ns
                    })
                    .collect();
                let mut opts = ResolverOpts::default();
                opts.timeout = Duration::from_secs(3);
                opts.attempts = 1;
                Some(
                    MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), opts)
                        .map_err(|e| ResolverError(e.to_string()))?,
                )
            }
        };
        Ok(Verifier { authenticator })
    }

    /// The resolver, for other modules that look up records (domain verification).
    pub fn authenticator(&self) -> Option<&MessageAuthenticator> {
        self.authenticator.as_ref()
    }

    /// Returns the `Authentication-Results` header line (CRLF-terminated) and the verdicts.
    pub async fn verify(
        &self,
        hostname: &str,
        env: &Envelope,
        raw: &[u8],
    ) -> (String, AuthSummary) {
        let none = || {
            (
                format!("Authentication-Results: {hostname}; none\r\n"),
                AuthSummary::none(),
            )
        };
        let Some(auth) = &self.authenticator else {
            return none();
        };
        match tokio::time::timeout(VERIFY_BUDGET, verify_with(auth, hostname, env, raw)).await {
            Ok(Some(result)) => result,
            Ok(None) => none(),
            Err(_) => {
                tracing::warn!("authentication checks ran out of time; recorded as temperror");
                let t = "temperror".to_string();
                (
                    format!("Authentication-Results: {hostname}; spf=temperror; dkim=temperror; dmarc=temperror\r\n"),
                    AuthSummary {
                        spf: t.clone(),
                        dkim: t.clone(),
                        dmarc: t.clone(),
                        arc: t,
                    },
                )
            }
        }
    }
}

async fn verify_with(
    auth: &MessageAuthenticator,
    hostname: &str,
    env: &Envelope,
    raw: &[u8],
) -> Option<(String, AuthSummary)> {
    let message = AuthenticatedMessage::parse(raw)?;
    let helo = if env.helo.is_empty() {
        "unknown"
    } else {
        env.helo.as_str()
    };
    let mail_from = if env.mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else {
        env.mail_from.clone()
    };
    let mail_from_domain = mail_from
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(helo)
        .to_string();

    let dkim = auth.verify_dkim(&message).await;
    let arc = auth.verify_arc(&message).await;
    let spf = auth
        .verify_spf(SpfParameters::verify_mail_from(
            env.peer, helo, hostname, &mail_from,
        ))
        .await;
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(
            &message,
            &dkim,
            &mail_from_domain,
            &spf,
        ))
        .await;

    let header_from = message.from().to_string();
    let results = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, &header_from)
        .with_spf_mailfrom_result(&spf, env.peer, &mail_from, helo)
        .with_arc_result(&arc, env.peer)
        .with_dmarc_result(&dmarc);

    let dkim_verdict = if dkim.iter().any(|d| d.result() == &DkimResult::Pass) {
        "pass".to_string()
    } else {
        dkim.first()
            .map(|d| dkim_word(d.result()))
            .unwrap_or("none")
            .to_string()
    };
    let dmarc_word =
        if dmarc.dkim_result() == &DmarcResult::Pass || dmarc.spf_result() == &DmarcResult::Pass {
            "pass"
        } else if dmarc.domain().is_empty() || matches!(dmarc.dkim_result(), DmarcResult::None) {
            "none"
        } else {
            dmarc_word(dmarc.dkim_result())
        };
    let summary = AuthSummary {
        spf: spf_word(spf.result()).into(),
        dkim: dkim_verdict,
        dmarc: dmarc_word.into(),
        arc: dkim_word(arc.result()).into(),
    };
    Some((format!("Authentication-Results: {results}\r\n"), summary))
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}
