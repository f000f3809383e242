//! SPF, DKIM, DMARC and ARC verification of inbound mail with `mail-auth` over
//! hickory-resolver. Results never reject mail: they become an `Authentication-Results`
//! header and the `authResults` of the MO event. With `[dns] resolver = "off"` every
//! verdict is `none` and no lookup is made. The heavy part of a large message (hashing
//! its body for DKIM and ARC) runs in the bounded [`Heavy`] pool, off the async workers.

use super::Envelope;
use crate::config::ResolverSetting;
use crate::heavy::Heavy;
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
    heavy: Heavy,
}

/// Messages up to this size are hashed on the async worker itself (microseconds of work).
const HASH_INLINE: usize = 64 * 1024;

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
        Ok(Verifier {
            authenticator,
            heavy: Heavy::per_core(),
        })
    }

    /// Shares the daemon's bound on heavy work (see [`Heavy`]).
    pub fn with_heavy(mut self, heavy: Heavy) -> Verifier {
        self.heavy = heavy;
        self
    }

    /// The daemon's bound on heavy work, for other parsers of inbound mail (DSN, ARF).
    pub fn heavy(&self) -> &Heavy {
        &self.heavy
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
        let work = verify_with(auth, &self.heavy, hostname, env, raw);
        match tokio::time::timeout(VERIFY_BUDGET, work).await {
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

/// Parses `raw` for verification. A large message's headers are parsed here (cheap) and
/// its body hashed in the heavy pool, on a copy taken once a slot is free, so the copies
/// in memory are bounded by the pool's size too.
async fn parse_message<'r>(heavy: &Heavy, raw: &'r [u8]) -> Option<AuthenticatedMessage<'r>> {
    let head_len = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|sep| memchr::memmem::find(raw, sep).map(|i| i + sep.len()))
        .min();
    let head_len = match head_len {
        Some(n) if raw.len() > HASH_INLINE => n,
        _ => return AuthenticatedMessage::parse(raw),
    };
    // Same headers, an empty body: mail-auth hashes nothing yet.
    let mut message = AuthenticatedMessage::parse(&raw[..head_len])?;
    let body_offset = (message.body_offset as usize).min(head_len);
    message.raw_message = raw;
    message.body_offset = body_offset as u32;
    if message.body_hashes.is_empty() {
        return Some(message);
    }
    let wanted: Vec<_> = message
        .body_hashes
        .iter()
        .map(|(cb, ha, l, _)| (*cb, *ha, *l))
        .collect();
    let permit = heavy.permit().await;
    let body = raw[body_offset..].to_vec();
    let hashes = permit
        .run(move || {
            wanted
                .into_iter()
                .map(|(cb, ha, l)| ha.hash(cb.canonical_body(&body, l)).as_ref().to_vec())
                .collect::<Vec<_>>()
        })
        .await
        .ok()?;
    for ((_, _, _, bh), h) in message.body_hashes.iter_mut().zip(hashes) {
        *bh = h;
    }
    Some(message)
}

async fn verify_with(
    auth: &MessageAuthenticator,
    heavy: &Heavy,
    hostname: &str,
    env: &Envelope,
    raw: &[u8],
) -> Option<(String, AuthSummary)> {
    let message = parse_message(heavy, raw).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_message_hashes_in_the_pool_equal_mail_auth_own() {
        let mut raw = b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1;\r\n h=from:subject; bh=AAAA; b=AAAA\r\nDKIM-Signature: v=1; a=rsa-sha1; c=simple/simple; d=example.org; s=s2;\r\n h=from; bh=AAAA; b=AAAA\r\nFrom: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
        while raw.len() < 300_000 {
            raw.extend_from_slice(b"a line  with \t trailing space   \r\n\r\n");
        }
        let heavy = Heavy::new(1);
        let ours = parse_message(&heavy, &raw).await.unwrap();
        let theirs = AuthenticatedMessage::parse(&raw).unwrap();
        assert_eq!(ours.body_hashes.len(), 2);
        assert_eq!(ours.body_hashes, theirs.body_hashes);
        assert_eq!(ours.body_offset, theirs.body_offset);
        assert_eq!(ours.headers, theirs.headers);
        assert_eq!(ours.from, theirs.from);
    }
}
