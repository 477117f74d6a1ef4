//! Live feeds of views (Server-Sent Events) on a real port against a real nats-server: a
//! document's versions, a tenant's list, resume with `Last-Event-ID`, deletions, tenant
//! confinement, the per-instance limit, shutdown, and nothing left behind.

use std::sync::Arc;
use std::time::Duration;

use projection::view::{EventSpec, Fold, View, ViewError};
use serde_json::{Value, json};
use shared::{EventEnvelope, ViewName};
use testkit::NatsServer;
use testkit::sse::{Feed, Sse};

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(30);

/// Serves the instance's router on a loopback port; the base URL.
async fn listen(p: &Instance) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = p.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

fn id(e: &Sse) -> u64 {
    e.id.as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("an id: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_feed_sends_the_current_version_then_each_new_one_and_resumes() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection(&server).await;
    let base = listen(&p).await;
    let a = account("acme", "doc-1");
    open(&agg, &a).await;
    let first = send(&agg, &a, cmd("deposit", json!({"amount": 5})))
        .await
        .position;
    p.caught_up("accounts", first, WITHIN).await;
    let url = format!("{base}/v1/tenants/acme/views/accounts/doc-1?follow=true");
    let mut feed = Feed::start(&url, "t", None).await;
    let e = feed.next().await.expect("current version");
    assert_eq!(e.event, None, "{e:?}");
    assert_eq!(id(&e), first);
    assert_eq!(e.data["position"], first);
    assert_eq!(e.data["key"], "doc-1");
    assert_eq!(e.data["document"]["balance"], 5);
    assert!(e.data["document"].get("_position").is_none(), "{e:?}");

    // each new version, in order, with its position
    let mut last = first;
    for i in 1..=5 {
        let pos = send(&agg, &a, cmd("deposit", json!({"amount": 1})))
            .await
            .position;
        let e = feed.next().await.expect("new version");
        assert_eq!(id(&e), pos, "{e:?}");
        assert_eq!(e.data["document"]["balance"], 5 + i);
        last = pos;
    }
    drop(feed);

    // changed while away: a reconnect with Last-Event-ID gets the latest version, nothing older
    let mut latest = last;
    for _ in 0..3 {
        latest = send(&agg, &a, cmd("deposit", json!({"amount": 1})))
            .await
            .position;
    }
    p.caught_up("accounts", latest, WITHIN).await;
    let mut feed = Feed::start(&url, "t", Some(&last.to_string())).await;
    let e = feed.next().await.expect("resumed");
    assert_eq!(id(&e), latest, "{e:?}");
    assert_eq!(e.data["document"]["balance"], 13);
    drop(feed);

    // up to date: nothing until the next change, which is the next event
    let mut feed = Feed::start(&url, "t", Some(&latest.to_string())).await;
    let next = send(&agg, &a, cmd("withdraw", json!({"amount": 3})))
        .await
        .position;
    let e = feed.next().await.expect("next change");
    assert_eq!(id(&e), next, "{e:?}");
    assert_eq!(e.data["document"]["balance"], 10);

    // a document that does not exist yet: the feed waits for it
    let b = account("acme", "doc-2");
    let url = format!("{base}/v1/tenants/acme/views/accounts/doc-2?follow=true");
    let mut feed = Feed::start(&url, "t", None).await;
    let opened = open(&agg, &b).await.position;
    let e = feed.next().await.expect("created");
    assert_eq!(id(&e), opened, "{e:?}");
    assert_eq!(e.data["document"]["status"], "open");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_feed_sends_the_documents_a_sync_then_every_change_of_its_tenant_only() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection(&server).await;
    let base = listen(&p).await;
    let mut last = 0;
    for id in ["l1", "l2", "l3"] {
        last = open(&agg, &account("acme", id)).await.position;
    }
    p.caught_up("tenant-summary", last, WITHIN).await;
    let url = format!("{base}/v1/tenants/acme/views/tenant-summary?follow=true");
    let mut feed = Feed::start(&url, "t", None).await;
    let snapshot = feed.take(5).await;
    let keys: Vec<&str> = snapshot[..4]
        .iter()
        .map(|e| {
            assert_eq!(e.id, None, "documents of the snapshot carry no id: {e:?}");
            e.data["key"].as_str().expect("key")
        })
        .collect();
    assert_eq!(keys, ["account.l1", "account.l2", "account.l3", "summary"]);
    assert_eq!(snapshot[3].data["document"]["account_count"], 3);
    let sync = &snapshot[4];
    assert_eq!(sync.event.as_deref(), Some("sync"), "{sync:?}");
    assert_eq!(id(sync), last);

    // another tenant's events never show; this tenant's change comes as both its documents,
    // the id on the last one
    open(&agg, &account("other", "o1")).await;
    let pos = send(
        &agg,
        &account("acme", "l2"),
        cmd("deposit", json!({"amount": 7})),
    )
    .await
    .position;
    let change = feed.take(2).await;
    let mut keys: Vec<&str> = change
        .iter()
        .map(|e| {
            assert_eq!(e.data["position"], pos, "{e:?}");
            e.data["key"].as_str().expect("key")
        })
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["account.l2", "summary"]);
    assert_eq!(change[0].id, None, "{change:?}");
    assert_eq!(id(&change[1]), pos);
    // one event at a time: two events applied in one batch leave one summary version, the
    // later one (the resume below shows that)
    let deposit = send(
        &agg,
        &account("acme", "l1"),
        cmd("deposit", json!({"amount": 1})),
    )
    .await
    .position;
    let later = feed.take(2).await;
    assert_eq!(id(&later[1]), deposit, "{later:?}");
    let opened = open(&agg, &account("acme", "l4")).await.position;
    let later = feed.take(2).await;
    assert_eq!(id(&later[1]), opened, "{later:?}");
    let more = [deposit, opened];
    drop(feed);

    // resume after the sync: the changes since, in order, each document in its latest
    // version (the summary, changed by every event, comes once, with the last), no snapshot
    let mut feed = Feed::start(&url, "t", Some(&last.to_string())).await;
    let resumed: Vec<(Option<u64>, String, u64)> = feed
        .take(4)
        .await
        .into_iter()
        .map(|e| {
            assert!(e.event.is_none(), "{e:?}");
            let key = e.data["key"].as_str().expect("key").to_owned();
            let position = e.data["position"].as_u64().expect("position");
            (e.id.map(|i| i.parse().expect("id")), key, position)
        })
        .collect();
    let expected = [
        (Some(pos), "account.l2", pos),
        (Some(more[0]), "account.l1", more[0]),
        (None, "summary", more[1]),
        (Some(more[1]), "account.l4", more[1]),
    ]
    .map(|(id, key, position)| (id, key.to_owned(), position));
    assert_eq!(resumed, expected);
    p.stop().await;
}

