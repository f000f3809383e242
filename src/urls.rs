//! URL safety for addresses that arrive in API requests (notifyUrl, mediaUrl): http/https
//! only, and no private, loopback or link-local target (SPEC 4.2) unless a CIDR of
//! `[outbound] allow_private_targets` allows it. Checked twice: the literal host at submit
//! time (every spelling the URL standard accepts: `127.1`, `2130706433`, `[::ffff:127.0.0.1]`),
//! and every resolved address and redirect hop at fetch time ([`guarded_client`]).

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The allow list, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<IpNet>,
}

impl Policy {
    pub fn new(cidrs: &[String]) -> Result<Policy, String> {
        let allowed = cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("outbound.allow_private_targets: \"{c}\" is not a CIDR"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy { allowed })
    }

    /// Whether `ip` may be contacted.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_refused(ip) || self.allowed.iter().any(|n| n.contains(&ip))
    }

    /// Submit-time check of a URL from a request; the error names the rule.
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "scheme '{}' is not allowed; use http or https",
                parsed.scheme()
            ));
        }
        match parsed.host() {
            None => Err("has no host".into()),
            Some(url::Host::Ipv4(ip)) if !self.permits(IpAddr::V4(ip)) => Err(format!(
                "targets {ip}, a private, loopback or reserved address"
            )),
            Some(url::Host::Ipv6(ip)) if !self.permits(IpAddr::V6(ip)) => Err(format!(
                "targets [{ip}], a private, loopback or reserved address"
            )),
            Some(_) => Ok(parsed),
        }
    }
}

/// Loopback, RFC 1918, CGNAT, 0.0.0.0/8, link-local, multicast/broadcast, ULA, `::`, and the
/// IPv4-mapped and -compatible forms of these.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4);
            }
            let seg = v6.segments();
            // Deprecated IPv4-compatible form ::a.b.c.d.
            if seg[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                return refused_v4(Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                ));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)
        }
    }
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        || o[0] >= 240
}

/// DNS resolution that drops refused addresses, so a name pointing into a private range
/// (or rebinding to one) is refused at connect time.
struct GuardedResolver {
    policy: Policy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                return Err(format!(
                    "{host} resolves only to refused (private or loopback) addresses"
                )
                .into());
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for URLs from API requests: guarded DNS, every redirect hop re-checked,
/// at most 5 redirects, the given timeout.
pub fn guarded_client(policy: &Policy, timeout: std::time::Duration) -> reqwest::Client {
    let hop_policy = policy.clone();
    reqwest::Client::builder()
        .dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
        }))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("too many redirects");
            }
            match hop_policy.check_url(attempt.url().as_str()) {
                Ok(_) => attempt.follow(),
                Err(e) => attempt.error(format!("redirect {e}")),
            }
        }))
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("static HTTP client settings are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_private_targets_in_every_spelling() {
        let p = Policy::default();
        for url in [
            "http://127.0.0.1/x",
            "http://127.1/x",
            "http://2130706433/x",
            "http://0x7f000001/x",
            "http://0.0.0.0/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.5/",
            "http://100.64.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fc00::1]/",
            "http://[fe80::1]/",
        ] {
            assert!(p.check_url(url).is_err(), "{url} must be refused");
        }
        assert!(p
            .check_url("ftp://example.org/x")
            .unwrap_err()
            .contains("scheme"));
        assert!(p.check_url("file:///etc/passwd").is_err());
        assert!(p.check_url("https://example.org/a.pdf").is_ok());
        assert!(p.check_url("http://93.184.216.34/").is_ok());
    }

    #[test]
    fn allow_list_opens_a_range() {
        let p = Policy::new(&["127.0.0.0/8".into()]).unwrap();
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("http://10.0.0.1/").is_err());
        assert!(Policy::new(&["nonsense".into()]).is_err());
    }
}
