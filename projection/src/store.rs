//! Storage of one view version: a KV bucket of documents plus a dead-letter bucket.
//!
//! - `VIEW_<name>_v<version>`: documents under `<tenant>.<key>` (history 1), plus
//!   `_checkpoint` = `{"position": N}`: every event up to stream sequence N is applied, skipped
//!   or parked. Every document carries `_position`, the stream sequence of the last event
//!   applied to it.
//! - `PARKED_<name>_v<version>`: `msg.<20-digit seq>` = a [`ParkedRecord`];
//!   `agg.<tenant>.<type>.<id>` and `doc.<tenant>.<key>` = a [`ParkMark`] while an aggregate or a
//!   document has parked events (later events touching it are parked behind them).

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shared::{AggregateAddress, TenantId};

use crate::view::{DELETED_FIELD, POSITION_FIELD, View};

/// The key of the checkpoint document.
pub const CHECKPOINT_KEY: &str = "_checkpoint";

/// A storage failure; always retryable from the engine's point of view.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StoreError {
    what: String,
    #[source]
    source: async_nats::Error,
}

impl StoreError {
    pub(crate) fn new(what: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        StoreError {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Suffix of a generation's bucket names: none for generation 0 (the original), `_g<g>` after
/// rebuilds.
fn generation_suffix(generation: u32) -> String {
    match generation {
        0 => String::new(),
        g => format!("_g{g}"),
    }
}

/// The bucket of a view version's documents, in one generation.
pub fn view_bucket(view: &dyn View, generation: u32) -> String {
    format!(
        "VIEW_{}_v{}{}",
        view.name(),
        view.version(),
        generation_suffix(generation)
    )
}

/// The dead-letter bucket of a view version, in one generation.
pub fn parked_bucket(view: &dyn View, generation: u32) -> String {
    format!(
        "PARKED_{}_v{}{}",
        view.name(),
        view.version(),
        generation_suffix(generation)
    )
}

/// The bucket holding, per view version, which generation queries and the live consumer use.
pub const GENERATIONS_BUCKET: &str = "PROJECTION_GENERATIONS";

/// The key of a view version in [`GENERATIONS_BUCKET`]: `<name>.v<version>`.
pub fn generation_key(view: &dyn View) -> String {
    format!("{}.v{}", view.name(), view.version())
}

/// The value of a view version's key in [`GENERATIONS_BUCKET`]. Decoded tolerantly: unknown
/// fields are ignored, a missing `rebuild` is none, and a value that does not decode at all
/// reads as generation 0 (the format before rebuild claims was `{"generation": g}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The generation queries and the live consumer use.
    #[serde(default)]
    pub generation: u32,
    /// The rebuild that has claimed the next generation, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<RebuildClaim>,
}

/// Who builds the next generation of a view version: only the holder of the claim writes into
/// it, deletes it or switches the pointer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildClaim {
    /// The generation being built.
    pub generation: u32,
    /// The instance building it.
    pub instance: String,
}

/// A view version's pointer as read, with what compare-and-set needs.
#[derive(Debug, Clone, Default)]
pub struct PointerEntry {
    /// The pointer (the default when the key does not exist).
    pub pointer: Pointer,
    /// The key's revision; none when it was never written.
    pub revision: Option<u64>,
    /// How long ago (by the server's clock against ours) the value was written.
    pub age: std::time::Duration,
}

/// Reads a view version's pointer.
pub async fn read_pointer(kv: &kv::Store, view: &dyn View) -> Result<PointerEntry, StoreError> {
    match kv.entry(generation_key(view)).await {
        Ok(Some(e)) => {
            let pointer = match e.operation {
                kv::Operation::Put => serde_json::from_slice(&e.value).unwrap_or_default(),
                _ => Pointer::default(),
            };
            let age = time::OffsetDateTime::now_utc() - e.created;
            Ok(PointerEntry {
                pointer,
                revision: Some(e.revision),
                age: age.try_into().unwrap_or_default(),
            })
        }
        Ok(None) => Ok(PointerEntry::default()),
        Err(e) => Err(StoreError::new("reading the view generation", e)),
    }
}

/// Writes a view version's pointer if its revision is still `revision` (none: if the key does
/// not exist). `Ok(None)` when another writer came first; `Ok(Some(r))` with the new revision.
pub async fn swap_pointer(
    kv: &kv::Store,
    view: &dyn View,
    pointer: &Pointer,
    revision: Option<u64>,
) -> Result<Option<u64>, StoreError> {
    let value = Bytes::from(serde_json::to_vec(pointer).unwrap_or_default());
    let key = generation_key(view);
    let written = match revision {
        Some(rev) => kv
            .update(&key, value, rev)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => None,
                _ => Some(StoreError::new("writing the view generation", e)),
            }),
        None => kv.create(&key, value).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => None,
            _ => Some(StoreError::new("writing the view generation", e)),
        }),
    };
    match written {
        Ok(rev) => Ok(Some(rev)),
        Err(None) => Ok(None),
        Err(Some(e)) => Err(e),
    }
}

