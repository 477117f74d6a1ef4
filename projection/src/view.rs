//! The view abstraction: a named, versioned fold of events into JSON documents.
//!
//! A view decides which documents an event touches ([`View::keys`]) and how it changes them
//! ([`View::fold`]). Everything else (ordering, duplicates, storage, parking) is the engine's.
//! A view whose events each touch one document implements [`View::key`] and [`View::apply`]
//! instead; the defaults of `keys` and `fold` call them.
//! Folds must be deterministic: the same documents and event always give the same result, so a
//! rejected event is rejected again on retry and a replay rebuilds the same documents.
//!
//! No document may grow with a tenant's data: a view that needs state per aggregate keeps it
//! under a key of its own (e.g. `account.<id>`) beside its summary documents, and the engine
//! commits every document an event touched in one atomic write.

use serde_json::{Value, json};
use shared::{AggregateType, EventEnvelope, ViewName};

/// The reserved document fields the engine maintains; views must not use names starting with `_`.
pub const POSITION_FIELD: &str = "_position";
/// Set on a deleted document (a tombstone keeps `_position`, so a redelivered event stays a
/// duplicate after a delete).
pub const DELETED_FIELD: &str = "_deleted";

/// The most tokens a document key may have.
pub const KEY_MAX_TOKENS: usize = 8;
/// The most bytes of one key token (the id rule's limit).
pub const KEY_TOKEN_MAX_BYTES: usize = 64;

/// What folding one event into a single document did ([`View::apply`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Fold {
    /// The new document.
    Set(Value),
    /// The document is deleted.
    Delete,
    /// The view does not know this event type: nothing changes (counted as skipped).
    Unknown,
}

/// What folding one event into its documents did ([`View::fold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    /// The documents set or deleted through [`Docs`] change.
    Applied,
    /// The view does not know this event type: nothing changes (counted as skipped).
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
    /// The event is not valid in the documents' current state (e.g. a deposit before `opened`).
    #[error("{0}")]
    State(String),
    /// The fold wrote a document its [`View::keys`] did not name.
    #[error("undeclared-key: the fold wrote {0:?}, which keys() did not name for this event")]
    UndeclaredKey(String),
}

/// Why a document key is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid-key: {key:?} is not a document key (1 to {KEY_MAX_TOKENS} tokens of \
     [A-Za-z0-9_-], each 1 to {KEY_TOKEN_MAX_BYTES} bytes, joined by '.'): {reason}"
)]
pub struct KeyError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Checks a document key (within a tenant): 1 to [`KEY_MAX_TOKENS`] id tokens joined by `.`.
/// A key built from such tokens cannot widen a NATS subject.
pub fn validate_key(key: &str) -> Result<(), KeyError> {
    let err = |reason| {
        Err(KeyError {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return err("empty");
    }
    let tokens: Vec<&str> = key.split('.').collect();
    if tokens.len() > KEY_MAX_TOKENS {
        return err("too many tokens");
    }
    for t in tokens {
        if t.is_empty() {
            return err("empty token");
        }
        if t.len() > KEY_TOKEN_MAX_BYTES {
            return err("token too long");
        }
        if !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return err("a token holds a character outside [A-Za-z0-9_-]");
        }
    }
    Ok(())
}

/// Whether a document is absent or a tombstone.
fn live(doc: Option<&Value>) -> Option<&Value> {
    doc.filter(|d| d.get(DELETED_FIELD).and_then(Value::as_bool) != Some(true))
}

/// What the fold did to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    Unchanged,
    Set,
    Deleted,
}

/// One document handed to a fold.
#[derive(Debug, Clone)]
pub(crate) struct DocSlot {
    pub(crate) key: String,
    pub(crate) doc: Option<Value>,
    pub(crate) touch: Touch,
}

/// The documents of one event, as [`View::keys`] named them, handed to [`View::fold`]: read
/// them with [`Docs::get`], change them with [`Docs::set`] / [`Docs::delete`]. Nothing is
/// stored unless the fold returns [`Folded::Applied`].
#[derive(Debug, Clone, Default)]
pub struct Docs {
    pub(crate) slots: Vec<DocSlot>,
}

impl Docs {
    /// The documents `keys` with their current contents (`None` = no document).
    pub fn new(docs: impl IntoIterator<Item = (String, Option<Value>)>) -> Self {
        Docs {
            slots: docs
                .into_iter()
                .map(|(key, doc)| DocSlot {
                    key,
                    doc,
                    touch: Touch::Unchanged,
                })
                .collect(),
        }
    }

