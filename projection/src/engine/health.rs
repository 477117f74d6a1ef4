//! Is a view moving? A watchdog per view and instance compares its checkpoint with the
//! stream's last sequence every [`STATUS_POLL`]: a view with events pending whose checkpoint
//! has not moved for `stall_after` is *stalled*. That is logged at WARN with its cause (the
//! last failure this instance saw, else what is known), repeated at most every
//! [`STALL_WARN_EVERY`] while it lasts, and at INFO when the view moves again; metrics and
//! `GET /v1/admin/views` carry the same per view.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use crate::engine::ViewRuntime;
use crate::store::{self, StoreError};

/// How often the watchdog looks.
pub const STATUS_POLL: Duration = Duration::from_secs(1);
/// A stall is logged again at most this often while it lasts.
pub const STALL_WARN_EVERY: Duration = Duration::from_secs(30);

/// What the watchdog should say after an observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// The view just stalled (WARN).
    Stalled {
        /// Why, as far as known.
        cause: String,
    },
    /// Still stalled, and the last WARN is [`STALL_WARN_EVERY`] old (WARN again).
    StillStalled {
        /// Why, as far as known.
        cause: String,
        /// For how long.
        stalled_for: Duration,
    },
    /// It moves again (INFO).
    Moving {
        /// How long it was stalled.
        stalled_for: Duration,
    },
}

/// A stall in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Why, as far as known.
    pub cause: String,
    /// When it began (the checkpoint's last move).
    pub since: SystemTime,
}

/// Decides, observation by observation, whether a view is stalled. Pure: time is passed in.
#[derive(Debug, Clone)]
pub struct StallTracker {
    stall_after: Duration,
    last_position: Option<u64>,
    unchanged_since: Instant,
    stalled: Option<(Instant, String)>,
    last_warn: Option<Instant>,
}

impl StallTracker {
    /// A tracker calling a view stalled once its position has not moved for `stall_after`
    /// while events are pending.
    pub fn new(stall_after: Duration, now: Instant) -> Self {
        StallTracker {
            stall_after,
            last_position: None,
            unchanged_since: now,
            stalled: None,
            last_warn: None,
        }
    }

    /// Whether stalled now, with the cause.
    pub fn stalled(&self) -> Option<&str> {
        self.stalled.as_ref().map(|(_, c)| c.as_str())
    }

    /// Records one observation: the view's `position`, the events pending after it, and the
    /// cause of the last failure seen (if any).
    pub fn observe(
        &mut self,
        now: Instant,
        position: u64,
        pending: u64,
        cause: Option<String>,
    ) -> Option<Transition> {
        let moved = self.last_position.is_some_and(|p| p != position);
        self.last_position = Some(position);
        if moved || pending == 0 {
            self.unchanged_since = now;
            self.last_warn = None;
            return self.stalled.take().map(|(since, _)| Transition::Moving {
                stalled_for: now.duration_since(since),
            });
        }
        let idle = now.duration_since(self.unchanged_since);
        if idle < self.stall_after {
            return None;
        }
        let cause = cause.unwrap_or_else(|| {
            format!(
                "no progress for {}s with {pending} events pending (no failure seen by this instance)",
                idle.as_secs()
            )
        });
        match &mut self.stalled {
            None => {
                self.stalled = Some((self.unchanged_since, cause.clone()));
                self.last_warn = Some(now);
                Some(Transition::Stalled { cause })
            }
            Some((since, c)) => {
                *c = cause.clone();
                let since = *since;
                if self
                    .last_warn
                    .is_none_or(|w| now.duration_since(w) >= STALL_WARN_EVERY)
                {
                    self.last_warn = Some(now);
                    Some(Transition::StillStalled {
                        cause,
                        stalled_for: now.duration_since(since),
                    })
                } else {
                    None
                }
            }
        }
    }
}

/// The state of a view, as `GET /v1/admin/views` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViewState {
    /// Caught up or moving.
    Running,
    /// Events pending and the checkpoint has not moved for the stall threshold (see `cause`).
    Stalled,
    /// A rebuild started from this instance is replaying the stream (see `rebuild`).
    Rebuilding,
}

/// Progress of a rebuild in a view's status.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RebuildProgress {
    /// Stream position the new generation has reached.
    pub done: u64,
    /// Stream position it must reach.
    pub total: u64,
}

