//! Typed configuration (SPEC section 2): TOML with unknown keys refused, secrets resolved
//! from inline / `env:NAME` / `file:PATH`, and `validate()` reporting `file:line: problem`.
//! Invariant: nothing else in the crate reads environment variables or config files.

use serde::Deserialize;
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// A configuration problem, already phrased for a person: `file:line: what is wrong`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A secret value, resolved at load time from inline text, `env:NAME` or `file:PATH`.
/// Its `Debug` never prints the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        resolve_secret(&raw)
            .map(Secret)
            .map_err(serde::de::Error::custom)
    }
}

fn resolve_secret(raw: &str) -> Result<String, String> {
    if let Some(name) = raw.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| format!("secret refers to environment variable {name}, which is not set"))
    } else if let Some(path) = raw.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|e| format!("secret refers to file {path}, which cannot be read: {e}"))
    } else {
        Ok(raw.to_string())
    }
}

/// The configuration in force, shared by the daemon's parts and replaced as a whole on
/// reload (SIGHUP): a reader takes the current `Arc<Config>` and keeps it for one unit of
/// work, so one request or attempt never sees two configurations.
#[derive(Debug, Clone)]
pub struct SharedConfig(Arc<RwLock<Arc<Config>>>);

impl SharedConfig {
    pub fn new(config: Config) -> SharedConfig {
        SharedConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// The configuration in force.
    pub fn get(&self) -> Arc<Config> {
        self.0
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Puts `config` in force for every later [`SharedConfig::get`].
    pub fn replace(&self, config: Config) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub webhooks: WebhookConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    #[serde(default, rename = "asset")]
    pub assets: Vec<AssetConfig>,
    #[serde(default, rename = "contact_policy")]
    pub contact_policies: Vec<ContactPolicyConfig>,
    #[serde(default)]
    pub ses: SesConfig,
    #[serde(default)]
    pub feedback: FeedbackConfig,
    /// Several nodes on one PostgreSQL database (SPEC 13); absent: this node alone, on sled.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` (SPEC 13): the database every node shares and this node's name in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres://user:pass@host:5432/db?sslmode=require`; `env:NAME` / `file:PATH` too.
    pub database_url: Secret,
    /// Unique per node; default: `server.hostname`.
    #[serde(default)]
    pub node_id: String,
}

/// Who may report complaints about mail that went to several recipients (SPEC 6.3).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedbackConfig {
    /// Feedback-loop senders (domains, e.g. "fbl.example-isp.net") whose ARF reports about
    /// multi-recipient messages are acted on when they pass aligned DMARC. Empty: such
    /// reports are logged and ignored, since any one recipient could name another.
    pub trusted_reporters: Vec<String>,
}

/// SES events delivered by SNS to `POST /ses/events` (SPEC 7.3).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SesConfig {
    /// SNS topics whose messages are accepted. Required (non-empty) when any asset has an
    /// SES route: without it anyone could subscribe this endpoint to a topic of theirs.
    pub topic_arns: Vec<String>,
    /// URL prefixes trusted for `SigningCertURL` and `SubscribeURL` besides
    /// `https://sns.<region>.amazonaws.com/` (for tests, which sign their own messages).
    pub trust_url_prefixes: Vec<String>,
}

/// A contact-policy group (SPEC 4.2 `contactPolicy`): a consent list managed through the
/// admin API and a per-recipient frequency cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPolicyConfig {
    pub group: String,
    /// Messages per recipient per window; 0 = no cap.
    #[serde(default)]
    pub frequency_cap: u32,
    /// Seconds.
    #[serde(default = "default_cap_window")]
    pub window: u64,
}

fn default_cap_window() -> u64 {
    86_400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Banner, EHLO name, right side of generated Message-IDs.
    pub hostname: String,
    /// Where the sled database, spooled bodies and keys live.
    pub data_dir: PathBuf,
    /// Base of tracking, unsubscribe and inbound-attachment links.
    pub public_url: String,
    /// Forwarding addresses are `<asset-id>@<inbound_domain>`.
    pub inbound_domain: String,
    /// VERP return paths live here.
    pub bounce_domain: String,
    /// Bytes `data_dir`'s filesystem keeps free; below it new work is refused (SPEC 6.3).
    #[serde(default = "default_min_free_space")]
    pub min_free_space: u64,
}

