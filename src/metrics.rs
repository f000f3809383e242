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
