//! The OpenAPI document of the aggregate service, generated from the handlers' annotations and
//! served at `/openapi.json`.

use platform::openapi::BearerAuth;
use utoipa::{OpenApi, ToSchema};

/// The response of a command (documentation schema of [`crate::runtime::Outcome`]).
#[derive(ToSchema)]
#[schema(as = Outcome)]
pub struct OutcomeDoc {
    /// The appended events (the wire `Event`: event_id, command_id, tenant_id, aggregate_type,
    /// aggregate_id, version, event_type, payload, occurred_at, metadata).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<()>,
    /// The aggregate's version afterwards.
    pub version: u64,
    /// Stream sequence of the last event: pass it as `min_position` to read your writes.
    pub position: u64,
}

/// The response of `GET` on an aggregate.
#[derive(ToSchema)]
#[schema(as = AggregateState)]
pub struct StateDoc {
    /// The aggregate's state (for an account: status, owner, currency, balance).
    #[schema(value_type = Object)]
    pub state: (),
    /// Number of events.
    pub version: u64,
    /// Stream sequence of the last event.
    pub position: u64,
}

/// The response of `GET .../events`.
#[derive(ToSchema)]
#[schema(as = AggregateEvents)]
pub struct EventsDoc {
    /// `{"position": seq, "event": Event}` in version order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<()>,
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "aggregate",
        description = "The write side: commands in, events appended to JetStream. Errors are application/problem+json."
    ),
    paths(crate::http::command, crate::http::state, crate::http::events, crate::live::tenant_events, platform::health::admin_health),
    components(schemas(crate::http::CommandBody, OutcomeDoc, StateDoc, EventsDoc, platform::health::AdminHealth, platform::problem::ProblemDetails)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
