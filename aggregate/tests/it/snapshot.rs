//! Snapshots: a cache of the history, never the truth.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aggregate::account::Account;
use aggregate::domain::{DynAggregate, snapshotted};
use aggregate::runtime::{CommandError, CommandRequest};
use aggregate::snapshot::{SNAPSHOTS_BUCKET, SnapshotRecord, snapshot_key};
use proptest::prelude::*;
use serde_json::{Value, json};
use shared::{AggregateAddress, Version};
use testkit::NatsServer;

use crate::support::*;

/// An instance serving `account` as given (with or without snapshots), snapshots every `every`.
async fn instance_with(
    server: &NatsServer,
    account: Arc<dyn DynAggregate>,
    every: Option<u64>,
) -> aggregate::App {
    let every = every.map(|n| format!("account={n}"));
    let mut extra = Vec::new();
    if let Some(e) = &every {
        extra.extend(["--snapshot-every", e.as_str()]);
    }
    aggregate::start(&config(server, &extra), vec![account])
        .await
        .expect("start aggregate")
}

async fn bucket(app: &aggregate::App) -> async_nats::jetstream::kv::Store {
    async_nats::jetstream::new(app.core.client.clone())
        .get_key_value(SNAPSHOTS_BUCKET)
        .await
        .expect("snapshot bucket")
}

/// The stored snapshot of `a`, if there is one that decodes.
async fn stored_snapshot(app: &aggregate::App, a: &AggregateAddress) -> Option<SnapshotRecord> {
    let bytes = bucket(app).await.get(snapshot_key(a)).await.expect("get")?;
    serde_json::from_slice(&bytes).ok()
}

