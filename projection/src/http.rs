//! The HTTP API: documents by key, per-tenant lists, read-your-writes, parked-event admin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use platform::http::{ApiQuery, parse_id};
use platform::openapi::CommonProblems;
use platform::problem::{Problem, ProblemDetails};
use serde::{Deserialize, Serialize};
use shared::TenantId;
use tokio::time::Instant;

use crate::engine::{RebuildProgress, RetryReport, ViewRuntime, ViewStatus};
use crate::live::Live;
use crate::rebuild::{Generations, RebuildError, RebuildState, RebuildStatus, ViewSlot};
use crate::store::{self, Page, ParkedRecord, StoreError, ViewDocument};

/// The views served, by name.
pub type ViewMap = BTreeMap<String, Arc<ViewSlot>>;

#[derive(Clone)]
pub(crate) struct ApiState {
    views: Arc<ViewMap>,
    generations: Generations,
    live: Arc<Live>,
    min_position_timeout: Duration,
}

/// The API routes (apply auth with `route_layer`).
pub fn routes(
    views: Arc<ViewMap>,
    generations: Generations,
    live: Arc<Live>,
    min_position_timeout: Duration,
) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/views/{view}", get(list))
        .route("/v1/tenants/{tenant}/views/{view}/{key}", get(get_doc))
        .route("/v1/admin/views", get(list_views))
        .route("/v1/admin/views/{view}/parked", get(list_parked))
        .route("/v1/admin/views/{view}/parked/retry", post(retry))
        .route("/v1/admin/views/{view}/parked/{seq}/skip", post(skip))
        .route(
            "/v1/admin/views/{view}/rebuild",
            post(start_rebuild).get(rebuild_status),
        )
        .with_state(ApiState {
            views,
            generations,
            live,
            min_position_timeout,
        })
}

/// A document key from the path or query: one or more id tokens joined by `.` (e.g. `summary`,
/// `account.a-1`); anything else is a 400 problem and never reaches a subject.
fn parse_key(key: &str) -> Result<String, Problem> {
    crate::view::validate_key(key).map_err(|e| Problem::invalid_id(e.to_string()))?;
    Ok(key.to_owned())
}

fn unavailable(e: &StoreError) -> Problem {
    tracing::warn!(error = %e, "view storage unavailable");
    Problem::unavailable("the view storage is unavailable; retry later")
}

impl ApiState {
    fn view(&self, name: &str) -> Result<Arc<ViewRuntime>, Problem> {
        self.slot(name).map(|s| s.current())
    }

    fn slot(&self, name: &str) -> Result<&Arc<ViewSlot>, Problem> {
        self.views.get(name).ok_or_else(|| {
            Problem::new(StatusCode::NOT_FOUND, "unknown-view", "Unknown view")
                .detail(format!("there is no view named {name:?}"))
                .with("views", self.views.keys().collect::<Vec<_>>())
        })
    }

