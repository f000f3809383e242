//! Counters and gauges rendered in the Prometheus text format at `/metrics` (SPEC 10), so
//! operators and benchmarks can count without reading logs. Plain atomics: no registry,
//! no global state; one `Metrics` per daemon instance.

use crate::config::RouteKind;
use crate::store::outbox::EventKind;
use crate::store::suppression::Reason;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A closed set of label values: its variants in exposition order (the index of a variant
/// in `ALL` is its counter's slot) and the text of each.
macro_rules! label_set {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub const ALL: [$name; [$($name::$variant),+].len()] = [$($name::$variant),+];

            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            fn slot(self) -> usize {
                self as usize
            }
        }
    };
}

label_set! {
    /// A recipient's outcome at its route (`result` of `postern_outbound_messages_total`).
    RouteResult { Submitted => "submitted", Bounced => "bounced", Failed => "failed" }
}

label_set! {
    /// What became of one webhook POST (`result` of `postern_webhooks_total`).
    WebhookResult { Delivered => "delivered", Retried => "retried", Dead => "dead" }
}

label_set! {
    /// What became of one SNS message at `/ses/events` (`result` of
    /// `postern_sns_messages_total`; refused: not believed or not allowed).
    SnsResult { Recorded => "recorded", Ignored => "ignored", Confirmed => "confirmed", Refused => "refused" }
}

/// The `route` label values, in exposition order.
const ROUTES: [RouteKind; 2] = [RouteKind::Smtp, RouteKind::Ses];

fn route_label(route: RouteKind) -> &'static str {
    match route {
        RouteKind::Smtp => "smtp",
        RouteKind::Ses => "ses",
    }
}

fn route_slot(route: RouteKind) -> usize {
    match route {
        RouteKind::Smtp => 0,
        RouteKind::Ses => 1,
    }
}

/// The `reason` label values of `postern_suppression_hits_total`, in exposition order.
const SUPPRESSION_REASONS: [Reason; 3] =
    [Reason::Unsubscribed, Reason::Bounced, Reason::Complained];

fn reason_slot(reason: Reason) -> usize {
    match reason {
        Reason::Unsubscribed => 0,
        Reason::Bounced => 1,
        Reason::Complained => 2,
    }
}

/// The `kind` label values of `postern_webhooks_total`, in exposition order.
const KINDS: [EventKind; 3] = [EventKind::Mo, EventKind::Status, EventKind::Unsubscribe];

fn kind_slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Mo => 0,
        EventKind::Status => 1,
        EventKind::Unsubscribe => 2,
    }
}

/// The `state` label values of `postern_queue_entries`, in the order of `queue_entries`.
const QUEUE_STATES: [&str; 4] = ["scheduled", "ready", "retry", "held"];

const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    pub smtp_connections: AtomicI64,
    pub inbound_accepted: AtomicU64,
    pub inbound_rejected: AtomicU64,
    pub api_queued: AtomicU64,
    pub api_rejected: AtomicU64,
    /// [kind][`WebhookResult`]
    webhooks: [[AtomicU64; WebhookResult::ALL.len()]; KINDS.len()],
    /// Active queue entries: [scheduled, ready, retry].
    pub queue_entries: [AtomicI64; QUEUE_STATES.len()],
    /// Route outcomes per recipient: [route][`RouteResult`].
    outbound: [[AtomicU64; RouteResult::ALL.len()]; ROUTES.len()],
    /// Route call latency histogram per route: counts per bucket (+Inf last), sum in
    /// microseconds.
    latency_buckets: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; ROUTES.len()],
    latency_sum_us: [AtomicU64; ROUTES.len()],
    /// Recipients stopped by the suppression store, per reason.
    suppression_hits: [AtomicU64; SUPPRESSION_REASONS.len()],
    /// Messages at `/ses/events`, per `SnsResult`.
    sns_messages: [AtomicU64; SnsResult::ALL.len()],
}

/// Index of a queue state in `queue_entries`, if it is an active one.
pub fn queue_slot(state: crate::store::messages::QueueState) -> Option<usize> {
    use crate::store::messages::QueueState as Q;
    match state {
        Q::Scheduled => Some(0),
        Q::Ready => Some(1),
        Q::Retry => Some(2),
        Q::Held => Some(3),
        Q::Done | Q::Cancelled => None,
    }
}

