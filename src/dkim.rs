//! DKIM keys and signing (SPEC 7.2, 9). One key per (domain, selector) as a PKCS#8 PEM file
//! in `data_dir/dkim/`, mode 0600, generated on first use under a file lock so concurrent
//! first sends (or `postern domain records` while the daemon runs) never race. Signing is
//! mail-auth's; this module only manages keys and the DNS record text.

use crate::config::DkimAlgorithm;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Headers covered by the signature. Listed once more than they occur where useful, so a
/// header added later (From, Subject, List-Unsubscribe...) breaks the signature.
pub const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a usable {algorithm} key: {reason}")]
    BadKey {
        path: PathBuf,
        algorithm: &'static str,
        reason: String,
    },
    #[error("signing failed: {0}")]
    Sign(String),
}

enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed(DkimSigner<Ed25519Key, Done>),
}

/// A loaded key: its signer and its public key for DNS.
pub struct DomainKey {
    pub domain: String,
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// base64 of the public key as published in `p=`.
    pub public: String,
    signer: Signer,
}

impl DomainKey {
    /// The TXT record value for `<selector>._domainkey.<domain>`.
    pub fn txt_record(&self) -> String {
        let k = match self.algorithm {
            DkimAlgorithm::RsaSha256 => "rsa",
            DkimAlgorithm::Ed25519Sha256 => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", self.public)
    }

    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The `DKIM-Signature` header (CRLF-terminated) for a complete message.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let sig = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed(s) => s.sign(message),
        };
        sig.map(|s| s.to_header())
            .map_err(|e| DkimError::Sign(e.to_string()))
    }
}

fn key_path(dir: &Path, domain: &str, selector: &str) -> PathBuf {
    dir.join(format!("{domain}.{selector}.pem"))
}

/// Loads the key of `domain`/`selector`, generating it (under a lock) when absent.
pub fn load_or_create(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<DomainKey, DkimError> {
    let dir = data_dir.join("dkim");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DkimError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = key_path(&dir, domain, selector);
    if !path.exists() {
        let lock_path = dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        if !path.exists() {
            let pem = generate(algorithm).map_err(|reason| DkimError::BadKey {
                path: path.clone(),
                algorithm: alg_name(algorithm),
                reason,
            })?;
            let tmp = dir.join(format!(".{domain}.{selector}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            crate::tokens::write_private(&tmp, pem.as_bytes()).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            tracing::info!(
                domain,
                selector,
                algorithm = alg_name(algorithm),
                "DKIM key generated"
            );
        }
        let _ = lock.unlock();
    }
    let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
    parse(&pem, &path, domain, selector, algorithm)
}

fn alg_name(a: DkimAlgorithm) -> &'static str {
    match a {
        DkimAlgorithm::RsaSha256 => "rsa-sha256",
        DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
    }
}

fn generate(algorithm: DkimAlgorithm) -> Result<String, String> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
                .map_err(|e| e.to_string())?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map(|p| p.to_string())
                .map_err(|e| e.to_string())
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            Ok(pem_wrap("PRIVATE KEY", &der))
        }
    }
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    B64.decode(body.trim()).ok()
}

fn parse(
    pem: &str,
    path: &Path,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<DomainKey, DkimError> {
    let bad = |reason: String| DkimError::BadKey {
        path: path.to_path_buf(),
        algorithm: alg_name(algorithm),
        reason,
    };
    let der = pem_der(pem).ok_or_else(|| bad("not PEM".into()))?;
    let (public, signer) = match algorithm {
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
            let key = rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?;
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| bad(e.to_string()))?;
            let pkcs8 = tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer::from(der.clone());
            let signing =
                RsaKey::<Sha256>::from_key_der(pkcs8.into()).map_err(|e| bad(e.to_string()))?;
            let s = DkimSigner::from_key(signing)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS);
            (B64.encode(spki.as_bytes()), Signer::Rsa(s))
        }
        DkimAlgorithm::Ed25519Sha256 => {
            let signing = Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?;
            let public = B64.encode(signing.public_key());
            let s = DkimSigner::from_key(signing)
                .domain(domain)
                .selector(selector)
                .headers(SIGNED_HEADERS);
            (public, Signer::Ed(s))
        }
    };
    Ok(DomainKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        algorithm,
        public,
        signer,
    })
}

/// Loaded keys, by (domain, selector, algorithm).
#[derive(Default)]
pub struct Keys {
    loaded: Mutex<HashMap<(String, String, DkimAlgorithm), Arc<DomainKey>>>,
}

impl Keys {
    pub fn get(
        &self,
        data_dir: &Path,
        domain: &str,
        selector: &str,
        algorithm: DkimAlgorithm,
    ) -> Result<Arc<DomainKey>, DkimError> {
        let id = (domain.to_string(), selector.to_string(), algorithm);
        if let Some(k) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(k.clone());
        }
        let key = Arc::new(load_or_create(data_dir, domain, selector, algorithm)?);
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, key.clone());
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_key_is_made_once_private_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = load_or_create(
            dir.path(),
            "example.test",
            "s1",
            DkimAlgorithm::Ed25519Sha256,
        )
        .unwrap();
        let k2 = load_or_create(
            dir.path(),
            "example.test",
            "s1",
            DkimAlgorithm::Ed25519Sha256,
        )
        .unwrap();
        assert_eq!(
            k1.public, k2.public,
            "the second call loads, not regenerates"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("dkim/example.test.s1.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(k1.txt_record().starts_with("v=DKIM1; k=ed25519; p="));
        let header = k1
            .sign(b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n")
            .unwrap();
        assert!(
            header.starts_with("DKIM-Signature:")
                && header.contains("d=example.test")
                && header.contains("s=s1")
        );
    }
}
