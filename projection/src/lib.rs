//! The read side: folds the events of `AGGREGATE_EVENTS` into views (one KV bucket per view
//! version) and serves them over HTTP. Several instances may run: per view exactly one is
//! active (the pinned client of the view's durable consumer), the others are hot standby.
//!
//! - [`view`]: the [`view::View`] trait users implement.
//! - [`views`]: the shipped `accounts` and `tenant-summary` views.
//! - [`engine`]: consumers, batches, compare-and-set writes, checkpoint, parking.
//! - [`store`]: bucket layout and reads.
//! - [`rebuild`]: generations of a view version and rebuilds that switch without downtime.
//! - [`http`]: the HTTP API.

pub mod engine;
pub mod http;
pub mod live;
pub mod metrics;
pub mod openapi;
pub mod rebuild;
pub mod store;
pub mod view;
pub mod views;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use platform::auth::{AuthArgs, Authenticator};
use platform::http::HttpSettings;
use platform::metrics::Metrics;
use platform::nats::NatsArgs;
use platform::service::ServiceArgs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{ConsumerSettings, Projector};
use crate::http::ViewMap;
use crate::metrics::ViewMetrics;
use crate::rebuild::{Generations, ViewSlot};
use crate::view::View;

/// Service configuration, from flags or environment. Every default is the documented
/// development value.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "projection",
    version,
    about = "The read side of the event store"
)]
pub struct Config {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to serve HTTP on.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8082")]
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
    /// How long a read with `min_position` waits for the view to catch up, in milliseconds.
    #[arg(long, env = "MIN_POSITION_TIMEOUT_MS", default_value_t = 5_000)]
    pub min_position_timeout_ms: u64,
    /// Redelivery delay of an event an instance took and stopped acknowledging (it died), in
    /// milliseconds; the first back-off step. A live instance sends progress acks every third
    /// of it while it applies a batch, so a slow batch is never redelivered meanwhile. Updated
    /// in place on the consumer.
    #[arg(long, env = "ACK_WAIT_MS", default_value_t = 3_000)]
    pub ack_wait_ms: u64,
    /// Deliveries before an event failing for a retryable reason is parked. Part of the
    /// consumer configuration.
    #[arg(long, env = "MAX_DELIVER", default_value_t = 10)]
    pub max_deliver: i64,
    /// How long an active instance may stop pulling before a standby takes over, in ms.
    /// Updated in place on the consumer.
    #[arg(long, env = "PRIORITY_TIMEOUT_MS", default_value_t = 2_000)]
    pub priority_timeout_ms: u64,
    /// Events per batch (also the consumer's max_ack_pending). Part of the consumer
    /// configuration.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// A view with events pending whose checkpoint does not move for this long (ms) is
    /// stalled: logged at WARN with its cause, shown in `GET /v1/admin/views` and metrics.
    #[arg(long, env = "STALL_AFTER_MS", default_value_t = 10_000)]
    pub stall_after_ms: u64,
    /// Documents cached in memory per view.
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: usize,
    /// Memory (MiB, estimated from the documents' sizes) a rebuild folds in memory before it
    /// writes each changed document once; bounds the rebuild's memory, not its speed.
    #[arg(long, env = "REBUILD_CHUNK_MIB", default_value_t = 64)]
    pub rebuild_chunk_mib: usize,
    /// Live feeds (Server-Sent Events).
    #[command(flatten)]
    pub live: platform::sse::LiveArgs,
}

/// Commands besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Replays a view from the start of the stream into a fresh generation with a progress
    /// bar, then switches every instance's queries to it (no moment without a caught-up view).
    Rebuild {
        /// The view to rebuild, e.g. `accounts`.
        #[arg(long)]
        view: String,
    },
}

impl Config {
    /// Parses flags (without the program name), with the environment as fallback.
    ///
    /// # Panics
    /// On invalid flags (meant for tests and tools; `main` uses `clap::Parser::parse`).
    pub fn parse_from_args(args: &[&str]) -> Self {
        <Self as clap::Parser>::parse_from(
            std::iter::once("projection").chain(args.iter().copied()),
        )
    }