fn default_min_free_space() -> u64 {
    1 << 30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    pub listen: Vec<SocketAddr>,
    /// Bytes; advertised in EHLO SIZE.
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Seconds allowed per command.
    pub command_timeout: u64,
    /// Seconds allowed for the whole DATA/BDAT phase.
    pub data_timeout: u64,
    /// PEM certificate chain; enables STARTTLS together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Seconds SIGTERM waits for in-flight sessions before exiting.
    pub shutdown_grace: u64,
    /// Junk commands (NOOP, RSET, VRFY, EXPN, HELP, repeated EHLO/HELO) and error replies
    /// one session may cause before it gets `421 4.7.0` and is closed.
    pub junk_command_limit: u32,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: vec!["127.0.0.1:2525".parse().expect("static address")],
            max_message_size: 41_943_040,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout: 300,
            data_timeout: 600,
            tls_cert: None,
            tls_key: None,
            shutdown_grace: 30,
            junk_command_limit: 100,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub max_body_size: usize,
    /// Seconds a request's headers may take to arrive before the connection is closed.
    pub header_timeout: u64,
    /// Open HTTP connections at most; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            max_body_size: 10_485_760,
            header_timeout: 30,
            max_connections: 4096,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// CIDRs that URLs from API requests may reach despite being private/loopback.
    pub allow_private_targets: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/admin/`; empty disables the admin API.
    pub token: Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    pub resolver: ResolverSetting,
}

/// `"system"`, `"off"`, or a list of `ip:port` name servers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ResolverSetting {
    #[default]
    System,
    Off,
    Servers(Vec<SocketAddr>),
}

impl<'de> Deserialize<'de> for ResolverSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "system" => Ok(ResolverSetting::System),
            Raw::Word(w) if w == "off" => Ok(ResolverSetting::Off),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "resolver must be \"system\", \"off\" or a list of \"ip:port\", not \"{w}\""
            ))),
            Raw::List(list) => list
                .iter()
                .map(|s| {
                    s.parse::<SocketAddr>().map_err(|_| {
                        serde::de::Error::custom(format!("resolver address \"{s}\" is not ip:port"))
                    })
                })
                .collect::<Result<_, _>>()
                .map(ResolverSetting::Servers),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Seconds an event is retried before it moves to the dead-letter store.
    pub retry_for: u64,
    /// Seconds one POST may take.
    pub timeout: u64,
    /// POSTs in flight at once.
    pub concurrency: usize,
    /// Days a dead letter (and the message body it holds) is kept before it is deleted.
    pub dead_letter_days: u32,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            retry_for: 86_400,
            timeout: 10,
            concurrency: 32,
            dead_letter_days: 7,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Seconds a JWT `iat` may lie in the future.
    pub jwt_max_future: i64,
    /// Seconds a JWT stays valid after its `iat`.
    pub jwt_max_age: i64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            jwt_max_future: 300,
            jwt_max_age: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Transactions being built or handed to a route at once.
    pub concurrency: usize,
    /// Seconds before the first retry of a deferred transaction; doubles up to an hour.
    pub retry_base: u64,
    /// Seconds allowed to fetch one attachment.
    pub fetch_timeout: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 16,
            retry_base: 30,
            fetch_timeout: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `postern=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub id: String,
    pub key: Secret,
    pub secret: Secret,
    #[serde(default = "default_tps")]
    pub tps: u32,
    #[serde(default)]
    pub assets: Vec<String>,
    pub notify_url: Option<String>,
}

fn default_tps() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoAttachments {
    /// Attachments base64-encoded inside the MO JSON.
    #[default]
    Inline,
    /// Signed links to the stored message instead of content.
    Url,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub inbound: bool,
    #[serde(default = "default_max_inbound")]
    pub max_inbound_size: usize,
    #[serde(default)]
    pub sandbox: bool,
    #[serde(default)]
    pub verified_recipients: Vec<String>,
    pub incoming_webhook: Option<String>,
    pub delivery_webhook: Option<String>,
    pub webhook_secret: Option<Secret>,
    #[serde(default)]
    pub mo_attachments: MoAttachments,
    #[serde(default = "default_inbound_retention")]
    pub inbound_retention_days: u32,
    /// Sends from a domain that `postern domain verify` has not found verified get 7004.
    #[serde(default)]
    pub require_verified_domain: bool,
    /// `[asset.route]` as written; [`Config::parse`] checks it, then types it into `route`.
    #[serde(rename = "route")]
    route_written: Option<RouteToml>,
    /// How the asset's outbound mail leaves (typed from `[asset.route]` once valid).
    #[serde(skip)]
    pub route: Option<RouteConfig>,
    pub dkim: Option<DkimConfig>,
    pub unsubscribe: Option<UnsubscribeConfig>,
    pub bounces: Option<BouncesConfig>,
}

/// The DKIM key of a domain whose asset configures none.
pub const DEFAULT_DKIM_KEY: (&str, DkimAlgorithm) = ("postern1", DkimAlgorithm::RsaSha256);

impl AssetConfig {
    /// The (selector, algorithm) configured for the asset's domains: `[asset.dkim]`, else
    /// [`DEFAULT_DKIM_KEY`]. A rotation (`data_dir/dkim/<domain>.json`) overrides it.
    pub fn dkim_key(&self) -> (&str, DkimAlgorithm) {
        self.dkim
            .as_ref()
            .map(|d| (d.selector.as_str(), d.algorithm))
            .unwrap_or(DEFAULT_DKIM_KEY)
    }
}

