//! OpenAPI conventions: the bearer security scheme, the problem schema, and `/openapi.json`.

use axum::Router;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

/// Adds the `bearer` (JWT) security scheme and requires it on every operation.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// Serves the document at `/openapi.json` (no authentication: it describes, it does not expose).
pub fn route(doc: &utoipa::openapi::OpenApi) -> Router {
    let json = doc.to_json().unwrap_or_else(|_| "{}".to_owned());
    Router::new().route(
        "/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    json,
                )
            }
        }),
    )
}