    /// The consumer settings.
    pub fn consumer(&self) -> ConsumerSettings {
        let priority_timeout = Duration::from_millis(self.priority_timeout_ms);
        ConsumerSettings {
            ack_wait: Duration::from_millis(self.ack_wait_ms),
            max_deliver: self.max_deliver.max(2),
            priority_timeout,
            batch: self.batch_size.max(1),
            // well below the priority timeout, or the pin is lost between pulls
            pull_expires: (priority_timeout / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(1)),
            cache_capacity: self.cache_capacity,
            replicas: self.nats.stream_replicas,
            stall_after: Duration::from_millis(self.stall_after_ms),
            rebuild_chunk_bytes: self.rebuild_chunk_mib.max(1) << 20,
        }
    }
}

/// The views this binary serves.
pub fn default_views() -> Vec<Arc<dyn View>> {
    vec![Arc::new(views::Accounts), Arc::new(views::TenantSummary)]
}

/// Everything a running instance needs.
pub struct App {
    /// The NATS client.
    pub client: async_nats::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// Set while draining (readiness goes false).
    pub draining: Arc<AtomicBool>,
    /// The views, by name.
    pub views: Arc<ViewMap>,
    /// The live feeds of views, ended at shutdown.
    pub live: Arc<live::Live>,
    /// Opens generations and runs rebuilds.
    pub generations: Generations,
    projectors: Vec<(Arc<ViewSlot>, Projector)>,
    min_position_timeout: Duration,
}

impl App {
    /// Starts every view's consumer loop (and its lag poller); they stop when `shutdown`
    /// fires, after finishing the batch in flight.
    pub fn spawn_projectors(&mut self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        self.projectors
            .drain(..)
            .map(|(slot, p)| {
                tokio::spawn(
                    self.generations
                        .clone()
                        .supervise(slot, p, shutdown.clone()),
                )
            })
            .collect()
    }
}

/// Connects, makes sure the stream, the buckets and the consumers are there and compatible.
/// Nothing is consumed until [`App::spawn_projectors`].
pub async fn start(config: &Config, views: Vec<Arc<dyn View>>) -> anyhow::Result<App> {
    view::validate_views(&views)?;
    let client = platform::nats::connect(&config.nats, "projection", &config.service.instance())
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let spec = shared::StreamSpec::events(config.nats.stream_replicas);
    let metrics = Metrics::new("projection");
    let view_metrics = ViewMetrics::register(&metrics);
    let (generations, map, projectors) = platform::nats::retry_startup(
        "setting up the stream, the view buckets and the consumers",
        config.nats.startup_timeout(),
        is_permanent_start_error,
        || async {
            platform::nats::require_connected(&client, &config.nats)?;
            platform::nats::ensure_stream(&js, &spec).await?;
            let generations = Generations::open(
                &js,
                config.consumer(),
                view_metrics.clone(),
                &config.service.instance(),
            )
            .await
            .context("opening the view generations bucket")?;
            let mut map = BTreeMap::new();
            let mut projectors = Vec::new();
            for view in views.iter().cloned() {
                let name = view.name().to_string();
                let generation = generations
                    .live(&*view)
                    .await
                    .with_context(|| format!("reading the generation of view {name}"))?;
                let projector = generations
                    .open_projector(view, generation)
                    .await
                    .with_context(|| format!("starting view {name}"))?;
                let slot = Arc::new(ViewSlot::new(projector.runtime().clone()));
                projectors.push((slot.clone(), projector));
                map.insert(name, slot);
            }
            Ok((generations, map, projectors))
        },
    )
    .await?;
    Ok(App {
        live: Arc::new(live::Live::new(client.clone(), config.live, &metrics)),
        client,
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
        views: Arc::new(map),
        generations,
        projectors,
        min_position_timeout: Duration::from_millis(config.min_position_timeout_ms),
    })
}

/// Start-up errors that retrying cannot fix: an incompatible stream or consumer.
fn is_permanent_start_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<platform::nats::StreamError>()
        .is_some_and(platform::nats::StreamError::is_permanent)
        || e.downcast_ref::<rebuild::RebuildError>()
            .is_some_and(rebuild::RebuildError::is_permanent)
}

