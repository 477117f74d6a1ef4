//! The view abstraction: a named, versioned fold of events into JSON documents.
//!
//! A view decides which document an event touches ([`View::key`]) and how it changes it
//! ([`View::apply`]). Everything else (ordering, duplicates, storage, parking) is the engine's.
//! Folds must be deterministic: the same document and event always give the same result, so a
//! rejected event is rejected again on retry and a replay rebuilds the same documents.

use serde_json::Value;
use shared::{EventEnvelope, ViewName};

/// The reserved document fields the engine maintains; views must not use names starting with `_`.
pub const POSITION_FIELD: &str = "_position";
/// Set on a deleted document (a tombstone keeps `_position`, so a redelivered event stays a
/// duplicate after a delete).
pub const DELETED_FIELD: &str = "_deleted";

/// What folding one event into a document did.
#[derive(Debug, Clone, PartialEq)]
pub enum Fold {
    /// The new document.
    Set(Value),
    /// The document is deleted.
    Delete,
    /// The view does not know this event type: nothing changes (counted as skipped).
    Unknown,
}

/// What folding one event into a document in place did ([`View::apply_in_place`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The document was changed (or created) in place.
    Changed,
    /// The document is deleted.
    Deleted,
    /// The view does not know this event type: the document was left as it was.
    Unknown,
}

/// Why a view refused an event. Deterministic: the engine parks the event instead of retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The payload does not have the shape the event type requires.
    #[error("{event_type}: malformed payload: {detail}")]
    Payload {
        /// The event type.
        event_type: String,
        /// What is wrong.
        detail: String,
    },
    /// The event's version is not the next one of the document.
    #[error("version gap: the document is at version {have}, the event has version {got}")]
    VersionGap {
        /// The document's version.
        have: u64,
        /// The event's version.
        got: u64,
    },
    /// The event is not valid in the document's current state (e.g. a deposit before `opened`).
    #[error("{0}")]
    State(String),
}

/// A projection view. Implementations are pure and cheap to call.
pub trait View: Send + Sync + 'static {
    /// The view's name: part of its URL, consumer and bucket names.
    fn name(&self) -> ViewName;
    /// The fold's version: bumping it replays every event into a fresh bucket.
    fn version(&self) -> u32;
    /// The key of the document this event touches, within the event's tenant: one id token
    /// (`[A-Za-z0-9_-]`, at most 64 bytes). `None` = the event is not for this view. The stored
    /// key is `<tenant>.<key>`.
    fn key(&self, env: &EventEnvelope) -> Option<String>;
    /// Folds the event into the document (`None` = no document yet). The engine has already
    /// filtered duplicates and adds `_position` to the result.
    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError>;

    /// Folds the event into the document in place; this is what the engine calls. The
    /// default copies the document and calls [`View::apply`], which is cheap for small
    /// documents. A view whose documents grow large (one per tenant, say) overrides it to
    /// change only what the event touches. Contract: on `Err` and on [`Change::Unknown`] the
    /// document must be left exactly as it was (check everything before changing anything).
    fn apply_in_place(
        &self,
        doc: &mut Option<Value>,
        env: &EventEnvelope,
    ) -> Result<Change, ViewError> {
        Ok(match self.apply(doc.clone(), env)? {
            Fold::Set(v) => {
                *doc = Some(v);
                Change::Changed
            }
            Fold::Delete => Change::Deleted,
            Fold::Unknown => Change::Unknown,
        })
    }
}

pub(crate) fn payload_i64(env: &EventEnvelope, field: &str) -> Result<i64, ViewError> {
    env.payload
        .get(field)
        .and_then(Value::as_i64)
        .ok_or_else(|| ViewError::Payload {
            event_type: env.event_type.clone(),
            detail: format!("`{field}` must be an integer"),
        })
}

pub(crate) fn payload_str(env: &EventEnvelope, field: &str) -> Result<String, ViewError> {
    env.payload
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ViewError::Payload {
            event_type: env.event_type.clone(),
            detail: format!("`{field}` must be a string"),
        })
}
