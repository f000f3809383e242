//! The Amazon SES route: SES v2 `SendEmail` with `Content.Raw` (the DKIM-signed MIME),
//! signed with SigV4 by `aws-sigv4`, sent by reqwest. One call per transaction carries
//! every pending recipient; SES's MessageId is what later SES events (SNS) refer to.
//!
//! Outcomes: 200 -> Submitted with the MessageId; throttling, 5xx, 403 (credentials, which
//! an operator can fix without losing mail) and transport errors -> Deferred;
//! MessageRejected and other 4xx -> Refused with SES's message (7592).

use super::RcptOutcome;
use crate::config::SesRouteConfig;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use std::time::{Duration, SystemTime};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The signing name of SES (v1 and v2 alike).
const SERVICE: &str = "ses";
/// Recipients (to, cc and bcc together) SES accepts in one message.
pub const MAX_RECIPIENTS: usize = 50;
/// Error bodies are read for their message, never more than this.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Spaces calls so that at most `rate` recipients a second are sent (a virtual
/// schedule: each call books `n / rate` seconds after the previous booking).
pub struct Pacer {
    rate: f64,
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Pacer {
    pub fn new(rate: f64) -> Pacer {
        Pacer {
            rate,
            next: std::sync::Mutex::new(None),
        }
    }

    /// Books `n` recipients at `now`: how long to wait before sending them.
    pub fn book(&self, n: usize, now: std::time::Instant) -> Duration {
        let cost = Duration::from_secs_f64(n as f64 / self.rate);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.filter(|t| *t > now).unwrap_or(now);
        *next = Some(start + cost);
        start - now
    }
}

pub struct SesRoute {
    pacer: Option<Pacer>,
    region: String,
    base: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    configuration_set: Option<String>,
    http: reqwest::Client,
}

/// What one `SendEmail` call gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SesAnswer {
    Accepted { message_id: String },
    Failed(RcptOutcome),
}

/// An error answer of the SES API: its type (`MessageRejected`, `TooManyRequestsException`...)
/// and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SesError {
    pub status: u16,
    pub kind: String,
    pub message: String,
}

impl std::fmt::Display for SesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SES {} {}: {}", self.status, self.kind, self.message)
    }
}

impl SesError {
    /// Reads the type from `x-amzn-ErrorType` or the body's `__type`/`code`, and the message
    /// from `message`/`Message`, as AWS's REST-JSON protocol writes them.
    pub fn parse(status: u16, error_type: Option<&str>, body: &[u8]) -> SesError {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| json.get(*n).and_then(|v| v.as_str()))
                .map(str::to_string)
        };
        let kind = error_type
            .map(str::to_string)
            .or_else(|| field(&["__type", "code", "Code"]))
            .unwrap_or_default();
        // "MessageRejected:http://internal.amazon.com/..." or "com.amazonaws...#MessageRejected"
        let kind = kind.split(':').next().unwrap_or_default();
        let kind = kind.rsplit('#').next().unwrap_or_default().to_string();
        let message = field(&["message", "Message"]).unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(512)])
                .trim()
                .to_string()
        });
        SesError {
            status,
            kind,
            message,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "TooManyRequestsException"
                | "LimitExceededException"
                | "Throttling"
                | "ThrottlingException"
                | "SendingPausedException"
                | "ServiceUnavailable"
                | "InternalFailure"
        ) || self.status == 429
            || self.status >= 500
            // Credentials and clock problems: the operator fixes them, the mail waits.
            || self.status == 401
            || self.status == 403
    }
}

