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
    /// Commits of the live consumer loop (documents and checkpoint, one atomic batch each):
    /// `events_applied` per commit is the batch size the view actually runs at.
    pub commits: Family<ViewLabels, Counter>,
    /// Messages not yet delivered to the view's consumer (`num_pending`).
    pub lag: Family<ViewLabels, Gauge>,
    /// Seconds between now and `occurred_at` of the last applied event.
    pub behind_seconds: Family<ViewLabels, Gauge<f64, AtomicU64>>,
    /// The view's checkpoint.
    pub position: Family<ViewLabels, Gauge>,
    /// Events in the stream after the checkpoint.
    pub lag_events: Family<ViewLabels, Gauge>,
    /// Age of the oldest event after the checkpoint, in seconds.
    pub lag_seconds: Family<ViewLabels, Gauge<f64, AtomicU64>>,
    /// Events in the dead-letter bucket now.
    pub parked_now: Family<ViewLabels, Gauge>,
    /// 1 while the view is stalled (events pending, checkpoint not moving).
    pub stalled: Family<ViewLabels, Gauge>,
}

impl ViewMetrics {
    /// Registers the families in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let m = ViewMetrics {
            applied: Family::default(),
            skipped: Family::default(),
            duplicate: Family::default(),
            parked: Family::default(),
            commits: Family::default(),
            lag: Family::default(),
            behind_seconds: Family::default(),
            position: Family::default(),
            lag_events: Family::default(),
            lag_seconds: Family::default(),
            parked_now: Family::default(),
            stalled: Family::default(),
        };
        metrics.register(
            "events_applied",
            "Events applied to a view",
            m.applied.clone(),
        );
        metrics.register(
            "view_commits",
            "Atomic commits (documents and checkpoint) of a view's live consumer loop",
            m.commits.clone(),
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
        metrics.register(
            "view_position",
            "The view's checkpoint (stream sequence)",
            m.position.clone(),
        );
        metrics.register(
            "view_lag_events",
            "Events in the stream after the view's checkpoint",
            m.lag_events.clone(),
        );
        metrics.register(
            "view_lag_seconds",
            "Age of the oldest event after the view's checkpoint",
            m.lag_seconds.clone(),
        );
        metrics.register(
            "view_parked",
            "Events in the view's dead-letter bucket",
            m.parked_now.clone(),
        );
        metrics.register(
            "view_stalled",
            "1 while the view is stalled: events pending and its checkpoint not moving",
            m.stalled.clone(),
        );
        m
    }
}
