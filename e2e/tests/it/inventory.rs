//! The inventory example (`examples/inventory`) beside account in one stack (`INVENTORY=1`),
//! driven only through the same gateway: commands, a conflict, an idempotent retry and
//! read-your-writes on both of its views, and the gateway's routing by aggregate type and view.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Stack, Topology};

/// An HTTP client for the gateway with a tenant's token; each request carries a fresh
/// `X-Request-Id`, returned with the answer, to find which instance served it.
struct Client {
    http: reqwest::Client,
    gateway: String,
    auth: String,
}

impl Client {
    fn new(stack: &Stack, token: &str) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client"),
            gateway: stack.gateway.clone(),
            auth: format!("Bearer {token}"),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value, String) {
        let id = format!("inv-{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}{path}", self.gateway);
        let mut req = match method {
            "POST" => self.http.post(url),
            _ => self.http.get(url),
        }
        .header("authorization", &self.auth)
        .header("x-request-id", &id);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, id)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value, String) {
        self.send("GET", path, None).await
    }

    /// A view's document or list (`view[/key]`) of tenant `acme` once the view has applied
    /// `position` (read-your-writes).
    async fn view(&self, path: &str, position: u64) -> (StatusCode, Value, String) {
        self.get(&format!(
            "/v1/tenants/acme/views/{path}?min_position={position}"
        ))
        .await
    }

    /// `POST` a command to `type`/`id` of tenant `acme`.
    async fn command(&self, ty: &str, id: &str, body: &Value) -> (StatusCode, Value, String) {
        self.send(
            "POST",
            &format!("/v1/tenants/acme/aggregates/{ty}/{id}/commands"),
            Some(body),
        )
        .await
    }

    /// A command that must be accepted: its outcome.
    async fn accepted(&self, ty: &str, id: &str, body: Value) -> Value {
        let (status, outcome, _) = self.command(ty, id, &body).await;
        assert_eq!(status, 200, "{ty}/{id} {body}: {outcome}");
        outcome
    }
}

fn position(outcome: &Value) -> u64 {
    outcome["position"].as_u64().expect("a position")
}

/// The instances (of `names`) whose log has the request id `id`, once one has it.
async fn served_by(stack: &Stack, names: &[&str], id: &str) -> Vec<String> {
    testkit::eventually(
        format!("a log line with request id {id}"),
        Duration::from_secs(10),
        async || {
            let found: Vec<String> = names
                .iter()
                .filter(|n| stack.log(n).contains(id))
                .map(|n| (*n).to_owned())
                .collect();
            if found.is_empty() {
                Err("none yet")
            } else {
                Ok(found)
            }
        },
    )
    .await
}

const ACCOUNT_SIDE: [&str; 4] = ["aggregate-1", "aggregate-2", "projection-1", "projection-2"];
const INVENTORY_SIDE: [&str; 4] = [
    "inventory-aggregate-1",
    "inventory-aggregate-2",
    "inventory-projection-1",
    "inventory-projection-2",
];

