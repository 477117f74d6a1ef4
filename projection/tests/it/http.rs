//! The HTTP API: read-your-writes, tenant isolation, pagination, error classes.

use std::time::Duration;

use serde_json::json;
use testkit::NatsServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn min_position_returns_the_written_state_or_times_out() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection_with(
        &server,
        &["--min-position-timeout-ms", "300"],
        projection::default_views(),
    )
    .await;
    let a = account("acme", "ryw");
    open(&agg, &a).await;
    let out = send(&agg, &a, cmd("deposit", json!({"amount": 42}))).await;
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/ryw?min_position={}",
            out.position
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 42);
    assert_eq!(body["key"], "ryw");

    let never = out.position + 1_000;
    let started = std::time::Instant::now();
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/ryw?min_position={never}"
        ))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:nats-es:problem:position-not-reached");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts?min_position={never}"
        ))
        .await;
    assert_eq!(status, 503, "{body}");

    let (status, body) = p
        .get("/v1/tenants/acme/views/accounts/ryw?min_position=abc")
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["_problem"], true);
    p.stop().await;
}

/// The instance applying a view tells the reads waiting on it of each checkpoint it writes
/// (they wake on the commit, no bucket polling); a standby writes none and reads the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_applying_instance_wakes_waiting_reads_with_its_commit_and_a_standby_reads_the_bucket()
{
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection_with(&server, &[], projection::default_views()).await;
    // a second instance that serves reads but runs no consumer: a standby
    let standby_cfg = config(&server, &[]);
    let standby = projection::start(&standby_cfg, projection::default_views())
        .await
        .expect("start the standby");
    let standby_router = projection::app(
        &standby,
        platform::auth::Authenticator::disabled(),
        standby_cfg.service.http(),
    );
    let mut commits = p.view("accounts").commits();
    let a = account("acme", "woken");
    open(&agg, &a).await;
    let out = send(&agg, &a, cmd("deposit", json!({"amount": 7}))).await;
    // the channel alone reaches the position: the applying instance published its commit
    tokio::time::timeout(
        Duration::from_secs(10),
        commits.wait_for(|c| *c >= out.position),
    )
    .await
    .expect("the commit reaches the waiting reads")
    .expect("the channel stays open");
    let stored = p.view("accounts").checkpoint().await.expect("checkpoint");
    assert!(
        stored >= out.position,
        "published {} before the bucket held it ({stored})",
        out.position
    );
    // the standby published nothing, and still answers from the bucket
    let standby_view = standby.views.get("accounts").expect("view").current();
    assert_eq!(*standby_view.commits().borrow(), 0);
    let (status, body) = call(
        &standby_router,
        "GET",
        &format!(
            "/v1/tenants/acme/views/accounts/woken?min_position={}",
            out.position
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 7);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_sent_on_timeout() {
    let server = NatsServer::start();
    let p = projection_with(
        &server,
        &["--min-position-timeout-ms", "50"],
        projection::default_views(),
    )
    .await;
    let response = tower::ServiceExt::oneshot(
        p.router.clone(),
        axum::http::Request::builder()
            .uri("/v1/tenants/acme/views/accounts/x?min_position=5")
            .body(axum::body::Body::empty())
            .expect("request"),
    )
    .await
    .expect("infallible");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_list_never_contains_another_tenants_documents() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection(&server).await;
    let mut last = 0;
    for id in ["a1", "a2", "a3"] {
        last = open(&agg, &account("acme", id)).await.position;
    }
    for id in ["a1", "b2"] {
        last = open(&agg, &account("globex", id)).await.position;
    }
    // a tenant whose name extends another's
    last = last.max(open(&agg, &account("acme-2", "z9")).await.position);
    p.caught_up("accounts", last, Duration::from_secs(30)).await;

    let (status, page1) = p.get("/v1/tenants/acme/views/accounts?limit=2").await;
    assert_eq!(status, 200, "{page1}");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["key"].as_str().expect("key").to_owned())
            .collect()
    };
    assert_eq!(keys(&page1), ["a1", "a2"]);
    assert_eq!(page1["next"], "a2");
    let (_, page2) = p
        .get("/v1/tenants/acme/views/accounts?limit=2&after=a2")
        .await;
    assert_eq!(keys(&page2), ["a3"]);
    assert_eq!(page2["next"], serde_json::Value::Null);
    let (_, globex) = p.get("/v1/tenants/globex/views/accounts").await;
    assert_eq!(keys(&globex), ["a1", "b2"]);
    let (_, other) = p.get("/v1/tenants/initech/views/accounts").await;
    assert_eq!(keys(&other), Vec::<String>::new());
    // the same account id in two tenants is two documents
    let (_, doc) = p.get("/v1/tenants/globex/views/accounts/a1").await;
    assert_eq!(doc["document"]["owner"], "Ada");
    let (status, _) = p.get("/v1/tenants/globex/views/accounts/a2").await;
    assert_eq!(status, 404);
    let (status, body) = p.get("/v1/tenants/acme/views/accounts?limit=0").await;
    assert_eq!(status, 400, "{body}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_errors_are_problems_of_the_right_class() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    for uri in [
        "/v1/tenants/a.b/views/accounts/x",
        "/v1/tenants/%2A/views/accounts/x",
        "/v1/tenants/acme/views/accounts/%3E",
        "/v1/tenants/acme/views/accounts/a..b",
        "/v1/tenants/acme/views/accounts/a.",
        "/v1/tenants/acme/views/accounts?after=a*",
        "/v1/tenants/a%20b/views/accounts",
    ] {
        let (status, body) = p.get(uri).await;
        assert_eq!(status, 400, "{uri}: {body}");
        assert_eq!(body["type"], "urn:nats-es:problem:invalid-id", "{uri}");
        assert_eq!(body["_problem"], true);
    }
    let (status, body) = p.get("/v1/tenants/acme/views/nope/x").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "urn:nats-es:problem:unknown-view");
    let (status, body) = p.get("/v1/tenants/acme/views/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "urn:nats-es:problem:unknown-view");
    let (status, body) = p.get("/v1/admin/views/nope/parked").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "urn:nats-es:problem:unknown-view");
    let (status, body) = p.get("/v1/tenants/acme/views/accounts/missing").await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "urn:nats-es:problem:not-found");
    let (status, _) = p.post("/v1/admin/views/accounts/parked/abc/skip").await;
    assert_eq!(status, 400);
    let (status, _) = p
        .post("/v1/admin/views/accounts/parked/retry?aggregate=a.b")
        .await;
    assert_eq!(status, 400);

    // ops routes
    testkit::eventually("ready", Duration::from_secs(10), async || {
        match p.get("/readyz").await {
            (axum::http::StatusCode::OK, _) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    let (status, _) = p.get("/healthz").await;
    assert_eq!(status, 200);
    let metrics = p.app.core.metrics.render();
    assert!(metrics.contains("projection_events_applied"), "{metrics}");
    p.stop().await;
}