    fn slot(&mut self, key: &str) -> Result<&mut DocSlot, ViewError> {
        self.slots
            .iter_mut()
            .find(|s| s.key == key)
            .ok_or_else(|| ViewError::UndeclaredKey(key.to_owned()))
    }

    /// The document at `key` (`None`: none yet, deleted, or not one of the event's keys).
    pub fn get(&self, key: &str) -> Option<&Value> {
        live(
            self.slots
                .iter()
                .find(|s| s.key == key)
                .and_then(|s| s.doc.as_ref()),
        )
    }

    /// Replaces the document at `key`.
    pub fn set(&mut self, key: &str, doc: Value) -> Result<(), ViewError> {
        let slot = self.slot(key)?;
        slot.doc = Some(doc);
        slot.touch = Touch::Set;
        Ok(())
    }

    /// Deletes the document at `key`.
    pub fn delete(&mut self, key: &str) -> Result<(), ViewError> {
        let slot = self.slot(key)?;
        slot.doc = None;
        slot.touch = Touch::Deleted;
        Ok(())
    }

    /// The keys, in the order [`View::keys`] named them.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.key.as_str())
    }
}

/// An event a view folds, as the view declares it in [`View::events`]: its aggregate type, its
/// event type and an example payload. At start-up every declared event is put through
/// [`View::keys`] (with the longest ids the id rule allows and the example payload), so a view
/// that names no document for an event it folds, or a key that is not valid, is refused before
/// anything is consumed instead of parking every such event at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSpec {
    /// The aggregate type (an id token).
    pub aggregate_type: String,
    /// The event type.
    pub event_type: String,
    /// A payload the event type may carry (default `{}`): the start-up check's input for a view
    /// whose keys depend on the payload.
    pub example: Value,
}

impl EventSpec {
    /// `event_type` of `aggregate_type`, with the example payload `{}`.
    pub fn new(aggregate_type: &str, event_type: &str) -> Self {
        EventSpec {
            aggregate_type: aggregate_type.to_owned(),
            event_type: event_type.to_owned(),
            example: json!({}),
        }
    }

    /// The example payload the start-up check folds.
    #[must_use]
    pub fn example(mut self, payload: Value) -> Self {
        self.example = payload;
        self
    }
}

/// A projection view. Implementations are pure and cheap to call.
pub trait View: Send + Sync + 'static {
    /// The view's name: part of its URL, consumer and bucket names.
    fn name(&self) -> ViewName;
    /// The fold's version: bumping it replays every event into a fresh bucket.
    fn version(&self) -> u32;

    /// The events this view folds (see [`EventSpec`]); at least one. Checked at start-up: each
    /// must name at least one document, every key valid for [`validate_key`].
    fn events(&self) -> Vec<EventSpec>;

    /// The keys of the documents this event reads and writes, within the event's tenant, each
    /// valid for [`validate_key`] (the stored key is `<tenant>.<key>`). Empty: the event is
    /// not for this view. An event whose keys are invalid is parked (`invalid-key`). The
    /// default: [`View::key`].
    fn keys(&self, env: &EventEnvelope) -> Vec<String> {
        self.key(env).into_iter().collect()
    }

    /// Folds the event into the documents [`View::keys`] named. The engine has already
    /// filtered duplicates and adds `_position` to every document it stores. On `Err` and on
    /// [`Folded::Unknown`] nothing is stored. The default folds the first document through
    /// [`View::apply`].
    fn fold(&self, docs: &mut Docs, env: &EventEnvelope) -> Result<Folded, ViewError> {
        let Some(key) = docs.keys().next().map(str::to_owned) else {
            return Ok(Folded::Unknown);
        };
        match self.apply(docs.get(&key).cloned(), env)? {
            Fold::Set(v) => docs.set(&key, v)?,
            Fold::Delete => docs.delete(&key)?,
            Fold::Unknown => return Ok(Folded::Unknown),
        }
        Ok(Folded::Applied)
    }

    /// Single-document views: the key of the document this event touches. `None` = the event
    /// is not for this view.
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        let _ = env;
        None
    }

    /// Single-document views: folds the event into the document (`None` = no document yet).
    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        let _ = (doc, env);
        Ok(Fold::Unknown)
    }
}

