//! Authorization flows (SPEC 15): the authorization-code flow with PKCE (S256) and a
//! single-use `state` that expires after 10 minutes, completed by `GET /oauth/callback`
//! on any node; and the device-code flow, polled by this node at the provider's interval.
//! Both end with the grant's refresh token in the store (never in the config file).
//!
//! `state` is `<flow id>.<secret>`: the store keeps the secret's hash, so a forged state
//! names no flow, and one replayed finds its flow already used. Neither changes anything.

use super::provider;
use super::OAuth;
use crate::config::{Config, RouteAuth, RouteConfig, SmtpRouteConfig};
use crate::model::time::now_ms;
use crate::store::accounts::{sha256_hex, FlowClaim, FlowStatus, OAuthFlow};
use oauth2::{AuthorizationCode, CsrfToken, PkceCodeChallenge, PkceCodeVerifier, TokenResponse};
use std::sync::Arc;
use std::time::Duration;

/// How long a flow may take, from start to callback (or to the device's approval).
pub const FLOW_TTL: Duration = Duration::from_secs(600);
/// Where the provider sends the browser back, under `server.public_url`.
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// Why a flow could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("asset \"{0}\" has no route in the configuration")]
    NoRoute(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

/// A flow that started: what the operator is shown.
#[derive(Debug, Clone)]
pub enum Started {
    Code {
        flow: String,
        url: String,
        expires_ms: u64,
    },
    Device {
        flow: String,
        user_code: String,
        verification_uri: String,
        /// The provider's URL with the code filled in, when it gives one.
        verification_uri_complete: Option<String>,
        interval_secs: u64,
        expires_ms: u64,
    },
}

/// Why a callback completed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("unknown state: this address was not made by this postern, or the flow is gone")]
    UnknownState,
    #[error("this authorization was already used: start a new one")]
    UsedState,
    #[error("this authorization expired (flows last 10 minutes): start a new one")]
    ExpiredState,
    #[error("the provider answered: {0}")]
    Provider(String),
    #[error("{0}")]
    Failed(String),
}

/// The route of `asset` if it authenticates with OAuth2.
fn oauth_route(config: &Config, asset: &str) -> Result<SmtpRouteConfig, StartError> {
    match config.asset(asset).and_then(|a| a.route.as_ref()) {
        None => Err(StartError::NoRoute(asset.to_string())),
        Some(RouteConfig::Smtp(r)) if r.auth == RouteAuth::Oauth2 => Ok(r.clone()),
        Some(_) => Err(StartError::Invalid(format!(
            "asset \"{asset}\"'s route does not use auth = \"oauth2\""
        ))),
    }
}

/// `server.public_url` + the callback path.
pub fn redirect_uri(config: &Config) -> String {
    format!(
        "{}{CALLBACK_PATH}",
        config.server.public_url.trim_end_matches('/')
    )
}

fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl OAuth {
    /// Starts a flow for `asset`'s route: the consent URL, or (`device`) the user code.
    pub async fn start(
        self: &Arc<Self>,
        config: &Config,
        asset: &str,
        device: bool,
    ) -> Result<Started, StartError> {
        let route = oauth_route(config, asset)?;
        let now = now_ms();
        let mut flow = OAuthFlow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            asset_id: asset.to_string(),
            device,
            secret_sha256: String::new(),
            verifier: String::new(),
            redirect_uri: redirect_uri(config),
            created_ms: now,
            expires_ms: now + FLOW_TTL.as_millis() as u64,
            status: FlowStatus::Pending,
            error: None,
        };
        if device {
            return self.start_device(&route, flow).await;
        }
        let e = route.oauth_endpoints();
        if e.auth_url.is_none() {
            return Err(StartError::Invalid(format!(
                "asset \"{asset}\"'s route has no auth_url (set it, or provider = \"google\" or \"microsoft\")"
            )));
        }
        let client =
            provider::client(&route, Some(&flow.redirect_uri)).map_err(StartError::Invalid)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let secret = random_secret();
        let state = format!("{}.{secret}", flow.id);
        let mut req = client
            .authorize_url(|| CsrfToken::new(state))
            .map_err(|e| StartError::Invalid(e.to_string()))?
            .add_scopes(provider::scopes(&route))
            .set_pkce_challenge(challenge);
        for (k, v) in provider::consent_params(&route) {
            req = req.add_extra_param(*k, *v);
        }
        let (url, _) = req.url();
        flow.secret_sha256 = sha256_hex(&secret);
        flow.verifier = verifier.secret().clone();
        self.keep(&flow).await?;
        tracing::info!(asset, flow = %flow.id, "authorization started: waiting for the provider's callback");
        Ok(Started::Code {
            flow: flow.id,
            url: url.to_string(),
            expires_ms: flow.expires_ms,
        })
    }

    async fn keep(&self, flow: &OAuthFlow) -> Result<(), StartError> {
        self.store()
            .accounts()
            .put_flow(flow)
            .await
            .map_err(|e| StartError::Failed(format!("the flow could not be stored: {e}")))
    }

    /// The device-code flow: asks the provider for a user code, then polls for the grant
    /// in the background at the interval the provider gives (and slows down when told).
    async fn start_device(
        self: &Arc<Self>,
        route: &SmtpRouteConfig,
        mut flow: OAuthFlow,
    ) -> Result<Started, StartError> {
        let asset = flow.asset_id.clone();
        if route.oauth_endpoints().device_url.is_none() {
            return Err(StartError::Invalid(format!(
                "asset \"{asset}\"'s route has no device_url (provider = \"microsoft\" has one; Google's device flow does not grant the mail scope)"
            )));
        }
        let client = provider::client(route, None).map_err(StartError::Invalid)?;
        let details: oauth2::StandardDeviceAuthorizationResponse = client
            .exchange_device_code()
            .map_err(|e| StartError::Invalid(e.to_string()))?
            .add_scopes(provider::scopes(route))
            .request_async(self.http())
            .await
            .map_err(|e| {
                let why = provider::failure(e).into_reason();
                StartError::Failed(format!("device authorization endpoint: {why}"))
            })?;
        let lifetime = details.expires_in().min(FLOW_TTL);
        flow.expires_ms = flow.created_ms + lifetime.as_millis() as u64;
        self.keep(&flow).await?;
        let started = Started::Device {
            flow: flow.id.clone(),
            user_code: details.user_code().secret().clone(),
            verification_uri: details.verification_uri().to_string(),
            verification_uri_complete: details
                .verification_uri_complete()
                .map(|u| u.secret().clone()),
            interval_secs: details.interval().as_secs(),
            expires_ms: flow.expires_ms,
        };
        let (me, route) = (self.clone(), route.clone());
        tokio::spawn(async move {
            let polled = client
                .exchange_device_access_token(&details)
                .map_err(|e| e.to_string());
            let result = match polled {
                Ok(req) => req
                    .request_async(me.http(), tokio::time::sleep, Some(lifetime))
                    .await
                    .map_err(|e| match e {
                        oauth2::RequestTokenError::ServerResponse(r) => r.to_string(),
                        other => provider::chain(&other),
                    }),
                Err(e) => Err(e),
            };
            let token = result.and_then(|r| {
                r.refresh_token()
                    .map(|t| t.secret().clone())
                    .ok_or_else(|| no_refresh_token(&route))
            });
            me.complete(flow, token).await;
        });
        tracing::info!(
            asset,
            "device authorization started: waiting for the user's approval"
        );
        Ok(started)
    }

    /// `GET /oauth/callback`: completes the flow `state` names with the provider's
    /// `code` (or its `error`). Returns the asset authorized.
    pub async fn callback(
        &self,
        config: &Config,
        state: &str,
        code: Option<&str>,
        error: Option<String>,
    ) -> Result<String, CallbackError> {
        let (id, secret) = state.split_once('.').ok_or(CallbackError::UnknownState)?;
        let flow = self
            .store()
            .accounts()
            .flow(id)
            .await
            .map_err(|e| CallbackError::Failed(format!("the flow is unreadable: {e}")))?
            .ok_or(CallbackError::UnknownState)?;
        if flow.device
            || !crate::model::tokens::constant_time_eq(
                sha256_hex(secret).as_bytes(),
                flow.secret_sha256.as_bytes(),
            )
        {
            return Err(CallbackError::UnknownState);
        }
        let flow = match self.store().accounts().claim_flow(id, now_ms()).await {
            Ok(FlowClaim::Claimed(f)) => f,
            Ok(FlowClaim::Unknown) => return Err(CallbackError::UnknownState),
            Ok(FlowClaim::Used) => return Err(CallbackError::UsedState),
            Ok(FlowClaim::Expired) => return Err(CallbackError::ExpiredState),
            Err(e) => {
                return Err(CallbackError::Failed(format!(
                    "the flow is unreadable: {e}"
                )))
            }
        };
        let asset = flow.asset_id.clone();
        let token = match (error, code) {
            (Some(e), _) => Err(e),
            (None, None) => Err("the provider sent neither a code nor an error".to_string()),
            (None, Some(code)) => self.exchange(config, &flow, code).await,
        };
        let failed = token.as_ref().err().cloned();
        self.complete(flow, token).await;
        match failed {
            None => Ok(asset),
            Some(why) => Err(CallbackError::Provider(why)),
        }
    }

    /// The code exchanged (with the flow's PKCE verifier) for the grant's refresh token.
    async fn exchange(
        &self,
        config: &Config,
        flow: &OAuthFlow,
        code: &str,
    ) -> Result<String, String> {
        let route = oauth_route(config, &flow.asset_id).map_err(|e| e.to_string())?;
        let client = provider::client(&route, Some(&flow.redirect_uri))?;
        let answer = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| e.to_string())?
            .set_pkce_verifier(PkceCodeVerifier::new(flow.verifier.clone()))
            .request_async(self.http())
            .await
            .map_err(|e| provider::failure(e).into_reason())?;
        answer
            .refresh_token()
            .map(|t| t.secret().clone())
            .ok_or_else(|| no_refresh_token(&route))
    }

    /// Ends a flow: the refresh token stored as the asset's new grant, or why not.
    async fn complete(&self, mut flow: OAuthFlow, token: Result<String, String>) {
        let asset = flow.asset_id.clone();
        let stored = match token {
            Ok(refresh) => self
                .store()
                .accounts()
                .authorize(&asset, &refresh)
                .await
                .map(|grant| grant.generation)
                .map_err(|e| format!("the new grant could not be stored: {e}")),
            Err(e) => Err(e),
        };
        match &stored {
            Ok(generation) => {
                flow.status = FlowStatus::Authorized;
                self.granted(&asset, *generation).await;
            }
            Err(why) => {
                tracing::warn!(asset, reason = %why, "authorization failed");
                flow.status = FlowStatus::Failed;
                flow.error = Some(why.clone());
            }
        }
        flow.verifier.clear();
        if let Err(e) = self.store().accounts().put_flow(&flow).await {
            tracing::error!(asset, error = %e, "the flow's result could not be stored");
        }
    }

    /// A flow's status as the operator's command sees it.
    pub async fn status(&self, id: &str) -> Result<Option<OAuthFlow>, crate::store::StoreError> {
        self.store().accounts().flow(id).await
    }
}

