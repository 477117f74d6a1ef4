//! A real server, the example's two services on it (built by `inventory::aggregates` and
//! `inventory::views`), and their routers, every response checked against the services'
//! OpenAPI documents.

use platform::auth::Authenticator;
use serde_json::{Value, json};
use testkit::NatsServer;
use testkit::openapi::CheckedApi;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The two services of the example on one server.
pub(crate) struct Stack {
    _server: NatsServer,
    pub(crate) write: CheckedApi,
    pub(crate) read: CheckedApi,
    pub(crate) aggregate: aggregate::App,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn flags(server: &NatsServer) -> Vec<&'static str> {
    vec![
        "--nats-url",
        leak(server.url()),
        "--insecure-no-auth",
        "--instance-id",
        "test",
    ]
}

impl Stack {
    /// A server and both services on it.
    pub(crate) async fn start() -> Self {
        let server = NatsServer::start();
        let write_config = aggregate::Config::parse_from_args(&flags(&server));
        let aggregate = inventory::aggregates()
            .build()
            .expect("the item aggregate")
            .start(&write_config)
            .await
            .expect("start aggregate");
        let write = CheckedApi::new(aggregate::app(
            &aggregate,
            Authenticator::disabled(),
            write_config.service.http(),
        ))
        .await;
        let read_config = projection::Config::parse_from_args(&flags(&server));
        let mut projection = inventory::views()
            .build()
            .expect("the item views")
            .start(&read_config)
            .await
            .expect("start projection");
        let read = CheckedApi::new(projection::app(
            &projection,
            Authenticator::disabled(),
            read_config.service.http(),
        ))
        .await;
        let shutdown = CancellationToken::new();
        let tasks = projection.spawn_projectors(&shutdown);
        Stack {
            _server: server,
            write,
            read,
            aggregate,
            shutdown,
            tasks,
        }
    }

    /// Stops the consumer loops (then the server).
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.expect("projector task");
        }
    }

    /// `POST` a command to item `id` of tenant `acme`; `extra` is merged into the body
    /// (`command_id`, `expected_version`).
    pub(crate) async fn command(&self, id: &str, command: Value, extra: Value) -> (u16, Value) {
        let mut body = command;
        if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
            body.extend(extra);
        }
        self.write
            .call(
                "POST",
                &format!("/v1/tenants/acme/aggregates/item/{id}/commands"),
                None,
                Some(&body.to_string()),
            )
            .await
    }

    /// A command that must be accepted; returns its outcome.
    pub(crate) async fn accepted(&self, id: &str, command: Value) -> Value {
        let (status, outcome) = self.command(id, command, json!({})).await;
        assert_eq!(status, 200, "{outcome}");
        outcome
    }

    /// The state of item `id`.
    pub(crate) async fn state(&self, id: &str) -> Value {
        let (status, body) = self
            .write
            .call(
                "GET",
                &format!("/v1/tenants/acme/aggregates/item/{id}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["state"].clone()
    }

    /// A document of a view once the view has applied `position` (read-your-writes).
    pub(crate) async fn document(&self, view: &str, key: &str, position: u64) -> (u16, Value) {
        self.read
            .call(
                "GET",
                &format!("/v1/tenants/acme/views/{view}/{key}?min_position={position}"),
                None,
                None,
            )
            .await
    }

    /// The keys of the tenant's documents of a view once it has applied `position`.
    pub(crate) async fn keys(&self, view: &str, position: u64) -> Vec<String> {
        let (status, page) = self
            .read
            .call(
                "GET",
                &format!("/v1/tenants/acme/views/{view}?min_position={position}"),
                None,
                None,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        page["items"]
            .as_array()
            .map(|docs| {
                docs.iter()
                    .filter_map(|d| d["key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub(crate) fn add(title: &str, quantity: u64) -> Value {
    json!({"type": "add", "payload": {"title": title, "quantity": quantity}})
}

pub(crate) fn reserve(id: &str, quantity: u64, expires_at: u64, now: u64) -> Value {
    json!({"type": "reserve", "payload": {
        "reservation_id": id, "quantity": quantity, "expires_at": expires_at, "now": now,
    }})
}

pub(crate) fn ship(id: &str, now: u64) -> Value {
    json!({"type": "ship", "payload": {"reservation_id": id, "now": now}})
}

pub(crate) fn position(outcome: &Value) -> u64 {
    outcome["position"].as_u64().expect("a position")
}
