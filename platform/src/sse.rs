//! Live feeds over HTTP (Server-Sent Events), the part every service's feeds share: their limits
//! (flags), a per-instance slot limit (503 with `Retry-After` beyond it), one task per feed
//! writing into a bounded buffer, slow clients disconnected, heartbeat comments, headers that
//! keep proxies from buffering, and every feed ended at shutdown.
//!
//! What a feed sends and where it reads it from is the service's: it hands [`Feeds::start`] a
//! function that gets a [`FeedSender`] and runs until the feed is done.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, mpsc};

use crate::problem::Problem;
use tokio_util::sync::CancellationToken;

/// The limits of live feeds (flags and environment of the service).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LiveArgs {
    /// Seconds between heartbeat comments on an idle feed.
    #[arg(long, env = "SSE_HEARTBEAT_SECS", default_value_t = 15)]
    pub sse_heartbeat_secs: u64,
    /// Open feeds per instance; beyond it, 503 with Retry-After.
    #[arg(long, env = "SSE_MAX_STREAMS", default_value_t = 1000)]
    pub sse_max_streams: usize,
    /// Events buffered per feed for a client that reads slower than they come.
    #[arg(long, env = "SSE_BUFFER_EVENTS", default_value_t = 256)]
    pub sse_buffer_events: usize,
    /// Seconds a full buffer may wait for the client before the feed is ended.
    #[arg(long, env = "SSE_SLOW_CLIENT_SECS", default_value_t = 10)]
    pub sse_slow_client_secs: u64,
}

impl LiveArgs {
    /// The heartbeat interval (at least 1 s); feeds also poll their source this often, so a
    /// lost wake-up delays an event by at most this much.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.sse_heartbeat_secs.max(1))
    }
}

/// Pauses before a feed looks again after a wake-up that showed nothing new: a plain
/// subscription sees a message when it is published, possibly before JetStream has stored (or
/// an atomic batch committed) it. A poll every heartbeat covers anything later still.
///
/// The steps start small and grow (1, 2, 4, ... ms): storing takes about a millisecond on an
/// idle server and a few under load, and with a first step of 2 ms then 10 ms, an event that
/// missed the first look arrived 12 ms late (the bench's p99).
pub const SETTLE_AFTER_WAKEUP: [Duration; 9] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
    Duration::from_millis(32),
    Duration::from_millis(64),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// Why a feed ended (logged at INFO, never sent).
pub type EndReason = &'static str;

/// The live feeds of one instance: their limits, their count and their end.
pub struct Feeds {
    args: LiveArgs,
    slots: Arc<Semaphore>,
    closing: CancellationToken,
    open: Gauge,
}

/// The sending end of one feed: a bounded buffer towards the client.
pub struct FeedSender {
    tx: mpsc::Sender<Event>,
    slow_client: Duration,
    closing: CancellationToken,
    label: String,
}

impl FeedSender {
    /// Sends one event, waiting at most the slow-client limit for room in the buffer.
    ///
    /// # Errors
    /// The client is gone, too slow (logged at WARN: it can resume with `Last-Event-ID`), or the
    /// service is shutting down.
    pub async fn send(&self, event: Event) -> Result<(), EndReason> {
        tokio::select! {
            sent = self.tx.send_timeout(event, self.slow_client) => match sent {
                Ok(()) => Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::warn!(feed = %self.label, waited = ?self.slow_client, "live feed client too slow: disconnected (it can resume with Last-Event-ID)");
                    Err("client too slow")
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => Err("client gone"),
            },
            () = self.closing.cancelled() => Err("shutting down"),
        }
    }

    /// Waits until `pause` has passed, or ends the feed when the client goes or the service
    /// shuts down first.
    ///
    /// # Errors
    /// Why the feed ends.
    pub async fn idle(&self, pause: Duration) -> Result<(), EndReason> {
        tokio::select! {
            () = self.closing.cancelled() => Err("shutting down"),
            () = self.tx.closed() => Err("client gone"),
            () = tokio::time::sleep(pause) => Ok(()),
        }
    }

    /// Waits for `wake`, or ends the feed when the client goes or the service shuts down first.
    ///
    /// # Errors
    /// Why the feed ends.
    pub async fn until<T>(&self, wake: impl Future<Output = T>) -> Result<T, EndReason> {
        tokio::select! {
            () = self.closing.cancelled() => Err("shutting down"),
            () = self.tx.closed() => Err("client gone"),
            woke = wake => Ok(woke),
        }
    }
}

impl Feeds {
    /// Live feeds with `args` as limits, counted in the gauge `sse_open_streams`.
    pub fn new(args: LiveArgs, metrics: &crate::metrics::Metrics) -> Self {
        let open = Gauge::default();
        metrics.register(
            "sse_open_streams",
            "Server-sent event feeds open on this instance",
            open.clone(),
        );
        Self {
            slots: Arc::new(Semaphore::new(args.sse_max_streams)),
            args,
            closing: CancellationToken::new(),
            open,
        }
    }

    /// The limits.
    pub fn args(&self) -> &LiveArgs {
        &self.args
    }

    /// Ends every open feed (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closing.cancel();
        self.slots.close();
    }

    /// Takes a slot and answers the feed: `run` writes its events into the [`FeedSender`] in its
    /// own task until it returns (the feed then ends; an `Err` is logged at INFO with `label`).
    ///
    /// # Errors
    /// 503 with `Retry-After` when every slot is taken or the service is shutting down.
    pub fn start<F, Fut>(&self, label: String, run: F) -> Result<Response, Problem>
    where
        F: FnOnce(FeedSender) -> Fut,
        Fut: Future<Output = Result<(), EndReason>> + Send + 'static,
    {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            Problem::unavailable(format!(
                "this instance serves its maximum of {} live feeds; retry, possibly on another instance",
                self.args.sse_max_streams
            ))
            .retry_after(1)
        })?;
        let (tx, mut rx) = mpsc::channel::<Event>(self.args.sse_buffer_events.max(1));
        let sender = FeedSender {
            tx,
            slow_client: Duration::from_secs(self.args.sse_slow_client_secs.max(1)),
            closing: self.closing.clone(),
            label: label.clone(),
        };
        let feed = run(sender);
        let open = self.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(reason) = feed.await {
                tracing::info!(feed = %label, reason, "live feed ended");
            }
            open.dec();
            drop(permit);
        });
        let body = futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|e| e.map(Ok::<_, Infallible>))
        });
        let mut response = Sse::new(body)
            .keep_alive(
                KeepAlive::new()
                    .interval(self.args.heartbeat())
                    .text("heartbeat"),
            )
            .into_response();
        // nginx (and other proxies that honour it) pass the feed on unbuffered
        let headers = response.headers_mut();
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        headers.insert("cache-control", HeaderValue::from_static("no-cache"));
        Ok(response)
    }
}

/// The `Last-Event-ID` a reconnecting client sent, as a position (`None`: none sent).
///
/// # Errors
/// 400 when it is not a non-negative integer.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(id) = headers.get("last-event-id") else {
        return Ok(None);
    };
    id.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::invalid_query(
                "Last-Event-ID must be a stream position (a non-negative integer)",
            )
        })
}