impl AssetConfig {
    /// Its id (well formed, not used before) and domains (well formed; one already
    /// claimed by another asset goes to `twice`).
    fn identity_problems(
        &self,
        ids: &mut HashSet<String>,
        domains: &mut HashSet<String>,
        twice: &mut Vec<String>,
        p: &mut Problems,
    ) {
        let needle = format!("\"{}\"", self.id);
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            p.push(
                &needle,
                format!(
                    "asset id \"{}\" must be letters, digits, '_' or '-'",
                    self.id
                ),
            );
        }
        if !ids.insert(self.id.clone()) {
            p.push(&needle, format!("asset id \"{}\" is used twice", self.id));
        }
        for d in &self.domains {
            if !is_domain(d) {
                p.push(
                    d,
                    format!("asset {}: \"{d}\" is not a domain name", self.id),
                );
            } else if !domains.insert(d.clone()) {
                twice.push(d.clone());
            }
        }
    }

    /// Its webhooks, inbound size (at most `max_message_size`), unsubscribe mailto and
    /// route.
    fn setting_problems(&self, max_message_size: usize, p: &mut Problems) {
        for (key, url) in [
            ("incoming_webhook", &self.incoming_webhook),
            ("delivery_webhook", &self.delivery_webhook),
        ] {
            if let Some(url) = url {
                if reqwest::Url::parse(url)
                    .map(|u| !matches!(u.scheme(), "http" | "https"))
                    .unwrap_or(true)
                {
                    p.push(
                        url,
                        format!("asset {}: {key} \"{url}\" is not an http(s) URL", self.id),
                    );
                }
            }
        }
        if self.max_inbound_size == 0 || self.max_inbound_size > max_message_size {
            p.push(
                "max_inbound_size",
                format!(
                    "asset {}: max_inbound_size must be between 1 and smtp.max_message_size ({})",
                    self.id, max_message_size
                ),
            );
        }
        if let Some(m) = self.unsubscribe.as_ref().and_then(|u| u.mailto.as_deref()) {
            let domain = m
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            if !self.domains.contains(&domain) {
                p.push(m, format!("asset {}: unsubscribe.mailto \"{m}\" must be an address at one of the asset's domains", self.id));
            }
        }
        if let Some(Err(problems)) = self.route_written.as_ref().map(RouteToml::typed) {
            for msg in problems {
                p.push("kind", format!("asset {}: route: {msg}", self.id));
            }
        }
        if self.inbound && self.incoming_webhook.is_none() {
            p.push(
                &format!("\"{}\"", self.id),
                format!(
                    "asset {}: inbound = true needs an incoming_webhook",
                    self.id
                ),
            );
        }
    }
}

fn default_max_inbound() -> usize {
    41_943_040
}
fn default_inbound_retention() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Smtp,
    Ses,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    #[default]
    None,
    Ssl,
    Starttls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    #[default]
    None,
    Password,
    Oauth2,
}

/// `auth = "oauth2"`: whose endpoints and SMTP scope the route uses (SPEC 15). Absent
/// means `custom`: every endpoint comes from the route's own keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuthProvider {
    Google,
    Microsoft,
    #[default]
    Custom,
}

/// Where an OAuth2 route gets consent and tokens: the provider's defaults, each replaced
/// by the route's own key when it has one (a Microsoft tenant's URLs, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthEndpoints {
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
    /// Space-separated scopes.
    pub scope: Option<String>,
}

impl OAuthProvider {
    /// The provider's endpoints and SMTP scope (`custom`: none). Google's device flow
    /// does not grant the mail scope, so it has no device URL.
    pub fn defaults(self) -> OAuthEndpoints {
        let some = |s: &str| Some(s.to_string());
        match self {
            OAuthProvider::Google => OAuthEndpoints {
                auth_url: some("https://accounts.google.com/o/oauth2/v2/auth"),
                token_url: some("https://oauth2.googleapis.com/token"),
                device_url: None,
                scope: some("https://mail.google.com/"),
            },
            OAuthProvider::Microsoft => OAuthEndpoints {
                auth_url: some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize"),
                token_url: some("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
                device_url: some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"),
                scope: some("https://outlook.office.com/SMTP.Send offline_access"),
            },
            OAuthProvider::Custom => OAuthEndpoints {
                auth_url: None,
                token_url: None,
                device_url: None,
                scope: None,
            },
        }
    }
}

/// How an asset's outbound mail leaves (`[asset.route]`, chosen by `kind`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RouteToml")]
pub enum RouteConfig {
    /// `kind = "smtp"`: a smarthost.
    Smtp(SmtpRouteConfig),
    /// `kind = "ses"`: Amazon SES v2 `SendEmail`.
    Ses(SesRouteConfig),
}

/// A smarthost route.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpRouteConfig {
    pub host: String,
    /// Default: 465 for `ssl`, 587 for `starttls`, 25 without TLS.
    pub port: Option<u16>,
    pub security: Security,
    pub auth: RouteAuth,
    /// `auth = "password"` and `"oauth2"`: the account (empty when not set).
    pub username: Option<String>,
    /// `auth = "password"`.
    pub password: Option<Secret>,
    /// `auth = "oauth2"`: the provider, the client, its endpoints (each one given here
    /// replaces the provider's) and the refresh token to start from when the store holds
    /// none yet.
    pub provider: OAuthProvider,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret>,
    pub auth_url: Option<String>,
    pub token_url: Option<String>,
    pub device_url: Option<String>,
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
}

