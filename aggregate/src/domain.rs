//! The domain model as a trait: users add aggregate types without touching the runtime.
//!
//! An aggregate type has a name, a state rebuilt by applying its events, and a decision
//! function from (state, command) to new events or a typed domain error. Commands and events are
//! serde enums, adjacently tagged:
//!
//! - commands as `#[serde(tag = "type", content = "payload", rename_all = "snake_case")]`,
//!   matching the HTTP body `{"type": "deposit", "payload": {...}}`;
//! - events as `#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]`,
//!   matching the wire `Event`'s `event_type` and `payload` fields.
//!
//! The runtime works on type-erased aggregates ([`DynAggregate`]) so one registry can serve
//! many types picked by the URL.
//!
//! Snapshots are opt-in: a type whose state can be stored implements [`Snapshotting`] (one
//! constant, its state-schema version) and is registered with [`snapshotted`]. Types that do
//! not need nothing beyond [`Aggregate`].
//!
//! Stored events are never rewritten, so an event type whose shape changes gets a new name
//! (`item_added` becomes `item_added_v2`) and its old name an upcaster in the type's
//! [`History`], which reads old events into the current `Event`; an event type with no
//! meaning any more can be ignored there. An event type the aggregate neither decodes nor
//! upcasts nor ignores is a corrupt history.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::AggregateType;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

/// A domain rule was broken. `code` becomes the problem `type` slug (stable).
pub trait DomainError: std::error::Error + Send + Sync + 'static {
    /// Stable, kebab-case code, e.g. `insufficient-funds`.
    fn code(&self) -> &'static str;
}

/// One aggregate type.
pub trait Aggregate: Send + Sync + 'static {
    /// The state rebuilt from events.
    type State: Default + Clone + Serialize + Send + Sync + 'static;
    /// Commands, adjacently tagged by `type` / `payload`.
    type Command: DeserializeOwned;
    /// Events, adjacently tagged by `event_type` / `payload`.
    type Event: Serialize + DeserializeOwned;
    /// Domain errors.
    type Error: DomainError;

    /// The aggregate type name, used in subjects and URLs.
    fn aggregate_type(&self) -> AggregateType;
    /// The command type names `Command` accepts (so an unknown one is a clear 400).
    fn command_types(&self) -> &'static [&'static str];
    /// Applies one event to the state.
    fn apply(&self, state: &mut Self::State, event: Self::Event);
    /// Decides which events a command produces, or why it is refused.
    fn decide(
        &self,
        state: &Self::State,
        command: Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error>;
    /// How stored events of names `Event` no longer has are read: upcasters and ignored
    /// types. Asked once per load; none by default.
    fn history(&self) -> History<Self::Event> {
        History::new()
    }
    /// The schema of `Command` for the OpenAPI document (`Commands.<type>`): each command type
    /// with its payload's fields. `None` (the default) documents only the command type names
    /// and the payload as an open object. With `utoipa`'s derive on the command enum
    /// (`#[derive(utoipa::ToSchema)]`, which reads the same serde attributes):
    /// `Some(CommandSchema::of::<Self::Command>())`.
    fn command_schema(&self) -> Option<CommandSchema> {
        None
    }
}

/// The JSON schema of an aggregate type's commands and the schemas it refers to, as the
/// service's OpenAPI document carries them.
pub struct CommandSchema {
    pub(crate) schema: RefOr<Schema>,
    pub(crate) components: Vec<(String, RefOr<Schema>)>,
}

impl CommandSchema {
    /// The schema `T`'s `utoipa::ToSchema` implementation gives (for an adjacently tagged
    /// command enum: one of `{"type": <name>, "payload": {...}}`), with every schema it refers to.
    pub fn of<T: utoipa::ToSchema>() -> Self {
        let mut components = Vec::new();
        T::schemas(&mut components);
        CommandSchema {
            schema: T::schema(),
            components,
        }
    }
}

/// Reads a stored event of an old shape into the current event type.
type Upcaster<E> = Box<dyn Fn(&Value) -> Result<E, serde_json::Error>>;

/// The event types an aggregate type no longer produces and how to read them: an upcaster from
/// the old payload to the current event, or "ignore". An old name is looked up here before the
/// current `Event` is tried, so it must not be a current event type's name.
pub struct History<E> {
    upcasters: HashMap<&'static str, Upcaster<E>>,
    ignored: HashSet<&'static str>,
}

