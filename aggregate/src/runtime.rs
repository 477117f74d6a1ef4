//! The command runtime: idempotency check, load (cache, or snapshot plus the stream's tail, or
//! the stream), decide, conditional append, retry on conflict, snapshot in the background.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::{AggregateAddress, AggregateType, CommandId, Event, EventId, Metadata, Version};
use time::OffsetDateTime;

use crate::domain::{DecideError, DynAggregate};
pub use crate::loaded::Loaded;
use crate::snapshot::{DEFAULT_SNAPSHOT_EVERY, Ignored, Snapshots};
use crate::store::{AppendError, EventStore, LoadError, Stored};

/// The KV bucket holding command outcomes for idempotent retries.
pub const COMMANDS_BUCKET: &str = "AGGREGATE_COMMANDS";

/// Runtime tuning.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// How many aggregates' states are cached in memory.
    pub cache_capacity: usize,
    /// How often a command is re-decided after losing a race before giving up (409).
    pub conflict_retries: u32,
    /// How long command outcomes are kept for idempotent retries.
    pub idempotency_ttl: Duration,
    /// Replicas of the idempotency and snapshot buckets.
    pub replicas: usize,
    /// Events between two snapshots, per aggregate type, for types that take snapshots
    /// (others: [`DEFAULT_SNAPSHOT_EVERY`]); 0 turns a type's snapshots off. Naming a type that
    /// is not registered or takes no snapshots is an error.
    pub snapshot_every: Vec<(AggregateType, u64)>,
}

/// A command as the runtime receives it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// Client-chosen id for idempotent retries; generated when absent.
    pub command_id: Option<CommandId>,
    /// Command type, e.g. `deposit`.
    pub command_type: String,
    /// Command body.
    pub payload: Value,
    /// Optimistic check: the version the client last saw.
    pub expected_version: Option<Version>,
    /// Metadata copied into every event (trace context, request id, correlation ids).
    pub metadata: Metadata,
}

