//! Live feeds over HTTP: Server-Sent Events of an aggregate's events and of a tenant's events,
//! history first, then every new event as it is appended, each with `id:` = its stream position
//! so that a reconnect with `Last-Event-ID` resumes with no gap and no duplicate.
//!
//! No server-side state per feed: the history and every later event are read with batch direct
//! gets (ADR-31) filtered on the feed's subject, in stream order, a page at a time; a plain core
//! subscription on the same subject only says "something new" (and a poll every heartbeat
//! covers a lost notification). So no consumer can outlive its connection, and a feed holds at
//! most one page and its send buffer in memory, whatever the history's length.
//!
//! Limits: at most `max_streams` open feeds per instance (beyond: 503 with `Retry-After`); a
//! heartbeat comment every `heartbeat`; a client that does not drain its buffer of `buffer`
//! events within `slow_client` is disconnected (it resumes with `Last-Event-ID`); on shutdown
//! every feed ends at once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use platform::problem::Problem;
use platform::shutdown::Shutdown;
use serde_json::{Value, json};
use shared::STREAM_NAME;
use tokio::sync::{Semaphore, mpsc};

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

/// Events read per direct-get page.
const PAGE: usize = 256;
/// How long one page may take to arrive.
const PAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The live feeds of one instance: their limits, their count and their end.
pub struct Live {
    client: async_nats::Client,
    js: jetstream::Context,
    args: LiveArgs,
    slots: Arc<Semaphore>,
    closing: Shutdown,
    open: prometheus_client::metrics::gauge::Gauge,
}

/// Where a feed starts and what it carries.
pub(crate) struct FeedRequest {
    /// The subject filter (no client input reaches it unvalidated: built from id newtypes).
    pub(crate) filter: String,
    /// The first stream sequence to send (from `Last-Event-ID` + 1 or `from_position`).
    pub(crate) from_seq: u64,
    /// Events of an aggregate below this version are skipped (`from_version`).
    pub(crate) min_version: u64,
    /// Keep following after the history.
    pub(crate) follow: bool,
    /// When set, only events of these aggregate types are sent (the filter spans the tenant).
    pub(crate) types: Option<Vec<String>>,
}

/// One stored message, raw.
struct Raw {
    seq: u64,
    subject: String,
    payload: Bytes,
}

impl Live {
    /// Live feeds over `client`, ended by [`Live::close`].
    pub fn new(
        client: async_nats::Client,
        args: LiveArgs,
        metrics: &platform::metrics::Metrics,
    ) -> Self {
        let open = prometheus_client::metrics::gauge::Gauge::default();
        metrics.register(
            "sse_open_streams",
            "Server-sent event feeds open on this instance",
            open.clone(),
        );
        Self {
            js: jetstream::new(client.clone()),
            client,
            slots: Arc::new(Semaphore::new(args.sse_max_streams)),
            args,
            closing: Shutdown::new(),
            open,
        }
    }

