//! The HTTP API of the write side.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::http::{ApiJson, ApiQuery, RequestContext, parse_id};
use platform::openapi::CommonProblems;
use platform::problem::{Problem, ProblemDetails};
use serde::{Deserialize, Serialize};
use shared::{AggregateAddress, CommandId, Event, Metadata, Version};

use crate::domain::DecideError;
use crate::live::{FeedRequest, Live, start_position};
use crate::runtime::{CommandError, CommandRequest, Outcome, Runtime};
use crate::store::{AppendError, LoadError};

/// The body of `POST .../commands`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    /// Client-chosen id for idempotent retries (any UUID); a retry with the same id and body
    /// answers the original outcome.
    #[serde(default)]
    #[schema(value_type = Option<uuid::Uuid>)]
    pub command_id: Option<CommandId>,
    /// Command type, e.g. `deposit`.
    #[serde(rename = "type")]
    pub command_type: String,
    /// Command body, e.g. `{"amount": 100}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Optimistic concurrency: the version the client last saw (409 if it no longer holds).
    #[serde(default)]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub expected_version: Option<Version>,
    /// Extra metadata copied into the events (string values).
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub metadata: Option<Metadata>,
}

/// The answer to `GET` on an aggregate.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AggregateState {
    /// The aggregate's state, an open object whose fields its type defines (for an account:
    /// status, owner, currency, balance).
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// Number of events.
    pub version: Version,
    /// Stream sequence of the last event.
    pub position: u64,
}

/// The answer to `GET .../events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AggregateEvents {
    /// The events, in version order.
    pub events: Vec<PositionedEvent>,
}

/// One event and its place in the stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PositionedEvent {
    /// The event's stream sequence.
    pub position: u64,
    /// The event as stored.
    pub event: Event,
}

/// Query of `GET .../events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// First version to return (default 1).
    #[serde(default)]
    pub from_version: Option<u64>,
    /// At most this many events, 1 to 1000 (default: all from `from_version`); the console
    /// pages an aggregate's history newest first with it. Not with `follow=true`.
    #[serde(default)]
    pub limit: Option<u64>,
    /// `true`: answer a live feed (`text/event-stream`): the events from `from_version`, then
    /// every new one as it is appended; `Last-Event-ID` (a stream position) resumes after it.
    #[serde(default)]
    pub follow: Option<bool>,
}

/// The API routes (no ops routes, no middleware: see [`crate::app`]).
pub fn routes(runtime: Arc<Runtime>) -> Router {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/aggregates/{type}/{id}/commands",
            post(command),
        )
        .route("/v1/tenants/{tenant}/aggregates/{type}/{id}", get(state))
        .route(
            "/v1/tenants/{tenant}/aggregates/{type}/{id}/events",
            get(events),
        )
        .route(
            "/v1/tenants/{tenant}/events",
            get(crate::live::tenant_events),
        )
        .with_state(runtime)
}

fn address(
    runtime: &Runtime,
    (t, ty, id): &(String, String, String),
) -> Result<AggregateAddress, Problem> {
    let address = AggregateAddress::new(parse_id(t)?, parse_id(ty)?, parse_id(id)?);
    if !runtime.store().is_connected() {
        return Err(Problem::unavailable("not connected to NATS"));
    }
    runtime
        .aggregate(&address.aggregate_type)
        .map_err(problem)?;
    Ok(address)
}