/// The current generation of a view version (0 when never rebuilt).
pub async fn read_generation(kv: &kv::Store, view: &dyn View) -> Result<u32, StoreError> {
    Ok(read_pointer(kv, view).await?.pointer.generation)
}

/// Opens the generations bucket.
pub async fn open_generations(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    open_bucket(
        js,
        GENERATIONS_BUCKET,
        "which generation of each view version is live",
        replicas,
    )
    .await
}

/// Opens a bucket, creating it (history 1) when missing.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    if js.get_key_value(name).await.is_err() {
        // the bucket's stream, as the client's create_key_value makes it but with direct get
        // off: any replica may answer a direct get, and on a cluster a lagging follower would
        // serve a document older than the checkpoint another read saw (read-your-writes broke
        // in the chaos suite's leader-kill scenario); plain gets go to the stream leader
        let created = js
            .create_stream(jetstream::stream::Config {
                name: format!("KV_{name}"),
                description: Some(description.to_owned()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_bytes: -1,
                max_message_size: -1,
                storage: jetstream::stream::StorageType::File,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: false,
                // the engine commits a batch's documents and checkpoint in one atomic batch
                allow_atomic_publish: true,
                num_replicas: replicas.max(1),
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await;
        if let Err(e) = created {
            // another instance may have created it in between
            tracing::debug!(bucket = name, error = %e, "creating the bucket failed");
        }
    }
    let mut store = js
        .get_key_value(name)
        .await
        .map_err(|e| StoreError::new(format!("opening bucket {name}"), e))?;
    if !store.stream.cached_info().config.allow_atomic_publish {
        // a bucket made before atomic commits: allowing them changes nothing else
        let mut config = store.stream.cached_info().config.clone();
        config.allow_atomic_publish = true;
        js.update_stream(config)
            .await
            .map_err(|e| StoreError::new(format!("allowing atomic batches on {name}"), e))?;
        tracing::info!(bucket = name, "bucket now allows atomic batch commits");
        store = js
            .get_key_value(name)
            .await
            .map_err(|e| StoreError::new(format!("opening bucket {name}"), e))?;
    }
    if store.stream.cached_info().config.allow_direct {
        tracing::warn!(
            bucket = name,
            "bucket allows direct gets: on a cluster a lagging replica may answer reads; \
             recreate it (a rebuild does) to get leader reads"
        );
    }
    wait_until_readable(&store, name).await?;
    Ok(store)
}

/// A bucket just created on a cluster answers reads only once its replicas have elected a
/// leader (until then a direct get has no responders): wait for that, bounded, so start-up
/// does not fail on a fresh cluster.
async fn wait_until_readable(store: &kv::Store, name: &str) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match store.get("_probe").await {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!(bucket = name, error = %e, "bucket not readable yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(StoreError::new(
                    format!("bucket {name} does not answer reads"),
                    e,
                ));
            }
        }
    }
}

/// A stored document with its KV revision.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDoc {
    /// The document (including `_position`); a tombstone has `_deleted: true`.
    pub doc: Value,
    /// The KV revision, for compare-and-set.
    pub revision: u64,
}

impl StoredDoc {
    /// `_position` of the document.
    pub fn position(&self) -> u64 {
        position_of(&self.doc)
    }

    /// Whether this is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.doc.get(DELETED_FIELD).and_then(Value::as_bool) == Some(true)
    }
}

pub(crate) fn position_of(doc: &Value) -> u64 {
    doc.get(POSITION_FIELD).and_then(Value::as_u64).unwrap_or(0)
}

/// Reads one key of a bucket as JSON.
pub async fn read_doc(kv: &kv::Store, key: &str) -> Result<Option<StoredDoc>, StoreError> {
    let entry = kv
        .entry(key)
        .await
        .map_err(|e| StoreError::new(format!("reading {key}"), e))?;
    Ok(entry.and_then(|e| {
        if e.operation != kv::Operation::Put {
            return None;
        }
        let doc = serde_json::from_slice(&e.value).ok()?;
        Some(StoredDoc {
            doc,
            revision: e.revision,
        })
    }))
}

/// The checkpoint document: `{"position", "instance", "at_ms"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointDoc {
    /// Every event up to this stream sequence is applied, skipped or parked.
    pub position: u64,
    /// The instance that committed it (absent in checkpoints of older versions).
    pub instance: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: Option<u64>,
}

