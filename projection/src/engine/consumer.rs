//! The durable consumer of a view version: its configuration, and creating, accepting or
//! refusing the one the server has.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use platform::differences::Differences;

use crate::store::StoreError;
use crate::view::View;

/// The priority group every instance pulls in.
pub const PRIORITY_GROUP: &str = "projection";

/// Batches the server may deliver ahead of the one being committed (`max_ack_pending` is this
/// many batches): the next batch arrives while this one's writes are in flight.
pub const BATCHES_IN_FLIGHT: usize = 3;

/// The longest redelivery delay of the consumer's back-off.
pub const REDELIVERY_BACKOFF_CAP: Duration = Duration::from_secs(60);

/// How the durable consumers are configured and pulled.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Unacknowledged messages are redelivered after this long (first back-off step).
    pub ack_wait: Duration,
    /// Deliveries before a message that keeps failing for a retryable reason is parked.
    pub max_deliver: i64,
    /// A pinned instance that stops pulling for this long loses the pin to a standby.
    pub priority_timeout: Duration,
    /// Messages per batch (the consumer's `max_ack_pending` is [`BATCHES_IN_FLIGHT`] of them).
    pub batch: usize,
    /// Expiry of each pull request (well below `priority_timeout`).
    pub pull_expires: Duration,
    /// Documents kept in memory between batches.
    pub cache_capacity: usize,
    /// Replicas of the view buckets.
    pub replicas: usize,
    /// A view with events pending whose checkpoint does not move for this long is stalled.
    pub stall_after: Duration,
    /// The memory (estimated bytes of documents) a rebuild folds before it writes them.
    pub rebuild_chunk_bytes: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            ack_wait: Duration::from_secs(3),
            max_deliver: 10,
            priority_timeout: Duration::from_secs(2),
            batch: 500,
            pull_expires: Duration::from_secs(1),
            cache_capacity: 100_000,
            replicas: 1,
            stall_after: Duration::from_secs(10),
            rebuild_chunk_bytes: 64 << 20,
        }
    }
}

impl ConsumerSettings {
    /// The redelivery back-off: `ack_wait` doubling, capped at [`REDELIVERY_BACKOFF_CAP`],
    /// `max_deliver - 1` steps (the server requires fewer steps than deliveries). It only
    /// matters after an instance died with a batch in hand: a live instance keeps its batch
    /// with progress acks and retries failures itself.
    pub fn backoff(&self) -> Vec<Duration> {
        let steps = usize::try_from(self.max_deliver.max(2) - 1).unwrap_or(1);
        (0..steps)
            .map(|i| {
                self.ack_wait
                    .saturating_mul(1 << i.min(16))
                    .min(REDELIVERY_BACKOFF_CAP.max(self.ack_wait))
            })
            .collect()
    }

    /// The consumer configuration of `view` in `generation` (0 unless rebuilt), starting
    /// after `position` (a generation a rebuild loaded up to there; 0: from the start).
    pub fn consumer_config_after(
        &self,
        view: &dyn View,
        generation: u32,
        position: u64,
    ) -> pull::Config {
        let mut config = self.consumer_config(view, generation);
        if position > 0 {
            config.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            };
        }
        config
    }

    /// The consumer configuration of `view` in `generation` (0 unless rebuilt).
    pub fn consumer_config(&self, view: &dyn View, generation: u32) -> pull::Config {
        let name = shared::generation_consumer_name(&view.name(), view.version(), generation);
        pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            description: Some(format!(
                "projection view {} v{}",
                view.name(),
                view.version()
            )),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff(),
            filter_subject: shared::STREAM_FILTER.to_owned(),
            max_ack_pending: i64::try_from(self.batch.saturating_mul(BATCHES_IN_FLIGHT))
                .unwrap_or(i64::MAX),
            priority_policy: PriorityPolicy::PinnedClient,
            priority_groups: vec![PRIORITY_GROUP.to_owned()],
            priority_timeout: self.priority_timeout,
            ..Default::default()
        }
    }
}

/// The differences that matter between the consumer we need and the one the server has.
pub fn consumer_differences(
    want: &pull::Config,
    found: &jetstream::consumer::Config,
) -> Vec<String> {
    let mut diffs = Differences::new();
    let found_filter = if found.filter_subject.is_empty() && found.filter_subjects.len() == 1 {
        &found.filter_subjects[0]
    } else {
        &found.filter_subject
    };
    diffs.check(
        "filter_subject",
        *found_filter == want.filter_subject,
        &want.filter_subject,
        found_filter,
    );
    // a consumer a rebuild created after its bulk load starts after that load's checkpoint:
    // what it skips is in the view already, so it serves as one delivering everything
    let same_start = found.deliver_policy == want.deliver_policy
        || (want.deliver_policy == DeliverPolicy::All
            && matches!(found.deliver_policy, DeliverPolicy::ByStartSequence { .. }));
    diffs.check(
        "deliver_policy",
        same_start,
        format!("{:?}", want.deliver_policy),
        format!("{:?}", found.deliver_policy),
    );
    // an explicit-ack consumer (created before ack-all) is served as it is: the loop acks
    // every message then
    diffs.check(
        "ack_policy",
        found.ack_policy == want.ack_policy
            || (want.ack_policy == AckPolicy::All && found.ack_policy == AckPolicy::Explicit),
        format!("{:?}", want.ack_policy),
        format!("{:?}", found.ack_policy),
    );
    diffs.compare("ack_wait", &want.ack_wait, &found.ack_wait);
    diffs.compare("max_deliver", &want.max_deliver, &found.max_deliver);
    diffs.compare("backoff", &want.backoff, &found.backoff);
    diffs.compare(
        "max_ack_pending",
        &want.max_ack_pending,
        &found.max_ack_pending,
    );
    diffs.compare(
        "priority_policy",
        &want.priority_policy,
        &found.priority_policy,
    );
    diffs.compare(
        "priority_groups",
        &want.priority_groups,
        &found.priority_groups,
    );
    diffs.compare(
        "priority_timeout",
        &want.priority_timeout,
        &found.priority_timeout,
    );
    diffs.into_vec()
}

