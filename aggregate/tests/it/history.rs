//! Stored events of old shapes through the library API: an unknown event type is a corrupt
//! history naming its sequence, unless the type's `History` upcasts or ignores it.

use aggregate::domain::DynAggregate as _;
use aggregate::{Aggregate, AggregateType, DomainError, History, Service};
use platform::auth::Authenticator;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{AggregateAddress, Event, Version};
use testkit::NatsServer;

use crate::support::*;

/// A note's lines; how events become lines is what the versions below differ in.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct Lines(Vec<String>);

#[derive(Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum NoteCommand {
    Write { text: String },
}

/// Version 1: `noted {text}`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
enum NoteEventV1 {
    Noted { text: String },
}

/// Version 2: `noted_v2 {body, author}`; `noted` is read by an upcaster.
#[derive(Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
enum NoteEvent {
    NotedV2 { body: String, author: String },
}

/// `noted`'s payload as version 1 stored it.
#[derive(Deserialize)]
struct NotedV1 {
    text: String,
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl DomainError for Never {
    fn code(&self) -> &'static str {
        "never"
    }
}

fn note_type() -> AggregateType {
    "note".parse().expect("type")
}

/// Version 1, with an optional history (to ignore a retired event type).
struct NoteV1(fn() -> History<NoteEventV1>);

impl Aggregate for NoteV1 {
    type State = Lines;
    type Command = NoteCommand;
    type Event = NoteEventV1;
    type Error = Never;
    fn aggregate_type(&self) -> AggregateType {
        note_type()
    }
    fn command_types(&self) -> &'static [&'static str] {
        &["write"]
    }
    fn apply(&self, state: &mut Lines, NoteEventV1::Noted { text }: NoteEventV1) {
        state.0.push(text);
    }
    fn decide(
        &self,
        _: &Lines,
        NoteCommand::Write { text }: NoteCommand,
    ) -> Result<Vec<NoteEventV1>, Never> {
        Ok(vec![NoteEventV1::Noted { text }])
    }
    fn history(&self) -> History<NoteEventV1> {
        (self.0)()
    }
}

/// Version 2: renamed field `text` -> `body`, added `author`; `noted` upcast, `retracted`
/// ignored.
struct NoteV2;

impl Aggregate for NoteV2 {
    type State = Lines;
    type Command = NoteCommand;
    type Event = NoteEvent;
    type Error = Never;
    fn aggregate_type(&self) -> AggregateType {
        note_type()
    }
    fn command_types(&self) -> &'static [&'static str] {
        &["write"]
    }
    fn apply(&self, state: &mut Lines, NoteEvent::NotedV2 { body, .. }: NoteEvent) {
        state.0.push(body);
    }
    fn decide(
        &self,
        _: &Lines,
        NoteCommand::Write { text }: NoteCommand,
    ) -> Result<Vec<NoteEvent>, Never> {
        Ok(vec![NoteEvent::NotedV2 {
            body: text,
            author: "unknown".to_owned(),
        }])
    }
    fn history(&self) -> History<NoteEvent> {
        History::new()
            .upcast("noted", |old: NotedV1| NoteEvent::NotedV2 {
                body: old.text,
                author: "unknown".to_owned(),
            })
            .ignore("retracted")
    }
}

async fn instance_of(server: &NatsServer, service: &Service) -> aggregate::App {
    service
        .start(&config(server, &[]))
        .await
        .expect("start aggregate")
}

fn note() -> AggregateAddress {
    AggregateAddress::new(
        "acme".parse().expect("tenant"),
        note_type(),
        "n1".parse().expect("id"),
    )
}

