//! Consumption: one durable pull consumer per view version, one active (pinned) instance,
//! batches applied in stream order and acknowledged only after the view write committed.
//!
//! Per batch: decode each message, fold it into a working set of documents (duplicates, i.e.
//! sequence <= the document's `_position`, are skipped), park what cannot be applied, write
//! every changed document with compare-and-set, write `_checkpoint`, then ack. A storage failure
//! leaves the whole batch unacknowledged; the consumer's `max_ack_pending` equals the batch size,
//! so nothing newer is delivered before the batch is redelivered, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use platform::shutdown::Shutdown;
use serde_json::{Value, json};
use shared::{AggregateAddress, EventEnvelope};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::Instrument as _;

use crate::metrics::{ViewLabels, ViewMetrics};
use crate::store::{
    self, CHECKPOINT_KEY, ParkMark, ParkedRecord, StoreError, StoredDoc, aggregate_token,
    park_mark_key, parked_msg_key, to_bytes,
};
use crate::view::{Change, DELETED_FIELD, Fold, POSITION_FIELD, View, ViewError};

/// The priority group every instance pulls in.
pub const PRIORITY_GROUP: &str = "projection";

/// How the durable consumers are configured and pulled.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSettings {
    /// Unacknowledged messages are redelivered after this long (first back-off step).
    pub ack_wait: Duration,
    /// Deliveries before a message that keeps failing for a retryable reason is parked.
    pub max_deliver: i64,
    /// A pinned instance that stops pulling for this long loses the pin to a standby.
    pub priority_timeout: Duration,
    /// Messages per batch (also the consumer's `max_ack_pending`).
    pub batch: usize,
    /// Expiry of each pull request (well below `priority_timeout`).
    pub pull_expires: Duration,
    /// Documents kept in memory between batches.
    pub cache_capacity: usize,
    /// Replicas of the view buckets.
    pub replicas: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        ConsumerSettings {
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            priority_timeout: Duration::from_secs(5),
            batch: 500,
            pull_expires: Duration::from_secs(1),
            cache_capacity: 100_000,
            replicas: 1,
        }
    }
}

impl ConsumerSettings {
    /// The redelivery back-off: `ack_wait` doubling, capped at 10 minutes, `max_deliver - 1`
    /// steps (the server requires fewer steps than deliveries).
    pub fn backoff(&self) -> Vec<Duration> {
        let steps = usize::try_from(self.max_deliver.max(2) - 1).unwrap_or(1);
        (0..steps)
            .map(|i| {
                self.ack_wait
                    .saturating_mul(1 << i.min(16))
                    .min(Duration::from_secs(600).max(self.ack_wait))
            })
            .collect()
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
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            backoff: self.backoff(),
            filter_subject: shared::STREAM_FILTER.to_owned(),
            max_ack_pending: i64::try_from(self.batch).unwrap_or(i64::MAX),
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
    let mut diffs = Vec::new();
    let mut check = |what: &str, same: bool, w: String, f: String| {
        if !same {
            diffs.push(format!("{what}: expected {w}, found {f}"));
        }
    };
    let found_filter = if found.filter_subject.is_empty() && found.filter_subjects.len() == 1 {
        found.filter_subjects[0].clone()
    } else {
        found.filter_subject.clone()
    };
    check(
        "filter_subject",
        found_filter == want.filter_subject,
        want.filter_subject.clone(),
        found_filter,
    );
    check(
        "deliver_policy",
        found.deliver_policy == want.deliver_policy,
        format!("{:?}", want.deliver_policy),
        format!("{:?}", found.deliver_policy),
    );
    check(
        "ack_policy",
        found.ack_policy == want.ack_policy,
        format!("{:?}", want.ack_policy),
        format!("{:?}", found.ack_policy),
    );
    check(
        "ack_wait",
        found.ack_wait == want.ack_wait,
        format!("{:?}", want.ack_wait),
        format!("{:?}", found.ack_wait),
    );
    check(
        "max_deliver",
        found.max_deliver == want.max_deliver,
        want.max_deliver.to_string(),
        found.max_deliver.to_string(),
    );
    check(
        "backoff",
        found.backoff == want.backoff,
        format!("{:?}", want.backoff),
        format!("{:?}", found.backoff),
    );
    check(
        "max_ack_pending",
        found.max_ack_pending == want.max_ack_pending,
        want.max_ack_pending.to_string(),
        found.max_ack_pending.to_string(),
    );
    check(
        "priority_policy",
        found.priority_policy == want.priority_policy,
        format!("{:?}", want.priority_policy),
        format!("{:?}", found.priority_policy),
    );
    check(
        "priority_groups",
        found.priority_groups == want.priority_groups,
        format!("{:?}", want.priority_groups),
        format!("{:?}", found.priority_groups),
    );
    check(
        "priority_timeout",
        found.priority_timeout == want.priority_timeout,
        format!("{:?}", want.priority_timeout),
        format!("{:?}", found.priority_timeout),
    );
    diffs
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
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .get_consumer(&name)
        .await
        .map_err(|e| nats("reading consumer", e))?;
    let differences = consumer_differences(want, &consumer.cached_info().config);
    if !differences.is_empty() {
        return Err(StartError::ConsumerMismatch { name, differences });
    }
    Ok(consumer)
}

/// Why one message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The subject is not an aggregate event subject.
    #[error(transparent)]
    Subject(#[from] shared::SubjectError),
    /// The body is not an event envelope.
    #[error("body is not an event envelope: {0}")]
    Body(String),
    /// Subject and body disagree.
    #[error("subject names {subject} but the body names {body}")]
    Mismatch {
        /// From the subject.
        subject: String,
        /// From the body.
        body: String,
    },
}

/// A message body decoded (or why not).
type Decoded = Result<(AggregateAddress, EventEnvelope), DecodeError>;

/// Decodes a message body against its subject.
pub fn decode(
    subject: &str,
    body: &[u8],
) -> Result<(AggregateAddress, EventEnvelope), DecodeError> {
    let address = AggregateAddress::parse_subject(subject)?;
    let env: EventEnvelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    if env.address() != address {
        return Err(DecodeError::Mismatch {
            subject: address.to_string(),
            body: env.address().to_string(),
        });
    }
    Ok((address, env))
}

/// The trace id (32 hex digits) of an event: from its metadata `traceparent`, else from the
/// message's `traceparent` header.
pub fn trace_id(env: Option<&EventEnvelope>, header: Option<&str>) -> String {
    env.and_then(|e| e.metadata.as_ref())
        .and_then(|m| m.get(shared::TRACEPARENT_METADATA_KEY))
        .map(String::as_str)
        .or(header)
        .and_then(|tp| tp.get(3..35))
        .unwrap_or("")
        .to_owned()
}

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
    labels: ViewLabels,
    /// Set while the consumer loop runs.
    pub running: AtomicBool,
    /// Which generation of the view version this is (0 unless rebuilt).
    pub generation: u32,
    js: jetstream::Context,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Folded in.
    Applied,
    /// Already applied (sequence <= `_position`).
    Duplicate,
    /// Not for this view, or an unknown type.
    Skipped,
}