impl SmtpRouteConfig {
    /// The OAuth2 endpoints and scope in effect: the route's keys over the provider's.
    pub fn oauth_endpoints(&self) -> OAuthEndpoints {
        let d = self.provider.defaults();
        OAuthEndpoints {
            auth_url: self.auth_url.clone().or(d.auth_url),
            token_url: self.token_url.clone().or(d.token_url),
            device_url: self.device_url.clone().or(d.device_url),
            scope: self.scope.clone().or(d.scope),
        }
    }
}

/// An Amazon SES route.
#[derive(Debug, Clone, PartialEq)]
pub struct SesRouteConfig {
    pub region: String,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    /// The session token of temporary (STS) credentials.
    pub session_token: Option<Secret>,
    /// Another API base than `https://email.<region>.amazonaws.com` (tests).
    pub endpoint: Option<String>,
    /// SES configuration set (`ConfigurationSetName`): where SES publishes events.
    pub configuration_set: Option<String>,
    /// Recipients per second to stay under (the account's maximum send rate), so a burst
    /// is paced instead of throttled. None: no pacing (throttling is retried).
    pub max_send_rate: Option<f64>,
}

/// `[asset.route]` as written: the keys of every kind, so that what a route lacks is
/// reported with its line among the other problems (not as the first serde error), and
/// a key of the other kind is accepted and ignored. [`RouteToml::typed`] makes it a
/// [`RouteConfig`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteToml {
    kind: RouteKind,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    security: Security,
    #[serde(default)]
    auth: RouteAuth,
    username: Option<String>,
    password: Option<Secret>,
    #[serde(default)]
    provider: OAuthProvider,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    auth_url: Option<String>,
    token_url: Option<String>,
    device_url: Option<String>,
    refresh_token: Option<Secret>,
    scope: Option<String>,
    region: Option<String>,
    access_key_id: Option<Secret>,
    secret_access_key: Option<Secret>,
    session_token: Option<Secret>,
    endpoint: Option<String>,
    configuration_set: Option<String>,
    max_send_rate: Option<f64>,
}

impl TryFrom<RouteToml> for RouteConfig {
    type Error = String;

    fn try_from(written: RouteToml) -> Result<RouteConfig, String> {
        written.typed().map_err(|problems| problems.join("; "))
    }
}

/// What an `auth = "oauth2"` route lacks or has wrong.
fn oauth_problems(route: &SmtpRouteConfig) -> Vec<String> {
    let mut out = Vec::new();
    if route.auth != RouteAuth::Oauth2 {
        return out;
    }
    if route.client_id.as_deref().unwrap_or("").is_empty() {
        out.push("auth = \"oauth2\" needs client_id".to_string());
    }
    let e = route.oauth_endpoints();
    if e.token_url.is_none() {
        out.push(
            "auth = \"oauth2\" needs token_url (or provider = \"google\" or \"microsoft\")"
                .to_string(),
        );
    }
    for (key, url) in [
        ("auth_url", &e.auth_url),
        ("token_url", &e.token_url),
        ("device_url", &e.device_url),
    ] {
        if let Some(u) = url {
            if reqwest::Url::parse(u)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                out.push(format!("{key} \"{u}\" is not an http(s) URL"));
            }
        }
    }
    out
}

impl RouteToml {
    /// The route of its kind, or everything it lacks or has wrong.
    fn typed(&self) -> Result<RouteConfig, Vec<String>> {
        match self.kind {
            RouteKind::Smtp => self.smtp().map(RouteConfig::Smtp),
            RouteKind::Ses => self.ses().map(RouteConfig::Ses),
        }
    }

    fn smtp(&self) -> Result<SmtpRouteConfig, Vec<String>> {
        let Some(host) = self.host.clone().filter(|h| !h.is_empty()) else {
            return Err(vec!["kind = \"smtp\" needs host".to_string()]);
        };
        let route = SmtpRouteConfig {
            host,
            port: self.port,
            security: self.security,
            auth: self.auth,
            username: self.username.clone(),
            password: self.password.clone(),
            provider: self.provider,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            auth_url: self.auth_url.clone(),
            token_url: self.token_url.clone(),
            device_url: self.device_url.clone(),
            refresh_token: self.refresh_token.clone(),
            scope: self.scope.clone(),
        };
        match oauth_problems(&route) {
            problems if problems.is_empty() => Ok(route),
            problems => Err(problems),
        }
    }

