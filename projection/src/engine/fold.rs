//! Folding one event into the documents it touches: duplicates, the view's fold, `_position`,
//! tombstones and the size limit. Pure: storage is the caller's.

use serde_json::{Value, json};
use shared::EventEnvelope;

use crate::engine::decode::DecodeError;
use crate::store::{StoreError, position_of};
use crate::view::{DELETED_FIELD, Docs, Folded, KeyError, POSITION_FIELD, Touch, View, ViewError};

/// Why one event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Permanent: the view refused it.
    #[error(transparent)]
    View(#[from] ViewError),
    /// Permanent: it cannot be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Permanent: the view named a key that is not valid.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Permanent: a document would exceed the bucket's value limit.
    #[error("document-too-large: {key} would be {size} bytes; the bucket holds at most {max}")]
    TooLarge {
        /// The stored key.
        key: String,
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Transient: storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Transient: lost the compare-and-set too often.
    #[error("document {0} changed concurrently too often")]
    Contended(String),
}

impl ApplyError {
    /// Whether retrying cannot help (the event is parked at once).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, ApplyError::Store(_) | ApplyError::Contended(_))
    }
}

/// What folding one event did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum EventFold {
    /// The new contents of the documents the event changed (stored key, document, its
    /// serialized size in bytes).
    Applied(Vec<(String, Value, usize)>),
    /// Already applied: a document it touches is at or past its sequence.
    Duplicate,
    /// The view does not know the event type.
    Unknown,
}

pub(crate) fn set_position(doc: Value, seq: u64) -> Value {
    match doc {
        Value::Object(mut m) => {
            m.insert(POSITION_FIELD.to_owned(), json!(seq));
            Value::Object(m)
        }
        other => json!({"value": other, POSITION_FIELD: seq}),
    }
}

pub(crate) fn tombstone(seq: u64) -> Value {
    json!({DELETED_FIELD: true, POSITION_FIELD: seq})
}

/// The serialized size of a document.
pub(crate) fn doc_size(doc: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, doc);
    c.0
}

/// Folds `env` (stream sequence `seq`) into `docs`: (stored key, local key, current document
/// including a tombstone). Commits are atomic over an event's documents, so if any of them
/// is at or past `seq` the event was applied before. A tombstone folds as "no document".
/// Every document the fold changed is checked against `max_doc_bytes`.
pub(crate) fn fold_event(
    view: &dyn View,
    docs: Vec<(String, String, Option<Value>)>,
    seq: u64,
    env: &EventEnvelope,
    max_doc_bytes: usize,
) -> Result<EventFold, ApplyError> {
    if docs
        .iter()
        .any(|(_, _, d)| d.as_ref().map_or(0, position_of) >= seq)
    {
        return Ok(EventFold::Duplicate);
    }
    let mut stored_keys = Vec::with_capacity(docs.len());
    let mut slots = Docs::new(docs.into_iter().map(|(full, local, doc)| {
        stored_keys.push(full);
        (local, doc)
    }));
    match view.fold(&mut slots, env)? {
        Folded::Unknown => return Ok(EventFold::Unknown),
        Folded::Applied => {}
    }
    let mut out = Vec::new();
    for (slot, full) in slots.slots.into_iter().zip(stored_keys) {
        let doc = match slot.touch {
            Touch::Unchanged => continue,
            Touch::Set => set_position(slot.doc.unwrap_or(Value::Null), seq),
            Touch::Deleted => tombstone(seq),
        };
        let size = doc_size(&doc);
        if size > max_doc_bytes {
            return Err(ApplyError::TooLarge {
                key: full,
                size,
                max: max_doc_bytes,
            });
        }
        out.push((full, doc, size));
    }
    Ok(EventFold::Applied(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{Accounts, TenantSummary};

    fn env(ty: &str, version: u64, payload: Value) -> EventEnvelope {
        serde_json::from_value(json!({
            "tenant_id": "acme", "aggregate_type": "account", "aggregate_id": "a",
            "version": version, "event_type": ty, "payload": payload,
            "occurred_at": "2026-01-01T00:00:00Z"
        }))
        .expect("envelope")
    }

    fn one(doc: Option<Value>) -> Vec<(String, String, Option<Value>)> {
        vec![("acme.a".into(), "a".into(), doc)]
    }

    #[test]
    fn positions_tombstones_duplicates_and_refusals() {
        let view = Accounts;
        let opened = env("opened", 1, json!({"owner": "A", "currency": "EUR"}));
        let EventFold::Applied(out) =
            fold_event(&view, one(None), 7, &opened, 1 << 20).expect("opened")
        else {
            panic!("not applied")
        };
        let stored = out[0].1.clone();
        assert_eq!(stored[POSITION_FIELD], 7);
        assert_eq!(stored["version"], 1);
        // a redelivery is a duplicate
        assert_eq!(
            fold_event(&view, one(Some(stored.clone())), 7, &opened, 1 << 20).expect("dup"),
            EventFold::Duplicate
        );
        // refused and unknown
        let gap = env("deposited", 5, json!({"amount": 1}));
        assert!(matches!(
            fold_event(&view, one(Some(stored.clone())), 8, &gap, 1 << 20),
            Err(ApplyError::View(_))
        ));
        let unknown = env("renamed", 2, json!({}));
        assert_eq!(
            fold_event(&view, one(Some(stored)), 9, &unknown, 1 << 20).expect("unknown"),
            EventFold::Unknown
        );
        // a tombstone folds as "no document"
        let EventFold::Applied(out) =
            fold_event(&view, one(Some(tombstone(10))), 12, &opened, 1 << 20).expect("reopen")
        else {
            panic!("not applied")
        };
        assert_eq!(out[0].1[POSITION_FIELD], 12);
        assert!(out[0].1.get(DELETED_FIELD).is_none());
    }

    #[test]
    fn a_document_over_the_limit_is_refused_naming_key_and_size() {
        let opened = env("opened", 1, json!({"owner": "A", "currency": "EUR"}));
        let e = fold_event(&Accounts, one(None), 1, &opened, 20).expect_err("too large");
        assert!(!matches!(e, ApplyError::Store(_)));
        assert!(e.is_permanent());
        let text = e.to_string();
        assert!(
            text.starts_with("document-too-large: acme.a would be") && text.ends_with("at most 20"),
            "{text}"
        );
    }

    #[test]
    fn a_multi_document_fold_changes_every_named_document() {
        let opened = env("opened", 1, json!({"owner": "A", "currency": "EUR"}));
        let docs = vec![
            ("acme.summary".into(), "summary".into(), None),
            ("acme.account.a".into(), "account.a".into(), None),
        ];
        let EventFold::Applied(out) =
            fold_event(&TenantSummary, docs, 3, &opened, 1 << 20).expect("fold")
        else {
            panic!("not applied")
        };
        let keys: Vec<&str> = out.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["acme.summary", "acme.account.a"]);
        assert!(out.iter().all(|(_, d, _)| d[POSITION_FIELD] == 3));
    }
}
