//! The signed links postern puts in mail and events, one type for building and reading
//! them: click and open tracking (SPEC 7.2), unsubscribe (SPEC 7.2, 8) and inbound
//! attachment links (SPEC 6.2). A link's payload is its fields joined by `|` (the last
//! field may itself contain `|`: a URL, a sender), signed under its [`TokenKind`] so a token
//! of one kind never verifies as another.

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
}
