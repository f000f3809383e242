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

/// Loopback, RFC 1918, CGNAT, 0.0.0.0/8, link-local, benchmarking (198.18.0.0/15), IETF
/// protocol assignments (192.0.0.0/24), multicast, broadcast and reserved (240.0.0.0/4);
/// in IPv6 `::`, loopback, ULA, link- and site-local, multicast, the IPv4-mapped,
/// -compatible and -translated forms of refused IPv4 addresses, and every prefix that
/// carries traffic to an embedded IPv4 address through a translator or tunnel (NAT64
/// `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`): those are
/// refused whole, since which IPv4 host they reach depends on the gateway's deployment.
pub fn is_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v6(v6: Ipv6Addr) -> bool {
    let seg = v6.segments();
    let embedded = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    let zero = |range: std::ops::Range<usize>| seg[range].iter().all(|s| *s == 0);
    // ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (SIIT translated) reach the IPv4 host.
    if (zero(0..5) && seg[5] == 0xffff) || (zero(0..4) && seg[4] == 0xffff && seg[5] == 0) {
        return refused_v4(embedded);
    }
    // Deprecated IPv4-compatible form ::a.b.c.d.
    if zero(0..6) && !v6.is_loopback() && !v6.is_unspecified() {
        return refused_v4(embedded);
    }
    v6.is_loopback()
        || v6.is_unspecified()
        || v6.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
        || (seg[0] & 0xffc0) == 0xfe80 // fe80::/10 link-local
        || (seg[0] & 0xffc0) == 0xfec0 // fec0::/10 site-local (deprecated, still routed inside)
        || (seg[0] == 0x64 && seg[1] == 0xff9b && zero(2..6)) // NAT64 64:ff9b::/96
        || (seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1) // NAT64 local-use 64:ff9b:1::/48
        || seg[0] == 0x2002 // 6to4 2002::/16
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo 2001::/32
        || (seg[0] == 0x100 && zero(1..4)) // discard-only 100::/64
}

fn refused_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10 CGNAT
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24 protocol assignments
        || o[0] >= 240 // 240.0.0.0/4 reserved, and broadcast
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
/// at most 5 redirects, the given timeout. Never through a proxy (`HTTP_PROXY` and the
/// like are ignored): a proxy resolves and connects itself, past the guarded resolver.
pub fn guarded_client(policy: &Policy, timeout: std::time::Duration) -> reqwest::Client {
    let hop_policy = policy.clone();
    reqwest::Client::builder()
        .no_proxy()
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
            // Benchmarking, protocol assignments, reserved and broadcast, in several spellings.
            "http://198.18.0.1/",
            "http://198.19.255.254/",
            "http://3323068417/", // 198.18.0.1
            "http://0xc6120001/",
            "http://192.0.0.170/",
            "http://240.0.0.1/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
            // IPv4-translated (SIIT) and mapped in hex.
            "http://[::ffff:0:a00:1]/",
            "http://[::ffff:a00:1]/",
            // NAT64: the well-known prefix, any embedded address (10.0.0.1 and a public one),
            // and the local-use /48.
            "http://[64:ff9b::a00:1]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[64:FF9B:0:0:0:0:0A00:0001]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::5db8:d822]/",
            "http://[64:ff9b:1::a00:1]/",
            "http://[64:ff9b:1:ffff::1]/",
            // 6to4 (2002:WWXX:YYZZ::/48 embeds an IPv4) and Teredo.
            "http://[2002:a00:1::1]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:5db8:d822::1]/",
            "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
            "http://[2001::1]/",
            // Site-local, discard-only, multicast.
            "http://[fec0::1]/",
            "http://[100::1]/",
            "http://[ff02::1]/",
        ] {
            assert!(p.check_url(url).is_err(), "{url} must be refused");
        }
        for ok in [
            "http://198.17.255.255/",
            "http://198.20.0.1/",
            "http://192.0.1.1/",
            "http://[2001:db8::1]/",
            "http://[2001:1::1]/",
            "http://[2606:4700::1111]/",
            "http://[64:ff9b:2::1]/",
            "http://[2003::1]/",
        ] {
            assert!(p.check_url(ok).is_ok(), "{ok} must be allowed");
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
    fn every_refused_range_is_refused_and_its_neighbours_are_not() {
        // (address, refused): the first and last address of each range and one outside.
        for (ip, refused) in [
            ("198.17.255.255", false),
            ("198.18.0.0", true),
            ("198.19.255.255", true),
            ("198.20.0.0", false),
            ("239.255.255.255", true),
            ("240.0.0.0", true),
            ("100.63.255.255", false),
            ("100.64.0.0", true),
            ("100.127.255.255", true),
            ("100.128.0.0", false),
            ("64:ff9b::", true),
            ("64:ff9b::ffff:ffff", true),
            ("64:ff9b::1:0:0", false),
            ("64:ff9b:1::", true),
            ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", true),
            ("64:ff9b:2::", false),
            ("2001::", true),
            ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("2001:1::", false),
            ("2001:db8::1", false),
            ("2002::", true),
            ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
            ("2003::", false),
            ("2001:4860:4860::8888", false),
            ("::ffff:8.8.8.8", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:0:10.0.0.1", true),
            ("::ffff:0:8.8.8.8", false),
            ("::10.0.0.1", true),
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(is_refused(addr), refused, "{ip}");
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        let p = Policy::new(&["127.0.0.0/8".into()]).unwrap();
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("http://10.0.0.1/").is_err());
        assert!(Policy::new(&["nonsense".into()]).is_err());
    }
}
