//! Service authentication (SPEC 4.1): `key: <service key>` or `Authorization: Bearer <JWT>`
//! (HS256 only, exactly; `iss` = service id; integer `iat` within the window). When both
//! are sent the JWT decides. Pure: headers, config and the clock in, a service id out.

use crate::config::{Config, ServiceConfig};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why authentication failed; both map to 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// 7002: neither a key nor a token was sent.
    Missing,
    /// 7001, with the reason for the log (never sent to the client).
    Failed(&'static str),
}

/// Accepted clock skew into the future and maximum token age, in seconds.
pub struct JwtWindow {
    pub max_future: i64,
    pub max_age: i64,
}

pub fn authenticate<'c>(
    config: &'c Config,
    key: Option<&str>,
    authorization: Option<&str>,
    now_unix: i64,
    window: &JwtWindow,
) -> Result<&'c ServiceConfig, AuthError> {
    if let Some(auth) = authorization {
        let token = auth
            .strip_prefix("Bearer ")
            .ok_or(AuthError::Failed("Authorization is not Bearer"))?;
        return verify_jwt(config, token.trim(), now_unix, window);
    }
    let key = key.ok_or(AuthError::Missing)?;
    config
        .services
        .iter()
        .find(|s| crate::model::tokens::constant_time_eq(s.key.expose().as_bytes(), key.as_bytes()))
        .ok_or(AuthError::Failed("unknown service key"))
}

fn verify_jwt<'c>(
    config: &'c Config,
    token: &str,
    now: i64,
    window: &JwtWindow,
) -> Result<&'c ServiceConfig, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Failed("JWT is not three parts"));
    };
    let header: serde_json::Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Failed("JWT header is not base64url JSON"))?;
    // Exactly "HS256": "none", "hs256", "RS256" and anything else are refused.
    if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
        return Err(AuthError::Failed("JWT alg is not HS256"));
    }
    let claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AuthError::Failed("JWT payload is not base64url JSON"))?;
    let iss = claims
        .get("iss")
        .and_then(|v| v.as_str())
        .ok_or(AuthError::Failed("JWT has no iss"))?;
    let iat = claims
        .get("iat")
        .and_then(|v| v.as_i64())
        .ok_or(AuthError::Failed("JWT has no integer iat"))?;
    let service = config
        .services
        .iter()
        .find(|svc| svc.id == iss)
        .ok_or(AuthError::Failed("JWT iss is not a service"))?;
    let key = STANDARD
        .decode(service.secret.expose().trim())
        .map_err(|_| AuthError::Failed("service secret is not base64"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::Failed("JWT signature is not base64url"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig)
        .map_err(|_| AuthError::Failed("JWT signature does not verify"))?;
    if iat > now + window.max_future {
        return Err(AuthError::Failed("JWT iat is in the future"));
    }
    if iat < now - window.max_age {
        return Err(AuthError::Failed("JWT is too old"));
    }
    Ok(service)
}

/// Makes an HS256 token (used by `postern send` and tests).
pub fn make_jwt(service_id: &str, secret_b64: &str, iat: i64) -> String {
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = URL_SAFE_NO_PAD.encode(serde_json::json!({"iss": service_id, "iat": iat}).to_string());
    let key = STANDARD.decode(secret_b64).unwrap_or_default();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{h}.{p}").as_bytes());
    format!(
        "{h}.{p}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            &format!(
                "{}{}",
                crate::config::TEST_SERVER,
                r#"
[[service]]
id = "svc_a"
key = "key-a"
secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
"#
            ),
            "t",
        )
        .unwrap()
    }

    const W: JwtWindow = JwtWindow {
        max_future: 300,
        max_age: 3600,
    };

    #[test]
    fn key_and_jwt_paths() {
        let c = config();
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";
        assert_eq!(
            authenticate(&c, Some("key-a"), None, 1000, &W).unwrap().id,
            "svc_a"
        );
        assert_eq!(
            authenticate(&c, Some("nope"), None, 1000, &W).unwrap_err(),
            AuthError::Failed("unknown service key")
        );
        assert_eq!(
            authenticate(&c, None, None, 1000, &W).unwrap_err(),
            AuthError::Missing
        );
        let good = format!("Bearer {}", make_jwt("svc_a", secret, 1000));
        assert_eq!(
            authenticate(&c, None, Some(&good), 1000, &W).unwrap().id,
            "svc_a"
        );
        // The JWT decides even when a valid key is sent too.
        let old = format!("Bearer {}", make_jwt("svc_a", secret, 1000 - 3601));
        assert!(authenticate(&c, Some("key-a"), Some(&old), 1000, &W).is_err());
        let future = format!("Bearer {}", make_jwt("svc_a", secret, 1000 + 301));
        assert!(authenticate(&c, None, Some(&future), 1000, &W).is_err());
        let wrong_key = format!("Bearer {}", make_jwt("svc_a", "b3RoZXI=", 1000));
        assert!(authenticate(&c, None, Some(&wrong_key), 1000, &W).is_err());
    }

    #[test]
    fn alg_none_and_other_algs_are_refused() {
        let c = config();
        let p = URL_SAFE_NO_PAD.encode(r#"{"iss":"svc_a","iat":1000}"#);
        for alg in ["none", "hs256", "HS512", "RS256"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let token = format!("Bearer {h}.{p}.");
            assert_eq!(
                authenticate(&c, None, Some(&token), 1000, &W).unwrap_err(),
                AuthError::Failed("JWT alg is not HS256"),
                "{alg}"
            );
        }
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
        let no_iat = URL_SAFE_NO_PAD.encode(r#"{"iss":"svc_a","iat":"1000"}"#);
        assert!(authenticate(&c, None, Some(&format!("Bearer {h}.{no_iat}.x")), 1000, &W).is_err());
    }
}
