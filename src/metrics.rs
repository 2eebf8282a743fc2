//! Metric names, their handles, and Prometheus rendering.
//!
//! Each node owns its own recorder (not the process-global one), so several nodes in
//! one test process keep separate numbers. Handles are registered once at start-up;
//! the hot path only touches atomics behind them, and adds counts in bulk (one
//! `increment(n)` per fan-out, not one per subscriber).

use metrics::{Counter, Gauge, Histogram, Key, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Latency buckets, in seconds: 100 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every metric of a node.
pub struct Metrics {
    handle: PrometheusHandle,
    /// Kept to register labelled metrics later (one set per ingest source).
    recorder: PrometheusRecorder,
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub connections_total: Counter,
    pub published: Counter,
    pub delivered: Counter,
    pub dropped: Counter,
    pub slow_consumer_closes: Counter,
    pub backplane_reconnects: Counter,
    pub backplane_lagged: Counter,
    /// Subscriptions made again because the cluster's slot map changed or a shard's
    /// probe was not delivered (sharded pub/sub).
    pub backplane_resyncs: Counter,
    /// 1 while the engine speaks sharded pub/sub, 0 classic (or not decided yet).
    pub backplane_sharded: Gauge,
    /// How long the last re-subscription of every channel took (after a reconnect or
    /// a resync), in seconds.
    pub resubscribe_seconds: Gauge,
    /// 1 while the link to the backplane is up; set when `/metrics` is read.
    pub backplane_connected: Gauge,
    /// 1 while `/readyz` answers 200; set when `/metrics` is read.
    pub ready: Gauge,
    pub invalid_payloads: Counter,
    pub oversized_payloads: Counter,
    pub publish_errors: Counter,
    pub gap_closes: Counter,
    pub gap_fills: Counter,
    pub rejected_upgrades: Counter,
    pub rate_limited: Counter,
    pub upstream_appended: Counter,
    pub present_sessions: Gauge,
    pub presence_refreshes: Counter,
    pub presence_sweeps: Counter,
    pub presence_sweep_leaves: Counter,
    /// From the moment a node takes a message off the backplane to its write into a
    /// socket (the node's share of publish-to-delivery latency).
    pub delivery_latency: Histogram,
    /// From a publish request to the backplane's acceptance.
    pub publish_duration: Histogram,
}

/// Metrics of one ingest source (`streams::ingest`), labelled with its stream.
pub struct SourceMetrics {
    pub published: Counter,
    pub duplicates: Counter,
    pub dead_lettered: Counter,
    pub reclaimed: Counter,
    pub lag: Gauge,
}

impl Metrics {
    pub fn new(node_id: &str) -> Self {
        let builder = PrometheusBuilder::new()
            .add_global_label("node", node_id)
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let r = &recorder;
        // The version a node runs, for spotting a fleet of mixed versions mid-rollout.
        r.describe_gauge(
            "herald_build_info".into(),
            None,
            "always 1; the version label is the node's version".into(),
        );
        let build_info = Key::from_parts(
            "herald_build_info",
            vec![metrics::Label::new("version", env!("CARGO_PKG_VERSION"))],
        );
        r.register_gauge(&build_info, &METADATA).set(1.0);
        Self {
            connections: gauge(
                r,
                "herald_connections",
                "open sessions (WebSocket, SSE and HTTP streaming)",
            ),
            subscriptions: gauge(
                r,
                "herald_subscriptions",
                "channel subscriptions of local sessions",
            ),
            channels: gauge(r, "herald_channels", "channels with local subscribers"),
            connections_total: counter(
                r,
                "herald_connections_total",
                "sessions opened (WebSocket, SSE and HTTP streaming)",
            ),
            published: counter(
                r,
                "herald_messages_published_total",
                "publishes accepted by the backplane from this node",
            ),
            delivered: counter(
                r,
                "herald_messages_delivered_total",
                "messages queued to local sockets",
            ),
            dropped: counter(
                r,
                "herald_messages_dropped_total",
                "messages not queued because a socket's queue was full",
            ),
            slow_consumer_closes: counter(
                r,
                "herald_slow_consumer_closes_total",
                "connections closed with 4008 (slow consumer)",
            ),
            backplane_reconnects: counter(
                r,
                "herald_backplane_reconnects_total",
                "backplane connections re-established",
            ),
            backplane_lagged: counter(
                r,
                "herald_backplane_lagged_total",
                "backplane messages skipped by a lagging reader",
            ),
            backplane_resyncs: counter(
                r,
                "herald_backplane_resyncs_total",
                "re-subscriptions after a cluster slot-map change or a failed shard probe",
            ),
            backplane_sharded: gauge(
                r,
                "herald_backplane_sharded_pubsub",
                "1 while the node speaks sharded pub/sub (SSUBSCRIBE/SPUBLISH), else 0",
            ),
            backplane_connected: gauge(
                r,
                "herald_backplane_connected",
                "1 while the node's link to the backplane is up, else 0",
            ),
            ready: gauge(
                r,
                "herald_ready",
                "1 while the node is ready (/readyz 200), else 0",
            ),
            resubscribe_seconds: gauge(
                r,
                "herald_backplane_resubscribe_seconds",
                "how long the last re-subscription of every channel with local interest took",
            ),
            invalid_payloads: counter(
                r,
                "herald_backplane_invalid_payloads_total",
                "backplane payloads dropped as invalid",
            ),
            oversized_payloads: counter(
                r,
                "herald_backplane_oversized_payloads_total",
                "backplane payloads dropped unread for exceeding limits.max_backplane_frame_bytes",
            ),
            publish_errors: counter(
                r,
                "herald_publish_errors_total",
                "publishes the backplane did not accept",
            ),
            gap_closes: counter(
                r,
                "herald_gap_closes_total",
                "durable subscribers closed with 4008 for a gap",
            ),
            gap_fills: counter(
                r,
                "herald_gap_fills_total",
                "durable messages filled from history after a gap",
            ),
            rejected_upgrades: counter(
                r,
                "herald_rejected_upgrades_total",
                "WebSocket upgrades refused",
            ),
            upstream_appended: counter(
                r,
                "herald_upstream_appended_total",
                "client publishes appended to upstream streams",
            ),
            rate_limited: counter(
                r,
                "herald_rate_limited_total",
                "client frames refused by the rate limit",
            ),
            present_sessions: gauge(
                r,
                "herald_present_sessions",
                "presence entries of local sessions",
            ),
            presence_refreshes: counter(
                r,
                "herald_presence_refreshes_total",
                "presence refresh calls (one per channel per interval)",
            ),
            presence_sweeps: counter(r, "herald_presence_sweeps_total", "presence sweep calls"),
            presence_sweep_leaves: counter(
                r,
                "herald_presence_sweep_leaves_total",
                "expired sessions removed by this node's sweeps",
            ),
            delivery_latency: histogram(
                r,
                "herald_delivery_latency_seconds",
                "backplane receipt to socket write",
            ),
            publish_duration: histogram(
                r,
                "herald_publish_duration_seconds",
                "publish request to backplane acceptance",
            ),
            handle,
            recorder,
        }
    }

    /// The metrics of one ingest source, labelled `stream`.
    pub fn source(&self, stream: &str) -> SourceMetrics {
        let r = &self.recorder;
        let labels = || vec![metrics::Label::new("stream", stream.to_string())];
        let c = |name: &'static str, help: &'static str| {
            r.describe_counter(name.into(), None, help.into());
            r.register_counter(&Key::from_parts(name, labels()), &METADATA)
        };
        r.describe_gauge(
            "herald_ingest_lag".into(),
            None,
            "group lag plus pending entries".into(),
        );
        SourceMetrics {
            published: c(
                "herald_ingest_published_total",
                "stream entries published into channels",
            ),
            duplicates: c(
                "herald_ingest_duplicates_total",
                "entries processed again but not published twice",
            ),
            dead_lettered: c(
                "herald_ingest_dead_lettered_total",
                "entries sent to the dead-letter stream",
            ),
            reclaimed: c(
                "herald_ingest_reclaimed_total",
                "pending entries claimed from other consumers",
            ),
            lag: r.register_gauge(&Key::from_parts("herald_ingest_lag", labels()), &METADATA),
        }
    }

    /// The listener's metrics: plain HTTP connections (not upgraded), and the ones it
    /// closed for the cap or the header timeout (src/listener.rs).
    pub fn http(&self) -> HttpMetrics {
        let r = &self.recorder;
        HttpMetrics {
            open: gauge(
                r,
                "herald_http_connections",
                "open connections not upgraded to WebSocket",
            ),
            refused: counter(
                r,
                "herald_http_connections_refused_total",
                "TCP connections closed at once: limits.max_http_connections reached",
            ),
            header_timeouts: counter(
                r,
                "herald_http_header_timeouts_total",
                "connections closed by server.header_read_timeout: nothing sent, request headers incomplete, or idle between requests",
            ),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram buffers; called periodically (the exporter needs it when its
    /// recorder is not installed globally).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// The listener's metrics, from [`Metrics::http`].
pub struct HttpMetrics {
    /// Open connections not upgraded to WebSocket.
    pub open: Gauge,
    /// TCP connections closed at once because `limits.max_http_connections` was reached.
    pub refused: Counter,
    /// Connections closed by the header timeout (nothing sent, headers incomplete, or
    /// idle between keep-alive requests).
    pub header_timeouts: Counter,
}

static METADATA: Metadata<'static> =
    Metadata::new("herald", metrics::Level::INFO, Some("herald::metrics"));

fn counter(r: &PrometheusRecorder, name: &'static str, help: &'static str) -> Counter {
    r.describe_counter(name.into(), None, help.into());
    r.register_counter(&Key::from_static_name(name), &METADATA)
}

fn gauge(r: &PrometheusRecorder, name: &'static str, help: &'static str) -> Gauge {
    r.describe_gauge(name.into(), None, help.into());
    r.register_gauge(&Key::from_static_name(name), &METADATA)
}

fn histogram(r: &PrometheusRecorder, name: &'static str, help: &'static str) -> Histogram {
    r.describe_histogram(name.into(), Some(Unit::Seconds), help.into());
    r.register_histogram(&Key::from_static_name(name), &METADATA)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new("n1");
        m.delivered.increment(3);
        m.connections.increment(1.0);
        m.delivery_latency.record(0.002);
        m.upkeep();
        let text = m.render();
        assert!(
            text.contains("herald_messages_delivered_total{node=\"n1\"} 3"),
            "{text}"
        );
        assert!(text.contains("herald_connections{node=\"n1\"} 1"), "{text}");
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!(
                "herald_build_info{{node=\"n1\",version=\"{version}\"}} 1"
            )) || text.contains(&format!(
                "herald_build_info{{version=\"{version}\",node=\"n1\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains("herald_delivery_latency_seconds_bucket"),
            "{text}"
        );
    }
}
