//! Start-up while NATS or JetStream is not usable yet: the service waits (up to
//! `--startup-timeout-secs`) instead of exiting, and gives up with the cause after it.

use std::time::{Duration, Instant};

use platform::nats::RETRYING;
use serde_json::json;
use testkit::logs::Mark;
use testkit::{NatsCluster, NatsServer, waits_until_brought_up};

use crate::support::*;

/// Sends one command end to end, proving the started instance really works.
async fn opens_an_account(app: &aggregate::App, id: &str) {
    let out = app
        .runtime
        .handle(&account("acme", id), open())
        .await
        .expect("open after a delayed start");
    assert_eq!(out.version.get(), 1);
    let out = app
        .runtime
        .handle(&account("acme", id), cmd("deposit", json!({"amount": 5})))
        .await
        .expect("deposit");
    assert_eq!(out.version.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_server_that_is_not_up_yet() {
    let mut server = NatsServer::start();
    let config = config(&server, &[]);
    server.kill();
    let mark = Mark::now();
    let starting = tokio::spawn(async move { aggregate::start(&config, aggregates()).await });
    let app = waits_until_brought_up(
        starting,
        mark.logged(RETRYING, 2, Duration::from_secs(30)),
        || server.restart(),
        Duration::from_secs(30),
    )
    .await
    .expect("start");
    opens_an_account(&app, "late-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_the_cluster_to_elect_a_meta_leader() {
    let mut cluster = NatsCluster::start();
    let urls = cluster.urls();
    // without two of three nodes there is no JetStream meta leader: the node that is up
    // accepts connections but cannot create or read streams
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let config = cluster_config(&urls);
    let mark = Mark::now();
    let starting = tokio::spawn(async move { aggregate::start(&config, aggregates()).await });
    let app = waits_until_brought_up(
        starting,
        mark.logged(RETRYING, 1, Duration::from_secs(60)),
        || {
            cluster.nodes[1].restart();
            cluster.nodes[2].restart();
        },
        Duration::from_secs(60),
    )
    .await
    .expect("start");
    opens_an_account(&app, "late-2").await;
}

#[tokio::test]
async fn start_up_gives_up_after_the_timeout_and_names_the_cause() {
    let mut server = NatsServer::start();
    let config = config(&server, &["--startup-timeout-secs", "2"]);
    server.kill();
    let began = Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        aggregate::start(&config, aggregates()),
    )
    .await
    .expect("start-up gives up on its own")
    .err()
    .expect("no NATS, no start");
    let waited = began.elapsed();
    let text = format!("{err:#}");
    assert!(
        waited >= Duration::from_secs(1),
        "gave up after {waited:?}, without retrying for the 2 s: {text}"
    );
    assert!(text.contains("start-up timeout is 2 s"), "{text}");
    assert!(
        text.contains("not connected to NATS at nats://127.0.0.1:"),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_during_start_up_ends_the_wait() {
    let mut server = NatsServer::start();
    let config = config(&server, &["--http-addr", "127.0.0.1:0"]);
    server.kill();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mark = Mark::now();
    let running = tokio::spawn(aggregate::run(config, shutdown.clone()));
    mark.logged(RETRYING, 1, Duration::from_secs(30)).await;
    assert!(!running.is_finished(), "start-up waits for NATS");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("SIGTERM ends the start-up wait")
        .expect("task")
        .expect("a clean stop");
}
