//! A tenant of any size: no document grows with its accounts.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use serde_json::json;
use testkit::NatsServer;

use crate::support::*;

/// Accounts of the one big tenant (the issue asks for at least 50 000).
const ACCOUNTS: usize = 50_000;

/// Publishes `opened` for accounts `range` of tenant `big`, pipelined; returns the last
/// sequence.
async fn open_accounts(client: &async_nats::Client, range: std::ops::Range<usize>) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    let acks: Vec<u64> = futures::stream::iter(range)
        .map(|i| {
            let js = js.clone();
            async move {
                let id = format!("acc{i:06}");
                let body = envelope(
                    "big",
                    &id,
                    Some(1),
                    "opened",
                    json!({"owner": "O", "currency": if i % 2 == 0 { "EUR" } else { "USD" }}),
                );
                js.publish(format!("tenant.big.aggregate.account.{id}"), body.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("stored")
                    .sequence
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    acks.into_iter().max().unwrap_or(0)
}

async fn summary_size(p: &Instance) -> (usize, serde_json::Value) {
    let rt = p.view("tenant-summary");
    let doc = projection::store::read_doc(&rt.docs, "big.summary")
        .await
        .expect("read")
        .expect("summary exists");
    (serde_json::to_vec(&doc.doc).expect("json").len(), doc.doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_accounts_of_one_tenant_fold_into_a_summary_of_constant_size() {
    let server = NatsServer::start();
    let p = projection_with(
        &server,
        &[],
        vec![Arc::new(projection::views::TenantSummary)],
    )
    .await;
    let client = p.app.core.client.clone();

    let early = open_accounts(&client, 0..100).await;
    p.caught_up("tenant-summary", early, Duration::from_secs(30))
        .await;
    let (small, _) = summary_size(&p).await;

    let last = open_accounts(&client, 100..ACCOUNTS).await;
    let deposit = publish_raw(
        &client,
        "tenant.big.aggregate.account.acc000007",
        envelope(
            "big",
            "acc000007",
            Some(2),
            "deposited",
            json!({"amount": 42}),
        ),
    )
    .await;
    assert!(deposit > last);
    p.caught_up("tenant-summary", deposit, Duration::from_secs(300))
        .await;
    let (large, doc) = summary_size(&p).await;
    assert_eq!(doc["open_accounts"], ACCOUNTS);
    assert_eq!(doc["account_count"], ACCOUNTS);
    assert_eq!(doc["totals"], json!({"EUR": 0, "USD": 42}), "{doc}");
    // only the counters' digits grow: 100 accounts or 50 000, the same document
    assert!(
        large <= small + 8 && large < 512,
        "summary of 100 accounts: {small} bytes, of {ACCOUNTS}: {large} bytes"
    );

    // the per-account state lives under its own keys, served like any document
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/big/views/tenant-summary/account.acc000007?min_position={deposit}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["document"],
        json!({"currency": "USD", "balance": 42, "open": true})
    );
    let (status, body) = p.get("/v1/tenants/big/views/tenant-summary/summary").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["open_accounts"], ACCOUNTS);
    assert_eq!(p.counter("events_parked", "tenant-summary"), 0);
    p.stop().await;
}
