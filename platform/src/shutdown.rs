//! Shutdown: SIGTERM / Ctrl-C and a bounded drain.

use std::time::Duration;

use tokio::sync::watch;

/// A shutdown trigger shared by every task of a service.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A trigger that has not fired.
    pub fn new() -> Self {
        Shutdown {
            tx: watch::channel(false).0,
        }
    }

    /// Fires the trigger (idempotent).
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Whether the trigger has fired.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the trigger has fired.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // the sender lives in self, so this only ends when the value becomes true
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Fires the trigger on SIGTERM or Ctrl-C. Spawn once from `main`.
    pub fn on_signals(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            this.trigger();
        });
    }
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

/// Runs `work` to completion, but gives up `deadline` after `shutdown` fires.
/// Returns `true` if `work` finished by itself.
pub async fn drain_within<F: std::future::Future<Output = ()>>(
    shutdown: &Shutdown,
    deadline: Duration,
    work: F,
) -> bool {
    tokio::pin!(work);
    tokio::select! {
        () = &mut work => return true,
        () = shutdown.wait() => {},
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