/// Reads the checkpoint document (position 0 when there is none).
pub async fn read_checkpoint_doc(kv: &kv::Store) -> Result<CheckpointDoc, StoreError> {
    Ok(match read_doc(kv, CHECKPOINT_KEY).await? {
        Some(d) => CheckpointDoc {
            position: d.doc.get("position").and_then(Value::as_u64).unwrap_or(0),
            instance: d
                .doc
                .get("instance")
                .and_then(Value::as_str)
                .map(str::to_owned),
            at_ms: d.doc.get("at_ms").and_then(Value::as_u64),
        },
        None => CheckpointDoc::default(),
    })
}

/// The view's checkpoint: every event up to this stream sequence is done.
pub(crate) async fn read_checkpoint(kv: &kv::Store) -> Result<(u64, Option<u64>), StoreError> {
    Ok(match read_doc(kv, CHECKPOINT_KEY).await? {
        Some(d) => (
            d.doc.get("position").and_then(Value::as_u64).unwrap_or(0),
            Some(d.revision),
        ),
        None => (0, None),
    })
}

/// The keys in a bucket under `prefix` (`prefix` ends with `.`), sorted.
pub(crate) async fn keys_under(kv: &kv::Store, prefix: &str) -> Result<Vec<String>, StoreError> {
    let filter = format!("{}{prefix}>", kv.prefix);
    let mut info = kv
        .stream
        .info_with_subjects(&filter)
        .await
        .map_err(|e| StoreError::new(format!("listing {prefix}"), e))?;
    let mut keys = Vec::new();
    while let Some((subject, _count)) = info
        .try_next()
        .await
        .map_err(|e| StoreError::new(format!("listing {prefix}"), e))?
    {
        if let Some(k) = subject.strip_prefix(kv.prefix.as_str()) {
            keys.push(k.to_owned());
        }
    }
    keys.sort();
    Ok(keys)
}

/// One page of a tenant's documents.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = ViewPage)]
pub struct Page {
    /// Documents, in key order.
    pub items: Vec<ViewDocument>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// One document of a view, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ViewDocument {
    /// The document key.
    pub key: String,
    /// The document itself. Its fields are the view's own (for accounts: owner, currency,
    /// balance, status, version, last_event_at), so it is an open object here; the engine's
    /// `_`-fields are left out.
    #[schema(value_type = Object)]
    pub document: Value,
    /// The stream position of the last event applied to it.
    pub position: u64,
}

impl ViewDocument {
    /// The API shape of a stored document: its `_`-fields removed.
    pub fn new(key: &str, doc: &StoredDoc) -> Self {
        let mut document = doc.doc.clone();
        if let Value::Object(m) = &mut document {
            m.retain(|k, _| !k.starts_with('_'));
        }
        ViewDocument {
            key: key.to_owned(),
            document,
            position: doc.position(),
        }
    }

