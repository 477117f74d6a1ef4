//! The service skeleton: what both service binaries share. The common flags
//! ([`ServiceArgs`]), the start-up preamble ([`connect_and_set_up`]: connect, then set up until
//! JetStream answers), the router around a service's own routes ([`router`]: admin health,
//! auth, readiness, metrics, OpenAPI, the middleware stack), and running it ([`run`]: wait for
//! start-up, bind, [`serve`] and drain). A service brings what is its own through [`Service`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthArgs, Authenticator};
use crate::http::{HttpSettings, Readiness};
use crate::metrics::Metrics;
use crate::nats::NatsArgs;
use crate::telemetry::LogFormat;

/// Flags every service has (flatten into its `Config`): instance, logging, HTTP limits,
/// shutdown grace, NATS connection, authentication.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Instance id (connection name, logs); defaults to the host name and pid.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Log format (default: pretty on a terminal, compact otherwise).
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Largest request body in bytes.
    #[arg(long, env = "BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Request timeout in milliseconds.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// How long in-flight work may take to finish after SIGTERM, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
}

impl ServiceArgs {
    /// The instance id, or `<hostname>-<pid>`.
    pub fn instance(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The HTTP limits.
    pub fn http(&self) -> HttpSettings {
        HttpSettings {
            body_limit: self.body_limit,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        }
    }

    /// The drain deadline after SIGTERM.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The log format to install.
    pub fn log_format(&self) -> LogFormat {
        self.log_format.unwrap_or_else(LogFormat::detect)
    }
}

/// What every running service has.
pub struct Core {
    /// The NATS client.
    pub client: async_nats::Client,
    /// Metrics, prefixed with the service's name.
    pub metrics: Metrics,
    /// This instance's id (`INSTANCE_ID`).
    pub instance: String,
    /// Set while draining (readiness goes false).
    pub draining: Arc<AtomicBool>,
}

impl Core {
    /// A service that is not draining.
    pub fn new(client: async_nats::Client, metrics: Metrics, instance: String) -> Self {
        Core {
            client,
            metrics,
            instance,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// What a service brings to the skeleton; everything else is the same for every service.
pub trait Service {
    /// The service's name: in the health route's answer and the "serving" log line.
    const NAME: &'static str;
    /// The OpenAPI document of its routes, served at `/openapi.json` (a method, not a type:
    /// the document lists what the instance was built with, e.g. its aggregate types).
    fn openapi(&self) -> utoipa::openapi::OpenApi;
    /// What every running service has.
    fn core(&self) -> &Core;
    /// Its own routes; the skeleton adds `GET /v1/admin/health` and requires auth on all.
    fn routes(&self) -> Router;
    /// Its own reasons not to be ready, asked on every `/readyz` after the NATS connection
    /// and the identity provider's keys, before draining. None by default.
    fn readiness(&self) -> Arc<dyn Readiness> {
        Arc::new(Vec::<String>::new)
    }
    /// Starts what runs beside the HTTP server until `shutdown` is cancelled (consumer loops;
    /// ending live feeds, which never end by themselves, when the drain starts); the drain waits
    /// for the tasks within the grace period.
    fn spawn(&mut self, shutdown: &CancellationToken) -> Vec<JoinHandle<()>>;
}

/// What a service's set-up step gets from [`connect_and_set_up`].
pub struct Connected {
    /// The client, connected when the step started.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: jetstream::Context,
    /// The events stream as the server has it: created, or found compatible.
    pub stream: stream::Info,
}

/// The start-up preamble of every service (and tool): connects as `<connection>-<instance>`
/// (reconnecting forever), then runs `set_up` until it succeeds, with
/// [`crate::nats::retry_startup`]: each attempt first requires the connection and makes sure
/// the events stream is there and compatible ([`crate::nats::ensure_stream`]), then runs the
/// service's own get-or-create steps. An incompatible stream, or an error `permanent` says
/// retrying cannot fix, fails at once; `what` names the attempts in the log.
///
/// # Errors
/// The client cannot be configured (e.g. an unreadable credentials file), a permanent error, or
/// the last error once the start-up timeout has passed.
pub async fn connect_and_set_up<T, F, Fut>(
    connection: &str,
    instance: &str,
    nats: &NatsArgs,
    what: &str,
    permanent: impl Fn(&anyhow::Error) -> bool,
    set_up: F,
) -> anyhow::Result<(async_nats::Client, T)>
where
    F: Fn(Connected) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let client = crate::nats::connect(nats, connection, instance)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to NATS: {e}"))?;
    let js = jetstream::new(client.clone());
    let spec = shared::StreamSpec::events(nats.stream_replicas);
    let set = crate::nats::retry_startup(
        what,
        nats.startup_timeout(),
        |e| {
            e.downcast_ref::<crate::nats::StreamError>()
                .is_some_and(crate::nats::StreamError::is_permanent)
                || permanent(e)
        },
        || async {
            crate::nats::require_connected(&client, nats)?;
            let stream = crate::nats::ensure_stream(&js, &spec).await?;
            set_up(Connected {
                client: client.clone(),
                js: js.clone(),
                stream,
            })
            .await
        },
    )
    .await?;
    Ok((client, set))
}

/// The complete router of a service: its routes and the admin health route behind auth, the
/// ops routes (`/healthz`, `/readyz`: NATS connected, the identity provider's keys loaded, the
/// service's own checks, not draining; `/metrics`), `/openapi.json`, all in the shared
/// middleware stack ([`crate::http::finish`]).
pub fn router<S: Service>(service: &S, auth: Authenticator, http: HttpSettings) -> Router {
    let core = service.core();
    let api = service
        .routes()
        .merge(crate::health::routes(
            core.client.clone(),
            S::NAME,
            core.instance.clone(),
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::require_auth,
        ));
    auth.register_metrics(&core.metrics);
    let client = core.client.clone();
    let draining = core.draining.clone();
    let own = service.readiness();
    let readiness = move || {
        let mut failing = Vec::new();
        if !crate::nats::is_connected(&client) {
            failing.push("nats: not connected".to_owned());
        }
        // the identity provider's keys have not loaded yet (AUTH_JWKS_URL, AUTH_OIDC_ISSUER_URL)
        failing.extend(auth.not_ready());
        failing.extend(own.failing());
        if draining.load(Ordering::Relaxed) {
            failing.push("shutting down".to_owned());
        }
        failing
    };
    let router = api
        .merge(crate::http::ops_routes(
            Arc::new(readiness),
            core.metrics.clone(),
        ))
        .merge(crate::openapi::route(&service.openapi()));
    crate::http::finish(router, http, core.metrics.clone())
}

/// Runs a service until `shutdown` is cancelled: the authenticator first (a configuration
/// mistake fails before anything else), then `start` (which may wait for JetStream, see
/// `STARTUP_TIMEOUT_SECS`) unless `shutdown` comes first, then binds `addr` and serves
/// ([`serve`]) with the limits and grace of `args`.
///
/// # Errors
/// An invalid auth configuration, what `start` returned, or `addr` cannot be bound.
pub async fn run<S: Service>(
    addr: SocketAddr,
    args: &ServiceArgs,
    start: impl Future<Output = anyhow::Result<S>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let auth = Authenticator::from_args(&args.auth)?;
    let service = tokio::select! {
        started = start => started?,
        () = shutdown.cancelled() => {
            tracing::info!("shut down during start-up");
            return Ok(());
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    let router = router(&service, auth, args.http());
    tracing::info!(addr = %listener.local_addr()?, instance = %service.core().instance, "{} serving", S::NAME);
    serve(listener, router, service, shutdown, args.shutdown_grace()).await;
    Ok(())
}

/// The largest request head (and read/write buffer) a connection holds: hyper's minimum.
/// Larger, hyper grows each connection's read buffer to 16 KiB after the first request, which
/// an open live feed keeps for its lifetime (measured with heaptrack). Tokens of several KiB
/// still fit, as they do through the gateway (nginx's default header buffers are 8 KiB).
pub const MAX_HTTP_BUFFER: usize = 8192;

/// Serves `router` and the service's own tasks ([`Service::spawn`]) until `shutdown` is
/// cancelled; then readiness goes false (`draining`), the listener stops accepting, and
/// in-flight requests and the tasks (which watch the same `shutdown`) get `grace` to finish.
/// Flushes the NATS client last.
pub async fn serve<S: Service>(
    listener: tokio::net::TcpListener,
    router: Router,
    mut service: S,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let tasks = service.spawn(&shutdown);
    let client = service.core().client.clone();
    let draining = service.core().draining.clone();
    let finished = crate::shutdown::drain_within(&shutdown, grace, async {
        serve_connections(listener, router, &shutdown, &draining).await;
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!(clean = finished, "service stopped");
}

/// Accepts connections (`TCP_NODELAY`: a live feed's small events go out at once) and serves
/// each with hyper (HTTP/1.1, as before, buffers of [`MAX_HTTP_BUFFER`]) until `shutdown`;
/// then stops accepting, asks every connection to finish its request in flight, and waits.
/// Each connection shares the router through its `Arc` (serving a `Router` with `axum::serve`
/// clones every route's boxed service per connection, ~19 KiB each).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: &CancellationToken,
    draining: &AtomicBool,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // e.g. out of file descriptors: wait for some to be released
                    tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_HTTP_BUFFER)
                .serve_connection(io, service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    draining.store(true, Ordering::Relaxed);
    drop(listener);
    graceful.shutdown().await;
}
