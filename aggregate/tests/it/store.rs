//! Reads: the consumer path's hygiene and bounds, direct get, corrupt histories.

use std::time::{Duration, Instant};

use aggregate::store::{AppendError, LoadError, LoadStrategy, PublishFailure, ReadPath};
use async_nats::jetstream::context::PublishErrorKind;
use futures::future::join_all;
use serde_json::json;
use testkit::NatsServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_load_concurrently_without_collisions_or_leftover_consumers() {
    let server = NatsServer::start();
    let apps = [
        instance(&server).await,
        instance(&server).await,
        instance(&server).await,
    ];
    // five aggregates with a little history
    for i in 0..5 {
        let a = account("acme", &format!("c{i}"));
        send(&apps[0], &a, open()).await;
        send(&apps[0], &a, cmd("deposit", json!({"amount": 10}))).await;
    }
    let mut loads = Vec::new();
    for n in 0..500 {
        let app = &apps[n % 3];
        let addr = account("acme", &format!("c{}", n % 5));
        loads.push(async move {
            app.runtime
                .store()
                .read_with(&addr, 1, LoadStrategy::Consumer)
                .await
        });
    }
    let results = join_all(loads).await;
    let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "errors: {errors:?}");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().map(Vec::len).ok() == Some(2))
    );
    let client = apps[0].core.client.clone();
    testkit::eventually(
        "no fetch consumer left behind",
        Duration::from_secs(10),
        async || {
            let left = consumers(&client).await;
            if left.is_empty() { Ok(()) } else { Err(left) }
        },
    )
    .await;
}

#[tokio::test]
async fn every_strategy_reads_the_same_history() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "long");
    send(&app, &a, open()).await;
    for _ in 0..2_500 {
        send(&app, &a, cmd("deposit", json!({"amount": 1}))).await;
    }
    let store = app.runtime.store();
    let mut lens = Vec::new();
    for s in [
        LoadStrategy::Direct,
        LoadStrategy::Consumer,
        LoadStrategy::Auto,
    ] {
        let events = store.read_with(&a, 1, s).await.expect("read");
        let versions: Vec<u64> = events.iter().map(|e| e.event.version.get()).collect();
        assert_eq!(versions, (1..=2_501).collect::<Vec<_>>(), "{s:?}");
        lens.push(events.len());
        // from the middle
        let tail = store
            .read_with(&a, events[1000].seq, s)
            .await
            .expect("tail");
        assert_eq!(
            tail.first().map(|e| e.event.version.get()),
            Some(1001),
            "{s:?}"
        );
    }
    assert_eq!(lens, [2_501, 2_501, 2_501]);
}

#[tokio::test]
async fn auto_reads_a_history_of_up_to_a_batch_by_direct_get_and_a_longer_one_by_consumer() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let store = app.runtime.store();
    let batch = store.settings().direct_batch as u64;
    // `fits` holds exactly one batch of events, `longer` one more
    let (fits, longer) = (account("acme", "fits"), account("acme", "longer"));
    for (address, events) in [(&fits, batch), (&longer, batch + 1)] {
        send(&app, address, open()).await;
        for _ in 1..events {
            send(&app, address, cmd("deposit", json!({"amount": 1}))).await;
        }
    }
    let read = |address, from_seq| store.read_reporting(address, from_seq, LoadStrategy::Auto);
    let versions = |events: &[aggregate::store::Stored]| -> Vec<u64> {
        events.iter().map(|e| e.event.version.get()).collect()
    };
    let short = read(&fits, 1).await.expect("read");
    assert_eq!(short.path, ReadPath::Direct);
    assert_eq!(versions(&short.events), (1..=batch).collect::<Vec<_>>());
    let long = read(&longer, 1).await.expect("read");
    assert_eq!(long.path, ReadPath::Consumer);
    assert_eq!(versions(&long.events), (1..=batch + 1).collect::<Vec<_>>());
    // what counts is the length from where the read starts: one event less fits a batch
    let tail = read(&longer, long.events[1].seq).await.expect("read");
    assert_eq!(tail.path, ReadPath::Direct);
    assert_eq!(versions(&tail.events), (2..=batch + 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn fetch_of_an_empty_aggregate_returns_promptly() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "nobody");
    for s in [
        LoadStrategy::Direct,
        LoadStrategy::Consumer,
        LoadStrategy::Auto,
    ] {
        let started = Instant::now();
        let events = app.runtime.store().read_with(&a, 1, s).await.expect("read");
        assert!(events.is_empty());
        assert!(
            started.elapsed() < app.runtime.store().settings().idle_timeout,
            "{s:?} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn fetch_when_the_server_stops_fails_within_the_deadline() {
    let mut server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "x");
    send(&app, &a, open()).await;
    let stored = app.runtime.store().read(&a, 1).await.expect("read");
    server.kill();
    let deadline = app.runtime.store().settings().deadline;
    for s in [LoadStrategy::Direct, LoadStrategy::Consumer] {
        let started = Instant::now();
        let r = app.runtime.store().read_with(&a, 1, s).await;
        assert!(
            matches!(r, Err(LoadError::Timeout { .. } | LoadError::Nats(_))),
            "{s:?} read with the server down: {r:?}"
        );
        assert!(
            started.elapsed() <= deadline + Duration::from_secs(1),
            "{s:?} took {:?}",
            started.elapsed()
        );
    }
    // an append whose outcome is unknown carries the client's typed error, by kind
    let mut event = stored[0].event.clone();
    event.event_id = shared::EventId::new();
    event.version = shared::Version(2);
    let err = app
        .runtime
        .store()
        .append(&a, stored[0].seq, &[event])
        .await
        .expect_err("append with the server down");
    let AppendError::Nats(PublishFailure::JetStream(e)) = &err else {
        panic!("not a typed publish failure: {err:?}");
    };
    assert!(
        matches!(
            e.kind(),
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_foreign_message_on_an_aggregate_subject_fails_the_load_clearly() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "forged");
    send(&app, &a, open()).await;
    let js = async_nats::jetstream::new(app.core.client.clone());
    js.publish(a.subject(), "garbage".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    for s in [LoadStrategy::Direct, LoadStrategy::Consumer] {
        let err = app
            .runtime
            .store()
            .read_with(&a, 1, s)
            .await
            .expect_err("corrupt");
        assert!(
            matches!(err, LoadError::Corrupt { seq: 2, .. }),
            "{s:?}: {err}"
        );
    }
    // a forged version is caught too
    let b = account("acme", "forged-version");
    send(&app, &b, open()).await;
    let mut forged = app.runtime.store().read(&b, 1).await.expect("read")[0]
        .event
        .clone();
    forged.version = shared::Version(7);
    js.publish(
        b.subject(),
        serde_json::to_vec(&forged).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
    let err = app.runtime.load(&b).await.err().expect("corrupt");
    assert!(
        err.to_string().contains("version 7 does not follow 1"),
        "{err}"
    );
}