/// Handles one command.
#[utoipa::path(
    post,
    path = "/v1/tenants/{tenant}/aggregates/{type}/{id}/commands",
    params(
        ("tenant" = String, Path, description = "Tenant id: 1-64 of [A-Za-z0-9_-]"),
        ("type" = String, Path, description = "Aggregate type, e.g. account"),
        ("id" = String, Path, description = "Aggregate id: 1-64 of [A-Za-z0-9_-]"),
    ),
    request_body(content = CommandBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted; the appended events", body = Outcome),
        (status = 400, description = "Invalid id, body, command type or payload", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "Body not JSON", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 422, description = "Refused by a domain rule", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "Version conflict or command id reused", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 500, description = "The aggregate's stored history is invalid (`corrupt-history`; the detail names the stream sequence of the event)", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn command(
    State(runtime): State<Arc<Runtime>>,
    Path(ids): Path<(String, String, String)>,
    ctx: RequestContext,
    ApiJson(body): ApiJson<CommandBody>,
) -> Result<axum::Json<Outcome>, Problem> {
    let address = address(&runtime, &ids)?;
    let mut metadata = body.metadata.unwrap_or_default();
    metadata.insert(
        shared::TRACEPARENT_METADATA_KEY.to_owned(),
        ctx.traceparent.clone(),
    );
    metadata.insert(
        shared::REQUEST_ID_METADATA_KEY.to_owned(),
        ctx.request_id.clone(),
    );
    let outcome = runtime
        .handle(
            &address,
            CommandRequest {
                command_id: body.command_id,
                command_type: body.command_type,
                payload: body.payload,
                expected_version: body.expected_version,
                metadata,
            },
        )
        .await
        .map_err(problem)?;
    tracing::info!(
        aggregate = %address,
        version = outcome.version.get(),
        position = outcome.position,
        events = outcome.events.len(),
        "command accepted"
    );
    Ok(axum::Json(outcome))
}

/// The aggregate's current state.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/aggregates/{type}/{id}",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("type" = String, Path, description = "Aggregate type"),
        ("id" = String, Path, description = "Aggregate id"),
    ),
    responses(
        (status = 200, description = "State, version and stream position", body = AggregateState),
        (status = 400, description = "Invalid id", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "No events", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 500, description = "The aggregate's stored history is invalid (`corrupt-history`; the detail names the stream sequence of the event)", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn state(
    State(runtime): State<Arc<Runtime>>,
    Path(ids): Path<(String, String, String)>,
) -> Result<axum::Json<AggregateState>, Problem> {
    let address = address(&runtime, &ids)?;
    let loaded = runtime.load(&address).await.map_err(problem)?;
    if loaded.version == Version::ZERO {
        return Err(Problem::not_found(format!(
            "aggregate {address} has no events"
        )));
    }
    Ok(axum::Json(AggregateState {
        state: runtime.state_json(&address, &loaded),
        version: loaded.version,
        position: loaded.last_seq,
    }))
}

/// The aggregate's events, in order.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/aggregates/{type}/{id}/events",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("type" = String, Path, description = "Aggregate type"),
        ("id" = String, Path, description = "Aggregate id"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "Events with their stream positions; with `follow=true` a live feed of Server-Sent Events, each `id:` = the stream position and `data:` = `{\"position\": n, \"event\": Event}`, heartbeat comments, an `event: corrupt` for a stored message that is not an event", content(
            (AggregateEvents = "application/json"),
            (platform::openapi::ServerSentEvent = "text/event-stream"),
        )),
        (status = 400, description = "Invalid id or query", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 500, description = "A stored message is not a valid event (`corrupt-history`; the detail names its stream sequence)", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn events(
    State(runtime): State<Arc<Runtime>>,
    Extension(live): Extension<Arc<Live>>,
    Path(ids): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, Problem> {
    if let Some(limit) = q.limit {
        if !(1..=1000).contains(&limit) {
            return Err(Problem::invalid_query("limit must be between 1 and 1000"));
        }
        if q.follow == Some(true) {
            return Err(Problem::invalid_query(
                "limit pages a history; a live feed (follow=true) has none",
            ));
        }
    }
    let address = address(&runtime, &ids)?;
    if q.follow == Some(true) {
        return live
            .open(FeedRequest {
                filter: address.subject(),
                from_seq: start_position(&headers, None, 1)?,
                min_version: q.from_version.unwrap_or(1),
                follow: true,
                types: None,
            })
            .await;
    }
    let stored = runtime
        .events(&address, Version(q.from_version.unwrap_or(1)))
        .await
        .map_err(problem)?;
    let take = q
        .limit
        .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let events = stored
        .into_iter()
        .take(take)
        .map(|s| PositionedEvent {
            position: s.seq,
            event: s.event,
        })
        .collect();
    Ok(axum::Json(AggregateEvents { events }).into_response())
}

/// Maps a runtime error to problem+json.
pub fn problem(e: CommandError) -> Problem {
    match e {
        CommandError::UnknownAggregateType(t) => Problem::new(
            StatusCode::BAD_REQUEST,
            "unknown-aggregate-type",
            "Unknown aggregate type",
        )
        .detail(format!("no aggregate type named {t} is registered")),
        CommandError::Decide(DecideError::UnknownCommand { .. }) => Problem::new(
            StatusCode::BAD_REQUEST,
            "unknown-command-type",
            "Unknown command type",
        )
        .detail(e.to_string()),
        CommandError::Decide(DecideError::InvalidPayload { .. }) => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-payload",
            "Invalid command payload",
        )
        .detail(e.to_string()),
        CommandError::Decide(DecideError::Domain { code, message }) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            "Command refused by a domain rule",
        )
        .detail(message),
        CommandError::VersionConflict { expected, current } => Problem::new(
            StatusCode::CONFLICT,
            "version-conflict",
            "Expected version does not hold",
        )
        .detail(e.to_string())
        .with("expected_version", expected)
        .with("current_version", current),
        CommandError::CommandIdReused(_) => Problem::new(
            StatusCode::CONFLICT,
            "command-id-reused",
            "Command id reused with a different command",
        )
        .detail(e.to_string()),
        CommandError::ConflictRetriesExhausted(_) => Problem::new(
            StatusCode::CONFLICT,
            "concurrency-conflict",
            "Too many concurrent writers",
        )
        .detail(e.to_string())
        .retry_after(1),
        CommandError::Load(LoadError::Corrupt { .. }) => {
            tracing::error!(error = %e, "corrupt aggregate history");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt-history",
                "The aggregate's stored history is invalid",
            )
            .detail(e.to_string())
        }
        CommandError::Append(AppendError::AtomicUnsupported) => Problem::new(
            StatusCode::NOT_IMPLEMENTED,
            "atomic-batch-unsupported",
            "Multi-event commands need atomic batch publish",
        )
        .detail(e.to_string()),
        CommandError::Append(AppendError::TooLarge) => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event-too-large",
            "An event is larger than the message limit",
        )
        .detail(e.to_string()),
        CommandError::Load(_) | CommandError::Append(_) | CommandError::Idempotency(_) => {
            tracing::warn!(error = %e, "NATS unavailable");
            Problem::unavailable(e.to_string())
        }
    }
}
