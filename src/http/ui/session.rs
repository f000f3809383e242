//! Sign-in and the session table of the admin page. The admin token is checked exactly as
//! the admin API checks its Bearer token ([`crate::http::admin`]); a session is a random
//! 32-byte id in an HttpOnly, SameSite=Strict cookie scoped to `/admin/ui`, kept in memory
//! and forgotten after 12 h idle or at sign-out. Each session has its own CSRF token, which
//! [`Action`] compares in constant time before a form's handler runs.

use super::layout;
use crate::http::AppState;
use crate::outbound::domains::Verification;
use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cookie that carries the session id.
pub(super) const COOKIE: &str = "postern_ui";
/// A session unused this long is gone.
pub(super) const IDLE: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; signing in beyond it forgets the least recent.
const MAX_SESSIONS: usize = 256;
/// Where a request without a session is sent.
pub(super) const SIGN_IN: &str = "/admin/ui/sign-in";

/// A message shown once on the next page (Post/Redirect/Get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Flash {
    Done(String),
    Failed(String),
}

/// A digest of the admin token a session was opened with: when the token in force is
/// another (changed and reloaded), the session ends.
pub(super) type TokenKey = [u8; 32];

/// The [`TokenKey`] of the admin token in force.
pub(super) fn token_key(d: &crate::daemon::Daemon) -> TokenKey {
    use sha2::Digest;
    sha2::Sha256::digest(d.config().admin.token.expose().as_bytes()).into()
}

struct Session {
    csrf: String,
    key: TokenKey,
    last_seen: Instant,
    flash: Option<Flash>,
}

/// The in-memory session table.
#[derive(Default)]
pub(super) struct Sessions {
    table: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session at `now`: its id and CSRF token. Expired sessions go first.
    pub(super) fn open(&self, now: Instant, key: TokenKey) -> (String, String) {
        let mut table = self.table();
        table.retain(|_, s| now.saturating_duration_since(s.last_seen) < IDLE);
        while table.len() >= MAX_SESSIONS {
            let Some(oldest) = table
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            table.remove(&oldest);
        }
        let (id, csrf) = (random_hex(), random_hex());
        table.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                key,
                last_seen: now,
                flash: None,
            },
        );
        (id, csrf)
    }

    /// The session `id` used at `now` while the admin token's key is `key`: its CSRF
    /// token and pending message. An expired session, or one opened with another admin
    /// token, is removed and gives `None`.
    pub(super) fn touch(
        &self,
        id: &str,
        now: Instant,
        key: TokenKey,
    ) -> Option<(String, Option<Flash>)> {
        let mut table = self.table();
        let session = table.get_mut(id)?;
        if now.saturating_duration_since(session.last_seen) >= IDLE || session.key != key {
            table.remove(id);
            return None;
        }
        session.last_seen = now;
        Some((session.csrf.clone(), session.flash.take()))
    }

    pub(super) fn close(&self, id: &str) {
        self.table().remove(id);
    }

    pub(super) fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.table().get_mut(id) {
            s.flash = Some(flash);
        }
    }
}

/// When a route was tested (ms) and what it answered.
pub(super) type RouteTest = (u64, Result<String, String>);

/// What the page keeps in memory: sessions, and the last domain verification and route
/// test of each domain or asset, shown until the next one.
#[derive(Clone, Default)]
pub(super) struct Ui(Arc<UiInner>);

#[derive(Default)]
pub(super) struct UiInner {
    pub(super) sessions: Sessions,
    pub(super) verifications: Mutex<HashMap<String, Verification>>,
    pub(super) route_tests: Mutex<HashMap<String, RouteTest>>,
}

impl Ui {
    pub(super) fn new() -> Ui {
        Ui::default()
    }
}

impl std::ops::Deref for Ui {
    type Target = UiInner;
    fn deref(&self) -> &UiInner {
        &self.0
    }
}

/// Locks a table of the page's memory, whatever a panicking holder left.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A request with a live session.
pub(super) struct Signed {
    pub(super) ui: Ui,
    pub(super) id: String,
    pub(super) csrf: String,
    pub(super) flash: Option<Flash>,
}

