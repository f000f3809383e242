//! Counters and gauges rendered in the Prometheus text format at `/metrics` (SPEC 10), so
//! operators and benchmarks can count without reading logs. Plain atomics: no registry,
//! no global state; one `Metrics` per daemon instance.

use crate::store::outbox::EventKind;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Metrics {
    pub smtp_connections: AtomicI64,
    pub inbound_accepted: AtomicU64,
    pub inbound_rejected: AtomicU64,
    pub api_queued: AtomicU64,
    pub api_rejected: AtomicU64,
    /// [kind][delivered, retried, dead]
    webhooks: [[AtomicU64; 3]; 3],
    /// Active queue entries: [scheduled, ready, retry].
    pub queue_entries: [AtomicI64; 3],
    /// Route outcomes per recipient: [route][submitted, bounced, failed].
    outbound: [[AtomicU64; 3]; ROUTES.len()],
    /// Route call latency histogram per route: counts per bucket (+Inf last), sum in
    /// microseconds.
    latency_buckets: [[AtomicU64; LATENCY_BUCKETS.len() + 1]; ROUTES.len()],
    latency_sum_us: [AtomicU64; ROUTES.len()],
    /// Recipients stopped by the suppression store: [unsubscribed, bounced, complained].
    suppression_hits: [AtomicU64; 3],
    /// Messages at `/ses/events`: [recorded, ignored, confirmed, refused].
    sns_messages: [AtomicU64; 4],
}

const SUPPRESSION_REASONS: [&str; 3] = ["unsubscribed", "bounced", "complained"];
const SNS_RESULTS: [&str; 4] = ["recorded", "ignored", "confirmed", "refused"];

const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const OUTBOUND_RESULTS: [&str; 3] = ["submitted", "bounced", "failed"];
/// The `route` label values.
const ROUTES: [&str; 2] = ["smtp", "ses"];

fn route_slot(route: &str) -> usize {
    ROUTES.iter().position(|r| *r == route).unwrap_or(0)
}

/// Index of a queue state in `queue_entries`, if it is an active one.
pub fn queue_slot(state: crate::store::messages::QueueState) -> Option<usize> {
    use crate::store::messages::QueueState as Q;
    match state {
        Q::Scheduled => Some(0),
        Q::Ready => Some(1),
        Q::Retry => Some(2),
        Q::Done | Q::Cancelled => None,
    }
}

const RESULTS: [&str; 3] = ["delivered", "retried", "dead"];
const KINDS: [EventKind; 3] = [EventKind::Mo, EventKind::Status, EventKind::Unsubscribe];

