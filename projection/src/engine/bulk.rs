//! Bulk loading a fresh generation (the first phase of a rebuild).
//!
//! A generation being rebuilt has no reader until the pointer is switched to it, and an
//! interrupted rebuild starts over from an empty bucket, so it need not write each document
//! per batch nor acknowledge per event: an ordered consumer (no acks, no server-side state
//! beyond its life) replays the stream from the generation's checkpoint, the fold runs in
//! memory over a *chunk* of the backlog, and each document the chunk changed is written ONCE
//! when the chunk is flushed (atomic batches of at most 999 documents, a few in flight), then
//! the checkpoint. A chunk is bounded by the memory its documents take (an estimate from their
//! serialized size, [`chunk_cost`]), never by a count, so a tenant with many documents makes
//! more flushes, not a bigger process. A full chunk is first *packed*: every document it holds
//! as a parsed value is kept as its serialized JSON instead (about half the memory for small
//! documents, a quarter for large ones; an event of it parses it again), and only when packing
//! leaves less than a quarter of the budget free is the chunk flushed. So a working set up to
//! about one and a half to three times what fits parsed is still written
//! once per document rather than once per event (events spread over more documents than a
//! chunk holds would otherwise flush each document as often as it changes). After a flush the
//! documents are dropped from memory; a later event of one reads it back from the bucket
//! (prefetched, concurrently, per group of messages).
//!
//! The phase ends at the stream position the rebuild was asked to reach, or just before the
//! first event it would have to park (undecodable, an invalid key, refused by the view, a
//! document over the value limit): the generation's durable consumer then starts after the
//! checkpoint and handles that event and everything later with the live engine (parking,
//! marks, retries).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::Value;

use crate::engine::ViewRuntime;
use crate::engine::commit::{CommitError, DocWrite, MAX_WRITES_PER_COMMIT, commit};
use crate::engine::decode::{DecodedEvent, decode};
use crate::engine::fold::{EventFold, fold_event};
use crate::store::{self, CHECKPOINT_KEY, StoreError};

/// Messages decoded (and their missing documents read) together.
const GROUP: usize = 512;
/// Documents read at once when a group needs documents an earlier flush wrote.
const READ_CONCURRENCY: usize = 256;
/// Atomic batches in flight while a chunk is flushed.
const FLUSH_CONCURRENCY: usize = 4;
/// How often progress is reported.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// A held document's fixed cost beyond its contents (map entry, key, revision, bookkeeping).
const DOC_OVERHEAD_BYTES: usize = 160;
/// In-memory `serde_json::Value` bytes per serialized byte (maps, small strings), rounded up.
const VALUE_BYTES_PER_SERIALIZED_BYTE: usize = 4;

/// The estimated memory a document held in a chunk as a parsed value takes.
pub fn chunk_cost(key: &str, serialized: usize) -> usize {
    DOC_OVERHEAD_BYTES + 2 * key.len() + VALUE_BYTES_PER_SERIALIZED_BYTE * serialized
}

/// The estimated memory a document held packed (its serialized JSON) takes.
pub fn packed_cost(key: &str, serialized: usize) -> usize {
    DOC_OVERHEAD_BYTES + 2 * key.len() + serialized
}

/// A held document's contents.
enum Body {
    /// Parsed: what the last fold made of it, or what was read back.
    Parsed(Value),
    /// Its serialized JSON (a packed chunk).
    Packed(bytes::Bytes),
}

impl Body {
    /// The document as a value (a packed one parsed again; it was serialized from one).
    fn value(&self) -> Value {
        match self {
            Body::Parsed(v) => v.clone(),
            Body::Packed(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        }
    }
}

/// One document held by the chunk.
struct Held {
    /// `None`: no document (never written, or read back as absent).
    doc: Option<Body>,
    /// Its revision in the bucket (`None`: must not exist).
    revision: Option<u64>,
    /// Its [`chunk_cost`].
    cost: usize,
    /// Changed since it was read or last flushed.
    dirty: bool,
}

/// Where a bulk load stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkOutcome {
    /// The checkpoint written: every event up to here is in the generation.
    pub position: u64,
    /// Events folded (applied, skipped or duplicates).
    pub events: u64,
    /// Chunks flushed.
    pub flushes: u64,
    /// Times the chunk was packed (its documents kept serialized) instead of flushed.
    pub packs: u64,
    /// Whether it stopped before `until` at an event the live engine must handle.
    pub stopped_early: bool,
}

/// The documents in memory, what they cost, and the checkpoint's revision.
struct Chunk<'a> {
    rt: &'a ViewRuntime,
    js: &'a jetstream::Context,
    held: HashMap<String, Held>,
    bytes: usize,
    budget: usize,
    /// Whether anything was written to the bucket yet (before that, no document exists).
    flushed: bool,
    checkpoint_rev: Option<u64>,
    flushes: u64,
    packs: u64,
}

