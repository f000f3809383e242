//! DKIM keys and signing (SPEC 7.2, 9). One key per (domain, selector) as a PKCS#8 PEM file
//! in `data_dir/dkim/`, mode 0600, generated on first use under a file lock so concurrent
//! first sends (or `postern domain records` while the daemon runs) never race. Signing is
//! mail-auth's; this module only manages keys and the DNS record text.
//!
//! Rotation (`postern domain rotate-dkim`): a domain's selectors are listed in
//! `data_dir/dkim/<domain>.json`. A new key is published at once and signs from the end of
//! a grace period (time for DNS to carry it); the key it replaces stays published for the
//! same period after that (mail in flight is verified against it), then is retired. Without
//! that file, the asset's configured selector is the domain's only key.

use crate::config::{Config, DkimAlgorithm};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// Headers Amazon SES replaces in mail it relays (its manual-DKIM guide says not to sign
/// them): a signature over them would not survive.
pub const SES_REPLACES: [&str; 2] = ["Date", "Message-ID"];

/// Which headers a signature covers: all of `SIGNED_HEADERS`, or those less
/// `SES_REPLACES` for the SES route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    Full,
    Ses,
}

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
    #[error("{path}: rotation state unreadable: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("selector \"{0}\" is already in use for this domain")]
    SelectorInUse(String),
    #[error("selector \"{0}\" must be letters, digits and '-', at most 63 characters")]
    BadSelector(String),
    #[error("domain {0} belongs to no asset in the configuration")]
    UnknownDomain(String),
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
    ses_signer: Signer,
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
        self.sign_with(message, Coverage::Full)
    }

    /// The `DKIM-Signature` header covering the headers of `coverage`.
    pub fn sign_with(&self, message: &[u8], coverage: Coverage) -> Result<String, DkimError> {
        let signer = match coverage {
            Coverage::Full => &self.signer,
            Coverage::Ses => &self.ses_signer,
        };
        let sig = match signer {
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

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DkimError {
    let path = path.to_path_buf();
    move |source| DkimError::Io { path, source }
}

/// `data_dir/dkim`, created when absent.
fn key_dir(data_dir: &Path) -> Result<PathBuf, DkimError> {
    let dir = data_dir.join("dkim");
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    Ok(dir)
}

/// Takes the directory's exclusive lock (released when the file is dropped), so key
/// creation and rotation by the daemon and the command line never race.
fn lock_keys(dir: &Path) -> Result<std::fs::File, DkimError> {
    let lock_path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    lock.lock().map_err(io_error(&lock_path))?;
    Ok(lock)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// One key of a domain in its rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelectorState {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// Unix seconds from which this key signs (the newest such key signs).
    pub signing_from: u64,
    /// Unix seconds after which its record need not be published; `None` while current.
    pub retire_at: Option<u64>,
}

/// Where a key stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Publish it; it signs from `signing_from`.
    Next,
    /// Publish it; it signs now.
    Signing,
    /// Keep it published until `retire_at`; it no longer signs.
    Retiring,
}

/// A domain's selectors (`data_dir/dkim/<domain>.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub selectors: Vec<SelectorState>,
}

fn rotation_path(data_dir: &Path, domain: &str) -> PathBuf {
    data_dir.join("dkim").join(format!("{domain}.json"))
}

impl Rotation {
    /// The domain's rotation state, `None` when it was never rotated.
    pub fn load(data_dir: &Path, domain: &str) -> Result<Option<Rotation>, DkimError> {
        let path = rotation_path(data_dir, domain);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| DkimError::State {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(DkimError::Io { path, source }),
        }
    }

    /// The key that signs at `now`.
    pub fn signing(&self, now: u64) -> Option<&SelectorState> {
        self.selectors
            .iter()
            .filter(|s| s.signing_from <= now)
            .max_by_key(|s| s.signing_from)
    }

    /// The keys to publish at `now`, with their phase.
    pub fn published(&self, now: u64) -> Vec<(&SelectorState, Phase)> {
        let signing = self.signing(now).map(|s| s.selector.as_str());
        self.selectors
            .iter()
            .filter_map(|s| {
                let phase = if Some(s.selector.as_str()) == signing {
                    Phase::Signing
                } else if s.signing_from > now {
                    Phase::Next
                } else if s.retire_at.is_some_and(|r| r > now) {
                    Phase::Retiring
                } else {
                    return None;
                };
                Some((s, phase))
            })
            .collect()
    }
}

