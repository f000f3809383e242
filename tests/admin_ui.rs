//! The admin web page's guards (SPEC 14): sign-in with the admin token into a strict
//! session cookie, a redirect to sign-in without a session, 403 and no change for a form
//! without the session's CSRF token, and the security headers on every response. The
//! pages themselves are exercised in a real browser by `tests/interop/test_admin_ui.py`.

mod common;
#[path = "common/ui.rs"]
mod ui;

use common::*;
use reqwest::Method;
use ui::UiClient;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'; frame-src 'self'";

const PAGES: [&str; 7] = [
    "/admin/ui/",
    "/admin/ui/messages",
    "/admin/ui/queue",
    "/admin/ui/domains",
    "/admin/ui/suppressions",
    "/admin/ui/dead-letters",
    "/admin/ui/routes",
];

async fn daemon() -> TestDaemon {
    TestDaemon::start(ConfigBuilder::inbound("http://127.0.0.1:9")).await
}

async fn suppressed(c: &UiClient) -> Vec<String> {
    let (status, body) = c.api(Method::GET, "/admin/suppressions").await;
    assert_eq!(status, 200);
    body["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_session_cookie() {
    let d = daemon().await;
    let c = UiClient::new(d.http);
    let resp = c.sign_in_with(ui::TOKEN).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/admin/ui/");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    let (pair, attrs) = cookie.split_once(';').unwrap();
    let id = pair
        .strip_prefix("postern_ui=")
        .expect("the session cookie");
    assert_eq!(id.len(), 64, "32 random bytes in hex: {cookie}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let attrs: Vec<&str> = attrs.split(';').map(str::trim).collect();
    for want in ["Path=/admin/ui", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&want), "{want} missing in {cookie}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "plain HTTP on loopback: {cookie}"
    );

    // Behind a TLS-terminating proxy the cookie is Secure too.
    let resp = c
        .client
        .post(c.url("/admin/ui/sign-in"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", ui::TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.split(';').any(|a| a.trim() == "Secure"), "{cookie}");
    d.stop().await;
}

#[tokio::test]
async fn a_wrong_or_empty_token_is_refused_without_a_cookie() {
    let d = daemon().await;
    let c = UiClient::new(d.http);
    for token in [
        "admin-secreT",
        "",
        "admin-secret-and-more",
        "Bearer admin-secret",
    ] {
        let resp = c.sign_in_with(token).await;
        assert_eq!(resp.status(), 401, "token {token:?}");
        assert!(resp.headers().get("set-cookie").is_none());
        assert!(resp.text().await.unwrap().contains("not the admin token"));
    }
    // A sign-in form posted from another site is refused even with the right token.
    let resp = c
        .client
        .post(c.url("/admin/ui/sign-in"))
        .header("origin", "http://evil.example")
        .form(&[("token", ui::TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("set-cookie").is_none());
    d.stop().await;
}

#[tokio::test]
async fn a_page_without_a_session_redirects_to_sign_in() {
    let d = daemon().await;
    let mut c = UiClient::new(d.http);
    for page in PAGES {
        let (status, headers, _) = c.get(page).await;
        assert_eq!(status, 303, "{page}");
        assert_eq!(headers["location"], "/admin/ui/sign-in", "{page}");
    }
    // A made-up or ended session is no session.
    c.cookie = Some(format!("postern_ui={}", "ab".repeat(32)));
    let (status, _, _) = c.get("/admin/ui/").await;
    assert_eq!(status, 303);
    c.sign_in().await;
    let (status, _, html) = c.get("/admin/ui/").await;
    assert_eq!(status, 200);
    assert!(html.contains("<h1>Dashboard</h1>"));
    let csrf = c.csrf.clone();
    let (status, headers, _) = c.post("/admin/ui/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    assert!(headers["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (status, headers, _) = c.get("/admin/ui/").await;
    assert_eq!(
        (status, &headers["location"]),
        (303, &"/admin/ui/sign-in".parse().unwrap())
    );
    d.stop().await;
}

#[tokio::test]
async fn a_post_without_a_session_changes_nothing() {
    let d = daemon().await;
    let c = UiClient::new(d.http);
    let form = [
        ("csrf", "whatever"),
        ("asset", "a_demo"),
        ("address", "nosession@example.org"),
        ("reason", "unsubscribed"),
    ];
    let (status, headers, _) = c.post("/admin/ui/suppressions/add", &form).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/admin/ui/sign-in");
    let (status, _) = c
        .post_file(
            "/admin/ui/suppressions/import",
            &[],
            b"asset_id,address,reason\na_demo,x@example.org,bounced\n",
        )
        .await;
    assert_eq!(status, 303);
    assert!(suppressed(&c).await.is_empty());
    d.stop().await;
}

#[tokio::test]
async fn a_form_with_a_wrong_csrf_token_is_403_and_changes_nothing() {
    let d = daemon().await;
    let mut c = UiClient::new(d.http);
    c.sign_in().await;
    let wrong = "0".repeat(c.csrf.len());
    for csrf in [wrong.as_str(), ""] {
        let form = [
            ("csrf", csrf),
            ("asset", "a_demo"),
            ("address", "forged@example.org"),
            ("reason", "unsubscribed"),
        ];
        let (status, _, html) = c.post("/admin/ui/suppressions/add", &form).await;
        assert_eq!(status, 403, "csrf {csrf:?}");
        assert!(html.contains("nothing was changed"));
        let csv = b"asset_id,address,reason\na_demo,forged-csv@example.org,bounced\n";
        let (status, _) = c
            .post_file("/admin/ui/suppressions/import", &[("csrf", csrf)], csv)
            .await;
        assert_eq!(status, 403, "import with csrf {csrf:?}");
    }
    // Another session's token is wrong for this one.
    let mut other = UiClient::new(d.http);
    other.sign_in().await;
    assert_ne!(other.csrf, c.csrf);
    let form = [
        ("csrf", other.csrf.as_str()),
        ("asset", "a_demo"),
        ("address", "x@example.org"),
        ("reason", "bounced"),
    ];
    assert_eq!(c.post("/admin/ui/suppressions/add", &form).await.0, 403);
    assert!(suppressed(&c).await.is_empty(), "nothing was added");

    // The same forms with the right token do what they say.
    let csrf = c.csrf.clone();
    let form = [
        ("csrf", csrf.as_str()),
        ("asset", "a_demo"),
        ("address", "Real@Example.org"),
        ("reason", "complained"),
    ];
    let (status, headers, _) = c.post("/admin/ui/suppressions/add", &form).await;
    assert_eq!(
        (status, headers["location"].to_str().unwrap()),
        (303, "/admin/ui/suppressions")
    );
    let csv = b"asset_id,address,reason\na_demo,csv1@example.org,bounced\na_demo,csv2@example.org,unsubscribed\n";
    let (status, _) = c
        .post_file("/admin/ui/suppressions/import", &[("csrf", &csrf)], csv)
        .await;
    assert_eq!(status, 303);
    let mut got = suppressed(&c).await;
    got.sort();
    assert_eq!(
        got,
        ["csv1@example.org", "csv2@example.org", "real@example.org"]
    );
    let (_, _, html) = c.get("/admin/ui/suppressions?q=csv").await;
    assert!(html.contains("2 suppressions imported"), "the flash");
    assert!(
        html.contains("csv1@example.org") && !html.contains("real@example.org"),
        "the search"
    );

    // Removing with a wrong token changes nothing either.
    let form = [
        ("csrf", wrong.as_str()),
        ("asset", "a_demo"),
        ("address", "csv1@example.org"),
    ];
    assert_eq!(c.post("/admin/ui/suppressions/remove", &form).await.0, 403);
    assert_eq!(suppressed(&c).await.len(), 3);
    d.stop().await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let d = daemon().await;
    let mut c = UiClient::new(d.http);
    let check = |path: &str, headers: &reqwest::header::HeaderMap| {
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    };
    let (status, headers, html) = c.get("/admin/ui/sign-in").await;
    assert_eq!(status, 200);
    check("sign-in", &headers);
    assert_eq!(headers["cache-control"], "no-store");
    assert!(html.contains("type=\"password\"") && html.contains("<html lang=\"en\">"));
    assert!(
        !html.contains("style=") && !html.contains("<script>"),
        "no inline style or script"
    );
    c.sign_in().await;
    for page in PAGES.iter().chain(&["/admin/ui/no-such-page"]) {
        let (status, headers, html) = c.get(page).await;
        assert_eq!(
            status,
            if page.contains("no-such") { 404 } else { 200 },
            "{page}"
        );
        check(page, &headers);
        assert_eq!(headers["cache-control"], "no-store", "{page}");
        assert!(headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(html.contains("name=\"viewport\""), "{page}");
        assert!(
            !html.contains(" style=") && !html.contains("<script>"),
            "{page}: inline style or script"
        );
        for attr in ["src=\"", "href=\"", "action=\""] {
            for url in html.split(attr).skip(1) {
                // Same-origin paths, fragments, and the empty data: favicon only.
                assert!(
                    url.starts_with('/') || url.starts_with('#') || url.starts_with("data:,\""),
                    "{page}: {attr}{url:.40}"
                );
            }
        }
    }
    // The embedded assets: long cache, same headers.
    let (_, _, html) = c.get("/admin/ui/").await;
    let css = html
        .split("href=\"")
        .find_map(|s| s.split('"').next().filter(|u| u.contains("ui.css")))
        .unwrap()
        .to_string();
    for asset in [css.as_str(), "/admin/ui/assets/ui.js"] {
        let (status, headers, _) = c.get(asset).await;
        assert_eq!(status, 200, "{asset}");
        check(asset, &headers);
        assert!(headers["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000"));
    }
    d.stop().await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_admin_calls_the_page_makes() {
    let d = daemon().await;
    let c = UiClient::new(d.http);
    let doc: serde_json::Value = c
        .client
        .get(c.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/admin/suppressions",
        "/admin/suppressions/{asset}/{address}",
        "/admin/suppressions/import",
        "/admin/suppressions/export",
        "/admin/domains",
        "/admin/domains/{domain}/verify",
        "/admin/dead-letters",
        "/admin/dead-letters/{id}/replay",
        "/admin/dead-letters/replay",
        "/admin/queue",
        "/admin/queue/{tid}",
        "/admin/queue/{tid}/{action}",
        "/admin/messages",
        "/admin/assets/{asset}/inbound",
        "/admin/routes/{asset}/test",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        paths.keys().all(|p| !p.starts_with("/admin/ui")),
        "the page is not API"
    );
    d.stop().await;
}

#[tokio::test]
async fn changing_the_admin_token_ends_every_session() {
    let dir = tempfile::tempdir().unwrap();
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ConfigBuilder::inbound("http://127.0.0.1:9")
        .listen(smtp.local_addr().unwrap(), http.local_addr().unwrap());
    let path = config.write_in(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let parsed = postern::config::Config::parse(&text, "postern.toml").unwrap();
    let listeners = postern::Listeners {
        smtp: vec![smtp],
        http,
    };
    let handle = postern::start(parsed, Some(path.clone()), listeners)
        .await
        .unwrap();
    let mut c = UiClient::new(handle.http_addr);
    c.sign_in().await;
    assert_eq!(c.get("/admin/ui/").await.0, 200);
    std::fs::write(&path, text.replace("admin-secret", "a-new-admin-token")).unwrap();
    handle.daemon.reload().unwrap();
    let (status, headers, _) = c.get("/admin/ui/").await;
    assert_eq!(status, 303, "the session opened with the old token is over");
    assert_eq!(headers["location"], "/admin/ui/sign-in");
    assert_eq!(c.sign_in_with(ui::TOKEN).await.status(), 401);
    assert_eq!(c.sign_in_with("a-new-admin-token").await.status(), 303);
    handle.shutdown().await;
}
