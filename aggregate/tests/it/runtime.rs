//! Commands: races between instances, idempotency, atomic multi-event commands.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aggregate::runtime::CommandError;
use aggregate::store::AppendError;
use serde_json::json;
use shared::{AggregateAddress, CommandId, Version};
use testkit::NatsServer;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_race_withdrawals_without_overdraft_gaps_or_duplicates() {
    let server = NatsServer::start();
    let one = Arc::new(instance(&server).await);
    let two = Arc::new(instance(&server).await);
    let a = account("acme", "race");
    send(&one, &a, open()).await;
    send(&one, &a, cmd("deposit", json!({"amount": 150}))).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for n in 0..200 {
        let app = if n % 2 == 0 { one.clone() } else { two.clone() };
        let a = a.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            match app
                .runtime
                .handle(&a, cmd("withdraw", json!({"amount": 1})))
                .await
            {
                Ok(_) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
                Err(CommandError::Decide(_)) | Err(CommandError::ConflictRetriesExhausted(_)) => {}
                Err(e) => panic!("unexpected error: {e}"),
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let accepted = accepted.load(Ordering::Relaxed);
    // within an instance commands on one aggregate queue; between the two, conflicts are
    // re-decided: with 8 retries every withdrawal up to the balance gets through
    assert_eq!(accepted, 150, "exactly the balance can be withdrawn");
    let events = one.runtime.store().read(&a, 1).await.expect("read");
    let versions: Vec<u64> = events.iter().map(|e| e.event.version.get()).collect();
    assert_eq!(versions, (1..=(2 + accepted as u64)).collect::<Vec<_>>());
    let mut ids: Vec<_> = events.iter().map(|e| e.event.event_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "no duplicate event");
    let state = two.runtime.load(&a).await.expect("load");
    assert_eq!(two.runtime.state_json(&a, &state)["balance"], 0);
}

#[tokio::test]
async fn a_retried_command_returns_the_original_outcome_and_appends_nothing() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "idem");
    send(&app, &a, open()).await;
    let id = CommandId::new_random();
    let mut deposit = cmd("deposit", json!({"amount": 5}));
    deposit.command_id = Some(id);
    let first = send(&app, &a, deposit.clone()).await;
    let again = send(&app, &a, deposit.clone()).await;
    assert_eq!(first, again);
    // same id, other body: 409
    let mut other = deposit.clone();
    other.payload = json!({"amount": 6});
    assert!(matches!(
        app.runtime.handle(&a, other).await,
        Err(CommandError::CommandIdReused(_))
    ));
    // after a restart of every instance
    drop(app);
    let app = instance(&server).await;
    assert_eq!(send(&app, &a, deposit).await, first);
    assert_eq!(
        app.runtime.store().read(&a, 1).await.expect("read").len(),
        2
    );
}

