//! The OpenAPI document of the projection service, generated from the handlers' annotations
//! and served at `/openapi.json`.

use platform::openapi::BearerAuth;
use utoipa::{OpenApi, ToSchema};

/// One document.
#[derive(ToSchema)]
#[schema(as = ViewDocument)]
pub struct DocumentDoc {
    /// The document key.
    pub key: String,
    /// The document (for accounts: owner, currency, balance, status, version, last_event_at).
    #[schema(value_type = Object)]
    pub document: (),
    /// The stream position of the last event applied to it.
    pub position: u64,
}

/// A page of documents.
#[derive(ToSchema)]
#[schema(as = ViewPage)]
pub struct PageDoc {
    /// Documents, in key order.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<()>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// Parked events.
#[derive(ToSchema)]
#[schema(as = Parked)]
pub struct ParkedDoc {
    /// `{subject, seq, error, body_base64, headers, aggregate, parked_at}` records.
    #[schema(value_type = Vec<Object>)]
    pub parked: Vec<()>,
}

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
    components(schemas(
        DocumentDoc,
        PageDoc,
        ParkedDoc,
        crate::http::ViewsStatus,
        crate::engine::ViewStatus,
        crate::engine::ViewState,
        crate::engine::RebuildProgress,
        platform::health::AdminHealth,
        platform::problem::ProblemDetails
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
