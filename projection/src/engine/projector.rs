//! The consumer loop of one view: pull, put deliveries in stream order, fold each batch into
//! its documents, commit documents and checkpoint atomically, then acknowledge.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use futures::StreamExt as _;
use serde_json::Value;
use shared::AggregateAddress;
use tokio_util::sync::CancellationToken;

use crate::engine::ViewRuntime;
use crate::engine::cache::DocCache;
use crate::engine::commit::{CommitError, DocWrite, commit};
use crate::engine::consumer::{ConsumerSettings, PRIORITY_GROUP, StartError, ensure_consumer};
use crate::engine::decode::decode;
use crate::engine::parking::{Marks, hold_keys, record_of};
use crate::engine::pipeline::{Folded, InFlight, Written};
use crate::store::{self, CHECKPOINT_KEY, StoreError, StoredDoc};

/// Attempts of a batch in place (with back-off from [`BATCH_RETRY_FIRST_DELAY`]) before it is
/// taken apart (and again after every as many more).
const BATCH_ATTEMPTS_IN_PLACE: u32 = 4;
/// The first pause between attempts of a failed batch (doubling).
const BATCH_RETRY_FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest pause between attempts of a failed batch.
const BATCH_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Progress acks are sent at most this often.
const PROGRESS_ACK_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// How long, at most, the consumer loop waits for more of a backlog before applying a batch
/// that is not full (in all: under a steady trickle of events, waiting again for each one would
/// hold a batch until it is full, 250 ms at 2 000 events/s, and read-your-writes with it).
const BATCH_FILL_WAIT: Duration = Duration::from_millis(5);
/// Compare-and-set rounds of a checkpoint written on its own.
const CHECKPOINT_CAS_ATTEMPTS: usize = 8;

