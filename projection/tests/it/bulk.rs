//! A rebuild's first phase: the backlog folded in memory-bounded chunks, each document written
//! once per chunk. It must give exactly the documents the live engine gives.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use projection::engine::{ViewRuntime, bulk};
use serde_json::{Value, json};
use testkit::NatsServer;

use crate::support::*;

/// Every document of a view's bucket but the checkpoint.
async fn documents(rt: &ViewRuntime) -> BTreeMap<String, Value> {
    let mut keys: Vec<String> = rt
        .docs
        .keys()
        .await
        .expect("keys")
        .map(|k| k.expect("key"))
        .collect()
        .await;
    keys.retain(|k| k != projection::store::CHECKPOINT_KEY);
    let mut out = BTreeMap::new();
    for k in keys {
        let doc = projection::store::read_doc(&rt.docs, &k)
            .await
            .expect("read")
            .expect("present");
        out.insert(k, doc.doc);
    }
    out
}

/// A fresh generation of `view` nobody else writes (as a rebuild opens it).
async fn fresh(p: &Instance, view: &str, generation: u32) -> ViewRuntime {
    let js = async_nats::jetstream::new(p.app.core.client.clone());
    ViewRuntime::open(
        &js,
        p.view(view).view.clone(),
        p.app.generations.metrics.clone(),
        1,
        generation,
        "bulk-test",
    )
    .await
    .expect("open a fresh generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunked_load_writes_exactly_the_documents_of_the_live_fold() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let p = projection(&server).await;
    let mut last = 0;
    for tenant in ["acme", "beta"] {
        for i in 0..12 {
            let a = account(tenant, &format!("b{i}"));
            open(&agg, &a).await;
            for amount in 1..=4 {
                send(&agg, &a, cmd("deposit", json!({"amount": amount}))).await;
            }
            last = send(&agg, &a, cmd("withdraw", json!({"amount": 3})))
                .await
                .position;
            if i % 5 == 0 {
                send(&agg, &a, cmd("withdraw", json!({"amount": 7}))).await;
                last = send(&agg, &a, cmd("close", json!({}))).await.position;
            }
        }
    }
    for view in ["accounts", "tenant-summary"] {
        p.caught_up(view, last, Duration::from_secs(30)).await;
    }
    let js = async_nats::jetstream::new(p.app.core.client.clone());
    for view in ["accounts", "tenant-summary"] {
        let live = documents(&p.view(view)).await;
        assert!(live.len() >= 24, "{view}: {} documents", live.len());
        let rt = fresh(&p, view, 9).await;
        // a chunk of a few documents: many flushes, documents read back between them
        let mut reported = Vec::new();
        let outcome = bulk::load(&js, &rt, last, 3_000, |done| reported.push(done))
            .await
            .expect("bulk load");
        assert_eq!(outcome.position, last, "{view}");
        assert!(!outcome.stopped_early, "{view}");
        assert!(outcome.flushes >= 3, "{view}: {outcome:?}");
        assert_eq!(reported.last(), Some(&last), "{view}: progress reported");
        assert_eq!(rt.checkpoint().await.expect("checkpoint"), last);
        assert_eq!(documents(&rt).await, live, "{view}");
        // one chunk holding everything: the same documents again
        let rt = fresh(&p, view, 10).await;
        let outcome = bulk::load(&js, &rt, last, 64 << 20, |_| {})
            .await
            .expect("bulk load");
        assert_eq!(outcome.flushes, 1, "{view}: {outcome:?}");
        assert_eq!(outcome.packs, 0, "{view}: {outcome:?}");
        assert_eq!(documents(&rt).await, live, "{view}");
        // a chunk too small for every document parsed but not packed: packed, written once
        let cost = |f: fn(&str, usize) -> usize| -> usize {
            live.iter()
                .map(|(k, d)| f(k, serde_json::to_vec(d).expect("json").len()))
                .sum()
        };
        let (parsed, packed) = (cost(bulk::chunk_cost), cost(bulk::packed_cost));
        let budget = parsed * 9 / 10;
        assert!(
            packed * 4 < budget * 3,
            "{view}: {packed} packed, {parsed} parsed"
        );
        let rt = fresh(&p, view, 11).await;
        let outcome = bulk::load(&js, &rt, last, budget, |_| {})
            .await
            .expect("bulk load");
        assert_eq!(outcome.flushes, 1, "{view}: {outcome:?}");
        assert!(outcome.packs >= 1, "{view}: {outcome:?}");
        assert_eq!(documents(&rt).await, live, "{view}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_leaves_an_event_it_must_park_to_the_consumer_which_parks_it() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    let c = &p.app.core.client;
    let (garbage, behind, last) = publish_poison_scenario(c, "q1", "q2").await;
    p.caught_up("accounts", last, Duration::from_secs(30)).await;

    // the bulk load stops just before the undecodable event
    let js = async_nats::jetstream::new(c.clone());
    let rt = fresh(&p, "accounts", 9).await;
    let outcome = bulk::load(&js, &rt, last, 64 << 20, |_| {})
        .await
        .expect("bulk load");
    assert!(outcome.stopped_early);
    assert_eq!(outcome.position, garbage - 1);

    // a whole rebuild: the generation's consumer takes it from there and parks it as live does
    let view = p.view("accounts").view.clone();
    let generations = &p.app.generations;
    let claim = generations.claim(&*view).await.expect("claim");
    let generation = generations
        .rebuild(view, claim, |_| {})
        .await
        .expect("rebuild");
    assert_eq!(generation, 1);
    testkit::eventually(
        "the instance switches to generation 1",
        Duration::from_secs(10),
        async || match p.view("accounts").generation {
            1 => Ok(()),
            other => Err(other),
        },
    )
    .await;
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/q2").await;
    assert_eq!(body["document"]["balance"], 7);
    let (_, body) = p.get("/v1/tenants/acme/views/accounts/q1").await;
    assert_eq!(body["document"]["version"], 1);
    let (status, body) = p.get("/v1/admin/views/accounts/parked").await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = body["parked"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|r| r["seq"].as_u64())
        .collect();
    assert_eq!(seqs, vec![garbage, behind]);
}