impl Rotation {
    /// A domain never rotated: its configured key alone, signing since ever.
    fn configured((selector, algorithm): (&str, DkimAlgorithm)) -> Rotation {
        Rotation {
            selectors: vec![SelectorState {
                selector: selector.to_string(),
                algorithm,
                signing_from: 0,
                retire_at: None,
            }],
        }
    }

    /// Forgets retired keys, and a key still waiting to sign (a rotation started before
    /// this one): it never signed, nothing needs it. Their files stay.
    fn forget_unused(&mut self, now: u64) {
        self.selectors
            .retain(|s| s.signing_from <= now && s.retire_at.is_none_or(|r| r > now));
    }

    /// The next numbered selector, past any number whose key file exists (a forgotten
    /// pending key keeps its file).
    fn free_selector(&self, dir: &Path, domain: &str) -> String {
        let mut taken: Vec<String> = self.selectors.iter().map(|s| s.selector.clone()).collect();
        loop {
            let refs: Vec<&str> = taken.iter().map(String::as_str).collect();
            let next = next_selector(&refs);
            if !key_path(dir, domain, &next).exists() {
                return next;
            }
            taken.push(next);
        }
    }

    /// Refuses a selector DNS cannot carry, or one in use or with a key file already.
    fn check_new(&self, dir: &Path, domain: &str, selector: &str) -> Result<(), DkimError> {
        if selector.is_empty()
            || selector.len() > 63
            || !selector
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(DkimError::BadSelector(selector.to_string()));
        }
        if self.selectors.iter().any(|s| s.selector == selector)
            || key_path(dir, domain, selector).exists()
        {
            return Err(DkimError::SelectorInUse(selector.to_string()));
        }
        Ok(())
    }

    /// Adds the new key, signing `grace` seconds from `now`, and schedules the current
    /// keys' retirement `grace` (at least `MIN_RETIRING`) after that. Returns when the new
    /// key signs.
    fn start(&mut self, selector: &str, algorithm: DkimAlgorithm, now: u64, grace: u64) -> u64 {
        let switch = now + grace;
        for s in &mut self.selectors {
            if s.retire_at.is_none() {
                s.retire_at = Some(switch + grace.max(MIN_RETIRING));
            }
        }
        self.selectors.push(SelectorState {
            selector: selector.to_string(),
            algorithm,
            signing_from: switch,
            retire_at: None,
        });
        switch
    }

    /// Writes the state to `<domain>.json` (a temporary file renamed over it).
    fn save(&self, dir: &Path, data_dir: &Path, domain: &str) -> Result<(), DkimError> {
        let path = rotation_path(data_dir, domain);
        let tmp = dir.join(format!(".{domain}.json.tmp"));
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, json).map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))
    }
}

/// The (selector, algorithm) that signs for `domain` now: the rotation's, else the
/// configured one.
pub fn current_selector(
    data_dir: &Path,
    domain: &str,
    configured: (&str, DkimAlgorithm),
) -> Result<(String, DkimAlgorithm), DkimError> {
    Ok(Rotation::load(data_dir, domain)?
        .and_then(|r| {
            r.signing(unix_now())
                .map(|s| (s.selector.clone(), s.algorithm))
        })
        .unwrap_or_else(|| (configured.0.to_string(), configured.1)))
}