/// What [`History::read`] made of a stored event.
#[derive(Debug, PartialEq)]
pub enum Read<E> {
    /// Upcast into the current event type.
    Upcast(E),
    /// Registered as ignored: not applied.
    Ignored,
    /// Not an old event type: decode it as a current one.
    Current,
}

impl<E> Default for History<E> {
    fn default() -> Self {
        History {
            upcasters: HashMap::new(),
            ignored: HashSet::new(),
        }
    }
}

impl<E> History<E> {
    /// No old event types.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stored events of type `event_type` have payload `Old`; `upcast` makes the current
    /// event from it. A payload that does not decode as `Old` is a corrupt history.
    ///
    /// # Panics
    /// If `event_type` is registered twice (a programming error, found at the first load).
    pub fn upcast<Old: DeserializeOwned>(
        mut self,
        event_type: &'static str,
        upcast: impl Fn(Old) -> E + 'static,
    ) -> Self {
        self.register(event_type);
        self.upcasters.insert(
            event_type,
            Box::new(move |payload| {
                serde_path_to_error::deserialize(payload)
                    .map(&upcast)
                    .map_err(path_error)
            }),
        );
        self
    }

    /// Stored events of type `event_type` are skipped when the state is rebuilt.
    ///
    /// # Panics
    /// If `event_type` is registered twice.
    pub fn ignore(mut self, event_type: &'static str) -> Self {
        self.register(event_type);
        self.ignored.insert(event_type);
        self
    }

    fn register(&self, event_type: &'static str) {
        assert!(
            !self.upcasters.contains_key(event_type) && !self.ignored.contains(event_type),
            "event type {event_type:?} is registered twice in the history"
        );
    }

    /// Decodes one stored event as the runtime does when it loads: through its upcaster,
    /// `None` if its type is ignored, otherwise as the current event type (adjacently tagged by
    /// `event_type`). A view reading the same events uses it to fold old shapes alike.
    ///
    /// # Errors
    /// An unknown event type, or a payload that does not fit, naming the field.
    pub fn decode(&self, event_type: &str, payload: &Value) -> Result<Option<E>, serde_json::Error>
    where
        E: DeserializeOwned,
    {
        match self.read(event_type, payload)? {
            Read::Upcast(event) => Ok(Some(event)),
            Read::Ignored => Ok(None),
            Read::Current => {
                serde_path_to_error::deserialize(tagged("event_type", event_type, payload))
                    .map(Some)
                    .map_err(path_error)
            }
        }
    }

    /// Reads one stored event: upcast, ignored, or not an old type at all.
    pub fn read(&self, event_type: &str, payload: &Value) -> Result<Read<E>, serde_json::Error> {
        if let Some(upcast) = self.upcasters.get(event_type) {
            return upcast(payload).map(Read::Upcast);
        }
        if self.ignored.contains(event_type) {
            return Ok(Read::Ignored);
        }
        Ok(Read::Current)
    }
}

/// serde's error with the path of the value it failed on (`items[0].sku: invalid type ...`).
fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> serde_json::Error {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path == "." {
        return inner;
    }
    <serde_json::Error as serde::de::Error>::custom(format!("{path}: {inner}"))
}

/// An aggregate type whose state is snapshotted: its state can be stored and read back.
/// Register it with [`snapshotted`].
pub trait Snapshotting: Aggregate<State: DeserializeOwned> {
    /// The version of the state's stored form. Bump it whenever `State` or `apply` changes in
    /// a way that makes an old state wrong for the new code: snapshots written with another
    /// version are ignored (the history is read instead), so a bump needs no migration.
    const STATE_SCHEMA: u32;
}

/// Registers `aggregate` with snapshots (every `DEFAULT_SNAPSHOT_EVERY` events unless the
/// runtime is configured otherwise).
pub fn snapshotted<A: Snapshotting>(aggregate: A) -> Arc<dyn DynAggregate> {
    Arc::new(Snapshotted(aggregate))
}

/// `A` with its snapshot codec exposed to the runtime.
struct Snapshotted<A>(A);

/// Type-erased state.
pub type AnyState = Arc<dyn Any + Send + Sync>;

