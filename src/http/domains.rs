//! Admin routes for domains (SPEC 9): the verification state of every asset domain, and
//! verification itself, which resolves the records with a fresh resolver (no cached
//! negative answer from before the customer published) and stores the verdict that
//! `require_verified_domain` reads.

use super::{admin, ApiError, AppState};
use crate::model::time::now_ms;
use crate::model::types::ApiCode;
use crate::store::domains::DomainState;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

/// The domain routes in the OpenAPI document (admin token required).
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, verify))]
pub struct DomainDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/domains", get(list))
        .route("/admin/domains/{domain}/verify", post(verify))
}

/// Every asset domain with its verification state.
#[utoipa::path(get, path = "/admin/domains", tag = "admin", responses((status = 200)))]
async fn list(State(d): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let config = d.config();
    let mut out = Vec::new();
    for asset in &config.assets {
        for domain in &asset.domains {
            let state = d
                .store
                .domains()
                .state(domain)
                .await
                .map_err(ApiError::store)?;
            out.push(json!({
                "domain": domain,
                "assetId": asset.id,
                "verified": state.as_ref().is_some_and(|s| s.verified),
                "checkedAt": state.map(|s| crate::model::time::timestamp(s.checked_ms)),
                "requireVerified": asset.require_verified_domain,
            }));
        }
    }
    Ok(Json(json!({"domains": out})).into_response())
}

/// Resolves the domain's records, judges each, and records whether it is verified.
#[utoipa::path(post, path = "/admin/domains/{domain}/verify", tag = "admin", params(("domain" = String, Path)), responses((status = 200), (status = 404), (status = 409)))]
async fn verify(
    State(d): State<AppState>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Result<Response, ApiError> {
    admin(&d, &headers)?;
    let result = verify_domain(&d, &domain).await?;
    Ok(Json(result).into_response())
}

/// Verification itself, for the admin API and the admin page: a fresh resolver looks the
/// records up, and the verdict is stored for `require_verified_domain`.
pub(super) async fn verify_domain(
    d: &crate::daemon::Daemon,
    domain: &str,
) -> Result<crate::outbound::domains::Verification, ApiError> {
    let config = d.config();
    let records = match crate::outbound::domains::records(&config, domain) {
        Ok(r) => r,
        Err(e @ crate::outbound::domains::DomainError::Unknown(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ApiCode::NotFound,
                e.to_string(),
            ))
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    let verifier =
        crate::inbound::auth::Verifier::new(&config.dns.resolver).map_err(ApiError::internal)?;
    let Some(auth) = verifier.authenticator() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ApiCode::Conflict,
            "dns.resolver is \"off\": domains cannot be verified",
        ));
    };
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let result = crate::outbound::domains::verify(auth.resolver(), &domain, records).await;
    d.store
        .domains()
        .set_state(
            &domain,
            &DomainState {
                verified: result.verified,
                checked_ms: now_ms(),
            },
        )
        .await
        .map_err(ApiError::store)?;
    tracing::info!(domain = %domain, verified = result.verified, "domain verified");
    Ok(result)
}
