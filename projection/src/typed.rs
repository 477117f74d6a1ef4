//! Typed views: a view of one document per event written over the domain's own event and
//! document types instead of JSON ([`TypedView`]); registered with
//! [`crate::ServiceBuilder::typed_view`], which runs it as a [`View`]. Views that fold an event
//! into several documents implement [`View::keys`] and [`View::fold`] directly.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shared::{EventEnvelope, ViewName};

use crate::view::{EventSpec, Fold, View, ViewError};

/// A view of one document per event, over typed events and documents.
pub trait TypedView: Send + Sync + 'static {
    /// The events it folds, as [`TypedView::decode`] reads them.
    type Event;
    /// Its documents, stored as their JSON (the engine adds `_position`).
    type Document: Serialize + DeserializeOwned;

    /// The view's name: part of its URL, consumer and bucket names.
    fn name(&self) -> ViewName;
    /// The fold's version: bumping it replays every event into a fresh bucket.
    fn version(&self) -> u32;
    /// The events it folds (see [`EventSpec`]); at least one.
    fn events(&self) -> Vec<EventSpec>;
    /// The key of the document the event touches (see [`View::key`]); `None`: not for this
    /// view.
    fn key(&self, env: &EventEnvelope) -> Option<String>;
    /// Reads the event (typically the aggregate type's own decoder, upcasters included);
    /// `Ok(None)`: an event type this view does not fold. An error parks the event, its message
    /// naming the field.
    ///
    /// # Errors
    /// A payload that does not fit its event type.
    fn decode(&self, env: &EventEnvelope) -> Result<Option<Self::Event>, serde_json::Error>;
    /// Folds the event into the document (`None`: none yet). `Some` sets the document, `None`
    /// deletes it (or leaves none).
    ///
    /// # Errors
    /// The event is not valid in the document's state (the event is parked).
    fn fold(
        &self,
        doc: Option<Self::Document>,
        event: Self::Event,
    ) -> Result<Option<Self::Document>, ViewError>;
}

/// A [`TypedView`] as the engine runs it.
pub(crate) struct Typed<V>(pub(crate) V);

impl<V: TypedView> View for Typed<V> {
    fn name(&self) -> ViewName {
        self.0.name()
    }

    fn version(&self) -> u32 {
        self.0.version()
    }

    fn events(&self) -> Vec<EventSpec> {
        self.0.events()
    }

    fn key(&self, env: &EventEnvelope) -> Option<String> {
        self.0.key(env)
    }

    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        let event = match self.0.decode(env) {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(Fold::Unknown),
            Err(e) => {
                return Err(ViewError::Payload {
                    event_type: env.event_type.clone(),
                    detail: e.to_string(),
                });
            }
        };
        let existed = doc.is_some();
        let doc = doc
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| ViewError::State(format!("the stored document does not decode: {e}")))?;
        match self.0.fold(doc, event)? {
            Some(doc) => serde_json::to_value(doc)
                .map(Fold::Set)
                .map_err(|e| ViewError::State(format!("the document does not encode: {e}"))),
            None if existed => Ok(Fold::Delete),
            None => Ok(Fold::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    /// Counts `ticked` events per aggregate; the document goes away at `cleared`.
    struct Ticks;

    #[derive(Deserialize)]
    struct Ticked {
        by: u64,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Count {
        n: u64,
    }

    impl TypedView for Ticks {
        type Event = Option<Ticked>;
        type Document = Count;
        fn name(&self) -> ViewName {
            "ticks".parse().expect("name")
        }
        fn version(&self) -> u32 {
            1
        }
        fn events(&self) -> Vec<EventSpec> {
            vec![EventSpec::new("clock", "ticked")]
        }
        fn key(&self, env: &EventEnvelope) -> Option<String> {
            Some(env.aggregate_id.to_string())
        }
        fn decode(&self, env: &EventEnvelope) -> Result<Option<Option<Ticked>>, serde_json::Error> {
            match env.event_type.as_str() {
                "ticked" => serde_json::from_value(env.payload.clone()).map(|t| Some(Some(t))),
                "cleared" => Ok(Some(None)),
                _ => Ok(None),
            }
        }
        fn fold(
            &self,
            doc: Option<Count>,
            event: Option<Ticked>,
        ) -> Result<Option<Count>, ViewError> {
            Ok(event.map(|t| Count {
                n: doc.map_or(0, |d| d.n) + t.by,
            }))
        }
    }

    fn env(event_type: &str, payload: Value) -> EventEnvelope {
        serde_json::from_value(json!({
            "tenant_id": "acme",
            "aggregate_type": "clock",
            "aggregate_id": "c1",
            "event_type": event_type,
            "payload": payload,
            "occurred_at": "2026-01-01T00:00:00Z",
        }))
        .expect("envelope")
    }

    #[test]
    fn a_typed_fold_sets_deletes_or_leaves_the_document() {
        let view = Typed(Ticks);
        assert_eq!(
            view.apply(Some(json!({"n": 2})), &env("ticked", json!({"by": 3}))),
            Ok(Fold::Set(json!({"n": 5})))
        );
        assert_eq!(
            view.apply(Some(json!({"n": 2})), &env("cleared", json!({}))),
            Ok(Fold::Delete)
        );
        assert_eq!(
            view.apply(None, &env("cleared", json!({}))),
            Ok(Fold::Unknown)
        );
        assert_eq!(view.apply(None, &env("rang", json!({}))), Ok(Fold::Unknown));
    }

    #[test]
    fn a_payload_or_document_that_does_not_decode_is_refused_naming_why() {
        let view = Typed(Ticks);
        let Err(ViewError::Payload { event_type, detail }) =
            view.apply(None, &env("ticked", json!({"by": "x"})))
        else {
            panic!("not a payload error");
        };
        assert_eq!(event_type, "ticked");
        assert!(detail.contains("invalid type"), "{detail}");
        assert!(matches!(
            view.apply(Some(json!({"n": "x"})), &env("ticked", json!({"by": 1}))),
            Err(ViewError::State(_))
        ));
    }
}