/// Why a command was not decided.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// The command type is not one the aggregate knows.
    #[error(
        "unknown command type {given:?} for aggregate type {aggregate_type}; expected one of {expected:?}"
    )]
    UnknownCommand {
        /// The aggregate type.
        aggregate_type: AggregateType,
        /// What was sent.
        given: String,
        /// What is accepted.
        expected: &'static [&'static str],
    },
    /// The payload does not fit the command.
    #[error("invalid payload for command {command:?}: {reason}")]
    InvalidPayload {
        /// Command type.
        command: String,
        /// The decoder's explanation, naming the field (its path in the payload) it failed on.
        reason: String,
    },
    /// A domain rule refused the command.
    #[error("{message}")]
    Domain {
        /// Stable code.
        code: &'static str,
        /// Human-readable reason.
        message: String,
    },
}

/// An event that does not belong to this aggregate's event types.
#[derive(Debug, thiserror::Error)]
#[error("event type {event_type:?} cannot be applied: {reason}")]
pub struct ApplyError {
    /// The failing event's index among those given to [`DynAggregate::apply_all`].
    pub index: usize,
    /// The event type found.
    pub event_type: String,
    /// Why.
    pub reason: String,
}

/// An aggregate type behind dynamic dispatch, working on JSON.
pub trait DynAggregate: Send + Sync + 'static {
    /// Name.
    fn aggregate_type(&self) -> AggregateType;
    /// The command types it accepts ([`Aggregate::command_types`]).
    fn command_type_names(&self) -> &'static [&'static str];
    /// The schema of its commands ([`Aggregate::command_schema`]).
    fn command_schema(&self) -> Option<CommandSchema>;
    /// A fresh state.
    fn initial(&self) -> AnyState;
    /// Applies stored events to a copy of `state`.
    fn apply_all<'a>(
        &self,
        state: &AnyState,
        events: &mut dyn Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<AnyState, ApplyError>;
    /// Decides a command given as (type, payload); returns `(event_type, payload)` pairs.
    fn decide(
        &self,
        state: &AnyState,
        command_type: &str,
        payload: Value,
    ) -> Result<Vec<(String, Value)>, DecideError>;
    /// The state as JSON (for `GET`, and the state of a snapshot).
    fn state_json(&self, state: &AnyState) -> Value;
    /// The state-schema version of snapshots; `None` if this type takes no snapshots.
    fn state_schema(&self) -> Option<u32> {
        None
    }
    /// Decodes a snapshot's state; `None` if this type takes no snapshots.
    fn decode_state(&self, _state: Value) -> Option<Result<AnyState, serde_json::Error>> {
        None
    }
}

impl<A: Snapshotting> DynAggregate for Snapshotted<A> {
    fn aggregate_type(&self) -> AggregateType {
        DynAggregate::aggregate_type(&self.0)
    }
    fn command_type_names(&self) -> &'static [&'static str] {
        Aggregate::command_types(&self.0)
    }
    fn command_schema(&self) -> Option<CommandSchema> {
        Aggregate::command_schema(&self.0)
    }
    fn initial(&self) -> AnyState {
        self.0.initial()
    }
    fn apply_all<'a>(
        &self,
        state: &AnyState,
        events: &mut dyn Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<AnyState, ApplyError> {
        self.0.apply_all(state, events)
    }
    fn decide(
        &self,
        state: &AnyState,
        command_type: &str,
        payload: Value,
    ) -> Result<Vec<(String, Value)>, DecideError> {
        DynAggregate::decide(&self.0, state, command_type, payload)
    }
    fn state_json(&self, state: &AnyState) -> Value {
        self.0.state_json(state)
    }
    fn state_schema(&self) -> Option<u32> {
        Some(A::STATE_SCHEMA)
    }
    fn decode_state(&self, state: Value) -> Option<Result<AnyState, serde_json::Error>> {
        Some(serde_json::from_value::<A::State>(state).map(|s| Arc::new(s) as AnyState))
    }
}

fn split_tagged(v: Value, tag: &str) -> Option<(String, Value)> {
    let Value::Object(mut map) = v else {
        return None;
    };
    let t = match map.remove(tag)? {
        Value::String(s) => s,
        _ => return None,
    };
    Some((
        t,
        map.remove("payload")
            .unwrap_or(Value::Object(Default::default())),
    ))
}