/// One metric family of the exposition: its samples as (labels, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn sample(mut self, labels: String, value: impl ToString) -> Family {
        self.samples.push((labels, value.to_string()));
        self
    }

    fn samples(mut self, samples: impl IntoIterator<Item = (String, String)>) -> Family {
        self.samples.extend(samples);
        self
    }

    fn write(&self, s: &mut String) {
        let name = self.name;
        let _ = writeln!(
            s,
            "# HELP {name} {}\n# TYPE {name} {}",
            self.help, self.kind
        );
        for (labels, value) in &self.samples {
            let _ = writeln!(s, "{name}{labels} {value}");
        }
    }
}

fn count(a: &AtomicU64) -> String {
    a.load(Relaxed).to_string()
}

impl Metrics {
    pub fn webhook(&self, kind: EventKind, result: WebhookResult) {
        self.webhooks[kind_slot(kind)][result.slot()].fetch_add(1, Relaxed);
    }

    /// Moves one queue entry between states (`None` = not active).
    pub fn queue_move(&self, from: Option<usize>, to: Option<usize>) {
        if let Some(f) = from {
            self.queue_entries[f].fetch_sub(1, Relaxed);
        }
        if let Some(t) = to {
            self.queue_entries[t].fetch_add(1, Relaxed);
        }
    }

    /// One recipient's outcome at the route.
    pub fn outbound(&self, route: RouteKind, result: RouteResult) {
        self.outbound[route_slot(route)][result.slot()].fetch_add(1, Relaxed);
    }

    pub fn suppression_hit(&self, reason: Reason) {
        self.suppression_hits[reason_slot(reason)].fetch_add(1, Relaxed);
    }

    /// One SNS message at `/ses/events`.
    pub fn sns_message(&self, result: SnsResult) {
        self.sns_messages[result.slot()].fetch_add(1, Relaxed);
    }

