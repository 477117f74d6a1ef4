//! Take-over and retries without the consumer's redelivery back-off: a batch stays with the
//! instance applying it (progress acks), storage failures are retried in place, transiently
//! parked events are released in the background, in order.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use projection::store::{ParkMark, ParkedRecord, doc_mark_key, park_mark_key, parked_msg_key};
use projection::view::{EventSpec, Fold, View, ViewError};
use serde_json::{Value, json};
use shared::{EventEnvelope, ViewName};
use testkit::NatsServer;

use crate::support::*;

/// `accounts`, slowly: 40 ms per event, so a batch of 100 takes 4 s, longer than the 1 s
/// ack_wait of the test.
struct Slow;

impl View for Slow {
    fn name(&self) -> ViewName {
        "slow".parse().expect("name")
    }
    fn version(&self) -> u32 {
        1
    }
    fn events(&self) -> Vec<EventSpec> {
        projection::views::account_events()
    }
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        projection::views::Accounts.key(env)
    }
    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        std::thread::sleep(Duration::from_millis(40));
        projection::views::Accounts.apply(doc, env)
    }
}

/// Waits until the view has no parked event left.
async fn no_parked(p: &Instance) {
    testkit::eventually(
        "no parked event left",
        Duration::from_secs(10),
        async || {
            let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
            if body["parked"] == json!([]) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
}

async fn consumer_redelivered(client: &async_nats::Client, durable: &str) -> usize {
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    stream
        .consumer_info(durable)
        .await
        .expect("consumer info")
        .num_redelivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_slower_than_ack_wait_is_not_redelivered_while_it_is_applied() {
    let server = NatsServer::start();
    // the stream and the events first, so that they arrive as one large batch
    let boot = projection_with(&server, &[], vec![]).await;
    let client = boot.app.core.client.clone();
    boot.stop().await;
    let mut last = 0;
    for i in 0..100 {
        let id = format!("s{i}");
        last = publish_raw(
            &client,
            &format!("tenant.acme.aggregate.account.{id}"),
            envelope(
                "acme",
                &id,
                Some(1),
                "opened",
                json!({"owner": "O", "currency": "EUR"}),
            ),
        )
        .await;
    }
    let p = projection_with(&server, &["--ack-wait-ms", "1000"], vec![Arc::new(Slow)]).await;
    p.caught_up("slow", last, Duration::from_secs(60)).await;
    assert_eq!(
        consumer_redelivered(&client, "view-slow-v1").await,
        0,
        "the server redelivered events while the instance was applying them"
    );
    assert_eq!(p.counter("events_duplicate", "slow"), 0);
    assert_eq!(p.counter("events_applied", "slow"), 100);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_storage_outage_everything_applies_in_order_without_a_redelivery() {
    let server = NatsServer::start();
    // a redelivery would take a minute: nothing here may wait for one
    let p = projection_with(
        &server,
        &["--ack-wait-ms", "60000"],
        vec![Arc::new(projection::views::Accounts)],
    )
    .await;
    let c = p.app.core.client.clone();
    let open = |id: &str| {
        envelope(
            "acme",
            id,
            Some(1),
            "opened",
            json!({"owner": "A", "currency": "EUR"}),
        )
    };
    let deposit = |id: &str, version: u64, amount: i64| {
        envelope(
            "acme",
            id,
            Some(version),
            "deposited",
            json!({"amount": amount}),
        )
    };
    let first = publish_raw(&c, "tenant.acme.aggregate.account.o1", open("o1")).await;
    p.caught_up("accounts", first, Duration::from_secs(30))
        .await;
    // the bucket takes nothing new: every batch fails, as long as it lasts
    let bucket = p.view("accounts").docs.name.clone();
    reconfigure_bucket(&c, &bucket, |c| c.max_bytes = 1).await;
    let stuck = publish_raw(&c, "tenant.acme.aggregate.account.o2", open("o2")).await;
    let more = publish_raw(&c, "tenant.acme.aggregate.account.o1", deposit("o1", 2, 5)).await;
    let behind = publish_raw(&c, "tenant.acme.aggregate.account.o2", deposit("o2", 2, 3)).await;
    // read-your-writes never answers a stale document: not reached yet, or held back by a
    // parked event (single writes still pass here, so the batch may have been taken apart)
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/o2?min_position={stuck}"
        ))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["type"] == "urn:nats-es:problem:position-not-reached"
            || body["type"] == "urn:nats-es:problem:document-held",
        "{body}"
    );
    let (_, body) = p.get("/v1/admin/views/accounts/parked").await;
    for r in body["parked"].as_array().expect("list") {
        assert_eq!(
            r["transient"], true,
            "only transient parking for an outage: {body}"
        );
    }

    // storage back: in-place retries or the background retrier apply everything, in order,
    // long before the 60 s redelivery
    reconfigure_bucket(&c, &bucket, |c| c.max_bytes = -1).await;
    p.caught_up("accounts", behind, Duration::from_secs(30))
        .await;
    testkit::eventually(
        "every event applied after the outage",
        Duration::from_secs(45),
        async || {
            let (_, o1) = p.get("/v1/tenants/acme/views/accounts/o1").await;
            let (_, o2) = p.get("/v1/tenants/acme/views/accounts/o2").await;
            if o1["document"]["balance"] == 5 && o2["document"]["balance"] == 3 {
                Ok(())
            } else {
                Err((o1, o2))
            }
        },
    )
    .await;
    assert!(more < behind);
    no_parked(&p).await;
    assert_eq!(consumer_redelivered(&c, "view-accounts-v1").await, 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transiently_parked_events_are_released_in_order_in_the_background() {
    let server = NatsServer::start();
    let boot = projection_with(&server, &[], vec![Arc::new(projection::views::Accounts)]).await;
    let client = boot.app.core.client.clone();
    let parked_bucket = boot.view("accounts").parked.clone();
    boot.stop().await;

    // t1's first event failed transiently before (as an instance that crashed after parking
    // it would leave it); its second arrives later and must wait behind it
    let subject = "tenant.acme.aggregate.account.t1";
    let body = envelope(
        "acme",
        "t1",
        Some(1),
        "opened",
        json!({"owner": "T", "currency": "EUR"}),
    );
    let first = publish_raw(&client, subject, body.clone()).await;
    let holds = vec![
        park_mark_key(&shared::AggregateAddress::parse_subject(subject).expect("subject")),
        doc_mark_key("acme.t1"),
    ];
    let record = ParkedRecord {
        subject: subject.to_owned(),
        seq: first,
        error: "transient failure, retried in the background: timed out".into(),
        body_base64: base64::engine::general_purpose::STANDARD.encode(&body),
        body_len: body.len(),
        body_truncated: false,
        headers: Default::default(),
        aggregate: Some("acme.account.t1".into()),
        parked_at: "2026-01-01T00:00:00Z".into(),
        holds: holds.clone(),
        transient: true,
    };
    parked_bucket
        .put(
            parked_msg_key(first),
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("record");
    for h in &holds {
        let mark = ParkMark {
            first_seq: first,
            last_seq: first,
            transient: true,
        };
        parked_bucket
            .put(h, serde_json::to_vec(&mark).expect("json").into())
            .await
            .expect("mark");
    }
    let second = publish_raw(
        &client,
        subject,
        envelope("acme", "t1", Some(2), "deposited", json!({"amount": 9})),
    )
    .await;
    let p = projection_with(&server, &[], vec![Arc::new(projection::views::Accounts)]).await;
    p.caught_up("accounts", second, Duration::from_secs(30))
        .await;
    // the retrier applies both, in order: a version gap would park the deposit for good
    testkit::eventually("t1 released", Duration::from_secs(30), async || {
        let (_, body) = p.get("/v1/tenants/acme/views/accounts/t1").await;
        if body["document"]["balance"] == 9 {
            Ok(())
        } else {
            Err(body)
        }
    })
    .await;
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/t1").await;
    assert_eq!(body["document"]["version"], 2, "{body}");
    no_parked(&p).await;
    p.stop().await;
}