/// Appends `event_type` / `payload` as the next event of `address` the way a retired version
/// of the code would have (not through the runtime, which only writes current events); returns
/// its stream sequence.
async fn forge(
    app: &aggregate::App,
    address: &AggregateAddress,
    version: u64,
    event_type: &str,
    payload: Value,
) -> u64 {
    let template = app.runtime.store().read(address, 1).await.expect("read")[0]
        .event
        .clone();
    let event = Event {
        event_id: shared::EventId::new(),
        version: Version(version),
        event_type: event_type.to_owned(),
        payload,
        ..template
    };
    let js = async_nats::jetstream::new(app.core.client.clone());
    js.publish(
        address.subject(),
        serde_json::to_vec(&event).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack")
    .sequence
}

/// `noted "a"`, `retracted`, `noted "b"`: returns the sequence of `retracted`.
async fn old_history(server: &NatsServer) -> u64 {
    let v1 = Service::builder()
        .aggregate(NoteV1(History::new))
        .build()
        .expect("service");
    let app = instance_of(server, &v1).await;
    let n = note();
    send(&app, &n, cmd("write", json!({"text": "a"}))).await;
    let retracted = forge(&app, &n, 2, "retracted", json!({"reason": "typo"})).await;
    forge(&app, &n, 3, "noted", json!({"text": "b"})).await;
    retracted
}

#[tokio::test]
async fn an_unknown_event_type_is_a_corrupt_history_naming_its_sequence() {
    let server = NatsServer::start();
    let retracted = old_history(&server).await;
    // a fresh instance of version 1, which knows nothing of `retracted`
    let v1 = Service::builder()
        .aggregate(NoteV1(History::new))
        .build()
        .expect("service");
    let app = instance_of(&server, &v1).await;
    let err = app.runtime.load(&note()).await.err().expect("corrupt");
    let message = err.to_string();
    assert!(
        message.contains(&format!("stream sequence {retracted} "))
            && message.contains("\"retracted\""),
        "{message}"
    );
    // and over HTTP: 500 corrupt-history naming the sequence, as the document says
    let router = aggregate::app(
        &app,
        Authenticator::disabled(),
        platform::http::HttpSettings {
            body_limit: 4096,
            request_timeout: std::time::Duration::from_secs(10),
        },
    );
    let api = testkit::openapi::CheckedApi::new(router).await;
    let (status, body) = api
        .call("GET", "/v1/tenants/acme/aggregates/note/n1", None, None)
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body["type"], "urn:nats-es:problem:corrupt-history",
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&format!("sequence {retracted} ")),
        "{detail}"
    );
}

#[tokio::test]
async fn an_ignored_event_type_is_skipped() {
    let server = NatsServer::start();
    old_history(&server).await;
    let v1 = Service::builder()
        .aggregate(NoteV1(|| History::new().ignore("retracted")))
        .build()
        .expect("service");
    let app = instance_of(&server, &v1).await;
    let loaded = app.runtime.load(&note()).await.expect("load");
    assert_eq!(
        NoteV1(History::new).state_json(&loaded.state),
        json!(["a", "b"])
    );
}

#[tokio::test]
async fn old_events_are_upcast_into_the_same_state_and_new_ones_follow() {
    let server = NatsServer::start();
    old_history(&server).await;
    let v2 = Service::builder()
        .aggregate(NoteV2)
        .build()
        .expect("service");
    let app = instance_of(&server, &v2).await;
    let n = note();
    assert_eq!(
        NoteV2.state_json(&app.runtime.load(&n).await.expect("load").state),
        json!(["a", "b"])
    );
    // version 2 writes its own shape after the old ones, and a cold load reads both
    send(&app, &n, cmd("write", json!({"text": "c"}))).await;
    let cold = instance_of(&server, &v2).await;
    let stored = cold.runtime.store().read(&n, 1).await.expect("read");
    let types: Vec<&str> = stored.iter().map(|s| s.event.event_type.as_str()).collect();
    assert_eq!(types, ["noted", "retracted", "noted", "noted_v2"]);
    assert_eq!(
        stored[3].event.payload,
        json!({"body": "c", "author": "unknown"})
    );
    assert_eq!(
        NoteV2.state_json(&cold.runtime.load(&n).await.expect("load").state),
        json!(["a", "b", "c"])
    );
}