impl Signed {
    /// Shows `flash` on the next page and redirects there (303).
    pub(super) fn redirect(&self, to: &str, flash: Flash) -> Response {
        self.ui.sessions.set_flash(&self.id, flash);
        Redirect::to(to).into_response()
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn ui_of(parts: &Parts) -> Option<Ui> {
    parts.extensions.get::<Ui>().cloned()
}

impl OptionalFromRequestParts<AppState> for Signed {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        d: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        let Some(ui) = ui_of(parts) else {
            return Ok(None);
        };
        let Some(id) = cookie(&parts.headers, COOKIE).map(str::to_string) else {
            return Ok(None);
        };
        Ok(ui
            .sessions
            .touch(&id, Instant::now(), token_key(d))
            .map(|(csrf, flash)| Signed {
                ui: ui.clone(),
                id,
                csrf,
                flash,
            }))
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    /// Without a live session: 303 to the sign-in page (for a POST too: nothing changes).
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match <Signed as OptionalFromRequestParts<AppState>>::from_request_parts(parts, state).await
        {
            Ok(Some(s)) => Ok(s),
            _ => Err(Redirect::to(SIGN_IN).into_response()),
        }
    }
}

/// The fields of an urlencoded form.
pub(super) struct Fields(Vec<(String, String)>);

impl Fields {
    pub(super) fn parse(body: &[u8]) -> Fields {
        Fields(
            url::form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `name`, trimmed; empty when absent.
    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    }
}

/// Whether `given` is the session's CSRF token (constant time).
pub(super) fn csrf_ok(signed: &Signed, given: &str) -> bool {
    !given.is_empty()
        && crate::model::tokens::constant_time_eq(given.as_bytes(), signed.csrf.as_bytes())
}

/// The answer to a form without the right CSRF token: 403, nothing changed.
pub(super) fn csrf_refused(signed: &Signed) -> Response {
    tracing::warn!("admin page: form refused, CSRF token missing or wrong");
    layout::error_page(
        StatusCode::FORBIDDEN,
        "Form refused",
        "This form did not carry this session's security token, so nothing was changed. \
         Go back, reload the page and try again.",
        Some(signed),
    )
}

/// A state-changing urlencoded POST: a live session (else 303 to sign-in) and the
/// session's CSRF token in field `csrf` (else 403), both checked before the handler runs.
pub(super) struct Action {
    pub(super) signed: Signed,
    pub(super) fields: Fields,
}

impl FromRequest<AppState> for Action {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let signed =
            <Signed as FromRequestParts<AppState>>::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let body = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields = Fields::parse(&body);
        if !csrf_ok(&signed, fields.get("csrf")) {
            return Err(csrf_refused(&signed));
        }
        Ok(Action { signed, fields })
    }
}

/// Whether the cookie may be marked `Secure`: the request came through a TLS-terminating
/// proxy, or by the configured `https` public URL's host.
fn over_tls(headers: &HeaderMap, public_url: &str) -> bool {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if value("x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https")) {
        return true;
    }
    let host = value("host").unwrap_or("");
    url::Url::parse(public_url).is_ok_and(|u| {
        u.scheme() == "https"
            && u.host_str()
                .is_some_and(|h| host == h || host.starts_with(&format!("{h}:")))
    })
}

/// A sign-in form posted from another site is refused: by the browser's
/// `Sec-Fetch-Site`, else by an `Origin` naming another host. (Under the page's
/// `Referrer-Policy: no-referrer` browsers send `Origin: null`, which says nothing.)
fn same_origin(headers: &HeaderMap) -> bool {
    let value = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = value("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let Some(origin) = value("origin").filter(|o| *o != "null") else {
        return true;
    };
    let host = value("host").unwrap_or("");
    url::Url::parse(origin).is_ok_and(|u| {
        let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
        u.host_str()
            .is_some_and(|h| format!("{h}{port}").eq_ignore_ascii_case(host))
    })
}

