//! Parking: an event that cannot be applied goes to the view's dead-letter bucket with its
//! cause, and every aggregate and document it touches is marked, so that later events touching
//! any of them are parked behind it (strict order per document) while everything else moves on.

use std::collections::BTreeMap;

use async_nats::jetstream::Message;
use serde_json::Value;
use shared::AggregateAddress;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::engine::ViewRuntime;
use crate::engine::commit::{CommitError, DocWrite, commit};
use crate::store::{
    self, ParkMark, ParkedRecord, StoreError, doc_mark_key, park_mark_key, parked_msg_key, to_bytes,
};

/// Marks by mark key (`agg.…` / `doc.…`), with each mark's KV revision.
pub(crate) type Marks = BTreeMap<String, (ParkMark, u64)>;

/// Compare-and-set rounds before a mark update gives up (another writer keeps changing it).
const MARK_CAS_ATTEMPTS: usize = 8;

/// The marks an event holds when parked: its aggregate's and one per stored document key.
pub(crate) fn hold_keys(address: Option<&AggregateAddress>, stored_keys: &[String]) -> Vec<String> {
    address
        .map(park_mark_key)
        .into_iter()
        .chain(stored_keys.iter().map(|k| doc_mark_key(k)))
        .collect()
}

/// Whether an event (at `seq`, holding `holds`) is free to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldState {
    /// No mark holds it.
    Free,
    /// It was parked before (a redelivery): acknowledge it.
    AlreadyParked,
    /// A mark holds it: park it behind that mark's first event.
    Behind {
        /// The first parked event of the mark.
        first_seq: u64,
        /// Whether every mark holding it is transient (it is then released with them).
        transient: bool,
    },
}

/// What holds back an event at `seq` touching `holds`. A mark only holds events after its
/// first parked event; an event within `first_seq..=last_seq` was parked behind it already.
pub(crate) fn hold_state(marks: &Marks, holds: &[String], seq: u64) -> HoldState {
    let mut state = HoldState::Free;
    for h in holds {
        let Some((mark, _)) = marks.get(h) else {
            continue;
        };
        if seq < mark.first_seq {
            continue;
        }
        if seq <= mark.last_seq {
            return HoldState::AlreadyParked;
        }
        state = match state {
            HoldState::Behind {
                first_seq,
                transient,
            } => HoldState::Behind {
                first_seq: first_seq.min(mark.first_seq),
                transient: transient && mark.transient,
            },
            _ => HoldState::Behind {
                first_seq: mark.first_seq,
                transient: mark.transient,
            },
        };
    }
    state
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The record of `m` parked for `error`.
pub(crate) fn record_of(
    m: &Message,
    seq: u64,
    error: &str,
    address: Option<&AggregateAddress>,
    holds: Vec<String>,
    transient: bool,
) -> ParkedRecord {
    let (body_base64, body_len, body_truncated) = store::parked_body(&m.payload);
    ParkedRecord {
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
                    .filter_map(|(k, v)| v.last().map(|v| (k.to_string(), v.as_str().to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
        aggregate: address.map(store::aggregate_token),
        parked_at: now_rfc3339(),
        holds,
        transient,
    }
}

impl ViewRuntime {
    /// Parks `record`: writes it, then marks every key it holds (created, or its `last_seq`
    /// bumped with compare-and-set so a concurrent retry notices), keeping `marks` current.
    pub(crate) async fn park(
        &self,
        record: ParkedRecord,
        marks: &mut Marks,
    ) -> Result<(), StoreError> {
        let seq = record.seq;
        self.parked
            .put(parked_msg_key(seq), to_bytes(&record))
            .await
            .map_err(|e| StoreError::new("writing a parked record", e))?;
        for key in record.hold_keys() {
            self.mark(&key, seq, record.transient, marks).await?;
        }
        if record.transient {
            self.transient_parked.notify_one();
        }
        self.metrics.parked.get_or_create(&self.labels).inc();
        if record.error.starts_with("parked behind") {
            tracing::info!(view = %self.view.name(), seq, subject = %record.subject, error = %record.error, "event parked behind an earlier one");
        } else {
            tracing::warn!(view = %self.view.name(), seq, subject = %record.subject, error = %record.error, transient = record.transient, "event parked");
        }
        Ok(())
    }

    async fn mark(
        &self,
        key: &str,
        seq: u64,
        transient: bool,
        marks: &mut Marks,
    ) -> Result<(), StoreError> {
        for _ in 0..MARK_CAS_ATTEMPTS {
            let current = match marks.get(key) {
                Some(m) => Some(m.clone()),
                None => store::read_doc(&self.parked, key).await?.and_then(|d| {
                    Some((serde_json::from_value::<ParkMark>(d.doc).ok()?, d.revision))
                }),
            };
            let (mark, revision) = match &current {
                Some((m, rev)) => (
                    ParkMark {
                        first_seq: m.first_seq.min(seq),
                        last_seq: m.last_seq.max(seq),
                        transient: m.transient && transient,
                    },
                    Some(*rev),
                ),
                None => (
                    ParkMark {
                        first_seq: seq,
                        last_seq: seq,
                        transient,
                    },
                    None,
                ),
            };
            if current.as_ref().is_some_and(|(m, _)| *m == mark) {
                return Ok(());
            }
            let write = DocWrite {
                key: key.to_owned(),
                doc: serde_json::to_value(&mark).unwrap_or(Value::Null),
                revision,
            };
            match commit(&self.js, &self.parked, std::slice::from_ref(&write)).await {
                Ok(revs) => {
                    marks.insert(key.to_owned(), (mark, revs[0]));
                    return Ok(());
                }
                Err(CommitError::Conflict) => {
                    // changed or cleared meanwhile (another instance, an admin retry): re-read
                    marks.remove(key);
                }
                Err(CommitError::Store(e)) => return Err(e),
            }
        }
        Err(StoreError::new(
            format!("marking {key}"),
            "the mark changed concurrently too often",
        ))
    }

    /// Deletes the marks in `marks` that no parked record holds any more. A mark whose
    /// revision changed since it was listed (a consumer parked behind it meanwhile) stays.
    pub(crate) async fn clear_unheld_marks(
        &self,
        marks: &Marks,
    ) -> Result<Vec<String>, StoreError> {
        let held: std::collections::BTreeSet<String> = self
            .parked_records()
            .await?
            .iter()
            .flat_map(ParkedRecord::hold_keys)
            .collect();
        let mut cleared = Vec::new();
        for (key, (_, revision)) in marks {
            if held.contains(key) {
                continue;
            }
            match self
                .parked
                .delete_expect_revision(key, Some(*revision))
                .await
            {
                Ok(()) => cleared.push(key.clone()),
                Err(e) => tracing::debug!(key, error = %e, "mark changed meanwhile; it stays"),
            }
        }
        Ok(cleared)
    }
}