    /// Ends every open feed (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.closing.trigger();
        self.slots.close();
    }

    /// The stream's first and last sequence.
    async fn bounds(&self) -> Result<(u64, u64), Problem> {
        let mut stream = self
            .js
            .get_stream(STREAM_NAME)
            .await
            .map_err(|e| Problem::unavailable(format!("reading the stream's state: {e}")))?;
        let info = stream
            .info()
            .await
            .map_err(|e| Problem::unavailable(format!("reading the stream's state: {e}")))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Opens a feed: checks the start against the stream, takes a slot, and streams.
    pub(crate) async fn open(&self, request: FeedRequest) -> Result<Response, Problem> {
        let (first, last) = self.bounds().await?;
        if request.from_seq > last.saturating_add(1) {
            return Err(Problem::invalid_query(format!(
                "the position {} is beyond the stream's last position {last}",
                request.from_seq.saturating_sub(1)
            )));
        }
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| {
            Problem::unavailable(format!(
                "this instance serves its maximum of {} live feeds; retry, possibly on another instance",
                self.args.sse_max_streams
            ))
            .retry_after(1)
        })?;
        let (tx, rx) = mpsc::channel::<SseEvent>(self.args.sse_buffer_events.max(1));
        let mut start = request.from_seq.max(1);
        if start < first && first > 1 {
            let notice = json!({
                "notice": "events before the stream's first position were removed by its limits",
                "requested_position": request.from_seq,
                "first_position": first,
            });
            let _ = tx.try_send(SseEvent::default().event("notice").data(notice.to_string()));
            start = first;
        }
        let feed = Feed {
            client: self.client.clone(),
            filter: request.filter,
            next: start,
            min_version: request.min_version,
            follow: request.follow,
            types: request.types,
            poll: Duration::from_secs(self.args.sse_heartbeat_secs.max(1)),
            slow_client: Duration::from_secs(self.args.sse_slow_client_secs.max(1)),
            closing: self.closing.clone(),
            tx,
        };
        let open = self.open.clone();
        open.inc();
        tokio::spawn(async move {
            let filter = feed.filter.clone();
            if let Err(reason) = feed.run().await {
                tracing::info!(%filter, reason, "live feed ended");
            }
            open.dec();
            drop(permit);
        });
        let body = tokio_stream_from(rx);
        let mut response = Sse::new(body)
            .keep_alive(
                KeepAlive::new()
                    .interval(Duration::from_secs(self.args.sse_heartbeat_secs.max(1)))
                    .text("heartbeat"),
            )
            .into_response();
        // nginx (and other proxies that honour it) pass the feed on unbuffered
        response
            .headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
        response
            .headers_mut()
            .insert("cache-control", HeaderValue::from_static("no-cache"));
        Ok(response)
    }
}

/// The receiving end as the body's stream of events.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<SseEvent>,
) -> impl futures::Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok)))
}

/// One open feed, run by its own task until the client goes, the history ends (no follow),
/// the service shuts down, or the client is too slow.
struct Feed {
    client: async_nats::Client,
    filter: String,
    next: u64,
    min_version: u64,
    follow: bool,
    types: Option<Vec<String>>,
    poll: Duration,
    slow_client: Duration,
    closing: Shutdown,
    tx: mpsc::Sender<SseEvent>,
}

impl Feed {
    async fn run(mut self) -> Result<(), &'static str> {
        // subscribe before the first read, so nothing appended after it goes unnoticed
        let mut wakeups = self
            .client
            .subscribe(self.filter.clone())
            .await
            .map_err(|_| "cannot subscribe")?;
        loop {
            // everything up to the stream's end, a page at a time
            loop {
                let page = self.page().await?;
                let full = page.len() == PAGE;
                for raw in page {
                    self.send(raw).await?;
                }
                if !full {
                    break;
                }
            }
            if !self.follow {
                return Ok(());
            }
            tokio::select! {
                () = self.closing.wait() => return Err("shutting down"),
                () = self.tx.closed() => return Err("client gone"),
                woke = wakeups.next() => {
                    if woke.is_none() {
                        return Err("subscription ended");
                    }
                    // one read serves every notification queued meanwhile
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(wakeups.next()) {}
                }
                () = tokio::time::sleep(self.poll) => {}
            }
        }
    }

    /// One batch direct get from `next`, filtered on the feed's subject.
    async fn page(&self) -> Result<Vec<Raw>, &'static str> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|_| "cannot subscribe")?;
        let request = json!({"seq": self.next, "next_by_subj": self.filter, "batch": PAGE});
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{STREAM_NAME}"),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(|_| "cannot request a page")?;
        let mut out = Vec::new();
        loop {
            let msg = match tokio::time::timeout(PAGE_TIMEOUT, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err("page subscription closed"),
                Err(_) => return Err("a page did not arrive in time"),
            };
            if let Some(status) = msg.status {
                // 204 ends a batch; 404: nothing (more) on the subject
                return match status.as_u16() {
                    204 | 404 => Ok(out),
                    _ => Err("the stream refused a page"),
                };
            }
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let seq = header("Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or("a page message without Nats-Sequence")?;
            let subject = header("Nats-Subject").unwrap_or_default();
            out.push(Raw {
                seq,
                subject,
                payload: msg.payload,
            });
        }
    }

    /// Sends one event (skipping those below `min_version`), waiting at most `slow_client`.
    async fn send(&mut self, raw: Raw) -> Result<(), &'static str> {
        self.next = raw.seq + 1;
        if let Some(types) = &self.types {
            let ty = shared::AggregateAddress::type_of_subject(&raw.subject);
            if !ty.is_some_and(|ty| types.iter().any(|t| t == ty)) {
                return Ok(());
            }
        }
        let event = match serde_json::from_slice::<Value>(&raw.payload) {
            Ok(event) => {
                if event["version"]
                    .as_u64()
                    .is_some_and(|v| v < self.min_version)
                {
                    return Ok(());
                }
                SseEvent::default()
                    .id(raw.seq.to_string())
                    .data(json!({"position": raw.seq, "event": event}).to_string())
            }
            // never skipped silently: the position is there, with why it cannot be shown
            Err(e) => SseEvent::default()
                .id(raw.seq.to_string())
                .event("corrupt")
                .data(
                    json!({"position": raw.seq, "error": format!("not an event: {e}")}).to_string(),
                ),
        };
        tokio::select! {
            sent = self.tx.send_timeout(event, self.slow_client) => match sent {
                Ok(()) => Ok(()),
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::warn!(filter = %self.filter, waited = ?self.slow_client, "live feed client too slow: disconnected (it can resume with Last-Event-ID)");
                    Err("client too slow")
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => Err("client gone"),
            },
            () = self.closing.wait() => Err("shutting down"),
        }
    }
}

