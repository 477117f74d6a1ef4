//! A command retried after the instance that appended it crashed before recording its outcome
//! must not be appended twice, whichever way the answering instance's cache got warm.
//!
//! In-process (the `aggregate` library, two runtimes on one nats-server): the crash window
//! between the append and the outcome record is too narrow to hit on purpose through the
//! gateway, but the chaos scenario (b) hits it now and then (see RELIABILITY.md, "Bugs").

use aggregate::runtime::CommandRequest;
use serde_json::json;
use shared::{AggregateAddress, CommandId, Event};

fn address(id: &str) -> AggregateAddress {
    AggregateAddress {
        tenant_id: "acme".parse().expect("tenant"),
        aggregate_type: "account".parse().expect("type"),
        aggregate_id: id.parse().expect("id"),
    }
}

fn request(ty: &str, payload: serde_json::Value, id: CommandId) -> CommandRequest {
    CommandRequest {
        command_id: Some(id),
        command_type: ty.to_owned(),
        payload,
        expected_version: None,
        metadata: Default::default(),
    }
}

/// What instance A did before SIGKILL: command `x` reserved (its pending record written, as
/// every instance does before appending), its event appended, no outcome recorded.
async fn append_without_record(a: &aggregate::App, at: &AggregateAddress, x: CommandId) {
    let kv = async_nats::jetstream::new(a.core.client.clone())
        .get_key_value(aggregate::runtime::COMMANDS_BUCKET)
        .await
        .expect("commands bucket");
    let retry = request("deposit", json!({"amount": 5}), x);
    kv.create(
        aggregate::runtime::command_key(at, x),
        aggregate::runtime::pending_record(&retry).into(),
    )
    .await
    .expect("A reserves x");
    let stored = a.runtime.store().read(at, 1).await.expect("read");
    let last = stored.last().expect("opened");
    let event: Event = serde_json::from_value(json!({
        "event_id": shared::EventId::new(),
        "command_id": x,
        "tenant_id": "acme",
        "aggregate_type": "account",
        "aggregate_id": at.aggregate_id.as_str(),
        "version": last.event.version.get() + 1,
        "event_type": "deposited",
        "payload": {"amount": 5},
        "occurred_at": "2026-01-01T00:00:00Z",
    }))
    .expect("event");
    a.runtime
        .store()
        .append(at, last.seq, &[event])
        .await
        .expect("A appends x");
}

async fn copies(b: &aggregate::App, at: &AggregateAddress, x: CommandId) -> usize {
    let stored = b.runtime.store().read(at, 1).await.expect("read");
    stored.iter().filter(|s| s.event.command_id == x).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_between_append_and_record_is_not_appended_twice() {
    let nats = testkit::NatsServer::start();
    let url = nats.url();
    let config = aggregate::Config::parse_from_args(&["--nats-url", &url, "--insecure-no-auth"]);
    let a = aggregate::start(&config, aggregate::default_aggregates())
        .await
        .expect("instance A");
    let b = aggregate::start(&config, aggregate::default_aggregates())
        .await
        .expect("instance B");
    let open = || json!({"owner": "Ada", "currency": "EUR"});

    // 1. B's cache advanced past x's event by a read (GET /aggregates/account/{id} = load)
    let by_read = address("dup-read");
    b.runtime
        .handle(&by_read, request("open", open(), CommandId::new_random()))
        .await
        .expect("open");
    let x1 = CommandId::new_random();
    append_without_record(&a, &by_read, x1).await;
    b.runtime.load(&by_read).await.expect("B serves a read");
    let retry1 = b
        .runtime
        .handle(&by_read, request("deposit", json!({"amount": 5}), x1))
        .await
        .expect("retry of x1");

    // 2. B's cache advanced past x's event by another command's conflict (tail read)
    let by_conflict = address("dup-conflict");
    b.runtime
        .handle(
            &by_conflict,
            request("open", open(), CommandId::new_random()),
        )
        .await
        .expect("open");
    let x2 = CommandId::new_random();
    append_without_record(&a, &by_conflict, x2).await;
    b.runtime
        .handle(
            &by_conflict,
            request("deposit", json!({"amount": 7}), CommandId::new_random()),
        )
        .await
        .expect("another command through B");
    let retry2 = b
        .runtime
        .handle(&by_conflict, request("deposit", json!({"amount": 5}), x2))
        .await
        .expect("retry of x2");

    let (n1, n2) = (
        copies(&b, &by_read, x1).await,
        copies(&b, &by_conflict, x2).await,
    );
    assert!(
        n1 == 1 && n2 == 1,
        "retried command appended twice: after a read {n1} copies (retry answered position {}), \
         after a conflict {n2} copies (retry answered position {})",
        retry1.position,
        retry2.position
    );
}