/// Outcome of an admin retry.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetryReport {
    /// Parked events applied (or found already applied).
    pub applied: u64,
    /// Aggregates cleared.
    pub cleared: Vec<String>,
    /// Aggregates still parked, with the error that stopped them.
    pub failed: BTreeMap<String, String>,
}

fn set_position(doc: Value, seq: u64) -> Value {
    match doc {
        Value::Object(mut m) => {
            m.insert(POSITION_FIELD.to_owned(), json!(seq));
            Value::Object(m)
        }
        other => json!({"value": other, POSITION_FIELD: seq}),
    }
}

/// Folds `env` (stream sequence `seq`) into `doc` in place through
/// [`View::apply_in_place`]. `Ok(true)`: changed (the document now carries `_position`, or is a
/// tombstone); `Ok(false)`: an unknown event type; on `Ok(false)` and `Err` the document is as
/// it was. A tombstone is folded as "no document".
fn fold_in_place(
    view: &dyn View,
    doc: &mut Option<Value>,
    seq: u64,
    env: &EventEnvelope,
) -> Result<bool, ViewError> {
    let deleted = doc
        .as_ref()
        .is_some_and(|d| d.get(DELETED_FIELD).and_then(Value::as_bool) == Some(true));
    let mut current = if deleted { None } else { doc.take() };
    let result = view.apply_in_place(&mut current, env);
    match result {
        Ok(Change::Changed) => {
            *doc = Some(set_position(current.unwrap_or(Value::Null), seq));
            Ok(true)
        }
        Ok(Change::Deleted) => {
            *doc = Some(tombstone(seq));
            Ok(true)
        }
        Ok(Change::Unknown) | Err(_) => {
            if !deleted {
                *doc = current;
            }
            result.map(|_| false)
        }
    }
}

fn tombstone(seq: u64) -> Value {
    json!({DELETED_FIELD: true, POSITION_FIELD: seq})
}

fn is_cas_conflict_update(e: &kv::UpdateError) -> bool {
    e.kind() == kv::UpdateErrorKind::WrongLastRevision
}

