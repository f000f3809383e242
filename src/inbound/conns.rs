//! Connection caps of the SMTP listener (SPEC 6.3): at most `smtp.max_connections` open
//! connections, and at most `smtp.max_connections_per_ip` per peer network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Who the per-IP cap counts a peer as: an IPv4 address is itself (also when it arrives
/// IPv4-mapped on a dual-stack socket); an IPv6 address is its /64, the smallest block a
/// site is given, so one network cannot take every slot by cycling its addresses.
pub fn cap_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// Open connections, in total and per peer network ([`cap_key`]).
#[derive(Default)]
pub struct ConnLimits {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    idle: Notify,
}

/// Holds one connection slot; frees it when dropped.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    /// The [`cap_key`] of the peer.
    ip: IpAddr,
}

impl ConnLimits {
    /// A slot for `ip`, or `None` when either cap is reached.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<ConnSlot> {
        let ip = cap_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per_ip.get(&ip).copied().unwrap_or(0);
        if mine >= max_per_ip || self.total.load(Ordering::Acquire) >= max_total {
            return None;
        }
        per_ip.insert(ip, mine + 1);
        self.total.fetch_add(1, Ordering::AcqRel);
        Some(ConnSlot {
            limits: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Waits until no connection is open, at most `grace`.
    pub async fn drained(&self, grace: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.idle.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(grace, wait).await.is_ok()
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        if self.limits.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.limits.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        cap_key(s.parse().expect("address")).to_string()
    }

    #[test]
    fn cap_groups_ipv6_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_ne!(key("192.0.2.8"), key("192.0.2.7"));
        assert_eq!(key("::1"), "::");
    }

    #[test]
    fn one_64_shares_one_per_ip_cap() {
        let limits = Arc::new(ConnLimits::default());
        let take = |ip: &str| limits.acquire(ip.parse().expect("address"), 10, 2);
        let a = take("2001:db8::1");
        let b = take("2001:db8::2:3");
        assert!(a.is_some() && b.is_some());
        assert!(take("2001:db8::ffff").is_none(), "third from the same /64");
        let other = take("2001:db8:0:1::1");
        assert!(other.is_some(), "the next /64 has its own cap");
        drop(a);
        let again = take("2001:db8::9");
        assert!(again.is_some(), "a freed slot is reusable");
        assert_eq!(limits.open(), 3);
        drop((b, other, again));
        assert_eq!(limits.open(), 0);
    }
}
