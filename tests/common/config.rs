//! The one place a test daemon's configuration is written: `ConfigBuilder` starts from a
//! preset (`inbound`: asset `a_demo` receiving mail; `outbound`: asset `a_out` sending
//! through a route), takes typed setters for what tests vary, and renders TOML in `toml()`.
//! `set("section.key", value)` is the escape hatch for keys no setter covers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// The secret of every preset service (base64; the JWT key is its bytes).
pub const SERVICE_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQ=";

/// A daemon configuration under construction.
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    /// The top-level tables set so far (everything but the arrays of tables below).
    tables: Table,
    /// None: the starting helper puts it in its directory (`dir/data`).
    data_dir: Option<PathBuf>,
    smtp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    services: Vec<Service>,
    assets: Vec<Asset>,
    contact_policies: Vec<Table>,
}

impl ConfigBuilder {
    /// Only the `[server]` names (mx.example.test, inbound./bounces.example.test).
    pub fn new() -> ConfigBuilder {
        ConfigBuilder {
            tables: Table::new(),
            data_dir: None,
            smtp: None,
            http: None,
            services: Vec::new(),
            assets: Vec::new(),
            contact_policies: Vec::new(),
        }
        .set("server.hostname", "mx.example.test")
        .set("server.inbound_domain", "inbound.example.test")
        .set("server.bounce_domain", "bounces.example.test")
    }

    /// A receiving daemon: asset `a_demo` ("Demo", example.test, inbound) posting to
    /// `hook`/mo and `hook`/dlr; admin token `admin-secret`; DNS off.
    pub fn inbound(hook: &str) -> ConfigBuilder {
        Self::new().common().add_asset(
            Asset::new("a_demo", "example.test")
                .name("Demo")
                .inbound()
                .webhooks(hook),
        )
    }

    /// A sending daemon: services `svc_a` (`key-a`) and `svc_b` (`key-b`), TPS 50, secret
    /// `SERVICE_SECRET`, on asset `a_out` for example.test sending by `route`, DKIM `sel1`
    /// Ed25519, webhooks under `hook`; loopback targets allowed, first retry after a
    /// second, bodies up to 200000 bytes; admin token `admin-secret`; DNS off.
    pub fn outbound(hook: &str, route: Route) -> ConfigBuilder {
        Self::new()
            .common()
            .set("http.max_body_size", 200_000)
            .retry_base(1)
            .set("outbound.allow_private_targets", vec!["127.0.0.0/8"])
            .service(Service::new("svc_a", "key-a", "a_out"))
            .service(Service::new("svc_b", "key-b", "a_out"))
            .add_asset(
                Asset::new("a_out", "example.test")
                    .webhooks(hook)
                    .route(route)
                    .dkim_ed25519("sel1"),
            )
    }

    fn common(self) -> ConfigBuilder {
        self.set("admin.token", "admin-secret")
            .set("dns.resolver", "off")
    }

    /// Sets `path` (`"section.key"`, tables created as needed) for keys no setter covers.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> ConfigBuilder {
        set_path(&mut self.tables, path, value.into());
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> ConfigBuilder {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// `dir/data`, unless a data directory was set.
    fn data_dir_or_in(mut self, dir: &Path) -> ConfigBuilder {
        self.data_dir.get_or_insert_with(|| dir.join("data"));
        self
    }

    /// The SMTP and HTTP listeners (and `public_url` on the HTTP one).
    pub fn listen(mut self, smtp: SocketAddr, http: SocketAddr) -> ConfigBuilder {
        self.smtp = Some(smtp);
        self.http = Some(http);
        self
    }

    /// Listeners on loopback ports free now, kept across restarts of a child daemon.
    pub fn on_free_ports(self) -> ConfigBuilder {
        self.listen(super::free_port(), super::free_port())
    }

    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp.expect("listen addresses set")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.expect("listen addresses set")
    }

    /// Resolves through the name server at `server` instead of not at all.
    pub fn dns(self, server: SocketAddr) -> ConfigBuilder {
        self.set("dns.resolver", vec![server.to_string()])
    }

    pub fn min_free_space(self, bytes: u64) -> ConfigBuilder {
        self.set("server.min_free_space", int(bytes))
    }

    pub fn max_message_size(self, bytes: u64) -> ConfigBuilder {
        self.set("smtp.max_message_size", int(bytes))
    }

    pub fn max_recipients(self, n: u64) -> ConfigBuilder {
        self.set("smtp.max_recipients", int(n))
    }

    pub fn max_connections_per_ip(self, n: u64) -> ConfigBuilder {
        self.set("smtp.max_connections_per_ip", int(n))
    }

    pub fn command_timeout(self, secs: u64) -> ConfigBuilder {
        self.set("smtp.command_timeout", int(secs))
    }

    pub fn data_timeout(self, secs: u64) -> ConfigBuilder {
        self.set("smtp.data_timeout", int(secs))
    }

    pub fn shutdown_grace(self, secs: u64) -> ConfigBuilder {
        self.set("smtp.shutdown_grace", int(secs))
    }