/// Writes `doc` at `key` if the key is still at `revision` (`None` = must not exist). `Ok(None)`
/// on a compare-and-set conflict.
async fn cas_write(
    kv: &kv::Store,
    key: &str,
    doc: &Value,
    revision: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    match revision {
        None => match kv.create(key, to_bytes(doc)).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(StoreError::new(format!("creating {key}"), e)),
        },
        Some(rev) => match kv.update(key, to_bytes(doc), rev).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if is_cas_conflict_update(&e) => Ok(None),
            Err(e) => Err(StoreError::new(format!("updating {key}"), e)),
        },
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl ViewRuntime {
    /// Opens (creating when missing) the view's buckets.
    pub async fn open(
        js: &jetstream::Context,
        view: Arc<dyn View>,
        metrics: ViewMetrics,
        replicas: usize,
        generation: u32,
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
        Ok(ViewRuntime {
            view,
            docs,
            parked,
            metrics,
            labels,
            running: AtomicBool::new(false),
            generation,
            js: js.clone(),
        })
    }

    /// The checkpoint position.
    pub async fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(store::read_checkpoint(&self.docs).await?.0)
    }

    /// The stored key of `key` within `tenant`.
    pub fn full_key(tenant: &str, key: &str) -> String {
        format!("{tenant}.{key}")
    }

    /// Applies one event straight to the bucket (read, fold, compare-and-set, bounded retries).
    /// Used by the admin retry; the consumer loop batches instead.
    pub async fn apply_direct(&self, seq: u64, env: &EventEnvelope) -> Result<Applied, ApplyError> {
        let Some(key) = self.view.key(env) else {
            return Ok(Applied::Skipped);
        };
        let full = Self::full_key(env.tenant_id.as_str(), &key);
        for _ in 0..16 {
            let current = store::read_doc(&self.docs, &full).await?;
            let revision = current.as_ref().map(|d| d.revision);
            if current.as_ref().is_some_and(|d| d.position() >= seq) {
                return Ok(Applied::Duplicate);
            }
            let doc = current.filter(|d| !d.is_deleted()).map(|d| d.doc);
            let new = match self.view.apply(doc, env)? {
                Fold::Set(v) => set_position(v, seq),
                Fold::Delete => tombstone(seq),
                Fold::Unknown => return Ok(Applied::Skipped),
            };
            if cas_write(&self.docs, &full, &new, revision)
                .await?
                .is_some()
            {
                return Ok(Applied::Applied);
            }
        }
        Err(ApplyError::Contended(full))
    }

    /// Every parked record.
    pub async fn parked_records(&self) -> Result<Vec<ParkedRecord>, StoreError> {
        store::parked_records(&self.parked).await
    }

    /// Drops one parked record; when it was its aggregate's last, clears the aggregate's mark.
    /// `false` when there is no such record.
    pub async fn skip(&self, seq: u64) -> Result<bool, StoreError> {
        let key = parked_msg_key(seq);
        let Some(doc) = store::read_doc(&self.parked, &key).await? else {
            return Ok(false);
        };
        self.parked
            .delete(&key)
            .await
            .map_err(|e| StoreError::new(format!("deleting {key}"), e))?;
        tracing::info!(view = %self.view.name(), seq, "parked event skipped");
        let record: Option<ParkedRecord> = serde_json::from_value(doc.doc).ok();
        if let Some(agg) = record.and_then(|r| r.aggregate) {
            let rest = self.parked_records().await?;
            if !rest.iter().any(|r| r.aggregate.as_ref() == Some(&agg)) {
                let mark = format!("agg.{agg}");
                if let Some(m) = store::read_doc(&self.parked, &mark).await? {
                    // a concurrent park changes the revision; then the mark stays
                    let _ = self
                        .parked
                        .delete_expect_revision(&mark, Some(m.revision))
                        .await;
                }
            }
        }
        Ok(true)
    }

    /// Re-applies the parked events of one aggregate (`<tenant>.<type>.<id>`) or of all, in
    /// sequence order, through the fold and compare-and-set; clears what succeeded. An aggregate
    /// whose event fails again stays parked from that event on.
    pub async fn retry(&self, only: Option<&str>) -> Result<RetryReport, StoreError> {
        let mut report = RetryReport::default();
        let marks = store::park_marks(&self.parked).await?;
        let mut aggregates: BTreeSet<String> = marks.keys().cloned().collect();
        for r in self.parked_records().await? {
            if let Some(a) = r.aggregate {
                aggregates.insert(a);
            }
        }
        for agg in aggregates {
            if only.is_some_and(|o| o != agg) {
                continue;
            }
            match self.retry_aggregate(&agg, &mut report).await? {
                Ok(()) => report.cleared.push(agg),
                Err(e) => {
                    report.failed.insert(agg, e);
                }
            }
        }
        Ok(report)
    }

    /// The body of the message at `seq`, read from the stream.
    async fn stream_body(&self, seq: u64) -> Result<Vec<u8>, StoreError> {
        let stream = self
            .js
            .get_stream(shared::STREAM_NAME)
            .await
            .map_err(|e| StoreError::new("reading the stream", e))?;
        let msg = stream
            .get_raw_message(seq)
            .await
            .map_err(|e| StoreError::new(format!("reading stream sequence {seq}"), e))?;
        Ok(msg.payload.to_vec())
    }

    async fn retry_aggregate(
        &self,
        agg: &str,
        report: &mut RetryReport,
    ) -> Result<Result<(), String>, StoreError> {
        let mark_key = format!("agg.{agg}");
        // bounded: each round drains what the consumer parked behind the mark meanwhile
        for _ in 0..32 {
            let mark = store::read_doc(&self.parked, &mark_key).await?;
            let records: Vec<ParkedRecord> = self
                .parked_records()
                .await?
                .into_iter()
                .filter(|r| r.aggregate.as_deref() == Some(agg))
                .collect();
            for r in &records {
                let body = if r.body_truncated {
                    // the record keeps only the start of a large body: the stream has it all
                    self.stream_body(r.seq).await?
                } else {
                    base64::engine::general_purpose::STANDARD
                        .decode(&r.body_base64)
                        .unwrap_or_default()
                };
                let outcome = match decode(&r.subject, &body) {
                    Ok((_, env)) => self.apply_direct(r.seq, &env).await,
                    Err(e) => Err(ApplyError::Decode(e)),
                };
                match outcome {
                    Ok(_) => {
                        report.applied += 1;
                        self.parked
                            .delete(parked_msg_key(r.seq))
                            .await
                            .map_err(|e| StoreError::new("deleting a parked record", e))?;
                    }
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(e) => {
                        let mut updated = r.clone();
                        updated.error = e.to_string();
                        let _ = self
                            .parked
                            .put(parked_msg_key(r.seq), to_bytes(&updated))
                            .await;
                        return Ok(Err(format!("seq {}: {e}", r.seq)));
                    }
                }
            }
            let Some(mark) = mark else {
                return Ok(Ok(()));
            };
            // clear the mark only if nothing was parked behind it since we read it
            match self
                .parked
                .delete_expect_revision(&mark_key, Some(mark.revision))
                .await
            {
                Ok(()) => {
                    // a record written just before the consumer noticed the cleared mark is
                    // picked up by another round
                    let left = self
                        .parked_records()
                        .await?
                        .into_iter()
                        .any(|r| r.aggregate.as_deref() == Some(agg));
                    if !left {
                        tracing::info!(view = %self.view.name(), aggregate = agg, "parked aggregate cleared");
                        return Ok(Ok(()));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "mark changed during retry; another round"),
            }
        }
        Ok(Err(
            "the consumer kept parking events behind this aggregate; retry again".into(),
        ))
    }
}

/// Why one event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Deterministic: the view refused it.
    #[error(transparent)]
    View(#[from] ViewError),
    /// Deterministic: it cannot be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Retryable: storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Retryable: lost the compare-and-set too often.
    #[error("document {0} changed concurrently too often")]
    Contended(String),
}

/// What to do with a message once the batch committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Ack,
    Term,
}

/// Documents read or written at once by one batch.
const COMMIT_CONCURRENCY: usize = 256;

