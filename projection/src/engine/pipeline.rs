//! The pipeline of the live loop: a batch folded into one commit ([`Folded`]) and a commit
//! being written while the next batch is folded ([`InFlight`]). The consumer loop
//! (`projector`) keeps one in flight; `batch` folds into and writes from these.

use std::collections::HashMap;

use async_nats::jetstream::Message;
use serde_json::Value;
use time::OffsetDateTime;

use crate::engine::commit::{CommitError, DocWrite};
use crate::store::StoreError;

/// A document as the batch in hand sees it.
pub(crate) struct Working {
    pub(crate) doc: Option<Value>,
    pub(crate) revision: Option<u64>,
    /// Whether `doc` came from the in-memory cache rather than from the bucket.
    pub(crate) from_cache: bool,
    /// Changed by this batch.
    pub(crate) dirty: bool,
    /// Taken from the commit in flight: its revision is the one that commit gets.
    pub(crate) in_flight: bool,
}

/// A batch folded into one commit that is not written yet (see [`InFlight`]).
pub(crate) struct Folded {
    pub(crate) working: HashMap<String, Working>,
    pub(crate) dirty_order: Vec<String>,
    pub(crate) position: u64,
    pub(crate) together: bool,
    pub(crate) counts: Counts,
    pub(crate) last_occurred: Option<OffsetDateTime>,
}

/// What a commit in flight came to.
pub(crate) type Written = Result<Vec<u64>, CommitError>;

/// A batch's commit being written while the next batch is folded: the documents it writes
/// (the next batch folds on them), the checkpoint it moves to, the batch it acknowledges once
/// written. One at a time, in stream order: a batch's writes start only after the previous
/// batch's were written (they need its revisions), and a batch is acknowledged only after its
/// own commit. If it fails, the batch is applied again the careful way and whatever was folded
/// on it is folded again.
pub(crate) struct InFlight {
    pub(crate) task: tokio::task::JoinHandle<Written>,
    pub(crate) writes: std::sync::Arc<Vec<DocWrite>>,
    /// Index of each document (not the checkpoint) in `writes`.
    pub(crate) by_key: HashMap<String, usize>,
    pub(crate) position: u64,
    pub(crate) messages: Vec<Message>,
    pub(crate) counts: Counts,
    pub(crate) last_occurred: Option<OffsetDateTime>,
}

impl InFlight {
    /// The checkpoint it moves to.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Its outcome, once written (never, when there is none).
    pub(crate) async fn written(in_flight: Option<&mut InFlight>) -> Written {
        match in_flight {
            Some(f) => (&mut f.task)
                .await
                .unwrap_or_else(|e| Err(StoreError::new("committing the batch", e).into())),
            None => std::future::pending().await,
        }
    }

    /// The document it writes at `key`, if any.
    pub(crate) fn doc(&self, key: &str) -> Option<&Value> {
        self.by_key.get(key).map(|&i| &self.writes[i].doc)
    }
}

/// What one chunk of a batch counted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) applied: u64,
    pub(crate) skipped: u64,
    pub(crate) duplicate: u64,
}