    /// The document as one line of JSON (a live feed's `data:`).
    pub fn to_json(&self) -> String {
        // string keys and JSON values only: serializing cannot fail
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Lists `tenant`'s documents after `after` (a key within the tenant), at most `limit`. Only
/// subjects under `<tenant>.` are asked for, so another tenant's documents are never read.
pub(crate) async fn list_docs(
    kv: &kv::Store,
    tenant: &TenantId,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, StoreError> {
    let prefix = format!("{tenant}.");
    let keys = keys_under(kv, &prefix).await?;
    let mut items = Vec::new();
    let mut last = None;
    let candidates = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .filter(|local| after.is_none_or(|a| local.as_str() > a));
    let mut more = false;
    let mut fetches = futures::stream::iter(candidates.map(|local| {
        let full = format!("{prefix}{local}");
        async move { read_doc(kv, &full).await.map(|d| (local, d)) }
    }))
    .buffered(32);
    while let Some(r) = fetches.next().await {
        let (local, doc) = r?;
        let Some(doc) = doc.filter(|d| !d.is_deleted()) else {
            continue;
        };
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(ViewDocument::new(&local, &doc));
        last = Some(local);
    }
    Ok(Page {
        items,
        next: if more { last } else { None },
    })
}

/// How much of a parked body is kept in its record: a record must stay well below the server's
/// `max_payload`, or parking a huge poison message would fail and stop the view.
pub const PARKED_BODY_MAX: usize = 64 * 1024;

/// `(body_base64, body_len, body_truncated)` of a body to park.
pub fn parked_body(payload: &[u8]) -> (String, usize, bool) {
    use base64::Engine as _;
    let kept = &payload[..payload.len().min(PARKED_BODY_MAX)];
    (
        base64::engine::general_purpose::STANDARD.encode(kept),
        payload.len(),
        kept.len() < payload.len(),
    )
}

/// A parked message, as stored under `msg.<seq>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParkedRecord {
    /// The original subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// Why it was parked.
    pub error: String,
    /// The original body, base64 (standard alphabet); only its first [`PARKED_BODY_MAX`] bytes
    /// when `body_truncated` (a retry then re-reads the message from the stream).
    pub body_base64: String,
    /// Length of the original body in bytes.
    #[serde(default)]
    pub body_len: usize,
    /// Whether `body_base64` holds only the start of the body.
    #[serde(default)]
    pub body_truncated: bool,
    /// The original headers (last value of each).
    pub headers: BTreeMap<String, String>,
    /// `<tenant>.<type>.<id>` when the subject names an aggregate.
    pub aggregate: Option<String>,
    /// When it was parked (RFC 3339).
    pub parked_at: String,
    /// The marks that hold back later events behind it (`agg.<tenant>.<type>.<id>` and
    /// `doc.<tenant>.<key>` per document it touches). Absent in records written before
    /// documents were held: then its aggregate's mark.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
    /// Parked for a transient reason (storage): the background retrier releases it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

impl ParkedRecord {
    /// The marks this record holds.
    pub fn hold_keys(&self) -> Vec<String> {
        if self.holds.is_empty() {
            self.aggregate
                .iter()
                .map(|a| format!("{AGGREGATE_MARK_PREFIX}{a}"))
                .collect()
        } else {
            self.holds.clone()
        }
    }
}

/// Prefix of an aggregate's mark in the parked bucket.
pub const AGGREGATE_MARK_PREFIX: &str = "agg.";
/// Prefix of a document's mark in the parked bucket (`doc.<tenant>.<key>`).
pub const DOCUMENT_MARK_PREFIX: &str = "doc.";

/// `doc.<stored key>`.
pub fn doc_mark_key(stored_key: &str) -> String {
    format!("{DOCUMENT_MARK_PREFIX}{stored_key}")
}

/// Marks an aggregate or a document as held: its later events are parked behind `first_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkMark {
    /// The first parked event of the aggregate.
    pub first_seq: u64,
    /// The last event parked behind it (bumped with compare-and-set on every park, so a
    /// concurrent retry notices).
    pub last_seq: u64,
    /// Whether every event it holds was parked for a transient reason (the background retrier
    /// releases those); absent = false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
}

/// `msg.<20-digit seq>`.
pub fn parked_msg_key(seq: u64) -> String {
    format!("msg.{seq:020}")
}

/// `agg.<tenant>.<type>.<id>`.
pub fn park_mark_key(address: &AggregateAddress) -> String {
    format!("{AGGREGATE_MARK_PREFIX}{}", aggregate_token(address))
}

/// `<tenant>.<type>.<id>`.
pub fn aggregate_token(address: &AggregateAddress) -> String {
    format!(
        "{}.{}.{}",
        address.tenant_id, address.aggregate_type, address.aggregate_id
    )
}

/// Every parked record, in sequence order.
pub(crate) async fn parked_records(kv: &kv::Store) -> Result<Vec<ParkedRecord>, StoreError> {
    let keys = keys_under(kv, "msg.").await?;
    let mut out = Vec::new();
    for k in keys {
        if let Some(d) = read_doc(kv, &k).await?
            && let Ok(r) = serde_json::from_value::<ParkedRecord>(d.doc)
        {
            out.push(r);
        }
    }
    out.sort_by_key(|r| r.seq);
    Ok(out)
}

/// Every mark: mark key (`agg.…` or `doc.…`) → (mark, revision).
pub(crate) async fn park_marks(
    kv: &kv::Store,
) -> Result<BTreeMap<String, (ParkMark, u64)>, StoreError> {
    let mut out = BTreeMap::new();
    for prefix in [AGGREGATE_MARK_PREFIX, DOCUMENT_MARK_PREFIX] {
        for k in keys_under(kv, prefix).await? {
            if let Some(d) = read_doc(kv, &k).await?
                && let Ok(m) = serde_json::from_value::<ParkMark>(d.doc)
            {
                out.insert(k, (m, d.revision));
            }
        }
    }
    Ok(out)
}

pub(crate) fn to_bytes(v: &impl Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pointer's wire format: what instances before rebuild claims wrote still reads, and
    /// a pointer without a claim is written exactly as they wrote it.
    #[test]
    fn the_generation_pointer_decodes_old_and_new_values() {
        let old: Pointer = serde_json::from_str(r#"{"generation":3}"#).expect("old format");
        assert_eq!(
            old,
            Pointer {
                generation: 3,
                rebuild: None
            }
        );
        assert_eq!(
            serde_json::to_string(&old).expect("encode"),
            r#"{"generation":3}"#
        );
        let claimed: Pointer = serde_json::from_str(
            r#"{"generation":2,"rebuild":{"generation":3,"instance":"projection-1"},"later":true}"#,
        )
        .expect("new format, with a field from a later version");
        assert_eq!(
            claimed.rebuild,
            Some(RebuildClaim {
                generation: 3,
                instance: "projection-1".into()
            })
        );
        assert_eq!(claimed.generation, 2);
    }
}
