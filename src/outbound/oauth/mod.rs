//! OAuth accounts of smarthost routes (SPEC 15): the access tokens a route's XOAUTH2
//! needs, refreshed from the grant in the store; the authorization flows that make a
//! grant (`flow`); and whether a route needs a new authorization.
//!
//! A refresh happens once per node at a time (a lock per asset: concurrent sends wait for
//! the one refresh) and once in the cluster at a time (a lease in the store): the refresh
//! token is read under the lease, and a rotated one is stored before the lease is given
//! back, so no node ever presents a token the provider has already replaced. A refused
//! grant (`invalid_grant`) is recorded in the store: every node defers the asset's mail
//! without asking the provider again until a new authorization arrives.

pub mod flow;
pub mod provider;

use crate::config::{Config, RouteAuth, RouteConfig, SmtpRouteConfig};
use crate::model::time::now_ms;
use crate::store::accounts::{sha256_hex, Refreshed, RouteToken};
use crate::store::Store;
use oauth2::{RefreshToken, TokenResponse};
use provider::TokenFailure;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a refresh lease holds: longer than a token request can take.
const LEASE_MS: u64 = 60_000;
/// How long a send waits for another node's refresh before it defers.
const LEASE_WAIT: Duration = Duration::from_secs(30);
/// An access token with less than this left is refreshed first.
const MARGIN: Duration = Duration::from_secs(60);
/// How often the store is read for grants other nodes changed.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// At most one log line per asset per this while it needs re-authorization.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How every deferral for want of an authorization begins, so the queue logs those
/// quietly (this module logs the condition itself once a minute).
pub const AWAITING: &str = "the route's OAuth2 account: ";

/// Why no access token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The grant was refused or there is none: mail waits for `postern route authorize`.
    NeedsAuthorization(Need),
    /// A failure that may pass (the provider unreachable, the store busy).
    Failed(String),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::NeedsAuthorization(need) => {
                write!(f, "{AWAITING}{need} (run `postern route authorize`)")
            }
            TokenError::Failed(why) => f.write_str(why),
        }
    }
}

struct Access {
    value: String,
    expires: Instant,
}

/// Why a route cannot authenticate until someone grants consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// No refresh token in the store or the configuration: never authorized.
    Missing,
    /// The provider refused the grant (`invalid_grant`): re-authorization needed.
    Refused(String),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Missing => f.write_str("no account connected yet"),
            Need::Refused(why) => write!(f, "needs re-authorization: {why}"),
        }
    }
}

/// A route flagged as needing authorization.
struct Flag {
    need: Need,
    logged: Option<Instant>,
}

/// The daemon's OAuth accounts: one per process, shared by the routes, the queue, the
/// HTTP handlers and the watcher.
pub struct OAuth {
    store: Store,
    /// Who holds a refresh lease: this node's id.
    holder: String,
    http: reqwest::Client,
    /// Access tokens by asset, each behind the lock that makes a refresh single.
    access: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Access>>>>>,
    /// Assets whose route needs authorization, as this node last saw them.
    flagged: Mutex<HashMap<String, Flag>>,
    /// The grant generation each asset had when last read: a higher one is a new
    /// authorization (on any node), which makes the asset's deferred mail due.
    generations: Mutex<HashMap<String, u64>>,
    /// Assets authorized on this node since the watcher last looked, and its bell.
    authorized_here: Mutex<Vec<String>>,
    bell: tokio::sync::Notify,
}