    pub fn route_latency(&self, route: RouteKind, d: std::time::Duration) {
        let r = route_slot(route);
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[r][i].fetch_add(1, Relaxed);
        self.latency_sum_us[r].fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn webhook_count(&self, kind: EventKind, result: WebhookResult) -> u64 {
        self.webhooks[kind_slot(kind)][result.slot()].load(Relaxed)
    }

    /// The exposition text; `backlog` is the number of events waiting in the outbox.
    pub fn render(&self, backlog: usize) -> String {
        let families = [
            Family::new(
                "postern_smtp_connections",
                "gauge",
                "Open SMTP connections.",
            )
            .sample(String::new(), self.smtp_connections.load(Relaxed)),
            self.inbound(),
            self.api(),
            self.queue(),
            self.outbound_results(),
            self.route_latencies(),
            self.webhooks(),
            Family::new(
                "postern_webhook_backlog",
                "gauge",
                "Events waiting in the durable outbox.",
            )
            .sample(String::new(), backlog),
            self.suppression_hits(),
            self.sns_messages(),
        ];
        let mut s = String::new();
        for family in &families {
            family.write(&mut s);
        }
        s
    }

    /// Cluster mode (SPEC 13): whether the shared database answers, and its query times.
    pub fn render_cluster(up: bool, stats: &crate::store::pg::QueryStats) -> String {
        let (counts, sum) = stats.snapshot();
        let mut hist = Family::new(
            "postern_cluster_query_seconds",
            "histogram",
            "Duration of one query (or one unit of queries) on the shared database.",
        );
        let mut cumulative = 0;
        let bounds = crate::store::pg::QUERY_BUCKETS
            .iter()
            .map(|b| b.to_string());
        for (le, n) in bounds.chain(["+Inf".to_string()]).zip(&counts) {
            cumulative += n;
            hist = hist.sample(format!("_bucket{{le=\"{le}\"}}"), cumulative);
        }
        hist = hist
            .sample("_sum".into(), sum)
            .sample("_count".into(), cumulative);
        let gauge = Family::new(
            "postern_cluster_database_up",
            "gauge",
            "1 while the shared database answers, 0 while it does not.",
        )
        .sample(String::new(), u8::from(up));
        let mut s = String::new();
        gauge.write(&mut s);
        hist.write(&mut s);
        s
    }

    /// `postern_route_needs_authorization{asset}` (SPEC 15): 1 for each OAuth2 route that
    /// cannot authenticate until its account is authorized (again), 0 for the others.
    pub fn render_authorization(routes: impl IntoIterator<Item = (String, bool)>) -> String {
        let samples = routes.into_iter().map(|(asset, needs)| {
            let asset = asset.replace('\\', "\\\\").replace('"', "\\\"");
            (
                format!("{{asset=\"{asset}\"}}"),
                u8::from(needs).to_string(),
            )
        });
        let mut s = String::new();
        Family::new(
            "postern_route_needs_authorization",
            "gauge",
            "1 while the asset's OAuth2 route needs (re-)authorization: postern route authorize ASSET.",
        )
        .samples(samples)
        .write(&mut s);
        s
    }

    fn inbound(&self) -> Family {
        Family::new(
            "postern_inbound_messages_total",
            "counter",
            "Inbound SMTP transactions by result.",
        )
        .sample(
            "{result=\"accepted\"}".into(),
            count(&self.inbound_accepted),
        )
        .sample(
            "{result=\"rejected\"}".into(),
            count(&self.inbound_rejected),
        )
    }

    fn api(&self) -> Family {
        Family::new(
            "postern_api_destinations_total",
            "counter",
            "API destinations by result.",
        )
        .sample("{result=\"queued\"}".into(), count(&self.api_queued))
        .sample("{result=\"rejected\"}".into(), count(&self.api_rejected))
    }

    fn queue(&self) -> Family {
        Family::new(
            "postern_queue_entries",
            "gauge",
            "Active outbound transactions by state.",
        )
        .samples(QUEUE_STATES.iter().enumerate().map(|(i, st)| {
            (
                format!("{{state=\"{st}\"}}"),
                self.queue_entries[i].load(Relaxed).max(0).to_string(),
            )
        }))
    }

    fn outbound_results(&self) -> Family {
        Family::new(
            "postern_outbound_messages_total",
            "counter",
            "Recipients handed to a route, by result.",
        )
        .samples(ROUTES.iter().flat_map(|&route| {
            RouteResult::ALL.iter().map(move |&r| {
                (
                    format!(
                        "{{route=\"{}\",result=\"{}\"}}",
                        route_label(route),
                        r.label()
                    ),
                    count(&self.outbound[route_slot(route)][r.slot()]),
                )
            })
        }))
    }

    /// The latency histogram: cumulative buckets, sum and count per route.
    fn route_latencies(&self) -> Family {
        let mut family = Family::new(
            "postern_route_latency_seconds",
            "histogram",
            "Duration of one route call (connect to DATA reply).",
        );
        for route in ROUTES {
            let (r, label) = (route_slot(route), route_label(route));
            let mut cumulative = 0;
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += self.latency_buckets[r][i].load(Relaxed);
                family = family.sample(
                    format!("_bucket{{route=\"{label}\",le=\"{b}\"}}"),
                    cumulative,
                );
            }
            cumulative += self.latency_buckets[r][LATENCY_BUCKETS.len()].load(Relaxed);
            family = family
                .sample(
                    format!("_bucket{{route=\"{label}\",le=\"+Inf\"}}"),
                    cumulative,
                )
                .sample(
                    format!("_sum{{route=\"{label}\"}}"),
                    self.latency_sum_us[r].load(Relaxed) as f64 / 1e6,
                )
                .sample(format!("_count{{route=\"{label}\"}}"), cumulative);
        }
        family
    }

    fn webhooks(&self) -> Family {
        Family::new(
            "postern_webhooks_total",
            "counter",
            "Webhook POST outcomes by event kind.",
        )
        .samples(KINDS.iter().flat_map(|&kind| {
            WebhookResult::ALL.iter().map(move |&r| {
                (
                    format!("{{kind=\"{}\",result=\"{}\"}}", kind.label(), r.label()),
                    count(&self.webhooks[kind_slot(kind)][r.slot()]),
                )
            })
        }))
    }

    fn suppression_hits(&self) -> Family {
        Family::new(
            "postern_suppression_hits_total",
            "counter",
            "Recipients not mailed because they are suppressed.",
        )
        .samples(SUPPRESSION_REASONS.iter().map(|&r| {
            (
                format!("{{reason=\"{}\"}}", r.label()),
                count(&self.suppression_hits[reason_slot(r)]),
            )
        }))
    }

