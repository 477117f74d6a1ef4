//! NATS connection options: user/password, readiness while disconnected, reconnect.

use std::time::Duration;

use clap::Parser;
use platform::nats::{NatsArgs, connect, ensure_stream, is_connected};
use testkit::NatsServer;
use testkit::logs::Mark;
use testkit::operator::Operator;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
}

fn args(extra: &[&str]) -> NatsArgs {
    Args::parse_from(std::iter::once("test").chain(extra.iter().copied())).nats
}

/// Waits until `client` is connected (`want`) or not, reporting its state if it does not.
async fn connected(client: &async_nats::Client, want: bool, within: Duration, what: &str) {
    testkit::eventually(what, within, async || {
        if is_connected(client) == want {
            Ok(())
        } else {
            Err(client.connection_state())
        }
    })
    .await;
}

/// A client that must never connect: waits until it has been refused twice (each failed
/// attempt of the connection named `name` is logged as a client error since `mark`), then
/// checks it is still not connected.
async fn refused(client: &async_nats::Client, name: &str, mark: Mark, what: &str) {
    mark.logged(
        &format!("connection={name} event=client error"),
        2,
        Duration::from_secs(15),
    )
    .await;
    assert!(!is_connected(client), "{what}");
}

#[tokio::test]
async fn user_and_password_are_used_and_wrong_ones_never_connect() {
    let server = NatsServer::start_with_args(&["--user", "svc", "--pass", "s3cret"]);
    let url = server.url();
    let good = connect(
        &args(&[
            "--nats-url",
            &url,
            "--nats-user",
            "svc",
            "--nats-password",
            "s3cret",
        ]),
        "test",
        "1",
    )
    .await
    .expect("client");
    connected(
        &good,
        true,
        Duration::from_secs(5),
        "the right password connects",
    )
    .await;
    let mark = Mark::now();
    let bad = connect(
        &args(&[
            "--nats-url",
            &url,
            "--nats-user",
            "svc",
            "--nats-password",
            "wrong",
        ]),
        "test",
        "2",
    )
    .await
    .expect("client (connects in the background)");
    refused(&bad, "test-2", mark, "connected with a wrong password").await;
}

#[tokio::test]
async fn readiness_follows_the_connection_and_it_comes_back_by_itself() {
    let mut server = NatsServer::start();
    let client = connect(&args(&["--nats-url", &server.url()]), "test", "1")
        .await
        .expect("client");
    connected(&client, true, Duration::from_secs(5), "connects").await;
    server.kill();
    connected(
        &client,
        false,
        Duration::from_secs(5),
        "still 'connected' with the server down",
    )
    .await;
    server.restart();
    connected(&client, true, Duration::from_secs(15), "did not reconnect").await;
}

#[tokio::test]
async fn the_client_starts_before_the_server_and_connects_when_it_comes() {
    let mut server = NatsServer::start();
    let url = server.url();
    server.kill();
    let client = connect(&args(&["--nats-url", &url]), "test", "1")
        .await
        .expect("client");
    assert!(!is_connected(&client));
    server.restart();
    connected(
        &client,
        true,
        Duration::from_secs(15),
        "connects once the server is up",
    )
    .await;
}

#[tokio::test]
async fn tls_with_a_private_ca_connects_and_plaintext_is_refused() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let cert = format!("{fixtures}/server-cert.pem");
    let key = format!("{fixtures}/server-key.pem");
    let ca = format!("{fixtures}/ca.pem");
    let server = NatsServer::start_with_args(&["--tls", "--tlscert", &cert, "--tlskey", &key]);
    let url = server.url();
    let tls = connect(
        &args(&["--nats-url", &url, "--nats-tls-ca", &ca]),
        "test",
        "tls",
    )
    .await
    .expect("client");
    connected(
        &tls,
        true,
        Duration::from_secs(5),
        "no TLS connection with the CA",
    )
    .await;
    let mark = Mark::now();
    let plain = connect(&args(&["--nats-url", &url]), "test", "plain")
        .await
        .expect("client (connects in the background)");
    refused(
        &plain,
        "test-plain",
        mark,
        "connected without trusting the server's CA",
    )
    .await;
}

#[tokio::test]
async fn a_creds_file_authenticates_in_operator_mode_and_can_use_jetstream() {
    let dir = tempfile::tempdir().expect("temp dir");
    let operator = Operator::new();
    let conf = operator.write_server_config(dir.path());
    let server = NatsServer::start_with_args(&["--config", conf.to_str().expect("utf-8 path")]);
    let url = server.url();

    let creds = operator.user_creds(dir.path(), "aggregate");
    let nats = args(&[
        "--nats-url",
        &url,
        "--nats-creds",
        creds.to_str().expect("path"),
    ]);
    let good = connect(&nats, "test", "creds").await.expect("client");
    connected(
        &good,
        true,
        Duration::from_secs(5),
        "no connection with the user's creds",
    )
    .await;
    // the account's JetStream is what the services use
    let js = async_nats::jetstream::new(good);
    let info = ensure_stream(&js, &shared::StreamSpec::events(1))
        .await
        .expect("the stream is created in the user's account");
    assert_eq!(info.config.name, shared::STREAM_NAME);

    let foreign = Operator::foreign_user_creds(dir.path(), "intruder");
    let mark = Mark::now();
    let bad = connect(
        &args(&[
            "--nats-url",
            &url,
            "--nats-creds",
            foreign.to_str().expect("path"),
        ]),
        "test",
        "foreign",
    )
    .await
    .expect("client (connects in the background)");
    refused(
        &bad,
        "test-foreign",
        mark,
        "connected with a user of an account the server does not trust",
    )
    .await;
    let mark = Mark::now();
    let anonymous = connect(&args(&["--nats-url", &url]), "test", "anonymous")
        .await
        .expect("client (connects in the background)");
    refused(
        &anonymous,
        "test-anonymous",
        mark,
        "connected without credentials",
    )
    .await;
}

#[tokio::test]
async fn a_missing_creds_file_is_a_clear_error() {
    let err = connect(
        &args(&["--nats-creds", "/nonexistent/svc.creds"]),
        "test",
        "missing",
    )
    .await
    .expect_err("no client without its creds file");
    let text = err.to_string();
    assert!(
        text.contains("reading the NATS credentials file /nonexistent/svc.creds"),
        "{text}"
    );
}