    fn ses(&self) -> Result<SesRouteConfig, Vec<String>> {
        let region = self.region.clone().filter(|r| !r.is_empty());
        let mut out = Vec::new();
        for (key, missing) in [
            ("region", region.is_none()),
            ("access_key_id", self.access_key_id.is_none()),
            ("secret_access_key", self.secret_access_key.is_none()),
        ] {
            if missing {
                out.push(format!("kind = \"ses\" needs {key}"));
            }
        }
        if self
            .max_send_rate
            .is_some_and(|r| !r.is_finite() || r <= 0.0)
        {
            out.push("max_send_rate must be a positive number".to_string());
        }
        if let Some(e) = &self.endpoint {
            if reqwest::Url::parse(e)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                out.push(format!("endpoint \"{e}\" is not an http(s) URL"));
            }
        }
        match (region, &self.access_key_id, &self.secret_access_key) {
            (Some(region), Some(access_key_id), Some(secret_access_key)) if out.is_empty() => {
                Ok(SesRouteConfig {
                    region,
                    access_key_id: access_key_id.clone(),
                    secret_access_key: secret_access_key.clone(),
                    session_token: self.session_token.clone(),
                    endpoint: self.endpoint.clone(),
                    configuration_set: self.configuration_set.clone(),
                    max_send_rate: self.max_send_rate,
                })
            }
            _ => Err(out),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    #[serde(default = "default_selector")]
    pub selector: String,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

fn default_selector() -> String {
    "postern1".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "yes")]
    pub headers: bool,
    #[serde(default)]
    pub skip_sender_ids: Vec<String>,
    pub mailto: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BouncesConfig {
    #[serde(default = "default_bounce_retention")]
    pub retention_days: u32,
}

fn default_bounce_retention() -> u32 {
    7
}

impl Config {
    /// This node's id among a cluster's nodes (`cluster.node_id`), or its host name when
    /// it runs alone.
    pub fn node_id(&self) -> String {
        match &self.cluster {
            Some(c) => c.node_id.clone(),
            None => self.server.hostname.clone(),
        }
    }