    fn sns_messages(&self) -> Family {
        Family::new(
            "postern_sns_messages_total",
            "counter",
            "SNS messages at /ses/events by outcome (refused: not believed or not allowed).",
        )
        .samples(SnsResult::ALL.iter().map(|&r| {
            (
                format!("{{result=\"{}\"}}", r.label()),
                count(&self.sns_messages[r.slot()]),
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exposed() {
        let m = Metrics::default();
        m.route_latency(RouteKind::Smtp, std::time::Duration::from_millis(30));
        m.route_latency(RouteKind::Ses, std::time::Duration::from_millis(300));
        m.outbound(RouteKind::Ses, RouteResult::Failed);
        let text = m.render(3);
        for name in [
            "postern_smtp_connections ",
            "postern_inbound_messages_total{result=\"accepted\"}",
            "postern_api_destinations_total{result=\"queued\"}",
            "postern_queue_entries{state=\"retry\"}",
            "postern_outbound_messages_total{route=\"smtp\",result=\"submitted\"}",
            "postern_route_latency_seconds_bucket{route=\"smtp\",le=\"0.05\"} 1",
            "postern_route_latency_seconds_count{route=\"smtp\"} 1",
            "postern_route_latency_seconds_bucket{route=\"ses\",le=\"0.25\"} 0",
            "postern_route_latency_seconds_bucket{route=\"ses\",le=\"0.5\"} 1",
            "postern_outbound_messages_total{route=\"ses\",result=\"failed\"} 1",
            "postern_webhooks_total{kind=\"mo\",result=\"dead\"}",
            "postern_webhook_backlog 3",
            "postern_suppression_hits_total{reason=\"bounced\"}",
            "postern_sns_messages_total{result=\"refused\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    /// The exposition as it was rendered before `render` was split into families.
    const RENDERED: &str = r#"# HELP postern_smtp_connections Open SMTP connections.
# TYPE postern_smtp_connections gauge
postern_smtp_connections 2
# HELP postern_inbound_messages_total Inbound SMTP transactions by result.
# TYPE postern_inbound_messages_total counter
postern_inbound_messages_total{result="accepted"} 5
postern_inbound_messages_total{result="rejected"} 1
# HELP postern_api_destinations_total API destinations by result.
# TYPE postern_api_destinations_total counter
postern_api_destinations_total{result="queued"} 7
postern_api_destinations_total{result="rejected"} 3
# HELP postern_queue_entries Active outbound transactions by state.
# TYPE postern_queue_entries gauge
postern_queue_entries{state="scheduled"} 1
postern_queue_entries{state="ready"} 2
postern_queue_entries{state="retry"} 0
postern_queue_entries{state="held"} 0
# HELP postern_outbound_messages_total Recipients handed to a route, by result.
# TYPE postern_outbound_messages_total counter
postern_outbound_messages_total{route="smtp",result="submitted"} 2
postern_outbound_messages_total{route="smtp",result="bounced"} 0
postern_outbound_messages_total{route="smtp",result="failed"} 0
postern_outbound_messages_total{route="ses",result="submitted"} 0
postern_outbound_messages_total{route="ses",result="bounced"} 1
postern_outbound_messages_total{route="ses",result="failed"} 1
# HELP postern_route_latency_seconds Duration of one route call (connect to DATA reply).
# TYPE postern_route_latency_seconds histogram
postern_route_latency_seconds_bucket{route="smtp",le="0.005"} 0
postern_route_latency_seconds_bucket{route="smtp",le="0.01"} 0
postern_route_latency_seconds_bucket{route="smtp",le="0.025"} 0
postern_route_latency_seconds_bucket{route="smtp",le="0.05"} 1
postern_route_latency_seconds_bucket{route="smtp",le="0.1"} 1
postern_route_latency_seconds_bucket{route="smtp",le="0.25"} 1
postern_route_latency_seconds_bucket{route="smtp",le="0.5"} 1
postern_route_latency_seconds_bucket{route="smtp",le="1"} 1
postern_route_latency_seconds_bucket{route="smtp",le="2.5"} 1
postern_route_latency_seconds_bucket{route="smtp",le="5"} 1
postern_route_latency_seconds_bucket{route="smtp",le="10"} 1
postern_route_latency_seconds_bucket{route="smtp",le="+Inf"} 1
postern_route_latency_seconds_sum{route="smtp"} 0.03
postern_route_latency_seconds_count{route="smtp"} 1
postern_route_latency_seconds_bucket{route="ses",le="0.005"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.01"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.025"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.05"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.1"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.25"} 0
postern_route_latency_seconds_bucket{route="ses",le="0.5"} 1
postern_route_latency_seconds_bucket{route="ses",le="1"} 1
postern_route_latency_seconds_bucket{route="ses",le="2.5"} 1
postern_route_latency_seconds_bucket{route="ses",le="5"} 1
postern_route_latency_seconds_bucket{route="ses",le="10"} 1
postern_route_latency_seconds_bucket{route="ses",le="+Inf"} 2
postern_route_latency_seconds_sum{route="ses"} 20.3
postern_route_latency_seconds_count{route="ses"} 2
# HELP postern_webhooks_total Webhook POST outcomes by event kind.
# TYPE postern_webhooks_total counter
postern_webhooks_total{kind="mo",result="delivered"} 1
postern_webhooks_total{kind="mo",result="retried"} 0
postern_webhooks_total{kind="mo",result="dead"} 0
postern_webhooks_total{kind="status",result="delivered"} 0
postern_webhooks_total{kind="status",result="retried"} 2
postern_webhooks_total{kind="status",result="dead"} 0
postern_webhooks_total{kind="unsubscribe",result="delivered"} 0
postern_webhooks_total{kind="unsubscribe",result="retried"} 0
postern_webhooks_total{kind="unsubscribe",result="dead"} 1
# HELP postern_webhook_backlog Events waiting in the durable outbox.
# TYPE postern_webhook_backlog gauge
postern_webhook_backlog 9
# HELP postern_suppression_hits_total Recipients not mailed because they are suppressed.
# TYPE postern_suppression_hits_total counter
postern_suppression_hits_total{reason="unsubscribed"} 0
postern_suppression_hits_total{reason="bounced"} 1
postern_suppression_hits_total{reason="complained"} 1
# HELP postern_sns_messages_total SNS messages at /ses/events by outcome (refused: not believed or not allowed).
# TYPE postern_sns_messages_total counter
postern_sns_messages_total{result="recorded"} 1
postern_sns_messages_total{result="ignored"} 0
postern_sns_messages_total{result="confirmed"} 0
postern_sns_messages_total{result="refused"} 2
"#;

    #[test]
    fn render_is_byte_identical_for_the_same_counters() {
        use std::time::Duration;
        let m = Metrics::default();
        m.smtp_connections.store(2, Relaxed);
        m.inbound_accepted.store(5, Relaxed);
        m.inbound_rejected.store(1, Relaxed);
        m.api_queued.store(7, Relaxed);
        m.api_rejected.store(3, Relaxed);
        m.queue_move(None, Some(0));
        m.queue_move(None, Some(1));
        m.queue_move(None, Some(1));
        m.queue_move(Some(2), None);
        m.outbound(RouteKind::Smtp, RouteResult::Submitted);
        m.outbound(RouteKind::Smtp, RouteResult::Submitted);
        m.outbound(RouteKind::Ses, RouteResult::Bounced);
        m.outbound(RouteKind::Ses, RouteResult::Failed);
        m.route_latency(RouteKind::Smtp, Duration::from_millis(30));
        m.route_latency(RouteKind::Ses, Duration::from_millis(300));
        m.route_latency(RouteKind::Ses, Duration::from_secs(20));
        m.webhook(EventKind::Mo, WebhookResult::Delivered);
        m.webhook(EventKind::Status, WebhookResult::Retried);
        m.webhook(EventKind::Status, WebhookResult::Retried);
        m.webhook(EventKind::Unsubscribe, WebhookResult::Dead);
        m.suppression_hit(Reason::Bounced);
        m.suppression_hit(Reason::Complained);
        m.sns_message(SnsResult::Recorded);
        m.sns_message(SnsResult::Refused);
        m.sns_message(SnsResult::Refused);
        assert_eq!(m.render(9), RENDERED);
        assert_eq!(
            m.webhook_count(EventKind::Status, WebhookResult::Retried),
            2
        );
    }
}