/// The first position a feed sends: after `Last-Event-ID` if the client sent one, else
/// `from_position`, else `default`. Not a number: 400.
pub(crate) fn start_position(
    headers: &HeaderMap,
    from_position: Option<u64>,
    default: u64,
) -> Result<u64, Problem> {
    if let Some(id) = headers.get("last-event-id") {
        let id = id
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Problem::invalid_query(
                    "Last-Event-ID must be a stream position (a non-negative integer)",
                )
            })?;
        return Ok(id.saturating_add(1));
    }
    Ok(from_position.unwrap_or(default))
}

/// Query of `GET /v1/tenants/{tenant}/events`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantEventsQuery {
    /// `true`: keep following after the history (else the feed ends at the stream's end).
    #[serde(default)]
    pub follow: Option<bool>,
    /// Only these aggregate types, comma-separated (default: every type).
    #[serde(default)]
    pub types: Option<String>,
    /// The first stream position to send (default 1); `Last-Event-ID` takes precedence.
    #[serde(default)]
    pub from_position: Option<u64>,
}

/// Every event of a tenant in stream order, as Server-Sent Events: the history, then (with
/// `follow=true`) every new event. The integration point for other services.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/events",
    params(
        ("tenant" = String, Path, description = "Tenant id: 1-64 of [A-Za-z0-9_-]"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this stream position"),
        TenantEventsQuery,
    ),
    responses(
        (status = 200, description = "Server-Sent Events: `id:` = stream position, `data:` = `{\"position\": n, \"event\": Event}`; `event: notice` first when the start is older than the stream's first position; heartbeat comments; `event: corrupt` for a stored message that is not an event", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid tenant, type, position or Last-Event-ID; a position beyond the stream's end", body = platform::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid token", body = platform::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 403, description = "Tenant not granted", body = platform::problem::ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "NATS unavailable, or this instance's live feeds are all taken; retry", body = platform::problem::ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn tenant_events(
    axum::extract::Extension(live): axum::extract::Extension<Arc<Live>>,
    axum::extract::Path(tenant): axum::extract::Path<String>,
    headers: HeaderMap,
    platform::http::ApiQuery(q): platform::http::ApiQuery<TenantEventsQuery>,
) -> Result<Response, Problem> {
    let tenant: shared::TenantId = platform::http::parse_id(&tenant)?;
    let types = match q.types.as_deref() {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|t| platform::http::parse_id::<shared::AggregateType>(t.trim()))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let filter = shared::tenant_events_filter(&tenant, types.first().filter(|_| types.len() == 1));
    live.open(FeedRequest {
        filter,
        from_seq: start_position(&headers, q.from_position, 1)?,
        min_version: 0,
        follow: q.follow == Some(true),
        types: (types.len() > 1).then(|| types.iter().map(ToString::to_string).collect()),
    })
    .await
}
