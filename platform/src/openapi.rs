//! OpenAPI conventions: the bearer security scheme, the problem responses every route shares,
//! closed response objects, and `/openapi.json`.

use axum::Router;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use crate::problem::ProblemDetails;

/// The problem responses every API route can give, whatever it does: no or a bad token, a token
/// that does not grant the route, and a dependency unavailable for now. List it in a path's
/// `responses(..)` after the route's own; a route that says more about one of these statuses
/// lists its own after it (the later entry wins).
#[derive(utoipa::IntoResponses)]
pub enum CommonProblems {
    /// Missing or invalid token (`unauthorized`; the detail names the failed check).
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(ProblemDetails),
    /// The token does not grant the path's tenant, or the route is an admin route and the token
    /// does not grant admin (`forbidden`).
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemDetails),
    /// Unavailable for now: NATS or the storage behind the route, the identity provider's keys,
    /// or this instance's live feeds all taken; retry (after `Retry-After` when given). The
    /// problem's `type` names the cause.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(ProblemDetails),
}

/// One event of a live feed (`text/event-stream`), as a client's parser hands it over: the
/// schema of each event of a feed, not of the stream's bytes (heartbeat comments are not
/// events). Each route says what its `data` holds.
#[derive(utoipa::ToSchema)]
pub struct ServerSentEvent {
    /// The event's `id:`, a stream or view position (resume after it with `Last-Event-ID`).
    pub id: Option<String>,
    /// The event's `event:` type; absent for a plain update.
    pub event: Option<String>,
    /// The event's `data:`, one line of JSON.
    pub data: String,
    /// The event's `retry:` (reconnection delay in milliseconds), when given.
    pub retry: Option<u64>,
}

/// Closes every object schema of the document that lists its properties and says nothing of
/// others (`additionalProperties: false`): a response body has exactly the fields its type
/// declares, so a client (and the conformance tests) can rely on it. An object that is open by
/// nature says so and stays open: an `Object` without properties (a view's document, an
/// aggregate's state), a map (`additionalProperties` given), or a composition (a problem is an
/// `allOf` of its members and its open extension members).
pub struct ClosedObjects;

impl Modify for ClosedObjects {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            for schema in components.schemas.values_mut() {
                close(schema);
            }
        }
    }
}

fn close(schema: &mut RefOr<Schema>) {
    let RefOr::T(schema) = schema else { return };
    match schema {
        Schema::Object(object) => {
            if !object.properties.is_empty() && object.additional_properties.is_none() {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
            object.properties.values_mut().for_each(close);
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                close(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(close),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(close),
        // not the parts of an `allOf`: closed each on its own, they would refuse each other's
        // fields
        _ => {}
    }
}

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