/// The value of one counter line of the instance's metrics (0 if absent).
fn counter(app: &aggregate::App, line_prefix: &str) -> f64 {
    app.core
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn loads_from(app: &aggregate::App, source: &str) -> f64 {
    counter(
        app,
        &format!("aggregate_aggregate_loads_total{{source=\"{source}\"}}"),
    )
}

fn ignored(app: &aggregate::App, reason: &str) -> f64 {
    counter(
        app,
        &format!("aggregate_snapshots_ignored_total{{reason=\"{reason}\"}}"),
    )
}

/// Opens `a` and deposits 1 `n` times; returns the final balance.
async fn history(app: &aggregate::App, a: &AggregateAddress, n: usize) -> i64 {
    send(app, a, open()).await;
    for _ in 0..n {
        send(app, a, cmd("deposit", json!({"amount": 1}))).await;
    }
    n as i64
}

async fn wait_for_snapshot(app: &aggregate::App, a: &AggregateAddress, at_least: u64) {
    testkit::eventually(
        format!("a snapshot at version >= {at_least}"),
        Duration::from_secs(10),
        async || match stored_snapshot(app, a).await {
            Some(r) if r.version.get() >= at_least => Ok(()),
            other => Err(other),
        },
    )
    .await;
}

async fn balance(app: &aggregate::App, a: &AggregateAddress) -> (Value, Version) {
    let loaded = app.runtime.load(a).await.expect("load");
    (
        app.runtime.state_json(a, &loaded)["balance"].clone(),
        loaded.version,
    )
}

#[tokio::test]
async fn a_cold_load_uses_the_snapshot_and_reads_only_the_tail() {
    let server = NatsServer::start();
    let app = instance_with(&server, snapshotted(Account), Some(10)).await;
    let a = account("acme", "snap");
    let expected = history(&app, &a, 24).await;
    wait_for_snapshot(&app, &a, 20).await;
    let cold = instance_with(&server, snapshotted(Account), Some(10)).await;
    assert_eq!(balance(&cold, &a).await, (json!(expected), Version(25)));
    assert_eq!(loads_from(&cold, "snapshot"), 1.0);
    assert_eq!(loads_from(&cold, "stream"), 0.0);
    // and commands go on from there
    let out = send(&cold, &a, cmd("withdraw", json!({"amount": 4}))).await;
    assert_eq!(out.version, Version(26));
    assert_eq!(balance(&cold, &a).await.0, json!(expected - 4));
}

#[tokio::test]
async fn a_corrupted_snapshot_is_ignored() {
    let server = NatsServer::start();
    let app = instance_with(&server, snapshotted(Account), Some(5)).await;
    let a = account("acme", "corrupt");
    let expected = history(&app, &a, 12).await;
    wait_for_snapshot(&app, &a, 10).await;
    let kv = bucket(&app).await;
    for garbage in [
        &b"not json"[..],
        br#"{"schema":1,"version":10,"seq":11,"state":{"balance":"lots"}}"#,
    ] {
        kv.put(snapshot_key(&a), garbage.to_vec().into())
            .await
            .expect("put");
        let cold = instance_with(&server, snapshotted(Account), Some(5)).await;
        assert_eq!(balance(&cold, &a).await, (json!(expected), Version(13)));
        assert_eq!(ignored(&cold, "undecodable"), 1.0);
        assert_eq!(loads_from(&cold, "stream"), 1.0);
        // the load that ignored it wrote a good one in its place
        wait_for_snapshot(&cold, &a, 13).await;
    }
}

#[tokio::test]
async fn a_state_schema_bump_invalidates_old_snapshots() {
    let server = NatsServer::start();
    let app = instance_with(&server, snapshotted(Account), Some(5)).await;
    let a = account("acme", "schema");
    let expected = history(&app, &a, 7).await;
    wait_for_snapshot(&app, &a, 5).await;
    // a snapshot that is valid for the stream (the covered event is there) but whose state the
    // current schema would not produce: the only thing that can tell is the schema version
    let mut forged = stored_snapshot(&app, &a).await.expect("snapshot");
    forged.state["balance"] = json!(999_999);
    bucket(&app)
        .await
        .put(
            snapshot_key(&a),
            serde_json::to_vec(&forged).expect("json").into(),
        )
        .await
        .expect("put");
    // the same schema believes it (that is what makes it a cache worth having) ...
    let same = instance_with(&server, snapshotted(Account), None).await;
    let tail = 8 - forged.version.get() as i64;
    assert_eq!(balance(&same, &a).await.0, json!(999_999 + tail));
    // ... a bumped schema ignores it and reads the history
    let bumped = instance_with(&server, snapshotted(AccountV2), None).await;
    assert_eq!(balance(&bumped, &a).await, (json!(expected), Version(8)));
    assert_eq!(ignored(&bumped, "schema"), 1.0);
    assert_eq!(loads_from(&bumped, "snapshot"), 0.0);
}

#[tokio::test]
async fn a_snapshot_claiming_events_the_stream_does_not_have_is_ignored() {
    let server = NatsServer::start();
    let app = instance_with(&server, snapshotted(Account), Some(1_000)).await;
    let a = account("acme", "claims");
    let expected = history(&app, &a, 6).await;
    let events = app.runtime.store().read(&a, 1).await.expect("read");
    let kv = bucket(&app).await;
    let state = json!({"status": "open", "owner": "Ada", "currency": "EUR", "balance": 999_999});
    for (version, seq) in [
        // beyond the end of the stream
        (500, 1_000_000),
        // a real sequence of this aggregate, but another version
        (3, events[5].seq),
        // a sequence that is not this aggregate's event
        (2, events[1].seq + 1_000),
    ] {
        let record = SnapshotRecord {
            schema: 1,
            version: Version(version),
            seq,
            state: state.clone(),
        };
        kv.put(
            snapshot_key(&a),
            serde_json::to_vec(&record).expect("json").into(),
        )
        .await
        .expect("put");
        let cold = instance_with(&server, snapshotted(Account), Some(1_000)).await;
        assert_eq!(
            balance(&cold, &a).await,
            (json!(expected), Version(7)),
            "snapshot claiming version {version} at {seq}"
        );
        assert_eq!(ignored(&cold, "sequence"), 1.0, "{version} at {seq}");
    }
}

/// One step of a random session on one account.
#[derive(Debug, Clone)]
enum Step {
    Open,
    Deposit(i64),
    Withdraw(i64),
    Close,
    /// A deposit with an `expected_version` one behind.
    StaleDeposit,
    /// Every instance replaced (caches gone).
    Restart,
    /// Every snapshot of the account deleted.
    DeleteSnapshots,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Open),
        6 => (1i64..50).prop_map(Step::Deposit),
        4 => (1i64..80).prop_map(Step::Withdraw),
        1 => Just(Step::Close),
        1 => Just(Step::StaleDeposit),
        2 => Just(Step::Restart),
        1 => Just(Step::DeleteSnapshots),
    ]
}

