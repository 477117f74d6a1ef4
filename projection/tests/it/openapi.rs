//! Every documented route answers what the OpenAPI document says: real requests to the app on a
//! real nats-server, each response checked against the route's documented schema for its status
//! (`testkit::openapi`).

use std::time::Duration;

use testkit::NatsServer;
use testkit::openapi::CheckedApi;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_answers_its_documented_schema() {
    let server = NatsServer::start();
    let p = projection_with(
        &server,
        &["--min-position-timeout-ms", "200"],
        projection::default_views(),
    )
    .await;
    // two accounts, one with a parked event (and one parked behind it)
    let (garbage, _, last) = publish_poison_scenario(&p.app.core.client, "p1", "p2").await;
    for view in ["accounts", "tenant-summary"] {
        p.caught_up(view, last, Duration::from_secs(30)).await;
    }
    let api = CheckedApi::new(p.router.clone()).await;
    let get = |uri: String| {
        let api = &api;
        async move { api.call("GET", &uri, None, None).await }
    };
    let post = |uri: String| {
        let api = &api;
        async move { api.call("POST", &uri, None, None).await }
    };
    let docs = "/v1/tenants/acme/views";

    // documents and lists
    for uri in [
        format!("{docs}/accounts/p2"),
        format!("{docs}/accounts/p2?min_position={last}"),
        format!("{docs}/tenant-summary/summary"),
        format!("{docs}/tenant-summary/account.p1"),
        format!("{docs}/accounts/p2?follow=true"),
        format!("{docs}/accounts"),
        format!("{docs}/tenant-summary"),
        format!("{docs}/accounts?follow=true"),
    ] {
        let (s, body) = get(uri.clone()).await;
        assert_eq!(s, 200, "{uri}: {body}");
    }
    let (_, page) = get(format!("{docs}/accounts?limit=1")).await;
    assert!(page["next"].is_string(), "{page}");

    // admin
    let (s, body) = get("/v1/admin/views".into()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = get("/v1/admin/views/accounts/parked".into()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["parked"].as_array().map(Vec::len), Some(2), "{body}");
    let (s, body) =
        post("/v1/admin/views/accounts/parked/retry?aggregate=acme.account.p1".into()).await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = post(format!("/v1/admin/views/accounts/parked/{garbage}/skip")).await;
    assert_eq!(s, 204, "{body}");
    let (s, body) = post("/v1/admin/views/accounts/parked/retry".into()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["applied"], 1, "{body}");
    let (s, body) = get("/v1/admin/views/accounts/rebuild".into()).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = post("/v1/admin/views/accounts/rebuild".into()).await;
    assert_eq!(s, 202, "{body}");
    testkit::eventually(
        "the rebuild finishes",
        Duration::from_secs(30),
        async || match get("/v1/admin/views/accounts/rebuild".into()).await {
            (200, b) if b["rebuild"]["state"] == "done" => Ok(()),
            other => Err(other),
        },
    )
    .await;
    let (s, body) = get("/v1/admin/health".into()).await;
    assert_eq!(s, 200, "{body}");

    // the problems, extension members included
    let (s, _) = get(format!("{docs}/nope/x")).await;
    assert_eq!(s, 404);
    let (s, _) = get(format!("{docs}/accounts/nobody")).await;
    assert_eq!(s, 404);
    let (s, _) = get(format!("{docs}/accounts?limit=0")).await;
    assert_eq!(s, 400);
    let (s, body) = get(format!("{docs}/accounts/p2?min_position={}", last + 1000)).await;
    assert_eq!(s, 503, "{body}");

    api.spec.assert_every_success_checked();
    p.stop().await;
}