/// Writes one document with compare-and-set; on a conflict re-reads it and re-folds the batch's
/// events into it (skipping those its `_position` already covers). Returns the committed
/// document and whether a conflict happened.
async fn commit_doc(
    docs: &kv::Store,
    view: &dyn View,
    key: String,
    mut pending: Pending,
) -> Result<(String, StoredDoc, bool), StoreError> {
    let mut conflicted = false;
    for _ in 0..8 {
        let doc = pending.doc.clone().unwrap_or(Value::Null);
        if let Some(rev) = cas_write(docs, &key, &doc, pending.revision).await? {
            return Ok((key, StoredDoc { doc, revision: rev }, conflicted));
        }
        // someone else wrote it (an admin retry, a previous owner): re-read and re-fold
        conflicted = true;
        let fresh = store::read_doc(docs, &key).await?;
        pending.revision = fresh.as_ref().map(|d| d.revision);
        let mut doc = fresh.as_ref().map(|d| d.doc.clone());
        let mut changed = false;
        for (seq, env) in &pending.events {
            if doc.as_ref().map_or(0, store::position_of) >= *seq {
                continue;
            }
            match fold_in_place(view, &mut doc, *seq, env) {
                Ok(true) => changed = true,
                Ok(false) => {}
                Err(e) => {
                    return Err(StoreError::new(
                        format!("re-folding {key} after a conflict"),
                        e,
                    ));
                }
            }
        }
        if !changed {
            // every event of the batch is already in the stored document
            if let Some(fresh) = fresh {
                return Ok((key, fresh, conflicted));
            }
        }
        pending.doc = doc;
    }
    Err(StoreError::new(
        format!("writing {key}"),
        "lost the compare-and-set too often",
    ))
}

/// Parked aggregates' marks by aggregate token, with each mark's KV revision.
type Marks = BTreeMap<String, (ParkMark, u64)>;

fn counts_parked(dispositions: &[Disposition]) -> usize {
    dispositions
        .iter()
        .filter(|d| matches!(d, Disposition::Term))
        .count()
}

struct Pending {
    doc: Option<Value>,
    revision: Option<u64>,
    /// Whether `doc` came from the in-memory cache rather than from the bucket.
    from_cache: bool,
    /// The events of this batch folded into it, for re-folding after a conflict.
    events: Vec<(u64, EventEnvelope)>,
}

/// The consumer loop of one view.
pub struct Projector {
    rt: Arc<ViewRuntime>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    settings: ConsumerSettings,
    cache: HashMap<String, StoredDoc>,
    /// Documents read ahead for the batch in hand.
    prefetched: HashMap<String, Option<StoredDoc>>,
    /// Parked-aggregate marks and the parked bucket's last sequence they reflect.
    marks: Option<(u64, Marks)>,
    marks_seen: u64,
    checkpoint_rev: Option<u64>,
    checkpoint: u64,
    js: jetstream::Context,
    last_gap_check: Option<std::time::Instant>,
    last_batch: Option<std::time::Instant>,
}

impl Projector {
    /// Makes sure the consumer exists with the right configuration.
    pub async fn new(
        js: &jetstream::Context,
        rt: Arc<ViewRuntime>,
        settings: ConsumerSettings,
    ) -> Result<Self, StartError> {
        let consumer =
            ensure_consumer(js, &settings.consumer_config(&*rt.view, rt.generation)).await?;
        let (checkpoint, checkpoint_rev) = store::read_checkpoint(&rt.docs).await?;
        Ok(Projector {
            rt,
            consumer,
            settings,
            cache: HashMap::new(),
            prefetched: HashMap::new(),
            marks: None,
            marks_seen: 0,
            checkpoint_rev,
            checkpoint,
            js: js.clone(),
            last_gap_check: None,
            last_batch: None,
        })
    }

    /// The view runtime.
    pub fn runtime(&self) -> &Arc<ViewRuntime> {
        &self.rt
    }

    /// The consumer (for lag polling).
    pub fn consumer(&self) -> &jetstream::consumer::Consumer<pull::Config> {
        &self.consumer
    }

    /// Pulls and applies until `shutdown` fires; the batch in flight is finished and acked.
    pub async fn run(mut self, shutdown: Shutdown) {
        self.rt.running.store(true, Ordering::Relaxed);
        let name = self.rt.view.name();
        tracing::info!(view = %name, version = self.rt.view.version(), "projector started");
        'outer: while !shutdown.is_triggered() {
            let messages = match self
                .consumer
                .stream()
                .group(PRIORITY_GROUP)
                .expires(self.settings.pull_expires)
                .heartbeat(self.settings.pull_expires / 2)
                .max_messages_per_batch(self.settings.batch)
                .messages()
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(view = %name, error = %e, "cannot pull; retrying");
                    tokio::select! {
                        () = shutdown.wait() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut chunks = messages.ready_chunks(self.settings.batch);
            // messages received out of order (after a fail-over), waiting for the gap to fill
            let mut held: BTreeMap<u64, Message> = BTreeMap::new();
            loop {
                let chunk = tokio::select! {
                    biased;
                    () = shutdown.wait() => break 'outer,
                    c = chunks.next() => c,
                };
                let Some(chunk) = chunk else {
                    break;
                };
                for m in chunk {
                    match m {
                        Ok(m) => match m.info().map(|i| i.stream_sequence) {
                            Ok(seq) => {
                                // a later delivery of the same event replaces the earlier one
                                held.insert(seq, m);
                            }
                            Err(e) => {
                                tracing::warn!(view = %name, error = %e, "message without metadata")
                            }
                        },
                        Err(e) => tracing::debug!(view = %name, error = %e, "pull status"),
                    }
                }
                let batch = self.take_contiguous(&mut held).await;
                if !batch.is_empty() {
                    self.handle_batch(batch).await;
                }
            }
        }
        self.rt.running.store(false, Ordering::Relaxed);
        tracing::info!(view = %name, "projector stopped");
    }

