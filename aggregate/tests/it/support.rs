//! Test support: a real server and aggregate instances on it.

use std::sync::Arc;

use aggregate::account::Account;
use aggregate::domain::{Aggregate, DomainError, DynAggregate, Snapshotting};
use aggregate::runtime::{CommandRequest, Outcome};
use clap::Parser;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::{AggregateAddress, AggregateType};
use testkit::NatsServer;

pub(crate) fn config(server: &NatsServer, extra: &[&str]) -> aggregate::Config {
    let mut args = vec![
        "aggregate",
        "--nats-url",
        Box::leak(server.url().into_boxed_str()),
        "--insecure-no-auth",
        "--instance-id",
        "test",
    ];
    args.extend_from_slice(extra);
    aggregate::Config::parse_from(args)
}

/// An instance on a three-node cluster (`urls` comma-separated), creating an R3 stream.
pub(crate) fn cluster_config(urls: &str) -> aggregate::Config {
    aggregate::Config::parse_from_args(&[
        "--nats-url",
        urls,
        "--stream-replicas",
        "3",
        "--insecure-no-auth",
    ])
}

/// All aggregate types used in tests: the shipped ones plus a multi-event one.
pub(crate) fn aggregates() -> Vec<Arc<dyn DynAggregate>> {
    let mut v = aggregate::default_aggregates();
    v.push(Arc::new(Ledger));
    v
}

pub(crate) async fn instance(server: &NatsServer) -> aggregate::App {
    aggregate::start(&config(server, &[]), aggregates())
        .await
        .expect("start aggregate")
}

pub(crate) fn account(tenant: &str, id: &str) -> AggregateAddress {
    aggregate::account::Account::address(tenant, id).expect("valid ids")
}

pub(crate) fn cmd(t: &str, payload: Value) -> CommandRequest {
    CommandRequest::new(t, payload)
}

pub(crate) fn open() -> CommandRequest {
    cmd("open", json!({"owner": "Ada", "currency": "EUR"}))
}

pub(crate) async fn send(
    app: &aggregate::App,
    addr: &AggregateAddress,
    c: CommandRequest,
) -> Outcome {
    app.runtime.handle(addr, c).await.expect("command accepted")
}

/// Names of the consumers on the events stream.
pub(crate) async fn consumers(client: &async_nats::Client) -> Vec<String> {
    use futures::TryStreamExt;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    stream
        .consumer_names()
        .try_collect()
        .await
        .expect("consumer names")
}

/// A test aggregate whose `post` command yields several events (one per line), to exercise
/// atomic multi-event appends.
pub(crate) struct Ledger;

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct LedgerState {
    pub(crate) lines: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub(crate) enum LedgerCommand {
    Post { lines: Vec<String> },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub(crate) enum LedgerEvent {
    LinePosted { text: String },
}

#[derive(Debug, thiserror::Error)]
#[error("empty posting")]
pub(crate) struct Empty;

impl DomainError for Empty {
    fn code(&self) -> &'static str {
        "empty-posting"
    }
}

impl Aggregate for Ledger {
    type State = LedgerState;
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type Error = Empty;

    fn aggregate_type(&self) -> AggregateType {
        "ledger".parse().expect("type")
    }
    fn command_types(&self) -> &'static [&'static str] {
        &["post"]
    }
    fn apply(&self, state: &mut LedgerState, event: LedgerEvent) {
        let LedgerEvent::LinePosted { text } = event;
        state.lines.push(text);
    }
    fn decide(&self, _: &LedgerState, c: LedgerCommand) -> Result<Vec<LedgerEvent>, Empty> {
        let LedgerCommand::Post { lines } = c;
        if lines.is_empty() {
            return Err(Empty);
        }
        Ok(lines
            .into_iter()
            .map(|text| LedgerEvent::LinePosted { text })
            .collect())
    }
}

/// `account` with its state-schema version bumped (same events, same rules).
pub(crate) struct AccountV2;

impl Aggregate for AccountV2 {
    type State = <Account as Aggregate>::State;
    type Command = <Account as Aggregate>::Command;
    type Event = <Account as Aggregate>::Event;
    type Error = <Account as Aggregate>::Error;

    fn aggregate_type(&self) -> AggregateType {
        Aggregate::aggregate_type(&Account)
    }
    fn command_types(&self) -> &'static [&'static str] {
        Account.command_types()
    }
    fn apply(&self, state: &mut Self::State, event: Self::Event) {
        Aggregate::apply(&Account, state, event);
    }
    fn decide(
        &self,
        state: &Self::State,
        command: Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Error> {
        Aggregate::decide(&Account, state, command)
    }
}

impl Snapshotting for AccountV2 {
    const STATE_SCHEMA: u32 = 2;
}