    /// Reads, parses and validates the file; every problem names `file:line`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of_offset(text, s.start)).unwrap_or(0);
            ConfigError::Invalid(format!("{origin}:{line}: {}", e.message()))
        })?;
        config.normalise();
        let problems = config.problems();
        if problems.is_empty() {
            config.type_routes();
            Ok(config)
        } else {
            let lines: Vec<String> = problems
                .into_iter()
                .map(|(at, msg)| format!("{origin}:{}: {msg}", at.line(text)))
                .collect();
            Err(ConfigError::Invalid(lines.join("\n")))
        }
    }

    fn normalise(&mut self) {
        self.server.inbound_domain = self.server.inbound_domain.to_ascii_lowercase();
        self.server.bounce_domain = self.server.bounce_domain.to_ascii_lowercase();
        for asset in &mut self.assets {
            for d in &mut asset.domains {
                *d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            }
        }
        if let Some(c) = &mut self.cluster {
            if c.node_id.trim().is_empty() {
                c.node_id = self.server.hostname.clone();
            }
        }
    }

    /// Types each asset's route, which `problems` found valid.
    fn type_routes(&mut self) {
        for asset in &mut self.assets {
            asset.route = asset.route_written.as_ref().and_then(|r| r.typed().ok());
        }
    }

    /// Every semantic problem as (where it stands in the file, message).
    fn problems(&self) -> Vec<(Locate, String)> {
        let mut p = Problems::default();
        self.server_problems(&mut p);
        self.limit_problems(&mut p);
        let ids = self.asset_problems(&mut p);
        self.ses_problems(&mut p);
        self.service_problems(&ids, &mut p);
        self.cluster_problems(&mut p);
        p.into_located()
    }

    /// `[cluster]`: a PostgreSQL URL and a node id fit for logs and the database.
    fn cluster_problems(&self, p: &mut Problems) {
        let Some(c) = &self.cluster else { return };
        let url = c.database_url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            p.push(
                "database_url",
                "cluster.database_url must be a postgres:// or postgresql:// URL".into(),
            );
        }
        let id_ok = c.node_id.len() <= 64
            && c.node_id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch));
        if !id_ok {
            p.push(
                "node_id",
                format!(
                    "cluster.node_id \"{}\" must be 1-64 letters, digits, '-', '_' or '.'",
                    c.node_id
                ),
            );
        }
    }

    /// `[server]`: host name, public URL, inbound and bounce domains.
    fn server_problems(&self, p: &mut Problems) {
        if self.server.hostname.is_empty() || self.server.hostname.contains(char::is_whitespace) {
            p.push(
                "hostname",
                "server.hostname must be a host name without spaces".into(),
            );
        }
        for (key, url) in [("public_url", &self.server.public_url)] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(
                    key,
                    format!("server.{key} must be an http:// or https:// URL, not \"{url}\""),
                );
            }
        }
        for (key, dom) in [
            ("inbound_domain", &self.server.inbound_domain),
            ("bounce_domain", &self.server.bounce_domain),
        ] {
            if !is_domain(dom) {
                p.push(key, format!("server.{key} \"{dom}\" is not a domain name"));
            }
        }
    }

    /// Listeners, caps, timeouts and workers: `[smtp]`, `[http]`, `[webhooks]`,
    /// `[feedback]`, `[queue]`, `[outbound]`.
    fn limit_problems(&self, p: &mut Problems) {
        let (smtp, http, webhooks) = (&self.smtp, &self.http, &self.webhooks);
        p.check([
            (
                smtp.listen.is_empty(),
                "[smtp]",
                "smtp.listen must name at least one address",
            ),
            (
                smtp.max_message_size < 1024,
                "max_message_size",
                "smtp.max_message_size must be at least 1024 bytes",
            ),
            (
                smtp.max_recipients == 0,
                "max_recipients",
                "smtp.max_recipients must be at least 1",
            ),
            (
                smtp.max_connections == 0 || smtp.max_connections_per_ip == 0,
                "max_connections",
                "smtp connection caps must be at least 1",
            ),
            (
                smtp.junk_command_limit == 0,
                "junk_command_limit",
                "smtp.junk_command_limit must be at least 1",
            ),
            (
                http.header_timeout == 0 || http.max_connections == 0,
                "[http]",
                "http.header_timeout and http.max_connections must be at least 1",
            ),
            (
                webhooks.dead_letter_days == 0,
                "dead_letter_days",
                "webhooks.dead_letter_days must be at least 1",
            ),
        ]);
        for r in &self.feedback.trusted_reporters {
            if !is_domain(r) {
                p.push(
                    r,
                    format!("feedback.trusted_reporters: \"{r}\" is not a domain name"),
                );
            }
        }
        p.check([
            (
                smtp.command_timeout == 0 || smtp.data_timeout == 0,
                "timeout",
                "smtp timeouts must be at least 1 second",
            ),
            (
                smtp.tls_cert.is_some() != smtp.tls_key.is_some(),
                "tls_",
                "smtp.tls_cert and smtp.tls_key go together: set both or neither",
            ),
            (
                self.queue.concurrency == 0 || self.queue.retry_base == 0,
                "[queue]",
                "queue.concurrency and queue.retry_base must be at least 1",
            ),
        ]);
        if let Err(e) = crate::model::urls::Policy::new(&self.outbound.allow_private_targets) {
            p.push("allow_private_targets", e);
        }
        p.check([(
            webhooks.concurrency == 0,
            "concurrency",
            "webhooks.concurrency must be at least 1",
        )]);
    }

    /// Every `[[asset]]`, then domains claimed twice; returns the asset ids.
    fn asset_problems(&self, p: &mut Problems) -> HashSet<String> {
        let mut ids = HashSet::new();
        let mut domains = HashSet::new();
        let mut twice = Vec::new();
        for asset in &self.assets {
            asset.identity_problems(&mut ids, &mut domains, &mut twice, p);
            asset.setting_problems(self.smtp.max_message_size, p);
        }
        for d in twice {
            p.push(
                &format!("\u{0}{d}"),
                format!("domain \"{d}\" belongs to two assets; a domain has one asset"),
            );
        }
        ids
    }

    /// `[ses]`: trusted URL prefixes, and the topics required once an asset routes by SES.
    fn ses_problems(&self, p: &mut Problems) {
        for prefix in &self.ses.trust_url_prefixes {
            if reqwest::Url::parse(prefix)
                .map(|u| !matches!(u.scheme(), "http" | "https") || !prefix.ends_with('/'))
                .unwrap_or(true)
            {
                p.push(
                    prefix,
                    format!(
                        "ses.trust_url_prefixes: \"{prefix}\" must be an http(s) URL ending in '/'"
                    ),
                );
            }
        }
        let has_ses = self.assets.iter().any(|a| {
            a.route_written
                .as_ref()
                .is_some_and(|r| r.kind == RouteKind::Ses)
        });
        if has_ses && self.ses.topic_arns.is_empty() {
            p.push(
                "kind",
                "ses.topic_arns must list the SNS topics of your SES events when an asset has kind = \"ses\" (otherwise anyone could subscribe /ses/events to a topic of theirs)".into(),
            );
        }
    }

    /// Every `[[service]]`: id, key (unique), assets among `asset_ids`, tps.
    fn service_problems(&self, asset_ids: &HashSet<String>, p: &mut Problems) {
        let mut service_ids = HashSet::new();
        let mut service_keys = HashSet::new();
        for service in &self.services {
            let needle = format!("\"{}\"", service.id);
            if service.id.is_empty()
                || !service
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            {
                p.push(
                    &needle,
                    format!(
                        "service id \"{}\" must be letters, digits, '_', '-' or '.'",
                        service.id
                    ),
                );
            }
            if !service_ids.insert(service.id.clone()) {
                p.push(
                    &service.id,
                    format!("service id \"{}\" is used twice", service.id),
                );
            }
            let key = service.key.expose();
            if key.trim().is_empty() {
                p.push(
                    &needle,
                    format!("service {}: key must not be empty", service.id),
                );
            } else if !service_keys.insert(key.to_string()) {
                p.push(
                    &needle,
                    format!(
                        "service {}: key is the same as another service's; each service needs its own key",
                        service.id
                    ),
                );
            }
            for a in &service.assets {
                if !asset_ids.contains(a) {
                    p.push(
                        a,
                        format!("service {}: asset \"{a}\" is not defined", service.id),
                    );
                }
            }
            if service.tps == 0 {
                p.push(
                    "tps",
                    format!("service {}: tps must be at least 1", service.id),
                );
            }
        }
    }

    pub fn contact_policy(&self, group: &str) -> Option<&ContactPolicyConfig> {
        self.contact_policies.iter().find(|p| p.group == group)
    }

    pub fn asset(&self, id: &str) -> Option<&AssetConfig> {
        self.assets.iter().find(|a| a.id == id)
    }

    /// How long a hard bounce keeps an address of asset `id` on its bounce list
    /// (`bounces.retention_days`, default 7), in milliseconds.
    pub fn bounce_retention_ms(&self, id: &str) -> u64 {
        let days = self
            .asset(id)
            .and_then(|a| a.bounces.as_ref())
            .map(|b| b.retention_days)
            .unwrap_or(7);
        u64::from(days) * 86_400_000
    }

    /// The asset that owns `domain` (already lower-case).
    pub fn asset_for_domain(&self, domain: &str) -> Option<&AssetConfig> {
        self.assets
            .iter()
            .find(|a| a.domains.iter().any(|d| d == domain))
    }
}

fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Problems found so far, each with the text that locates it in the file.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    /// A problem found on the first line mentioning `needle`; a leading NUL means the
    /// last line mentioning it in quotes (the second mention: the duplicate, not the
    /// original).
    fn push(&mut self, needle: &str, msg: String) {
        self.0.push((needle.to_string(), msg));
    }

    /// Each `(is wrong, needle, message)` that is wrong, in order.
    fn check<const N: usize>(&mut self, rules: [(bool, &str, &str); N]) {
        for (wrong, needle, msg) in rules {
            if wrong {
                self.push(needle, msg.to_string());
            }
        }
    }

    fn into_located(self) -> Vec<(Locate, String)> {
        self.0
            .into_iter()
            .map(|(needle, msg)| match needle.strip_prefix('\u{0}') {
                Some(n) => (Locate::Last(format!("\"{n}\"")), msg),
                None => (Locate::First(needle), msg),
            })
            .collect()
    }
}

/// Where a problem stands: the first or the last line mentioning some text
/// (case-insensitively, comments skipped); line 0 when it is not written (a default).
enum Locate {
    First(String),
    Last(String),
}

impl Locate {
    fn line(&self, text: &str) -> usize {
        let (needle, last) = match self {
            Locate::First(n) => (n.to_ascii_lowercase(), false),
            Locate::Last(n) => (n.to_ascii_lowercase(), true),
        };
        let mut hits = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                !l.trim_start().starts_with('#') && l.to_ascii_lowercase().contains(&needle)
            })
            .map(|(i, _)| i + 1);
        if last { hits.last() } else { hits.next() }.unwrap_or(0)
    }
}

