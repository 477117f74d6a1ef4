//! Lag polling: the consumer's `num_pending` into the lag gauge.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use tokio_util::sync::CancellationToken;

use crate::engine::ViewRuntime;

/// Polls the consumer's `num_pending` into the lag gauge until `shutdown`.
pub async fn poll_lag(
    rt: Arc<ViewRuntime>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            rt.metrics
                .lag
                .get_or_create(&rt.labels)
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
