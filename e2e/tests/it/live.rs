//! Live feeds through the gateway: a tenant's subscriber receives exactly the events of 1 000
//! commands, in order, while both aggregate instances are killed and restarted one after the
//! other (reconnecting with `Last-Event-ID`); another tenant's subscriber sees none of them. A
//! subscriber of the tenant's `tenant-summary` list, across kills of both projection instances,
//! ends with exactly the documents the view serves, each document's versions in order.

use std::collections::{BTreeMap, BTreeSet};

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
    // the view subscriber: every document's latest version, until the last command's position
    let (target_tx, mut target) = tokio::sync::watch::channel::<Option<u64>>(None);
    let view_subscriber = tokio::spawn({
        let url = format!("{gw}/v1/tenants/acme/views/tenant-summary?follow=true");
        let token = acme.clone();
        async move {
            let mut docs: BTreeMap<String, (u64, serde_json::Value)> = BTreeMap::new();
            let mut last_id: Option<u64> = None;
            let mut reconnects = 0;
            let mut feed = Feed::start(&url, &token, None).await;
            loop {
                let until = *target.borrow();
                if let (Some(until), Some(id)) = (until, last_id)
                    && id >= until
                {
                    break;
                }
                let next = tokio::select! {
                    next = feed.next() => next,
                    // a new target: look at it first
                    _ = target.changed() => continue,
                };
                match next {
                    Some(e) => {
                        if let Some(id) = e.id.as_deref() {
                            let id: u64 = id.parse().expect("id");
                            assert!(
                                last_id.is_none_or(|l| id > l),
                                "ids go back: {id} after {last_id:?}"
                            );
                            last_id = Some(id);
                        }
                        if e.event.as_deref() == Some("sync") {
                            continue;
                        }
                        let key = e.data["key"].as_str().expect("key").to_owned();
                        let position = e.data["position"].as_u64().expect("position");
                        if let Some((before, _)) = docs.get(&key) {
                            assert!(
                                position > *before,
                                "{key}: version {position} after {before}"
                            );
                        }
                        docs.insert(key, (position, e.data["document"].clone()));
                    }
                    None => {
                        reconnects += 1;
                        let last = last_id.map(|i| i.to_string());
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
            (docs, reconnects)
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
        if i == COMMANDS / 4 {
            stack.kill("projection-1").await;
        }
        if i == COMMANDS / 3 {
            stack.kill("aggregate-1").await;
            stack.start("projection-1").await;
            stack.kill("projection-2").await;
        }
        if i == COMMANDS / 2 {
            stack.start("aggregate-1").await;
            stack.kill("aggregate-2").await;
        }
        if i == 2 * COMMANDS / 3 {
            stack.start("aggregate-2").await;
            stack.start("projection-2").await;
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

    // the view subscriber ends with what the view serves at the last position
    let extra = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/live-0/commands"
        ))
        .bearer_auth(&acme)
        .json(&json!({"type": "deposit", "payload": {"amount": 1}}))
        .send()
        .await
        .expect("command");
    assert_eq!(extra.status(), 200);
    let extra: serde_json::Value = extra.json().await.expect("outcome");
    let last = extra["position"].as_u64().expect("position");
    target_tx.send_replace(Some(last));
    let (docs, view_reconnects) = view_subscriber.await.expect("view subscriber");
    for (key, (position, document)) in &docs {
        let read = http
            .get(format!(
                "{gw}/v1/tenants/acme/views/tenant-summary/{key}?min_position={last}"
            ))
            .bearer_auth(&acme)
            .send()
            .await
            .expect("read");
        assert_eq!(read.status(), 200, "{key}");
        let read: serde_json::Value = read.json().await.expect("document");
        assert_eq!(&read["document"], document, "{key}");
        assert_eq!(read["position"], *position, "{key}");
    }
    assert_eq!(
        docs.len(),
        51,
        "the summary and 50 accounts: {:?}",
        docs.keys()
    );
    eprintln!(
        "[live] tenant-summary feed: {} documents as served, {view_reconnects} reconnects",
        docs.len()
    );

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