    /// Waits until the view's checkpoint reaches `min`, or answers 503. On the instance that
    /// applies the view, its commit wakes the wait; on a standby, the bucket is read again
    /// (every 1, 2, 4 ... 20 ms).
    async fn wait_for(&self, rt: &ViewRuntime, min: Option<u64>) -> Result<(), Problem> {
        let Some(min) = min else { return Ok(()) };
        let deadline = Instant::now() + self.min_position_timeout;
        let mut commits = rt.commits();
        // a write is usually applied within milliseconds: poll fast first, then back off
        let mut pause = Duration::from_millis(1);
        loop {
            if *commits.borrow_and_update() >= min {
                return Ok(());
            }
            // read from KV, not from memory, so a standby instance answers correctly too
            let position = rt.checkpoint().await.map_err(|e| unavailable(&e))?;
            if position >= min {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "position-not-reached",
                    "View not caught up",
                )
                .detail(format!(
                    "the view has processed events up to position {position}, not yet {min}"
                ))
                .with("position", position)
                .with("min_position", min)
                .retry_after(1));
            }
            tokio::select! {
                // this instance committed it (a closed channel cannot happen while `rt` lives;
                // then the pause decides)
                Ok(_) = commits.wait_for(|p| *p >= min) => return Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// Query of document reads.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// Wait (bounded) until the view has applied this stream position (read-your-writes: the
    /// `position` a command returned).
    min_position: Option<u64>,
    /// `true`: answer a live feed (`text/event-stream`) of the document: its current version,
    /// then each new one (`id:` = the view position that produced it; resume with
    /// `Last-Event-ID`; a deletion is `event: deleted`).
    follow: Option<bool>,
}

/// One document of a view.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/views/{view}/{key}",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("view" = String, Path, description = "View name: accounts or tenant-summary"),
        ("key" = String, Path, description = "Document key, id tokens joined by `.`: the account id for accounts; `summary` or `account.<id>` for tenant-summary"),
        ReadQuery,
    ),
    responses(
        (status = 200, description = "The document, its key and the stream position it reflects; with `follow=true` a live feed of Server-Sent Events: `data:` = the same body per version, `id:` = its position, `event: deleted` with `{key, position}` for a deletion, heartbeat comments", content(
            (ViewDocument = "application/json"),
            (platform::openapi::ServerSentEvent = "text/event-stream"),
        )),
        (status = 400, description = "Invalid id or query", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "Unknown view or no such document", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
        (status = 503, description = "Position not reached in time (`position-not-reached`), the document held back by a parked event (`document-held`), NATS unavailable, or this instance's live feeds are all taken", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_doc(
    State(s): State<ApiState>,
    Path((tenant, view, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ReadQuery>,
) -> Result<Response, Problem> {
    let tenant: TenantId = parse_id(&tenant)?;
    let key = parse_key(&key)?;
    let rt = s.view(&view)?;
    s.wait_for(&rt, q.min_position).await?;
    if q.follow == Some(true) {
        let after = platform::sse::last_event_id(&headers)?;
        return s.live.document(s.slot(&view)?.clone(), &tenant, key, after);
    }
    let full = ViewRuntime::full_key(tenant.as_str(), &key);
    if let Some(min) = q.min_position {
        // position N reached means every event up to N is applied or parked: a parked one of
        // this document would make the answer stale, so say so instead
        if let Some(mark) = rt.held_since(&full).await.map_err(|e| unavailable(&e))?
            && mark <= min
        {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "document-held",
                "Document held back by a parked event",
            )
            .detail(format!(
                "an event of this document (stream position {mark}) is parked, so it does not \
                 reflect position {min} yet; see GET /v1/admin/views/{view}/parked"
            ))
            .with("parked_from", mark)
            .with("min_position", min)
            .retry_after(1));
        }
    }
    let doc = store::read_doc(&rt.docs, &full)
        .await
        .map_err(|e| unavailable(&e))?
        .filter(|d| !d.is_deleted())
        .ok_or_else(|| Problem::not_found(format!("view {view} has no document {key:?}")))?;
    Ok(axum::Json(ViewDocument::new(&key, &doc)).into_response())
}

/// Query of document lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<String>,
    /// Wait (bounded) until the view has applied this stream position.
    min_position: Option<u64>,
    /// `true`: answer a live feed (`text/event-stream`) of the tenant's documents: the current
    /// ones, `event: sync` with the position they reflect, then every version an event produces
    /// (`id:` = its position; resume with `Last-Event-ID`; deletions are `event: deleted`).
    /// Not with `limit` or `after`.
    follow: Option<bool>,
}

/// The tenant's documents of a view, paginated.
#[utoipa::path(
    get,
    path = "/v1/tenants/{tenant}/views/{view}",
    params(
        ("tenant" = String, Path, description = "Tenant id"),
        ("view" = String, Path, description = "View name"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of documents and the key to continue after; with `follow=true` a live feed of Server-Sent Events: one `data:` per document (`{key, document, position}`), `event: sync` (`id:` = the position the documents reflect), then each version an event produces (`id:` = its position on the event's last document), `event: deleted` for a deletion", content(
            (Page = "application/json"),
            (platform::openapi::ServerSentEvent = "text/event-stream"),
        )),
        (status = 400, description = "Invalid id or query", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "Unknown view", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
        (status = 503, description = "Position not reached in time, NATS unavailable, or this instance's live feeds are all taken", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list(
    State(s): State<ApiState>,
    Path((tenant, view)): Path<(String, String)>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, Problem> {
    let tenant: TenantId = parse_id(&tenant)?;
    if q.follow == Some(true) {
        if q.limit.is_some() || q.after.is_some() {
            return Err(Problem::invalid_query(
                "follow=true streams every document; it takes no limit or after",
            ));
        }
        let slot = s.slot(&view)?.clone();
        s.wait_for(&slot.current(), q.min_position).await?;
        let after = platform::sse::last_event_id(&headers)?;
        return s.live.list(slot, tenant, after);
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid_query("limit must be between 1 and 1000"));
    }
    let after = match &q.after {
        Some(a) => Some(parse_key(a)?),
        None => None,
    };
    let rt = s.view(&view)?;
    s.wait_for(&rt, q.min_position).await?;
    let page = store::list_docs(&rt.docs, &tenant, after.as_deref(), limit)
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(axum::Json(page).into_response())
}

/// Every view's status (admin).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ViewsStatus {
    /// One entry per view, by name.
    pub views: Vec<ViewStatus>,
}

/// Every view's status: version, generation, position, the stream's last sequence, lag in
/// events and seconds, parked events, state (`running`, `stalled` with the cause, `rebuilding`
/// with progress) and the active instance (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/views",
    responses(
        (status = 200, description = "Every view's status", body = ViewsStatus),
        CommonProblems,
    )
)]
pub(crate) async fn list_views(
    State(s): State<ApiState>,
) -> Result<axum::Json<ViewsStatus>, Problem> {
    let mut views = Vec::with_capacity(s.views.len());
    for slot in s.views.values() {
        let rebuild = slot.rebuild.lock().ok().and_then(|r| {
            (r.state == RebuildState::Running).then_some(RebuildProgress {
                done: r.done,
                total: r.total,
            })
        });
        let status = slot
            .current()
            .status(rebuild)
            .await
            .map_err(|e| unavailable(&e))?;
        views.push(status);
    }
    Ok(axum::Json(ViewsStatus { views }))
}

/// A view's parked events (admin).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ParkedEvents {
    /// The parked records, in stream order.
    pub parked: Vec<ParkedRecord>,
}

/// Parked events of a view (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/views/{view}/parked",
    params(("view" = String, Path, description = "View name")),
    responses(
        (status = 200, description = "Parked events", body = ParkedEvents),
        (status = 404, description = "Unknown view", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn list_parked(
    State(s): State<ApiState>,
    Path(view): Path<String>,
) -> Result<axum::Json<ParkedEvents>, Problem> {
    let rt = s.view(&view)?;
    let parked = rt.parked_records().await.map_err(|e| unavailable(&e))?;
    Ok(axum::Json(ParkedEvents { parked }))
}

/// Query of a retry.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RetryQuery {
    /// `<tenant>.<type>.<id>`; all aggregates when absent.
    aggregate: Option<String>,
}

/// Re-applies parked events in order (admin).
#[utoipa::path(
    post,
    path = "/v1/admin/views/{view}/parked/retry",
    params(("view" = String, Path, description = "View name"), RetryQuery),
    responses(
        (status = 200, description = "What was applied and cleared", body = RetryReport),
        (status = 400, description = "Invalid aggregate", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "Unknown view", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "Some parked events failed again", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn retry(
    State(s): State<ApiState>,
    Path(view): Path<String>,
    ApiQuery(q): ApiQuery<RetryQuery>,
) -> Result<Response, Problem> {
    let rt = s.view(&view)?;
    if let Some(a) = &q.aggregate {
        let parts: Vec<&str> = a.split('.').collect();
        let ok = parts.len() == 3
            && parts[0].parse::<TenantId>().is_ok()
            && parts[1].parse::<shared::AggregateType>().is_ok()
            && parts[2].parse::<shared::AggregateId>().is_ok();
        if !ok {
            return Err(Problem::invalid_query(
                "aggregate must be <tenant>.<type>.<id>",
            ));
        }
    }
    let report = rt
        .retry(crate::engine::RetryFilter {
            aggregate: q.aggregate.as_deref(),
            transient_only: false,
        })
        .await
        .map_err(|e| unavailable(&e))?;
    if report.failed.is_empty() {
        Ok(axum::Json(report).into_response())
    } else {
        Err(Problem::new(
            StatusCode::CONFLICT,
            "retry-failed",
            "Parked events failed again",
        )
        .detail("some parked events were refused again; they stay parked")
        .with("applied", report.applied)
        .with("cleared", &report.cleared)
        .with("failed", &report.failed))
    }
}

/// Drops one parked event (admin).
#[utoipa::path(
    post,
    path = "/v1/admin/views/{view}/parked/{seq}/skip",
    params(("view" = String, Path, description = "View name"), ("seq" = u64, Path, description = "Stream sequence of the parked event")),
    responses(
        (status = 204, description = "Dropped"),
        (status = 400, description = "Invalid sequence", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 404, description = "Unknown view or no parked event there", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn skip(
    State(s): State<ApiState>,
    Path((view, seq)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let rt = s.view(&view)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| Problem::invalid_id("seq must be a stream sequence number"))?;
    if rt.skip(seq).await.map_err(|e| unavailable(&e))? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(Problem::not_found(format!(
            "no parked event at sequence {seq}"
        )))
    }
}

/// The answer to starting a rebuild.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildStarted {
    /// `running`.
    pub state: RebuildState,
}

/// Starts a rebuild of a view (admin): replays the stream into a fresh generation and switches
/// queries to it once caught up. Progress at `GET` on the same path.
#[utoipa::path(
    post,
    path = "/v1/admin/views/{view}/rebuild",
    params(("view" = String, Path, description = "View name")),
    responses(
        (status = 202, description = "Started", body = RebuildStarted),
        (status = 404, description = "Unknown view", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "A rebuild of this view is already running (on this instance or another)", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn start_rebuild(
    State(s): State<ApiState>,
    Path(view): Path<String>,
) -> Result<Response, Problem> {
    let slot = s.slot(&view)?.clone();
    let target = slot.current().view.clone();
    {
        let status = slot.rebuild.lock().map_err(|_| Problem::internal())?;
        if status.state == RebuildState::Running {
            return Err(rebuild_running(&view, "this instance"));
        }
    }
    let claim = match s.generations.claim(&*target).await {
        Ok(claim) => claim,
        Err(RebuildError::Running { instance, .. }) => {
            return Err(rebuild_running(&view, &format!("instance {instance}")));
        }
        Err(RebuildError::Store(e)) => return Err(unavailable(&e)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim a rebuild");
            return Err(Problem::internal());
        }
    };
    {
        let mut status = slot.rebuild.lock().map_err(|_| Problem::internal())?;
        *status = RebuildStatus {
            state: RebuildState::Running,
            generation: Some(claim.generation()),
            ..RebuildStatus::default()
        };
    }
    let generations = s.generations.clone();
    let tracker = slot.clone();
    tokio::spawn(async move {
        let result = generations
            .rebuild(target, claim, |p| {
                if let Ok(mut st) = tracker.rebuild.lock() {
                    st.done = p.done;
                    st.total = p.total;
                    st.rate = p.rate;
                    st.eta_secs = p.eta.map(|d| d.as_secs_f64());
                }
            })
            .await;
        if let Ok(mut st) = tracker.rebuild.lock() {
            match result {
                Ok(g) => {
                    st.state = RebuildState::Done;
                    st.generation = Some(g);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rebuild failed");
                    st.state = RebuildState::Failed;
                    st.error = Some(e.to_string());
                }
            }
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(RebuildStarted {
            state: RebuildState::Running,
        }),
    )
        .into_response())
}

/// 409 `rebuild-running`: `by` (this instance, or another one) is rebuilding `view`.
fn rebuild_running(view: &str, by: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "rebuild-running",
        "A rebuild is already running",
    )
    .detail(format!("view {view} is being rebuilt by {by}"))
}

/// The answer to `GET .../rebuild`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildReport {
    /// The last rebuild started on this instance (`idle` when none was).
    pub rebuild: RebuildStatus,
    /// The generation queries are served from.
    pub live_generation: u32,
}

/// Progress of the last rebuild started on this instance (admin).
#[utoipa::path(
    get,
    path = "/v1/admin/views/{view}/rebuild",
    params(("view" = String, Path, description = "View name")),
    responses(
        (status = 200, description = "State (idle, running, done, failed), progress and the live generation", body = RebuildReport),
        (status = 404, description = "Unknown view", body = ProblemDetails, content_type = "application/problem+json"),
        CommonProblems,
    )
)]
pub(crate) async fn rebuild_status(
    State(s): State<ApiState>,
    Path(view): Path<String>,
) -> Result<axum::Json<RebuildReport>, Problem> {
    let slot = s.slot(&view)?;
    let rebuild = slot
        .rebuild
        .lock()
        .map_err(|_| Problem::internal())?
        .clone();
    Ok(axum::Json(RebuildReport {
        rebuild,
        live_generation: slot.current().generation,
    }))
}
