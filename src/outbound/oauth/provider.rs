//! The route's OAuth 2.0 client (the `oauth2` crate) and what its errors mean to us.

use crate::config::{OAuthProvider, SmtpRouteConfig};
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenResponse,
};
use oauth2::{
    AuthType, AuthUrl, ClientId, ClientSecret, DeviceAuthorizationUrl, EndpointMaybeSet,
    EndpointNotSet, RedirectUrl, RequestTokenError, Scope, StandardRevocableToken, TokenUrl,
};

/// A client whose endpoints are those the route has (each checked where it is used).
pub type Client = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointMaybeSet,
    EndpointMaybeSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
>;

/// The route's client; `redirect` for the authorization-code flow. The client's
/// credentials go in the request body (`client_secret_post`), which every provider
/// accepts (Microsoft's public clients have no secret at all).
pub fn client(route: &SmtpRouteConfig, redirect: Option<&str>) -> Result<Client, String> {
    let e = route.oauth_endpoints();
    fn url_err(key: &'static str) -> impl Fn(url::ParseError) -> String {
        move |err| format!("route.{key}: {err}")
    }
    let mut c =
        oauth2::basic::BasicClient::new(ClientId::new(route.client_id.clone().unwrap_or_default()))
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri_option(
                e.auth_url
                    .map(AuthUrl::new)
                    .transpose()
                    .map_err(url_err("auth_url"))?,
            )
            .set_token_uri_option(
                e.token_url
                    .map(TokenUrl::new)
                    .transpose()
                    .map_err(url_err("token_url"))?,
            )
            .set_device_authorization_url_option(
                e.device_url
                    .map(DeviceAuthorizationUrl::new)
                    .transpose()
                    .map_err(url_err("device_url"))?,
            );
    if let Some(secret) = route
        .client_secret
        .as_ref()
        .filter(|s| !s.expose().is_empty())
    {
        c = c.set_client_secret(ClientSecret::new(secret.expose().to_string()));
    }
    if let Some(r) = redirect {
        c = c.set_redirect_uri(RedirectUrl::new(r.to_string()).map_err(url_err("public_url"))?);
    }
    Ok(c)
}

/// The route's scopes (space-separated in the configuration).
pub fn scopes(route: &SmtpRouteConfig) -> Vec<Scope> {
    route
        .oauth_endpoints()
        .scope
        .unwrap_or_default()
        .split_whitespace()
        .map(|s| Scope::new(s.to_string()))
        .collect()
}

/// Extra parameters of the consent URL: Google returns a refresh token only with
/// `access_type=offline`, and again on a later consent only with `prompt=consent`.
pub fn consent_params(route: &SmtpRouteConfig) -> &'static [(&'static str, &'static str)] {
    match route.provider {
        OAuthProvider::Google => &[("access_type", "offline"), ("prompt", "consent")],
        OAuthProvider::Microsoft | OAuthProvider::Custom => &[],
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFailure {
    /// The provider refused the grant (`invalid_grant`: revoked, expired, already used):
    /// only a new authorization helps.
    Refused(String),
    /// Anything else (unreachable, 5xx, a malformed answer): try again later.
    Failed(String),
}

impl TokenFailure {
    /// Why, whichever the kind (for a flow, where both end it).
    pub fn into_reason(self) -> String {
        match self {
            TokenFailure::Refused(why) | TokenFailure::Failed(why) => why,
        }
    }
}

/// What a failed token request means.
pub fn failure<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, BasicErrorResponse>,
) -> TokenFailure {
    match e {
        RequestTokenError::ServerResponse(r)
            if *r.error() == BasicErrorResponseType::InvalidGrant =>
        {
            TokenFailure::Refused(r.to_string())
        }
        RequestTokenError::ServerResponse(r) => TokenFailure::Failed(r.to_string()),
        RequestTokenError::Request(e) => {
            TokenFailure::Failed(format!("token endpoint: {}", chain(&e)))
        }
        RequestTokenError::Parse(e, _) => {
            TokenFailure::Failed(format!("token endpoint answered something unreadable: {e}"))
        }
        RequestTokenError::Other(e) => TokenFailure::Failed(format!("token endpoint: {e}")),
    }
}

/// An error with its sources, so "request failed" says why.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