fn no_refresh_token(route: &SmtpRouteConfig) -> String {
    let hint = match route.provider {
        crate::config::OAuthProvider::Google => {
            " (Google sends one only with access_type=offline and prompt=consent, which postern asks for)"
        }
        crate::config::OAuthProvider::Microsoft => " (the scope must include offline_access)",
        crate::config::OAuthProvider::Custom => " (the scope may need offline_access)",
    };
    format!("the provider granted access but sent no refresh token{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn config(provider: &str) -> Config {
        let text = format!(
            "{}\n[admin]\ntoken = \"t\"\n[[asset]]\nid = \"a_g\"\ndomains = [\"example.test\"]\n\
             [asset.route]\nkind = \"smtp\"\nhost = \"smtp.example.test\"\nauth = \"oauth2\"\n\
             provider = \"{provider}\"\nclient_id = \"cid\"\nclient_secret = \"cs\"\n",
            crate::config::TEST_SERVER
        );
        Config::parse(&text, "t.toml").unwrap()
    }

    fn query(url: &str) -> std::collections::HashMap<String, String> {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    /// The consent URL: PKCE S256, the state naming the stored flow, the provider's
    /// scope, and for Google the two parameters without which no refresh token comes.
    #[tokio::test]
    async fn the_consent_url_carries_pkce_state_scope_and_googles_offline_access() {
        let dir = tempfile::tempdir().unwrap();
        let oauth = OAuth::new(Store::open(dir.path()).unwrap(), "n".into());
        for (provider, offline) in [("google", true), ("microsoft", false)] {
            let config = config(provider);
            let Started::Code { flow, url, .. } = oauth.start(&config, "a_g", false).await.unwrap()
            else {
                panic!("a code flow");
            };
            let q = query(&url);
            assert_eq!(q["code_challenge_method"], "S256");
            assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/oauth/callback");
            assert_eq!(q["client_id"], "cid");
            assert!(q["state"].starts_with(&format!("{flow}.")), "{url}");
            assert_eq!(
                q.get("access_type").map(String::as_str),
                offline.then_some("offline")
            );
            assert_eq!(
                q.get("prompt").map(String::as_str),
                offline.then_some("consent")
            );
            let stored = oauth.status(&flow).await.unwrap().unwrap();
            let want = config
                .asset("a_g")
                .unwrap()
                .route
                .as_ref()
                .map(|r| match r {
                    RouteConfig::Smtp(s) => s.oauth_endpoints().scope.unwrap(),
                    RouteConfig::Ses(_) => unreachable!(),
                });
            assert_eq!(Some(q["scope"].clone()), want);
            assert_eq!(stored.status, FlowStatus::Pending);
            // The verifier stays in the store; the challenge in the URL is its hash.
            use base64::Engine;
            use sha2::Digest;
            let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(stored.verifier.as_bytes()));
            assert_eq!(q["code_challenge"], challenge);
        }
    }

    /// A forged secret, an unknown flow or a malformed state change nothing.
    #[tokio::test]
    async fn a_forged_state_names_no_flow_and_leaves_it_pending() {
        let dir = tempfile::tempdir().unwrap();
        let oauth = OAuth::new(Store::open(dir.path()).unwrap(), "n".into());
        let config = config("google");
        let Started::Code { flow, .. } = oauth.start(&config, "a_g", false).await.unwrap() else {
            panic!("a code flow");
        };
        for state in [format!("{flow}.forged"), "nope.x".into(), "no-dot".into()] {
            let r = oauth.callback(&config, &state, Some("c"), None).await;
            assert_eq!(r, Err(CallbackError::UnknownState), "{state}");
        }
        let stored = oauth.status(&flow).await.unwrap().unwrap();
        assert_eq!(stored.status, FlowStatus::Pending);
        assert!(matches!(
            oauth.start(&config, "a_nope", false).await,
            Err(StartError::NoRoute(_))
        ));
    }
}
