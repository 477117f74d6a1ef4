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

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::response::sse::Event as SseEvent;
use platform::problem::Problem;
use platform::sse::{EndReason, FeedSender, Feeds};
use platform::wakeup::Wakeups;
use serde_json::{Value, json};
use shared::STREAM_NAME;

/// Events read per direct-get page.
const PAGE: usize = 256;

/// The live feeds of one instance: the shared plumbing ([`Feeds`]) over this service's reads.
pub struct Live {
    client: async_nats::Client,
    js: jetstream::Context,
    feeds: Feeds,
    wakeups: Wakeups,
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

use platform::nats::RawMessage as Raw;

impl Live {
    /// Live feeds over `client`, ended by [`Live::close`].
    pub fn new(
        client: async_nats::Client,
        args: platform::sse::LiveArgs,
        metrics: &platform::metrics::Metrics,
    ) -> Self {
        Self {
            js: jetstream::new(client.clone()),
            wakeups: Wakeups::new(client.clone()),
            client,
            feeds: Feeds::new(args, metrics),
        }
    }

    /// Ends every open feed (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.feeds.close();
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
        let mut notice = None;
        let mut start = request.from_seq.max(1);
        if start < first && first > 1 {
            notice = Some(json!({
                "notice": "events before the stream's first position were removed by its limits",
                "requested_position": request.from_seq,
                "first_position": first,
            }));
            start = first;
        }
        let client = self.client.clone();
        let wakeups = self.wakeups.clone();
        let poll = self.feeds.args().heartbeat();
        self.feeds
            .start(request.filter.clone(), move |out| async move {
                if let Some(notice) = notice {
                    out.send(SseEvent::default().event("notice").data(notice.to_string()))
                        .await?;
                }
                Feed {
                    client,
                    wakeups,
                    filter: request.filter,
                    next: start,
                    min_version: request.min_version,
                    follow: request.follow,
                    types: request.types,
                    poll,
                    out,
                }
                .run()
                .await
            })
    }
}

/// One open feed, run by its own task until the client goes, the history ends (no follow),
/// the service shuts down, or the client is too slow.
struct Feed {
    client: async_nats::Client,
    wakeups: Wakeups,
    filter: String,
    next: u64,
    min_version: u64,
    follow: bool,
    types: Option<Vec<String>>,
    poll: Duration,
    out: FeedSender,
}

impl Feed {
    async fn run(mut self) -> Result<(), EndReason> {
        // subscribe before the first read, so nothing appended after it goes unnoticed
        let mut wakeups = self
            .wakeups
            .subscribe(&self.filter)
            .await
            .map_err(|_| "cannot subscribe")?;
        // after a wake-up: the pauses left before looking again when a look found nothing
        let mut settle: &[Duration] = &[];
        loop {
            // everything up to the stream's end, a page at a time
            let before = self.next;
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
            // notifications that came during the read: look again (their messages may be
            // stored only now), then settle as after any wake-up
            if wakeups.drain() {
                settle = &platform::sse::SETTLE_AFTER_WAKEUP;
                continue;
            }
            // a wake-up comes with the publish, possibly before the stream has stored it
            if self.next == before
                && let Some((pause, rest)) = settle.split_first()
            {
                self.out.idle(*pause).await?;
                settle = rest;
                continue;
            }
            let woke = self
                .out
                .until(tokio::time::timeout(self.poll, wakeups.next()))
                .await?;
            match woke {
                Ok(None) => return Err("subscription ended"),
                Ok(Some(_)) => settle = &platform::sse::SETTLE_AFTER_WAKEUP,
                Err(_) => settle = &[],
            }
        }
    }

    /// One batch direct get from `next`, filtered on the feed's subject.
    async fn page(&self) -> Result<Vec<Raw>, EndReason> {
        platform::nats::direct_batch(&self.client, STREAM_NAME, self.next, &self.filter, PAGE).await
    }

    /// Sends one event (skipping those below `min_version`), waiting at most `slow_client`.
    async fn send(&mut self, raw: Raw) -> Result<(), EndReason> {
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
        self.out.send(event).await
    }
}

/// The first position a feed sends: after `Last-Event-ID` if the client sent one, else
/// `from_position`, else `default`. Not a number: 400.
pub(crate) fn start_position(
    headers: &HeaderMap,
    from_position: Option<u64>,
    default: u64,
) -> Result<u64, Problem> {
    Ok(match platform::sse::last_event_id(headers)? {
        Some(id) => id.saturating_add(1),
        None => from_position.unwrap_or(default),
    })
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
        (status = 200, description = "Server-Sent Events: `id:` = stream position, `data:` = `{\"position\": n, \"event\": Event}`; `event: notice` first when the start is older than the stream's first position; heartbeat comments; `event: corrupt` for a stored message that is not an event", content_type = "text/event-stream", body = platform::openapi::ServerSentEvent),
        (status = 400, description = "Invalid tenant, type, position or Last-Event-ID; a position beyond the stream's end", body = platform::problem::ProblemDetails, content_type = "application/problem+json"),
        platform::openapi::CommonProblems,
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
