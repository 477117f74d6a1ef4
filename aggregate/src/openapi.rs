//! The OpenAPI document of the aggregate service, generated from the handlers' annotations and
//! the types they return, served at `/openapi.json`.

use std::sync::Arc;

use platform::openapi::{BearerAuth, ClosedObjects};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::{Modify as _, OpenApi};

use shared::AggregateType;

use crate::domain::{CommandSchema, DynAggregate};

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

/// The document of an instance serving `aggregates`: [`ApiDoc`] plus, per aggregate type, a
/// schema `Commands.<type>` of the commands its `POST .../commands` accepts: the type's own
/// schema ([`Aggregate::command_schema`](crate::Aggregate::command_schema)) when it gives one,
/// else the command type names with the payload as an open object.
pub fn document<'a>(
    aggregates: impl IntoIterator<Item = &'a Arc<dyn DynAggregate>>,
) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let components = doc.components.get_or_insert_with(Default::default);
    for aggregate in aggregates {
        let ty = aggregate.aggregate_type();
        let commands = match aggregate.command_schema() {
            Some(CommandSchema {
                schema,
                components: refs,
            }) => {
                components.schemas.extend(refs);
                schema
            }
            None => Schema::Object(names_only(&ty, aggregate.command_type_names()).build()).into(),
        };
        components
            .schemas
            .insert(format!("Commands.{ty}"), commands);
    }
    // the commands' objects are closed as the rest (their payloads refuse unknown fields)
    ClosedObjects.modify(&mut doc);
    doc
}

/// `Commands.<type>` of a type that gives no schema: its command type names, any payload.
fn names_only(ty: &AggregateType, names: &'static [&'static str]) -> ObjectBuilder {
    let command_type = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names.iter().copied()));
    ObjectBuilder::new()
        .description(Some(format!(
            "A command to an aggregate of type `{ty}`: the `type` and `payload` of `CommandBody`."
        )))
        .property("type", command_type)
        .required("type")
        .property(
            "payload",
            ObjectBuilder::new().description(Some("The command type's payload.")),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
}