/// Why a set of views cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewDefinitionError {
    /// Two views have the same name.
    #[error("invalid view definition: two views are named {0:?}")]
    DuplicateName(String),
    /// A version of 0.
    #[error("invalid view definition: view {0:?} has version 0 (versions start at 1)")]
    VersionZero(String),
    /// The bucket names would be longer than JetStream allows.
    #[error("invalid view definition: view {0:?}: its bucket names would exceed 255 bytes")]
    NameTooLong(String),
    /// [`View::events`] is empty: the view would never fold anything.
    #[error("invalid view definition: view {0:?} declares no events (View::events is empty)")]
    NoEvents(String),
    /// A declared event whose aggregate type is not an id token.
    #[error(
        "invalid view definition: view {view:?} declares an event of aggregate type \
         {aggregate_type:?}, which is not an id token"
    )]
    AggregateType {
        /// The view.
        view: String,
        /// The declared aggregate type.
        aggregate_type: String,
    },
    /// A declared event for which [`View::keys`] names no document.
    #[error(
        "invalid view definition: view {view:?} names no document for {aggregate_type}/\
         {event_type} (View::keys is empty for an event it declares)"
    )]
    NoKey {
        /// The view.
        view: String,
        /// The event's aggregate type.
        aggregate_type: String,
        /// The event type.
        event_type: String,
    },
    /// A declared event for which [`View::keys`] names an invalid key.
    #[error("invalid view definition: view {view:?}, {aggregate_type}/{event_type}: {error}")]
    InvalidKey {
        /// The view.
        view: String,
        /// The event's aggregate type.
        aggregate_type: String,
        /// The event type.
        event_type: String,
        /// What is wrong with the key.
        error: KeyError,
    },
}

/// The id the start-up check gives every id of a probe event: the longest the id rule allows,
/// with each of the characters it allows besides letters and digits.
const PROBE_ID: &str = "probe_id-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQ";

/// The event the start-up check puts through [`View::keys`] for one declared event.
fn probe(spec: &EventSpec) -> Option<EventEnvelope> {
    let aggregate_type = AggregateType::try_from(spec.aggregate_type.as_str()).ok()?;
    serde_json::from_value(json!({
        "tenant_id": PROBE_ID,
        "aggregate_type": aggregate_type.as_str(),
        "aggregate_id": PROBE_ID,
        "version": 1,
        "event_type": spec.event_type,
        "payload": spec.example,
        "occurred_at": "2026-01-01T00:00:00Z",
    }))
    .ok()
}

/// Checks the views a service is to serve, at start-up: unique names, versions from 1, bucket
/// names JetStream accepts, and for every event a view declares ([`View::events`]) at least one
/// document key, each valid (probed with the longest ids the id rule allows). A key that a
/// probe cannot foresee (one built from a payload unlike the example) is still checked per
/// event: an invalid one parks the event (`invalid-key`).
pub fn validate_views(views: &[std::sync::Arc<dyn View>]) -> Result<(), ViewDefinitionError> {
    let mut seen = std::collections::BTreeSet::new();
    for v in views {
        let name = v.name().to_string();
        if !seen.insert(name.clone()) {
            return Err(ViewDefinitionError::DuplicateName(name));
        }
        if v.version() == 0 {
            return Err(ViewDefinitionError::VersionZero(name));
        }
        // PARKED_<name>_v<version>_g<generation>, with a KV_ stream prefix
        if name.len() + 40 > 255 {
            return Err(ViewDefinitionError::NameTooLong(name));
        }
        validate_keys(v.as_ref(), &name)?;
    }
    Ok(())
}

