//! The whole stack through the gateway.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Stack, Topology};

const TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

async fn problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(
        resp.headers()["content-type"].to_str().expect("ascii"),
        "application/problem+json"
    );
    let body: Value = resp.json().await.expect("problem body");
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:nats-es:problem:")),
        "{body}"
    );
    assert_eq!(body["status"], status.as_u16());
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_works_through_the_gateway() {
    let stack = Stack::up(Topology::Single);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let gw = &stack.gateway;
    let token = Stack::token(&["acme"]);
    let auth = format!("Bearer {token}");

    // a command lands in the stream and in the view (read-your-writes with min_position)
    let open = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/e2e-1/commands"
        ))
        .header("authorization", &auth)
        .header("traceparent", TRACE)
        .json(&json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}))
        .send()
        .await
        .expect("open");
    assert_eq!(open.status(), 200);
    let deposit: Value = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/e2e-1/commands"
        ))
        .header("authorization", &auth)
        .json(&json!({"type": "deposit", "payload": {"amount": 250}}))
        .send()
        .await
        .expect("deposit")
        .json()
        .await
        .expect("json");
    let position = deposit["position"].as_u64().expect("position");
    let view: Value = http
        .get(format!(
            "{gw}/v1/tenants/acme/views/accounts/e2e-1?min_position={position}"
        ))
        .header("authorization", &auth)
        .send()
        .await
        .expect("view")
        .json()
        .await
        .expect("json");
    assert_eq!(view["document"]["balance"], 250, "{view}");
    let events: Value = http
        .get(format!(
            "{gw}/v1/tenants/acme/aggregates/account/e2e-1/events"
        ))
        .header("authorization", &auth)
        .send()
        .await
        .expect("events")
        .json()
        .await
        .expect("json");
    assert_eq!(events["events"].as_array().map(Vec::len), Some(2));
    let client = async_nats_free_check(&stack.nats_urls[0]);
    assert!(client, "nats reachable");

    // one aggregate's requests all go to one aggregate instance (hashed on tenant/type/id);
    // different aggregates and the views' reads spread over both instances of each service
    let mut sticky = Vec::new();
    for _ in 0..8 {
        let id = format!("sticky-{}", uuid::Uuid::new_v4().simple());
        let r = http
            .get(format!("{gw}/v1/tenants/acme/aggregates/account/e2e-1"))
            .header("authorization", &auth)
            .header("x-request-id", &id)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        sticky.push(id);
    }
    let holders: Vec<&str> = ["aggregate-1", "aggregate-2"]
        .into_iter()
        .filter(|name| {
            let log = stack.log(name);
            sticky.iter().any(|id| log.contains(id.as_str()))
        })
        .collect();
    assert_eq!(holders.len(), 1, "e2e-1 served by {holders:?}");
    let mut ids = Vec::new();
    for n in 0..32 {
        let id = format!("spread-{n}-{}", uuid::Uuid::new_v4().simple());
        let (path, status) = if n % 2 == 0 {
            // aggregates with no events: 404 from whichever instance holds them
            (
                format!("/v1/tenants/acme/aggregates/account/spread-{n}"),
                StatusCode::NOT_FOUND,
            )
        } else {
            (
                "/v1/tenants/acme/views/accounts/e2e-1".to_owned(),
                StatusCode::OK,
            )
        };
        let r = http
            .get(format!("{gw}{path}"))
            .header("authorization", &auth)
            .header("x-request-id", &id)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), status, "{path}");
        ids.push(id);
    }
    for name in ["aggregate-1", "aggregate-2", "projection-1", "projection-2"] {
        let log = stack.log(name);
        assert!(
            ids.iter().any(|id| log.contains(id.as_str())),
            "{name} served no request"
        );
    }

    // one trace id in the gateway, an aggregate and a projection log
    let trace_id = &TRACE[3..35];
    assert!(
        stack.gateway_log().contains(trace_id),
        "gateway log lacks the trace id"
    );
    assert!(
        ["aggregate-1", "aggregate-2"]
            .iter()
            .any(|n| stack.log(n).contains(trace_id)),
        "no aggregate log has the trace id"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !["projection-1", "projection-2"]
        .iter()
        .any(|n| stack.log(n).contains(trace_id))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no projection log has the trace id"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // both services answer health, metrics, errors and auth identically
    for (name, base, api) in [
        (
            "aggregate",
            stack.url_of("aggregate-1"),
            "/v1/tenants/acme/aggregates/account/e2e-1",
        ),
        (
            "projection",
            stack.url_of("projection-1"),
            "/v1/tenants/acme/views/accounts/e2e-1",
        ),
    ] {
        let h: Value = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .json()
            .await
            .expect("json");
        assert_eq!(h, json!({"status": "ok"}), "{name} /healthz");
        let r: Value = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("json");
        assert_eq!(r, json!({"status": "ready"}), "{name} /readyz");
        let m = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            m.contains(&format!("{name}_http_requests_total")),
            "{name} /metrics"
        );
        let doc: Value = http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("openapi")
            .json()
            .await
            .expect("json");
        assert_eq!(doc["info"]["title"], name, "{name} /openapi.json");
        let nf = problem(
            http.get(format!("{base}/nowhere"))
                .send()
                .await
                .expect("404"),
            StatusCode::NOT_FOUND,
        )
        .await;
        assert_eq!(nf["type"], "urn:nats-es:problem:not-found", "{name}");
        let un = problem(
            http.get(format!("{base}{api}")).send().await.expect("401"),
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert_eq!(un["type"], "urn:nats-es:problem:unauthorized", "{name}");
        let bad = problem(
            http.get(format!("{base}{api}"))
                .header("authorization", "Bearer not.a.jwt")
                .send()
                .await
                .expect("401"),
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert_eq!(
            bad["detail"], "the token is malformed (not a JWT)",
            "{name}"
        );
        let other = api.replace("/acme/", "/other/");
        let fb = problem(
            http.get(format!("{base}{other}"))
                .header("authorization", &auth)
                .send()
                .await
                .expect("403"),
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(fb["type"], "urn:nats-es:problem:forbidden", "{name}");
        let id = problem(
            http.get(format!("{base}{}", api.replace("e2e-1", "a..b")))
                .header("authorization", &auth)
                .send()
                .await
                .expect("400"),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(id["type"], "urn:nats-es:problem:invalid-id", "{name}");
    }

    // the live feeds (both services, through the gateway) are guarded like every route: 401
    // without a token, 403 for another tenant, 400 for an invalid id, before any feed opens
    for feed in [
        "/v1/tenants/acme/aggregates/account/e2e-1/events?follow=true",
        "/v1/tenants/acme/events?follow=true",
        "/v1/tenants/acme/views/accounts/e2e-1?follow=true",
        "/v1/tenants/acme/views/tenant-summary?follow=true",
    ] {
        let un = problem(
            http.get(format!("{gw}{feed}")).send().await.expect("401"),
            StatusCode::UNAUTHORIZED,
        )
        .await;
        assert_eq!(un["type"], "urn:nats-es:problem:unauthorized", "{feed}");
        let fb = problem(
            http.get(format!("{gw}{}", feed.replace("/acme/", "/other/")))
                .header("authorization", &auth)
                .send()
                .await
                .expect("403"),
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(fb["type"], "urn:nats-es:problem:forbidden", "{feed}");
        if !feed.contains("e2e-1") {
            continue;
        }
        let id = problem(
            http.get(format!("{gw}{}", feed.replace("e2e-1", "a..b")))
                .header("authorization", &auth)
                .send()
                .await
                .expect("400"),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(id["type"], "urn:nats-es:problem:invalid-id", "{feed}");
    }

    // the admin routes need an admin token
    let r = http
        .get(format!("{gw}/v1/admin/views/accounts/parked"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("admin without claim");
    problem(r, StatusCode::FORBIDDEN).await;
    let admin =
        platform::auth::mint_hs256_claims(crate::support::SECRET.as_bytes(), "ops", &[], true, 600)
            .expect("token");
    let r = http
        .get(format!("{gw}/v1/admin/views/accounts/parked"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);

    // errors are problem+json through the gateway
    let r = http
        .get(format!("{gw}/v1/tenants/acme/aggregates/account/e2e-1"))
        .send()
        .await
        .expect("no token");
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = http
        .get(format!("{gw}/v1/tenants/other/views/accounts/e2e-1"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("other tenant");
    problem(r, StatusCode::FORBIDDEN).await;
    let r = http
        .get(format!("{gw}/v1/tenants/acme/views/accounts/nobody"))
        .header("authorization", &auth)
        .send()
        .await
        .expect("absent");
    problem(r, StatusCode::NOT_FOUND).await;
    let r = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/e2e-1/commands"
        ))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(vec![b' '; 1_100_000])
        .send()
        .await
        .expect("huge");
    problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    let r = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/e2e-1/commands"
        ))
        .header("authorization", &auth)
        .json(&json!({"type": "withdraw", "payload": {"amount": 1_000_000}}))
        .send()
        .await
        .expect("overdraft");
    let body = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(body["type"], "urn:nats-es:problem:insufficient-funds");

    // one instance of each service dies: the API keeps working
    stack.kill("aggregate-1").await;
    stack.kill("projection-1").await;
    let mut seen_positions = HashSet::new();
    for n in 0..6 {
        let r: Value = http
            .post(format!(
                "{gw}/v1/tenants/acme/aggregates/account/e2e-1/commands"
            ))
            .header("authorization", &auth)
            .json(&json!({"type": "deposit", "payload": {"amount": 1}}))
            .send()
            .await
            .expect("deposit after kill")
            .json()
            .await
            .expect("json");
        let p = r["position"]
            .as_u64()
            .unwrap_or_else(|| panic!("deposit {n} failed: {r}"));
        seen_positions.insert(p);
        // the surviving projection instance takes the pin over within seconds; until then a
        // read-your-writes query answers 503 with Retry-After, which a client retries
        let started = std::time::Instant::now();
        let v = loop {
            let v = http
                .get(format!(
                    "{gw}/v1/tenants/acme/views/accounts/e2e-1?min_position={p}"
                ))
                .header("authorization", &auth)
                .send()
                .await
                .expect("view after kill");
            if v.status() != StatusCode::SERVICE_UNAVAILABLE {
                break v;
            }
            assert!(v.headers().contains_key("retry-after"));
            assert!(
                started.elapsed() < Duration::from_secs(45),
                "no take-over within 45 s"
            );
        };
        assert_eq!(v.status(), 200, "view read {n} after kill");
        let v: Value = v.json().await.expect("json");
        assert_eq!(v["document"]["balance"], 251 + n, "{v}");
    }
    assert_eq!(seen_positions.len(), 6);
}

/// The stack's nats-server answers on its client port.
fn async_nats_free_check(url: &str) -> bool {
    let addr = url.trim_start_matches("nats://");
    std::net::TcpStream::connect(addr).is_ok()
}