/// One document per account, deleted when the account closes.
struct OpenAccounts;

impl View for OpenAccounts {
    fn name(&self) -> ViewName {
        "open-accounts".parse().expect("name")
    }
    fn version(&self) -> u32 {
        1
    }
    fn events(&self) -> Vec<EventSpec> {
        projection::views::account_events()
    }
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        Some(env.aggregate_id.to_string())
    }
    fn apply(&self, _doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        Ok(match env.event_type.as_str() {
            "closed" => Fold::Delete,
            _ => Fold::Set(json!({"open": true})),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deletion_is_an_event_of_both_feeds() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection_with(&server, &[], vec![Arc::new(OpenAccounts)]).await;
    let base = listen(&p).await;
    let a = account("acme", "gone");
    let opened = open(&agg, &a).await.position;
    p.caught_up("open-accounts", opened, WITHIN).await;
    let doc_url = format!("{base}/v1/tenants/acme/views/open-accounts/gone?follow=true");
    let list_url = format!("{base}/v1/tenants/acme/views/open-accounts?follow=true");
    let mut doc = Feed::start(&doc_url, "t", None).await;
    let mut list = Feed::start(&list_url, "t", None).await;
    assert_eq!(id(&doc.next().await.expect("current")), opened);
    assert_eq!(list.take(2).await[1].event.as_deref(), Some("sync"));
    let closed = send(&agg, &a, cmd("close", json!({}))).await.position;
    for feed in [&mut doc, &mut list] {
        let e = feed.next().await.expect("deleted");
        assert_eq!(e.event.as_deref(), Some("deleted"), "{e:?}");
        assert_eq!(id(&e), closed);
        assert_eq!(e.data, json!({"key": "gone", "position": closed}));
    }
    // a deleted document is no document to a new feed: nothing until it exists again
    drop(doc);
    let mut doc = Feed::start(&doc_url, "t", None).await;
    let b = account("acme", "other");
    let other = open(&agg, &b).await.position;
    p.caught_up("open-accounts", other, WITHIN).await;
    let e = list.next().await.expect("the list goes on");
    assert_eq!(id(&e), other);
    // the document feed is still quiet: it ends at shutdown with nothing sent
    p.app.live.close();
    assert!(doc.next().await.is_none(), "a deleted document was sent");
    assert!(list.next().await.is_none(), "shutdown ends every feed");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feeds_are_limited_refuse_bad_input_and_leave_nothing_behind() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let p = projection_with(
        &server,
        &["--sse-max-streams", "1000"],
        projection::default_views(),
    )
    .await;
    let base = listen(&p).await;
    let pos = open(&agg, &account("acme", "x1")).await.position;
    p.caught_up("accounts", pos, WITHIN).await;
    let doc_url = format!("{base}/v1/tenants/acme/views/accounts/x1?follow=true");
    let list_url = format!("{base}/v1/tenants/acme/views/accounts?follow=true");

    // bad input: clear problems
    for (url, last_id, status) in [
        (format!("{list_url}&limit=5"), None, 400),
        (format!("{list_url}&after=x1"), None, 400),
        (doc_url.clone(), Some("not-a-number"), 400),
        (
            format!("{base}/v1/tenants/acme/views/nope/x1?follow=true"),
            None,
            404,
        ),
        (
            format!("{base}/v1/tenants/acme/views/accounts/a*b?follow=true"),
            None,
            400,
        ),
    ] {
        let resp = Feed::open(&url, "t", last_id).await;
        assert_eq!(resp.status(), status, "{url}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{url}"
        );
    }

    // 1 000 feeds opened (every slot taken, the next refused) and dropped
    let mut feeds = Vec::new();
    for i in 0..1000 {
        let url = if i % 2 == 0 { &doc_url } else { &list_url };
        let mut f = Feed::start(url, "t", None).await;
        assert!(f.next().await.is_some());
        feeds.push(f);
    }
    let refused = Feed::open(&doc_url, "t", None).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("problem");
    assert_eq!(body["type"], "urn:nats-es:problem:unavailable", "{body}");
    drop(feeds);
    // every feed noticed its client gone: the gauge is back to 0 (a change wakes them all)
    let gauge = || {
        p.app
            .core
            .metrics
            .render()
            .lines()
            .find(|l| l.starts_with("projection_sse_open_streams"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    send(
        &agg,
        &account("acme", "x1"),
        cmd("deposit", json!({"amount": 1})),
    )
    .await;
    tokio::task::block_in_place(|| {
        testkit::wait_for("every feed ended", WITHIN, || match gauge() {
            0 => Ok(()),
            n => Err(n),
        })
    });
    // no consumer but the views' own durables, no subscription but the instances' own
    let js = async_nats::jetstream::new(p.app.core.client.clone());
    let mut stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.consumer_count, 2, "{info:?}");
    // and the slots are free again
    let mut f = Feed::start(&doc_url, "t", None).await;
    assert!(f.next().await.is_some());
    p.stop().await;
}