/// Asserts that the request `id` was served by an instance of `side` and by none of the
/// other domain's.
async fn assert_served_by(stack: &Stack, side: &[&str; 4], id: &str, what: &str) {
    let all: Vec<&str> = ACCOUNT_SIDE
        .iter()
        .chain(&INVENTORY_SIDE)
        .copied()
        .collect();
    let found = served_by(stack, &all, id).await;
    assert!(
        found.iter().all(|n| side.contains(&n.as_str())),
        "{what} was served by {found:?}, not by one of {side:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_example_runs_beside_account_behind_the_same_gateway() {
    let stack = Stack::up_with_inventory(Topology::Single);
    let c = Client::new(&stack, &Stack::token(&["acme"]));

    // a command, and its idempotent retry (the same command_id and body): the original
    // outcome, nothing appended
    let add = json!({
        "command_id": uuid::Uuid::new_v4().to_string(),
        "type": "add",
        "payload": {"title": "Bolt", "quantity": 10},
    });
    let (status, first, id) = c.command("item", "bolt", &add).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["version"], 1, "{first}");
    assert_served_by(&stack, &INVENTORY_SIDE, &id, "an item command").await;
    let mut bolt = vec![id];
    for _ in 0..2 {
        let (status, again, id) = c.command("item", "bolt", &add).await;
        assert_eq!((status, &again), (StatusCode::OK, &first));
        bolt.push(id);
    }
    let (status, state, id) = c.get("/v1/tenants/acme/aggregates/item/bolt").await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["version"], 1, "the retries appended: {state}");
    bolt.push(id);
    // one item's requests go to one instance (hashed on tenant/type/id, as account's)
    let mut instances = Vec::new();
    for id in &bolt {
        instances.extend(served_by(&stack, &INVENTORY_SIDE[..2], id).await);
    }
    instances.dedup();
    assert_eq!(instances.len(), 1, "bolt's requests went to {instances:?}");

    // a stale expected_version: 409 version-conflict, nothing appended
    let (status, problem, _) = c
        .command(
            "item",
            "bolt",
            &json!({"type": "restock", "payload": {"quantity": 5}, "expected_version": 0}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(
        problem["type"], "urn:nats-es:problem:version-conflict",
        "{problem}"
    );

    // two events from one command, read back from the item-stock view (read-your-writes)
    c.accepted(
        "item",
        "bolt",
        json!({"type": "reserve", "payload": {
            "reservation_id": "r1", "quantity": 4, "expires_at": 1_000, "now": 100,
        }}),
    )
    .await;
    let shipped = c
        .accepted(
            "item",
            "bolt",
            json!({"type": "ship", "payload": {"reservation_id": "r1", "now": 500}, "expected_version": 2}),
        )
        .await;
    assert_eq!(shipped["version"], 4, "{shipped}");
    let (status, doc, id) = c.view("item-stock/bolt", position(&shipped)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        doc["document"],
        json!({"title": "Bolt", "unit": "piece", "on_hand": 6, "reserved": 0, "available": 6})
    );
    assert_served_by(&stack, &INVENTORY_SIDE, &id, "an item-stock read").await;

    // the low-stock list and one of its documents, read-your-writes
    let nut = c
        .accepted(
            "item",
            "nut",
            json!({"type": "add", "payload": {"title": "Nut", "quantity": 3}}),
        )
        .await;
    let (status, page, id) = c.view("low-stock", position(&nut)).await;
    assert_eq!(status, 200, "{page}");
    let keys: Vec<&str> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|d| d["key"].as_str())
        .collect();
    assert_eq!(keys, ["nut"], "{page}");
    assert_served_by(&stack, &INVENTORY_SIDE, &id, "a low-stock list").await;
    let (status, low, _) = c.view("low-stock/nut", position(&nut)).await;
    assert_eq!(status, 200, "{low}");
    assert_eq!(
        low["document"],
        json!({"on_hand": 3, "reserved": 0, "available": 3})
    );

    // account beside it, unchanged: its type and views still go to its own services
    c.accepted(
        "account",
        "inv-acc",
        json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}),
    )
    .await;
    let deposit = c
        .accepted(
            "account",
            "inv-acc",
            json!({"type": "deposit", "payload": {"amount": 70}}),
        )
        .await;
    let (status, view, id) = c.view("accounts/inv-acc", position(&deposit)).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["document"]["balance"], 70, "{view}");
    assert_served_by(&stack, &ACCOUNT_SIDE, &id, "an accounts read").await;
    let (status, _, id) = c.get("/v1/tenants/acme/aggregates/account/inv-acc").await;
    assert_eq!(status, 200);
    assert_served_by(&stack, &ACCOUNT_SIDE, &id, "an account read").await;
    // a type no domain has: account's service answers, as without the example
    let (status, problem, _) = c.get("/v1/tenants/acme/aggregates/widget/w-1").await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        problem["type"], "urn:nats-es:problem:unknown-aggregate-type",
        "{problem}"
    );

    // the tenant feed (on aggregate) carries every type's events
    let (status, feed, id) = c.get("/v1/tenants/acme/events?types=item").await;
    assert_eq!(status, 200, "{feed}");
    assert_served_by(&stack, &ACCOUNT_SIDE, &id, "the tenant feed").await;
    let feed = feed.as_str().expect("an event stream");
    let items = feed.matches("\"aggregate_type\":\"item\"").count();
    assert_eq!(
        items, 5,
        "bolt's added, reserved, released, shipped and nut's added: {feed}"
    );
    assert!(!feed.contains("\"aggregate_type\":\"account\""), "{feed}");

    // the admin routes of a view go to the service that runs it; account's views skipped
    // the item events rather than parking them
    let admin = Client::new(&stack, &Stack::admin_token());
    let (status, parked, id) = admin.get("/v1/admin/views/item-stock/parked").await;
    assert_eq!(status, 200, "{parked}");
    assert_eq!(parked["parked"], json!([]), "{parked}");
    assert_served_by(&stack, &INVENTORY_SIDE, &id, "item-stock's parked events").await;
    let (status, views, _) = admin.get("/v1/admin/views").await;
    assert_eq!(status, 200, "{views}");
    for view in views["views"].as_array().expect("views") {
        assert_eq!(view["parked"], 0, "{view}");
    }

    // the OpenAPI document of each domain's write side at its own path
    for (path, own, other) in [
        (
            "/aggregate/openapi.json",
            "Commands.account",
            "Commands.item",
        ),
        (
            "/inventory-aggregate/openapi.json",
            "Commands.item",
            "Commands.account",
        ),
    ] {
        let (status, doc, _) = c.get(path).await;
        assert_eq!(status, 200, "{path}");
        let schemas = &doc["components"]["schemas"];
        assert!(schemas.get(own).is_some(), "{path} lacks {own}");
        assert!(schemas.get(other).is_none(), "{path} has {other}");
    }
    let (status, doc, id) = c.get("/inventory-projection/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["info"]["title"], "projection", "{doc}");
    assert_served_by(
        &stack,
        &INVENTORY_SIDE,
        &id,
        "the example's read-side document",
    )
    .await;

    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}
