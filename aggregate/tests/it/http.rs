//! The HTTP layer: every error class as problem+json, via `oneshot` and via a real port.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use platform::auth::{Authenticator, mint_hs256};
use platform::http::HttpSettings;
use serde_json::{Value, json};
use testkit::NatsServer;
use tower::ServiceExt;

use crate::support::*;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

fn settings() -> HttpSettings {
    HttpSettings {
        body_limit: 4096,
        request_timeout: Duration::from_secs(10),
    }
}

async fn call(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let token = mint_hs256(SECRET, "test", &["acme".into()], 60).expect("token");
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or("").to_owned()))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, headers)
}

fn assert_problem(
    status: StatusCode,
    body: &Value,
    headers: &axum::http::HeaderMap,
    want: StatusCode,
    slug: &str,
) {
    assert_eq!(status, want, "{body}");
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "application/problem+json",
        "{body}"
    );
    assert_eq!(
        body["type"],
        format!("urn:nats-es:problem:{slug}"),
        "{body}"
    );
    assert_eq!(body["status"], want.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()) || body["title"].is_string());
}

const CMD: &str = "/v1/tenants/acme/aggregates/account/a1/commands";

#[tokio::test]
async fn every_error_class_is_problem_json() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let router = aggregate::app(&app, Authenticator::hs256(SECRET), settings());

    let open = r#"{"type":"open","payload":{"owner":"Ada","currency":"EUR"}}"#;
    let (s, b, _) = call(&router, "POST", CMD, Some(open)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["version"], 1);
    assert!(b["position"].as_u64().is_some_and(|p| p > 0));

    // invalid ids: '.', '*', '>', space, 65 bytes, unicode, in every position
    let long = "a".repeat(65);
    for bad in [
        "a.b",
        "%2A",
        "%3E",
        "a%20b",
        long.as_str(),
        "%C3%A9",
        "a%2Eb",
    ] {
        for uri in [
            format!("/v1/tenants/acme/aggregates/account/{bad}/commands"),
            format!("/v1/tenants/acme/aggregates/{bad}/x/commands"),
        ] {
            let (s, b, h) = call(&router, "POST", &uri, Some(open)).await;
            assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "invalid-id");
        }
    }
    let (s, b, h) = call(
        &router,
        "GET",
        &format!("/v1/tenants/acme/aggregates/account/{long}"),
        None,
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "invalid-id");

    let (s, b, h) = call(&router, "POST", CMD, Some("{not json")).await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "malformed-body");
    let (s, b, h) = call(
        &router,
        "POST",
        CMD,
        Some(r#"{"type":"deposit","payload":{"amount":1},"expectedVersion":1}"#),
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "malformed-body");
    let (s, b, h) = call(
        &router,
        "POST",
        "/v1/tenants/acme/aggregates/spaceship/a1/commands",
        Some(open),
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "unknown-aggregate-type");
    let (s, b, h) = call(&router, "POST", CMD, Some(r#"{"type":"teleport"}"#)).await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "unknown-command-type");
    let (s, b, h) = call(
        &router,
        "POST",
        CMD,
        Some(r#"{"type":"deposit","payload":{"amount":"lots"}}"#),
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "invalid-payload");
    // the detail names the field by its path in the body
    let detail = b["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("payload.amount: invalid type"), "{detail}");
    let huge = format!(
        r#"{{"type":"deposit","payload":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    let (s, b, h) = call(&router, "POST", CMD, Some(&huge)).await;
    assert_problem(s, &b, &h, StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    let (s, b, h) = call(
        &router,
        "POST",
        CMD,
        Some(r#"{"type":"withdraw","payload":{"amount":1}}"#),
    )
    .await;
    assert_problem(
        s,
        &b,
        &h,
        StatusCode::UNPROCESSABLE_ENTITY,
        "insufficient-funds",
    );
    let (s, b, h) = call(
        &router,
        "POST",
        CMD,
        Some(r#"{"type":"deposit","payload":{"amount":1},"expected_version":0}"#),
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::CONFLICT, "version-conflict");
    assert_eq!(b["current_version"], 1);
    let id = uuid::Uuid::new_v4();
    let dep =
        |n: u32| format!(r#"{{"command_id":"{id}","type":"deposit","payload":{{"amount":{n}}}}}"#);
    let (s, first, _) = call(&router, "POST", CMD, Some(&dep(3))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, again, _) = call(&router, "POST", CMD, Some(&dep(3))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(first, again, "a retry answers the original outcome");
    let (s, b, h) = call(&router, "POST", CMD, Some(&dep(4))).await;
    assert_problem(s, &b, &h, StatusCode::CONFLICT, "command-id-reused");

    // reads
    let (s, b, _) = call(
        &router,
        "GET",
        "/v1/tenants/acme/aggregates/account/a1",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["state"]["balance"], 3);
    assert_eq!(b["version"], 2);
    let (s, b, _) = call(
        &router,
        "GET",
        "/v1/tenants/acme/aggregates/account/a1/events?from_version=2",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(b["events"][0]["event"]["event_type"], "deposited");
    let (s, b, h) = call(
        &router,
        "GET",
        "/v1/tenants/acme/aggregates/account/a1/events?from_version=x",
        None,
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "invalid-query");
    // a page of the history: `limit` events from `from_version`
    let (s, b, _) = call(
        &router,
        "GET",
        "/v1/tenants/acme/aggregates/account/a1/events?from_version=1&limit=1",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let versions: Vec<u64> = b["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter_map(|x| x["event"]["version"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(versions, [1], "{b}");
    for query in ["limit=0", "limit=1001", "limit=1&follow=true"] {
        let (s, b, h) = call(
            &router,
            "GET",
            &format!("/v1/tenants/acme/aggregates/account/a1/events?{query}"),
            None,
        )
        .await;
        assert_problem(s, &b, &h, StatusCode::BAD_REQUEST, "invalid-query");
    }
    // the admin health route needs an admin token
    let (s, b, h) = call(&router, "GET", "/v1/admin/health", None).await;
    assert_problem(s, &b, &h, StatusCode::FORBIDDEN, "forbidden");
    let (s, b, h) = call(
        &router,
        "GET",
        "/v1/tenants/acme/aggregates/account/nobody",
        None,
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::NOT_FOUND, "not-found");
    let (s, b, h) = call(&router, "GET", "/nowhere", None).await;
    assert_problem(s, &b, &h, StatusCode::NOT_FOUND, "not-found");
    let (s, b, h) = call(&router, "DELETE", CMD, None).await;
    assert_problem(
        s,
        &b,
        &h,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    );

    // auth
    let (s, b, h) = call(
        &router,
        "GET",
        "/v1/tenants/other/aggregates/account/a1",
        None,
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::FORBIDDEN, "forbidden");
    let req = Request::get("/v1/tenants/acme/aggregates/account/a1")
        .body(Body::empty())
        .expect("req");
    let resp = router.clone().oneshot(req).await.expect("resp");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // NATS down: 503 with Retry-After, never a hang or a 500
    drop(server);
    let (s, b, h) = call(
        &router,
        "POST",
        CMD,
        Some(r#"{"type":"deposit","payload":{"amount":1}}"#),
    )
    .await;
    assert_problem(s, &b, &h, StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    assert!(h.contains_key(header::RETRY_AFTER));
    let (s, b, h) = call(&router, "GET", "/readyz", None).await;
    assert_problem(s, &b, &h, StatusCode::SERVICE_UNAVAILABLE, "not-ready");
}

#[tokio::test]
async fn serves_on_a_real_port_with_request_ids_and_metrics() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let router = aggregate::app(&app, Authenticator::disabled(), settings());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(platform::service::serve(
        listener,
        router,
        app,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    let http = reqwest::Client::new();
    let base = format!("http://{addr}");
    let r = http
        .post(format!("{base}{CMD}"))
        .header("x-request-id", "req-42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-42");
    let body: Value = r.json().await.expect("json");
    let meta = &body["events"][0]["metadata"];
    assert_eq!(
        meta["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(meta["request_id"], "req-42");
    let r = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("aggregate_commands_total"), "{metrics}");
    assert!(
        metrics.contains("aggregate_http_requests_total"),
        "{metrics}"
    );
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .expect("openapi")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["info"]["title"], "aggregate");
    for path in [
        "/v1/tenants/{tenant}/aggregates/{type}/{id}/commands",
        "/v1/tenants/{tenant}/aggregates/{type}/{id}",
        "/v1/tenants/{tenant}/aggregates/{type}/{id}/events",
        "/v1/admin/health",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("drains in time")
        .expect("task");
}
