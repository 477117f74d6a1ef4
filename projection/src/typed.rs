//! Typed views: a view written over the domain's own event and document types instead of JSON
//! ([`TypedView`]), one document per event or several; registered with
//! [`crate::ServiceBuilder::typed_view`], which runs it as a [`View`].

use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::{EventEnvelope, ViewName};

use crate::view::{Docs, EventSpec, Folded, View, ViewError};

/// A view over typed events and documents: it names the documents an event touches
/// ([`TypedView::key`], or [`TypedView::keys`] for several), decodes the event once, and folds
/// it into each of those documents.
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
    /// The key of the one document the event touches (see [`View::key`]); `None`: not for
    /// this view. A view whose events touch several documents implements
    /// [`TypedView::keys`] instead.
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        let _ = env;
        None
    }
    /// The keys of every document the event touches, each folded in turn (see
    /// [`View::keys`]); empty: not for this view. The default: [`TypedView::key`].
    fn keys(&self, env: &EventEnvelope) -> Vec<String> {
        self.key(env).into_iter().collect()
    }
    /// Reads the event (typically the aggregate type's own decoder, upcasters included);
    /// `Ok(None)`: an event type this view does not fold. An error parks the event, its message
    /// naming the field.
    ///
    /// # Errors
    /// A payload that does not fit its event type.
    fn decode(&self, env: &EventEnvelope) -> Result<Option<Self::Event>, serde_json::Error>;
    /// Folds the event into the document at `key`, one of [`TypedView::keys`] (`None`: no
    /// document yet). `Some` sets the document, `None` deletes it (or leaves none). A
    /// single-document view can ignore `key`.
    ///
    /// # Errors
    /// The event is not valid in the document's state (the event is parked; no document of
    /// the event changes).
    fn fold(
        &self,
        key: &str,
        doc: Option<Self::Document>,
        event: &Self::Event,
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

    fn keys(&self, env: &EventEnvelope) -> Vec<String> {
        self.0.keys(env)
    }

    fn fold(&self, docs: &mut Docs, env: &EventEnvelope) -> Result<Folded, ViewError> {
        let event = match self.0.decode(env) {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(Folded::Unknown),
            Err(e) => {
                return Err(ViewError::Payload {
                    event_type: env.event_type.clone(),
                    detail: e.to_string(),
                });
            }
        };
        let keys: Vec<String> = docs.keys().map(str::to_owned).collect();
        let mut changed = false;
        for key in keys {
            let current = docs.get(&key).cloned();
            let existed = current.is_some();
            let doc = current
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    ViewError::State(format!("the stored document {key} does not decode: {e}"))
                })?;
            match self.0.fold(&key, doc, &event)? {
                Some(doc) => {
                    let doc = serde_json::to_value(doc).map_err(|e| {
                        ViewError::State(format!("the document {key} does not encode: {e}"))
                    })?;
                    docs.set(&key, doc)?;
                    changed = true;
                }
                None if existed => {
                    docs.delete(&key)?;
                    changed = true;
                }
                None => {}
            }
        }
        Ok(if changed {
            Folded::Applied
        } else {
            Folded::Unknown
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{Value, json};

    use super::*;

    /// Counts `ticked` events per aggregate and in all (two documents per event: the
    /// aggregate's and `all`); the aggregate's document goes away at `cleared`.
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
        fn keys(&self, env: &EventEnvelope) -> Vec<String> {
            vec![env.aggregate_id.to_string(), "all".to_owned()]
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
            key: &str,
            doc: Option<Count>,
            event: &Option<Ticked>,
        ) -> Result<Option<Count>, ViewError> {
            let n = doc.as_ref().map_or(0, |d| d.n);
            Ok(match event {
                Some(t) => Some(Count { n: n + t.by }),
                // clearing ends the aggregate's count; the total stays
                None if key == "all" => doc,
                None => None,
            })
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

    /// Each key of an event with its document after the fold.
    type After = Vec<(String, Option<Value>)>;

    /// Folds `event` into the documents its keys name, holding `current`; what the fold did and
    /// the documents afterwards.
    fn fold(
        current: &[(&str, Value)],
        event: &EventEnvelope,
    ) -> Result<(Folded, After), ViewError> {
        let view = Typed(Ticks);
        let mut docs = Docs::new(view.keys(event).into_iter().map(|k| {
            let doc = current
                .iter()
                .find(|(c, _)| *c == k)
                .map(|(_, d)| d.clone());
            (k, doc)
        }));
        let folded = view.fold(&mut docs, event)?;
        let after = docs
            .keys()
            .map(|k| (k.to_owned(), docs.get(k).cloned()))
            .collect();
        Ok((folded, after))
    }

    #[test]
    fn a_typed_fold_sets_deletes_or_leaves_each_document_the_event_names() {
        let set = |k: &str, n: u64| (k.to_owned(), Some(json!({"n": n})));
        assert_eq!(
            fold(
                &[("c1", json!({"n": 2})), ("all", json!({"n": 7}))],
                &env("ticked", json!({"by": 3}))
            ),
            Ok((Folded::Applied, vec![set("c1", 5), set("all", 10)]))
        );
        assert_eq!(
            fold(&[], &env("ticked", json!({"by": 1}))),
            Ok((Folded::Applied, vec![set("c1", 1), set("all", 1)]))
        );
        assert_eq!(
            fold(
                &[("c1", json!({"n": 2})), ("all", json!({"n": 7}))],
                &env("cleared", json!({}))
            ),
            Ok((
                Folded::Applied,
                vec![("c1".to_owned(), None), set("all", 7)]
            ))
        );
        assert_eq!(
            fold(&[], &env("cleared", json!({}))).map(|(f, _)| f),
            Ok(Folded::Unknown)
        );
        assert_eq!(
            fold(&[], &env("rang", json!({}))).map(|(f, _)| f),
            Ok(Folded::Unknown)
        );
    }

    #[test]
    fn a_payload_or_document_that_does_not_decode_is_refused_naming_why() {
        let Err(ViewError::Payload { event_type, detail }) =
            fold(&[], &env("ticked", json!({"by": "x"})))
        else {
            panic!("not a payload error");
        };
        assert_eq!(event_type, "ticked");
        assert!(detail.contains("invalid type"), "{detail}");
        let Err(ViewError::State(why)) = fold(
            &[("all", json!({"n": "x"}))],
            &env("ticked", json!({"by": 1})),
        ) else {
            panic!("not a state error");
        };
        assert!(why.contains("document all does not decode"), "{why}");
    }
}