impl SesRoute {
    pub fn new(config: &SesRouteConfig) -> SesRoute {
        let region = config.region.clone();
        let base = config
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://email.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        SesRoute {
            pacer: config.max_send_rate.map(Pacer::new),
            region,
            base,
            access_key_id: config.access_key_id.expose().to_string(),
            secret_access_key: config.secret_access_key.expose().to_string(),
            session_token: config
                .session_token
                .as_ref()
                .map(|s| s.expose().to_string()),
            configuration_set: config.configuration_set.clone(),
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .pool_max_idle_per_host(64)
                .tcp_nodelay(true)
                .build()
                .expect("static HTTP client settings are valid"),
        }
    }

    /// A SigV4-signed request to the SES v2 API.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<reqwest::RequestBuilder, String> {
        let url = format!("{}{path}", self.base);
        let content_type = "application/json";
        let identity = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            self.session_token.clone(),
            None,
            "postern-config",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(SERVICE)
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("SigV4 parameters: {e}"))?
            .into();
        let signable = SignableRequest::new(
            method,
            &url,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| format!("SigV4 request: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("SigV4 signing: {e}"))?
            .into_parts();
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self
            .http
            .request(method, &url)
            .header("content-type", content_type);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        Ok(req.body(body))
    }

    /// Sends `message` to every address in `rcpts` with one `SendEmail` call.
    pub async fn send(&self, from: &str, rcpts: &[String], message: &[u8]) -> SesAnswer {
        if let Some(p) = &self.pacer {
            let wait = p.book(rcpts.len(), std::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut body = serde_json::json!({
            "FromEmailAddress": from,
            "Destination": {"ToAddresses": rcpts},
            "Content": {"Raw": {"Data": B64.encode(message)}},
        });
        if let Some(set) = &self.configuration_set {
            body["ConfigurationSetName"] = set.as_str().into();
        }
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let req = match self.request("POST", "/v2/email/outbound-emails", body) {
            Ok(r) => r,
            Err(e) => return SesAnswer::Failed(RcptOutcome::Deferred(e)),
        };
        match self.call(req).await {
            Ok(json) => match json.get("MessageId").and_then(|v| v.as_str()) {
                Some(id) if !id.is_empty() => SesAnswer::Accepted {
                    message_id: id.to_string(),
                },
                // Whether SES took it is unknown: trying again may send it twice, which
                // the SPEC allows (at-least-once when the route's answer is lost).
                _ => SesAnswer::Failed(RcptOutcome::Deferred(
                    "SES answered 200 without a MessageId".into(),
                )),
            },
            Err(Ok(e)) if e.is_transient() => {
                SesAnswer::Failed(RcptOutcome::Deferred(e.to_string()))
            }
            Err(Ok(e)) => {
                SesAnswer::Failed(RcptOutcome::Refused(format!("{}: {}", e.kind, e.message)))
            }
            Err(Err(transport)) => SesAnswer::Failed(RcptOutcome::Deferred(transport)),
        }
    }

    /// `GetAccount`: proves the endpoint, the credentials and the clock without sending.
    pub async fn test(&self) -> Result<String, String> {
        let req = self.request("GET", "/v2/email/account", Vec::new())?;
        match self.call(req).await {
            Ok(json) => Ok(format!(
                "{} ({}): sending enabled {}, production access {}, quota {}/24h at {}/s",
                self.base,
                self.region,
                json["SendingEnabled"],
                json["ProductionAccessEnabled"],
                json["SendQuota"]["Max24HourSend"],
                json["SendQuota"]["MaxSendRate"],
            )),
            Err(Ok(e)) => Err(format!("{}: {e}", self.base)),
            Err(Err(e)) => Err(e),
        }
    }

    /// Performs the call: the JSON of a 2xx, else SES's error, else a transport error.
    async fn call(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, Result<SesError, String>> {
        let resp = req
            .send()
            .await
            .map_err(|e| Err(format!("{}: {e}", self.base)))?;
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .bytes()
            .await
            .map_err(|e| Err(format!("{}: reading the answer: {e}", self.base)))?;
        if (200..300).contains(&status) {
            return Ok(serde_json::from_slice(&body).unwrap_or_default());
        }
        let body = &body[..body.len().min(MAX_ERROR_BODY)];
        Err(Ok(SesError::parse(status, error_type.as_deref(), body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_spaces_calls_by_their_recipients() {
        let p = Pacer::new(10.0);
        let t0 = std::time::Instant::now();
        assert_eq!(p.book(5, t0), Duration::ZERO, "the first call goes at once");
        assert_eq!(p.book(5, t0), Duration::from_millis(500));
        assert_eq!(p.book(1, t0), Duration::from_secs(1));
        // Idle time is not saved up as a burst.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.book(50, later), Duration::ZERO);
        assert_eq!(p.book(1, later), Duration::from_secs(5));
    }

    #[test]
    fn errors_are_read_from_header_or_body() {
        let e = SesError::parse(
            400,
            Some("MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/"),
            br#"{"message":"Email address is not verified."}"#,
        );
        assert_eq!(e.kind, "MessageRejected");
        assert_eq!(e.message, "Email address is not verified.");
        assert!(!e.is_transient());
        let e = SesError::parse(
            429,
            None,
            br#"{"__type":"com.amazonaws.sesv2#TooManyRequestsException","Message":"slow down"}"#,
        );
        assert_eq!(e.kind, "TooManyRequestsException");
        assert_eq!(e.message, "slow down");
        assert!(e.is_transient());
        let e = SesError::parse(503, None, b"<html>unavailable</html>");
        assert!(e.is_transient());
        assert_eq!(e.message, "<html>unavailable</html>");
        let e = SesError::parse(
            403,
            None,
            br#"{"__type":"SignatureDoesNotMatch","message":"bad sig"}"#,
        );
        assert!(e.is_transient(), "credentials are fixed by the operator");
        let e = SesError::parse(400, None, br#"{"__type":"BadRequestException"}"#);
        assert!(!e.is_transient());
    }
}