/// A selector one higher than the highest numbered one in use: postern1 -> postern2.
fn next_selector(used: &[&str]) -> String {
    let base = used
        .last()
        .map(|s| s.trim_end_matches(|c: char| c.is_ascii_digit()))
        .filter(|b| !b.is_empty())
        .unwrap_or("postern");
    let n = used
        .iter()
        .filter_map(|s| s.strip_prefix(base)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("{base}{}", n + 1)
}

/// How long a replaced key stays published at least after it stops signing: mail signed
/// with it may be verified days later (greylisting, forwarding, a reader's client).
pub const MIN_RETIRING: u64 = 2 * 86_400;

/// Starts a rotation of `domain`'s key: a new selector and key, published now, signing
/// after `grace`; the current key stays published `grace` (at least `MIN_RETIRING`) after
/// that. Returns the new state.
pub fn rotate(
    data_dir: &Path,
    domain: &str,
    configured: (&str, DkimAlgorithm),
    selector: Option<&str>,
    algorithm: DkimAlgorithm,
    grace: Duration,
) -> Result<Rotation, DkimError> {
    let dir = key_dir(data_dir)?;
    let load = |now| -> Result<Rotation, DkimError> {
        let mut state =
            Rotation::load(data_dir, domain)?.unwrap_or_else(|| Rotation::configured(configured));
        state.forget_unused(now);
        Ok(state)
    };
    let selector = {
        let _lock = lock_keys(&dir)?;
        let state = load(unix_now())?;
        let selector = match selector {
            Some(s) => s.to_string(),
            None => state.free_selector(&dir, domain),
        };
        state.check_new(&dir, domain, &selector)?;
        selector
    };
    // The key is made (under the lock again) before the state names it, and the grace
    // counts from then: an RSA key can take seconds to make.
    load_or_create(data_dir, domain, &selector, algorithm)?;
    let lock = lock_keys(&dir)?;
    let now = unix_now();
    let mut state = load(now)?;
    let switch = state.start(&selector, algorithm, now, grace.as_secs());
    state.save(&dir, data_dir, domain)?;
    drop(lock);
    tracing::info!(
        domain,
        selector,
        signing_from = switch,
        "DKIM rotation started"
    );
    Ok(state)
}

/// A rotation started for a domain of the configuration (`postern domain rotate-dkim`).
pub struct Started {
    /// The domain as the configuration spells it (lower case, no trailing dot).
    pub domain: String,
    /// Its rotation, the new key last.
    pub rotation: Rotation,
}

/// Starts a rotation of `domain` (any case, a trailing dot allowed), which an asset of
/// `config` must own, from that asset's configured key: the new key has the same
/// algorithm. See [`rotate`].
pub fn rotate_domain(
    config: &Config,
    domain: &str,
    selector: Option<&str>,
    grace: Duration,
) -> Result<Started, DkimError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let asset = config
        .asset_for_domain(&domain)
        .ok_or_else(|| DkimError::UnknownDomain(domain.clone()))?;
    let (configured, algorithm) = asset.dkim_key();
    let rotation = rotate(
        &config.server.data_dir,
        &domain,
        (configured, algorithm),
        selector,
        algorithm,
        grace,
    )?;
    Ok(Started { domain, rotation })
}

