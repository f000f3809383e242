//! Amazon SNS HTTP(S) messages (how SES events arrive, SPEC 7.3): parsing, the trust rule
//! for the URLs they carry, and signature verification.
//!
//! A message is believed only when its signature verifies against the certificate at its
//! `SigningCertURL`, which must be https on an SNS host (`sns.<region>.amazonaws.com`, a
//! real region shape) or under a prefix the configuration trusts (tests sign their own),
//! and when its `Timestamp` is recent: a genuine message replayed later is refused.
//! SignatureVersion 1 is RSA PKCS#1 v1.5 over SHA-1, version 2 over SHA-256, of AWS's
//! canonical string. Certificates are fetched once per URL and cached.

use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier as _;
use rsa::RsaPublicKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A certificate larger than this is not one.
const MAX_CERT_SIZE: usize = 64 * 1024;
/// Distinct signing certificates kept (SNS rotates them rarely).
const MAX_CACHED: usize = 64;
/// Oldest `Timestamp` believed: SNS stops retrying an HTTP delivery within an hour (the
/// longest delivery policy it allows), so anything older is a replay.
pub const MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How far in the future a `Timestamp` may be (clock skew between SNS and this host).
pub const MAX_SKEW: chrono::TimeDelta = chrono::TimeDelta::minutes(5);

/// The JSON body SNS POSTs. Fields not needed for verification are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject")]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: Option<String>,
    #[serde(rename = "Signature")]
    pub signature: Option<String>,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: Option<String>,
    #[serde(rename = "SubscribeURL")]
    pub subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    pub token: Option<String>,
}

/// Why a message is not believed. `Unavailable` is ours (the certificate could not be
/// fetched): SNS should try again; every other kind is the sender's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("message is not signed (Signature, SignatureVersion and SigningCertURL are required)")]
    Unsigned,
    #[error("SignatureVersion \"{0}\" is not supported (1 or 2)")]
    Version(String),
    #[error(
        "SigningCertURL {0} is not a .pem file https on an SNS host nor under a trusted prefix"
    )]
    UntrustedUrl(String),
    #[error("Type \"{0}\" is not an SNS message type")]
    Type(String),
    #[error("{field} is required for Type {kind}")]
    Missing { field: &'static str, kind: String },
    #[error("signing certificate: {0}")]
    Certificate(String),
    #[error("signature does not verify")]
    Signature,
    #[error("Timestamp {0}")]
    Stale(String),
    #[error("signing certificate unavailable: {0}")]
    Unavailable(String),
}

impl Message {
    /// AWS's string to sign: `name\nvalue\n` for each signed field, in this order.
    pub fn string_to_sign(&self) -> Result<String, VerifyError> {
        let missing = |field: &'static str| VerifyError::Missing {
            field,
            kind: self.kind.clone(),
        };
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.kind.as_str() {
            "Notification" => {
                if let Some(s) = &self.subject {
                    fields.push(("Subject", s));
                }
                fields.push(("Timestamp", &self.timestamp));
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let url = self
                    .subscribe_url
                    .as_deref()
                    .ok_or_else(|| missing("SubscribeURL"))?;
                let token = self.token.as_deref().ok_or_else(|| missing("Token"))?;
                fields.push(("SubscribeURL", url));
                fields.push(("Timestamp", &self.timestamp));
                fields.push(("Token", token));
            }
            other => return Err(VerifyError::Type(other.to_string())),
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", &self.kind));
        let mut out = String::new();
        for (name, value) in fields {
            out.push_str(name);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        Ok(out)
    }
}

/// Whether `url` may be fetched for SNS: https on `sns.<region>.amazonaws.com[.cn]` (port
/// 443, no credentials), or under one of `prefixes` (compared after URL normalisation).
pub fn trusted_url(url: &str, prefixes: &[String]) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    if prefixes.iter().any(|p| {
        url::Url::parse(p)
            .is_ok_and(|p| parsed.as_str().starts_with(p.as_str()) && parsed.origin() == p.origin())
    }) {
        return true;
    }
    if parsed.scheme() != "https"
        || !parsed.username().is_empty()
        || parsed.password().is_some()
        || parsed.port().is_some_and(|p| p != 443)
    {
        return false;
    }
    let Some(url::Host::Domain(host)) = parsed.host() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let (rest, china) = match host.strip_suffix(".amazonaws.com.cn") {
        Some(rest) => (rest, true),
        None => match host.strip_suffix(".amazonaws.com") {
            Some(rest) => (rest, false),
            None => return false,
        },
    };
    rest.strip_prefix("sns.")
        .is_some_and(|region| is_region(region) && region.starts_with("cn-") == china)
}

