//! Snapshots: an aggregate's state at a version, kept in the KV bucket `AGGREGATE_SNAPSHOTS`
//! as a cache of its history, never as the truth.
//!
//! A snapshot names the stream sequence of the event it covers; a load that uses it reads from
//! that sequence on, and believes it only if the event there is the aggregate's, at the
//! snapshot's version. A snapshot of another state-schema version, one that does not decode,
//! or one that claims an event the stream does not have is ignored (WARN, metric) and the whole
//! history is read. Deleting every snapshot changes no answer, only the time a cold load takes.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{AggregateAddress, Version};

use crate::domain::DynAggregate;
use crate::loaded::Loaded;

/// The KV bucket holding the newest snapshot of each aggregate that takes snapshots.
pub const SNAPSHOTS_BUCKET: &str = "AGGREGATE_SNAPSHOTS";

/// Events between two snapshots of a type that takes snapshots, unless configured otherwise.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 100;

/// Snapshot writes in flight at most per instance; a snapshot due while all are busy is
/// skipped (counted), and the next one is written N events later. Never a queue.
pub const MAX_WRITES_IN_FLIGHT: usize = 64;

/// One snapshot as stored (JSON). Unknown fields are ignored, so fields can be added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The aggregate type's state-schema version the state was written with.
    pub schema: u32,
    /// The aggregate's version after the covered event.
    pub version: Version,
    /// The stream sequence of the covered event (the aggregate's event at `version`).
    pub seq: u64,
    /// The state, as the aggregate type serialises it.
    pub state: Value,
}

/// Why a snapshot was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Written with another state-schema version.
    Schema,
    /// Not a valid record, or its state does not decode.
    Undecodable,
    /// The stream has no event of this aggregate at the claimed sequence and version.
    Sequence,
    /// The bucket could not be read.
    Unavailable,
}

impl Ignored {
    fn label(self) -> &'static str {
        match self {
            Ignored::Schema => "schema",
            Ignored::Undecodable => "undecodable",
            Ignored::Sequence => "sequence",
            Ignored::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// The snapshot bucket of one instance, with its bounded writer.
pub struct Snapshots {
    kv: kv::Store,
    in_flight: Arc<tokio::sync::Semaphore>,
    written: Counter,
    skipped: Counter,
    write_failures: Counter,
    ignored: Family<ReasonLabels, Counter>,
}

impl Snapshots {
    /// Opens the bucket, creating it if needed (history 1, file storage, `replicas`).
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        metrics: &platform::metrics::Metrics,
    ) -> Result<Self, async_nats::Error> {
        let kv = match js.get_key_value(SNAPSHOTS_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: SNAPSHOTS_BUCKET.to_owned(),
                    description: "Newest state snapshot per aggregate (a cache of the stream)"
                        .to_owned(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .or(js.get_key_value(SNAPSHOTS_BUCKET).await)?,
        };
        let snapshots = Snapshots {
            kv,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT)),
            written: Counter::default(),
            skipped: Counter::default(),
            write_failures: Counter::default(),
            ignored: Family::default(),
        };
        metrics.register(
            "snapshots_written",
            "Snapshots written",
            snapshots.written.clone(),
        );
        metrics.register(
            "snapshots_skipped",
            "Snapshots not written because too many writes were in flight",
            snapshots.skipped.clone(),
        );
        metrics.register(
            "snapshot_write_failures",
            "Snapshot writes that failed (logged with their cause)",
            snapshots.write_failures.clone(),
        );
        metrics.register(
            "snapshots_ignored",
            "Snapshots found but not used, by reason (logged)",
            snapshots.ignored.clone(),
        );
        Ok(snapshots)
    }

    /// The newest usable snapshot of `address` as a loaded state (not yet checked against the
    /// stream: the caller reads from its sequence and calls [`Snapshots::ignore`] if the event
    /// there is not the one it claims). `None` when the type takes no snapshots, there is
    /// none, or it is ignored (logged).
    pub async fn read(
        &self,
        aggregate: &dyn DynAggregate,
        address: &AggregateAddress,
    ) -> Option<Loaded> {
        let schema = aggregate.state_schema()?;
        let bytes = match self.kv.get(snapshot_key(address)).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(e) => {
                self.ignore(address, Ignored::Unavailable, &e);
                return None;
            }
        };
        let record: SnapshotRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                self.ignore(address, Ignored::Undecodable, &e);
                return None;
            }
        };
        if record.schema != schema {
            self.ignore(
                address,
                Ignored::Schema,
                &format!(
                    "written with state schema {}, this type's is {schema}",
                    record.schema
                ),
            );
            return None;
        }
        match aggregate.decode_state(record.state)? {
            Ok(state) => Some(Loaded {
                state,
                version: record.version,
                last_seq: record.seq,
                snapshot_at: record.version,
            }),
            Err(e) => {
                self.ignore(address, Ignored::Undecodable, &e);
                None
            }
        }
    }

    /// Logs (WARN) and counts a snapshot that is not used; the caller reads the whole history.
    pub fn ignore(&self, address: &AggregateAddress, why: Ignored, detail: &dyn std::fmt::Display) {
        tracing::warn!(
            aggregate = %address,
            reason = why.label(),
            %detail,
            "snapshot ignored; reading the whole history"
        );
        self.ignored
            .get_or_create(&ReasonLabels {
                reason: why.label().to_owned(),
            })
            .inc();
    }

    /// Writes a snapshot of `loaded` in the background, off the command's path. Returns
    /// whether a write was started: not when the type takes no snapshots, nor when
    /// [`MAX_WRITES_IN_FLIGHT`] writes are running (counted as skipped).
    pub fn spawn_write(
        &self,
        aggregate: Arc<dyn DynAggregate>,
        address: &AggregateAddress,
        loaded: &Loaded,
    ) -> bool {
        let Some(schema) = aggregate.state_schema() else {
            return false;
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.skipped.inc();
            return false;
        };
        let kv = self.kv.clone();
        let key = snapshot_key(address);
        let loaded = loaded.clone();
        let written = self.written.clone();
        let failures = self.write_failures.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let record = SnapshotRecord {
                schema,
                version: loaded.version,
                seq: loaded.last_seq,
                state: aggregate.state_json(&loaded.state),
            };
            let result = match serde_json::to_vec(&record) {
                Ok(bytes) => kv
                    .put(&key, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(()) => {
                    written.inc();
                }
                Err(e) => {
                    failures.inc();
                    tracing::warn!(key, error = %e, "could not write a snapshot; loads read more of the history until one is written");
                }
            };
        });
        true
    }
}

/// The key of an aggregate's snapshot in [`SNAPSHOTS_BUCKET`]: `<tenant>.<type>.<id>`.
pub fn snapshot_key(address: &AggregateAddress) -> String {
    format!(
        "{}.{}.{}",
        address.tenant_id, address.aggregate_type, address.aggregate_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored form is a compatibility promise: this golden record must keep decoding.
    #[test]
    fn golden_record_decodes_and_unknown_fields_are_ignored() {
        let golden = r#"{"schema":1,"version":300,"seq":91234,"state":{"status":"open","owner":"Ada","currency":"EUR","balance":42},"later_field":true}"#;
        let record: SnapshotRecord = serde_json::from_str(golden).expect("golden");
        assert_eq!(record.schema, 1);
        assert_eq!(record.version, Version(300));
        assert_eq!(record.seq, 91_234);
        assert_eq!(record.state["balance"], 42);
    }
}