/// The `Set-Cookie` value of a new session.
pub(super) fn session_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/admin/ui; HttpOnly; SameSite=Strict{secure}")
}

pub(super) async fn sign_in_page(signed: Option<Signed>) -> Response {
    if signed.is_some() {
        return Redirect::to("/admin/ui/").into_response();
    }
    layout::sign_in(StatusCode::OK, None)
}

/// Checks the token as the admin API does; on success opens a session.
pub(super) async fn sign_in(
    State(d): State<AppState>,
    axum::Extension(ui): axum::Extension<Ui>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !same_origin(&headers) {
        return layout::sign_in(
            StatusCode::FORBIDDEN,
            Some("This form was posted from another site."),
        );
    }
    let fields = Fields::parse(&body);
    let mut bearer = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", fields.get("token"))) {
        bearer.insert(header::AUTHORIZATION, v);
    }
    if crate::http::admin(&d, &bearer).is_err() {
        tracing::warn!("admin page: sign-in refused");
        return layout::sign_in(
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        );
    }
    let (id, _) = ui.sessions.open(Instant::now(), token_key(&d));
    tracing::info!("admin page: signed in");
    let secure = over_tls(&headers, &d.config().server.public_url);
    let mut resp = Redirect::to("/admin/ui/").into_response();
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&id, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Forgets the session and clears the cookie.
pub(super) async fn sign_out(action: Action) -> Response {
    action.signed.ui.sessions.close(&action.signed.id);
    let mut resp = Redirect::to(SIGN_IN).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "postern_ui=; Path=/admin/ui; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: TokenKey = [7; 32];

    #[test]
    fn a_session_ends_when_the_admin_token_changes() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, _) = sessions.open(now, K);
        assert!(sessions.touch(&id, now, [8; 32]).is_none());
        assert!(sessions.touch(&id, now, K).is_none(), "and stays ended");
    }

    #[test]
    fn a_session_lives_until_twelve_hours_idle() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (id, csrf) = sessions.open(t0, K);
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let later = t0 + Duration::from_secs(11 * 3600);
        assert_eq!(sessions.touch(&id, later, K).map(|s| s.0), Some(csrf));
        // Used at `later`: twelve hours from then it is still there a moment before.
        assert!(sessions
            .touch(&id, later + IDLE - Duration::from_secs(1), K)
            .is_some());
        let idle = later + IDLE - Duration::from_secs(1) + IDLE;
        assert!(sessions.touch(&id, idle, K).is_none());
        assert!(
            sessions.touch(&id, t0, K).is_none(),
            "an expired session is gone"
        );
    }

    #[test]
    fn a_closed_session_is_gone_and_a_flash_shows_once() {
        let sessions = Sessions::default();
        let now = Instant::now();
        let (id, _) = sessions.open(now, K);
        sessions.set_flash(&id, Flash::Done("ok".into()));
        assert_eq!(
            sessions.touch(&id, now, K).and_then(|s| s.1),
            Some(Flash::Done("ok".into()))
        );
        assert_eq!(sessions.touch(&id, now, K).and_then(|s| s.1), None);
        sessions.close(&id);
        assert!(sessions.touch(&id, now, K).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let (first, _) = sessions.open(t0, K);
        for i in 1..=MAX_SESSIONS as u64 {
            sessions.open(t0 + Duration::from_millis(i), K);
        }
        assert!(sessions
            .touch(&first, t0 + Duration::from_secs(1), K)
            .is_none());
        assert_eq!(sessions.table().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_and_origins_are_read_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; postern_ui=abc"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "postern"), None);
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(!same_origin(&h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h), "the browser's own verdict decides");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
        h.remove("sec-fetch-site");
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(same_origin(&h));
        assert!(!over_tls(&h, "http://127.0.0.1:8080"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_tls(&h, "http://127.0.0.1:8080"));
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("mail.example.test"));
        assert!(over_tls(&h, "https://mail.example.test"));
        assert!(!over_tls(&h, "https://other.example.test"));
    }
}