    /// The held messages that continue the stream exactly after the checkpoint, in order.
    ///
    /// Events are applied strictly in stream order: after a fail-over the new active instance
    /// can receive new events before the ones its dead predecessor had in flight are
    /// redelivered (`max_ack_pending` bounds the count, not the order), so anything after a gap
    /// is held (unacknowledged) until the gap fills. A gap is re-checked against the stored
    /// checkpoint (another instance may have processed it) and against the stream's first
    /// sequence (events removed by an operator).
    async fn take_contiguous(&mut self, held: &mut BTreeMap<u64, Message>) -> Vec<Message> {
        let first_held = held.keys().next().copied();
        if let Some(first) = first_held
            && first > self.checkpoint + 1
        {
            if let Ok((p, rev)) = store::read_checkpoint(&self.rt.docs).await
                && p > self.checkpoint
            {
                self.checkpoint = p;
                self.checkpoint_rev = rev;
                self.cache.clear();
            }
            if first > self.checkpoint + 1
                && self
                    .last_gap_check
                    .is_none_or(|t| t.elapsed() >= self.settings.ack_wait)
            {
                self.last_gap_check = Some(std::time::Instant::now());
                if let Ok(mut stream) = self.js.get_stream(shared::STREAM_NAME).await
                    && let Ok(info) = stream.info().await
                    && info.state.first_sequence > self.checkpoint + 1
                {
                    tracing::warn!(
                        view = %self.rt.view.name(),
                        from = self.checkpoint + 1,
                        to = info.state.first_sequence - 1,
                        "events before the stream's first sequence are gone; skipping them"
                    );
                    self.checkpoint = info.state.first_sequence - 1;
                }
                // events parked without a checkpoint (storage failed right after) are done
                // too; they are never redelivered, so waiting for them would stall the view
                let mut next = self.checkpoint + 1;
                while next < first
                    && matches!(
                        self.rt.parked.get(store::parked_msg_key(next)).await,
                        Ok(Some(_))
                    )
                {
                    next += 1;
                }
                if next > self.checkpoint + 1 {
                    tracing::warn!(
                        view = %self.rt.view.name(),
                        from = self.checkpoint + 1,
                        to = next - 1,
                        "parked events were not checkpointed; moving past them"
                    );
                    if self.write_checkpoint(next - 1).await.is_err() {
                        self.checkpoint = next - 1;
                    }
                }
            }
            if first > self.checkpoint + 1 {
                tracing::debug!(
                    view = %self.rt.view.name(),
                    checkpoint = self.checkpoint,
                    first,
                    "waiting for earlier events to be redelivered"
                );
            }
        }
        // already done (applied, skipped or parked, and checkpointed): just acknowledge
        while let Some(entry) = held.first_entry() {
            if *entry.key() > self.checkpoint {
                break;
            }
            let m = entry.remove();
            let _ = m.ack().await;
        }
        let mut batch = Vec::new();
        let mut next = self.checkpoint + 1;
        while batch.len() < self.settings.batch
            && let Some(m) = held.remove(&next)
        {
            batch.push(m);
            next += 1;
        }
        batch
    }

    async fn handle_batch(&mut self, batch: Vec<Message>) {
        // idle longer than the pin lasts: another instance may have written meanwhile
        if self
            .last_batch
            .is_some_and(|t| t.elapsed() >= self.settings.priority_timeout)
        {
            self.cache.clear();
        }
        self.last_batch = Some(std::time::Instant::now());
        let mut delay = Duration::from_millis(100);
        // retry the commit in place while the messages are still ours (well within ack_wait)
        let attempts = 4;
        for attempt in 1..=attempts {
            match self.process(&batch).await {
                Ok(()) => return,
                Err(e) => {
                    self.cache.clear();
                    tracing::warn!(view = %self.rt.view.name(), attempt, error = %e, "batch failed; retrying");
                    if attempt < attempts {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    } else {
                        self.park_exhausted(&batch, &e.to_string()).await;
                    }
                }
            }
        }
    }

    fn is_exhausted(&self, m: &Message) -> bool {
        m.info()
            .is_ok_and(|i| i.delivered >= self.settings.max_deliver)
    }

    /// After a batch failed for a retryable reason (storage, NATS): while no message of it has
    /// been delivered `max_deliver` times, all are left unacknowledged and redeliver after
    /// `ack_wait`. Once one has, the batch is taken apart: one message at a time, in stream
    /// order, so that only a message that fails on its own is parked (`retryable failure after
    /// N deliveries`) and the others, innocent members of the same batch, are applied. The
    /// first message that fails without being exhausted stops the walk; it and the rest
    /// redeliver, in order.
    async fn park_exhausted(&mut self, batch: &[Message], batch_error: &str) {
        if !batch.iter().any(|m| self.is_exhausted(m)) {
            return;
        }
        let name = self.rt.view.name();
        for m in batch {
            let mut failure = None;
            for _ in 0..2 {
                match self.process(std::slice::from_ref(m)).await {
                    Ok(()) => {
                        failure = None;
                        break;
                    }
                    Err(e) => {
                        self.cache.clear();
                        failure = Some(e.to_string());
                    }
                }
            }
            let Some(error) = failure else { continue };
            let Ok(info) = m.info() else { return };
            if info.delivered < self.settings.max_deliver {
                tracing::warn!(view = %name, seq = info.stream_sequence, error, "event failed on its own; it redelivers");
                return;
            }
            let seq = info.stream_sequence;
            let address = AggregateAddress::parse_subject(m.subject.as_str()).ok();
            let reason = format!(
                "retryable failure after {} deliveries: {error}",
                info.delivered
            );
            tracing::error!(view = %name, seq, batch_error, reason, "parking an event that keeps failing");
            let mut marks = BTreeMap::new();
            if self
                .park(m, seq, address.as_ref(), &reason, &mut marks)
                .await
                .is_err()
            {
                return; // the dead-letter bucket is unreachable too: everything redelivers
            }
            // parked is done: the checkpoint moves past it (should this write fail, the gap
            // check in `take_contiguous` finds the parked record and moves past it later)
            if let Err(e) = self.write_checkpoint(seq).await {
                tracing::warn!(view = %name, seq, error = %e, "checkpoint after parking failed");
            }
            let _ = m.ack_with(AckKind::Term).await;
        }
    }

