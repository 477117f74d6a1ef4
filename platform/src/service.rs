//! What every service binary shares: the common flags and the serve-and-drain loop.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;

use crate::http::HttpSettings;
use crate::telemetry::LogFormat;
use tokio_util::sync::CancellationToken;

/// Flags every service has (flatten into its `Config`).
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

/// Waits for a service's `start` (which may wait for JetStream, see `STARTUP_TIMEOUT_SECS`)
/// unless `shutdown` fires first, then binds `addr`. `Ok(None)`: shut down during start-up.
///
/// # Errors
/// What `start` returned, or the address cannot be bound.
pub async fn start_and_bind<T>(
    start: impl Future<Output = anyhow::Result<T>>,
    addr: std::net::SocketAddr,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(T, tokio::net::TcpListener)>> {
    let started = tokio::select! {
        started = start => started?,
        () = shutdown.cancelled() => {
            tracing::info!("shut down during start-up");
            return Ok(None);
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
    Ok(Some((started, listener)))
}

/// Serves `router` until `shutdown` fires; then readiness goes false (`draining`), the
/// listener stops accepting, and in-flight requests and `background` (e.g. consumer loops,
/// which watch the same `shutdown`) get `grace` to finish. Flushes the NATS client last.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    client: &async_nats::Client,
    draining: Arc<AtomicBool>,
    shutdown: CancellationToken,
    grace: Duration,
    background: impl Future<Output = ()>,
) {
    let stop = shutdown.clone();
    let flag = draining.clone();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        stop.cancelled().await;
        flag.store(true, Ordering::Relaxed);
    });
    let finished = crate::shutdown::drain_within(&shutdown, grace, async {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "server error");
        }
        background.await;
    })
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!(clean = finished, "service stopped");
}
