//! Messages published straight to aggregate subjects by a client that is not our service:
//! projection parks them and keeps going, aggregate refuses to load that history (500
//! corrupt-history naming the sequence), everything else keeps working, no tenant leaks.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

fn event(tenant: &str, id: &str, version: u64, event_type: &str, payload: Value) -> Vec<u8> {
    json!({
        "event_id": uuid::Uuid::now_v7(),
        "command_id": uuid::Uuid::new_v4(),
        "tenant_id": tenant,
        "aggregate_type": "account",
        "aggregate_id": id,
        "version": version,
        "event_type": event_type,
        "payload": payload,
        "occurred_at": "2025-01-01T00:00:00Z",
    })
    .to_string()
    .into_bytes()
}

struct Api<'a> {
    stack: &'a Stack,
    gw: String,
    acme: String,
    evil: String,
    admin: String,
}

impl Api<'_> {
    async fn call(
        &self,
        method: &str,
        target: &str,
        auth: &str,
        body: Option<&Value>,
    ) -> RawResponse {
        let bearer = format!("Bearer {auth}");
        let body = body.map(Value::to_string);
        raw_request(
            &self.gw,
            method,
            target,
            &[
                ("Authorization", bearer.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_deref().map(str::as_bytes),
        )
        .await
    }

    async fn command(&self, id: &str, body: Value) -> Value {
        let r = self
            .call(
                "POST",
                &format!("/v1/tenants/acme/aggregates/account/{id}/commands"),
                &self.acme,
                Some(&body),
            )
            .await;
        assert_eq!(r.status, 200, "command on {id}: {:?}", r.json());
        r.json()
    }

    /// Reads a view document once the view has applied `position` (the server waits up to
    /// 5 s per call and answers 503 position-not-reached; bounded to 60 s in all).
    async fn view_at(&self, id: &str, position: u64) -> Value {
        let started = Instant::now();
        loop {
            let r = self
                .call(
                    "GET",
                    &format!("/v1/tenants/acme/views/accounts/{id}?min_position={position}"),
                    &self.acme,
                    None,
                )
                .await;
            if r.status == 200 {
                return r.json();
            }
            assert!(
                r.status == 503 && r.slug() == "position-not-reached",
                "view read of {id}: {} {:?}",
                r.status,
                r.json()
            );
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the view did not reach position {position} within 60 s: {:?}\n{}",
                r.json(),
                self.stack.warnings()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_parked_and_refused_without_stopping_anything() {
    let stack = Stack::up(Topology::Single);
    let tap = Wiretap::start(&stack.nats_urls[0]).await;
    let api = Api {
        stack: &stack,
        gw: stack.gateway_addr().to_owned(),
        acme: token(&["acme"]),
        evil: token(&["evil"]),
        admin: admin_token(),
    };
    let js = async_nats::jetstream::new(tap.client().clone());
    let run = uuid::Uuid::new_v4().simple().to_string();
    let id = |what: &str| format!("{what}-{}", &run[..12]);
    let subject = |id: &str| format!("tenant.acme.aggregate.account.{id}");
    let publish = |subject: String, body: Vec<u8>| {
        let js = js.clone();
        async move {
            js.publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence
        }
    };
    let open = json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}});
    let max_payload = tap.client().server_info().max_payload;

    // the forged version and the foreign tenant follow a real first event
    let (forged, foreign) = (id("forged"), id("foreign"));
    api.command(&forged, open.clone()).await;
    api.command(&foreign, open.clone()).await;

    let mut poison = Vec::new();
    let garbage = id("garbage");
    poison.push((
        garbage.clone(),
        publish(subject(&garbage), b"\x00\xff\xfenot json at all".to_vec()).await,
        "garbage bytes",
    ));
    let shape = id("shape");
    poison.push((
        shape.clone(),
        publish(
            subject(&shape),
            json!({"tenant_id": 42, "aggregate_id": ["x"], "payload": null, "hello": "world"})
                .to_string()
                .into_bytes(),
        )
        .await,
        "valid JSON of the wrong shape",
    ));
    let huge = id("huge");
    let pad = "x".repeat(max_payload - 4096);
    poison.push((
        huge.clone(),
        publish(subject(&huge), json!({"pad": pad}).to_string().into_bytes()).await,
        "a payload near max_payload",
    ));
    poison.push((
        forged.clone(),
        publish(
            subject(&forged),
            event(
                "acme",
                &forged,
                7,
                "deposited",
                json!({"amount": 1_000_000}),
            ),
        )
        .await,
        "a forged version (7 after 1)",
    ));
    poison.push((
        foreign.clone(),
        publish(
            subject(&foreign),
            event("evil", &foreign, 2, "deposited", json!({"amount": 666})),
        )
        .await,
        "a body naming another tenant than its subject",
    ));

    // other aggregates keep flowing, through both services
    let healthy = id("healthy");
    api.command(&healthy, open.clone()).await;
    let dep = api
        .command(
            &healthy,
            json!({"type": "deposit", "payload": {"amount": 42}}),
        )
        .await;
    let position = dep["position"].as_u64().expect("position");
    assert!(poison.iter().all(|(_, seq, _)| *seq < position));
    let doc = api.view_at(&healthy, position).await;
    assert_eq!(doc["document"]["balance"], 42, "{doc}");

    // the view stops at the last good event of each poisoned aggregate
    for agg in [&forged, &foreign] {
        let doc = api.view_at(agg, 1).await;
        assert_eq!(doc["document"]["version"], 1, "{agg}: {doc}");
        assert_eq!(doc["document"]["balance"], 0, "{agg}: {doc}");
    }
    // no document of the tenant the forged body names
    let r = api
        .call(
            "GET",
            &format!("/v1/tenants/evil/views/accounts/{foreign}"),
            &api.evil,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.slug().as_str()),
        (404, "not-found"),
        "{:?}",
        r.json()
    );
    let r = api
        .call("GET", "/v1/tenants/evil/views/accounts", &api.evil, None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["items"], json!([]), "tenant evil sees documents");

    // every poison message is in the parked list
    let r = api
        .call("GET", "/v1/admin/views/accounts/parked", &api.admin, None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let parked: BTreeSet<u64> = r.json()["parked"]
        .as_array()
        .expect("parked list")
        .iter()
        .filter_map(|p| p["seq"].as_u64())
        .collect();
    for (agg, seq, what) in &poison {
        assert!(
            parked.contains(seq),
            "{what} (seq {seq} on {agg}) is not parked: {parked:?}"
        );
    }

    // aggregate refuses each poisoned history, naming the sequence, on every route
    for (agg, seq, what) in &poison {
        for (method, suffix, body) in [
            ("GET", "", None),
            ("GET", "/events", None),
            (
                "POST",
                "/commands",
                Some(json!({"type": "deposit", "payload": {"amount": 1}})),
            ),
        ] {
            let r = api
                .call(
                    method,
                    &format!("/v1/tenants/acme/aggregates/account/{agg}{suffix}"),
                    &api.acme,
                    body.as_ref(),
                )
                .await;
            let b = r.json();
            assert!(
                r.is_problem() && r.status == 500 && r.slug() == "corrupt-history",
                "{what}: {method} {agg}{suffix} -> {} {b}",
                r.status
            );
            let detail = b["detail"].as_str().unwrap_or("");
            assert!(
                detail.contains(&format!("sequence {seq} ")),
                "{what}: the detail does not name sequence {seq}: {detail}"
            );
        }
    }
    // and still works for the healthy one
    let r = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/aggregates/account/{healthy}"),
            &api.acme,
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"]["balance"], 42);

    // the only event subjects on the wire are the ones addressed above
    let legit: BTreeSet<String> = [&forged, &foreign, &garbage, &shape, &huge, &healthy]
        .into_iter()
        .map(|i| subject(i))
        .collect();
    let (_, foreign_subjects) = tap.foreign(&legit).await;
    assert!(foreign_subjects.is_empty(), "{foreign_subjects:?}");
    let panics = stack.panics();
    assert!(panics.is_empty(), "{panics:?}");
}
