//! The consumer loop of one view: pull, put deliveries in stream order, fold each batch into
//! its documents, commit documents and checkpoint atomically, then acknowledge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use futures::{StreamExt as _, TryStreamExt as _};
use platform::shutdown::Shutdown;
use serde_json::{Value, json};
use shared::AggregateAddress;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::engine::ViewRuntime;
use crate::engine::commit::{CommitError, DocWrite, MAX_WRITES_PER_COMMIT, commit};
use crate::engine::consumer::{ConsumerSettings, PRIORITY_GROUP, StartError, ensure_consumer};
use crate::engine::decode::{DecodeError, DecodedEvent, decode, trace_id};
use crate::engine::fold::{ApplyError, EventFold, fold_event};
use crate::engine::health::now_ms;
use crate::engine::parking::{HoldState, Marks, hold_keys, hold_state, record_of};
use crate::store::{self, CHECKPOINT_KEY, StoreError, StoredDoc};

/// Documents read at once while prefetching a batch.
const PREFETCH_CONCURRENCY: usize = 256;
/// Attempts of a batch in place (with back-off from [`BATCH_RETRY_FIRST_DELAY`]) before it is
/// taken apart (and again after every as many more).
const BATCH_ATTEMPTS_IN_PLACE: u32 = 4;
/// The first pause between attempts of a failed batch (doubling).
const BATCH_RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts of a failed batch.
const BATCH_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Progress acks are sent at most this often.
const PROGRESS_ACK_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Compare-and-set rounds of a checkpoint written on its own.
const CHECKPOINT_CAS_ATTEMPTS: usize = 8;

/// What to do with a message once its batch committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    Ack,
    Term,
}

/// One message of a batch, decoded once.
struct Item<'a> {
    message: &'a Message,
    seq: u64,
    event: Result<DecodedEvent, DecodeError>,
}

/// A document as the batch in hand sees it.
struct Working {
    doc: Option<Value>,
    revision: Option<u64>,
    /// Whether `doc` came from the in-memory cache rather than from the bucket.
    from_cache: bool,
    /// Changed by this batch.
    dirty: bool,
}

/// What one chunk of a batch counted.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    applied: u64,
    skipped: u64,
    duplicate: u64,
}

/// The consumer loop of one view.
pub struct Projector {
    rt: Arc<ViewRuntime>,
    consumer: jetstream::consumer::Consumer<pull::Config>,
    settings: ConsumerSettings,
    cache: HashMap<String, StoredDoc>,
    /// Documents read ahead for the batch in hand.
    prefetched: HashMap<String, Option<StoredDoc>>,
    /// Marks and the parked bucket's last sequence they reflect.
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
                    self.handle_batch(batch, &shutdown).await;
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
                self.rt.note_failure(Some(format!(
                    "waiting for events {}..{} to be redelivered (delivered to an instance that \
                     did not acknowledge them; they come back after ack_wait)",
                    self.checkpoint + 1,
                    first - 1
                )));
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
    async fn handle_batch(&mut self, batch: Vec<Message>, shutdown: &Shutdown) {
        // idle longer than the pin lasts: another instance may have written meanwhile
        if self
            .last_batch
            .is_some_and(|t| t.elapsed() >= self.settings.priority_timeout)
        {
            self.cache.clear();
        }
        self.last_batch = Some(std::time::Instant::now());
        // the batch stays ours while we work on it, however long: progress acks every third of
        // ack_wait, so it is redelivered (to a standby) only if this instance dies
        let every = (self.settings.ack_wait / 3).max(PROGRESS_ACK_MIN_INTERVAL);
        keep_alive(&batch, every, self.apply_batch(&batch, shutdown)).await;
    }