fn tagged(tag: &str, t: &str, payload: &Value) -> Value {
    let mut map = serde_json::Map::with_capacity(2);
    map.insert(tag.to_owned(), Value::String(t.to_owned()));
    map.insert("payload".to_owned(), payload.clone());
    Value::Object(map)
}

impl<A: Aggregate> DynAggregate for A {
    fn aggregate_type(&self) -> AggregateType {
        Aggregate::aggregate_type(self)
    }

    fn command_type_names(&self) -> &'static [&'static str] {
        Aggregate::command_types(self)
    }

    fn command_schema(&self) -> Option<CommandSchema> {
        Aggregate::command_schema(self)
    }

    fn initial(&self) -> AnyState {
        Arc::new(A::State::default())
    }

    fn apply_all<'a>(
        &self,
        state: &AnyState,
        events: &mut dyn Iterator<Item = (&'a str, &'a Value)>,
    ) -> Result<AnyState, ApplyError> {
        let mut s: A::State = state
            .downcast_ref::<A::State>()
            .cloned()
            .unwrap_or_default();
        let history = self.history();
        for (index, (event_type, payload)) in events.enumerate() {
            let read = history
                .decode(event_type, payload)
                .map_err(|e| ApplyError {
                    index,
                    event_type: event_type.to_owned(),
                    reason: e.to_string(),
                })?;
            if let Some(event) = read {
                self.apply(&mut s, event);
            }
        }
        Ok(Arc::new(s))
    }

    fn decide(
        &self,
        state: &AnyState,
        command_type: &str,
        payload: Value,
    ) -> Result<Vec<(String, Value)>, DecideError> {
        if !self.command_types().contains(&command_type) {
            return Err(DecideError::UnknownCommand {
                aggregate_type: Aggregate::aggregate_type(self),
                given: command_type.to_owned(),
                expected: self.command_types(),
            });
        }
        let payload = if payload.is_null() {
            Value::Object(Default::default())
        } else {
            payload
        };
        let command: A::Command =
            serde_path_to_error::deserialize(tagged("type", command_type, &payload))
                .map_err(path_error)
                .map_err(|e| DecideError::InvalidPayload {
                    command: command_type.to_owned(),
                    reason: e.to_string(),
                })?;
        let fallback = A::State::default();
        let s = state.downcast_ref::<A::State>().unwrap_or(&fallback);
        let events = A::decide(self, s, command).map_err(|e| DecideError::Domain {
            code: e.code(),
            message: e.to_string(),
        })?;
        events
            .into_iter()
            .map(|e| {
                serde_json::to_value(e)
                    .ok()
                    .and_then(|v| split_tagged(v, "event_type"))
                    .ok_or_else(|| DecideError::InvalidPayload {
                        command: command_type.to_owned(),
                        reason: "the aggregate produced an event that is not tagged by event_type"
                            .to_owned(),
                    })
            })
            .collect()
    }

    fn state_json(&self, state: &AnyState) -> Value {
        state
            .downcast_ref::<A::State>()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
    enum Ev {
        Renamed { name: String, size: u32 },
    }

    #[derive(Deserialize)]
    struct Old {
        title: String,
    }

    fn history() -> History<Ev> {
        History::new()
            .upcast("named", |old: Old| Ev::Renamed {
                name: old.title,
                size: 0,
            })
            .ignore("pinged")
    }

    #[test]
    fn an_old_type_is_upcast_an_ignored_one_skipped_others_left_to_the_current_type() {
        let h = history();
        assert_eq!(
            h.read("named", &json!({"title": "x"})).expect("upcast"),
            Read::Upcast(Ev::Renamed {
                name: "x".to_owned(),
                size: 0
            })
        );
        assert_eq!(
            h.read("pinged", &json!(null)).expect("ignored"),
            Read::Ignored
        );
        assert_eq!(
            h.read("renamed", &json!({})).expect("current"),
            Read::Current
        );
    }

    #[test]
    fn an_old_payload_that_does_not_fit_names_the_field() {
        let err = history()
            .read("named", &json!({"title": 7}))
            .expect_err("invalid");
        assert!(err.to_string().starts_with("title: invalid type"), "{err}");
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_type_registered_twice_is_a_programming_error() {
        let _ = history().ignore("named");
    }
}
