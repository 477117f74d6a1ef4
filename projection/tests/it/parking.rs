//! Poison events: parked, their aggregate waits, others flow; skip and retry from the admin API.

use std::time::Duration;

use serde_json::json;
use testkit::NatsServer;

use crate::support::*;

const P1: &str = "tenant.acme.aggregate.account.p1";
const P2: &str = "tenant.acme.aggregate.account.p2";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_event_parks_its_aggregate_until_skipped_and_retried() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    let c = &p.app.core.client;
    let (garbage, behind, last) = publish_poison_scenario(c, "p1", "p2").await;
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
    let c = &p.app.core.client;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_over_the_bucket_limit_is_parked_at_once_and_holds_back_only_its_documents() {
    let server = NatsServer::start();
    let open = |tenant: &str, id: &str, owner: &str| {
        envelope(
            tenant,
            id,
            Some(1),
            "opened",
            json!({"owner": owner, "currency": "EUR"}),
        )
    };
    let p = projection(&server).await;
    let client = p.app.core.client.clone();
    let first = publish_raw(&client, P2, open("acme", "p2", "B")).await;
    p.caught_up("accounts", first, Duration::from_secs(30))
        .await;
    let bucket = p.view("accounts").docs.name.clone();
    p.stop().await;

    // the bucket takes 512-byte values: p1's document would be far larger
    reconfigure_bucket(&client, &bucket, |c| c.max_message_size = 512).await;
    let big = publish_raw(&client, P1, open("acme", "p1", &"x".repeat(2000))).await;
    let innocent = publish_raw(
        &client,
        P2,
        envelope("acme", "p2", Some(2), "deposited", json!({"amount": 7})),
    )
    .await;
    let behind = publish_raw(
        &client,
        P1,
        envelope("acme", "p1", Some(2), "deposited", json!({"amount": 5})),
    )
    .await;
    let other = publish_raw(
        &client,
        "tenant.globex.aggregate.account.g1",
        open("globex", "g1", "G"),
    )
    .await;
    // max_deliver 10 and a 2 s ack_wait: a redelivery loop would take minutes; parking at
    // once lets the other tenant's read-your-writes answer within its 5 s wait
    let p = projection(&server).await;
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/globex/views/accounts/g1?min_position={other}"
        ))
        .await;
    assert_eq!(status, 200, "another tenant's read-your-writes: {body}");
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/p2?min_position={innocent}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 7, "{body}");

    let (status, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(status, 200);
    let parked = body["parked"].as_array().expect("list").clone();
    let seqs: Vec<u64> = parked.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![big, behind], "{body}");
    let error = parked[0]["error"].as_str().expect("error");
    assert!(
        error.starts_with("document-too-large: acme.p1 would be ")
            && error.ends_with("bytes; the bucket holds at most 256"),
        "{error}"
    );
    assert_eq!(parked[0]["aggregate"], "acme.account.p1");
    assert_eq!(parked[1]["error"], format!("parked behind seq {big}"));
    let (status, _) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(status, 404);
    // read-your-writes on the held document says why instead of answering stale
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/p1?min_position={behind}"
        ))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:nats-es:problem:document-held", "{body}");
    assert_eq!(body["parked_from"], big, "{body}");
    // the other view's documents are small: it applied every event
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/tenant-summary/account.p1?min_position={other}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 5, "{body}");

    // once the bucket takes them, a retry applies both, in order
    reconfigure_bucket(&client, &bucket, |c| c.max_message_size = -1).await;
    let (status, body) = p.post("/v1/admin/views/accounts/parked/retry").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"], 2, "{body}");
    assert_eq!(body["cleared"], json!(["acme.account.p1"]), "{body}");
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/p1").await;
    assert_eq!(body["document"]["owner"].as_str().map(str::len), Some(2000));
    assert_eq!(body["document"]["balance"], 5, "{body}");
    let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(body["parked"], json!([]), "{body}");
    p.stop().await;
}
