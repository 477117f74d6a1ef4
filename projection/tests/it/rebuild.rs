//! Rebuild: replay into a fresh generation while queries and writes go on, then switch.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use testkit::NatsServer;

use projection::rebuild::RebuildError;

use crate::support::*;

async fn bucket_exists(client: &async_nats::Client, name: &str) -> bool {
    async_nats::jetstream::new(client.clone())
        .get_key_value(name)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_switches_to_a_fresh_generation_without_failing_a_query() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let p = projection(&server).await;
    let accounts: Vec<_> = (0..20).map(|i| account("acme", &format!("r{i}"))).collect();
    let mut last = 0;
    for a in &accounts {
        open(&agg, a).await;
        for _ in 0..10 {
            last = send(&agg, a, cmd("deposit", json!({"amount": 1})))
                .await
                .position;
        }
    }
    p.caught_up("accounts", last, Duration::from_secs(20)).await;

    // readers hammer the view and writers keep writing for the whole rebuild
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (router, stop, reads) = (p.router.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (s, b) = call(&router, "GET", "/v1/tenants/acme/views/accounts/r0").await;
                assert_eq!(s, StatusCode::OK, "a query failed during the rebuild: {b}");
                let (s, b) = call(&router, "GET", "/v1/tenants/acme/views/accounts?limit=5").await;
                assert_eq!(s, StatusCode::OK, "a list failed during the rebuild: {b}");
                reads.fetch_add(2, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let writer = {
        let (agg, stop, accounts) = (agg.clone(), stop.clone(), accounts.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let a = &accounts[n % accounts.len()];
                last = send(&agg, a, cmd("deposit", json!({"amount": 1})))
                    .await
                    .position;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last
        })
    };

    let cfg = config(&server, &[]);
    let generation = projection::rebuild_cli(&cfg, "accounts")
        .await
        .expect("rebuild");
    assert_eq!(generation, 1);
    // the instance moves its queries and its consumer to the new generation
    testkit::eventually(
        "the instance switches to generation 1",
        Duration::from_secs(10),
        async || match p.view("accounts").generation {
            1 => Ok(()),
            g => Err(g),
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.expect("no query failed");
    let last = writer.await.expect("writer");
    assert!(reads.load(Ordering::Relaxed) > 10);

    // the new generation keeps up with events written after the switch, and is exact
    let after = send(&agg, &accounts[0], cmd("deposit", json!({"amount": 1})))
        .await
        .position;
    p.caught_up("accounts", after.max(last), Duration::from_secs(20))
        .await;
    for a in &accounts {
        let loaded = agg.runtime.load(a).await.expect("load");
        let state = agg.runtime.state_json(a, &loaded);
        let (s, b) = p
            .get(&format!(
                "/v1/tenants/acme/views/accounts/{}",
                a.aggregate_id
            ))
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b["document"]["balance"], state["balance"],
            "{}",
            a.aggregate_id
        );
        assert_eq!(b["document"]["version"], json!(loaded.version.get()));
    }
    // the old generation is gone, the new one is there
    let client = &p.app.core.client;
    assert!(bucket_exists(client, "VIEW_accounts_v1_g1").await);
    testkit::eventually(
        "the old generation's bucket is removed",
        Duration::from_secs(10),
        async || {
            if bucket_exists(client, "VIEW_accounts_v1").await {
                Err("VIEW_accounts_v1 exists")
            } else {
                Ok(())
            }
        },
    )
    .await;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    assert!(stream.consumer_info("view-accounts-v1-g1").await.is_ok());
    assert!(stream.consumer_info("view-accounts-v1").await.is_err());
    // the other view was not touched
    assert_eq!(p.view("tenant-summary").generation, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_endpoint_runs_a_rebuild_and_reports_progress() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection(&server).await;
    let a = account("acme", "adm");
    open(&agg, &a).await;
    let last = send(&agg, &a, cmd("deposit", json!({"amount": 7})))
        .await
        .position;
    p.caught_up("tenant-summary", last, Duration::from_secs(20))
        .await;
    let (s, b) = p.get("/v1/admin/views/tenant-summary/rebuild").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["rebuild"]["state"], "idle");
    let (s, _) = p.post("/v1/admin/views/tenant-summary/rebuild").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let b = testkit::eventually(
        "the rebuild finishes",
        Duration::from_secs(30),
        async || {
            let (_, b) = p.get("/v1/admin/views/tenant-summary/rebuild").await;
            if b["rebuild"]["state"] == "done" && b["live_generation"] == 1 {
                Ok(b)
            } else {
                Err(b)
            }
        },
    )
    .await;
    assert_eq!(b["rebuild"]["done"], b["rebuild"]["total"]);
    let (s, b) = p.get("/v1/tenants/acme/views/tenant-summary/summary").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["document"]["open_accounts"], 1, "{b}");
    let (s, _) = p.get("/v1/admin/views/nope/rebuild").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Waits until `p` serves `generation` of the accounts view, and reads the test's account there.
async fn serves_the_claimed_account(p: &Instance, generation: u32) {
    testkit::eventually(
        format!("the instance switches to generation {generation}"),
        Duration::from_secs(10),
        async || match p.view("accounts").generation {
            g if g == generation => Ok(()),
            g => Err(g),
        },
    )
    .await;
    let (s, b) = p.get("/v1/tenants/acme/views/accounts/claimed").await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["document"]["balance"], 5, "{b}");
}

/// Two instances asked to rebuild one view at once: the second is refused (409 naming the
/// first) instead of building, and deleting, the same generation; an abandoned claim expires
/// and is taken over, and its old holder, coming back, switches and removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_at_a_time_builds_a_generation_and_an_abandoned_claim_is_taken_over() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection(&server).await;
    let a = account("acme", "claimed");
    open(&agg, &a).await;
    let last = send(&agg, &a, cmd("deposit", json!({"amount": 5})))
        .await
        .position;
    p.caught_up("accounts", last, Duration::from_secs(20)).await;
    let view = p.view("accounts").view.clone();
    let here = p.app.generations.clone();
    let mut there = here.clone();
    there.instance = "other".into();

    let claim = there.claim(&*view).await.expect("claim");
    assert_eq!(claim.generation(), 1);
    let (s, b) = p.post("/v1/admin/views/accounts/rebuild").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("rebuild-running")),
        "{b}"
    );
    assert!(
        b["detail"]
            .as_str()
            .is_some_and(|d| d.contains("instance other")),
        "{b}"
    );
    match here.claim(&*view).await {
        Err(RebuildError::Running {
            generation: 1,
            instance,
            ..
        }) => assert_eq!(instance, "other"),
        other => panic!("a second claim: {other:?}"),
    }
    assert_eq!(
        there
            .rebuild(view.clone(), claim, |_| {})
            .await
            .expect("rebuild"),
        1
    );
    serves_the_claimed_account(&p, 1).await;

    // "other" claims generation 2 and dies; after the claim expires this instance takes over
    let abandoned = there.claim(&*view).await.expect("claim generation 2");
    let mut impatient = here.clone();
    impatient.claim_expires = Duration::from_secs(1);
    let taken = testkit::eventually(
        "the abandoned claim expires",
        Duration::from_secs(10),
        async || impatient.claim(&*view).await,
    )
    .await;
    assert_eq!(taken.generation(), 2);
    // the old holder comes back: it neither switches nor removes anything
    match there.rebuild(view.clone(), abandoned, |_| {}).await {
        Err(RebuildError::ClaimLost(2)) => {}
        other => panic!("the abandoned claim's rebuild: {other:?}"),
    }
    let client = &p.app.core.client;
    assert!(bucket_exists(client, "VIEW_accounts_v1_g1").await);
    assert_eq!(
        impatient
            .rebuild(view.clone(), taken, |_| {})
            .await
            .expect("rebuild by the new holder"),
        2
    );
    serves_the_claimed_account(&p, 2).await;
}