/// One view's status.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ViewStatus {
    /// View name.
    pub view: String,
    /// View version.
    pub version: u32,
    /// The live generation (0 unless rebuilt).
    pub generation: u32,
    /// The checkpoint: every event up to here is applied, skipped or parked.
    pub position: u64,
    /// The stream's last sequence.
    pub stream_last_seq: u64,
    /// Events after the checkpoint.
    pub lag_events: u64,
    /// How long the oldest event after the checkpoint has been in the stream, in seconds
    /// (0 when caught up).
    pub lag_seconds: f64,
    /// Parked events (in the dead-letter bucket).
    pub parked: u64,
    /// `running`, `stalled` or `rebuilding`.
    pub state: ViewState,
    /// Why it is stalled (state `stalled`).
    pub cause: Option<String>,
    /// Since when it is stalled (RFC 3339; state `stalled`).
    pub stalled_since: Option<String>,
    /// Progress of the rebuild (state `rebuilding`).
    pub rebuild: Option<RebuildProgress>,
    /// The instance that committed the checkpoint last: the active one while the view moves.
    pub active_instance: Option<String>,
    /// When the checkpoint was last committed (RFC 3339).
    pub last_commit_at: Option<String>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(t: SystemTime) -> Option<String> {
    OffsetDateTime::from(t).format(&Rfc3339).ok()
}

/// What the stream and the buckets say about a view now.
struct Observed {
    position: u64,
    stream_last_seq: u64,
    lag_seconds: f64,
    parked: u64,
    active_instance: Option<String>,
    last_commit_at: Option<SystemTime>,
}

impl ViewRuntime {
    /// Notes why the last batch failed (the stall cause), or that one succeeded (`None`).
    pub(crate) fn note_failure(&self, cause: Option<String>) {
        if let Ok(mut f) = self.last_failure.lock() {
            *f = cause;
        }
    }

    fn last_failure(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|f| f.clone())
    }

    async fn observe(&self) -> Result<Observed, StoreError> {
        let checkpoint = store::read_checkpoint_doc(&self.docs).await?;
        let mut stream = self
            .js
            .get_stream(shared::STREAM_NAME)
            .await
            .map_err(|e| StoreError::new("reading the stream", e))?;
        let stream_last_seq = stream
            .info()
            .await
            .map_err(|e| StoreError::new("reading the stream's state", e))?
            .state
            .last_sequence;
        let mut lag_seconds = 0.0;
        if stream_last_seq > checkpoint.position
            && let Ok(m) = stream.get_raw_message(checkpoint.position + 1).await
        {
            lag_seconds = (OffsetDateTime::now_utc() - m.time)
                .as_seconds_f64()
                .max(0.0);
        }
        let parked = store::keys_under(&self.parked, "msg.").await?.len() as u64;
        Ok(Observed {
            position: checkpoint.position,
            stream_last_seq,
            lag_seconds,
            parked,
            active_instance: checkpoint.instance,
            last_commit_at: checkpoint
                .at_ms
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
        })
    }

    /// The view's status now; `rebuild` is the progress of a rebuild this instance runs.
    pub async fn status(&self, rebuild: Option<RebuildProgress>) -> Result<ViewStatus, StoreError> {
        let o = self.observe().await?;
        let stall = self.stall.lock().ok().and_then(|s| s.clone());
        let state = match (&rebuild, &stall) {
            (Some(_), _) => ViewState::Rebuilding,
            (None, Some(_)) => ViewState::Stalled,
            (None, None) => ViewState::Running,
        };
        Ok(ViewStatus {
            view: self.view.name().to_string(),
            version: self.view.version(),
            generation: self.generation,
            position: o.position,
            stream_last_seq: o.stream_last_seq,
            lag_events: o.stream_last_seq.saturating_sub(o.position),
            lag_seconds: o.lag_seconds,
            parked: o.parked,
            state,
            cause: stall.as_ref().map(|s| s.cause.clone()),
            stalled_since: stall.as_ref().and_then(|s| rfc3339(s.since)),
            rebuild,
            active_instance: o.active_instance,
            last_commit_at: o.last_commit_at.and_then(rfc3339),
        })
    }
}

