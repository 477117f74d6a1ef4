//! The projection's own metrics, labelled by view.

use std::sync::atomic::AtomicU64;

use platform::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// Labels: the view (name and version).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViewLabels {
    /// View name.
    pub view: String,
    /// View version.
    pub version: String,
}

/// Counters and gauges of every view.
#[derive(Clone)]
pub struct ViewMetrics {
    /// Events folded into a document.
    pub applied: Family<ViewLabels, Counter>,
    /// Events not for the view, or of an unknown type.
    pub skipped: Family<ViewLabels, Counter>,
    /// Redelivered events already applied (stream sequence <= the document's `_position`).
    pub duplicate: Family<ViewLabels, Counter>,
    /// Events parked in the dead-letter bucket.
    pub parked: Family<ViewLabels, Counter>,
    /// Messages not yet delivered to the view's consumer (`num_pending`).
    pub lag: Family<ViewLabels, Gauge>,
    /// Seconds between now and `occurred_at` of the last applied event.
    pub behind_seconds: Family<ViewLabels, Gauge<f64, AtomicU64>>,
}

impl ViewMetrics {
    /// Registers the families in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = ViewMetrics {
            applied: Family::default(),
            skipped: Family::default(),
            duplicate: Family::default(),
            parked: Family::default(),
            lag: Family::default(),
            behind_seconds: Family::default(),
        };
        metrics.register(
            "events_applied",
            "Events applied to a view",
            m.applied.clone(),
        );
        metrics.register(
            "events_skipped",
            "Events skipped by a view (not for it, or unknown type)",
            m.skipped.clone(),
        );
        metrics.register(
            "events_duplicate",
            "Redelivered events already applied",
            m.duplicate.clone(),
        );
        metrics.register("events_parked", "Events parked", m.parked.clone());
        metrics.register(
            "consumer_pending",
            "Events not yet delivered to the view's consumer",
            m.lag.clone(),
        );
        metrics.register(
            "behind_seconds",
            "Age of the last applied event when it was applied",
            m.behind_seconds.clone(),
        );
        m
    }
}
