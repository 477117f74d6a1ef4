//! The HTTP conventions both services share: one middleware stack, one set of extractors
//! that turn every client mistake into problem+json, and the ops routes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::metrics::{HttpLabels, Metrics};
use crate::problem::Problem;

/// `X-Request-Id`.
pub const REQUEST_ID: &str = "x-request-id";
/// W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";

/// Limits every service applies to every request.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// Largest accepted request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Longest a request may take; longer ones get 504 problem+json.
    pub request_timeout: Duration,
}

/// Per-request context: set by the middleware, read by handlers (e.g. to put the trace
/// context into the events they append).
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request id (from `X-Request-Id`, or generated).
    pub request_id: String,
    /// The W3C `traceparent` (from the request, or a new root).
    pub traceparent: String,
}

impl RequestContext {
    /// The 32-hex-digit trace id inside `traceparent`.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or("")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(Problem::internal)
    }
}

/// Whether `s` is a valid W3C traceparent (version 00): `00-<32 hex>-<16 hex>-<2 hex>`, ids not
/// all zero.
pub fn valid_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
}

/// A new root `traceparent` (sampled).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The middleware every request goes through: request id and trace context (accepted or
/// generated, echoed in the response and recorded on the request's span, so every log line of
/// the request carries them) and the request timeout.
async fn request_context(
    State(settings): State<HttpSettings>,
    mut req: Request,
    next: Next,
) -> Response {
    let (request_id, traceparent) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (header(REQUEST_ID), header(TRACEPARENT))
    };
    let request_id = request_id
        .filter(|s| valid_request_id(s))
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let traceparent = traceparent
        .map(|s| s.to_ascii_lowercase())
        .filter(|s| valid_traceparent(s))
        .unwrap_or_else(new_traceparent);
    let ctx = RequestContext {
        request_id,
        traceparent,
    };
    let span = tracing::info_span!(
        "http",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace_id(),
        method = %req.method(),
        path = %req.uri().path(),
    );
    req.extensions_mut().insert(ctx.clone());
    let mut response = async {
        let started = Instant::now();
        let response = match tokio::time::timeout(settings.request_timeout, next.run(req)).await {
            Ok(r) => r,
            Err(_) => Problem::timeout().into_response(),
        };
        let status = response.status();
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "request done"
            );
        }
        response
    }
    .instrument(span)
    .await;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.traceparent) {
        headers.insert(TRACEPARENT, v);
    }
    response
}

/// Records request count and latency by matched route.
async fn record_metrics(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let labels = HttpLabels {
        route,
        method,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn not_found(req: Request) -> Problem {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed() -> Problem {
    Problem::method_not_allowed()
}

fn panic_to_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    Problem::internal().into_response()
}

/// Wraps a service's complete router in the shared stack: metrics per matched route, problem
/// fallbacks (404, 405), the body limit, request id / trace context / timeout, and a panic
/// guard that answers 500 problem+json. Call it after every route has been added.
pub fn finish(router: Router, settings: HttpSettings, metrics: Metrics) -> Router {
    router
        .route_layer(middleware::from_fn_with_state(metrics, record_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(settings.body_limit))
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(middleware::from_fn_with_state(settings, request_context))
}

/// What `/readyz` asks: the names of the checks that currently fail (empty = ready).
pub trait Readiness: Send + Sync + 'static {
    /// Failing checks, each a short human-readable reason.
    fn failing(&self) -> Vec<String>;
}

impl<F: Fn() -> Vec<String> + Send + Sync + 'static> Readiness for F {
    fn failing(&self) -> Vec<String> {
        self()
    }
}

#[derive(Clone)]
struct OpsState {
    readiness: Arc<dyn Readiness>,
    metrics: Metrics,
}

/// `/healthz` (the process answers), `/readyz` (every readiness check passes, else 503
/// problem+json listing the failing ones) and `/metrics` (Prometheus text).
pub fn ops_routes(readiness: Arc<dyn Readiness>, metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(|State(s): State<OpsState>| async move {
                let failing = s.readiness.failing();
                if failing.is_empty() {
                    axum::Json(serde_json::json!({"status": "ready"})).into_response()
                } else {
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready")
                        .detail(failing.join("; "))
                        .with("failing", &failing)
                        .retry_after(1)
                        .into_response()
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(s): State<OpsState>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.render(),
                )
            }),
        )
        .with_state(OpsState { readiness, metrics })
}

/// `Json<T>` whose rejections are problem+json: 415 without a JSON content type, 413 over the
/// body limit, 400 for syntax or shape errors (the detail says which field).
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;
    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> Problem {
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
        )
        .detail(r.body_text()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            Problem::unsupported_media_type("send the body as Content-Type: application/json")
        }
        _ => Problem::malformed_body(r.body_text()),
    }
}

/// `Query<T>` whose rejections are 400 problem+json.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| Problem::invalid_query(r.body_text()))
    }
}

/// Parses one path segment into an id type, or a 400 `invalid-id` problem naming the problem.
pub fn parse_id<T>(value: &str) -> Result<T, Problem>
where
    T: std::str::FromStr<Err = shared::IdError>,
{
    value.parse().map_err(|e: shared::IdError| {
        Problem::invalid_id(e.to_string()).with("value_len", value.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_validation() {
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(valid_traceparent(&new_traceparent()));
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(!valid_traceparent(bad), "{bad}");
        }
    }

    #[test]
    fn trace_id_is_extracted() {
        let ctx = RequestContext {
            request_id: "r".into(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        };
        assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