/// Watches one view until `shutdown`: metrics every [`STATUS_POLL`], WARN on a stall (again
/// every [`STALL_WARN_EVERY`] while it lasts), INFO when it moves again.
pub async fn watch(rt: Arc<ViewRuntime>, stall_after: Duration, shutdown: CancellationToken) {
    let mut tracker = StallTracker::new(stall_after, Instant::now());
    let name = rt.view.name();
    loop {
        match rt.observe().await {
            Ok(o) => {
                let pending = o.stream_last_seq.saturating_sub(o.position);
                let labels = &rt.labels;
                let m = &rt.metrics;
                m.position
                    .get_or_create(labels)
                    .set(i64::try_from(o.position).unwrap_or(i64::MAX));
                m.lag_events
                    .get_or_create(labels)
                    .set(i64::try_from(pending).unwrap_or(i64::MAX));
                m.lag_seconds.get_or_create(labels).set(o.lag_seconds);
                m.parked_now
                    .get_or_create(labels)
                    .set(i64::try_from(o.parked).unwrap_or(i64::MAX));
                let transition =
                    tracker.observe(Instant::now(), o.position, pending, rt.last_failure());
                m.stalled
                    .get_or_create(labels)
                    .set(i64::from(tracker.stalled().is_some()));
                let stall = tracker.stalled().map(|cause| Stall {
                    cause: cause.to_owned(),
                    since: SystemTime::now()
                        - Instant::now().duration_since(tracker.unchanged_since),
                });
                if let Ok(mut s) = rt.stall.lock() {
                    *s = stall;
                }
                match transition {
                    Some(Transition::Stalled { cause }) => tracing::warn!(
                        view = %name, position = o.position, pending, cause,
                        active_instance = o.active_instance.as_deref().unwrap_or("none"),
                        "view stalled: its checkpoint does not move while events are pending"
                    ),
                    Some(Transition::StillStalled { cause, stalled_for }) => tracing::warn!(
                        view = %name, position = o.position, pending, cause,
                        stalled_secs = stalled_for.as_secs(),
                        "view still stalled"
                    ),
                    Some(Transition::Moving { stalled_for }) => tracing::info!(
                        view = %name, position = o.position,
                        stalled_secs = stalled_for.as_secs(),
                        "view moving again"
                    ),
                    None => {}
                }
            }
            Err(e) => tracing::debug!(view = %name, error = %e, "cannot read the view's status"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STATUS_POLL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_warns_once_then_every_30_s_and_informs_when_it_moves() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = StallTracker::new(s(10), t0);
        assert_eq!(t.observe(t0, 5, 3, None), None);
        // pending but not for long enough
        assert_eq!(t.observe(t0 + s(9), 5, 3, None), None);
        let cause = Some("committing 3 documents: timed out".to_owned());
        assert_eq!(
            t.observe(t0 + s(10), 5, 3, cause.clone()),
            Some(Transition::Stalled {
                cause: "committing 3 documents: timed out".into()
            })
        );
        assert_eq!(t.stalled(), Some("committing 3 documents: timed out"));
        // not again within 30 s
        for after in [11, 20, 39] {
            assert_eq!(t.observe(t0 + s(after), 5, 4, cause.clone()), None);
        }
        assert!(matches!(
            t.observe(t0 + s(40), 5, 4, None),
            Some(Transition::StillStalled { stalled_for, .. }) if stalled_for == s(40)
        ));
        assert_eq!(t.observe(t0 + s(41), 5, 4, None), None);
        // it moves: INFO once, then quiet
        assert_eq!(
            t.observe(t0 + s(42), 6, 3, None),
            Some(Transition::Moving { stalled_for: s(42) })
        );
        assert_eq!(t.stalled(), None);
        assert_eq!(t.observe(t0 + s(43), 7, 2, None), None);
    }

    #[test]
    fn an_idle_view_is_not_stalled() {
        let t0 = Instant::now();
        let mut t = StallTracker::new(Duration::from_secs(10), t0);
        for i in 0..100 {
            assert_eq!(t.observe(t0 + Duration::from_secs(i), 9, 0, None), None);
        }
        assert_eq!(t.stalled(), None);
        // without a known failure the cause says what is known
        let t1 = t0 + Duration::from_secs(99);
        let Some(Transition::Stalled { cause }) =
            t.observe(t1 + Duration::from_secs(10), 9, 2, None)
        else {
            panic!("not stalled")
        };
        assert!(
            cause.starts_with("no progress for 10s with 2 events pending"),
            "{cause}"
        );
    }
}