/// Whether `found` differs from `want` only in redelivery and take-over timing (`ack_wait`,
/// `backoff`, `priority_timeout`) and in how many messages may be pending (`max_ack_pending`),
/// which can be updated in place.
pub fn only_editable_differs(want: &pull::Config, found: &jetstream::consumer::Config) -> bool {
    let mut patched = found.clone();
    patched.ack_wait = want.ack_wait;
    patched.backoff = want.backoff.clone();
    patched.priority_timeout = want.priority_timeout;
    patched.max_ack_pending = want.max_ack_pending;
    consumer_differences(want, &patched).is_empty()
}

/// Why a projector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The consumer exists with another configuration; it is never overwritten.
    #[error(
        "consumer {name} exists with a different configuration ({}); refusing to start. \
         Delete the consumer (its view replays) or bump the view version",
        .differences.join("; ")
    )]
    ConsumerMismatch {
        /// The consumer name.
        name: String,
        /// One entry per difference.
        differences: Vec<String>,
    },
    /// NATS could not be asked.
    #[error("{what}: {source}")]
    Nats {
        /// What was being done.
        what: String,
        /// The error.
        source: async_nats::Error,
    },
    /// A bucket could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates the consumer when missing, accepts it when its configuration matches, refuses it
/// otherwise.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    want: &pull::Config,
) -> Result<jetstream::consumer::Consumer<pull::Config>, StartError> {
    let name = want.durable_name.clone().unwrap_or_default();
    let nats = |what: &str, e: async_nats::Error| StartError::Nats {
        what: format!("{what} {name}"),
        source: e,
    };
    let stream = js
        .get_stream(shared::STREAM_NAME)
        .await
        .map_err(|e| nats("reading the stream for consumer", e.into()))?;
    match stream.consumer_info(&name).await {
        Ok(_) => {}
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            if let Err(create) = stream.create_consumer(want.clone()).await {
                // another instance may have created it in between: compared below
                tracing::debug!(consumer = %name, error = %create, "create consumer failed");
            } else {
                tracing::info!(consumer = %name, "created consumer");
            }
        }
        Err(e) => return Err(nats("reading consumer", e.into())),
    }
    let mut consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_consumer(&name)
        .await
        .map_err(|e| nats("reading consumer", e))?;
    let found = consumer.cached_info().config.clone();
    let differences = consumer_differences(want, &found);
    if differences.is_empty() {
        return Ok(consumer);
    }
    if only_editable_differs(want, &found) {
        // redelivery and take-over timing changes nothing about what the view holds: the
        // consumer is updated in place (every instance of a version agrees on its settings)
        // the acknowledgement policy cannot change in place: an explicit-ack consumer stays one
        let mut update = want.clone();
        update.ack_policy = found.ack_policy;
        match stream.update_consumer(update).await {
            Ok(updated) => {
                tracing::info!(consumer = %name, changes = %differences.join("; "), "consumer timing updated");
                consumer = updated;
                if consumer_differences(want, &consumer.cached_info().config).is_empty() {
                    return Ok(consumer);
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "cannot update the consumer's timing")
            }
        }
    }
    Err(StartError::ConsumerMismatch { name, differences })
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::consumer::IntoConsumerConfig as _;

    use super::*;

    fn want() -> pull::Config {
        ConsumerSettings::default().consumer_config(&crate::views::Accounts, 0)
    }

    #[test]
    fn another_consumer_is_refused_with_every_difference_named() {
        let found = jetstream::consumer::Config {
            filter_subjects: vec!["other.>".to_owned()],
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::None,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            max_ack_pending: 1000,
            ..Default::default()
        };
        assert_eq!(
            consumer_differences(&want(), &found),
            [
                "filter_subject: expected tenant.*.aggregate.*.*, found other.>",
                "deliver_policy: expected All, found New",
                "ack_policy: expected All, found None",
                "ack_wait: expected 3s, found 30s",
                "max_deliver: expected 10, found 5",
                "backoff: expected [3s, 6s, 12s, 24s, 48s, 60s, 60s, 60s, 60s], found []",
                "max_ack_pending: expected 1500, found 1000",
                "priority_policy: expected PinnedClient, found None",
                "priority_groups: expected [\"projection\"], found []",
                "priority_timeout: expected 2s, found 0ns",
            ]
        );
    }

    #[test]
    fn a_consumer_started_after_a_bulk_load_serves_as_one_delivering_everything() {
        let mut found = want().into_consumer_config();
        found.deliver_policy = DeliverPolicy::ByStartSequence { start_sequence: 42 };
        assert!(consumer_differences(&want(), &found).is_empty());
        assert!(only_editable_differs(&want(), &found));
        found.ack_wait = Duration::from_secs(9);
        assert!(!consumer_differences(&want(), &found).is_empty());
        assert!(only_editable_differs(&want(), &found));
        // how many may be pending is editable too; the acknowledgement policy is not, but an
        // explicit-ack consumer (before ack-all) serves
        found.max_ack_pending = 500;
        assert!(only_editable_differs(&want(), &found));
        found.ack_policy = AckPolicy::Explicit;
        assert!(only_editable_differs(&want(), &found));
        found.ack_policy = AckPolicy::None;
        assert!(!only_editable_differs(&want(), &found));
    }
}
