//! Applying one batch: decode once, prefetch documents, fold every event into its documents in
//! stream order (parking what cannot be applied), then commit the changed documents and the
//! checkpoint atomically and acknowledge.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use async_nats::jetstream::message::AckKind;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;
use shared::AggregateAddress;
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::engine::commit::{CommitError, DocWrite, MAX_WRITES_PER_COMMIT, commit, write_each};
use crate::engine::decode::{DecodeError, DecodedEvent, decode, trace_id};
use crate::engine::fold::{ApplyError, EventFold, fold_event};
use crate::engine::parking::{HoldState, Marks, hold_keys, hold_state, record_of};
use crate::engine::pipeline::{Counts, Folded, InFlight, Working, Written};
use crate::engine::projector::Projector;
use crate::store::{self, CHECKPOINT_KEY, StoreError, StoredDoc};
use crate::view::KeyError;

/// Documents read at once while prefetching a batch.
const PREFETCH_CONCURRENCY: usize = 256;

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

/// What one commit's worth of a batch holds while it is folded.
#[derive(Default)]
struct Chunk {
    /// The documents read or changed, by stored key.
    working: HashMap<String, Working>,
    /// The changed ones, in the order they first changed.
    dirty_order: Vec<String>,
    /// What to do with each message once committed.
    dispositions: Vec<Disposition>,
    counts: Counts,
    parked_any: bool,
    /// An event of the chunk changed several documents: they must be written together.
    multi_document: bool,
    /// The checkpoint this commit writes.
    last_seq: u64,
    last_occurred: Option<OffsetDateTime>,
}

impl Projector {
    /// Reads, concurrently, the documents the batch will touch that are not cached, so the
    /// in-order fold does not wait for them one by one.
    async fn prefetch(&mut self, items: &[Item<'_>]) -> Result<(), StoreError> {
        let mut keys: Vec<String> = items
            .iter()
            .filter_map(|i| i.event.as_ref().ok())
            .filter_map(|e| self.rt.event_keys(&e.env).ok())
            .flatten()
            .map(|(full, _)| full)
            .filter(|k| !self.cache.contains_key(k) && !self.cache.known_absent(k))
            .filter(|k| self.in_flight.as_ref().is_none_or(|f| f.doc(k).is_none()))
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
        if let Some(doc) = self.in_flight.as_ref().and_then(|f| f.doc(key)) {
            // newer than anything cached or stored: the commit in flight writes it
            working.insert(
                key.to_owned(),
                Working {
                    doc: Some(doc.clone()),
                    revision: None,
                    from_cache: false,
                    dirty: false,
                    in_flight: true,
                },
            );
            return Ok(());
        }
        let (stored, from_cache) = if let Some(d) = self.cache.get(key) {
            (Some(d.clone()), true)
        } else if self.cache.known_absent(key) {
            // the cache holds the whole bucket: no read (a refusal is checked against the bucket)
            (None, true)
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
                in_flight: false,
            },
        );
        Ok(())
    }

    /// One batch: fold, commit documents and checkpoint atomically, ack. A batch that touches
    /// more documents than one atomic commit takes is committed in several chunks, in order.
    /// With pipelining on, a batch that folds into one commit without parking anything is
    /// returned folded instead ([`Projector::start_in_flight`] writes it).
    pub(super) async fn process(
        &mut self,
        batch: &[Message],
    ) -> Result<Option<Folded>, StoreError> {
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
        let mut folded = None;
        while done < items.len() {
            match self
                .process_chunk(&items[done..], &mut marks, done == 0)
                .await?
            {
                ChunkOutcome::Committed(n) => done += n,
                ChunkOutcome::Folded(f) => {
                    folded = Some(f);
                    break;
                }
            }
        }
        self.prefetched.clear();
        self.marks = Some((self.marks_seen, marks));
        Ok(folded)
    }

