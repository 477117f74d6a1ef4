//! Writing documents: every document a batch changed, and the checkpoint, in one ADR-50 atomic
//! batch publish to the view's bucket, each with compare-and-set on the revision it was read at.
//!
//! All or nothing: a reader never sees one document of an event without the others, a crash
//! cannot leave half a batch, and because the checkpoint is part of the same batch, an instance
//! that lost the pin (another one moved the checkpoint) has its whole commit refused: fencing
//! by the checkpoint's revision. The server allows at most [`MAX_WRITES_PER_COMMIT`] messages per
//! batch; the projector commits more often when a batch touches more documents.

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde_json::Value;

use crate::store::{StoreError, to_bytes};

/// The server's limit on messages in one atomic batch.
pub const MAX_WRITES_PER_COMMIT: usize = 1000;

/// Room kept for the subject and headers of a write when checking a document against the
/// bucket's value limit.
pub const WRITE_OVERHEAD_BYTES: usize = 256;

/// One document to write.
#[derive(Debug, Clone)]
pub(crate) struct DocWrite {
    /// The stored key.
    pub(crate) key: String,
    /// The document.
    pub(crate) doc: Value,
    /// The revision it was read at (`None`: it must not exist).
    pub(crate) revision: Option<u64>,
}

/// Why a commit failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// A key was not at the revision expected: another writer (an admin retry, an instance
    /// that took over) was there first. Nothing was written.
    #[error("a document or the checkpoint changed since it was read; nothing was written")]
    Conflict,
    /// Storage failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The largest document a bucket accepts: its stream's `max_message_size` (when set), at most
/// the server's `max_payload`, less room for headers.
pub(crate) fn max_doc_bytes(stream_max: i32, server_max_payload: usize) -> usize {
    let limit = match usize::try_from(stream_max) {
        Ok(m) if m > 0 => m.min(server_max_payload.max(1)),
        _ => server_max_payload,
    };
    limit.saturating_sub(WRITE_OVERHEAD_BYTES)
}

fn subject(kv: &kv::Store, key: &str) -> String {
    format!("{}{key}", kv.put_prefix.as_deref().unwrap_or(&kv.prefix))
}

fn publish_error(e: &jetstream::context::PublishError, what: &str) -> CommitError {
    if platform::nats::is_wrong_last_sequence(e) {
        CommitError::Conflict
    } else {
        CommitError::Store(StoreError::new(what.to_owned(), e.to_string()))
    }
}

fn expect(w: &DocWrite) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        shared::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        w.revision.unwrap_or(0).to_string().as_str(),
    );
    h
}

/// Writes `writes` each on its own, all in flight at once, each with compare-and-set on its
/// revision; returns each one's new revision, in order. Not atomic: on an error some may be
/// written. Only for documents no reader needs together (each event they hold changed one
/// document), and before the checkpoint: a document written ahead of a failed commit carries
/// the `_position` of its last event, so the events are skipped as duplicates when they come
/// again. On a single-replica file-storage bucket this avoids what an atomic batch costs the
/// server (it stages every batch in a file store of its own, created and removed per batch).
pub(crate) async fn write_each(
    js: &jetstream::Context,
    kv: &kv::Store,
    writes: &[DocWrite],
) -> Result<Vec<u64>, CommitError> {
    let what = || format!("committing {} documents, each on its own", writes.len());
    let mut acks = Vec::with_capacity(writes.len());
    for w in writes {
        acks.push(
            js.publish_with_headers(subject(kv, &w.key), expect(w), to_bytes(&w.doc))
                .await
                .map_err(|e| publish_error(&e, &what()))?,
        );
    }
    let mut revisions = Vec::with_capacity(acks.len());
    for ack in acks {
        revisions.push(ack.await.map_err(|e| publish_error(&e, &what()))?.sequence);
    }
    Ok(revisions)
}

/// Writes `writes` atomically (at most [`MAX_WRITES_PER_COMMIT`]); returns each one's new
/// revision, in order.
pub(crate) async fn commit(
    js: &jetstream::Context,
    kv: &kv::Store,
    writes: &[DocWrite],
) -> Result<Vec<u64>, CommitError> {
    let what = || format!("committing {} documents", writes.len());
    match writes {
        [] => Ok(Vec::new()),
        [w] => {
            let ack = js
                .publish_with_headers(subject(kv, &w.key), expect(w), to_bytes(&w.doc))
                .await
                .map_err(|e| publish_error(&e, &what()))?
                .await
                .map_err(|e| publish_error(&e, &what()))?;
            Ok(vec![ack.sequence])
        }
        many if many.len() > MAX_WRITES_PER_COMMIT => Err(CommitError::Store(StoreError::new(
            what(),
            format!("more than {MAX_WRITES_PER_COMMIT} writes in one atomic batch"),
        ))),
        many => {
            let client = js.client();
            let batch_id = uuid::Uuid::new_v4().simple().to_string();
            let n = many.len();
            for (i, w) in many.iter().enumerate() {
                let mut h = expect(w);
                h.insert(shared::NATS_BATCH_ID, batch_id.as_str());
                h.insert(shared::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
                let body: Bytes = to_bytes(&w.doc);
                if i + 1 < n {
                    client
                        .publish_with_headers(subject(kv, &w.key), h, body)
                        .await
                        .map_err(|e| StoreError::new(what(), e))?;
                } else {
                    h.insert(shared::NATS_BATCH_COMMIT, "1");
                    let ack = js
                        .publish_with_headers(subject(kv, &w.key), h, body)
                        .await
                        .map_err(|e| publish_error(&e, &what()))?
                        .await
                        .map_err(|e| publish_error(&e, &what()))?;
                    // the batch's messages have consecutive sequences ending at the ack's
                    let first = ack.sequence + 1 - n as u64;
                    return Ok((0..n as u64).map(|i| first + i).collect());
                }
            }
            unreachable!("the last write commits")
        }
    }
}
