//! Shutdown: SIGTERM / Ctrl-C and a bounded drain. A service's shutdown is one
//! [`CancellationToken`] (tokio-util), cancelled once; a part that must stop on its own as well
//! takes a child token (`child_token`), which the service's cancellation also cancels.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token cancelled on SIGTERM or Ctrl-C. Call once, from `main`.
pub fn on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    shutdown
}

/// Runs `f` in a task of its own once `shutdown` is cancelled (e.g. ends live feeds, which
/// never end by themselves, when the drain starts).
pub fn on_cancel(
    shutdown: &CancellationToken,
    f: impl FnOnce() + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let cancelled = shutdown.clone();
    tokio::spawn(async move {
        cancelled.cancelled().await;
        f();
    })
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs `work` to completion, but gives up `deadline` after `shutdown` is cancelled.
/// Returns `true` if `work` finished by itself.
pub async fn drain_within<F: std::future::Future<Output = ()>>(
    shutdown: &CancellationToken,
    deadline: Duration,
    work: F,
) -> bool {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return true,
        () = shutdown.cancelled() => {},
    }
    match tokio::time::timeout(deadline, work).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                ?deadline,
                "drain deadline passed; exiting with work in flight"
            );
            false
        }
    }
}