/// The complete router: API (behind auth) plus ops routes, in the shared middleware stack.
pub fn app(app: &App, auth: Authenticator, http: HttpSettings) -> Router {
    let api = http::routes(
        app.views.clone(),
        app.generations.clone(),
        app.live.clone(),
        app.min_position_timeout,
    )
    .merge(platform::health::routes(
        app.client.clone(),
        "projection",
        app.generations.instance.clone(),
    ))
    .route_layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        platform::auth::require_auth,
    ));
    let client = app.client.clone();
    let draining = app.draining.clone();
    let views = app.views.clone();
    auth.register_metrics(&app.metrics);
    let keys = auth.clone();
    let readiness = move || {
        let mut failing = Vec::new();
        if !platform::nats::is_connected(&client) {
            failing.push("nats: not connected".to_owned());
        }
        // the identity provider's keys have not loaded yet (AUTH_JWKS_URL, AUTH_OIDC_ISSUER_URL)
        failing.extend(keys.not_ready());
        for (name, slot) in views.iter() {
            if !slot.current().running.load(Ordering::Relaxed) {
                failing.push(format!("view {name}: consumer not running"));
            }
        }
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

/// `projection rebuild --view NAME`: rebuilds one view with a progress bar on stderr (and a
/// log line every few seconds when stderr is not a terminal). Returns the new generation.
pub async fn rebuild_cli(config: &Config, view_name: &str) -> anyhow::Result<u32> {
    let view = default_views()
        .into_iter()
        .find(|v| v.name().as_str() == view_name)
        .ok_or_else(|| {
            let names: Vec<String> = default_views()
                .iter()
                .map(|v| v.name().to_string())
                .collect();
            anyhow::anyhow!("no view named {view_name:?}; views: {}", names.join(", "))
        })?;
    let client = platform::nats::connect(
        &config.nats,
        "projection-rebuild",
        &config.service.instance(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
    let js = async_nats::jetstream::new(client.clone());
    let metrics = Metrics::new("projection");
    let view_metrics = ViewMetrics::register(&metrics);
    let generations = platform::nats::retry_startup(
        "setting up the stream and the view generations bucket",
        config.nats.startup_timeout(),
        is_permanent_start_error,
        || async {
            platform::nats::require_connected(&client, &config.nats)?;
            platform::nats::ensure_stream(
                &js,
                &shared::StreamSpec::events(config.nats.stream_replicas),
            )
            .await?;
            Generations::open(
                &js,
                config.consumer(),
                view_metrics.clone(),
                &config.service.instance(),
            )
            .await
            .context("opening the view generations bucket")
        },
    )
    .await?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("rebuilding {view_name}"));
    let mut last_log = std::time::Instant::now();
    let generation = generations
        .rebuild(view, |p| {
            bar.set_length(p.total);
            bar.set_position(p.done);
            if bar.is_hidden() && last_log.elapsed() > Duration::from_secs(2) {
                last_log = std::time::Instant::now();
                tracing::info!(
                    done = p.done,
                    total = p.total,
                    rate = format!("{:.0}/s", p.rate),
                    eta_secs = p.eta.map(|d| d.as_secs()),
                    "rebuild progress"
                );
            }
        })
        .await?;
    bar.finish_with_message(format!("rebuilt {view_name} into generation {generation}"));
    let _ = client.flush().await;
    Ok(generation)
}

/// Runs the service until `shutdown` fires, then drains within the grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let auth = Authenticator::from_args(&config.auth)?;
    let Some((app_state, listener)) = platform::service::start_and_bind(
        start(&config, default_views()),
        config.http_addr,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let router = app(&app_state, auth, config.service.http());
    tracing::info!(addr = %listener.local_addr()?, instance = %config.service.instance(), "projection serving");
    serve(
        listener,
        router,
        app_state,
        shutdown,
        config.service.shutdown_grace(),
    )
    .await
}

/// Serves and consumes until shutdown; then stops pulling, finishes and acks the batch in
/// flight and the requests in flight, within `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut app: App,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let projectors = app.spawn_projectors(&shutdown);
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
        async {
            for p in projectors {
                let _ = p.await;
            }
        },
    )
    .await;
    Ok(())
}