/// Whether `s` has the shape of an AWS region name, `^[a-z]{2}(-gov)?-[a-z]+-\d$`
/// (`us-east-1`, `us-gov-west-1`, `cn-north-1`): `s3` or `sns` is not one, so
/// `sns.s3.amazonaws.com` is not an SNS host.
pub fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lower = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    let (country, middle, number) = match parts.as_slice() {
        [c, m, n] => (*c, *m, *n),
        [c, "gov", m, n] => (*c, *m, *n),
        _ => return false,
    };
    country.len() == 2
        && lower(country)
        && lower(middle)
        && number.len() == 1
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a message stamped `timestamp` may be believed at `now`: at most [`MAX_AGE`]
/// old, at most [`MAX_SKEW`] ahead. The error says which and by how much.
pub fn check_timestamp(
    timestamp: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), VerifyError> {
    let at = chrono::DateTime::parse_from_rfc3339(timestamp).map_err(|e| {
        VerifyError::Stale(format!("\"{timestamp}\" is not an ISO 8601 time ({e})"))
    })?;
    let age = now.signed_duration_since(at);
    if age > MAX_AGE {
        return Err(VerifyError::Stale(format!(
            "{timestamp} is {} minutes old (more than {} minutes): a replayed message is not believed",
            age.num_minutes(),
            MAX_AGE.num_minutes()
        )));
    }
    if -age > MAX_SKEW {
        return Err(VerifyError::Stale(format!(
            "{timestamp} is {} seconds in the future (more than {} seconds of clock skew)",
            (-age).num_seconds(),
            MAX_SKEW.num_seconds()
        )));
    }
    Ok(())
}

/// Whether `url` may be fetched as a signing certificate: a trusted URL whose path is a
/// `.pem` file (as SNS's `SimpleNotificationService-<hex>.pem` are), so a forged message
/// cannot make postern fetch arbitrary pages of an SNS host.
pub fn trusted_cert_url(url: &str, prefixes: &[String]) -> bool {
    trusted_url(url, prefixes)
        && url::Url::parse(url).is_ok_and(|u| u.query().is_none() && u.path().ends_with(".pem"))
}

/// The RSA public key of a PEM certificate, refused when outside its validity period.
pub fn certificate_key(pem: &[u8], now_unix: u64) -> Result<RsaPublicKey, VerifyError> {
    use rsa::pkcs8::DecodePublicKey;
    use x509_cert::der::{DecodePem, Encode};
    let bad = |e: String| VerifyError::Certificate(e);
    let cert = x509_cert::Certificate::from_pem(pem).map_err(|e| bad(e.to_string()))?;
    let validity = &cert.tbs_certificate.validity;
    let from = validity.not_before.to_unix_duration().as_secs();
    let until = validity.not_after.to_unix_duration().as_secs();
    if now_unix < from || now_unix > until {
        return Err(bad(format!(
            "not valid now (valid from {from} to {until}, unix seconds)"
        )));
    }
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|e| bad(format!("not an RSA key: {e}")))
}

/// Checks `signature` (base64) over `text` with `key` for SignatureVersion `version`.
pub fn verify_with(
    key: &RsaPublicKey,
    version: &str,
    text: &str,
    signature: &str,
) -> Result<(), VerifyError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| VerifyError::Signature)?;
    let sig = Signature::try_from(raw.as_slice()).map_err(|_| VerifyError::Signature)?;
    let ok = match version {
        "1" => VerifyingKey::<sha1::Sha1>::new(key.clone()).verify(text.as_bytes(), &sig),
        "2" => VerifyingKey::<sha2::Sha256>::new(key.clone()).verify(text.as_bytes(), &sig),
        other => return Err(VerifyError::Version(other.to_string())),
    };
    ok.map_err(|_| VerifyError::Signature)
}

