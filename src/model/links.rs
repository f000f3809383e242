//! The signed links postern puts in mail and events, one type for building and reading
//! them: click and open tracking (SPEC 7.2), unsubscribe (SPEC 7.2, 8) and inbound
//! attachment links (SPEC 6.2); and the signed VERP return path ([`verp`], [`verp_tid`]).
//! A link's payload is its fields joined by `|` (the last field may itself contain `|`: a
//! URL, a sender), signed under its [`TokenKind`] so a token of one kind never verifies as
//! another.

use super::tokens::{Signer, TokenKind};

/// A link's meaning, as signed into its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `/t/c/<token>`: a tracked click on `url` by `recipient` of transaction `tid`.
    Click {
        tid: String,
        recipient: String,
        url: String,
    },
    /// `/t/o/<token>`: the open pixel of `recipient` of transaction `tid`.
    Open { tid: String, recipient: String },
    /// `/u/<token>` and the List-Unsubscribe mailto tag: who may unsubscribe from what.
    /// `recipient` is empty for mail to several recipients (any of them could click).
    Unsubscribe(Unsubscribe),
    /// An attachment of a received message, served until `expires_ms`.
    InboundAttachment {
        tid: String,
        part: String,
        expires_ms: u64,
    },
}

/// Who an unsubscribe link speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub asset_id: String,
    pub tid: String,
    pub recipient: String,
    pub sender: String,
}

impl Link {
    pub fn kind(&self) -> TokenKind {
        match self {
            Link::Click { .. } => TokenKind::Click,
            Link::Open { .. } => TokenKind::Open,
            Link::Unsubscribe(_) => TokenKind::Unsubscribe,
            Link::InboundAttachment { .. } => TokenKind::InboundAttachment,
        }
    }

    fn payload(&self) -> String {
        match self {
            Link::Click {
                tid,
                recipient,
                url,
            } => format!("{tid}|{recipient}|{url}"),
            Link::Open { tid, recipient } => format!("{tid}|{recipient}"),
            Link::Unsubscribe(u) => {
                format!("{}|{}|{}|{}", u.asset_id, u.tid, u.recipient, u.sender)
            }
            Link::InboundAttachment {
                tid,
                part,
                expires_ms,
            } => format!("{tid}|{part}|{expires_ms}"),
        }
    }

    /// The signed token for this link.
    pub fn token(&self, signer: &Signer) -> String {
        signer.sign(self.kind(), &self.payload())
    }

    /// The link a token of `kind` carries, or `None` when it is altered, of another kind
    /// or not of the link's shape.
    pub fn verify(signer: &Signer, kind: TokenKind, token: &str) -> Option<Link> {
        let payload = signer.verify(kind, token)?;
        let f = |n: usize| -> Vec<String> { payload.splitn(n, '|').map(str::to_string).collect() };
        Some(match kind {
            TokenKind::Click => {
                let [tid, recipient, url] = <[String; 3]>::try_from(f(3)).ok()?;
                Link::Click {
                    tid,
                    recipient,
                    url,
                }
            }
            TokenKind::Open => {
                let [tid, recipient] = <[String; 2]>::try_from(f(2)).ok()?;
                Link::Open { tid, recipient }
            }
            TokenKind::Unsubscribe => {
                let [asset_id, tid, recipient, sender] = <[String; 4]>::try_from(f(4)).ok()?;
                Link::Unsubscribe(Unsubscribe {
                    asset_id,
                    tid,
                    recipient,
                    sender,
                })
            }
            TokenKind::InboundAttachment => {
                let [tid, part, expires] = <[String; 3]>::try_from(f(3)).ok()?;
                Link::InboundAttachment {
                    tid,
                    part,
                    expires_ms: expires.parse().ok()?,
                }
            }
            TokenKind::Verp | TokenKind::DomainVerification => return None,
        })
    }
}

/// The envelope sender for one transaction: `b-<tid>-<mac>@<bounce_domain>`, signed so a
/// DSN to a forged address is recognised and ignored. The local part stays under 64 octets.
pub fn verp(signer: &Signer, tid: &str, bounce_domain: &str) -> String {
    let simple = tid.replace('-', "");
    format!("b-{simple}-{}@{bounce_domain}", verp_mac(signer, &simple))
}

fn verp_mac(signer: &Signer, simple_tid: &str) -> String {
    let token = signer.sign(TokenKind::Verp, simple_tid);
    let mac = token.rsplit('.').next().unwrap_or_default();
    mac.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// The tid (with dashes) behind a VERP local part, when its signature verifies.
pub fn verp_tid(signer: &Signer, local: &str) -> Option<String> {
    let rest = local.strip_prefix("b-")?;
    let (simple, mac) = rest.split_once('-')?;
    if simple.len() != 32 || mac.is_empty() || verp_mac(signer, simple) != mac.to_ascii_lowercase()
    {
        return None;
    }
    uuid::Uuid::parse_str(simple).ok().map(|u| u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new([7; 32])
    }

    #[test]
    fn every_link_round_trips_and_only_as_its_own_kind() {
        let links = [
            Link::Click {
                tid: "t-1".into(),
                recipient: "a@example.org".into(),
                url: "https://example.org/?q=a|b".into(),
            },
            Link::Open {
                tid: "t-1".into(),
                recipient: "a@example.org".into(),
            },
            Link::Unsubscribe(Unsubscribe {
                asset_id: "a_1".into(),
                tid: "t-1".into(),
                recipient: String::new(),
                sender: "x|y@example.org".into(),
            }),
            Link::InboundAttachment {
                tid: "t-1".into(),
                part: "2".into(),
                expires_ms: 1_700_000_000_000,
            },
        ];
        for link in &links {
            let token = link.token(&signer());
            assert_eq!(
                Link::verify(&signer(), link.kind(), &token).as_ref(),
                Some(link)
            );
            for other in &links {
                if other.kind() != link.kind() {
                    assert_eq!(Link::verify(&signer(), other.kind(), &token), None);
                }
            }
        }
    }

    #[test]
    fn the_token_format_is_the_one_already_in_mail() {
        // Tokens in mail already sent must keep verifying: same kind names, same payloads.
        let s = signer();
        let old = s.sign(TokenKind::Open, "t-9|b@example.org");
        assert_eq!(
            Link::verify(&s, TokenKind::Open, &old),
            Some(Link::Open {
                tid: "t-9".into(),
                recipient: "b@example.org".into()
            })
        );
        assert_eq!(TokenKind::Unsubscribe.as_str(), "unsub");
        assert_eq!(TokenKind::InboundAttachment.as_str(), "inbound");
    }

    #[test]
    fn verp_addresses_round_trip_and_refuse_forgeries() {
        let s = Signer::new([3; 32]);
        let tid = "4b72d8a2-290d-49e2-993e-3bd8edf31c81";
        let addr = verp(&s, tid, "bounces.example.test");
        let local = addr.split('@').next().unwrap();
        assert!(local.len() <= 64, "{local}");
        assert_eq!(verp_tid(&s, local).as_deref(), Some(tid));
        assert_eq!(verp_tid(&Signer::new([4; 32]), local), None);
        let forged = local.replacen("4b72", "5b72", 1);
        assert_eq!(verp_tid(&s, &forged), None);
    }
}