    /// Applies a batch, retrying storage failures in place with back-off (capped at
    /// [`BATCH_RETRY_MAX_DELAY`], never the consumer's redelivery back-off). After
    /// [`BATCH_ATTEMPTS_IN_PLACE`] failures the batch is taken apart once per round: an event
    /// that fails on its own while storage answers is parked as transient (its documents wait,
    /// the background retrier releases them) and the others are applied.
    async fn apply_batch(&mut self, batch: &[Message], shutdown: &Shutdown) {
        let mut delay = BATCH_RETRY_FIRST_DELAY;
        for attempt in 1u32.. {
            match self.process(batch).await {
                Ok(()) => {
                    self.rt.note_failure(None);
                    return;
                }
                Err(e) => {
                    self.rt.note_failure(Some(e.to_string()));
                    self.forget().await;
                    if attempt <= BATCH_ATTEMPTS_IN_PLACE {
                        tracing::warn!(view = %self.rt.view.name(), attempt, error = %e, "batch failed; retrying");
                    } else {
                        // the watchdog reports the stall, rate-limited
                        tracing::debug!(view = %self.rt.view.name(), attempt, error = %e, "batch failed; retrying");
                    }
                    if attempt % BATCH_ATTEMPTS_IN_PLACE == 0 && self.take_apart(batch).await {
                        return;
                    }
                }
            }
            tokio::select! {
                () = shutdown.wait() => return, // unacknowledged: a standby gets them
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(BATCH_RETRY_MAX_DELAY);
        }
    }

    /// Applies the batch one event at a time, in order. An event that fails on its own while
    /// the bucket answers (a checkpoint write succeeds) is parked as transient. `false` when
    /// storage does not answer at all: the rest of the batch is retried in place.
    async fn take_apart(&mut self, batch: &[Message]) -> bool {
        let name = self.rt.view.name();
        for m in batch {
            let Ok(info) = m.info() else { return false };
            let seq = info.stream_sequence;
            if seq <= self.checkpoint {
                continue;
            }
            let error = match self.process(std::slice::from_ref(m)).await {
                Ok(()) => continue,
                Err(e) => e.to_string(),
            };
            self.forget().await;
            if let Err(e) = self.probe_storage().await {
                tracing::debug!(view = %name, error = %e, "storage does not answer; the batch waits");
                return false;
            }
            let address = AggregateAddress::parse_subject(m.subject.as_str()).ok();
            let stored: Vec<String> = decode(m.subject.as_str(), &m.payload)
                .ok()
                .and_then(|e| self.rt.event_keys(&e.env).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|(full, _)| full)
                .collect();
            let reason = format!("transient failure, retried in the background: {error}");
            let record = record_of(
                m,
                seq,
                &reason,
                address.as_ref(),
                hold_keys(address.as_ref(), &stored),
                true,
            );
            let mut marks = match self.marks().await {
                Ok(m) => m,
                Err(_) => return false,
            };
            if self.rt.park(record, &mut marks).await.is_err() {
                return false; // the dead-letter bucket does not answer either
            }
            self.marks = None;
            if self.write_checkpoint(seq).await.is_err() {
                // the gap check in `take_contiguous` finds the parked record and moves past it
                return false;
            }
            let _ = m.ack_with(AckKind::Term).await;
        }
        true
    }

    /// After a failure: nothing in memory is trusted (another writer may have been there).
    async fn forget(&mut self) {
        self.cache.clear();
        self.rt.refresh_limits().await;
        self.marks = None;
        if let Ok((p, rev)) = store::read_checkpoint(&self.rt.docs).await {
            self.checkpoint = p;
            self.checkpoint_rev = rev;
        }
    }

    /// The marks: listing them costs a consumer, so they are kept between batches and
    /// re-listed only when the parked bucket changed since (another instance, an admin retry
    /// or skip, our own parking), which one stream-info request tells.
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

    /// Reads, concurrently, the documents the batch will touch that are not cached, so the
    /// in-order fold does not wait for them one by one.
    async fn prefetch(&mut self, items: &[Item<'_>]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = items
            .iter()
            .filter_map(|i| i.event.as_ref().ok())
            .filter_map(|e| self.rt.event_keys(&e.env).ok())
            .flatten()
            .map(|(full, _)| full)
            .filter(|k| !self.cache.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let docs = &self.rt.docs;
        let fetched: Vec<(String, Option<StoredDoc>)> = futures::stream::iter(keys)
            .map(|k| async move { store::read_doc(docs, &k).await.map(|d| (k, d)) })
            .buffer_unordered(PREFETCH_CONCURRENCY)
            .try_collect()
            .await?;
        self.prefetched = fetched.into_iter().collect();
        Ok(())
    }

    /// A document into the working set (from the cache, the prefetch or the bucket).
    async fn load(
        &mut self,
        working: &mut HashMap<String, Working>,
        key: &str,
    ) -> Result<(), StoreError> {
        if working.contains_key(key) {
            return Ok(());
        }
        let (stored, from_cache) = if let Some(d) = self.cache.get(key) {
            (Some(d.clone()), true)
        } else if let Some(d) = self.prefetched.remove(key) {
            (d, false)
        } else {
            (store::read_doc(&self.rt.docs, key).await?, false)
        };
        working.insert(
            key.to_owned(),
            Working {
                revision: stored.as_ref().map(|d| d.revision),
                doc: stored.map(|d| d.doc),
                from_cache,
                dirty: false,
            },
        );
        Ok(())
    }

    /// One batch: fold, commit documents and checkpoint atomically, ack. A batch that touches
    /// more documents than one atomic commit takes is committed in several chunks, in order.
    async fn process(&mut self, batch: &[Message]) -> Result<(), StoreError> {
        let mut items = Vec::with_capacity(batch.len());
        for m in batch {
            let seq = m
                .info()
                .map_err(|e| StoreError::new("reading message metadata", e))?
                .stream_sequence;
            // each body is decoded once, here: the prefetch and the fold share it
            items.push(Item {
                message: m,
                seq,
                event: decode(m.subject.as_str(), &m.payload),
            });
        }
        self.prefetch(&items).await?;
        let mut marks = self.marks().await?;
        let mut done = 0;
        while done < items.len() {
            done += self.process_chunk(&items[done..], &mut marks).await?;
        }
        self.prefetched.clear();
        self.marks = Some((self.marks_seen, marks));
        Ok(())
    }

    /// Folds items from the start of `items` until one atomic commit is full, commits, acks.
    /// Returns how many items it consumed (at least one).
    async fn process_chunk(
        &mut self,
        items: &[Item<'_>],
        marks: &mut Marks,
    ) -> Result<usize, StoreError> {
        let view = self.rt.view.clone();
        let mut working: HashMap<String, Working> = HashMap::new();
        let mut dirty_order: Vec<String> = Vec::new();
        let mut dispositions = Vec::with_capacity(items.len());
        let mut counts = Counts::default();
        let mut parked_any = false;
        let mut last_seq = self.checkpoint;
        let mut last_occurred: Option<OffsetDateTime> = None;
        for item in items {
            let seq = item.seq;
            let keys = match &item.event {
                Ok(e) => self.rt.event_keys(&e.env),
                Err(_) => Ok(Vec::new()),
            };
            // one commit holds the chunk's documents and the checkpoint
            let room = keys.as_ref().map_or(0, Vec::len);
            if !dispositions.is_empty() && dirty_order.len() + room + 1 > MAX_WRITES_PER_COMMIT {
                break;
            }
            last_seq = last_seq.max(seq);
            if seq <= self.checkpoint {
                // done by an instance that held the pin before us
                counts.duplicate += 1;
                dispositions.push(Disposition::Ack);
                continue;
            }
            let header_tp = item
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(shared::TRACEPARENT_HEADER))
                .map(|v| v.as_str().to_owned());
            let trace = trace_id(
                item.event.as_ref().ok().map(|e| &e.env),
                header_tp.as_deref(),
            );
            let span = tracing::info_span!("apply", view = %view.name(), seq, trace_id = %trace);
            let address = match &item.event {
                Ok(e) => Some(e.address.clone()),
                Err(_) => AggregateAddress::parse_subject(item.message.subject.as_str()).ok(),
            };
            let stored_keys: Vec<String> = keys
                .as_ref()
                .map(|k| k.iter().map(|(f, _)| f.clone()).collect())
                .unwrap_or_default();
            let holds = hold_keys(address.as_ref(), &stored_keys);
            // a cause that parks the event at once, before anything is folded
            let refusal: Option<String> = match (&item.event, &keys) {
                (Err(e), _) => Some(e.to_string()),
                (_, Err(e)) => Some(e.to_string()),
                _ => None,
            };
            match hold_state(marks, &holds, seq) {
                HoldState::AlreadyParked => {
                    dispositions.push(Disposition::Term);
                    continue;
                }
                HoldState::Behind {
                    first_seq,
                    transient,
                } => {
                    let error = format!("parked behind seq {first_seq}");
                    let record = record_of(
                        item.message,
                        seq,
                        &error,
                        address.as_ref(),
                        holds,
                        transient,
                    );
                    self.rt.park(record, marks).instrument(span).await?;
                    parked_any = true;
                    dispositions.push(Disposition::Term);
                    continue;
                }
                HoldState::Free => {}
            }
            if let Some(error) = refusal {
                let record = record_of(item.message, seq, &error, address.as_ref(), holds, false);
                self.rt.park(record, marks).instrument(span).await?;
                parked_any = true;
                dispositions.push(Disposition::Term);
                continue;
            }
            let (Ok(event), Ok(keys)) = (&item.event, &keys) else {
                unreachable!("refused above")
            };
            if keys.is_empty() {
                counts.skipped += 1;
                dispositions.push(Disposition::Ack);
                continue;
            }
            for (full, _) in keys {
                self.load(&mut working, full).await?;
            }
            let mut result = self.fold_working(&working, keys, seq, event);
            if matches!(result, Err(ref e) if e.is_permanent())
                && keys
                    .iter()
                    .any(|(k, _)| working.get(k).is_some_and(|w| w.from_cache && !w.dirty))
            {
                // the cached documents may be stale (an admin retry or a previous active
                // instance wrote them): a refusal only counts against the stored documents
                for (full, _) in keys {
                    if working.get(full).is_some_and(|w| w.from_cache && !w.dirty) {
                        self.cache.remove(full);
                        working.remove(full);
                        let stored = store::read_doc(&self.rt.docs, full).await?;
                        working.insert(
                            full.clone(),
                            Working {
                                revision: stored.as_ref().map(|d| d.revision),
                                doc: stored.map(|d| d.doc),
                                from_cache: false,
                                dirty: false,
                            },
                        );
                    }
                }
                result = self.fold_working(&working, keys, seq, event);
            }
            let _enter = span.enter();
            match result {
                Ok(EventFold::Duplicate) => {
                    counts.duplicate += 1;
                    tracing::debug!("duplicate event skipped");
                    dispositions.push(Disposition::Ack);
                }
                Ok(EventFold::Unknown) => {
                    counts.skipped += 1;
                    tracing::debug!(event_type = %event.env.event_type, "unknown event type skipped");
                    dispositions.push(Disposition::Ack);
                }
                Ok(EventFold::Applied(changed)) => {
                    for (key, doc) in changed {
                        if let Some(w) = working.get_mut(&key) {
                            if !w.dirty {
                                dirty_order.push(key.clone());
                            }
                            w.doc = Some(doc);
                            w.dirty = true;
                        }
                    }
                    tracing::debug!(event_type = %event.env.event_type, "event applied");
                    counts.applied += 1;
                    last_occurred = Some(event.env.occurred_at);
                    dispositions.push(Disposition::Ack);
                }
                Err(e) => {
                    drop(_enter);
                    let transient = !e.is_permanent();
                    let record = record_of(
                        item.message,
                        seq,
                        &e.to_string(),
                        address.as_ref(),
                        holds,
                        transient,
                    );
                    self.rt.park(record, marks).instrument(span).await?;
                    parked_any = true;
                    dispositions.push(Disposition::Term);
                }
            }
        }
        self.commit_chunk(working, dirty_order, last_seq).await?;
        if parked_any {
            // our own parks moved the parked bucket on: re-list the marks for the next batch
            // (another writer may have changed them meanwhile too)
            self.marks_seen = 0;
        }
        let consumed = dispositions.len();
        for (item, d) in items.iter().zip(dispositions) {
            let r = match d {
                Disposition::Ack => item.message.ack().await,
                Disposition::Term => item.message.ack_with(AckKind::Term).await,
            };
            if let Err(e) = r {
                // redelivered later and acknowledged as done (at or below the checkpoint)
                tracing::debug!(error = %e, "ack failed");
            }
        }
        self.record_metrics(counts, last_occurred);
        Ok(consumed)
    }

    fn fold_working(
        &self,
        working: &HashMap<String, Working>,
        keys: &[(String, String)],
        seq: u64,
        event: &DecodedEvent,
    ) -> Result<EventFold, ApplyError> {
        let docs = keys
            .iter()
            .map(|(full, local)| {
                let doc = working.get(full).and_then(|w| w.doc.clone());
                (full.clone(), local.clone(), doc)
            })
            .collect();
        fold_event(
            &*self.rt.view,
            docs,
            seq,
            &event.env,
            self.rt.max_doc_bytes(),
        )
    }

    /// Writes the changed documents and the checkpoint in one atomic commit, then caches them.
    async fn commit_chunk(
        &mut self,
        mut working: HashMap<String, Working>,
        dirty_order: Vec<String>,
        position: u64,
    ) -> Result<(), StoreError> {
        if dirty_order.is_empty() && position <= self.checkpoint && self.checkpoint_rev.is_some() {
            return Ok(());
        }
        let mut writes: Vec<DocWrite> = dirty_order
            .iter()
            .filter_map(|k| {
                let w = working.remove(k)?;
                Some(DocWrite {
                    key: k.clone(),
                    doc: w.doc.unwrap_or(Value::Null),
                    revision: w.revision,
                })
            })
            .collect();
        writes.push(DocWrite {
            key: CHECKPOINT_KEY.to_owned(),
            doc: self.checkpoint_doc(position.max(self.checkpoint)),
            revision: self.checkpoint_rev,
        });
        let revisions = match commit(&self.js, &self.rt.docs, &writes).await {
            Ok(r) => r,
            Err(CommitError::Conflict) => {
                return Err(StoreError::new(
                    "committing the batch",
                    "a document or the checkpoint changed since it was read (another writer); \
                     nothing was written",
                ));
            }
            Err(CommitError::Store(e)) => return Err(e),
        };
        if self.cache.len() + writes.len() > self.settings.cache_capacity {
            self.cache.clear();
        }
        let checkpoint_rev = revisions.last().copied();
        let n = writes.len();
        for (w, rev) in writes.into_iter().zip(revisions).take(n - 1) {
            self.cache.insert(
                w.key,
                StoredDoc {
                    doc: w.doc,
                    revision: rev,
                },
            );
        }
        self.checkpoint = position.max(self.checkpoint);
        self.checkpoint_rev = checkpoint_rev;
        Ok(())
    }

    fn record_metrics(&self, counts: Counts, last_occurred: Option<OffsetDateTime>) {
        let labels = &self.rt.labels;
        let m = &self.rt.metrics;
        m.applied.get_or_create(labels).inc_by(counts.applied);
        m.skipped.get_or_create(labels).inc_by(counts.skipped);
        m.duplicate.get_or_create(labels).inc_by(counts.duplicate);
        if let Some(at) = last_occurred {
            let behind = (OffsetDateTime::now_utc() - at).as_seconds_f64().max(0.0);
            m.behind_seconds.get_or_create(labels).set(behind);
        }
    }

    /// The checkpoint document: the position, who committed it and when (the status of the
    /// view reads the active instance and the last commit from it).
    fn checkpoint_doc(&self, position: u64) -> Value {
        json!({"position": position, "instance": self.rt.instance, "at_ms": now_ms()})
    }

    /// Whether the view's bucket takes writes: rewrites the checkpoint as it is (a conflict
    /// means another writer got there: it answers too).
    async fn probe_storage(&mut self) -> Result<(), StoreError> {
        let write = DocWrite {
            key: CHECKPOINT_KEY.to_owned(),
            doc: self.checkpoint_doc(self.checkpoint),
            revision: self.checkpoint_rev,
        };
        match commit(&self.js, &self.rt.docs, std::slice::from_ref(&write)).await {
            Ok(revs) => {
                self.checkpoint_rev = revs.first().copied();
                Ok(())
            }
            Err(CommitError::Conflict) => Ok(()),
            Err(CommitError::Store(e)) => Err(e),
        }
    }

    /// Writes the checkpoint on its own (compare-and-set on its revision).
    async fn write_checkpoint(&mut self, position: u64) -> Result<(), StoreError> {
        for _ in 0..CHECKPOINT_CAS_ATTEMPTS {
            if position <= self.checkpoint && self.checkpoint_rev.is_some() {
                return Ok(());
            }
            let write = DocWrite {
                key: CHECKPOINT_KEY.to_owned(),
                doc: self.checkpoint_doc(position),
                revision: self.checkpoint_rev,
            };
            match commit(&self.js, &self.rt.docs, std::slice::from_ref(&write)).await {
                Ok(revs) => {
                    self.checkpoint = position;
                    self.checkpoint_rev = revs.first().copied();
                    return Ok(());
                }
                Err(CommitError::Conflict) => {
                    let (p, rev) = store::read_checkpoint(&self.rt.docs).await?;
                    self.checkpoint = p;
                    self.checkpoint_rev = rev;
                }
                Err(CommitError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError::new(
            "writing the checkpoint",
            "lost the compare-and-set too often",
        ))
    }
}

/// Runs `work`, sending a progress ack for every message of `batch` every `every` meanwhile.
async fn keep_alive<F: std::future::Future>(
    batch: &[Message],
    every: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                for m in batch {
                    // an already acknowledged message ignores it
                    let _ = m.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
}