/// The consumer loop of one view.
pub struct Projector {
    pub(super) rt: Arc<ViewRuntime>,
    pub(super) consumer: jetstream::consumer::Consumer<pull::Config>,
    pub(super) settings: ConsumerSettings,
    /// Documents this instance committed last, by stored key: bounded (least recently used
    /// go first), never trusted after a failure or an idle spell (see [`Projector::forget`]).
    pub(super) cache: DocCache,
    /// Documents read ahead for the batch in hand.
    pub(super) prefetched: HashMap<String, Option<StoredDoc>>,
    /// Marks and the parked bucket's last sequence they reflect.
    pub(super) marks: Option<(u64, Marks)>,
    pub(super) marks_seen: u64,
    pub(super) checkpoint_rev: Option<u64>,
    pub(super) checkpoint: u64,
    pub(super) js: jetstream::Context,
    pub(super) last_gap_check: Option<std::time::Instant>,
    pub(super) last_batch: Option<std::time::Instant>,
    /// The consumer acknowledges everything up to an acknowledged message (ack-all): one ack
    /// per commit. Consumers created before it are acknowledged message by message.
    pub(super) ack_all: bool,
    /// The previous batch's commit, still being written while this batch is folded.
    pub(super) in_flight: Option<InFlight>,
    /// Whether a batch may leave its commit in flight (off while one is being recovered).
    pub(super) pipelining: bool,
    /// The revisions the last finished commit in flight got, by stored key (a batch folded
    /// on its documents writes at these).
    pub(super) written_last: HashMap<String, u64>,
    /// The loop's shutdown (a recovery stops with it).
    pub(super) shutdown: CancellationToken,
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
        let cache = DocCache::new(settings.cache_capacity);
        let ack_all = consumer.cached_info().config.ack_policy
            == async_nats::jetstream::consumer::AckPolicy::All;
        Ok(Projector {
            ack_all,
            in_flight: None,
            pipelining: true,
            written_last: HashMap::new(),
            shutdown: CancellationToken::new(),
            rt,
            consumer,
            settings,
            cache,
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
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        self.rt.running.store(true, Ordering::Relaxed);
        let name = self.rt.view.name();
        tracing::info!(view = %name, version = self.rt.view.version(), "projector started");
        match self.cache.fill(&self.rt.docs).await {
            Ok(documents) => tracing::info!(
                view = %name,
                documents,
                whole_bucket = self.cache.is_complete(),
                "document cache filled from the bucket"
            ),
            Err(e) => tracing::warn!(
                view = %name,
                error = %e,
                "cannot fill the document cache; documents are read as they are needed"
            ),
        }
        'outer: while !shutdown.is_cancelled() {
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
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut chunks = messages.ready_chunks(self.settings.batch);
            // messages received out of order (after a fail-over), waiting for the gap to fill
            let mut held: BTreeMap<u64, Message> = BTreeMap::new();
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break 'outer,
                    // the commit in flight is finished (acknowledged) as soon as it is written,
                    // not when the next batch comes
                    written = InFlight::written(self.in_flight.as_mut()) => Next::Written(written),
                    c = chunks.next() => Next::Chunk(c),
                };
                let chunk = match next {
                    Next::Written(written) => {
                        self.finish_in_flight(Some(written)).await;
                        continue;
                    }
                    Next::Chunk(c) => c,
                };
                let Some(chunk) = chunk else {
                    break;
                };
                let mut backlog = hold(&name, chunk, &mut held);
                // behind the stream: wait a moment for a full batch, since every commit costs
                // the same whatever its size (one atomic batch on the server, the checkpoint);
                // a view that is caught up (nothing pending) applies what came at once
                let mut ended = false;
                let fill_until = tokio::time::Instant::now() + BATCH_FILL_WAIT;
                while backlog && held.len() < self.settings.batch {
                    match tokio::time::timeout_at(fill_until, chunks.next()).await {
                        Ok(Some(more)) => backlog = hold(&name, more, &mut held),
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let batch = self.take_contiguous(&mut held).await;
                if !batch.is_empty() {
                    self.handle_batch(batch, &shutdown).await;
                }
                if ended {
                    break;
                }
            }
        }
        self.finish_in_flight(None).await;
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
        if let Some(position) = self.in_flight.as_ref().map(InFlight::position) {
            // the batch before is being written: what continues it exactly goes on; anything
            // else (a gap, a redelivery) is sorted out with that commit finished
            if held.keys().next() == Some(&(position + 1)) {
                let mut batch = Vec::new();
                let mut next = position + 1;
                while batch.len() < self.settings.batch
                    && let Some(m) = held.remove(&next)
                {
                    batch.push(m);
                    next += 1;
                }
                return batch;
            }
            self.finish_in_flight(None).await;
        }
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
    async fn handle_batch(&mut self, batch: Vec<Message>, shutdown: &CancellationToken) {
        // the first batch, or idle longer than the pin lasts: another instance may have
        // committed meanwhile; the cache stays only while the checkpoint is the one this
        // instance knows
        if self
            .last_batch
            .is_none_or(|t| t.elapsed() >= self.settings.priority_timeout)
        {
            self.finish_in_flight(None).await;
            match store::read_checkpoint(&self.rt.docs).await {
                Ok((_, revision)) if revision == self.checkpoint_rev => {}
                _ => self.cache.clear(),
            }
        }
        self.last_batch = Some(std::time::Instant::now());
        // the batch stays ours while we work on it, however long: progress acks every third of
        // ack_wait, so it is redelivered (to a standby) only if this instance dies
        let every = (self.settings.ack_wait / 3).max(PROGRESS_ACK_MIN_INTERVAL);
        let folded = keep_alive(&batch, every, self.apply_batch(&batch, shutdown)).await;
        let Some(folded) = folded else {
            return;
        };
        // folded against the commit in flight: it goes out once that one is written
        if self.finish_in_flight(None).await {
            self.start_in_flight(folded, batch);
        } else {
            // the commit it was folded against failed and was applied again: fold again
            self.pipelining = false;
            let _ = keep_alive(&batch, every, self.apply_batch(&batch, shutdown)).await;
            self.pipelining = true;
        }
    }

    /// Finishes the commit in flight, if any (`written`: its outcome, when already awaited):
    /// caches its documents, moves the checkpoint, acknowledges its batch. A commit that
    /// failed is applied again the careful way (retries in place, taken apart); `false` then,
    /// since whatever was folded against it is stale.
    pub(super) fn finish_in_flight(
        &mut self,
        written: Option<Written>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        // boxed: applying a failed batch again may finish a commit in flight (none is left
        // then), and an async fn cannot contain itself
        Box::pin(async move {
            let Some(in_flight) = self.in_flight.take() else {
                return true;
            };
            let (outcome, messages) = self.end_in_flight(in_flight, written).await;
            let Err(e) = outcome else {
                return true;
            };
            self.rt.note_failure(Some(e.to_string()));
            tracing::warn!(view = %self.rt.view.name(), error = %e, "batch commit failed; applying it again");
            self.forget().await;
            let every = (self.settings.ack_wait / 3).max(PROGRESS_ACK_MIN_INTERVAL);
            let shutdown = self.shutdown.clone();
            let pipelining = std::mem::replace(&mut self.pipelining, false);
            let _ = keep_alive(&messages, every, self.apply_batch(&messages, &shutdown)).await;
            self.pipelining = pipelining;
            false
        })
    }

    /// Applies a batch, retrying storage failures in place with back-off (capped at
    /// [`BATCH_RETRY_MAX_DELAY`], never the consumer's redelivery back-off). After
    /// [`BATCH_ATTEMPTS_IN_PLACE`] failures the batch is taken apart once per round: an event
    /// that fails on its own while storage answers is parked as transient (its documents wait,
    /// the background retrier releases them) and the others are applied.
    async fn apply_batch(
        &mut self,
        batch: &[Message],
        shutdown: &CancellationToken,
    ) -> Option<Folded> {
        let mut delay = BATCH_RETRY_FIRST_DELAY;
        for attempt in 1u32.. {
            match self.process(batch).await {
                Ok(folded) => {
                    self.rt.note_failure(None);
                    return folded;
                }
                Err(e) => {
                    self.rt.note_failure(Some(e.to_string()));
                    // nothing folded against the commit in flight is kept
                    self.finish_in_flight(None).await;
                    self.forget().await;
                    if attempt <= BATCH_ATTEMPTS_IN_PLACE {
                        tracing::warn!(view = %self.rt.view.name(), attempt, error = %e, "batch failed; retrying");
                    } else {
                        // the watchdog reports the stall, rate-limited
                        tracing::debug!(view = %self.rt.view.name(), attempt, error = %e, "batch failed; retrying");
                    }
                    if attempt % BATCH_ATTEMPTS_IN_PLACE == 0 && self.take_apart(batch).await {
                        return None;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None, // unacknowledged: a standby gets them
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(BATCH_RETRY_MAX_DELAY);
        }
        None
    }

    /// Applies the batch one event at a time, in order. An event that fails on its own while
    /// the bucket answers (a checkpoint write succeeds) is parked as transient. `false` when
    /// storage does not answer at all: the rest of the batch is retried in place.
    async fn take_apart(&mut self, batch: &[Message]) -> bool {
        let pipelining = std::mem::replace(&mut self.pipelining, false);
        let done = self.take_apart_one_by_one(batch).await;
        self.pipelining = pipelining;
        done
    }

    async fn take_apart_one_by_one(&mut self, batch: &[Message]) -> bool {
        let name = self.rt.view.name();
        for m in batch {
            let Ok(info) = m.info() else { return false };
            let seq = info.stream_sequence;
            if seq <= self.checkpoint {
                continue;
            }
            let error = match self.process(std::slice::from_ref(m)).await {
                Ok(_) => continue,
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
            let _ = if self.ack_all {
                m.ack().await
            } else {
                m.ack_with(AckKind::Term).await
            };
        }
        true
    }

    /// After a failure: nothing in memory is trusted (another writer may have been there).
    pub(super) async fn forget(&mut self) {
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
    pub(super) async fn marks(&mut self) -> Result<Marks, StoreError> {
        // fresh: `kv::Store::status` answers the information cached when the bucket was
        // opened, so marks changed by another instance or an admin retry went unnoticed
        let last = self
            .rt
            .parked
            .stream
            .get_info()
            .await
            .map_err(|e| StoreError::new("reading the parked bucket's state", e))?
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

    /// The checkpoint document ([`ViewRuntime::checkpoint_doc`]).
    pub(super) fn checkpoint_doc(&self, position: u64) -> Value {
        self.rt.checkpoint_doc(position)
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

    /// This instance's write of the checkpoint at `position` was acknowledged at `revision`:
    /// the loop goes on from there, and the reads waiting on this instance learn of it
    /// ([`ViewRuntime::commits`]).
    pub(super) fn checkpoint_stored(&mut self, position: u64, revision: Option<u64>) {
        self.checkpoint = position;
        self.checkpoint_rev = revision;
        self.rt.committed_up_to(position);
    }

    /// Writes the checkpoint on its own (compare-and-set on its revision).
    pub(super) async fn write_checkpoint(&mut self, position: u64) -> Result<(), StoreError> {
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
                    self.checkpoint_stored(position, revs.first().copied());
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

/// Puts the delivered messages of `chunk` among the held ones by stream sequence (a later
/// delivery of the same event replaces the earlier one); whether the stream holds more for the
/// consumer than it has delivered (the last message's `pending`).
fn hold(
    view: &shared::ViewName,
    chunk: Vec<Result<Message, pull::MessagesError>>,
    held: &mut BTreeMap<u64, Message>,
) -> bool {
    let mut pending = false;
    for m in chunk {
        match m {
            Ok(m) => match m.info().map(|i| (i.stream_sequence, i.pending)) {
                Ok((seq, left)) => {
                    pending = left > 0;
                    held.insert(seq, m);
                }
                Err(e) => tracing::warn!(view = %view, error = %e, "message without metadata"),
            },
            Err(e) => tracing::debug!(view = %view, error = %e, "pull status"),
        }
    }
    pending
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

/// What the consumer loop woke up for.
enum Next<C> {
    /// The commit in flight was written (or failed).
    Written(Written),
    /// Messages (`None`: the pull ended).
    Chunk(Option<C>),
}
