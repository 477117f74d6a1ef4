//! The admin side of parking: listing, retrying (in order, through the same fold and atomic
//! commit as the consumer) and skipping parked events. The background retrier of transiently
//! parked events uses the same retry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use shared::EventEnvelope;
use tokio_util::sync::CancellationToken;

use crate::engine::ViewRuntime;
use crate::engine::commit::{CommitError, DocWrite, commit};
use crate::engine::decode::decode;
use crate::engine::fold::{ApplyError, EventFold, fold_event};
use crate::store::{self, ParkedRecord, StoreError, parked_msg_key, to_bytes};

/// Read-fold-commit rounds of one event before it counts as contended.
const APPLY_DIRECT_ATTEMPTS: usize = 16;
/// Rounds of one retry: each picks up what the consumer parked behind meanwhile.
const RETRY_ROUNDS: usize = 32;

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
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct RetryReport {
    /// Parked events applied (or found already applied).
    pub applied: u64,
    /// Aggregates (`<tenant>.<type>.<id>`) with no parked event left.
    pub cleared: Vec<String>,
    /// Aggregates still parked, with the error that stopped them.
    pub failed: BTreeMap<String, String>,
}

/// Which parked events a retry takes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryFilter<'a> {
    /// Only this aggregate's (`<tenant>.<type>.<id>`).
    pub aggregate: Option<&'a str>,
    /// Only those parked for a transient reason (the background retrier).
    pub transient_only: bool,
}

impl ViewRuntime {
    /// Applies one event straight to the bucket: read its documents, fold, commit them
    /// atomically with compare-and-set (bounded retries). Used by retries; the consumer loop
    /// batches instead.
    pub async fn apply_direct(&self, seq: u64, env: &EventEnvelope) -> Result<Applied, ApplyError> {
        let keys = self.event_keys(env)?;
        if keys.is_empty() {
            return Ok(Applied::Skipped);
        }
        for _ in 0..APPLY_DIRECT_ATTEMPTS {
            let mut current = Vec::with_capacity(keys.len());
            let mut revisions = BTreeMap::new();
            for (full, local) in &keys {
                let d = store::read_doc(&self.docs, full).await?;
                revisions.insert(full.clone(), d.as_ref().map(|d| d.revision));
                current.push((full.clone(), local.clone(), d.map(|d| d.doc)));
            }
            let writes: Vec<DocWrite> =
                match fold_event(&*self.view, current, seq, env, self.max_doc_bytes())? {
                    EventFold::Duplicate => return Ok(Applied::Duplicate),
                    EventFold::Unknown => return Ok(Applied::Skipped),
                    EventFold::Applied(docs) => docs
                        .into_iter()
                        .map(|(key, doc, _)| DocWrite {
                            revision: revisions.get(&key).copied().flatten(),
                            key,
                            doc,
                        })
                        .collect(),
                };
            match commit(&self.js, &self.docs, &writes).await {
                Ok(_) => return Ok(Applied::Applied),
                Err(CommitError::Conflict) => continue,
                Err(CommitError::Store(e)) => return Err(e.into()),
            }
        }
        Err(ApplyError::Contended(
            keys.into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
                .join(", "),
        ))
    }

    /// The first parked event holding back the document at `stored_key`, if any.
    pub async fn held_since(&self, stored_key: &str) -> Result<Option<u64>, StoreError> {
        Ok(
            store::read_doc(&self.parked, &store::doc_mark_key(stored_key))
                .await?
                .and_then(|d| serde_json::from_value::<store::ParkMark>(d.doc).ok())
                .map(|m| m.first_seq),
        )
    }

    /// Every parked record, in sequence order.
    pub async fn parked_records(&self) -> Result<Vec<ParkedRecord>, StoreError> {
        store::parked_records(&self.parked).await
    }

    /// Drops one parked record and the marks no record holds any more. `false` when there is
    /// no such record.
    pub async fn skip(&self, seq: u64) -> Result<bool, StoreError> {
        let key = parked_msg_key(seq);
        let marks = store::park_marks(&self.parked).await?;
        if store::read_doc(&self.parked, &key).await?.is_none() {
            return Ok(false);
        }
        self.parked
            .delete(&key)
            .await
            .map_err(|e| StoreError::new(format!("deleting {key}"), e))?;
        tracing::info!(view = %self.view.name(), seq, "parked event skipped");
        self.clear_unheld_marks(&marks).await?;
        Ok(true)
    }

