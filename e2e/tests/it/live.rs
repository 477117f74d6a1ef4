//! Live feeds through the gateway: a tenant's subscriber receives exactly the events of 1 000
//! commands, in order, while both aggregate instances are killed and restarted one after the
//! other (reconnecting with `Last-Event-ID`); another tenant's subscriber sees none of them.

use std::collections::BTreeSet;

use serde_json::json;
use testkit::sse::Feed;

use crate::support::{Stack, Topology};

const COMMANDS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_every_event_in_order_across_instance_kills() {
    let stack = tokio::task::block_in_place(|| Stack::up(Topology::Single));
    let gw = stack.gateway.clone();
    let acme = Stack::token(&["acme"]);
    let globex = Stack::token(&["globex"]);
    let feed_url = format!("{gw}/v1/tenants/acme/events?follow=true");

    // the subscriber: reconnects with Last-Event-ID whenever its feed ends
    let subscriber = tokio::spawn({
        let (url, token) = (feed_url.clone(), acme.clone());
        async move {
            let mut positions: Vec<u64> = Vec::new();
            let mut reconnects = 0;
            let mut feed = Feed::start(&url, &token, None).await;
            while positions.len() < COMMANDS {
                match feed.next().await {
                    Some(e) => positions.push(e.data["position"].as_u64().expect("position")),
                    None => {
                        reconnects += 1;
                        let last = positions.last().map(ToString::to_string);
                        // the instance that served it may be gone: the gateway picks another
                        loop {
                            let resp = Feed::open(&url, &token, last.as_deref()).await;
                            if let Some(resumed) = Feed::from_response(resp) {
                                feed = resumed;
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            (positions, reconnects)
        }
    });
    let mut other = Feed::start(
        &format!("{gw}/v1/tenants/globex/events?follow=true"),
        &globex,
        None,
    )
    .await;

    let http = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..COMMANDS {
        if i == COMMANDS / 3 {
            stack.kill("aggregate-1").await;
        }
        if i == COMMANDS / 2 {
            stack.start("aggregate-1").await;
            stack.kill("aggregate-2").await;
        }
        if i == 2 * COMMANDS / 3 {
            stack.start("aggregate-2").await;
        }
        let id = format!("live-{}", i % 50);
        let body = if i < 50 {
            json!({"command_id": uuid::Uuid::new_v4(), "type": "open", "payload": {"owner": "Ada", "currency": "EUR"}})
        } else {
            json!({"command_id": uuid::Uuid::new_v4(), "type": "deposit", "payload": {"amount": 1}})
        };
        // a command refused while an instance dies is retried with the same command id
        let answer = loop {
            let resp = http
                .post(format!(
                    "{gw}/v1/tenants/acme/aggregates/account/{id}/commands"
                ))
                .bearer_auth(&acme)
                .json(&body)
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == 200 => {
                    break r.json::<serde_json::Value>().await.expect("outcome");
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        acknowledged.push(answer["position"].as_u64().expect("position"));
        if (i + 1) % 100 == 0 {
            eprintln!("[live] {} commands acknowledged", i + 1);
        }
    }

    let (positions, reconnects) = subscriber.await.expect("subscriber");
    let unique: BTreeSet<u64> = positions.iter().copied().collect();
    assert_eq!(unique.len(), positions.len(), "a duplicate was delivered");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert_eq!(
        positions, acknowledged,
        "exactly the acknowledged events, in stream order"
    );
    eprintln!("[live] {COMMANDS} events received in order with {reconnects} reconnects");

    // the other tenant's subscriber saw none of them: its first event is its own
    let own = http
        .post(format!(
            "{gw}/v1/tenants/globex/aggregates/account/g-1/commands"
        ))
        .bearer_auth(&globex)
        .json(&json!({"type": "open", "payload": {"owner": "Bo", "currency": "EUR"}}))
        .send()
        .await
        .expect("globex command");
    assert_eq!(own.status(), 200);
    let own: serde_json::Value = own.json().await.expect("outcome");
    let first = loop {
        match other.next().await {
            Some(e) => break e,
            // its instance may have been killed meanwhile: resume from the start
            None => {
                other = Feed::start(
                    &format!("{gw}/v1/tenants/globex/events?follow=true"),
                    &globex,
                    None,
                )
                .await;
            }
        }
    };
    assert_eq!(first.data["position"], own["position"]);
    assert_eq!(first.data["event"]["tenant_id"], "globex");
}
