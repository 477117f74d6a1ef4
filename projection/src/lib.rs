//! The read side: folds the events of `AGGREGATE_EVENTS` into views (one KV bucket per view
//! version) and serves them over HTTP. Several instances may run: per view exactly one is
//! active (the pinned client of the view's durable consumer), the others are hot standby.
//!
//! - [`Service`]: the library API: a service of one's own views, built with
//!   [`Service::builder`] and run; the shipped binary is [`shipped`] built the same way.
//! - [`view`]: the [`view::View`] trait users implement over JSON; [`TypedView`] for a view
//!   over typed events and documents (one document per event, or several).
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
mod service;
pub mod store;
mod typed;
pub mod view;
pub mod views;

pub use service::{BuildError, Service, ServiceBuilder};
pub use shared::{EventEnvelope, ViewName};
pub use typed::TypedView;
pub use view::{Docs, EventSpec, Fold, Folded, View, ViewError};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use platform::auth::Authenticator;
use platform::http::{HttpSettings, Readiness};
use platform::metrics::Metrics;
use platform::service::{Connected, Core, ServiceArgs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{ConsumerSettings, Projector};
use crate::http::ViewMap;
use crate::metrics::ViewMetrics;
use crate::rebuild::{Generations, ViewSlot};

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
    /// Instance id, logging, HTTP limits, shutdown grace, NATS connection, authentication.
    #[command(flatten)]
    pub service: ServiceArgs,
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
    /// Events per batch (the consumer's max_ack_pending is three batches). Part of the consumer
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
            replicas: self.service.nats.stream_replicas,
            stall_after: Duration::from_millis(self.stall_after_ms),
            rebuild_chunk_bytes: self.rebuild_chunk_mib.max(1) << 20,
        }
    }
}

/// The shipped views: `accounts` and `tenant-summary`. The `projection` binary runs them.
pub fn shipped() -> ServiceBuilder {
    Service::builder()
        .view(views::Accounts)
        .view(views::TenantSummary)
}

/// The views of the shipped domain ([`shipped`]).
pub fn default_views() -> Vec<Arc<dyn View>> {
    shipped()
        .build()
        .map(|s| s.views().to_vec())
        .unwrap_or_default()
}

/// Everything a running instance needs.
pub struct App {
    /// The NATS client, metrics, instance id and draining flag.
    pub core: Core,
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
    /// is cancelled, after finishing the batch in flight.
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

impl platform::service::Service for App {
    const NAME: &'static str = "projection";

    fn openapi(&self) -> utoipa::openapi::OpenApi {
        <openapi::ApiDoc as utoipa::OpenApi>::openapi()
    }

    fn core(&self) -> &Core {
        &self.core
    }

    fn routes(&self) -> Router {
        http::routes(
            self.views.clone(),
            self.generations.clone(),
            self.live.clone(),
            self.min_position_timeout,
        )
    }

    fn readiness(&self) -> Arc<dyn Readiness> {
        let views = self.views.clone();
        Arc::new(move || {
            views
                .iter()
                .filter(|(_, slot)| !slot.current().running.load(Ordering::Relaxed))
                .map(|(name, _)| format!("view {name}: consumer not running"))
                .collect()
        })
    }

    /// The consumer loops, and the end of the live feeds when the drain starts.
    fn spawn(&mut self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let mut tasks = self.spawn_projectors(shutdown);
        let live = self.live.clone();
        tasks.push(platform::shutdown::on_cancel(shutdown, move || {
            live.close()
        }));
        tasks
    }
}

/// Connects, makes sure the stream, the buckets and the consumers are there and compatible.
/// Nothing is consumed until [`App::spawn_projectors`].
pub async fn start(config: &Config, views: Vec<Arc<dyn View>>) -> anyhow::Result<App> {
    view::validate_views(&views)?;
    let instance = config.service.instance();
    let metrics = Metrics::new("projection");
    let view_metrics = ViewMetrics::register(&metrics);
    let (views, view_metrics, id) = (&views, &view_metrics, &instance);
    let (client, (generations, map, projectors)) = platform::service::connect_and_set_up(
        "projection",
        id,
        &config.service.nats,
        "setting up the stream, the view buckets and the consumers",
        is_permanent_start_error,
        move |nats| async move {
            let generations = open_generations(&nats, config, view_metrics, id).await?;
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
        core: Core::new(client, metrics, instance),
        views: Arc::new(map),
        generations,
        projectors,
        min_position_timeout: Duration::from_millis(config.min_position_timeout_ms),
    })
}

async fn open_generations(
    nats: &Connected,
    config: &Config,
    view_metrics: &ViewMetrics,
    instance: &str,
) -> anyhow::Result<Generations> {
    Generations::open(&nats.js, config.consumer(), view_metrics.clone(), instance)
        .await
        .context("opening the view generations bucket")
}

/// Start-up errors that retrying cannot fix besides an incompatible stream: a consumer with
/// another configuration.
fn is_permanent_start_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<rebuild::RebuildError>()
        .is_some_and(rebuild::RebuildError::is_permanent)
}

/// The complete router: API (behind auth) plus ops routes, in the shared middleware stack.
pub fn app(app: &App, auth: Authenticator, http: HttpSettings) -> Router {
    platform::service::router(app, auth, http)
}

/// `projection rebuild --view NAME` of the shipped views ([`rebuild_view`]).
pub async fn rebuild_cli(config: &Config, view_name: &str) -> anyhow::Result<u32> {
    shipped().build()?.rebuild(config, view_name).await
}

/// `rebuild --view NAME`: rebuilds view `view_name` of `views` with a progress bar on stderr
/// (and a log line every few seconds when stderr is not a terminal). Returns the new
/// generation.
pub async fn rebuild_view(
    config: &Config,
    views: &[Arc<dyn View>],
    view_name: &str,
) -> anyhow::Result<u32> {
    let view = views
        .iter()
        .find(|v| v.name().as_str() == view_name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<String> = views.iter().map(|v| v.name().to_string()).collect();
            anyhow::anyhow!("no view named {view_name:?}; views: {}", names.join(", "))
        })?;
    let instance = config.service.instance();
    let metrics = Metrics::new("projection");
    let view_metrics = ViewMetrics::register(&metrics);
    let (view_metrics, id) = (&view_metrics, &instance);
    let (client, generations) = platform::service::connect_and_set_up(
        "projection-rebuild",
        id,
        &config.service.nats,
        "setting up the stream and the view generations bucket",
        is_permanent_start_error,
        move |nats| async move { open_generations(&nats, config, view_metrics, id).await },
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
    let claim = generations.claim(&*view).await?;
    let generation = generations
        .rebuild(view, claim, |p| {
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

/// Serves the shipped views ([`shipped`]) until `shutdown` is cancelled, then drains within
/// the grace period.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    shipped().build()?.run_with(config, shutdown).await
}
