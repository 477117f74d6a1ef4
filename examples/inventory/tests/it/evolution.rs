//! The golden fixture: an `item_added` event as version 1 of the example stored it
//! (`tests/fixtures/item_added_v1.json`, never to be edited) folds into the same state and
//! view documents as the current `item_added_v2` of the same item.

use serde_json::{Value, json};

use crate::support::*;

const ITEM_ADDED_V1: &str = include_str!("../fixtures/item_added_v1.json");

/// Publishes the fixture as the first event of `old-bolt`, the way version 1 appended it.
async fn publish_fixture(stack: &Stack) -> u64 {
    let event: Value = serde_json::from_str(ITEM_ADDED_V1).expect("the fixture is JSON");
    assert_eq!(
        event["event_type"], "item_added",
        "the fixture is the old shape"
    );
    let js = async_nats::jetstream::new(stack.aggregate.core.client.clone());
    js.publish(
        "tenant.acme.aggregate.item.old-bolt",
        ITEM_ADDED_V1.as_bytes().to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack")
    .sequence
}

/// The item-stock document of `id` and whether `low-stock` lists it, at `position`.
async fn documents(stack: &Stack, id: &str, position: u64) -> (Value, bool) {
    let (status, doc) = stack.document("item-stock", id, position).await;
    assert_eq!(status, 200, "{doc}");
    let low = stack
        .keys("low-stock", position)
        .await
        .contains(&id.to_owned());
    (doc["document"].clone(), low)
}

#[tokio::test]
async fn an_old_item_added_folds_into_the_same_state_and_views_as_the_new_shape() {
    let s = Stack::start().await;
    let old = publish_fixture(&s).await;
    let new = s.accepted("new-bolt", add("Bolt", 10)).await;
    assert_eq!(new["events"][0]["event_type"], "item_added_v2");
    assert_eq!(
        new["events"][0]["payload"],
        json!({"title": "Bolt", "quantity": 10, "unit": "piece"})
    );
    let at = position(&new).max(old);
    assert_eq!(s.state("old-bolt").await, s.state("new-bolt").await);
    let (old_doc, old_low) = documents(&s, "old-bolt", at).await;
    assert_eq!(
        (old_doc.clone(), old_low),
        documents(&s, "new-bolt", at).await
    );
    assert_eq!(old_doc["title"], "Bolt");

    // both go on the same way: the old history is read through the upcaster every time
    let mut last = 0;
    for id in ["old-bolt", "new-bolt"] {
        s.accepted(id, reserve("r1", 7, 1_000, 10)).await;
        last = position(&s.accepted(id, ship("r1", 20)).await);
    }
    assert_eq!(s.state("old-bolt").await, s.state("new-bolt").await);
    let (old_doc, old_low) = documents(&s, "old-bolt", last).await;
    assert_eq!(
        (old_doc.clone(), old_low),
        documents(&s, "new-bolt", last).await
    );
    assert_eq!((old_doc["available"].as_u64(), old_low), (Some(3), true));

    // the stored event itself is never rewritten
    let (status, events) = s
        .write
        .call(
            "GET",
            "/v1/tenants/acme/aggregates/item/old-bolt/events",
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["events"][0]["event"]["event_type"], "item_added");
    assert_eq!(
        events["events"][0]["event"]["payload"],
        json!({"name": "Bolt", "quantity": 10})
    );
    s.stop().await;
}