    /// Folds items from the start of `items` until one atomic commit is full, commits, acks.
    /// Returns how many items it consumed (at least one).
    async fn process_chunk(
        &mut self,
        items: &[Item<'_>],
        marks: &mut Marks,
        first: bool,
    ) -> Result<ChunkOutcome, StoreError> {
        let mut chunk = Chunk {
            last_seq: self.checkpoint,
            ..Chunk::default()
        };
        for item in items {
            let keys = match &item.event {
                Ok(e) => self.rt.event_keys(&e.env),
                Err(_) => Ok(Vec::new()),
            };
            // one commit holds the chunk's documents and the checkpoint
            let room = keys.as_ref().map_or(0, Vec::len);
            if !chunk.dispositions.is_empty()
                && chunk.dirty_order.len() + room + 1 > MAX_WRITES_PER_COMMIT
            {
                break;
            }
            chunk.last_seq = chunk.last_seq.max(item.seq);
            let disposition = if item.seq <= self.checkpoint {
                // done by an instance that held the pin before us
                chunk.counts.duplicate += 1;
                Disposition::Ack
            } else {
                self.apply_item(item, keys, &mut chunk, marks).await?
            };
            chunk.dispositions.push(disposition);
        }
        if self.pipelining && first && chunk.dispositions.len() == items.len() && !chunk.parked_any
        {
            // the whole batch in one commit, nothing parked: written while the next is folded
            return Ok(ChunkOutcome::Folded(Folded {
                working: chunk.working,
                dirty_order: chunk.dirty_order,
                position: chunk.last_seq,
                together: chunk.multi_document,
                counts: chunk.counts,
                last_occurred: chunk.last_occurred,
            }));
        }
        // written here and now: after the commit in flight (if that failed, this chunk was
        // folded on documents that were not written: fold again)
        if !self.finish_in_flight(None).await {
            return Err(StoreError::new(
                "committing the batch",
                "the batch before it failed to commit and was applied again; folding again",
            ));
        }
        let dispositions = std::mem::take(&mut chunk.dispositions);
        self.commit_chunk(
            chunk.working,
            chunk.dirty_order,
            chunk.last_seq,
            chunk.multi_document,
        )
        .await?;
        if chunk.parked_any {
            // our own parks moved the parked bucket on: re-list the marks for the next batch
            // (another writer may have changed them meanwhile too)
            self.marks_seen = 0;
        }
        let consumed = dispositions.len();
        if self.ack_all {
            // one ack covers the chunk: everything up to its last event is committed
            if let Some(last) = items.get(consumed.saturating_sub(1)) {
                ack(last.message, Disposition::Ack).await;
            }
        } else {
            for (item, d) in items.iter().zip(dispositions) {
                ack(item.message, d).await;
            }
        }
        self.record_metrics(chunk.counts, chunk.last_occurred);
        Ok(ChunkOutcome::Committed(consumed))
    }

    /// Starts writing a folded batch (after the previous commit finished): its documents
    /// and the checkpoint, on a task of their own.
    pub(super) fn start_in_flight(&mut self, folded: Folded, messages: Vec<Message>) {
        let Folded {
            mut working,
            dirty_order,
            position,
            together,
            counts,
            last_occurred,
        } = folded;
        let writes = self.chunk_writes(&mut working, dirty_order, position);
        let by_key = writes
            .iter()
            .take(writes.len() - 1)
            .enumerate()
            .map(|(i, w)| (w.key.clone(), i))
            .collect();
        let js = self.js.clone();
        let docs = self.rt.docs.clone();
        // shared with the task, not copied: the loop reads the documents while they are written
        let writes = std::sync::Arc::new(writes);
        let to_write = std::sync::Arc::clone(&writes);
        let task = tokio::spawn(async move { write_chunk(&js, &docs, &to_write, together).await });
        self.in_flight = Some(InFlight {
            task,
            writes,
            by_key,
            position,
            messages,
            counts,
            last_occurred,
        });
    }

    /// The end of a commit in flight: on success its documents are cached, the checkpoint
    /// moves, the batch is acknowledged and counted. Returns the batch with the outcome.
    pub(super) async fn end_in_flight(
        &mut self,
        in_flight: InFlight,
        written: Option<Written>,
    ) -> (Result<(), StoreError>, Vec<Message>) {
        let InFlight {
            mut task,
            writes,
            position,
            messages,
            counts,
            last_occurred,
            ..
        } = in_flight;
        let written = match written {
            Some(w) => w,
            None => (&mut task)
                .await
                .unwrap_or_else(|e| Err(StoreError::new("committing the batch", e).into())),
        };
        let revisions = match written {
            Ok(r) => r,
            Err(e) => return (Err(commit_failure(e)), messages),
        };
        // the task has ended: the writes are ours alone again
        let writes = std::sync::Arc::try_unwrap(writes).unwrap_or_else(|w| (*w).clone());
        self.committed(writes, revisions, position);
        if self.ack_all {
            if let Some(last) = messages.last() {
                ack(last, Disposition::Ack).await;
            }
        } else {
            for m in &messages {
                ack(m, Disposition::Ack).await;
            }
        }
        self.record_metrics(counts, last_occurred);
        self.rt.note_failure(None);
        (Ok(()), messages)
    }

    /// One event after the checkpoint: parked behind a mark, parked for a cause found before
    /// folding (undecodable, invalid key), skipped, or folded into the chunk's documents.
    async fn apply_item(
        &mut self,
        item: &Item<'_>,
        keys: Result<Vec<(String, String)>, KeyError>,
        chunk: &mut Chunk,
        marks: &mut Marks,
    ) -> Result<Disposition, StoreError> {
        let seq = item.seq;
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
        let span =
            tracing::info_span!("apply", view = %self.rt.view.name(), seq, trace_id = %trace);
        let address = match &item.event {
            Ok(e) => Some(e.address.clone()),
            Err(_) => AggregateAddress::parse_subject(item.message.subject.as_str()).ok(),
        };
        let stored_keys: Vec<String> = keys
            .as_ref()
            .map(|k| k.iter().map(|(f, _)| f.clone()).collect())
            .unwrap_or_default();
        let holds = hold_keys(address.as_ref(), &stored_keys);
        let park = |error: &str, transient: bool, holds: Vec<String>| {
            record_of(item.message, seq, error, address.as_ref(), holds, transient)
        };
        // held back behind a parked event, or a cause that parks it before folding
        let record = match (hold_state(marks, &holds, seq), &item.event, &keys) {
            (HoldState::AlreadyParked, _, _) => return Ok(Disposition::Term),
            (
                HoldState::Behind {
                    first_seq,
                    transient,
                },
                _,
                _,
            ) => Some(park(
                &format!("parked behind seq {first_seq}"),
                transient,
                holds.clone(),
            )),
            (HoldState::Free, Err(e), _) => Some(park(&e.to_string(), false, holds.clone())),
            (HoldState::Free, _, Err(e)) => Some(park(&e.to_string(), false, holds.clone())),
            (HoldState::Free, Ok(_), Ok(_)) => None,
        };
        if let Some(record) = record {
            self.rt.park(record, marks).instrument(span).await?;
            chunk.parked_any = true;
            return Ok(Disposition::Term);
        }
        let (Ok(event), Ok(keys)) = (&item.event, &keys) else {
            unreachable!("parked above")
        };
        if keys.is_empty() {
            chunk.counts.skipped += 1;
            return Ok(Disposition::Ack);
        }
        let result = self.fold_item(&mut chunk.working, keys, seq, event).await?;
        let _enter = span.enter();
        match result {
            Ok(EventFold::Duplicate) => {
                chunk.counts.duplicate += 1;
                tracing::debug!("duplicate event skipped");
                Ok(Disposition::Ack)
            }
            Ok(EventFold::Unknown) => {
                chunk.counts.skipped += 1;
                tracing::debug!(event_type = %event.env.event_type, "unknown event type skipped");
                Ok(Disposition::Ack)
            }
            Ok(EventFold::Applied(changed)) => {
                chunk.multi_document |= changed.len() > 1;
                for (key, doc, _) in changed {
                    if let Some(w) = chunk.working.get_mut(&key) {
                        if !w.dirty {
                            chunk.dirty_order.push(key.clone());
                        }
                        w.doc = Some(doc);
                        w.dirty = true;
                    }
                }
                tracing::debug!(event_type = %event.env.event_type, "event applied");
                chunk.counts.applied += 1;
                chunk.last_occurred = Some(event.env.occurred_at);
                Ok(Disposition::Ack)
            }
            Err(e) => {
                drop(_enter);
                let record = park(&e.to_string(), !e.is_permanent(), holds);
                self.rt.park(record, marks).instrument(span).await?;
                chunk.parked_any = true;
                Ok(Disposition::Term)
            }
        }
    }

    /// Folds one event into the working set's documents (loading them first). A refusal
    /// against cached documents is checked again against the stored ones: the cache may be
    /// stale (an admin retry or a previous active instance wrote them).
    async fn fold_item(
        &mut self,
        working: &mut HashMap<String, Working>,
        keys: &[(String, String)],
        seq: u64,
        event: &DecodedEvent,
    ) -> Result<Result<EventFold, ApplyError>, StoreError> {
        for (full, _) in keys {
            self.load(working, full).await?;
        }
        let result = self.fold_working(working, keys, seq, event);
        let stale = |w: &Working| w.from_cache && !w.dirty;
        if !matches!(result, Err(ref e) if e.is_permanent())
            || !keys.iter().any(|(k, _)| working.get(k).is_some_and(stale))
        {
            return Ok(result);
        }
        for (full, _) in keys {
            if working.get(full).is_some_and(stale) {
                self.cache.remove(full);
                working.remove(full);
                self.load(working, full).await?;
            }
        }
        Ok(self.fold_working(working, keys, seq, event))
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

    /// Writes the changed documents and the checkpoint, then caches them: in one atomic commit
    /// when an event changed several documents (`together`), else each document on its own,
    /// all in flight at once, and the checkpoint after them (see [`write_each`]).
    async fn commit_chunk(
        &mut self,
        mut working: HashMap<String, Working>,
        dirty_order: Vec<String>,
        position: u64,
        together: bool,
    ) -> Result<(), StoreError> {
        if dirty_order.is_empty() && position <= self.checkpoint && self.checkpoint_rev.is_some() {
            return Ok(());
        }
        let writes = self.chunk_writes(&mut working, dirty_order, position);
        let revisions = write_chunk(&self.js, &self.rt.docs, &writes, together)
            .await
            .map_err(commit_failure)?;
        self.committed(writes, revisions, position);
        Ok(())
    }

    /// A chunk's writes: its changed documents, each at the revision it was read at (one
    /// taken from the commit in flight at the revision that commit got), then the checkpoint.
    fn chunk_writes(
        &self,
        working: &mut HashMap<String, Working>,
        dirty_order: Vec<String>,
        position: u64,
    ) -> Vec<DocWrite> {
        let mut writes = Vec::with_capacity(dirty_order.len() + 1);
        for key in dirty_order {
            let Some(w) = working.remove(&key) else {
                continue;
            };
            let revision = if w.in_flight {
                self.written_last.get(&key).copied()
            } else {
                w.revision
            };
            writes.push(DocWrite {
                key,
                doc: w.doc.unwrap_or(Value::Null),
                revision,
            });
        }
        writes.push(DocWrite {
            key: CHECKPOINT_KEY.to_owned(),
            doc: self.checkpoint_doc(position.max(self.checkpoint)),
            revision: self.checkpoint_rev,
        });
        writes
    }

    /// After a chunk's writes (checkpoint last) got `revisions`: counted, documents cached, the
    /// checkpoint moved, the revisions kept for a batch folded on these documents.
    fn committed(&mut self, writes: Vec<DocWrite>, revisions: Vec<u64>, position: u64) {
        self.rt.metrics.commits.get_or_create(&self.rt.labels).inc();
        self.checkpoint_stored(position.max(self.checkpoint), revisions.last().copied());
        self.written_last.clear();
        let n = writes.len();
        for (w, rev) in writes.into_iter().zip(revisions).take(n - 1) {
            self.written_last.insert(w.key.clone(), rev);
            self.cache.insert(
                w.key,
                StoredDoc {
                    doc: w.doc,
                    revision: rev,
                },
            );
        }
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
}

/// What one chunk of a batch came to.
enum ChunkOutcome {
    /// Committed and acknowledged: this many items.
    Committed(usize),
    /// The whole batch, folded, not written yet.
    Folded(Folded),
}

/// Acknowledges one message as `d` says (a failure is redelivered later and acknowledged as
/// done, at or below the checkpoint).
async fn ack(m: &Message, d: Disposition) {
    let r = match d {
        Disposition::Ack => m.ack().await,
        Disposition::Term => m.ack_with(AckKind::Term).await,
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "ack failed");
    }
}

/// A chunk's documents and, last, the checkpoint: in one atomic commit when an event changed
/// several documents (`together`), else each document on its own, all in flight at once, and
/// the checkpoint after them (see [`write_each`]).
async fn write_chunk(
    js: &async_nats::jetstream::Context,
    kv: &async_nats::jetstream::kv::Store,
    writes: &[DocWrite],
    together: bool,
) -> Written {
    if together || writes.len() <= 1 {
        return commit(js, kv, writes).await;
    }
    let (docs, checkpoint) = writes.split_at(writes.len() - 1);
    let mut revisions = write_each(js, kv, docs).await?;
    revisions.extend(commit(js, kv, checkpoint).await?);
    Ok(revisions)
}

/// A failed commit as the loop reports it.
fn commit_failure(e: CommitError) -> StoreError {
    match e {
        CommitError::Conflict => StoreError::new(
            "committing the batch",
            "a document or the checkpoint changed since it was read (another writer); \
             the checkpoint did not move",
        ),
        CommitError::Store(e) => e,
    }
}
