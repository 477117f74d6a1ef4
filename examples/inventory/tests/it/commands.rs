//! Commands through the write side and their documents on the read side.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn reservations_expire_ship_appends_two_events_and_both_views_read_their_writes() {
    let s = Stack::start().await;
    s.accepted("bolt", add("Bolt", 10)).await;
    let nut = s.accepted("nut", add("Nut", 3)).await;
    // a new item with 3 units is low at once; one with 10 is not
    assert_eq!(s.keys("low-stock", position(&nut)).await, ["nut"]);

    s.accepted("bolt", reserve("r1", 4, 1_000, 100)).await;
    let shipped = s.accepted("bolt", ship("r1", 500)).await;
    let types: Vec<&str> = shipped["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert_eq!(types, ["released", "shipped"], "{shipped}");
    assert_eq!(shipped["version"], 4, "{shipped}");
    let (status, doc) = s.document("item-stock", "bolt", position(&shipped)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        doc["document"],
        json!({"title": "Bolt", "unit": "piece", "on_hand": 6, "reserved": 0, "available": 6})
    );

    // two more reserved: 4 available, so bolt is low too
    let r2 = s.accepted("bolt", reserve("r2", 2, 2_000, 600)).await;
    assert_eq!(s.keys("low-stock", position(&r2)).await, ["bolt", "nut"]);
    let (status, low) = s.document("low-stock", "bolt", position(&r2)).await;
    assert_eq!(status, 200, "{low}");
    assert_eq!(
        low["document"],
        json!({"on_hand": 6, "reserved": 2, "available": 4})
    );

    // refused by the domain: more than available, an expired reservation
    let (status, problem) = s
        .command("bolt", reserve("r3", 5, 3_000, 700), json!({}))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("urn:nats-es:problem:insufficient-stock")),
        "{problem}"
    );
    let (status, problem) = s.command("bolt", ship("r2", 2_000), json!({})).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("urn:nats-es:problem:reservation-expired")),
        "{problem}"
    );
    // at 2 000 r2 has expired: a reservation releases it first, in the same append
    let r3 = s.accepted("bolt", reserve("r3", 5, 3_000, 2_000)).await;
    assert_eq!(r3["events"][0]["event_type"], "released", "{r3}");
    assert_eq!(r3["events"][0]["payload"]["reservation_id"], "r2", "{r3}");
    assert_eq!(
        s.state("bolt").await["reservations"],
        json!({"r3": {"quantity": 5, "expires_at": 3_000}})
    );
    let (_, doc) = s.document("item-stock", "bolt", position(&r3)).await;
    assert_eq!(doc["document"]["available"], 1, "{doc}");
    s.stop().await;
}

#[tokio::test]
async fn a_stale_version_conflicts_a_retry_is_idempotent_and_a_bad_payload_names_its_field() {
    let s = Stack::start().await;
    let id = json!({"command_id": "0190f0c8-0000-7000-8000-000000000001"});
    let (status, first) = s.command("bolt", add("Bolt", 10), id.clone()).await;
    assert_eq!(status, 200, "{first}");
    // the same command id and body: the original outcome, nothing appended
    let (status, again) = s.command("bolt", add("Bolt", 10), id.clone()).await;
    assert_eq!((status, &again), (200, &first));
    // the same id with another body is refused
    let (status, problem) = s.command("bolt", add("Bolt", 11), id).await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (409, Some("urn:nats-es:problem:command-id-reused")),
        "{problem}"
    );
    let restock = json!({"type": "restock", "payload": {"quantity": 5}});
    let (status, problem) = s
        .command("bolt", restock.clone(), json!({"expected_version": 0}))
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (409, Some("urn:nats-es:problem:version-conflict")),
        "{problem}"
    );
    let (status, restocked) = s
        .command("bolt", restock, json!({"expected_version": 1}))
        .await;
    assert_eq!(status, 200, "{restocked}");
    assert_eq!(restocked["version"], 2);
    assert_eq!(s.state("bolt").await["on_hand"], 15);

    let (status, problem) = s
        .command(
            "bolt",
            json!({"type": "reserve", "payload": {
                "reservation_id": "r1", "quantity": "many", "expires_at": 10, "now": 1,
            }}),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("urn:nats-es:problem:invalid-payload")),
        "{problem}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("payload.quantity: invalid type"),
        "{detail}"
    );
    s.stop().await;
}

/// The service's OpenAPI document describes each `item` command with its payload's fields
/// (`Commands.item`, from the command enum's derived schema): the bodies this example sends
/// conform, a payload with a missing or mistyped field does not.
#[test]
fn the_openapi_document_describes_each_item_command_payload() {
    let doc = serde_json::to_value(
        inventory::aggregates()
            .build()
            .expect("the example's service")
            .openapi(),
    )
    .expect("json");
    let api = testkit::openapi::Conformance::new(doc);
    for body in [
        add("Bolt", 3),
        json!({"type": "add", "payload": {"title": "Oil", "quantity": 2, "unit": "litre"}}),
        json!({"type": "restock", "payload": {"quantity": 5}}),
        reserve("r1", 4, 1_000, 100),
        json!({"type": "release", "payload": {"reservation_id": "r1"}}),
        ship("r1", 500),
    ] {
        api.check_component("Commands.item", &body)
            .unwrap_or_else(|e| panic!("{body} refused:\n{e}"));
    }
    for body in [
        json!({"type": "reserve", "payload": {"reservation_id": "r1", "quantity": 1, "expires_at": 9}}),
        json!({"type": "restock", "payload": {"quantity": "five"}}),
        json!({"type": "restock", "payload": {"quantity": -1}}),
        json!({"type": "restock", "payload": {"quantity": 1, "extra": true}}),
        json!({"type": "sell", "payload": {}}),
    ] {
        assert!(
            api.check_component("Commands.item", &body).is_err(),
            "{body} accepted"
        );
    }
}
