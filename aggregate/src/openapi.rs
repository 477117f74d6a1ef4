//! The OpenAPI document of the aggregate service, generated from the handlers' annotations and
//! the types they return, served at `/openapi.json`.

use platform::openapi::{BearerAuth, ClosedObjects};
use utoipa::OpenApi;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aggregate",
        description = "The write side: commands in, events appended to JetStream. Errors are application/problem+json."
    ),
    paths(crate::http::command, crate::http::state, crate::http::events, crate::live::tenant_events, platform::health::admin_health),
    components(schemas(crate::http::CommandBody, platform::problem::ProblemDetails)),
    modifiers(&BearerAuth, &ClosedObjects)
)]
pub struct ApiDoc;
