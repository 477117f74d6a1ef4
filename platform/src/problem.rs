//! RFC 9457 problem details.
//!
//! Every error response of both services is `application/problem+json` with a stable `type`
//! URI of the form `urn:nats-es:problem:<slug>`. Clients match on `type`, never on `title` or
//! `detail`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:nats-es:problem:";

/// A problem details response (boxed: it travels in `Result::Err` a lot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Problem(pub Box<ProblemDetails>);

impl std::ops::Deref for Problem {
    type Target = ProblemDetails;
    fn deref(&self) -> &ProblemDetails {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDetails {
        &mut self.0
    }
}

/// The body of a problem response (RFC 9457).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDetails {
    /// Stable URI identifying the problem kind.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short, human-readable summary of the kind.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// Human-readable explanation of this occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extension members (e.g. `expected_version`, `current_version`).
    #[schema(value_type = Object)]
    #[serde(flatten, default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds after which a retry may succeed (sent as `Retry-After`, not in the body).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of kind `slug` (becomes `urn:nats-es:problem:<slug>`).
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem(Box::new(ProblemDetails {
            type_uri: format!("{TYPE_PREFIX}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            extensions: serde_json::Map::new(),
            retry_after: None,
        }))
    }

    /// Adds the occurrence-specific explanation.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        if let Ok(v) = serde_json::to_value(value) {
            self.extensions.insert(key.to_owned(), v);
        }
        self
    }

    /// Sets `Retry-After` (seconds).
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The slug of the type URI.
    pub fn slug(&self) -> &str {
        self.type_uri
            .strip_prefix(TYPE_PREFIX)
            .unwrap_or(&self.type_uri)
    }

    // --- the kinds both services share ---

    /// 400: a tenant / type / id path segment is not a valid id token.
    pub fn invalid_id(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-id", "Invalid identifier").detail(detail)
    }

    /// 400: the body is not valid JSON or not of the expected shape.
    pub fn malformed_body(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            "Malformed request body",
        )
        .detail(detail)
    }

    /// 400: a query parameter is invalid.
    pub fn invalid_query(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query parameter",
        )
        .detail(detail)
    }

    /// 413: the body is larger than the configured limit.
    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
        )
        .detail(format!(
            "the request body exceeds the limit of {limit} bytes"
        ))
        .with("limit_bytes", limit)
    }

    /// 415: the body is not sent as `application/json`.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail(detail)
    }

    /// 404: no such route or resource.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    /// 405: the route exists but not for this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
        )
    }

    /// 401: missing, expired or badly signed credentials.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail)
    }

    /// 403: the token does not grant access to this tenant.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    /// 503: a dependency (NATS) is unavailable; retry later.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(detail)
        .retry_after(1)
    }

    /// 504: the request took longer than the configured timeout.
    pub fn timeout() -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Request timed out")
            .detail("the request did not complete within the server's request timeout")
            .retry_after(1)
    }

    /// 500: a bug or an unexpected failure; details go to the log, not to the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .detail("an unexpected error occurred; see the server log for this request id")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_else(|_| b"{}".to_vec());
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_as_rfc9457() {
        let p = Problem::invalid_id("tenant id contains '.'").with("field", "tenant");
        let v = serde_json::to_value(&p).expect("json");
        assert_eq!(v["type"], "urn:nats-es:problem:invalid-id");
        assert_eq!(v["status"], 400);
        assert_eq!(v["title"], "Invalid identifier");
        assert_eq!(v["field"], "tenant");
        assert_eq!(p.slug(), "invalid-id");
    }

    #[test]
    fn response_has_media_type_and_retry_after() {
        let r = Problem::unavailable("nats down").into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
