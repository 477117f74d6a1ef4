//! The library API for a write-side service of one's own domain: register aggregate types on
//! a [`ServiceBuilder`], get a [`Service`], run it. The shipped binary is built the same way
//! ([`crate::shipped`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use shared::AggregateType;
use tokio_util::sync::CancellationToken;

use crate::domain::{self, Aggregate, DynAggregate, Snapshotting};
use crate::{App, Config};

/// A write-side service: its aggregate types, plus everything the platform brings (flags and
/// environment, NATS, authentication, metrics, health, OpenAPI, graceful shutdown).
///
/// ```
/// use aggregate::{Aggregate, AggregateType, DomainError, Service};
/// use serde::{Deserialize, Serialize};
///
/// /// A counter that only goes up.
/// struct Counter;
///
/// #[derive(Deserialize)]
/// #[serde(tag = "type", content = "payload", rename_all = "snake_case")]
/// enum Command {
///     Add { by: u32 },
/// }
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
/// enum Event {
///     Added { by: u32 },
/// }
///
/// #[derive(Debug)]
/// struct Zero;
///
/// impl std::fmt::Display for Zero {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("adding zero changes nothing")
///     }
/// }
///
/// impl std::error::Error for Zero {}
///
/// impl DomainError for Zero {
///     fn code(&self) -> &'static str {
///         "add-zero"
///     }
/// }
///
/// impl Aggregate for Counter {
///     type State = u64;
///     type Command = Command;
///     type Event = Event;
///     type Error = Zero;
///
///     fn aggregate_type(&self) -> AggregateType {
///         "counter".parse().expect("a valid name")
///     }
///     fn command_types(&self) -> &'static [&'static str] {
///         &["add"]
///     }
///     fn apply(&self, state: &mut u64, Event::Added { by }: Event) {
///         *state += u64::from(by);
///     }
///     fn decide(&self, _: &u64, Command::Add { by }: Command) -> Result<Vec<Event>, Zero> {
///         if by == 0 { Err(Zero) } else { Ok(vec![Event::Added { by }]) }
///     }
/// }
///
/// let service = Service::builder().aggregate(Counter).build().expect("one aggregate type");
/// let doc = serde_json::to_value(service.openapi()).expect("a JSON document");
/// assert_eq!(
///     doc["components"]["schemas"]["Commands.counter"]["properties"]["type"]["enum"],
///     serde_json::json!(["add"]),
/// );
/// // a binary ends with `service.run().await` (flags and environment as `aggregate --help` lists)
/// ```
pub struct Service {
    aggregates: Vec<Arc<dyn DynAggregate>>,
}

/// Collects the aggregate types of a [`Service`].
#[derive(Default)]
pub struct ServiceBuilder {
    aggregates: Vec<Arc<dyn DynAggregate>>,
}

/// Why a [`ServiceBuilder`] could not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No aggregate type was registered.
    #[error("no aggregate type is registered")]
    Empty,
    /// Two registrations have the same aggregate type.
    #[error("aggregate type {0} is registered twice")]
    Duplicate(AggregateType),
}

impl ServiceBuilder {
    /// Registers an aggregate type without snapshots (its state is rebuilt from its events).
    #[must_use]
    pub fn aggregate<A: Aggregate>(mut self, aggregate: A) -> Self {
        self.aggregates.push(Arc::new(aggregate));
        self
    }

    /// Registers an aggregate type whose state is snapshotted (see [`Snapshotting`]).
    #[must_use]
    pub fn snapshotted<A: Snapshotting>(mut self, aggregate: A) -> Self {
        self.aggregates.push(domain::snapshotted(aggregate));
        self
    }

    /// The service, if at least one aggregate type is registered and none twice.
    ///
    /// # Errors
    /// [`BuildError`].
    pub fn build(self) -> Result<Service, BuildError> {
        let mut seen = BTreeSet::new();
        for aggregate in &self.aggregates {
            let ty = aggregate.aggregate_type();
            if !seen.insert(ty.clone()) {
                return Err(BuildError::Duplicate(ty));
            }
        }
        if self.aggregates.is_empty() {
            return Err(BuildError::Empty);
        }
        Ok(Service {
            aggregates: self.aggregates,
        })
    }
}

impl Service {
    /// A builder with no aggregate type yet.
    pub fn builder() -> ServiceBuilder {
        ServiceBuilder::default()
    }

    /// The registered aggregate types, as the runtime dispatches on them.
    pub fn aggregates(&self) -> &[Arc<dyn DynAggregate>] {
        &self.aggregates
    }

    /// The OpenAPI document the service serves at `/openapi.json`: the routes, and per
    /// aggregate type a schema `Commands.<type>` of its commands ([`Aggregate::command_schema`](crate::Aggregate::command_schema)).
    pub fn openapi(&self) -> utoipa::openapi::OpenApi {
        crate::openapi::document(&self.aggregates)
    }

    /// Connects and sets up (see [`crate::start`]): a running instance without its HTTP server,
    /// for tests and tools ([`crate::app`] makes its router).
    ///
    /// # Errors
    /// What [`crate::start`] returns.
    pub async fn start(&self, config: &Config) -> anyhow::Result<App> {
        crate::start(config, self.aggregates.clone()).await
    }

    /// Runs until `shutdown` is cancelled, then drains within the grace period.
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

    /// A binary's whole `main`: parses [`Config`] from flags and environment, installs the
    /// log subscriber, runs until SIGTERM or Ctrl-C and drains.
    ///
    /// # Errors
    /// As [`Service::run_with`]; also logged.
    pub async fn run(self) -> anyhow::Result<()> {
        let config = <Config as clap::Parser>::parse();
        platform::telemetry::init(config.service.log_format());
        let shutdown = platform::shutdown::on_signals();
        self.run_with(config, shutdown).await.inspect_err(|e| {
            tracing::error!(error = format!("{e:#}"), "aggregate failed");
        })
    }
}