impl OAuth {
    /// `holder`: this node's id (its leases survive its own restart).
    pub fn new(store: Store, holder: String) -> Arc<OAuth> {
        Arc::new(OAuth {
            store,
            holder,
            // A token endpoint never redirects; one that does is not followed (SSRF).
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("static HTTP client settings are valid"),
            access: Mutex::new(HashMap::new()),
            flagged: Mutex::new(HashMap::new()),
            generations: Mutex::new(HashMap::new()),
            authorized_here: Mutex::new(Vec::new()),
            bell: tokio::sync::Notify::new(),
        })
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    fn slot(&self, asset: &str) -> Arc<tokio::sync::Mutex<Option<Access>>> {
        let mut map = self.access.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(asset.to_string()).or_default().clone()
    }

    /// The asset's XOAUTH2 access token, refreshed when it has less than a minute left.
    pub async fn access_token(
        &self,
        asset: &str,
        route: &SmtpRouteConfig,
    ) -> Result<String, TokenError> {
        if let Some(need) = self.needs_authorization(asset) {
            return Err(TokenError::NeedsAuthorization(need));
        }
        let slot = self.slot(asset);
        let mut access = slot.lock().await;
        if let Some(a) = access
            .as_ref()
            .filter(|a| a.expires > Instant::now() + MARGIN)
        {
            return Ok(a.value.clone());
        }
        let (value, ttl) = self.refresh(asset, route).await?;
        *access = Some(Access {
            value: value.clone(),
            expires: Instant::now() + ttl,
        });
        Ok(value)
    }

    /// Forgets the asset's access token (the smarthost refused it): the next send
    /// refreshes.
    pub async fn forget_access_token(&self, asset: &str) {
        *self.slot(asset).lock().await = None;
    }

    /// A refresh under the asset's lease; the access token and its lifetime.
    async fn refresh(
        &self,
        asset: &str,
        route: &SmtpRouteConfig,
    ) -> Result<(String, Duration), TokenError> {
        let grant = self.lease(asset).await?;
        let configured = route
            .refresh_token
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        // The store's token wins; the configured one is only the first.
        let token = if grant.refresh_token.is_empty() {
            configured
        } else {
            grant.refresh_token.clone()
        };
        let generation = grant.generation;
        let finish = |found: Refreshed| async move {
            let accounts = self.store.accounts();
            accounts
                .finish_refresh(asset, &self.holder, generation, &found)
                .await
                .map(|_| ())
        };
        if let Some(need) = need(&grant, &token) {
            finish(Refreshed::Unchanged).await.ok();
            return Err(self.flag(asset, need));
        }
        match self.request(route, &token).await {
            Ok(r) => {
                let rotated = r
                    .refresh_token()
                    .map(|t| t.secret().clone())
                    .filter(|t| !t.is_empty() && *t != token);
                let found = match rotated {
                    Some(new) => Refreshed::Rotated(new),
                    None => Refreshed::Unchanged,
                };
                if let Err(e) = finish(found.clone()).await {
                    // The provider may already have revoked the old token: say so loudly.
                    tracing::error!(asset, error = %e, rotated = found != Refreshed::Unchanged, "the refreshed grant could not be stored");
                } else if found != Refreshed::Unchanged {
                    tracing::info!(asset, "refresh token rotated and stored");
                }
                let ttl = r.expires_in().unwrap_or(Duration::from_secs(3600));
                Ok((r.access_token().secret().clone(), ttl))
            }
            Err(TokenFailure::Refused(why)) => {
                let found = Refreshed::Refused {
                    reason: why.clone(),
                    token_sha256: sha256_hex(&token),
                };
                if let Err(e) = finish(found).await {
                    tracing::error!(asset, error = %e, "the refused grant could not be recorded");
                }
                Err(self.flag(asset, Need::Refused(why)))
            }
            Err(TokenFailure::Failed(why)) => {
                finish(Refreshed::Unchanged).await.ok();
                Err(TokenError::Failed(why))
            }
        }
    }

    /// The asset's grant with its refresh lease, waiting for another node's refresh.
    async fn lease(&self, asset: &str) -> Result<RouteToken, TokenError> {
        let deadline = Instant::now() + LEASE_WAIT;
        loop {
            match self
                .store
                .accounts()
                .lease(asset, &self.holder, LEASE_MS)
                .await
            {
                Ok(Some(grant)) => return Ok(grant),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => {
                    return Err(TokenError::Failed(
                        "another node has been refreshing the access token for 30 s".into(),
                    ))
                }
                Err(e) => return Err(TokenError::Failed(format!("the grant is unreadable: {e}"))),
            }
        }
    }

    /// One refresh-token request.
    async fn request(
        &self,
        route: &SmtpRouteConfig,
        token: &str,
    ) -> Result<oauth2::basic::BasicTokenResponse, TokenFailure> {
        let client = provider::client(route, None).map_err(TokenFailure::Failed)?;
        let refresh = RefreshToken::new(token.to_string());
        let req = client
            .exchange_refresh_token(&refresh)
            .map_err(|e| TokenFailure::Failed(e.to_string()))?
            .add_scopes(provider::scopes(route));
        req.request_async(&self.http)
            .await
            .map_err(provider::failure)
    }

    /// Notes that the asset's route needs authorization (logged at most once a minute);
    /// the error to hand back.
    fn flag(&self, asset: &str, need: Need) -> TokenError {
        let mut flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        let f = flagged.entry(asset.to_string()).or_insert(Flag {
            need: need.clone(),
            logged: None,
        });
        f.need = need.clone();
        if f.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            f.logged = Some(Instant::now());
            match &need {
                Need::Refused(why) => tracing::error!(
                    asset,
                    reason = %why,
                    "route needs re-authorization: its mail is deferred until `postern route authorize {asset}` (or the admin page's \"Connect account\") completes"
                ),
                Need::Missing => tracing::warn!(
                    asset,
                    "route has no OAuth2 account connected yet: its mail is deferred until `postern route authorize {asset}` (or the admin page's \"Connect account\") completes"
                ),
            }
        }
        TokenError::NeedsAuthorization(need)
    }