/// Verifies messages, fetching and caching signing certificates.
pub struct Verifier {
    http: reqwest::Client,
    keys: Mutex<HashMap<String, RsaPublicKey>>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("static HTTP client settings are valid"),
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl Verifier {
    /// The HTTP client used for trusted SNS URLs (certificates, SubscribeURL).
    pub fn client(&self) -> &reqwest::Client {
        &self.http
    }

    /// Believes `msg` or says why not.
    pub async fn verify(&self, msg: &Message, trusted: &[String]) -> Result<(), VerifyError> {
        let (Some(version), Some(signature), Some(cert_url)) = (
            msg.signature_version.as_deref(),
            msg.signature.as_deref(),
            msg.signing_cert_url.as_deref(),
        ) else {
            return Err(VerifyError::Unsigned);
        };
        if !matches!(version, "1" | "2") {
            return Err(VerifyError::Version(version.to_string()));
        }
        if !trusted_cert_url(cert_url, trusted) {
            return Err(VerifyError::UntrustedUrl(cert_url.to_string()));
        }
        let text = msg.string_to_sign()?;
        // Before the certificate fetch: a replay costs no request.
        check_timestamp(&msg.timestamp, chrono::Utc::now())?;
        let key = self.key(cert_url).await?;
        verify_with(&key, version, &text, signature)
    }

    async fn key(&self, url: &str) -> Result<RsaPublicKey, VerifyError> {
        if let Some(k) = self.cached(url) {
            return Ok(k);
        }
        let unavailable = |e: String| VerifyError::Unavailable(format!("{url}: {e}"));
        let mut resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status())));
        }
        let mut pem = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unavailable(e.to_string()))? {
            pem.extend_from_slice(&chunk);
            if pem.len() > MAX_CERT_SIZE {
                return Err(VerifyError::Certificate(format!(
                    "{url}: larger than {MAX_CERT_SIZE} bytes"
                )));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let key = certificate_key(&pem, now)?;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= MAX_CACHED {
            keys.clear();
        }
        keys.insert(url.to_string(), key.clone());
        Ok(key)
    }

    fn cached(&self, url: &str) -> Option<RsaPublicKey> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_and_trusted_prefixes_are_fetched() {
        let none: Vec<String> = Vec::new();
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.eu-west-3.amazonaws.com:443/x.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            "https://sns.cn-northwest-1.amazonaws.com.cn/x.pem",
            "https://sns.us-gov-west-1.amazonaws.com/x.pem",
            "https://SNS.AP-SOUTHEAST-2.amazonaws.com/x.pem",
        ] {
            assert!(trusted_url(ok, &none), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.test/x.pem",
            "https://evil.test/sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.US_EAST.amazonaws.com/x.pem",
            "https://xsns.us-east-1.amazonaws.com/x.pem",
            // Not a region: other AWS services' hosts are not SNS.
            "https://sns.s3.amazonaws.com/x.pem",
            "https://sns.sns.amazonaws.com/x.pem",
            "https://sns.us-east-12.amazonaws.com/x.pem",
            "https://sns.useast-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.s3.amazonaws.com/x.pem",
            "https://sns.us--1.amazonaws.com/x.pem",
            // The China suffix only with a China region, and the other way round.
            "https://sns.us-east-1.amazonaws.com.cn/x.pem",
            "https://sns.cn-north-1.amazonaws.com/x.pem",
            "not a url",
        ] {
            assert!(!trusted_url(bad, &none), "{bad}");
        }
        assert!(trusted_cert_url(
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            &none
        ));
        assert!(!trusted_cert_url(
            "https://sns.us-east-1.amazonaws.com/?Action=ListTopics",
            &none
        ));
        assert!(!trusted_cert_url(
            "https://sns.us-east-1.amazonaws.com/x.pem?Action=ListTopics",
            &none
        ));
        let prefixes = vec!["http://127.0.0.1:9000/certs/".to_string()];
        assert!(trusted_url("http://127.0.0.1:9000/certs/a.pem", &prefixes));
        assert!(!trusted_url("http://127.0.0.1:9000/other/a.pem", &prefixes));
        assert!(!trusted_url("http://127.0.0.1:9001/certs/a.pem", &prefixes));
        assert!(!trusted_url(
            "http://127.0.0.1:9000@evil.test/certs/a.pem",
            &prefixes
        ));
        assert!(
            !trusted_url("http://127.0.0.1:9000/certs/../other/a.pem", &prefixes),
            "dot segments are resolved before the prefix is compared"
        );
    }

    #[test]
    fn region_names_have_the_aws_shape() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-east-1",
            "cn-north-1",
            "il-central-1",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "s3",
            "sns",
            "",
            "us-east",
            "us-east-10",
            "us-east-a",
            "usa-east-1",
            "u-east-1",
            "us-xx-east-1",
            "us-east-1-",
            "-us-east-1",
            "US-east-1",
            "us_east_1",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_older_than_an_hour_or_in_the_future_are_refused() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        for ok in [
            "2026-11-23T10:00:00.000Z",
            "2026-11-23T09:00:01.000Z",
            "2026-11-23T10:04:00.000Z",
            "2026-11-23T11:00:00+01:00",
        ] {
            assert_eq!(check_timestamp(ok, now), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("2026-11-23T08:59:59.000Z", "minutes old"),
            ("2025-11-23T10:00:00.000Z", "minutes old"),
            ("2026-11-23T10:06:00.000Z", "in the future"),
            ("yesterday", "not an ISO 8601 time"),
            ("", "not an ISO 8601 time"),
        ] {
            match check_timestamp(bad, now) {
                Err(VerifyError::Stale(reason)) => assert!(reason.contains(why), "{bad}: {reason}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    fn sample(kind: &str) -> Message {
        Message {
            kind: kind.into(),
            message_id: "m-1".into(),
            topic_arn: "arn:aws:sns:us-east-1:123456789012:t".into(),
            subject: None,
            message: "{\"a\":1}".into(),
            timestamp: "2026-11-23T10:00:00.000Z".into(),
            signature_version: Some("1".into()),
            signature: Some("x".into()),
            signing_cert_url: Some("https://sns.us-east-1.amazonaws.com/c.pem".into()),
            subscribe_url: Some(
                "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription".into(),
            ),
            token: Some("tok".into()),
        }
    }

    #[test]
    fn strings_to_sign_follow_aws_field_order() {
        let n = sample("Notification");
        assert_eq!(
            n.string_to_sign().unwrap(),
            "Message\n{\"a\":1}\nMessageId\nm-1\nTimestamp\n2026-11-23T10:00:00.000Z\nTopicArn\narn:aws:sns:us-east-1:123456789012:t\nType\nNotification\n"
        );
        let mut with_subject = sample("Notification");
        with_subject.subject = Some("Hi".into());
        assert!(with_subject
            .string_to_sign()
            .unwrap()
            .starts_with("Message\n{\"a\":1}\nMessageId\nm-1\nSubject\nHi\nTimestamp\n"));
        let c = sample("SubscriptionConfirmation");
        assert_eq!(
            c.string_to_sign().unwrap(),
            "Message\n{\"a\":1}\nMessageId\nm-1\nSubscribeURL\nhttps://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription\nTimestamp\n2026-11-23T10:00:00.000Z\nToken\ntok\nTopicArn\narn:aws:sns:us-east-1:123456789012:t\nType\nSubscriptionConfirmation\n"
        );
        let mut no_token = sample("UnsubscribeConfirmation");
        no_token.token = None;
        assert!(matches!(
            no_token.string_to_sign(),
            Err(VerifyError::Missing { field: "Token", .. })
        ));
        assert!(matches!(
            sample("Other").string_to_sign(),
            Err(VerifyError::Type(_))
        ));
    }

    #[test]
    fn signatures_verify_for_both_versions_and_nothing_else() {
        use rsa::pkcs1v15::SigningKey;
        use rsa::signature::{SignatureEncoding, Signer};
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let public = private.to_public_key();
        let text = sample("Notification").string_to_sign().unwrap();
        let b64 = |s: Vec<u8>| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let v1 = b64(SigningKey::<sha1::Sha1>::new(private.clone())
            .sign(text.as_bytes())
            .to_vec());
        let v2 = b64(SigningKey::<sha2::Sha256>::new(private)
            .sign(text.as_bytes())
            .to_vec());
        assert_eq!(verify_with(&public, "1", &text, &v1), Ok(()));
        assert_eq!(verify_with(&public, "2", &text, &v2), Ok(()));
        assert_eq!(
            verify_with(&public, "2", &text, &v1),
            Err(VerifyError::Signature),
            "a SHA-1 signature is not a SHA-256 one"
        );
        let tampered = text.replace("{\"a\":1}", "{\"a\":2}");
        assert_eq!(
            verify_with(&public, "1", &tampered, &v1),
            Err(VerifyError::Signature)
        );
        assert_eq!(
            verify_with(&public, "1", &text, "not base64!"),
            Err(VerifyError::Signature)
        );
        assert!(matches!(
            verify_with(&public, "3", &text, &v1),
            Err(VerifyError::Version(_))
        ));
    }
}