/// Loads the key of `domain`/`selector`, generating it (under a lock) when absent.
pub fn load_or_create(
    data_dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<DomainKey, DkimError> {
    let dir = key_dir(data_dir)?;
    let path = key_path(&dir, domain, selector);
    if !path.exists() {
        let lock = lock_keys(&dir)?;
        if !path.exists() {
            let pem = generate(algorithm).map_err(|reason| DkimError::BadKey {
                path: path.clone(),
                algorithm: alg_name(algorithm),
                reason,
            })?;
            let tmp = dir.join(format!(".{domain}.{selector}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            crate::model::tokens::write_private(&tmp, pem.as_bytes()).map_err(io_error(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
            tracing::info!(
                domain,
                selector,
                algorithm = alg_name(algorithm),
                "DKIM key generated"
            );
        }
        drop(lock);
    }
    let pem = std::fs::read_to_string(&path).map_err(io_error(&path))?;
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
    let make = |headers: &[&str]| -> Result<(String, Signer), DkimError> {
        Ok(match algorithm {
            DkimAlgorithm::RsaSha256 => {
                use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
                let key =
                    rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?;
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
                    .headers(headers.iter().copied());
                (B64.encode(spki.as_bytes()), Signer::Rsa(s))
            }
            DkimAlgorithm::Ed25519Sha256 => {
                let signing = Ed25519Key::from_pkcs8_der(&der).map_err(|e| bad(e.to_string()))?;
                let public = B64.encode(signing.public_key());
                let s = DkimSigner::from_key(signing)
                    .domain(domain)
                    .selector(selector)
                    .headers(headers.iter().copied());
                (public, Signer::Ed(s))
            }
        })
    };
    let (public, signer) = make(&SIGNED_HEADERS)?;
    let ses_headers: Vec<&str> = SIGNED_HEADERS
        .into_iter()
        .filter(|h| !SES_REPLACES.contains(h))
        .collect();
    let (_, ses_signer) = make(&ses_headers)?;
    Ok(DomainKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        algorithm,
        public,
        signer,
        ses_signer,
    })
}

/// Loaded keys, by (domain, selector, algorithm), and rotation states by domain.
#[derive(Default)]
pub struct Keys {
    loaded: Mutex<HashMap<(String, String, DkimAlgorithm), Arc<DomainKey>>>,
    rotations: Mutex<HashMap<String, (Option<Rotation>, Instant)>>,
}

/// How long a domain's rotation state is used before the file is read again, so a
/// `rotate-dkim` by the command line reaches a running daemon without a signal.
const ROTATION_RECHECK: Duration = Duration::from_secs(1);

impl Keys {
    /// The key that signs for `domain` now (rotation state, else the configured selector).
    pub fn signing_key(
        &self,
        data_dir: &Path,
        domain: &str,
        configured: (&str, DkimAlgorithm),
    ) -> Result<Arc<DomainKey>, DkimError> {
        let state = {
            let cached = self
                .rotations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(domain)
                .filter(|(_, at)| at.elapsed() < ROTATION_RECHECK)
                .map(|(s, _)| s.clone());
            match cached {
                Some(s) => s,
                None => {
                    let s = Rotation::load(data_dir, domain)?;
                    self.rotations
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(domain.to_string(), (s.clone(), Instant::now()));
                    s
                }
            }
        };
        let (selector, algorithm) = state
            .as_ref()
            .and_then(|r| r.signing(unix_now()))
            .map(|s| (s.selector.as_str(), s.algorithm))
            .unwrap_or(configured);
        self.get(data_dir, domain, selector, algorithm)
    }

    /// Forgets every loaded key and rotation state: the files changed (cluster mode: a
    /// key another node made first replaced this node's own).
    pub fn forget(&self) {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.rotations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

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
    fn selectors_count_up() {
        assert_eq!(next_selector(&["postern1"]), "postern2");
        assert_eq!(next_selector(&["postern1", "postern2"]), "postern3");
        assert_eq!(next_selector(&["mail"]), "mail1");
        assert_eq!(next_selector(&["s9", "s10"]), "s11");
        assert_eq!(next_selector(&[]), "postern1");
    }

    #[test]
    fn rotation_publishes_both_then_switches_then_retires() {
        let dir = tempfile::tempdir().unwrap();
        let ed = DkimAlgorithm::Ed25519Sha256;
        load_or_create(dir.path(), "example.test", "postern1", ed).unwrap();
        let state = rotate(
            dir.path(),
            "example.test",
            ("postern1", ed),
            None,
            ed,
            Duration::from_secs(100),
        )
        .unwrap();
        let now = unix_now();
        let sel = |r: &Rotation, t: u64| {
            r.published(t)
                .into_iter()
                .map(|(s, p)| (s.selector.clone(), p))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sel(&state, now),
            vec![
                ("postern1".to_string(), Phase::Signing),
                ("postern2".to_string(), Phase::Next)
            ]
        );
        assert_eq!(state.signing(now).unwrap().selector, "postern1");
        assert_eq!(
            sel(&state, now + 150),
            vec![
                ("postern1".to_string(), Phase::Retiring),
                ("postern2".to_string(), Phase::Signing)
            ]
        );
        assert_eq!(
            sel(&state, now + 100 + MIN_RETIRING + 1),
            vec![("postern2".to_string(), Phase::Signing)]
        );
        assert!(dir.path().join("dkim/example.test.postern2.pem").exists());
        assert_eq!(
            Rotation::load(dir.path(), "example.test").unwrap(),
            Some(state)
        );
        assert!(matches!(
            rotate(
                dir.path(),
                "example.test",
                ("postern1", ed),
                Some("postern2"),
                ed,
                Duration::ZERO
            ),
            Err(DkimError::SelectorInUse(_))
        ));
        assert!(matches!(
            rotate(
                dir.path(),
                "example.test",
                ("postern1", ed),
                Some("bad selector"),
                ed,
                Duration::ZERO
            ),
            Err(DkimError::BadSelector(_))
        ));
        // With no grace the new key signs at once; the daemon's cache sees it.
        let keys = Keys::default();
        let k = keys
            .signing_key(dir.path(), "example.test", ("postern1", ed))
            .unwrap();
        assert_eq!(k.selector, "postern1");
        rotate(
            dir.path(),
            "example.test",
            ("postern1", ed),
            None,
            ed,
            Duration::ZERO,
        )
        .unwrap();
        let k = Keys::default()
            .signing_key(dir.path(), "example.test", ("postern1", ed))
            .unwrap();
        assert_eq!(k.selector, "postern3");
    }

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