#[tokio::test]
async fn retries_are_recognised_beyond_the_duplicate_window_and_without_the_record() {
    let server = NatsServer::start();
    // a stream with a one-second duplicate window, created before the service starts
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let mut spec = shared::StreamSpec::events(1);
    spec.duplicate_window = std::time::Duration::from_secs(1);
    js.create_stream(platform::nats::stream_config(&spec))
        .await
        .expect("stream");
    let app = instance(&server).await;
    let a = account("acme", "late");
    send(&app, &a, open()).await;
    let mut deposit = cmd("deposit", json!({"amount": 5}));
    deposit.command_id = Some(CommandId::new_random());
    let first = send(&app, &a, deposit.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await; // outlive the window
    assert_eq!(send(&app, &a, deposit.clone()).await, first);
    // even when the outcome record is lost, a cold instance finds the command in the history
    let kv = js
        .get_key_value(aggregate::runtime::COMMANDS_BUCKET)
        .await
        .expect("bucket");
    kv.purge(format!(
        "acme.account.late.{}",
        deposit.command_id.expect("id")
    ))
    .await
    .expect("purge");
    let cold = instance(&server).await;
    assert_eq!(send(&cold, &a, deposit).await, first);
    assert_eq!(
        cold.runtime.store().read(&a, 1).await.expect("read").len(),
        2
    );
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let a = account("acme", "ev");
    send(&app, &a, open()).await;
    let mut c = cmd("deposit", json!({"amount": 1}));
    c.expected_version = Some(Version(1));
    assert_eq!(send(&app, &a, c.clone()).await.version, Version(2));
    assert!(matches!(
        app.runtime.handle(&a, c).await,
        Err(CommandError::VersionConflict {
            expected: Version(1),
            current: Version(2)
        })
    ));
}

/// Round robin behind the gateway: a client that saw version 3 through one instance sends
/// `expected_version: 3` to another whose cached state is still at 2. That state is behind the
/// stream, not the client: the command goes through, and only a really stale expectation is a
/// conflict.
#[tokio::test]
async fn an_expected_version_newer_than_the_cached_state_is_checked_against_the_stream() {
    let server = NatsServer::start();
    let one = instance(&server).await;
    let two = instance(&server).await;
    let a = account("acme", "rr");
    send(&one, &a, open()).await;
    // `two` caches version 2, then `one` appends version 3 behind its back
    assert_eq!(
        send(&two, &a, cmd("deposit", json!({"amount": 1})))
            .await
            .version,
        Version(2)
    );
    assert_eq!(
        send(&one, &a, cmd("deposit", json!({"amount": 1})))
            .await
            .version,
        Version(3)
    );
    let mut c = cmd("deposit", json!({"amount": 1}));
    c.expected_version = Some(Version(3));
    assert_eq!(send(&two, &a, c).await.version, Version(4));
    // a stale expectation is still refused, with the stream's current version
    let mut stale = cmd("deposit", json!({"amount": 1}));
    stale.expected_version = Some(Version(3));
    assert!(matches!(
        one.runtime.handle(&a, stale).await,
        Err(CommandError::VersionConflict {
            expected: Version(3),
            current: Version(4)
        })
    ));
}

fn ledger(id: &str) -> AggregateAddress {
    AggregateAddress::new(
        "acme".parse().expect("t"),
        "ledger".parse().expect("ty"),
        id.parse().expect("id"),
    )
}

#[tokio::test]
async fn a_multi_event_command_commits_atomically() {
    let server = NatsServer::start();
    assert!(
        server.version() >= (2, 12, 0),
        "atomic batch publish needs nats-server 2.12"
    );
    let app = instance(&server).await;
    let l = ledger("l1");
    let out = send(&app, &l, cmd("post", json!({"lines": ["a", "b", "c"]}))).await;
    assert_eq!(out.version, Version(3));
    assert_eq!(out.events.len(), 3);
    let stored = app.runtime.store().read(&l, 1).await.expect("read");
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2].seq, out.position);
    // all or nothing: a batch whose expected sequence is stale appends none of its events
    let stale: Vec<_> = out
        .events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.event_id = shared::EventId::new();
            e.version = Version(e.version.get() + 3);
            e
        })
        .collect();
    let err = app
        .runtime
        .store()
        .append(&l, stored[0].seq, &stale)
        .await
        .expect_err("stale batch");
    assert!(matches!(err, AppendError::Conflict), "{err}");
    assert_eq!(
        app.runtime.store().read(&l, 1).await.expect("read").len(),
        3
    );
    // and the runtime keeps working after it
    let out = send(&app, &l, cmd("post", json!({"lines": ["d", "e"]}))).await;
    assert_eq!(out.version, Version(5));
}

#[tokio::test]
async fn multi_event_commands_are_refused_without_atomic_batches() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut spec = shared::StreamSpec::events(1);
    spec.allow_atomic = false;
    js.create_stream(platform::nats::stream_config(&spec))
        .await
        .expect("stream");
    let app = instance(&server).await;
    let l = ledger("l2");
    let err = app
        .runtime
        .handle(&l, cmd("post", json!({"lines": ["a", "b"]})))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, CommandError::Append(AppendError::AtomicUnsupported)),
        "{err}"
    );
    assert!(
        app.runtime
            .store()
            .read(&l, 1)
            .await
            .expect("read")
            .is_empty()
    );
    // single-event commands still work
    send(&app, &l, cmd("post", json!({"lines": ["a"]}))).await;
}

#[tokio::test]
async fn an_incompatible_stream_stops_start_up_with_the_difference_named() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: shared::STREAM_NAME.to_owned(),
        subjects: vec!["other.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let err = aggregate::start(&config(&server, &[]), aggregates())
        .await
        .err()
        .expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("subjects") && msg.contains("other.>"), "{msg}");
    // and it was not rewritten
    let info = js
        .get_stream(shared::STREAM_NAME)
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.subjects, ["other.>"]);
}