impl Metrics {
    pub fn webhook(&self, kind: EventKind, result: &str) {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        if let Some(r) = RESULTS.iter().position(|x| *x == result) {
            self.webhooks[k][r].fetch_add(1, Relaxed);
        }
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

    /// One recipient's outcome at the route: "submitted", "bounced" or "failed".
    pub fn outbound(&self, route: &str, result: &str) {
        if let Some(i) = OUTBOUND_RESULTS.iter().position(|r| *r == result) {
            self.outbound[route_slot(route)][i].fetch_add(1, Relaxed);
        }
    }

    pub fn suppression_hit(&self, reason: &str) {
        if let Some(i) = SUPPRESSION_REASONS.iter().position(|r| *r == reason) {
            self.suppression_hits[i].fetch_add(1, Relaxed);
        }
    }

    /// One SNS message at `/ses/events`: "recorded", "ignored", "confirmed" or "refused".
    pub fn sns_message(&self, result: &str) {
        if let Some(i) = SNS_RESULTS.iter().position(|r| *r == result) {
            self.sns_messages[i].fetch_add(1, Relaxed);
        }
    }

    pub fn route_latency(&self, route: &str, d: std::time::Duration) {
        let r = route_slot(route);
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[r][i].fetch_add(1, Relaxed);
        self.latency_sum_us[r].fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn webhook_count(&self, kind: EventKind, result: &str) -> u64 {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        RESULTS
            .iter()
            .position(|x| *x == result)
            .map(|r| self.webhooks[k][r].load(Relaxed))
            .unwrap_or(0)
    }

    /// The exposition text; `backlog` is the number of events waiting in the outbox.
    pub fn render(&self, backlog: usize) -> String {
        let mut s = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(s, "{name}{labels} {value}");
            }
        };
        let v = |a: &AtomicU64| a.load(Relaxed).to_string();
        family(
            "postern_smtp_connections",
            "gauge",
            "Open SMTP connections.",
            vec![(
                String::new(),
                self.smtp_connections.load(Relaxed).to_string(),
            )],
        );
        family(
            "postern_inbound_messages_total",
            "counter",
            "Inbound SMTP transactions by result.",
            vec![
                ("{result=\"accepted\"}".into(), v(&self.inbound_accepted)),
                ("{result=\"rejected\"}".into(), v(&self.inbound_rejected)),
            ],
        );
        family(
            "postern_api_destinations_total",
            "counter",
            "API destinations by result.",
            vec![
                ("{result=\"queued\"}".into(), v(&self.api_queued)),
                ("{result=\"rejected\"}".into(), v(&self.api_rejected)),
            ],
        );
        family(
            "postern_queue_entries",
            "gauge",
            "Active outbound transactions by state.",
            ["scheduled", "ready", "retry"]
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    (
                        format!("{{state=\"{st}\"}}"),
                        self.queue_entries[i].load(Relaxed).max(0).to_string(),
                    )
                })
                .collect(),
        );
        family(
            "postern_outbound_messages_total",
            "counter",
            "Recipients handed to a route, by result.",
            ROUTES
                .iter()
                .enumerate()
                .flat_map(|(ri, route)| {
                    OUTBOUND_RESULTS.iter().enumerate().map(move |(i, r)| {
                        (
                            format!("{{route=\"{route}\",result=\"{r}\"}}"),
                            v(&self.outbound[ri][i]),
                        )
                    })
                })
                .collect(),
        );
        let mut buckets: Vec<(String, String)> = Vec::new();
        for (ri, route) in ROUTES.iter().enumerate() {
            let mut cumulative = 0;
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += self.latency_buckets[ri][i].load(Relaxed);
                buckets.push((
                    format!("_bucket{{route=\"{route}\",le=\"{b}\"}}"),
                    cumulative.to_string(),
                ));
            }
            cumulative += self.latency_buckets[ri][LATENCY_BUCKETS.len()].load(Relaxed);
            buckets.push((
                format!("_bucket{{route=\"{route}\",le=\"+Inf\"}}"),
                cumulative.to_string(),
            ));
            buckets.push((
                format!("_sum{{route=\"{route}\"}}"),
                (self.latency_sum_us[ri].load(Relaxed) as f64 / 1e6).to_string(),
            ));
            buckets.push((
                format!("_count{{route=\"{route}\"}}"),
                cumulative.to_string(),
            ));
        }
        family(
            "postern_route_latency_seconds",
            "histogram",
            "Duration of one route call (connect to DATA reply).",
            buckets,
        );
        family(
            "postern_webhooks_total",
            "counter",
            "Webhook POST outcomes by event kind.",
            KINDS
                .iter()
                .enumerate()
                .flat_map(|(k, kind)| {
                    RESULTS.iter().enumerate().map(move |(r, result)| {
                        (
                            format!("{{kind=\"{}\",result=\"{result}\"}}", kind.label()),
                            self.webhooks[k][r].load(Relaxed).to_string(),
                        )
                    })
                })
                .collect(),
        );
        family(
            "postern_webhook_backlog",
            "gauge",
            "Events waiting in the durable outbox.",
            vec![(String::new(), backlog.to_string())],
        );
        family(
            "postern_suppression_hits_total",
            "counter",
            "Recipients not mailed because they are suppressed.",
            SUPPRESSION_REASONS
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("{{reason=\"{r}\"}}"), v(&self.suppression_hits[i])))
                .collect(),
        );
        family(
            "postern_sns_messages_total",
            "counter",
            "SNS messages at /ses/events by outcome (refused: not believed or not allowed).",
            SNS_RESULTS
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("{{result=\"{r}\"}}"), v(&self.sns_messages[i])))
                .collect(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_exposed() {
        let m = Metrics::default();
        m.route_latency("smtp", std::time::Duration::from_millis(30));
        m.route_latency("ses", std::time::Duration::from_millis(300));
        m.outbound("ses", "failed");
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
}