    pub fn junk_command_limit(self, n: u64) -> ConfigBuilder {
        self.set("smtp.junk_command_limit", int(n))
    }

    /// STARTTLS with this PEM certificate chain and key.
    pub fn smtp_tls(self, cert: &Path, key: &Path) -> ConfigBuilder {
        self.set("smtp.tls_cert", path_text(cert))
            .set("smtp.tls_key", path_text(key))
    }

    pub fn http_header_timeout(self, secs: u64) -> ConfigBuilder {
        self.set("http.header_timeout", int(secs))
    }

    pub fn http_max_connections(self, n: u64) -> ConfigBuilder {
        self.set("http.max_connections", int(n))
    }

    pub fn webhook_concurrency(self, n: u64) -> ConfigBuilder {
        self.set("webhooks.concurrency", int(n))
    }

    pub fn dead_letter_days(self, days: u64) -> ConfigBuilder {
        self.set("webhooks.dead_letter_days", int(days))
    }

    pub fn retry_base(self, secs: u64) -> ConfigBuilder {
        self.set("queue.retry_base", int(secs))
    }

    pub fn trusted_reporters(self, domains: &[&str]) -> ConfigBuilder {
        self.set("feedback.trusted_reporters", domains.to_vec())
    }

    /// The SNS topic SES events arrive from.
    pub fn ses_topic(self, arn: &str) -> ConfigBuilder {
        self.set("ses.topic_arns", vec![arn])
    }

    /// Where SNS certificate and subscription URLs may point.
    pub fn ses_trust_url_prefix(self, prefix: &str) -> ConfigBuilder {
        self.set("ses.trust_url_prefixes", vec![prefix])
    }

    pub fn contact_policy(
        mut self,
        group: &str,
        frequency_cap: u64,
        window_secs: u64,
    ) -> ConfigBuilder {
        let mut t = Table::new();
        t.insert("group".into(), group.into());
        t.insert("frequency_cap".into(), int(frequency_cap));
        t.insert("window".into(), int(window_secs));
        self.contact_policies.push(t);
        self
    }

    pub fn service(mut self, service: Service) -> ConfigBuilder {
        self.services.push(service);
        self
    }

    /// The TPS of every service.
    pub fn services_tps(mut self, tps: u64) -> ConfigBuilder {
        self.services = self.services.into_iter().map(|s| s.tps(tps)).collect();
        self
    }

    pub fn add_asset(mut self, asset: Asset) -> ConfigBuilder {
        self.assets.push(asset);
        self
    }

    /// Changes the last asset added (the preset's).
    pub fn asset(mut self, edit: impl FnOnce(Asset) -> Asset) -> ConfigBuilder {
        let last = self.assets.pop().expect("an asset to edit");
        self.assets.push(edit(last));
        self
    }

    /// The configuration text. Panics without a data directory.
    pub fn toml(&self) -> String {
        let mut doc = self.tables.clone();
        let data = self.data_dir.as_ref().expect("data_dir set");
        set_path(&mut doc, "server.data_dir", path_text(data).into());
        let public_url = match self.http {
            Some(http) => format!("http://{http}"),
            None => "http://127.0.0.1:8080".into(),
        };
        set_path(&mut doc, "server.public_url", public_url.into());
        if let Some(smtp) = self.smtp {
            set_path(&mut doc, "smtp.listen", vec![smtp.to_string()].into());
        }
        if let Some(http) = self.http {
            set_path(&mut doc, "http.listen", http.to_string().into());
        }
        let arrays = [
            (
                "service",
                self.services.iter().map(|s| s.0.clone()).collect(),
            ),
            ("asset", self.assets.iter().map(|a| a.0.clone()).collect()),
            ("contact_policy", self.contact_policies.clone()),
        ];
        for (name, tables) in arrays {
            if !tables.is_empty() {
                let array = tables.into_iter().map(Value::Table).collect::<Vec<_>>();
                doc.insert(name.into(), Value::Array(array));
            }
        }
        toml::to_string(&doc).expect("a table renders as TOML")
    }

    /// Writes `dir/postern.toml`, the data directory `dir/data` unless one was set, and
    /// returns its path.
    pub fn write_in(&self, dir: &Path) -> PathBuf {
        let path = dir.join("postern.toml");
        let text = self.clone().data_dir_or_in(dir).toml();
        std::fs::write(&path, text).expect("write postern.toml");
        path
    }
}

/// One `[[asset]]`.
#[derive(Clone, Debug)]
pub struct Asset(Table);

impl Asset {
    pub fn new(id: &str, domain: &str) -> Asset {
        Asset(Table::new())
            .set("id", id)
            .set("domains", vec![domain])
    }

    fn set(mut self, key: &str, value: impl Into<Value>) -> Asset {
        set_path(&mut self.0, key, value.into());
        self
    }

    pub fn name(self, name: &str) -> Asset {
        self.set("name", name)
    }

    /// Receives mail for its domains.
    pub fn inbound(self) -> Asset {
        self.set("inbound", true)
    }