/// The key part of [`validate_views`] for one view.
fn validate_keys(view: &dyn View, name: &str) -> Result<(), ViewDefinitionError> {
    let events = view.events();
    if events.is_empty() {
        return Err(ViewDefinitionError::NoEvents(name.to_owned()));
    }
    for spec in events {
        let Some(env) = probe(&spec) else {
            return Err(ViewDefinitionError::AggregateType {
                view: name.to_owned(),
                aggregate_type: spec.aggregate_type,
            });
        };
        let keys = view.keys(&env);
        if keys.is_empty() {
            return Err(ViewDefinitionError::NoKey {
                view: name.to_owned(),
                aggregate_type: spec.aggregate_type,
                event_type: spec.event_type,
            });
        }
        if let Some(error) = keys.iter().find_map(|k| validate_key(k).err()) {
            return Err(ViewDefinitionError::InvalidKey {
                view: name.to_owned(),
                aggregate_type: spec.aggregate_type,
                event_type: spec.event_type,
                error,
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dotted_id_tokens() {
        for ok in ["summary", "account.a-1", "a.b.c", &"x".repeat(64)] {
            assert_eq!(validate_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a b",
            "a*",
            "a>",
            "ä",
            &"x".repeat(65),
            "a.b.c.d.e.f.g.h.i",
        ] {
            let e = validate_key(bad).expect_err(bad);
            assert!(e.to_string().starts_with("invalid-key"), "{e}");
        }
    }

    #[test]
    fn a_fold_may_only_write_its_declared_keys() {
        let mut docs = Docs::new([("a".to_owned(), None)]);
        assert_eq!(
            docs.set("b", Value::Null),
            Err(ViewError::UndeclaredKey("b".into()))
        );
        assert_eq!(docs.set("a", serde_json::json!({"x": 1})), Ok(()));
        assert_eq!(docs.get("a"), Some(&serde_json::json!({"x": 1})));
        assert_eq!(docs.delete("a"), Ok(()));
        assert_eq!(docs.get("a"), None);
    }

    /// A view for the start-up check: keys from a closure, events as declared.
    struct Probe {
        events: Vec<EventSpec>,
        keys: fn(&EventEnvelope) -> Vec<String>,
    }

    impl View for Probe {
        fn name(&self) -> ViewName {
            "probe".parse().expect("name")
        }
        fn version(&self) -> u32 {
            1
        }
        fn events(&self) -> Vec<EventSpec> {
            self.events.clone()
        }
        fn keys(&self, env: &EventEnvelope) -> Vec<String> {
            (self.keys)(env)
        }
    }

    fn check(events: Vec<EventSpec>, keys: fn(&EventEnvelope) -> Vec<String>) -> String {
        let view: std::sync::Arc<dyn View> = std::sync::Arc::new(Probe { events, keys });
        validate_views(&[view]).map_or_else(|e| e.to_string(), |()| "ok".to_owned())
    }

    #[test]
    fn keys_are_checked_at_start_up_for_every_declared_event() {
        let account = || vec![EventSpec::new("account", "opened")];
        assert_eq!(check(account(), |e| vec![e.aggregate_id.to_string()]), "ok");
        assert_eq!(
            check(account(), |e| vec![format!("by-id.{}", e.aggregate_id)]),
            "ok"
        );
        // a key from the payload, with the example as the probe's input
        let by_owner = vec![EventSpec::new("account", "opened").example(json!({"owner": "o"}))];
        let owner_key = |e: &EventEnvelope| {
            e.payload["owner"]
                .as_str()
                .map(|o| format!("owner.{o}"))
                .into_iter()
                .collect()
        };
        assert_eq!(check(by_owner, owner_key), "ok");
        // without the example the payload has no owner: no key
        let e = check(account(), owner_key);
        assert!(e.contains("names no document for account/opened"), "{e}");

        let e = check(Vec::new(), |_| vec!["x".into()]);
        assert!(e.contains("declares no events"), "{e}");
        let e = check(account(), |_| Vec::new());
        assert!(e.contains("names no document for account/opened"), "{e}");
        let e = check(account(), |_| vec!["a*".into()]);
        assert!(
            e.contains("invalid-key") && e.contains("account/opened"),
            "{e}"
        );
        // fine for short ids, too long for the longest id the id rule allows
        let e = check(account(), |e| vec![format!("acct-{}", e.aggregate_id)]);
        assert!(e.contains("token too long"), "{e}");
        let e = check(account(), |e| {
            vec![format!("{}.{}", e.tenant_id, e.aggregate_id)]
        });
        assert_eq!(e, "ok", "a key may repeat ids in several tokens");
        let e = check(vec![EventSpec::new("acc ount", "opened")], |_| {
            vec!["x".into()]
        });
        assert!(e.contains("\"acc ount\", which is not an id token"), "{e}");
    }

    #[test]
    fn the_shipped_views_pass_the_start_up_check() {
        let views: Vec<std::sync::Arc<dyn View>> = vec![
            std::sync::Arc::new(crate::views::Accounts),
            std::sync::Arc::new(crate::views::TenantSummary),
        ];
        assert_eq!(validate_views(&views), Ok(()));
    }
}
