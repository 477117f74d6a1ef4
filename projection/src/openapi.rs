//! The OpenAPI document of the projection service, generated from the handlers' annotations
//! and the types they return, served at `/openapi.json`.

use platform::openapi::{BearerAuth, ClosedObjects};
use utoipa::OpenApi;

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "projection",
        description = "The read side: views kept current from JetStream. Errors are application/problem+json."
    ),
    paths(
        crate::http::get_doc,
        crate::http::list,
        crate::http::list_views,
        crate::http::list_parked,
        crate::http::retry,
        crate::http::skip,
        crate::http::start_rebuild,
        crate::http::rebuild_status,
        platform::health::admin_health
    ),
    components(schemas(platform::problem::ProblemDetails)),
    modifiers(&BearerAuth, &ClosedObjects)
)]
pub struct ApiDoc;
