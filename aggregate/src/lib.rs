//! The write side: takes commands over HTTP, loads an aggregate's events from
//! `AGGREGATE_EVENTS`, decides, and appends new events with optimistic concurrency and
//! idempotency. Several instances may run against one JetStream cluster.
//!
//! - [`Service`]: the library API: a service of one's own aggregate types, built with
//!   [`Service::builder`] and run; the shipped binary is [`shipped`] built the same way.
//! - [`domain`]: the [`domain::Aggregate`] trait users implement.
//! - [`account`]: the shipped `account` domain.
//! - [`store`]: reading (batch direct get, ephemeral consumer) and appending (checked publish,
//!   atomic batch).
//! - [`runtime`]: idempotency, cache, decide, conditional append, conflict retries.
//! - [`snapshot`]: state snapshots in KV, a cache of the history.
//! - [`http`]: the HTTP API.
//! - [`live`]: live feeds (Server-Sent Events) of an aggregate's and a tenant's events.

pub mod account;
pub mod domain;
pub mod http;
pub mod live;
mod loaded;
pub mod openapi;
pub mod runtime;
mod service;
pub mod snapshot;
pub mod store;

pub use domain::{Aggregate, CommandSchema, DomainError, History, Snapshotting};
pub use service::{BuildError, Service, ServiceBuilder};
pub use shared::AggregateType;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use platform::auth::Authenticator;
use platform::http::HttpSettings;
use platform::metrics::Metrics;
use platform::service::{Core, ServiceArgs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::domain::DynAggregate;
use crate::runtime::{Runtime, RuntimeSettings};
use crate::store::{EventStore, LoadSettings, LoadStrategy};

/// Service configuration, from flags or environment. No defaults hide production choices:
/// every default below is the documented development value.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "aggregate",
    version,
    about = "The write side of the event store"
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub http_addr: SocketAddr,
    /// Instance id, logging, HTTP limits, shutdown grace, NATS connection, authentication.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// How aggregate histories are read.
    #[arg(long, env = "LOAD_STRATEGY", value_enum, default_value = "auto")]
    pub load_strategy: LoadStrategy,
    /// Aggregates whose state is cached in memory.
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: usize,
    /// Re-decisions after losing a race before answering 409.
    #[arg(long, env = "CONFLICT_RETRIES", default_value_t = 8)]
    pub conflict_retries: u32,
    /// How long command outcomes are kept for idempotent retries, in seconds.
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 7 * 24 * 3600)]
    pub idempotency_ttl_secs: u64,
    /// Snapshot interval per aggregate type, `type=N` (comma-separated): a snapshot every N
    /// events; 0 turns a type's snapshots off. Types that take snapshots default to 100.
    #[arg(long, env = "SNAPSHOT_EVERY", value_delimiter = ',', value_parser = parse_snapshot_every)]
    pub snapshot_every: Vec<(shared::AggregateType, u64)>,
    /// Live feeds (Server-Sent Events).
    #[command(flatten)]
    pub live: platform::sse::LiveArgs,
}

fn parse_snapshot_every(s: &str) -> Result<(shared::AggregateType, u64), String> {
    let (ty, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected type=N, got {s:?}"))?;
    let ty = ty.trim().parse().map_err(|e| format!("{ty:?}: {e}"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|e| format!("{n:?} is not a number of events: {e}"))?;
    Ok((ty, n))
}

impl Config {
    /// Parses flags (without the program name), with the environment as fallback.
    ///
    /// # Panics
    /// On invalid flags (meant for tests and tools; `main` uses `clap::Parser::parse`).
    pub fn parse_from_args(args: &[&str]) -> Self {
        <Self as clap::Parser>::parse_from(std::iter::once("aggregate").chain(args.iter().copied()))
    }
}

/// The shipped domain: `account`, with snapshots. The `aggregate` binary runs it.
pub fn shipped() -> ServiceBuilder {
    Service::builder().snapshotted(account::Account)
}

/// The aggregate types of the shipped domain ([`shipped`]).
pub fn default_aggregates() -> Vec<Arc<dyn DynAggregate>> {
    shipped()
        .build()
        .map(|s| s.aggregates().to_vec())
        .unwrap_or_default()
}

/// Everything a running instance needs.
pub struct App {
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// The NATS client, metrics, instance id and draining flag.
    pub core: Core,
    /// The live feeds, ended at shutdown.
    pub live: Arc<live::Live>,
}

/// Connects, makes sure the stream is there and compatible, and builds the runtime.
pub async fn start(config: &Config, aggregates: Vec<Arc<dyn DynAggregate>>) -> anyhow::Result<App> {
    // a configuration mistake fails at once, not after the start-up retries
    runtime::snapshot_intervals(&aggregates, &config.snapshot_every)
        .map_err(|e| anyhow::anyhow!(e))?;
    let instance = config.service.instance();
    let metrics = Metrics::new("aggregate");
    let (aggregates, shared_metrics) = (&aggregates, &metrics);
    let (client, runtime) = platform::service::connect_and_set_up(
        "aggregate",
        &instance,
        &config.service.nats,
        "setting up the stream and the idempotency and snapshot buckets",
        |_| false,
        move |nats| async move {
            let load = LoadSettings {
                strategy: config.load_strategy,
                ..LoadSettings::recommended()
            };
            let store = EventStore::new(nats.client, load, nats.stream.config.allow_atomic_publish);
            Runtime::new(
                store,
                &nats.js,
                aggregates.clone(),
                RuntimeSettings {
                    cache_capacity: config.cache_capacity,
                    conflict_retries: config.conflict_retries,
                    idempotency_ttl: Duration::from_secs(config.idempotency_ttl_secs),
                    replicas: config.service.nats.stream_replicas,
                    snapshot_every: config.snapshot_every.clone(),
                },
                shared_metrics,
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the runtime (buckets, snapshot settings): {e}"))
        },
    )
    .await?;
    Ok(App {
        runtime: Arc::new(runtime),
        live: Arc::new(live::Live::new(client.clone(), config.live, &metrics)),
        core: Core::new(client, metrics, instance),
    })
}

impl platform::service::Service for App {
    const NAME: &'static str = "aggregate";

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        openapi::document(self.runtime.aggregates())
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn routes(&self) -> Router {
        http::routes(self.runtime.clone()).layer(axum::Extension(self.live.clone()))
    }

    fn spawn(&mut self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let live = self.live.clone();
        vec![platform::shutdown::on_cancel(shutdown, move || {
            live.close()
        })]
    }
}

/// The complete router: API (behind auth) plus ops routes, in the shared middleware stack.
pub fn app(app: &App, auth: Authenticator, http: HttpSettings) -> Router {
    platform::service::router(app, auth, http)
}

/// Runs the shipped domain ([`shipped`]) until `shutdown` is cancelled, then drains within
/// the grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    shipped().build()?.run_with(config, shutdown).await
}
