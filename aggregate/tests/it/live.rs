//! Live feeds (Server-Sent Events) on a real port against a real nats-server: history then live,
//! resume with `Last-Event-ID`, the tenant feed's confinement and filters, bad positions, the
//! per-instance limit, slow clients, shutdown, and no server-side consumer left behind.

use std::time::Duration;

use platform::auth::{Authenticator, mint_hs256};
use platform::http::HttpSettings;
use serde_json::json;
use testkit::NatsServer;
use testkit::sse::{Feed, Sse};
use tokio_util::sync::CancellationToken;

use crate::support::*;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";
const WITHIN: Duration = Duration::from_secs(20);

/// An aggregate instance serving HTTP on a loopback port until dropped.
struct Served {
    base: String,
    app_client: async_nats::Client,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn serve(server: &NatsServer, extra: &[&str]) -> Served {
    let app = aggregate::start(&config(server, extra), aggregates())
        .await
        .expect("start aggregate");
    let settings = HttpSettings {
        body_limit: 1 << 20,
        request_timeout: Duration::from_secs(2),
    };
    let router = aggregate::app(&app, Authenticator::hs256(SECRET), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = CancellationToken::new();
    let app_client = app.core.client.clone();
    let task = tokio::spawn(platform::service::serve(
        listener,
        router,
        app,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    Served {
        base,
        app_client,
        shutdown,
        task,
    }
}

fn token(tenants: &[&str]) -> String {
    let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
    mint_hs256(SECRET, "test", &tenants, 600).expect("token")
}

fn versions(events: &[Sse]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data["event"]["version"].as_u64().expect("version"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_feed_sends_history_then_live_and_resumes_after_last_event_id() {
    let server = NatsServer::start();
    let served = serve(&server, &[]).await;
    let app = instance(&server).await;
    let a = account("acme", "live-1");
    send(&app, &a, open()).await;
    send(&app, &a, cmd("deposit", json!({"amount": 1}))).await;
    send(&app, &a, cmd("deposit", json!({"amount": 2}))).await;
    let tok = token(&["acme"]);
    let url = format!(
        "{}/v1/tenants/acme/aggregates/account/live-1/events?follow=true",
        served.base
    );

    let mut feed = Feed::start(&url, &tok, None).await;
    let history = feed.take(3).await;
    assert_eq!(versions(&history), [1, 2, 3]);
    for e in &history {
        assert_eq!(
            e.id.as_deref(),
            Some(e.data["position"].to_string().as_str()),
            "id = stream position"
        );
    }
    send(&app, &a, cmd("deposit", json!({"amount": 3}))).await;
    send(&app, &a, cmd("deposit", json!({"amount": 4}))).await;
    let live = feed.take(2).await;
    assert_eq!(versions(&live), [4, 5]);
    let last = live[1].id.clone().expect("id");
    drop(feed);

    // appended while disconnected; the reconnect resumes right after the last id seen
    send(&app, &a, cmd("deposit", json!({"amount": 5}))).await;
    let mut feed = Feed::start(&url, &tok, Some(&last)).await;
    assert_eq!(versions(&feed.take(1).await), [6]);

    // from_version skips the start of the history
    let mut feed = Feed::start(&format!("{url}&from_version=5"), &tok, None).await;
    assert_eq!(versions(&feed.take(2).await), [5, 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_feed_carries_only_its_tenant_in_stream_order_and_filters_by_type() {
    let server = NatsServer::start();
    let served = serve(&server, &[]).await;
    let app = instance(&server).await;
    let mut acme_positions = Vec::new();
    for (tenant, id) in [
        ("acme", "a1"),
        ("globex", "g1"),
        ("acme", "a2"),
        ("globex", "g2"),
    ] {
        let out = send(&app, &account(tenant, id), open()).await;
        if tenant == "acme" {
            acme_positions.push(out.position);
        }
    }
    let ledger = shared::AggregateAddress::new(
        "acme".parse().expect("t"),
        "ledger".parse().expect("ty"),
        "l1".parse().expect("id"),
    );
    let ledger_out = send(&app, &ledger, cmd("post", json!({"lines": ["x", "y"]}))).await;
    let tok = token(&["acme"]);
    let base = format!("{}/v1/tenants/acme/events", served.base);

    // the history only (no follow): ends at the stream's end
    let mut feed = Feed::start(&base, &tok, None).await;
    let mut seen = Vec::new();
    while let Some(e) = feed.next().await {
        assert_eq!(e.data["event"]["tenant_id"], "acme", "{:?}", e.data);
        seen.push(e.data["position"].as_u64().expect("position"));
    }
    let mut want = acme_positions.clone();
    want.extend(
        ledger_out
            .events
            .iter()
            .enumerate()
            .map(|(i, _)| ledger_out.position - (ledger_out.events.len() - 1 - i) as u64),
    );
    assert_eq!(seen, want, "acme's events, in stream order");

    let types = |q: &'static str| {
        let base = base.clone();
        let tok = tok.clone();
        async move {
            let mut feed = Feed::start(&format!("{base}?types={q}"), &tok, None).await;
            let mut out = Vec::new();
            while let Some(e) = feed.next().await {
                out.push(
                    e.data["event"]["aggregate_type"]
                        .as_str()
                        .expect("type")
                        .to_owned(),
                );
            }
            out
        }
    };
    assert_eq!(types("account").await, ["account", "account"]);
    assert!(types("ledger").await.iter().all(|t| t == "ledger"));
    assert_eq!(types("account,ledger").await.len(), seen.len());

    // from_position starts there
    let mut feed = Feed::start(
        &format!("{base}?from_position={}", acme_positions[1]),
        &tok,
        None,
    )
    .await;
    assert_eq!(feed.take(1).await[0].data["position"], acme_positions[1]);

    // live: the follower sees acme's new event and not globex's
    let mut feed = Feed::start(
        &format!("{base}?follow=true&types=account"),
        &tok,
        Some(&acme_positions[1].to_string()),
    )
    .await;
    send(&app, &account("globex", "g3"), open()).await;
    let out = send(&app, &account("acme", "a3"), open()).await;
    let next = feed.take(1).await;
    assert_eq!(next[0].data["position"], out.position);
    assert_eq!(next[0].data["event"]["aggregate_id"], "a3");

    // a stored message that is not an event is shown as such, in its place, never skipped
    let js = async_nats::jetstream::new(app.core.client.clone());
    let bad = js
        .publish("tenant.acme.aggregate.account.zz", "not json".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    let next = feed.take(1).await;
    assert_eq!(next[0].event.as_deref(), Some("corrupt"), "{next:?}");
    assert_eq!(next[0].data["position"], bad.sequence);

    // another tenant's token: 403 before anything is read
    let resp = Feed::open(&base, &token(&["globex"]), None).await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_positions_and_flags_are_problems() {
    let server = NatsServer::start();
    let served = serve(&server, &[]).await;
    let app = instance(&server).await;
    send(&app, &account("acme", "b1"), open()).await;
    let tok = token(&["acme"]);
    let agg = format!(
        "{}/v1/tenants/acme/aggregates/account/b1/events?follow=true",
        served.base
    );
    let tenant = format!("{}/v1/tenants/acme/events", served.base);
    for (url, last_event_id) in [
        (agg.clone(), Some("abc")),
        (agg.clone(), Some("-1")),
        (tenant.clone(), Some("1.5")),
        (format!("{tenant}?from_position=abc"), None),
        (format!("{tenant}?from_position=1000"), None),
        (format!("{tenant}?follow=maybe"), None),
        (format!("{tenant}?types=a.b"), None),
        (format!("{tenant}?types=*"), None),
        (agg.replace("follow=true", "follow=yes"), None),
    ] {
        let resp = Feed::open(&url, &tok, last_event_id).await;
        assert_eq!(resp.status(), 400, "{url} {last_event_id:?}");
        assert_eq!(
            resp.headers()["content-type"].to_str().expect("ascii"),
            "application/problem+json",
            "{url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_limit_refuses_with_retry_after_and_frees_a_slot_when_a_client_goes() {
    let server = NatsServer::start();
    let served = serve(&server, &["--sse-max-streams", "1"]).await;
    let tok = token(&["acme"]);
    let url = format!("{}/v1/tenants/acme/events?follow=true", served.base);
    let first = Feed::start(&url, &tok, None).await;
    let refused = Feed::open(&url, &tok, None).await;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    drop(first);
    slot_freed(&url, &tok, "the slot of a gone client is freed").await;
}

/// Waits until a feed of `url` opens (200): the only slot is free again.
async fn slot_freed(url: &str, tok: &str, what: &str) {
    testkit::eventually(what, WITHIN, async || {
        match Feed::open(url, tok, None).await.status() {
            reqwest::StatusCode::OK => Ok(()),
            other => Err(other),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_and_its_memory_is_bounded() {
    let server = NatsServer::start();
    let served = serve(
        &server,
        &[
            "--sse-max-streams",
            "1",
            "--sse-buffer-events",
            "4",
            "--sse-slow-client-secs",
            "1",
        ],
    )
    .await;
    // far more than socket buffers hold: 4 000 stored messages of ~4 KiB
    let js = async_nats::jetstream::new(served.app_client.clone());
    let body = bytes::Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)));
    let mut acks = Vec::new();
    for _ in 0..4000 {
        acks.push(
            js.publish("tenant.acme.aggregate.account.slow", body.clone())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let tok = token(&["acme"]);
    let url = format!("{}/v1/tenants/acme/events?follow=true", served.base);
    let stalled = Feed::open(&url, &tok, None).await;
    assert_eq!(stalled.status(), 200);
    // the client never reads: the server gives up on it and frees its slot
    slot_freed(&url, &tok, "a client that does not read loses its feed").await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_feed_and_no_consumer_is_left_behind() {
    let server = NatsServer::start();
    let served = serve(&server, &[]).await;
    let app = instance(&server).await;
    send(&app, &account("acme", "s1"), open()).await;
    let before = consumers(&app.core.client).await.len();
    let tok = token(&["acme"]);
    let url = format!("{}/v1/tenants/acme/events?follow=true", served.base);
    for _ in 0..1000 {
        let mut feed = Feed::start(&url, &tok, None).await;
        feed.take(1).await;
    }
    assert_eq!(
        consumers(&app.core.client).await.len(),
        before,
        "a feed made a consumer"
    );

    let mut open = Feed::start(&url, &tok, None).await;
    open.take(1).await;
    served.shutdown.cancel();
    assert!(open.next().await.is_none(), "the feed ends at shutdown");
    tokio::time::timeout(WITHIN, served.task)
        .await
        .expect("the service stops within the grace")
        .expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_feed_carries_heartbeat_comments() {
    let server = NatsServer::start();
    let served = serve(&server, &["--sse-heartbeat-secs", "1"]).await;
    let tok = token(&["acme"]);
    let url = format!("{}/v1/tenants/acme/events?follow=true", served.base);
    let mut feed = Feed::start(&url, &tok, None).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !feed
        .buffered()
        .lines()
        .any(|l| l.starts_with(':') && l.contains("heartbeat"))
    {
        assert!(
            tokio::time::timeout_at(deadline, feed.read_more())
                .await
                .expect("a heartbeat within the deadline"),
            "the feed stays open"
        );
    }
}