/// The `[server]` section unit tests start their configurations with.
#[cfg(test)]
pub(crate) const TEST_SERVER: &str = r#"
[server]
hostname = "mx.example.test"
data_dir = "./data"
public_url = "http://127.0.0.1:8080"
inbound_domain = "inbound.example.test"
bounce_domain = "bounces.example.test"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = TEST_SERVER;

    #[test]
    fn repository_example_config_is_valid() {
        let text = include_str!("../etc/postern.toml");
        std::env::set_var("POSTERN_ADMIN_TOKEN", "x");
        let config =
            Config::parse(text, "etc/postern.toml").expect("etc/postern.toml must validate");
        assert!(config.smtp.listen.iter().all(|a| a.ip().is_loopback()));
        assert!(config.http.listen.ip().is_loopback());
    }

    /// SPEC 15: a provider fills the endpoints and scope, a key given replaces the
    /// provider's, and an oauth2 route without a client or a token endpoint is refused
    /// naming what it lacks.
    #[test]
    fn oauth2_routes_take_the_providers_endpoints_and_name_what_they_lack() {
        let route = |extra: &str| {
            format!(
                "{MINIMAL}\n[admin]\ntoken = \"t\"\n[[asset]]\nid = \"a_1\"\ndomains = [\"example.test\"]\n\
                 [asset.route]\nkind = \"smtp\"\nhost = \"h.example.test\"\nauth = \"oauth2\"\n{extra}"
            )
        };
        let parse = |extra: &str| Config::parse(&route(extra), "t.toml");
        let smtp = |c: Config| match c.assets[0].route.clone() {
            Some(RouteConfig::Smtp(s)) => s,
            other => panic!("{other:?}"),
        };
        let ms = smtp(parse("provider = \"microsoft\"\nclient_id = \"c\"\n").unwrap());
        let e = ms.oauth_endpoints();
        assert_eq!(
            e.scope.as_deref(),
            Some("https://outlook.office.com/SMTP.Send offline_access")
        );
        assert!(e
            .device_url
            .unwrap()
            .ends_with("/common/oauth2/v2.0/devicecode"));
        let tenant = "token_url = \"https://login.microsoftonline.com/t1/oauth2/v2.0/token\"\n";
        let ms = smtp(
            parse(&format!(
                "provider = \"microsoft\"\nclient_id = \"c\"\n{tenant}"
            ))
            .unwrap(),
        );
        assert!(ms.oauth_endpoints().token_url.unwrap().contains("/t1/"));
        let g = smtp(parse("provider = \"google\"\nclient_id = \"c\"\n").unwrap());
        assert_eq!(g.oauth_endpoints().device_url, None);
        let err = parse("provider = \"google\"\n").unwrap_err().to_string();
        assert!(err.contains("needs client_id"), "{err}");
        let err = parse("client_id = \"c\"\n").unwrap_err().to_string();
        assert!(err.contains("needs token_url"), "{err}");
        let err = parse("client_id = \"c\"\ntoken_url = \"ftp://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("token_url \"ftp://x\" is not an http(s) URL"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text =
            format!("{MINIMAL}\n[smtp]\nlisten = [\"127.0.0.1:2525\"]\nmax_mesage_size = 5\n");
        let err = Config::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_mesage_size"), "{err}");
        assert!(err.starts_with("t.toml:11:"), "{err}");
    }

    #[test]
    fn secrets_resolve_from_env_and_file() {
        std::env::set_var("POSTERN_TEST_SECRET_X", "from-env");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!("{MINIMAL}\n[admin]\ntoken = \"env:POSTERN_TEST_SECRET_X\"\n");
        assert_eq!(
            Config::parse(&text, "t").unwrap().admin.token.expose(),
            "from-env"
        );
        let text = format!("{MINIMAL}\n[admin]\ntoken = \"file:{}\"\n", file.display());
        assert_eq!(
            Config::parse(&text, "t").unwrap().admin.token.expose(),
            "from-file"
        );
        let text = format!("{MINIMAL}\n[admin]\ntoken = \"env:POSTERN_SURELY_UNSET_VAR\"\n");
        let err = Config::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("POSTERN_SURELY_UNSET_VAR"), "{err}");
    }

    #[test]
    fn a_domain_in_two_assets_is_refused_with_its_line() {
        let text = format!(
            "{MINIMAL}\n[[asset]]\nid = \"a1\"\ndomains = [\"Example.test\"]\n\n[[asset]]\nid = \"a2\"\ndomains = [\"example.test\"]\n"
        );
        let err = Config::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("belongs to two assets"), "{err}");
        assert!(err.starts_with("t:15:"), "{err}");
    }

    #[test]
    fn routes_name_what_they_lack() {
        let ses = format!(
            "{MINIMAL}\n[[asset]]\nid = \"a1\"\ndomains = [\"example.test\"]\n[asset.route]\nkind = \"ses\"\nregion = \"eu-west-1\"\nendpoint = \"ftp://x\"\n"
        );
        let err = Config::parse(&ses, "t").unwrap_err().to_string();
        assert!(
            err.contains("t:13: asset a1: route: kind = \"ses\" needs access_key_id"),
            "{err}"
        );
        assert!(err.contains("needs secret_access_key"), "{err}");
        assert!(
            err.contains("endpoint \"ftp://x\" is not an http(s) URL"),
            "{err}"
        );
        let smtp = format!("{MINIMAL}\n[[asset]]\nid = \"a1\"\n[asset.route]\nkind = \"smtp\"\n");
        let err = Config::parse(&smtp, "t").unwrap_err().to_string();
        assert!(err.contains("kind = \"smtp\" needs host"), "{err}");
        let trust = format!("{MINIMAL}\n[ses]\ntrust_url_prefixes = [\"http://127.0.0.1:9000\"]\n");
        let err = Config::parse(&trust, "t").unwrap_err().to_string();
        assert!(
            err.contains("must be an http(s) URL ending in '/'"),
            "{err}"
        );
    }

    #[test]
    fn routes_are_typed_by_kind_and_keys_of_the_other_kind_are_ignored() {
        let text = format!(
            "{MINIMAL}\n[[asset]]\nid = \"a1\"\n[asset.route]\nkind = \"ses\"\nregion = \"eu-west-1\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nhost = \"ignored\"\n\n[ses]\ntopic_arns = [\"arn:aws:sns:eu-west-1:1:t\"]\n"
        );
        let config = Config::parse(&text, "t").unwrap();
        match &config.assets[0].route {
            Some(RouteConfig::Ses(ses)) => {
                assert_eq!(ses.region, "eu-west-1");
                assert_eq!(ses.access_key_id.expose(), "k");
            }
            other => panic!("{other:?}"),
        }
        let smtp: RouteConfig =
            toml::from_str("kind = \"smtp\"\nhost = \"relay.example.test\"").unwrap();
        assert!(matches!(smtp, RouteConfig::Smtp(s) if s.host == "relay.example.test"));
        let err = toml::from_str::<RouteConfig>("kind = \"ses\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs region; kind = \"ses\" needs access_key_id"),
            "{err}"
        );
    }

    #[test]
    fn resolver_accepts_words_and_lists() {
        let text = format!("{MINIMAL}\n[dns]\nresolver = [\"127.0.0.1:5353\"]\n");
        let c = Config::parse(&text, "t").unwrap();
        assert_eq!(
            c.dns.resolver,
            ResolverSetting::Servers(vec!["127.0.0.1:5353".parse().unwrap()])
        );
        let text = format!("{MINIMAL}\n[dns]\nresolver = \"sometimes\"\n");
        assert!(Config::parse(&text, "t")
            .unwrap_err()
            .to_string()
            .contains("resolver must be"));
    }
}
