//! A browser-less client of the admin page (`/admin/ui/`): signs in with the admin token,
//! keeps the session cookie and the CSRF token found in the pages, posts urlencoded and
//! multipart forms. Redirects are not followed, so tests see every 303.
#![allow(dead_code)]

use std::net::SocketAddr;

pub const TOKEN: &str = "admin-secret";

pub struct UiClient {
    pub base: String,
    pub client: reqwest::Client,
    /// `postern_ui=<id>` once signed in.
    pub cookie: Option<String>,
    pub csrf: String,
}

/// The `value` of the first hidden `csrf` field in `html`.
pub fn csrf_in(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    Some(html[at..].split('"').next()?.to_string())
}

impl UiClient {
    pub fn new(http: SocketAddr) -> UiClient {
        UiClient {
            base: format!("http://{http}"),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
            csrf: String::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Posts the sign-in form with `token`; the raw response.
    pub async fn sign_in_with(&self, token: &str) -> reqwest::Response {
        self.client
            .post(self.url("/admin/ui/sign-in"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
    }

    /// Signs in with the right token and reads the CSRF token from the dashboard.
    pub async fn sign_in(&mut self) {
        let resp = self.sign_in_with(TOKEN).await;
        assert_eq!(resp.status(), 303, "sign-in redirects to the dashboard");
        let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
        self.cookie = Some(set.split(';').next().unwrap().to_string());
        let (status, _, html) = self.get("/admin/ui/").await;
        assert_eq!(status, 200);
        self.csrf = csrf_in(&html).expect("the dashboard has a form with a CSRF token");
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => req.header("cookie", c),
            None => req,
        }
    }

    /// GET: status, headers and body.
    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = self
            .with_cookie(self.client.get(self.url(path)))
            .send()
            .await
            .unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    /// POSTs an urlencoded form (the fields as given: add `csrf` yourself).
    pub async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = self
            .with_cookie(self.client.post(self.url(path)).form(fields))
            .send()
            .await
            .unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    /// POSTs a multipart form with text `fields` and one file field `file`.
    pub async fn post_file(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file: &[u8],
    ) -> (u16, String) {
        let boundary = "postern-test-boundary-7f3k";
        let mut body = Vec::new();
        for (name, value) in fields {
            body.extend_from_slice(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
            );
        }
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.csv\"\r\nContent-Type: text/csv\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let resp = self
            .with_cookie(
                self.client
                    .post(self.url(path))
                    .header(
                        "content-type",
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body),
            )
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    /// An admin API call with the Bearer token: status and JSON body.
    pub async fn api(&self, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .request(method, self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}
