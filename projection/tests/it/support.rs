//! Test support: a real server, aggregate instances to write events, projection instances.

use std::sync::Arc;
use std::time::Duration;

use aggregate::runtime::{CommandRequest, Outcome};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use http_body_util::BodyExt;
use projection::view::View;
use serde_json::{Value, json};
use shared::AggregateAddress;
use testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// Fast fail-over settings: a dead instance's pin moves after 1 s, its unacknowledged events
/// redeliver after 2 s.
pub(crate) fn config(server: &NatsServer, extra: &[&str]) -> projection::Config {
    let mut args = vec![
        "projection",
        "--nats-url",
        leak(server.url()),
        "--insecure-no-auth",
        "--instance-id",
        "test",
    ];
    // the test's own timing wins over these defaults
    for (flag, value) in [("--ack-wait-ms", "2000"), ("--priority-timeout-ms", "1000")] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, value]);
        }
    }
    args.extend_from_slice(extra);
    projection::Config::parse_from(args)
}

/// A running projection instance.
pub(crate) struct Instance {
    pub(crate) app: projection::App,
    pub(crate) router: axum::Router,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Instance {
    /// Stops pulling and waits for the batch in flight to be acked.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            t.await.expect("projector task");
        }
    }

    /// Kills the consumer loops wherever they are (no drain, no ack).
    pub(crate) fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    pub(crate) fn counter(&self, name: &str, view: &str) -> u64 {
        counter(&self.app.core.metrics.render(), name, view)
    }

    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
        call(&self.router, "GET", uri).await
    }

    pub(crate) async fn post(&self, uri: &str) -> (StatusCode, Value) {
        call(&self.router, "POST", uri).await
    }

    pub(crate) fn view(&self, name: &str) -> Arc<projection::engine::ViewRuntime> {
        self.app.views.get(name).expect("view").current()
    }

    /// Waits until `view`'s checkpoint reaches `position`.
    pub(crate) async fn caught_up(&self, view: &str, position: u64, within: Duration) {
        let rt = self.view(view);
        testkit::eventually(
            format!("view {view} at position {position}"),
            within,
            async || match rt.checkpoint().await {
                Ok(at) if at >= position => Ok(()),
                other => Err(other),
            },
        )
        .await;
    }
}

pub(crate) async fn projection_with(
    server: &NatsServer,
    extra: &[&str],
    views: Vec<Arc<dyn View>>,
) -> Instance {
    let cfg = config(server, extra);
    let app = projection::start(&cfg, views)
        .await
        .expect("start projection");
    serving(&cfg, app)
}

/// Serves and consumes with a started `app`.
pub(crate) fn serving(cfg: &projection::Config, mut app: projection::App) -> Instance {
    let router = projection::app(
        &app,
        platform::auth::Authenticator::disabled(),
        cfg.service.http(),
    );
    let shutdown = CancellationToken::new();
    let tasks = app.spawn_projectors(&shutdown);
    Instance {
        app,
        router,
        shutdown,
        tasks,
    }
}

pub(crate) async fn projection(server: &NatsServer) -> Instance {
    projection_with(server, &[], projection::default_views()).await
}

/// The value of `projection_<name>_total{view=...}` in an OpenMetrics text.
pub(crate) fn counter(text: &str, name: &str, view: &str) -> u64 {
    let prefix = format!("projection_{name}_total{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&format!("view=\"{view}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

pub(crate) async fn call(router: &axum::Router, method: &str, uri: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    let problem = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/problem+json");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if problem && let Value::Object(m) = &mut body {
        m.insert("_problem".into(), json!(true));
    }
    (status, body)
}

pub(crate) async fn aggregate(server: &NatsServer) -> aggregate::App {
    let cfg = aggregate::Config::parse_from([
        "aggregate",
        "--nats-url",
        leak(server.url()),
        "--insecure-no-auth",
        "--instance-id",
        "test",
    ]);
    aggregate::start(&cfg, aggregate::default_aggregates())
        .await
        .expect("start aggregate")
}

pub(crate) fn account(tenant: &str, id: &str) -> AggregateAddress {
    aggregate::account::Account::address(tenant, id).expect("valid ids")
}

pub(crate) fn cmd(t: &str, payload: Value) -> CommandRequest {
    CommandRequest::new(t, payload)
}

pub(crate) async fn send(
    app: &aggregate::App,
    addr: &AggregateAddress,
    c: CommandRequest,
) -> Outcome {
    app.runtime.handle(addr, c).await.expect("command accepted")
}

pub(crate) async fn open(app: &aggregate::App, addr: &AggregateAddress) -> Outcome {
    send(
        app,
        addr,
        cmd("open", json!({"owner": "Ada", "currency": "EUR"})),
    )
    .await
}

/// Publishes raw bytes on a subject of the events stream; returns the stream sequence.
pub(crate) async fn publish_raw(client: &async_nats::Client, subject: &str, body: Vec<u8>) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    js.publish(subject.to_owned(), body.into())
        .await
        .expect("publish")
        .await
        .expect("stored")
        .sequence
}

/// A minimal envelope body (no ids), as an older producer would write it.
pub(crate) fn envelope(
    tenant: &str,
    id: &str,
    version: Option<u64>,
    event_type: &str,
    payload: Value,
) -> Vec<u8> {
    let mut v = json!({
        "tenant_id": tenant, "aggregate_type": "account", "aggregate_id": id,
        "event_type": event_type, "payload": payload,
        "occurred_at": "2026-01-01T00:00:00Z",
    });
    if let Some(version) = version {
        v["version"] = json!(version);
    }
    serde_json::to_vec(&v).expect("json")
}

/// The events of a poison scenario on accounts `a` and `b` of tenant `acme`: `a` opened, an
/// undecodable event and a deposit of 5 behind it; `b` opened and a deposit of 7. Returns the
/// sequences of the undecodable event, the one behind it and the last.
pub(crate) async fn publish_poison_scenario(
    client: &async_nats::Client,
    a: &str,
    b: &str,
) -> (u64, u64, u64) {
    let open = |id: &str| {
        envelope(
            "acme",
            id,
            Some(1),
            "opened",
            json!({"owner": "A", "currency": "EUR"}),
        )
    };
    let subject = |id: &str| format!("tenant.acme.aggregate.account.{id}");
    publish_raw(client, &subject(a), open(a)).await;
    let garbage = publish_raw(client, &subject(a), b"\x00\xffnot json".to_vec()).await;
    let behind = publish_raw(
        client,
        &subject(a),
        envelope("acme", a, Some(2), "deposited", json!({"amount": 5})),
    )
    .await;
    publish_raw(client, &subject(b), open(b)).await;
    let last = publish_raw(
        client,
        &subject(b),
        envelope("acme", b, Some(2), "deposited", json!({"amount": 7})),
    )
    .await;
    (garbage, behind, last)
}

/// Changes the stream configuration of a view's bucket: a real storage fault (a smaller value
/// limit, a full bucket), undone the same way.
pub(crate) async fn reconfigure_bucket(
    client: &async_nats::Client,
    bucket: &str,
    change: impl FnOnce(&mut async_nats::jetstream::stream::Config),
) {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("bucket stream");
    let mut config = stream.info().await.expect("info").config.clone();
    change(&mut config);
    js.update_stream(config)
        .await
        .expect("update bucket stream");
}