impl CommandRequest {
    /// A command of `command_type` with `payload`: no command id (one is generated), no
    /// expected version, no metadata.
    pub fn new(command_type: impl Into<String>, payload: Value) -> Self {
        CommandRequest {
            command_id: None,
            command_type: command_type.into(),
            payload,
            expected_version: None,
            metadata: Metadata::new(),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    /// The events appended (empty if the command changed nothing).
    pub events: Vec<Event>,
    /// The aggregate's version afterwards.
    pub version: Version,
    /// The stream sequence of the last event: pass it as `min_position` to read your writes.
    pub position: u64,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No aggregate type of that name is registered.
    #[error("unknown aggregate type {0}")]
    UnknownAggregateType(AggregateType),
    /// The command could not be decided (unknown type, bad payload, domain rule).
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// `expected_version` did not hold.
    #[error("expected version {expected}, but the aggregate is at version {current}")]
    VersionConflict {
        /// What the client expected.
        expected: Version,
        /// What it is.
        current: Version,
    },
    /// The command id was used before with a different command.
    #[error("command id {0} was already used for a different command")]
    CommandIdReused(CommandId),
    /// Lost the race too many times.
    #[error("the aggregate changed concurrently {0} times in a row; retry later")]
    ConflictRetriesExhausted(u32),
    /// Reading the history failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The idempotency store failed.
    #[error("idempotency store: {0}")]
    Idempotency(#[from] IdempotencyError),
}

/// How the idempotency bucket failed, with the client's typed error as the source.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    /// Creating the command's record.
    #[error("creating the command's record: {0}")]
    Create(#[source] kv::CreateError),
    /// Reading an existing record.
    #[error("reading the command's record: {0}")]
    Get(#[source] kv::EntryError),
    /// A record that is not valid JSON of its type.
    #[error("the command's record does not decode: {0}")]
    Codec(#[source] serde_json::Error),
    /// The record was created and removed again (expiry, purge) several times in a row.
    #[error("the record of {0} keeps appearing and disappearing")]
    Churn(String),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    aggregate_type: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    source: String,
}

/// Stored in the idempotency bucket under the command's key: created (without an outcome)
/// before the command's events are appended, completed with the outcome afterwards.
#[derive(Serialize, Deserialize)]
struct CommandRecord {
    request_hash: String,
    /// `None` while the command is (or was, if its instance died) being handled.
    #[serde(default)]
    outcome: Option<Outcome>,
}

/// What reserving a command id found.
enum Reservation {
    /// The id is new: this instance handles it.
    Created,
    /// The id was handled: its hash and outcome.
    Done(String, Outcome),
    /// The id was being handled (maybe by an instance that died after appending): its hash.
    Pending(String),
}

/// The runtime shared by all requests of one instance.
pub struct Runtime {
    store: EventStore,
    aggregates: HashMap<AggregateType, Arc<dyn DynAggregate>>,
    cache: quick_cache::sync::Cache<AggregateAddress, Loaded>,
    commands: kv::Store,
    snapshots: Snapshots,
    /// Events between snapshots, for the types that take them (absent or 0: none).
    snapshot_every: HashMap<AggregateType, u64>,
    settings: RuntimeSettings,
    command_count: Family<CommandLabels, Counter>,
    loads: Family<LoadLabels, Counter>,
    conflicts: Counter,
    /// Commands on one aggregate are serialised within an instance (striped by address), so
    /// races only happen between instances.
    stripes: Vec<tokio::sync::Mutex<()>>,
}

const STRIPES: usize = 4096;
/// Pauses between reads of a tail that does not reach the version a command expects (see
/// `Runtime::tail_for`): a lagging replica catches up within milliseconds.
const LAGGING_REPLICA_PAUSES: [Duration; 3] = [
    Duration::from_millis(5),
    Duration::from_millis(25),
    Duration::from_millis(100),
];

impl Runtime {
    /// Builds the runtime, creating the idempotency and snapshot buckets if needed.
    pub async fn new(
        store: EventStore,
        js: &jetstream::Context,
        aggregates: Vec<Arc<dyn DynAggregate>>,
        settings: RuntimeSettings,
        metrics: &platform::metrics::Metrics,
    ) -> Result<Self, async_nats::Error> {
        let commands = match js.get_key_value(COMMANDS_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: COMMANDS_BUCKET.to_owned(),
                    description: "Outcomes of commands, for idempotent retries".to_owned(),
                    max_age: settings.idempotency_ttl,
                    history: 1,
                    num_replicas: settings.replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .or(js.get_key_value(COMMANDS_BUCKET).await)?,
        };
        let aggregates: HashMap<AggregateType, Arc<dyn DynAggregate>> = aggregates
            .into_iter()
            .map(|a| (a.aggregate_type(), a))
            .collect();
        let snapshot_every = snapshot_intervals(aggregates.values(), &settings.snapshot_every)?;
        let snapshots = Snapshots::open(js, settings.replicas, metrics).await?;
        let rt = Runtime {
            store,
            aggregates,
            cache: quick_cache::sync::Cache::new(settings.cache_capacity.max(1)),
            commands,
            snapshots,
            snapshot_every,
            settings,
            command_count: Family::default(),
            loads: Family::default(),
            conflicts: Counter::default(),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
        };
        metrics.register(
            "commands",
            "Commands handled, by aggregate type and outcome",
            rt.command_count.clone(),
        );
        metrics.register(
            "aggregate_loads",
            "Aggregate loads, by source (cache, snapshot: a snapshot plus the tail, stream: the whole history)",
            rt.loads.clone(),
        );
        metrics.register(
            "append_conflicts",
            "Appends that lost a race and were re-decided",
            rt.conflicts.clone(),
        );
        Ok(rt)
    }

    /// The event store.
    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Every registered aggregate type.
    pub fn aggregates(&self) -> impl Iterator<Item = &Arc<dyn DynAggregate>> {
        self.aggregates.values()
    }

    /// The registered aggregate type, or an error.
    pub fn aggregate(&self, ty: &AggregateType) -> Result<&Arc<dyn DynAggregate>, CommandError> {
        self.aggregates
            .get(ty)
            .ok_or_else(|| CommandError::UnknownAggregateType(ty.clone()))
    }

    /// Handles one command: see the module docs.
    #[tracing::instrument(skip_all, fields(aggregate = %address, command = %request.command_type))]
    pub async fn handle(
        &self,
        address: &AggregateAddress,
        request: CommandRequest,
    ) -> Result<Outcome, CommandError> {
        let stripe = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(address) as usize % STRIPES
        };
        let result = {
            let _serialised = self.stripes[stripe].lock().await;
            self.handle_inner(address, request).await
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommandError::Decide(DecideError::Domain { .. })) => "rejected",
            Err(CommandError::Decide(_) | CommandError::UnknownAggregateType(_)) => "invalid",
            Err(
                CommandError::VersionConflict { .. }
                | CommandError::CommandIdReused(_)
                | CommandError::ConflictRetriesExhausted(_),
            ) => "conflict",
            Err(_) => "error",
        };
        self.command_count
            .get_or_create(&CommandLabels {
                aggregate_type: address.aggregate_type.to_string(),
                outcome: outcome.to_owned(),
            })
            .inc();
        result
    }

    async fn handle_inner(
        &self,
        address: &AggregateAddress,
        request: CommandRequest,
    ) -> Result<Outcome, CommandError> {
        let aggregate = self.aggregate(&address.aggregate_type)?.clone();
        let key = |id: CommandId| command_key(address, id);
        // A client-chosen id may be a retry. Reserve it before anything is appended, so that a
        // retry reaching any instance can tell "handled", "never seen" and "in doubt" apart.
        let hash = request.command_id.map(|_| request_hash(&request));
        let mut in_doubt = false;
        if let (Some(id), Some(hash)) = (request.command_id, &hash) {
            match self.reserve(&key(id), hash).await? {
                Reservation::Created => {}
                Reservation::Done(h, _) | Reservation::Pending(h) if h != *hash => {
                    return Err(CommandError::CommandIdReused(id));
                }
                Reservation::Done(_, outcome) => {
                    tracing::debug!(command_id = %id, "idempotent retry answered from the record");
                    return Ok(outcome);
                }
                Reservation::Pending(_) => in_doubt = true,
            }
        }
        let command_id = request.command_id.unwrap_or_else(CommandId::new_random);
        let look_for = request.command_id;

        let cached = if in_doubt {
            // an earlier attempt may have appended and died before recording: only the
            // stream can say, so ignore the cache and scan the whole history
            None
        } else {
            self.cache.get(address)
        };
        let (mut current, found) = match cached {
            Some(hit) => {
                self.count_load("cache");
                (hit, None)
            }
            None => {
                // in doubt, the command may be anywhere in the history: no snapshot
                let (mut loaded, stored) = self.cold_load(&aggregate, address, in_doubt).await?;
                let found = look_for.and_then(|id| outcome_of(&stored, id));
                self.maybe_snapshot(&aggregate, address, &mut loaded);
                (loaded, found)
            }
        };
        if let Some(found) = found {
            if let (Some(id), Some(hash)) = (request.command_id, &hash) {
                self.record(key(id), hash, &found);
            }
            return Ok(found);
        }

        for attempt in 0..=self.settings.conflict_retries {
            if let Some(expected) = request.expected_version
                && expected != current.version
            {
                // The state in hand may be behind the stream (a cache behind a write through
                // another instance, a load answered by a replica that lags the leader): only
                // the stream tells a stale expectation from a stale state.
                let tail = self.tail_for(address, &current, expected).await?;
                if let Some(found) = look_for.and_then(|id| outcome_of(&tail, id)) {
                    if let (Some(id), Some(hash)) = (request.command_id, &hash) {
                        self.record(key(id), hash, &found);
                    }
                    return Ok(found);
                }
                if !tail.is_empty() {
                    current = advance(&*aggregate, &current, &tail)?;
                    self.cache.insert(address.clone(), current.clone());
                }
                if expected != current.version {
                    return Err(CommandError::VersionConflict {
                        expected,
                        current: current.version,
                    });
                }
            }
            let decided = aggregate.decide(
                &current.state,
                &request.command_type,
                request.payload.clone(),
            )?;
            if decided.is_empty() {
                return Ok(Outcome {
                    events: Vec::new(),
                    version: current.version,
                    position: current.last_seq,
                });
            }
            let now = OffsetDateTime::now_utc();
            let mut version = current.version;
            let events: Vec<Event> = decided
                .into_iter()
                .map(|(event_type, payload)| {
                    version = version.next();
                    Event {
                        event_id: EventId::new(),
                        command_id,
                        tenant_id: address.tenant_id.clone(),
                        aggregate_type: address.aggregate_type.clone(),
                        aggregate_id: address.aggregate_id.clone(),
                        version,
                        event_type,
                        payload,
                        occurred_at: now,
                        metadata: (!request.metadata.is_empty()).then(|| request.metadata.clone()),
                    }
                })
                .collect();
            match self.store.append(address, current.last_seq, &events).await {
                Ok(position) => {
                    let snapshot_at = current.snapshot_at;
                    let state = aggregate
                        .apply_all(
                            &current.state,
                            &mut events.iter().map(|e| (e.event_type.as_str(), &e.payload)),
                        )
                        .map_err(|e| {
                            CommandError::Load(LoadError::Corrupt {
                                seq: position,
                                subject: address.subject(),
                                reason: e.to_string(),
                            })
                        })?;
                    let mut loaded = Loaded {
                        state,
                        version,
                        last_seq: position,
                        snapshot_at,
                    };
                    self.maybe_snapshot(&aggregate, address, &mut loaded);
                    self.cache.insert(address.clone(), loaded);
                    let outcome = Outcome {
                        events,
                        version,
                        position,
                    };
                    if let (Some(id), Some(hash)) = (request.command_id, &hash) {
                        self.record(key(id), hash, &outcome);
                    }
                    return Ok(outcome);
                }
                Err(AppendError::Conflict) => {
                    self.conflicts.inc();
                    tracing::debug!(attempt, "append conflict; reloading the tail");
                    let tail = self.store.read(address, current.last_seq + 1).await?;
                    if let Some(found) = look_for.and_then(|id| outcome_of(&tail, id)) {
                        if let (Some(id), Some(hash)) = (request.command_id, &hash) {
                            self.record(key(id), hash, &found);
                        }
                        return Ok(found);
                    }
                    current = advance(&*aggregate, &current, &tail)?;
                    self.cache.insert(address.clone(), current.clone());
                    // jitter so racing writers do not collide again in lockstep
                    let ms = rand::random_range(0..=(1u64 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(e) => {
                    // the outcome is unknown: forget the cached state
                    self.cache.remove(address);
                    return Err(e.into());
                }
            }
        }
        Err(CommandError::ConflictRetriesExhausted(
            self.settings.conflict_retries + 1,
        ))
    }

    /// Reserves a command id (creates its record without an outcome), or reports what an
    /// existing record says. The create and a read of the key go out together, so an existing
    /// key costs one round trip too (the create's answer is authoritative: a read racing it is
    /// only used when the create found the key taken).
    async fn reserve(&self, key: &str, request_hash: &str) -> Result<Reservation, CommandError> {
        let pending = serde_json::to_vec(&CommandRecord {
            request_hash: request_hash.to_owned(),
            outcome: None,
        })
        .map_err(IdempotencyError::Codec)?;
        for _ in 0..3 {
            let (created, existing) = tokio::join!(
                self.commands.create(key, pending.clone().into()),
                self.commands.get(key)
            );
            match created {
                Ok(_) => return Ok(Reservation::Created),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(IdempotencyError::Create(e).into()),
            }
            let existing = match existing.map_err(IdempotencyError::Get)? {
                Some(bytes) => Some(bytes),
                // the read overtook the record's creation by another instance: read again
                None => self
                    .commands
                    .get(key)
                    .await
                    .map_err(IdempotencyError::Get)?,
            };
            if let Some(bytes) = existing {
                let record: CommandRecord =
                    serde_json::from_slice(&bytes).map_err(IdempotencyError::Codec)?;
                return Ok(match record.outcome {
                    Some(outcome) => Reservation::Done(record.request_hash, outcome),
                    None => Reservation::Pending(record.request_hash),
                });
            }
            // expired or purged in between: create again
        }
        Err(IdempotencyError::Churn(key.to_owned()).into())
    }

    /// Completes the command's record with its outcome, in the background: the command is in
    /// the stream already, and if this write is lost a retry finds the record still pending
    /// and recognises the command by scanning the aggregate's history.
    fn record(&self, key: String, request_hash: &str, outcome: &Outcome) {
        let record = CommandRecord {
            request_hash: request_hash.to_owned(),
            outcome: Some(outcome.clone()),
        };
        let Ok(bytes) = serde_json::to_vec(&record) else {
            return;
        };
        let commands = self.commands.clone();
        tokio::spawn(async move {
            for attempt in 0..3u32 {
                match commands.put(&key, bytes.clone().into()).await {
                    Ok(_) => return,
                    Err(e) => {
                        tracing::warn!(attempt, error = %e, "could not record the command outcome");
                        tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                    }
                }
            }
            tracing::warn!(
                key,
                "command outcome not recorded; retries will scan the history"
            );
        });
    }

    /// The events after `current` when a command expects `expected`. A version the client
    /// names beyond the stream's can only come from an acknowledgement (or a mistake): when the
    /// tail does not reach it, a replica that lags the leader may have answered, so the read is
    /// repeated a few times (any replica may answer the next) before the state counts as current.
    async fn tail_for(
        &self,
        address: &AggregateAddress,
        current: &Loaded,
        expected: Version,
    ) -> Result<Vec<Stored>, CommandError> {
        let mut tail = self.store.read(address, current.last_seq + 1).await?;
        for pause in LAGGING_REPLICA_PAUSES {
            let reached = tail.last().map_or(current.version, |s| s.event.version);
            if expected <= reached {
                break;
            }
            tokio::time::sleep(pause).await;
            let from = tail.last().map_or(current.last_seq, |s| s.seq) + 1;
            tail.extend(self.store.read(address, from).await?);
        }
        Ok(tail)
    }

    /// The aggregate's current state (cache or snapshot, plus the tail from the stream, so it
    /// is fresh).
    pub async fn load(&self, address: &AggregateAddress) -> Result<Loaded, CommandError> {
        let aggregate = self.aggregate(&address.aggregate_type)?.clone();
        let mut loaded = match self.cache.get(address) {
            Some(base) => {
                let tail = self.store.read(address, base.last_seq + 1).await?;
                advance(&*aggregate, &base, &tail)?
            }
            None => self.cold_load(&aggregate, address, false).await?.0,
        };
        if loaded.version > Version::ZERO {
            self.maybe_snapshot(&aggregate, address, &mut loaded);
            self.cache.insert(address.clone(), loaded.clone());
        }
        Ok(loaded)
    }

    /// Drops the cached state of one aggregate: its next command or read loads it from its
    /// snapshot and the stream (for operators and benchmarks; correctness never needs it).
    pub fn evict(&self, address: &AggregateAddress) {
        self.cache.remove(address);
    }

    /// Loads an aggregate that is not cached: from its newest snapshot and the events after
    /// it, or (no usable snapshot, or `whole_history`) from its first event. Returns the state
    /// and the events read.
    async fn cold_load(
        &self,
        aggregate: &Arc<dyn DynAggregate>,
        address: &AggregateAddress,
        whole_history: bool,
    ) -> Result<(Loaded, Vec<Stored>), CommandError> {
        if !whole_history && let Some(snapshot) = self.snapshots.read(&**aggregate, address).await {
            // read from the covered event itself: the snapshot is believed only if the stream
            // has this aggregate's event at that sequence, with that version
            let mut stored = self.store.read(address, snapshot.last_seq).await?;
            match stored.first() {
                Some(first)
                    if first.seq == snapshot.last_seq && first.event.version == snapshot.version =>
                {
                    let tail = stored.split_off(1);
                    self.count_load("snapshot");
                    return Ok((advance(&**aggregate, &snapshot, &tail)?, tail));
                }
                other => self.snapshots.ignore(
                    address,
                    Ignored::Sequence,
                    &format!(
                        "it claims version {} at stream sequence {}; the stream's first event of this aggregate from there is {}",
                        snapshot.version,
                        snapshot.last_seq,
                        other.map_or("none".to_owned(), |s| format!(
                            "version {} at sequence {}",
                            s.event.version, s.seq
                        ))
                    ),
                ),
            }
        }
        self.count_load("stream");
        let stored = self.store.read(address, 1).await?;
        Ok((
            advance(&**aggregate, &fresh(&**aggregate), &stored)?,
            stored,
        ))
    }

    /// Starts a snapshot write when one is due (the type takes snapshots and `loaded` is at
    /// least `snapshot_every` events past the last known one).
    fn maybe_snapshot(
        &self,
        aggregate: &Arc<dyn DynAggregate>,
        address: &AggregateAddress,
        loaded: &mut Loaded,
    ) {
        let every = self
            .snapshot_every
            .get(&address.aggregate_type)
            .copied()
            .unwrap_or(0);
        if every == 0 || loaded.version.get() < loaded.snapshot_at.get().saturating_add(every) {
            return;
        }
        if self
            .snapshots
            .spawn_write(aggregate.clone(), address, loaded)
        {
            loaded.snapshot_at = loaded.version;
        }
    }

    fn count_load(&self, source: &str) {
        self.loads
            .get_or_create(&LoadLabels {
                source: source.to_owned(),
            })
            .inc();
    }

    /// The state as JSON.
    pub fn state_json(&self, address: &AggregateAddress, loaded: &Loaded) -> Value {
        self.aggregates
            .get(&address.aggregate_type)
            .map_or(Value::Null, |a| a.state_json(&loaded.state))
    }

    /// The aggregate's events from `from_version` on, in order.
    pub async fn events(
        &self,
        address: &AggregateAddress,
        from_version: Version,
    ) -> Result<Vec<Stored>, CommandError> {
        self.aggregate(&address.aggregate_type)?;
        let all = self.store.read(address, 1).await?;
        Ok(all
            .into_iter()
            .filter(|s| s.event.version >= from_version)
            .collect())
    }
}

/// Events between snapshots per aggregate type: [`DEFAULT_SNAPSHOT_EVERY`] for every type that
/// takes snapshots, overridden by `overrides`; an override for a type that is not registered or
/// takes no snapshots is an error (a typo would otherwise silently change nothing).
pub fn snapshot_intervals<'a>(
    aggregates: impl IntoIterator<Item = &'a Arc<dyn DynAggregate>>,
    overrides: &[(AggregateType, u64)],
) -> Result<HashMap<AggregateType, u64>, String> {
    let mut every: HashMap<AggregateType, u64> = aggregates
        .into_iter()
        .filter(|a| a.state_schema().is_some())
        .map(|a| (a.aggregate_type(), DEFAULT_SNAPSHOT_EVERY))
        .collect();
    for (ty, n) in overrides {
        match every.get_mut(ty) {
            Some(slot) => *slot = *n,
            None => {
                return Err(format!(
                    "SNAPSHOT_EVERY names {ty}, which is not a registered aggregate type that takes snapshots"
                ));
            }
        }
    }
    Ok(every)
}

fn fresh(aggregate: &dyn DynAggregate) -> Loaded {
    Loaded {
        state: aggregate.initial(),
        version: Version::ZERO,
        last_seq: 0,
        snapshot_at: Version::ZERO,
    }
}

/// Applies stored events on top of a loaded state.
fn advance(
    aggregate: &dyn DynAggregate,
    base: &Loaded,
    stored: &[Stored],
) -> Result<Loaded, CommandError> {
    let Some(last) = stored.last() else {
        return Ok(base.clone());
    };
    if let Some(first) = stored.first()
        && first.event.version != base.version.next()
    {
        return Err(LoadError::Corrupt {
            seq: first.seq,
            subject: first.event.address().subject(),
            reason: format!(
                "version {} does not follow {}",
                first.event.version, base.version
            ),
        }
        .into());
    }
    let state = aggregate
        .apply_all(
            &base.state,
            &mut stored
                .iter()
                .map(|s| (s.event.event_type.as_str(), &s.event.payload)),
        )
        .map_err(|e| {
            // the event that failed, not the last one read
            let failed = stored.get(e.index).unwrap_or(last);
            LoadError::Corrupt {
                seq: failed.seq,
                subject: failed.event.address().subject(),
                reason: e.to_string(),
            }
        })?;
    Ok(Loaded {
        state,
        version: last.event.version,
        last_seq: last.seq,
        snapshot_at: base.snapshot_at,
    })
}

/// The outcome of command `id` if its events are among `stored`.
fn outcome_of(stored: &[Stored], id: CommandId) -> Option<Outcome> {
    let mine: Vec<&Stored> = stored.iter().filter(|s| s.event.command_id == id).collect();
    let last = mine.last()?;
    Some(Outcome {
        version: last.event.version,
        position: last.seq,
        events: mine.iter().map(|s| s.event.clone()).collect(),
    })
}

/// The key of a command's record in [`COMMANDS_BUCKET`]: `<tenant>.<type>.<id>.<command_id>`.
pub fn command_key(address: &AggregateAddress, id: CommandId) -> String {
    format!(
        "{}.{}.{}.{}",
        address.tenant_id, address.aggregate_type, address.aggregate_id, id
    )
}

/// The record an instance writes when it starts handling command `id` (before appending):
/// what a crash right after the append leaves behind. Public for fault-injection tests.
pub fn pending_record(request: &CommandRequest) -> Vec<u8> {
    serde_json::to_vec(&CommandRecord {
        request_hash: request_hash(request),
        outcome: None,
    })
    .unwrap_or_default()
}

/// A hash of what makes two commands "the same": type, payload (key order ignored) and the
/// expected version.
fn request_hash(request: &CommandRequest) -> String {
    fn canonical(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, canonical(v))).collect();
                serde_json::to_value(sorted).unwrap_or(Value::Null)
            }
            Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    let payload = if request.payload.is_null() {
        Value::Object(Default::default())
    } else {
        canonical(&request.payload)
    };
    let doc = serde_json::json!([request.command_type, payload, request.expected_version]);
    let digest = Sha256::digest(doc.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(payload: Value) -> CommandRequest {
        CommandRequest::new("deposit", payload)
    }

    #[test]
    fn request_hash_ignores_key_order_but_not_values() {
        let a = request_hash(&req(json!({"amount": 5, "note": {"x": 1, "y": 2}})));
        let b = request_hash(&req(json!({"note": {"y": 2, "x": 1}, "amount": 5})));
        let c = request_hash(&req(json!({"amount": 6, "note": {"x": 1, "y": 2}})));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            request_hash(&req(Value::Null)),
            request_hash(&req(json!({})))
        );
    }
}