impl Chunk<'_> {
    /// Reads the documents of `events` the chunk does not hold (only once something was
    /// flushed: before that the fresh bucket has none).
    async fn read_missing(&mut self, events: &[(u64, DecodedEvent)]) -> Result<(), StoreError> {
        if !self.flushed {
            return Ok(());
        }
        let mut keys: Vec<String> = events
            .iter()
            .filter_map(|(_, e)| self.rt.event_keys(&e.env).ok())
            .flatten()
            .map(|(full, _)| full)
            .filter(|k| !self.held.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let docs = &self.rt.docs;
        let read: Vec<(String, Option<store::StoredDoc>)> = futures::stream::iter(keys)
            .map(|k| async move { store::read_doc(docs, &k).await.map(|d| (k, d)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (key, stored) in read {
            let cost = chunk_cost(
                &key,
                stored
                    .as_ref()
                    .map_or(0, |d| crate::engine::fold::doc_size(&d.doc)),
            );
            self.bytes += cost;
            self.held.insert(
                key,
                Held {
                    revision: stored.as_ref().map(|d| d.revision),
                    doc: stored.map(|d| Body::Parsed(d.doc)),
                    cost,
                    dirty: false,
                },
            );
        }
        Ok(())
    }

    /// Folds one event. `Ok(false)`: it must be left to the live engine (it would be parked).
    fn fold(&mut self, seq: u64, event: &DecodedEvent) -> bool {
        let Ok(keys) = self.rt.event_keys(&event.env) else {
            return false;
        };
        if keys.is_empty() {
            return true;
        }
        let docs = keys
            .iter()
            .map(|(full, local)| {
                let doc = self
                    .held
                    .get(full)
                    .and_then(|h| h.doc.as_ref())
                    .map(Body::value);
                (full.clone(), local.clone(), doc)
            })
            .collect();
        match fold_event(
            &*self.rt.view,
            docs,
            seq,
            &event.env,
            self.rt.max_doc_bytes(),
        ) {
            Ok(EventFold::Applied(changed)) => {
                for (key, doc, size) in changed {
                    let cost = chunk_cost(&key, size);
                    let held = self.held.entry(key).or_insert(Held {
                        doc: None,
                        revision: None,
                        cost: 0,
                        dirty: false,
                    });
                    self.bytes = self.bytes + cost - held.cost;
                    held.cost = cost;
                    held.doc = Some(Body::Parsed(doc));
                    held.dirty = true;
                }
                true
            }
            Ok(EventFold::Duplicate | EventFold::Unknown) => true,
            Err(_) => false,
        }
    }

    /// Keeps every parsed document as its serialized JSON instead; the memory the chunk then
    /// takes.
    fn pack(&mut self) -> usize {
        let mut bytes = 0;
        for (key, held) in &mut self.held {
            if let Some(Body::Parsed(v)) = &held.doc {
                let packed = crate::store::to_bytes(v);
                held.cost = packed_cost(key, packed.len());
                held.doc = Some(Body::Packed(packed));
            }
            bytes += held.cost;
        }
        self.bytes = bytes;
        self.packs += 1;
        bytes
    }

    /// Writes every changed document once, then the checkpoint; forgets the documents.
    async fn flush(&mut self, position: u64) -> Result<(), StoreError> {
        let writes: Vec<DocWrite> = self
            .held
            .drain()
            .filter(|(_, h)| h.dirty)
            .map(|(key, h)| DocWrite {
                key,
                doc: match h.doc {
                    Some(Body::Parsed(v)) => v,
                    Some(packed @ Body::Packed(_)) => packed.value(),
                    None => Value::Null,
                },
                revision: h.revision,
            })
            .collect();
        self.bytes = 0;
        let what = move || format!("flushing a rebuild chunk at position {position}");
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut groups = writes.chunks(MAX_WRITES_PER_COMMIT - 1);
        loop {
            while in_flight.len() < FLUSH_CONCURRENCY
                && let Some(group) = groups.next()
            {
                in_flight.push(commit(self.js, &self.rt.docs, group));
            }
            match in_flight.next().await {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(CommitError::Conflict)) => {
                    return Err(StoreError::new(
                        what(),
                        "a document changed under the rebuild (another writer in a fresh \
                         generation)",
                    ));
                }
                Some(Err(CommitError::Store(e))) => return Err(e),
            }
        }
        drop(in_flight);
        let checkpoint = DocWrite {
            key: CHECKPOINT_KEY.to_owned(),
            doc: self.rt.checkpoint_doc(position),
            revision: self.checkpoint_rev,
        };
        let revs = commit(self.js, &self.rt.docs, std::slice::from_ref(&checkpoint))
            .await
            .map_err(|e| match e {
                CommitError::Conflict => StoreError::new(
                    what(),
                    "the checkpoint changed under the rebuild (another writer)",
                ),
                CommitError::Store(e) => e,
            })?;
        self.checkpoint_rev = revs.first().copied();
        self.flushed = true;
        self.flushes += 1;
        Ok(())
    }
}

/// Replays the stream into `rt` (a fresh generation nobody else writes) from its checkpoint
/// up to `until`, folding chunks of at most `chunk_bytes` (estimated) in memory and writing
/// each changed document once per chunk. `on_progress` gets the position reached, a few
/// times a second.
pub async fn load(
    js: &jetstream::Context,
    rt: &ViewRuntime,
    until: u64,
    chunk_bytes: usize,
    mut on_progress: impl FnMut(u64),
) -> Result<BulkOutcome, StoreError> {
    let (start, checkpoint_rev) = store::read_checkpoint(&rt.docs).await?;
    let mut outcome = BulkOutcome {
        position: start,
        events: 0,
        flushes: 0,
        packs: 0,
        stopped_early: false,
    };
    if until <= start {
        return Ok(outcome);
    }
    let nats = |what: &str, e: String| StoreError::new(what.to_owned(), e);
    let stream = js
        .get_stream(shared::STREAM_NAME)
        .await
        .map_err(|e| nats("reading the stream for a rebuild", e.to_string()))?;
    let replay = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: shared::STREAM_FILTER.to_owned(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| nats("creating the rebuild's replay consumer", e.to_string()))?;
    let messages = replay
        .messages()
        .await
        .map_err(|e| nats("replaying the stream for a rebuild", e.to_string()))?;
    let mut groups = messages.ready_chunks(GROUP);
    let mut chunk = Chunk {
        rt,
        js,
        held: HashMap::new(),
        bytes: 0,
        budget: chunk_bytes.max(1),
        flushed: start > 0,
        checkpoint_rev,
        flushes: 0,
        packs: 0,
    };
    let mut position = start;
    let mut last_progress = Instant::now();
    'replay: while position < until {
        let group = groups
            .next()
            .await
            .ok_or_else(|| nats("replaying the stream for a rebuild", "ended".to_owned()))?;
        let mut events = Vec::with_capacity(group.len());
        let mut caught_up = false;
        for m in group {
            let m = m.map_err(|e| nats("replaying the stream for a rebuild", e.to_string()))?;
            let info = m
                .info()
                .map_err(|e| nats("reading message metadata", e.to_string()))?;
            let seq = info.stream_sequence;
            if seq > until {
                caught_up = true;
                break;
            }
            caught_up |= info.pending == 0 || seq == until;
            match decode(m.subject.as_str(), &m.payload) {
                Ok(e) => events.push((seq, e)),
                Err(_) => {
                    // left to the live engine, which parks it
                    outcome.stopped_early = true;
                    fold_all(&mut chunk, &events, &mut position, &mut outcome).await?;
                    break 'replay;
                }
            }
            if caught_up {
                break;
            }
        }
        if !fold_all(&mut chunk, &events, &mut position, &mut outcome).await? {
            outcome.stopped_early = true;
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            on_progress(position);
        }
        if caught_up {
            break;
        }
    }
    if position > start {
        chunk.flush(position).await?;
    }
    outcome.position = position;
    outcome.flushes = chunk.flushes;
    outcome.packs = chunk.packs;
    on_progress(position);
    Ok(outcome)
}

/// Folds `events` in order (reading what an earlier flush wrote first), flushing whenever the
/// chunk is full. `false` when one of them must be left to the live engine (the position stays
/// before it).
async fn fold_all(
    chunk: &mut Chunk<'_>,
    events: &[(u64, DecodedEvent)],
    position: &mut u64,
    outcome: &mut BulkOutcome,
) -> Result<bool, StoreError> {
    chunk.read_missing(events).await?;
    for (i, (seq, event)) in events.iter().enumerate() {
        if !chunk.fold(*seq, event) {
            return Ok(false);
        }
        *position = *seq;
        outcome.events += 1;
        // packed, a full chunk may still hold it all; flushed only when packing leaves less
        // than a quarter of it free (each flush writes every held document once)
        if chunk.bytes >= chunk.budget && chunk.pack() >= chunk.budget / 4 * 3 {
            chunk.flush(*position).await?;
            // the flush forgot every document: the rest of the group reads theirs back
            chunk.read_missing(&events[i + 1..]).await?;
        }
    }
    Ok(true)
}