    /// Writes a parked record and marks its aggregate (adding the mark, with its revision, to
    /// `marks`). A message without an aggregate address is parked without a mark.
    async fn park(
        &self,
        m: &Message,
        seq: u64,
        address: Option<&AggregateAddress>,
        error: &str,
        marks: &mut BTreeMap<String, (ParkMark, u64)>,
    ) -> Result<(), StoreError> {
        let token = address.map(aggregate_token);
        let (body_base64, body_len, body_truncated) = store::parked_body(&m.payload);
        let record = ParkedRecord {
            subject: m.subject.to_string(),
            seq,
            error: error.to_owned(),
            body_base64,
            body_len,
            body_truncated,
            headers: m
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .filter_map(|(k, v)| {
                            v.last().map(|v| (k.to_string(), v.as_str().to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            aggregate: token.clone(),
            parked_at: now_rfc3339(),
        };
        self.rt
            .parked
            .put(parked_msg_key(seq), to_bytes(&record))
            .await
            .map_err(|e| StoreError::new("writing a parked record", e))?;
        if let (Some(address), Some(token)) = (address, token) {
            let key = park_mark_key(address);
            let mark = ParkMark {
                first_seq: seq,
                last_seq: seq,
            };
            match cas_write(
                &self.rt.parked,
                &key,
                &serde_json::to_value(&mark).unwrap_or_default(),
                None,
            )
            .await?
            {
                Some(rev) => {
                    marks.insert(token, (mark, rev));
                }
                None => {
                    // already marked: this one is behind it
                    if let Some(d) = store::read_doc(&self.rt.parked, &key).await?
                        && let Ok(m) = serde_json::from_value::<ParkMark>(d.doc)
                    {
                        marks.insert(token, (m, d.revision));
                    }
                }
            }
        }
        self.rt.metrics.parked.get_or_create(&self.rt.labels).inc();
        tracing::warn!(view = %self.rt.view.name(), seq, subject = %m.subject, error, "event parked");
        Ok(())
    }

    /// Parks `m` behind its aggregate's mark: record first, then bump the mark with
    /// compare-and-set. `Ok(false)` when the mark is gone (a retry cleared it): the record is
    /// removed and the caller applies the event normally.
    async fn park_behind(
        &self,
        m: &Message,
        seq: u64,
        address: &AggregateAddress,
        marks: &mut BTreeMap<String, (ParkMark, u64)>,
    ) -> Result<bool, StoreError> {
        let token = aggregate_token(address);
        let key = park_mark_key(address);
        let Some((mark, _)) = marks.get(&token).cloned() else {
            return Ok(false);
        };
        let (body_base64, body_len, body_truncated) = store::parked_body(&m.payload);
        let record = ParkedRecord {
            subject: m.subject.to_string(),
            seq,
            error: format!("parked behind seq {}", mark.first_seq),
            body_base64,
            body_len,
            body_truncated,
            headers: BTreeMap::new(),
            aggregate: Some(token.clone()),
            parked_at: now_rfc3339(),
        };
        self.rt
            .parked
            .put(parked_msg_key(seq), to_bytes(&record))
            .await
            .map_err(|e| StoreError::new("writing a parked record", e))?;
        for _ in 0..8 {
            let Some((mark, rev)) = marks.get(&token).cloned() else {
                break;
            };
            let bumped = ParkMark {
                first_seq: mark.first_seq,
                last_seq: mark.last_seq.max(seq),
            };
            let value = serde_json::to_value(&bumped).unwrap_or_default();
            if let Some(new_rev) = cas_write(&self.rt.parked, &key, &value, Some(rev)).await? {
                marks.insert(token, (bumped, new_rev));
                self.rt.metrics.parked.get_or_create(&self.rt.labels).inc();
                tracing::info!(view = %self.rt.view.name(), seq, first = mark.first_seq, "event parked behind its aggregate");
                return Ok(true);
            }
            match store::read_doc(&self.rt.parked, &key).await? {
                Some(d) if d.doc.get("first_seq").is_some() => {
                    if let Ok(m) = serde_json::from_value::<ParkMark>(d.doc) {
                        marks.insert(token.clone(), (m, d.revision));
                    }
                }
                _ => {
                    marks.remove(&token);
                }
            }
        }
        // the mark was cleared by a retry: undo the record, apply normally
        let _ = self.rt.parked.delete(parked_msg_key(seq)).await;
        Ok(false)
    }

    async fn load(&mut self, key: &str) -> Result<Option<StoredDoc>, StoreError> {
        if let Some(d) = self.cache.get(key) {
            return Ok(Some(d.clone()));
        }
        if let Some(d) = self.prefetched.remove(key) {
            return Ok(d);
        }
        store::read_doc(&self.rt.docs, key).await
    }

    /// Reads, concurrently, the documents the batch will touch that are not cached, so the
    /// in-order fold below does not wait for them one by one.
    async fn prefetch(&mut self, decoded: &[Decoded]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .filter_map(|(_, env)| {
                self.rt
                    .view
                    .key(env)
                    .map(|k| ViewRuntime::full_key(env.tenant_id.as_str(), &k))
            })
            .filter(|k| !self.cache.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let docs = &self.rt.docs;
        let fetched: Vec<(String, Option<StoredDoc>)> = futures::stream::iter(keys)
            .map(|k| async move { store::read_doc(docs, &k).await.map(|d| (k, d)) })
            .buffer_unordered(COMMIT_CONCURRENCY)
            .try_collect()
            .await?;
        self.prefetched = fetched.into_iter().collect();
        Ok(())
    }

    /// The parked aggregates' marks: listing them costs a consumer, so they are kept between
    /// batches and re-listed only when the parked bucket changed since (another instance, an
    /// admin retry or skip), which one stream-info request tells.
    async fn marks(&mut self) -> Result<Marks, StoreError> {
        let last = self
            .rt
            .parked
            .status()
            .await
            .map_err(|e| StoreError::new("reading the parked bucket's state", e))?
            .info
            .state
            .last_sequence;
        if let Some((seen, marks)) = self.marks.take()
            && seen == last
        {
            return Ok(marks);
        }
        let marks = store::park_marks(&self.rt.parked).await?;
        self.marks_seen = last;
        Ok(marks)
    }

    /// One batch: fold, commit documents, checkpoint, ack.
    async fn process(&mut self, batch: &[Message]) -> Result<(), StoreError> {
        let mut marks = self.marks().await?;
        let marks_seen = self.marks_seen;
        // each body is decoded once, here: the prefetch and the fold below share it
        let decoded: Vec<Decoded> = batch
            .iter()
            .map(|m| decode(m.subject.as_str(), &m.payload))
            .collect();
        self.prefetch(&decoded).await?;
        let mut working: HashMap<String, Pending> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut dispositions = Vec::with_capacity(batch.len());
        let mut counts = (0u64, 0u64, 0u64); // applied, skipped, duplicate
        let mut last_seq = 0;
        let mut last_occurred: Option<OffsetDateTime> = None;
        for (m, decoded) in batch.iter().zip(decoded) {
            let info = m
                .info()
                .map_err(|e| StoreError::new("reading message metadata", e))?;
            let seq = info.stream_sequence;
            last_seq = last_seq.max(seq);
            let header_tp = m
                .headers
                .as_ref()
                .and_then(|h| h.get(shared::TRACEPARENT_HEADER))
                .map(|v| v.as_str().to_owned());
            let trace = trace_id(decoded.as_ref().ok().map(|(_, e)| e), header_tp.as_deref());
            let span =
                tracing::info_span!("apply", view = %self.rt.view.name(), seq, trace_id = %trace);
            let (address, env) = match decoded {
                Ok(x) => x,
                Err(e) => {
                    let address = AggregateAddress::parse_subject(m.subject.as_str()).ok();
                    async {
                        if let Some(a) = &address
                            && marks.contains_key(&aggregate_token(a))
                            && marks[&aggregate_token(a)].0.last_seq >= seq
                        {
                            return Ok(()); // redelivery of an already parked message
                        }
                        self.park(m, seq, address.as_ref(), &e.to_string(), &mut marks)
                            .await
                    }
                    .instrument(span)
                    .await?;
                    dispositions.push(Disposition::Term);
                    continue;
                }
            };
            let token = aggregate_token(&address);
            if let Some((mark, _)) = marks.get(&token).cloned() {
                if seq <= mark.last_seq {
                    // redelivery of a message parked before
                    dispositions.push(Disposition::Term);
                    continue;
                }
                if self
                    .park_behind(m, seq, &address, &mut marks)
                    .instrument(span.clone())
                    .await?
                {
                    dispositions.push(Disposition::Term);
                    continue;
                }
            }
            let Some(key) = self.rt.view.key(&env) else {
                counts.1 += 1;
                dispositions.push(Disposition::Ack);
                continue;
            };
            let full = ViewRuntime::full_key(env.tenant_id.as_str(), &key);
            if !working.contains_key(&full) {
                let from_cache = self.cache.contains_key(&full);
                let stored = self.load(&full).await?;
                working.insert(
                    full.clone(),
                    Pending {
                        from_cache,
                        revision: stored.as_ref().map(|d| d.revision),
                        doc: stored.map(|d| d.doc),
                        events: Vec::new(),
                    },
                );
            }
            let Some(pending) = working.get_mut(&full) else {
                continue;
            };
            let mut result = None;
            for fresh_read in [false, true] {
                if fresh_read {
                    // the cached document may be stale (an admin retry or a previous active
                    // instance wrote it): a refusal only counts against the stored document
                    if !pending.from_cache || !pending.events.is_empty() {
                        break;
                    }
                    self.cache.remove(&full);
                    let stored = store::read_doc(&self.rt.docs, &full).await?;
                    pending.revision = stored.as_ref().map(|d| d.revision);
                    pending.doc = stored.map(|d| d.doc);
                    pending.from_cache = false;
                }
                if pending.doc.as_ref().map_or(0, store::position_of) >= seq {
                    result = Some(Ok(None));
                    break;
                }
                let r = fold_in_place(&*self.rt.view, &mut pending.doc, seq, &env);
                let refused = r.is_err();
                result = Some(r.map(Some));
                if !refused {
                    break;
                }
            }
            let _enter = span.enter();
            match result {
                None | Some(Ok(None)) => {
                    counts.2 += 1;
                    tracing::debug!(key = %full, "duplicate event skipped");
                    dispositions.push(Disposition::Ack);
                    continue;
                }
                Some(Ok(Some(true))) => {}
                Some(Ok(Some(false))) => {
                    counts.1 += 1;
                    tracing::debug!(event_type = %env.event_type, "unknown event type skipped");
                    dispositions.push(Disposition::Ack);
                    continue;
                }
                Some(Err(e)) => {
                    drop(_enter);
                    self.park(m, seq, Some(&address), &e.to_string(), &mut marks)
                        .instrument(span)
                        .await?;
                    dispositions.push(Disposition::Term);
                    continue;
                }
            }
            tracing::debug!(key = %full, event_type = %env.event_type, "event applied");
            counts.0 += 1;
            last_occurred = Some(env.occurred_at);
            if pending.events.is_empty() {
                order.push(full.clone());
            }
            pending.events.push((seq, env));
            dispositions.push(Disposition::Ack);
        }

        // commit every changed document with compare-and-set, many at a time (each document has
        // its own revision, so the writes are independent); the checkpoint follows all of them
        let docs = &self.rt.docs;
        let view = &*self.rt.view;
        let jobs: Vec<(String, Pending)> = order
            .into_iter()
            .filter_map(|key| working.remove(&key).map(|p| (key, p)))
            .collect();
        let committed: Vec<(String, StoredDoc, bool)> = futures::stream::iter(jobs)
            .map(|(key, pending)| commit_doc(docs, view, key, pending))
            .buffer_unordered(COMMIT_CONCURRENCY)
            .try_collect()
            .await?;
        for (key, doc, conflicted) in committed {
            if conflicted {
                self.cache.remove(&key);
            }
            if self.cache.len() >= self.settings.cache_capacity {
                self.cache.clear();
            }
            self.cache.insert(key, doc);
        }
        self.prefetched.clear();

        self.write_checkpoint(last_seq).await?;
        // our own parks changed the bucket: keep the marks only if nothing was parked
        if counts_parked(&dispositions) == 0 {
            self.marks = Some((marks_seen, marks));
        }
        for (m, d) in batch.iter().zip(dispositions) {
            let r = match d {
                Disposition::Ack => m.ack().await,
                Disposition::Term => m.ack_with(AckKind::Term).await,
            };
            if let Err(e) = r {
                // redelivered later and skipped as a duplicate
                tracing::debug!(error = %e, "ack failed");
            }
        }
        let labels = &self.rt.labels;
        self.rt
            .metrics
            .applied
            .get_or_create(labels)
            .inc_by(counts.0);
        self.rt
            .metrics
            .skipped
            .get_or_create(labels)
            .inc_by(counts.1);
        self.rt
            .metrics
            .duplicate
            .get_or_create(labels)
            .inc_by(counts.2);
        if let Some(at) = last_occurred {
            let behind = (OffsetDateTime::now_utc() - at).as_seconds_f64().max(0.0);
            self.rt
                .metrics
                .behind_seconds
                .get_or_create(labels)
                .set(behind);
        }
        Ok(())
    }

    async fn write_checkpoint(&mut self, position: u64) -> Result<(), StoreError> {
        for _ in 0..8 {
            if position <= self.checkpoint && self.checkpoint_rev.is_some() {
                return Ok(());
            }
            let value = json!({"position": position});
            if let Some(rev) =
                cas_write(&self.rt.docs, CHECKPOINT_KEY, &value, self.checkpoint_rev).await?
            {
                self.checkpoint = position;
                self.checkpoint_rev = Some(rev);
                return Ok(());
            }
            let (p, rev) = store::read_checkpoint(&self.rt.docs).await?;
            self.checkpoint = p;
            self.checkpoint_rev = rev;
        }
        Err(StoreError::new(
            "writing the checkpoint",
            "lost the compare-and-set too often",
        ))
    }
}

/// Polls the consumer's `num_pending` into the lag gauge until `shutdown`.
pub async fn poll_lag(
    rt: Arc<ViewRuntime>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    every: Duration,
    shutdown: Shutdown,
) {
    loop {
        if let Ok(info) = consumer.get_info().await {
            rt.metrics
                .lag
                .get_or_create(&rt.labels)
                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        }
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::Accounts;

    fn env(ty: &str, version: u64, payload: Value) -> EventEnvelope {
        serde_json::from_value(json!({
            "tenant_id": "acme", "aggregate_type": "account", "aggregate_id": "a",
            "version": version, "event_type": ty, "payload": payload,
            "occurred_at": "2026-01-01T00:00:00Z"
        }))
        .expect("envelope")
    }

    #[test]
    fn fold_in_place_keeps_the_document_when_refused_or_unknown() {
        let view = Accounts;
        let mut doc = None;
        let opened = env("opened", 1, json!({"owner": "A", "currency": "EUR"}));
        assert_eq!(fold_in_place(&view, &mut doc, 7, &opened), Ok(true));
        let stored = doc.clone().expect("created");
        assert_eq!(stored[POSITION_FIELD], 7);
        assert_eq!(stored["version"], 1);

        // refused (version gap) and unknown: untouched, position included
        let gap = env("deposited", 5, json!({"amount": 1}));
        assert!(fold_in_place(&view, &mut doc, 8, &gap).is_err());
        assert_eq!(doc.as_ref(), Some(&stored));
        let unknown = env("renamed", 2, json!({}));
        assert_eq!(fold_in_place(&view, &mut doc, 9, &unknown), Ok(false));
        assert_eq!(doc.as_ref(), Some(&stored));

        // a tombstone folds as "no document" and stays when the event is refused
        let mut doc = Some(tombstone(10));
        let deposit = env("deposited", 1, json!({"amount": "x"}));
        assert!(fold_in_place(&view, &mut doc, 11, &deposit).is_err());
        assert_eq!(doc, Some(tombstone(10)));
        assert_eq!(fold_in_place(&view, &mut doc, 12, &opened), Ok(true));
        assert_eq!(
            doc.as_ref().map(|d| d[POSITION_FIELD].clone()),
            Some(json!(12))
        );
        assert_eq!(
            doc.as_ref().map(|d| d.get(DELETED_FIELD).is_none()),
            Some(true)
        );
    }
}
