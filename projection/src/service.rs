//! The library API for a read-side service of one's own views: register views on a
//! [`ServiceBuilder`], get a [`Service`], run it. The shipped binary is built the same way
//! ([`crate::shipped`]).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::typed::{Typed, TypedView};
use crate::view::{self, View, ViewDefinitionError};
use crate::{App, Command, Config};

/// A read-side service: its views, plus everything the platform brings (flags and
/// environment, NATS, authentication, metrics, health, OpenAPI, graceful shutdown, the
/// `rebuild` subcommand).
///
/// ```
/// use projection::{EventEnvelope, EventSpec, Fold, Service, View, ViewError, ViewName};
/// use serde_json::{Value, json};
///
/// /// How many events each aggregate of type `counter` has.
/// struct Events;
///
/// impl View for Events {
///     fn name(&self) -> ViewName {
///         "counter-events".parse().expect("a valid name")
///     }
///     fn version(&self) -> u32 {
///         1
///     }
///     fn events(&self) -> Vec<EventSpec> {
///         vec![EventSpec::new("counter", "added")]
///     }
///     fn key(&self, env: &EventEnvelope) -> Option<String> {
///         Some(env.aggregate_id.to_string())
///     }
///     fn apply(&self, doc: Option<Value>, _: &EventEnvelope) -> Result<Fold, ViewError> {
///         let n = doc.and_then(|d| d["events"].as_u64()).unwrap_or(0);
///         Ok(Fold::Set(json!({ "events": n + 1 })))
///     }
/// }
///
/// let service = Service::builder().view(Events).build().expect("a valid view");
/// assert_eq!(service.views()[0].name().as_str(), "counter-events");
/// let doc = serde_json::to_value(service.openapi()).expect("a JSON document");
/// assert!(doc["paths"]["/v1/tenants/{tenant}/views/{view}/{key}"].is_object());
/// // a binary ends with `service.run().await` (flags and environment as `projection --help` lists)
/// ```
pub struct Service {
    views: Vec<Arc<dyn View>>,
}

/// Collects the views of a [`Service`].
#[derive(Default)]
pub struct ServiceBuilder {
    views: Vec<Arc<dyn View>>,
}

/// Why a [`ServiceBuilder`] could not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No view was registered.
    #[error("no view is registered")]
    Empty,
    /// A view, or the set of views, is invalid (see [`view::validate_views`]).
    #[error(transparent)]
    View(#[from] ViewDefinitionError),
}

impl ServiceBuilder {
    /// Registers a view.
    #[must_use]
    pub fn view<V: View>(mut self, view: V) -> Self {
        self.views.push(Arc::new(view));
        self
    }

    /// Registers a typed view (see [`TypedView`]).
    #[must_use]
    pub fn typed_view<V: TypedView>(mut self, view: V) -> Self {
        self.views.push(Arc::new(Typed(view)));
        self
    }

    /// The service, if at least one view is registered and the views pass
    /// [`view::validate_views`] (the check start-up makes, made here at once).
    ///
    /// # Errors
    /// [`BuildError`].
    pub fn build(self) -> Result<Service, BuildError> {
        if self.views.is_empty() {
            return Err(BuildError::Empty);
        }
        view::validate_views(&self.views)?;
        Ok(Service { views: self.views })
    }
}

impl Service {
    /// A builder with no view yet.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// The registered views.
    pub fn views(&self) -> &[Arc<dyn View>] {
        &self.views
    }

    /// The OpenAPI document the service serves at `/openapi.json`.
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        <crate::openapi::ApiDoc as utoipa::OpenApi>::openapi()
    }

    /// Connects and sets up (see [`crate::start`]): a running instance without its HTTP server,
    /// for tests and tools ([`crate::app`] makes its router).
    ///
    /// # Errors
    /// What [`crate::start`] returns.
    pub async fn start(&self, config: &Config) -> anyhow::Result<App> {
        crate::start(config, self.views.clone()).await
    }

    /// Serves until `shutdown` is cancelled, then drains within the grace period.
    ///
    /// # Errors
    /// An invalid configuration, a start-up that did not succeed in time, an address that
    /// cannot be bound.
    pub async fn run_with(
        &self,
        config: Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        platform::service::run(
            config.http_addr,
            &config.service,
            self.start(&config),
            shutdown,
        )
        .await
    }

    /// `rebuild --view NAME` (see [`crate::rebuild_view`]): returns the new generation.
    ///
    /// # Errors
    /// No view of that name, or what the rebuild returns.
    pub async fn rebuild(&self, config: &Config, view_name: &str) -> anyhow::Result<u32> {
        crate::rebuild_view(config, &self.views, view_name).await
    }

    /// A binary's whole `main`: parses [`Config`] from flags and environment, installs the
    /// log subscriber, then serves until SIGTERM or Ctrl-C and drains, or runs the `rebuild`
    /// subcommand.
    ///
    /// # Errors
    /// As [`Service::run_with`] or [`Service::rebuild`]; also logged.
    pub async fn run(self) -> anyhow::Result<()> {
        let config = <Config as clap::Parser>::parse();
        platform::telemetry::init(config.service.log_format());
        if let Some(Command::Rebuild { view }) = &config.command {
            let generation = self.rebuild(&config, view).await.inspect_err(|e| {
                tracing::error!(error = format!("{e:#}"), "rebuild failed");
            })?;
            tracing::info!(view = %view, generation, "rebuild done");
            return Ok(());
        }
        let shutdown = platform::shutdown::on_signals();
        self.run_with(config, shutdown).await.inspect_err(|e| {
            tracing::error!(error = format!("{e:#}"), "projection failed");
        })
    }
}
