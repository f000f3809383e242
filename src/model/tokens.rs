//! Signed tokens for public links (inbound attachment links now; click, open and
//! unsubscribe links later). A token is `base64url(payload).base64url(hmac)` where the MAC
//! covers the token's kind and payload, so a token of one kind never verifies as another
//! and nothing needs a lookup to be checked. The key is 32 random bytes in
//! `data_dir/keys/signing.key` (mode 0600), made on first start.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// What a token is for; part of what its MAC covers. The names are in tokens already sent,
/// so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Click,
    Open,
    Unsubscribe,
    InboundAttachment,
    /// The MAC in a VERP return path (`b-<tid>-<mac>@bounce_domain`).
    Verp,
    /// The value of a domain's `postern-verification` TXT record.
    DomainVerification,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Click => "click",
            TokenKind::Open => "open",
            TokenKind::Unsubscribe => "unsub",
            TokenKind::InboundAttachment => "inbound",
            TokenKind::Verp => "verp",
            TokenKind::DomainVerification => "domain-verification",
        }
    }
}

#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    pub fn new(key: [u8; 32]) -> Self {
        Signer { key }
    }

    /// Loads the key from `data_dir/keys/signing.key`, creating it when absent.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Signer> {
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("signing.key");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(Signer { key })
            }
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is not a 32-byte key; move it aside to let postern make a new one",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_private(&path, &key)?;
                Ok(Signer { key })
            }
            Err(e) => Err(e),
        }
    }

    /// The key's bytes, to share with the other nodes of a cluster (SPEC 13).
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Replaces `data_dir/keys/signing.key` with the cluster's key, so this node signs and
    /// verifies as every other node does, also when it starts without the database.
    pub fn adopt(data_dir: &Path, key: [u8; 32]) -> std::io::Result<Signer> {
        let path = data_dir.join("keys").join("signing.key");
        let tmp = path.with_extension("cluster");
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, &key)?;
        std::fs::rename(&tmp, &path)?;
        Ok(Signer { key })
    }

    fn mac(&self, kind: TokenKind, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(kind.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    pub fn sign(&self, kind: TokenKind, payload: &str) -> String {
        let tag = self.mac(kind, payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The payload of a token of `kind`, or `None` when it is altered, truncated or of
    /// another kind.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Option<String> {
        let (p, t) = token.split_once('.')?;
        let payload = B64.decode(p).ok()?;
        let tag = B64.decode(t).ok()?;
        self.mac(kind, &payload).verify_slice(&tag).ok()?;
        String::from_utf8(payload).ok()
    }
}

/// Writes a secret file readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Whether two secrets are equal, in time that depends on their length only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_kind_and_unaltered() {
        let s = Signer::new([7; 32]);
        let t = s.sign(TokenKind::InboundAttachment, "tid|0|99");
        assert_eq!(
            s.verify(TokenKind::InboundAttachment, &t).as_deref(),
            Some("tid|0|99")
        );
        assert_eq!(s.verify(TokenKind::Click, &t), None);
        assert_eq!(
            s.verify(TokenKind::InboundAttachment, &t[..t.len() - 2]),
            None
        );
        let forged = format!(
            "{}.{}",
            B64.encode("tid|1|99"),
            t.split_once('.').unwrap().1
        );
        assert_eq!(s.verify(TokenKind::InboundAttachment, &forged), None);
        assert_eq!(
            Signer::new([8; 32]).verify(TokenKind::InboundAttachment, &t),
            None
        );
    }
}
