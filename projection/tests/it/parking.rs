//! Poison events: parked, their aggregate waits, others flow; skip and retry from the admin API.

use std::time::Duration;

use serde_json::json;
use testkit::NatsServer;

use crate::support::*;

const P1: &str = "tenant.acme.aggregate.account.p1";
const P2: &str = "tenant.acme.aggregate.account.p2";
const P3: &str = "tenant.acme.aggregate.account.p3";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_parks_its_aggregate_until_skipped_and_retried() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    let c = &p.app.client;
    let open = |id: &str| {
        envelope(
            "acme",
            id,
            Some(1),
            "opened",
            json!({"owner": "A", "currency": "EUR"}),
        )
    };
    publish_raw(c, P1, open("p1")).await;
    let garbage = publish_raw(c, P1, b"\x00\xffnot json".to_vec()).await;
    let behind = publish_raw(
        c,
        P1,
        envelope("acme", "p1", Some(2), "deposited", json!({"amount": 5})),
    )
    .await;
    publish_raw(c, P2, open("p2")).await;
    let last = publish_raw(
        c,
        P2,
        envelope("acme", "p2", Some(2), "deposited", json!({"amount": 7})),
    )
    .await;
    p.caught_up("accounts", last, Duration::from_secs(30)).await;

    // other aggregates keep flowing
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p2").await;
    assert_eq!(body["document"]["balance"], 7);
    // p1 waits at its last good event
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(body["document"]["version"], 1);
    assert_eq!(body["document"]["balance"], 0);

    let (status, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(status, 200);
    let parked = body["parked"].as_array().expect("list").clone();
    let seqs: Vec<u64> = parked.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![garbage, behind]);
    assert!(
        parked[0]["error"]
            .as_str()
            .expect("error")
            .contains("not an event envelope")
    );
    assert_eq!(parked[1]["error"], format!("parked behind seq {garbage}"));
    assert_eq!(parked[0]["aggregate"], "acme.account.p1");
    assert_eq!(p.counter("events_parked", "accounts"), 2);

    // retrying with the garbage still there fails and changes nothing
    let (status, body) = p
        .post("/v1/admin/views/accounts/parked/retry?aggregate=acme.account.p1")
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "urn:nats-es:problem:retry-failed");

    // while parked, later events of p1 wait behind
    let later = publish_raw(
        c,
        P1,
        envelope("acme", "p1", Some(3), "deposited", json!({"amount": 10})),
    )
    .await;
    p.caught_up("accounts", later, Duration::from_secs(30))
        .await;
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(body["document"]["version"], 1);

    let (status, _) = p
        .post(&format!("/v1/admin/views/accounts/parked/{garbage}/skip"))
        .await;
    assert_eq!(status, 204);
    let (status, body) = p
        .post(&format!("/v1/admin/views/accounts/parked/{garbage}/skip"))
        .await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = p
        .post("/v1/admin/views/accounts/parked/retry?aggregate=acme.account.p1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], 2);
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(body["document"]["version"], 3);
    assert_eq!(body["document"]["balance"], 15);
    assert_eq!(body["position"], later);
    let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(body["parked"], json!([]));

    // the aggregate flows again
    let after = publish_raw(
        c,
        P1,
        envelope("acme", "p1", Some(4), "withdrawn", json!({"amount": 1})),
    )
    .await;
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/p1?min_position={after}"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["document"]["balance"], 14);
    assert_eq!(body["document"]["version"], 4);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_gap_is_parked_for_accounts() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    let c = &p.app.client;
    publish_raw(
        c,
        P1,
        envelope(
            "acme",
            "p1",
            Some(1),
            "opened",
            json!({"owner": "A", "currency": "EUR"}),
        ),
    )
    .await;
    let gap = publish_raw(
        c,
        P1,
        envelope("acme", "p1", Some(3), "deposited", json!({"amount": 5})),
    )
    .await;
    p.caught_up("accounts", gap, Duration::from_secs(30)).await;
    let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(body["parked"][0]["seq"], gap);
    assert!(
        body["parked"][0]["error"]
            .as_str()
            .expect("error")
            .contains("version gap")
    );
    // the summary has no version rule: it applied the deposit
    p.caught_up("tenant-summary", gap, Duration::from_secs(30))
        .await;
    let (_, body) = p.get("/v1/tenants/acme/views/tenant-summary/summary").await;
    assert_eq!(body["document"]["totals"]["EUR"], 5);
    p.stop().await;
}

/// The view's bucket refuses documents over `max_bytes` from now on: a real storage error,
/// the same on every attempt.
async fn limit_document_size(client: &async_nats::Client, bucket: &str, max_bytes: i32) {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("bucket stream");
    let mut config = stream.info().await.expect("info").config.clone();
    config.max_message_size = max_bytes;
    js.update_stream(config)
        .await
        .expect("update bucket stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_that_keeps_failing_to_store_is_parked_after_max_deliver_and_only_it() {
    let server = NatsServer::start();
    let extra = ["--max-deliver", "3"];
    let open = |id: &str, owner: &str| {
        envelope(
            "acme",
            id,
            Some(1),
            "opened",
            json!({"owner": owner, "currency": "EUR"}),
        )
    };
    let p = projection_with(&server, &extra, projection::default_views()).await;
    let client = p.app.client.clone();
    let first = publish_raw(&client, P2, open("p2", "B")).await;
    p.caught_up("accounts", first, Duration::from_secs(30))
        .await;
    let bucket = p.view("accounts").docs.name.clone();
    p.stop().await;

    limit_document_size(&client, &bucket, 512).await;
    // both arrive in the first batch of the next instance: the big document fails to store on
    // every delivery, the small one would store fine
    let big = publish_raw(&client, P1, open("p1", &"x".repeat(2000))).await;
    let innocent = publish_raw(
        &client,
        P2,
        envelope("acme", "p2", Some(2), "deposited", json!({"amount": 7})),
    )
    .await;
    let p = projection_with(&server, &extra, projection::default_views()).await;
    p.caught_up("accounts", innocent, Duration::from_secs(60))
        .await;

    let (status, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(status, 200);
    let parked = body["parked"].as_array().expect("list").clone();
    let seqs: Vec<u64> = parked.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![big], "only the failing event is parked: {body}");
    let error = parked[0]["error"].as_str().expect("error");
    assert!(
        error.starts_with("retryable failure after 3 deliveries"),
        "{error}"
    );
    assert_eq!(parked[0]["aggregate"], "acme.account.p1");
    // the innocent event of the same batch was applied, not parked
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p2").await;
    assert_eq!(body["document"]["balance"], 7, "{body}");
    let (status, _) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(status, 404);

    // a failing event that ends its batch: once it is parked the view moves past it
    let last_big = publish_raw(&client, P3, open("p3", &"y".repeat(2000))).await;
    let parked_too = eventually(Duration::from_secs(60), || async {
        let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
        body["parked"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["seq"] == last_big))
    })
    .await;
    assert!(parked_too, "seq {last_big} not parked");
    let after = publish_raw(
        &client,
        P2,
        envelope("acme", "p2", Some(3), "withdrawn", json!({"amount": 2})),
    )
    .await;
    p.caught_up("accounts", after, Duration::from_secs(30))
        .await;
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p2").await;
    assert_eq!(body["document"]["balance"], 5, "{body}");

    // once storage accepts them again, a retry applies them
    limit_document_size(&client, &bucket, -1).await;
    let (status, body) = p.post("/v1/admin/views/accounts/parked/retry").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], 2, "{body}");
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(body["document"]["owner"].as_str().map(str::len), Some(2000));
    p.stop().await;
}