/// What a command answered, without what differs between two aggregates (ids, times, stream
/// positions).
type Answer = Result<(u64, Vec<(String, Value)>), String>;

async fn answer(app: &aggregate::App, a: &AggregateAddress, request: CommandRequest) -> Answer {
    match app.runtime.handle(a, request).await {
        Ok(out) => Ok((
            out.version.get(),
            out.events
                .into_iter()
                .map(|e| (e.event_type, e.payload))
                .collect(),
        )),
        Err(e @ (CommandError::Decide(_) | CommandError::VersionConflict { .. })) => {
            Err(e.to_string())
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn results_are_identical_with_and_without_snapshots() {
    let rt = tokio::runtime::Runtime::new().expect("tokio");
    let server = NatsServer::start();
    let case = AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 20,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(step(), 1..40), |steps| {
            let n = case.fetch_add(1, Ordering::Relaxed);
            rt.block_on(async {
                let with_snapshots = || instance_with(&server, snapshotted(Account), Some(3));
                let without = || instance_with(&server, Arc::new(Account), None);
                let mut ours = with_snapshots().await;
                let mut plain = without().await;
                let a = account("snap", &format!("c{n}"));
                let b = account("plain", &format!("c{n}"));
                let both = |request: CommandRequest| (request.clone(), request);
                for s in &steps {
                    let (x, y) = match s {
                        Step::Open => both(open()),
                        Step::Deposit(n) => both(cmd("deposit", json!({"amount": n}))),
                        Step::Withdraw(n) => both(cmd("withdraw", json!({"amount": n}))),
                        Step::Close => both(cmd("close", json!({}))),
                        Step::StaleDeposit => {
                            let (_, version) = balance(&plain, &b).await;
                            let mut c = cmd("deposit", json!({"amount": 1}));
                            c.expected_version = Some(Version(version.get().saturating_sub(1)));
                            both(c)
                        }
                        Step::Restart => {
                            ours = with_snapshots().await;
                            plain = without().await;
                            continue;
                        }
                        Step::DeleteSnapshots => {
                            bucket(&ours)
                                .await
                                .purge(snapshot_key(&a))
                                .await
                                .expect("purge");
                            continue;
                        }
                    };
                    prop_assert_eq!(
                        answer(&ours, &a, x).await,
                        answer(&plain, &b, y).await,
                        "{:?}",
                        s
                    );
                }
                // finally a cold load that uses a snapshot whenever one is due
                let (state, version) = {
                    let l = plain.runtime.load(&b).await.expect("load");
                    (plain.runtime.state_json(&b, &l), l.version)
                };
                if version.get() >= 3 {
                    // a cold load writes one if none is there (deleted, or not due yet)
                    ours = with_snapshots().await;
                    ours.runtime.load(&a).await.expect("load");
                    wait_for_snapshot(&ours, &a, 1).await;
                    ours = with_snapshots().await;
                }
                let l = ours.runtime.load(&a).await.expect("load");
                prop_assert_eq!(ours.runtime.state_json(&a, &l), state);
                prop_assert_eq!(l.version, version);
                if version.get() >= 3 {
                    prop_assert_eq!(loads_from(&ours, "snapshot"), 1.0);
                }
                Ok(())
            })
        })
        .expect("identical with and without snapshots");
}

#[tokio::test]
async fn a_snapshot_interval_for_a_type_without_snapshots_stops_start_up_at_once() {
    let server = NatsServer::start();
    let started = std::time::Instant::now();
    let err = aggregate::start(
        &config(&server, &["--snapshot-every", "account=50,ledger=5"]),
        aggregates(),
    )
    .await
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("ledger"), "{err:#}");
    // not retried like an unreachable server (that would take STARTUP_TIMEOUT_SECS, 60 s)
    assert!(started.elapsed() < Duration::from_secs(30));
    // a malformed value is refused by the parser
    assert!(
        <aggregate::Config as clap::Parser>::try_parse_from([
            "aggregate",
            "--snapshot-every",
            "account:5"
        ])
        .is_err()
    );
}
