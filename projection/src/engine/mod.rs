//! Consumption: one durable pull consumer per view version, one active (pinned) instance,
//! batches applied in stream order and acknowledged only after the view write committed.
//!
//! One module per job:
//! - [`consumer`]: the consumer's configuration; create, accept or refuse the server's.
//! - [`decode`]: a message's subject and body into an event.
//! - [`fold`]: one event into the documents it touches (duplicates, `_position`, size limit).
//! - [`commit`]: a batch's documents and checkpoint in one atomic, compare-and-set write.
//! - [`parking`]: parked events and the marks that hold back later events of their documents.
//! - [`admin`]: retry and skip of parked events.
//! - [`batch`]: one batch folded into its documents and committed.
//! - `pipeline`: a folded batch and the commit in flight while the next one is folded.
//! - [`bulk`]: a fresh generation loaded in memory-bounded chunks (a rebuild's first phase).
//! - [`projector`]: the consumer loop (order, fail-over, progress acks, retries).
//! - [`health`]: is the view moving? Stall detection, status, metrics.
//! - [`lag`]: lag polling.

pub mod admin;
pub mod batch;
pub mod bulk;
mod cache;
pub mod commit;
pub mod consumer;
pub mod decode;
pub mod fold;
pub mod health;
pub mod lag;
pub mod parking;
mod pipeline;
pub mod projector;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv};
use shared::EventEnvelope;

pub use admin::{Applied, RetryFilter, RetryReport, retry_transient};
pub use consumer::{
    ConsumerSettings, PRIORITY_GROUP, StartError, consumer_differences, ensure_consumer,
};
pub use decode::{DecodeError, DecodedEvent, decode, trace_id};
pub use fold::ApplyError;
pub use health::{RebuildProgress, ViewState, ViewStatus};
pub use lag::poll_lag;
pub use projector::Projector;

use crate::metrics::{ViewLabels, ViewMetrics};
use crate::store::{self, StoreError};
use crate::view::{KeyError, View, validate_key};

/// One view version: its fold, its buckets and metrics. Shared by the consumer loop and the HTTP
/// handlers.
pub struct ViewRuntime {
    /// The fold.
    pub view: Arc<dyn View>,
    /// Documents and checkpoint.
    pub docs: kv::Store,
    /// Parked messages and marks.
    pub parked: kv::Store,
    /// Metrics.
    pub metrics: ViewMetrics,
    /// This view version's metric labels.
    pub labels: ViewLabels,
    /// Set while the consumer loop runs.
    pub running: AtomicBool,
    /// Which generation of the view version this is (0 unless rebuilt).
    pub generation: u32,
    js: jetstream::Context,
    max_doc_bytes: AtomicUsize,
    /// The instance id, written into the checkpoint it commits.
    instance: String,
    /// Why the last batch failed on this instance (`None` after a success).
    last_failure: Mutex<Option<String>>,
    /// The stall the watchdog sees, if any.
    stall: Mutex<Option<health::Stall>>,
    /// Woken when an event is parked for a transient reason (the background retrier).
    transient_parked: tokio::sync::Notify,
    /// The highest checkpoint this instance has written: read-your-writes queries waiting on
    /// the active instance wake on its commit instead of polling the bucket.
    committed: tokio::sync::watch::Sender<u64>,
}

impl ViewRuntime {
    /// Opens (creating when missing) the view's buckets.
    pub async fn open(
        js: &jetstream::Context,
        view: Arc<dyn View>,
        metrics: ViewMetrics,
        replicas: usize,
        generation: u32,
        instance: &str,
    ) -> Result<Self, StoreError> {
        let docs = store::open_bucket(
            js,
            &store::view_bucket(&*view, generation),
            &format!("documents of view {} v{}", view.name(), view.version()),
            replicas,
        )
        .await?;
        let parked = store::open_bucket(
            js,
            &store::parked_bucket(&*view, generation),
            &format!("parked events of view {} v{}", view.name(), view.version()),
            replicas,
        )
        .await?;
        let labels = ViewLabels {
            view: view.name().to_string(),
            version: view.version().to_string(),
        };
        for family in [
            &metrics.applied,
            &metrics.skipped,
            &metrics.duplicate,
            &metrics.parked,
        ] {
            // expose every series from the start, at zero
            let _ = family.get_or_create(&labels);
        }
        for family in [
            &metrics.position,
            &metrics.lag_events,
            &metrics.parked_now,
            &metrics.stalled,
        ] {
            // expose every series from the start, at zero
            let _ = family.get_or_create(&labels);
        }
        let max_doc_bytes = commit::max_doc_bytes(
            docs.stream.cached_info().config.max_message_size,
            js.client().server_info().max_payload,
        );
        Ok(ViewRuntime {
            view,
            docs,
            parked,
            metrics,
            labels,
            running: AtomicBool::new(false),
            generation,
            js: js.clone(),
            max_doc_bytes: AtomicUsize::new(max_doc_bytes),
            instance: instance.to_owned(),
            last_failure: Mutex::new(None),
            stall: Mutex::new(None),
            transient_parked: tokio::sync::Notify::new(),
            committed: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Records that this instance wrote the checkpoint at `position` (durably: after the
    /// bucket acknowledged it), waking the reads waiting for it.
    pub(crate) fn committed_up_to(&self, position: u64) {
        self.committed.send_if_modified(|highest| {
            let higher = position > *highest;
            if higher {
                *highest = position;
            }
            higher
        });
    }

    /// The checkpoints this instance writes, as they are written: a lower bound of the stored
    /// checkpoint (0 on an instance that has not committed, a standby; read the bucket there).
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// The checkpoint position.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(store::read_checkpoint(&self.docs).await?.0)
    }

    /// The checkpoint document: the position, who committed it and when (the status of the
    /// view reads the active instance and the last commit from it).
    pub fn checkpoint_doc(&self, position: u64) -> serde_json::Value {
        serde_json::json!({"position": position, "instance": self.instance, "at_ms": health::now_ms()})
    }

    /// The stored key of `key` within `tenant`.
    pub fn full_key(tenant: &str, key: &str) -> String {
        format!("{tenant}.{key}")
    }

    /// The largest document the view's bucket takes (as of the last [`Self::refresh_limits`]).
    pub fn max_doc_bytes(&self) -> usize {
        self.max_doc_bytes.load(Ordering::Relaxed)
    }

    /// Re-reads the bucket's value limit (an operator may have changed it).
    pub async fn refresh_limits(&self) {
        let mut docs = self.docs.stream.clone();
        if let Ok(info) = docs.info().await {
            let limit = commit::max_doc_bytes(
                info.config.max_message_size,
                self.js.client().server_info().max_payload,
            );
            self.max_doc_bytes.store(limit, Ordering::Relaxed);
        }
    }

    /// The documents `env` touches: (stored key, key within the tenant), validated, without
    /// repeats, in the order the view named them.
    pub fn event_keys(&self, env: &EventEnvelope) -> Result<Vec<(String, String)>, KeyError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for key in self.view.keys(env) {
            validate_key(&key)?;
            if out.iter().all(|(_, k)| *k != key) {
                out.push((Self::full_key(env.tenant_id.as_str(), &key), key));
            }
        }
        Ok(out)
    }
}