    /// Re-applies parked events in sequence order through the fold and an atomic commit and
    /// clears what succeeded. An event that fails again stays parked, and so does every later
    /// one sharing an aggregate or document with it (or with a parked event the filter left
    /// out): order per document holds.
    pub async fn retry(&self, filter: RetryFilter<'_>) -> Result<RetryReport, StoreError> {
        self.refresh_limits().await;
        let mut report = RetryReport::default();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        for _ in 0..RETRY_ROUNDS {
            let marks = store::park_marks(&self.parked).await?;
            let records = self.parked_records().await?;
            let mut blocked: BTreeSet<String> = BTreeSet::new();
            let mut progressed = false;
            for r in &records {
                let holds = r.hold_keys();
                let selected = filter
                    .aggregate
                    .is_none_or(|a| r.aggregate.as_deref() == Some(a))
                    && (!filter.transient_only || r.transient);
                if !selected || holds.iter().any(|h| blocked.contains(h)) {
                    blocked.extend(holds);
                    continue;
                }
                let agg = r.aggregate.clone().unwrap_or_else(|| r.subject.clone());
                touched.insert(agg.clone());
                match self.retry_one(r).await {
                    Ok(()) => {
                        report.applied += 1;
                        progressed = true;
                        report.failed.remove(&agg);
                    }
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(e) => {
                        let mut updated = r.clone();
                        updated.error = e.to_string();
                        updated.transient = !e.is_permanent();
                        let _ = self
                            .parked
                            .put(parked_msg_key(r.seq), to_bytes(&updated))
                            .await;
                        report.failed.insert(agg, format!("seq {}: {e}", r.seq));
                        blocked.extend(holds);
                    }
                }
            }
            self.clear_unheld_marks(&marks).await?;
            // another round only if the consumer parked more behind what we just released
            let left = self.parked_records().await?;
            let more = left.iter().any(|r| {
                filter
                    .aggregate
                    .is_none_or(|a| r.aggregate.as_deref() == Some(a))
                    && (!filter.transient_only || r.transient)
                    && !records.iter().any(|o| o.seq == r.seq)
            });
            if !more || !progressed {
                let still: BTreeSet<String> =
                    left.iter().filter_map(|r| r.aggregate.clone()).collect();
                report.cleared = touched
                    .iter()
                    .filter(|a| !still.contains(*a) && !report.failed.contains_key(*a))
                    .cloned()
                    .collect();
                return Ok(report);
            }
        }
        report.failed.insert(
            "*".into(),
            "the consumer kept parking events behind these; retry again".into(),
        );
        Ok(report)
    }

    async fn retry_one(&self, r: &ParkedRecord) -> Result<(), ApplyError> {
        let body = if r.body_truncated {
            // the record keeps only the start of a large body: the stream has it all
            self.stream_body(r.seq).await?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(&r.body_base64)
                .unwrap_or_default()
        };
        let event = decode(&r.subject, &body)?;
        self.apply_direct(r.seq, &event.env).await?;
        self.parked
            .delete(parked_msg_key(r.seq))
            .await
            .map_err(|e| StoreError::new("deleting a parked record", e))?;
        tracing::info!(view = %self.view.name(), seq = r.seq, "parked event applied by a retry");
        Ok(())
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
}

/// The first pause of the background retrier after a failed round (doubling).
const TRANSIENT_RETRY_FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest pause of the background retrier.
const TRANSIENT_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

/// Releases events parked for a transient reason, in order, until `shutdown`: woken when one
/// is parked, retried with back-off while they keep failing, and once at start (records
/// parked before a restart).
pub async fn retry_transient(rt: Arc<ViewRuntime>, shutdown: CancellationToken) {
    let mut delay = TRANSIENT_RETRY_FIRST_DELAY;
    loop {
        let pending = rt
            .parked_records()
            .await
            .map(|r| r.iter().any(|r| r.transient))
            .unwrap_or(true);
        let wait = if pending {
            match rt
                .retry(RetryFilter {
                    aggregate: None,
                    transient_only: true,
                })
                .await
            {
                Ok(report) if report.failed.is_empty() => {
                    if report.applied > 0 {
                        tracing::info!(view = %rt.view.name(), applied = report.applied, "transiently parked events released");
                    }
                    delay = TRANSIENT_RETRY_FIRST_DELAY;
                    None
                }
                Ok(report) => {
                    tracing::debug!(view = %rt.view.name(), failed = ?report.failed, "transiently parked events still fail");
                    Some(delay)
                }
                Err(e) => {
                    tracing::debug!(view = %rt.view.name(), error = %e, "retrying transiently parked events failed");
                    Some(delay)
                }
            }
        } else {
            None
        };
        let woken = rt.transient_parked.notified();
        match wait {
            Some(d) => {
                delay = (delay * 2).min(TRANSIENT_RETRY_MAX_DELAY);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = woken => {}
                    // a record another instance parked
                    () = tokio::time::sleep(TRANSIENT_RETRY_MAX_DELAY) => {}
                }
            }
        }
    }
}
