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
    /// SMTP route outcomes per recipient: [submitted, bounced, failed].
    outbound: [AtomicU64; 3],
    /// SMTP route call latency histogram: counts per bucket (+Inf last), sum in microseconds.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Recipients stopped by the suppression store: [unsubscribed, bounced, complained].
    suppression_hits: [AtomicU64; 3],
}

const SUPPRESSION_REASONS: [&str; 3] = ["unsubscribed", "bounced", "complained"];

const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const OUTBOUND_RESULTS: [&str; 3] = ["submitted", "bounced", "failed"];

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
    pub fn outbound(&self, result: &str) {
        if let Some(i) = OUTBOUND_RESULTS.iter().position(|r| *r == result) {
            self.outbound[i].fetch_add(1, Relaxed);
        }
    }

    pub fn suppression_hit(&self, reason: &str) {
        if let Some(i) = SUPPRESSION_REASONS.iter().position(|r| *r == reason) {
            self.suppression_hits[i].fetch_add(1, Relaxed);
        }
    }

    pub fn route_latency(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
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
        let _ = writeln!(s, "# HELP postern_smtp_connections Open SMTP connections.");
        let _ = writeln!(s, "# TYPE postern_smtp_connections gauge");
        let _ = writeln!(
            s,
            "postern_smtp_connections {}",
            self.smtp_connections.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP postern_inbound_messages_total Inbound SMTP transactions by result."
        );
        let _ = writeln!(s, "# TYPE postern_inbound_messages_total counter");
        let _ = writeln!(
            s,
            "postern_inbound_messages_total{{result=\"accepted\"}} {}",
            self.inbound_accepted.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "postern_inbound_messages_total{{result=\"rejected\"}} {}",
            self.inbound_rejected.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP postern_webhooks_total Webhook POST outcomes by event kind."
        );
        let _ = writeln!(s, "# TYPE postern_webhooks_total counter");
        for (k, kind) in KINDS.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "postern_webhooks_total{{kind=\"{}\",result=\"{result}\"}} {}",
                    kind.label(),
                    self.webhooks[k][r].load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP postern_webhook_backlog Events waiting in the durable outbox."
        );
        let _ = writeln!(s, "# TYPE postern_webhook_backlog gauge");
        let _ = writeln!(s, "postern_webhook_backlog {backlog}");
        s
    }
}