    /// MO events to `base`/mo, delivery notifications to `base`/dlr.
    pub fn webhooks(self, base: &str) -> Asset {
        self.set("incoming_webhook", format!("{base}/mo"))
            .set("delivery_webhook", format!("{base}/dlr"))
    }

    pub fn webhook_secret(self, secret: &str) -> Asset {
        self.set("webhook_secret", secret)
    }

    /// MO attachments as signed links instead of inline content.
    pub fn mo_attachments_url(self) -> Asset {
        self.set("mo_attachments", "url")
    }

    pub fn inbound_retention_days(self, days: u64) -> Asset {
        self.set("inbound_retention_days", int(days))
    }

    pub fn max_inbound_size(self, bytes: u64) -> Asset {
        self.set("max_inbound_size", int(bytes))
    }

    /// Sandboxed: only `verified_recipients` get mail.
    pub fn sandbox(self, verified_recipients: &[&str]) -> Asset {
        self.set("sandbox", true)
            .set("verified_recipients", verified_recipients.to_vec())
    }

    pub fn require_verified_domain(self) -> Asset {
        self.set("require_verified_domain", true)
    }

    pub fn route(self, route: Route) -> Asset {
        self.set("route", route.0)
    }

    pub fn dkim_ed25519(self, selector: &str) -> Asset {
        self.set("dkim.selector", selector)
            .set("dkim.algorithm", "ed25519-sha256")
    }

    /// Unsubscribe links and headers, the mailto at `mailto`, none for mail from
    /// `skip_sender_ids`.
    pub fn unsubscribe(self, mailto: &str, skip_sender_ids: &[&str]) -> Asset {
        self.set("unsubscribe.enabled", true)
            .set("unsubscribe.headers", true)
            .set("unsubscribe.skip_sender_ids", skip_sender_ids.to_vec())
            .set("unsubscribe.mailto", mailto)
    }
}

/// An asset's `[asset.route]`.
#[derive(Clone, Debug)]
pub struct Route(Table);

impl Route {
    fn set(mut self, key: &str, value: impl Into<Value>) -> Route {
        self.0.insert(key.into(), value.into());
        self
    }

    /// A smarthost on 127.0.0.1:`port`, plain, without authentication.
    pub fn smtp(port: u16) -> Route {
        Route(Table::new())
            .set("kind", "smtp")
            .set("host", "127.0.0.1")
            .set("port", i64::from(port))
    }

    /// XOAUTH2 as me@example.test (client `cid`, secret `cs`), redeeming `refresh_token`
    /// at `token_url`.
    pub fn oauth2(self, token_url: &str, refresh_token: &str) -> Route {
        self.set("auth", "oauth2")
            .set("username", "me@example.test")
            .set("client_id", "cid")
            .set("client_secret", "cs")
            .set("refresh_token", refresh_token)
            .set("token_url", token_url)
    }

    /// Amazon SES in `region` at http://`endpoint`, access key `AKIDTEST`.
    pub fn ses(region: &str, endpoint: SocketAddr, secret_access_key: &str) -> Route {
        Route(Table::new())
            .set("kind", "ses")
            .set("region", region)
            .set("access_key_id", "AKIDTEST")
            .set("secret_access_key", secret_access_key)
            .set("endpoint", format!("http://{endpoint}"))
    }

    pub fn session_token(self, token: &str) -> Route {
        self.set("session_token", token)
    }

    pub fn configuration_set(self, name: &str) -> Route {
        self.set("configuration_set", name)
    }

    /// The route table alone (what `RouteConfig` deserializes from).
    pub fn toml(&self) -> String {
        toml::to_string(&self.0).expect("a table renders as TOML")
    }
}

/// One `[[service]]`, secret `SERVICE_SECRET`, TPS 50.
#[derive(Clone, Debug)]
pub struct Service(Table);

impl Service {
    pub fn new(id: &str, key: &str, asset: &str) -> Service {
        let mut t = Table::new();
        t.insert("id".into(), id.into());
        t.insert("key".into(), key.into());
        t.insert("secret".into(), SERVICE_SECRET.into());
        t.insert("tps".into(), int(50));
        t.insert("assets".into(), vec![asset].into());
        Service(t)
    }

    pub fn tps(mut self, tps: u64) -> Service {
        self.0.insert("tps".into(), int(tps));
        self
    }
}

fn int(n: u64) -> Value {
    Value::Integer(i64::try_from(n).expect("fits a TOML integer"))
}

fn path_text(p: &Path) -> String {
    p.to_str().expect("test paths are UTF-8").to_string()
}

/// Sets `a.b.c` in `table`, creating the tables on the way.
fn set_path(table: &mut Table, path: &str, value: Value) {
    let (tables, key) = match path.rsplit_once('.') {
        Some((tables, key)) => (Some(tables), key),
        None => (None, path),
    };
    let mut at = table;
    for name in tables.into_iter().flat_map(|t| t.split('.')) {
        at = match at.entry(name).or_insert(Value::Table(Table::new())) {
            Value::Table(t) => t,
            other => panic!("{name} in {path} is {other}, not a table"),
        };
    }
    at.insert(key.into(), value);
}
