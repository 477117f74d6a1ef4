//! The write side: takes commands over HTTP, loads an aggregate's events from
//! `AGGREGATE_EVENTS`, decides, and appends new events with optimistic concurrency and
//! idempotency. Several instances may run against one JetStream cluster.
//!
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
pub mod openapi;
pub mod runtime;
pub mod snapshot;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use platform::auth::{AuthArgs, Authenticator};
use platform::http::HttpSettings;
use platform::metrics::Metrics;
use platform::nats::NatsArgs;
use platform::service::ServiceArgs;
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
    /// Instance id, logging, HTTP limits, shutdown grace.
    #[command(flatten)]
    pub service: ServiceArgs,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
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

/// The aggregate types this binary serves (`account` with snapshots).
pub fn default_aggregates() -> Vec<Arc<dyn DynAggregate>> {
    vec![domain::snapshotted(account::Account)]
}

/// Everything a running instance needs.
pub struct App {
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// The NATS client.
    pub client: async_nats::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Set while draining (readiness goes false).
    pub draining: Arc<AtomicBool>,
    /// The live feeds, ended at shutdown.
    pub live: Arc<live::Live>,
    /// This instance's id (`INSTANCE_ID`).
    pub instance: String,
}

/// Connects, makes sure the stream is there and compatible, and builds the runtime.
pub async fn start(config: &Config, aggregates: Vec<Arc<dyn DynAggregate>>) -> anyhow::Result<App> {
    let client = platform::nats::connect(&config.nats, "aggregate", &config.service.instance())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let spec = shared::StreamSpec::events(config.nats.stream_replicas);
    let metrics = Metrics::new("aggregate");
    // a configuration mistake fails at once, not after the start-up retries
    runtime::snapshot_intervals(&aggregates, &config.snapshot_every)
        .map_err(|e| anyhow::anyhow!(e))?;
    let runtime = platform::nats::retry_startup(
        "setting up the stream and the idempotency and snapshot buckets",
        config.nats.startup_timeout(),
        |e| {
            e.downcast_ref::<platform::nats::StreamError>()
                .is_some_and(platform::nats::StreamError::is_permanent)
        },
        || async {
            platform::nats::require_connected(&client, &config.nats)?;
            let info = platform::nats::ensure_stream(&js, &spec).await?;
            let load = LoadSettings {
                strategy: config.load_strategy,
                ..LoadSettings::recommended()
            };
            let store = EventStore::new(client.clone(), load, info.config.allow_atomic_publish);
            Runtime::new(
                store,
                &js,
                aggregates.clone(),
                RuntimeSettings {
                    cache_capacity: config.cache_capacity,
                    conflict_retries: config.conflict_retries,
                    idempotency_ttl: Duration::from_secs(config.idempotency_ttl_secs),
                    replicas: config.nats.stream_replicas,
                    snapshot_every: config.snapshot_every.clone(),
                },
                &metrics,
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the runtime (buckets, snapshot settings): {e}"))
        },
    )
    .await?;
    Ok(App {
        runtime: Arc::new(runtime),
        live: Arc::new(live::Live::new(client.clone(), config.live, &metrics)),
        client,
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
        instance: config.service.instance(),
    })
}

/// The complete router: API (behind auth) plus ops routes, in the shared middleware stack.
pub fn app(app: &App, auth: Authenticator, http: HttpSettings) -> Router {
    let api = http::routes(app.runtime.clone())
        .merge(platform::health::routes(
            app.client.clone(),
            "aggregate",
            app.instance.clone(),
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            platform::auth::require_auth,
        ))
        .layer(axum::Extension(app.live.clone()));
    let client = app.client.clone();
    let draining = app.draining.clone();
    auth.register_metrics(&app.metrics);
    let keys = auth.clone();
    let readiness = move || {
        let mut failing = Vec::new();
        if !platform::nats::is_connected(&client) {
            failing.push("nats: not connected".to_owned());
        }
        // the identity provider's keys have not loaded yet (AUTH_JWKS_URL, AUTH_OIDC_ISSUER_URL)
        failing.extend(keys.not_ready());
        if draining.load(Ordering::Relaxed) {
            failing.push("shutting down".to_owned());
        }
        failing
    };
    let router = api
        .merge(platform::http::ops_routes(
            Arc::new(readiness),
            app.metrics.clone(),
        ))
        .merge(platform::openapi::route(
            &<openapi::ApiDoc as utoipa::OpenApi>::openapi(),
        ));
    platform::http::finish(router, http, app.metrics.clone())
}

/// Runs the service until `shutdown` fires, then drains within the grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let auth = Authenticator::from_args(&config.auth)?;
    let Some((app_state, listener)) = platform::service::start_and_bind(
        start(&config, default_aggregates()),
        config.http_addr,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let router = app(&app_state, auth, config.service.http());
    tracing::info!(addr = %listener.local_addr()?, instance = %config.service.instance(), "aggregate serving");
    serve(
        listener,
        router,
        app_state,
        shutdown,
        config.service.shutdown_grace(),
    )
    .await
}

/// Serves until shutdown, then stops accepting, finishes in-flight requests within `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    app: App,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    // live feeds never finish by themselves: end them when the drain starts, so that the
    // server's graceful shutdown is not held up by them
    let live = app.live.clone();
    let closing = shutdown.clone();
    tokio::spawn(async move {
        closing.cancelled().await;
        live.close();
    });
    platform::service::serve(
        listener,
        router,
        &app.client,
        app.draining.clone(),
        shutdown,
        grace,
        async {},
    )
    .await;
    Ok(())
}