    /// Why the asset's route needs authorization, if it does (as this node last saw).
    pub fn needs_authorization(&self, asset: &str) -> Option<Need> {
        let flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        flagged.get(asset).map(|f| f.need.clone())
    }

    /// Every flagged asset with why, sorted.
    pub fn flagged(&self) -> Vec<(String, Need)> {
        let flagged = self.flagged.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = flagged
            .iter()
            .map(|(a, f)| (a.clone(), f.need.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// A new grant (of `generation`) was stored for the asset on this node: its flag and
    /// access token go at once, without waiting for the watcher, which is told the
    /// generation so that it does not take this grant for another node's.
    pub(crate) async fn granted(&self, asset: &str, generation: u64) {
        self.generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(asset.to_string())
            .and_modify(|g| *g = (*g).max(generation))
            .or_insert(generation);
        self.unflag(asset);
        self.forget_access_token(asset).await;
        tracing::info!(asset, "route authorized: a new refresh token is stored");
        self.authorized_here
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(asset.to_string());
        self.bell.notify_one();
    }

    fn unflag(&self, asset: &str) {
        self.flagged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(asset);
    }

    /// Reads the grant of every OAuth2 route from the store and brings this node's flags
    /// in line (another node may have been refused, or re-authorized); logs each flagged
    /// route once a minute. Returns the assets authorized anew since the last look.
    pub async fn sync(&self, config: &Config) -> Vec<String> {
        let mut authorized = Vec::new();
        for (asset, route) in oauth_routes(config) {
            let grant = match self.store.accounts().token(&asset).await {
                Ok(g) => g.unwrap_or_default(),
                Err(e) => {
                    tracing::debug!(asset, error = %e, "grant unreadable; flags kept");
                    continue;
                }
            };
            let newer = {
                let mut seen = self.generations.lock().unwrap_or_else(|p| p.into_inner());
                let before = seen.get(&asset).copied();
                if before.is_none_or(|g| g < grant.generation) {
                    seen.insert(asset.clone(), grant.generation);
                }
                before.is_some_and(|g| g < grant.generation)
            };
            if newer {
                self.forget_access_token(&asset).await;
                authorized.push(asset.clone());
            }
            let configured = route.refresh_token.as_ref().map_or("", |s| s.expose());
            let token = if grant.refresh_token.is_empty() {
                configured
            } else {
                &grant.refresh_token
            };
            match need(&grant, token) {
                Some(n) => {
                    self.flag(&asset, n);
                }
                None => self.unflag(&asset),
            }
        }
        authorized
    }

    /// Runs [`OAuth::sync`] every few seconds, and at once after an authorization on this
    /// node (a task aborted at shutdown); `woken` gets each asset authorized anew on any
    /// node (its deferred mail is due again). Forgets flows older than a day.
    pub async fn watch(
        self: Arc<Self>,
        config: crate::config::SharedConfig,
        woken: impl Fn(String) + Send + 'static,
    ) {
        loop {
            let mut authorized = self.sync(&config.get()).await;
            authorized.append(
                &mut self
                    .authorized_here
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            authorized.sort();
            authorized.dedup();
            for asset in authorized {
                woken(asset);
            }
            let day_ago = now_ms().saturating_sub(86_400_000);
            if let Err(e) = self.store.accounts().forget_flows_before(day_ago).await {
                tracing::debug!(error = %e, "old authorization flows not forgotten");
            }
            tokio::select! {
                () = tokio::time::sleep(WATCH_EVERY) => {}
                () = self.bell.notified() => {}
            }
        }
    }
}

/// Why `grant` cannot give an access token from `token` without a new authorization.
fn need(grant: &RouteToken, token: &str) -> Option<Need> {
    if token.is_empty() {
        return Some(Need::Missing);
    }
    match &grant.needs_authorization {
        Some(why) if grant.refused_sha256 == sha256_hex(token) => Some(Need::Refused(why.clone())),
        _ => None,
    }
}
/// The assets whose route authenticates with OAuth2, with the route.
pub fn oauth_routes(config: &Config) -> Vec<(String, SmtpRouteConfig)> {
    config
        .assets
        .iter()
        .filter_map(|a| match &a.route {
            Some(RouteConfig::Smtp(r)) if r.auth == RouteAuth::Oauth2 => {
                Some((a.id.clone(), r.clone()))
            }
            _ => None,
        })
        .collect()
}
