//! Consumption: decoding, ordering across instances, fail-over, resume and replay.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::AckPolicy;
use futures::StreamExt as _;
use projection::view::{EventSpec, Fold, View, ViewError};
use serde_json::{Value, json};
use shared::{EventEnvelope, ViewName};
use testkit::NatsServer;

use crate::support::*;

const FIXTURE_LEGACY: &str = include_str!("../../../shared/tests/fixtures/legacy_envelope.json");
const FIXTURE_EVENT: &str = include_str!("../../../shared/tests/fixtures/event.json");
const FIXTURE_FUTURE: &str = include_str!("../../../shared/tests/fixtures/future_event.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aggregate_events_legacy_and_future_envelopes_all_apply() {
    let server = NatsServer::start();
    // the projection starts first, on a server without the stream
    let p = projection(&server).await;
    let agg = aggregate(&server).await;
    let a = account("acme", "a1");
    open(&agg, &a).await;
    send(&agg, &a, cmd("deposit", json!({"amount": 250}))).await;
    let last = send(&agg, &a, cmd("withdraw", json!({"amount": 50}))).await;

    // legacy: no ids, no version
    publish_raw(
        &p.app.core.client,
        "tenant.acme.aggregate.account.acc-legacy",
        FIXTURE_LEGACY.into(),
    )
    .await;
    // acc-1: an opened event (v1), then the golden v2 and the v3 with unknown fields
    publish_raw(
        &p.app.core.client,
        "tenant.acme.aggregate.account.acc-1",
        envelope(
            "acme",
            "acc-1",
            Some(1),
            "opened",
            json!({"owner": "Bo", "currency": "EUR"}),
        ),
    )
    .await;
    publish_raw(
        &p.app.core.client,
        "tenant.acme.aggregate.account.acc-1",
        FIXTURE_EVENT.into(),
    )
    .await;
    let seq = publish_raw(
        &p.app.core.client,
        "tenant.acme.aggregate.account.acc-1",
        FIXTURE_FUTURE.into(),
    )
    .await;
    assert!(seq > last.position);

    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/a1?min_position={}",
            last.position
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 200);
    assert_eq!(body["document"]["version"], 3);
    assert_eq!(body["document"]["status"], "open");
    assert_eq!(body["position"], last.position);

    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/accounts/acc-legacy?min_position={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["owner"], "Ada");
    assert_eq!(body["document"]["version"], 1);

    let (status, body) = p.get("/v1/tenants/acme/views/accounts/acc-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 1000);
    assert_eq!(body["document"]["version"], 3);
    assert_eq!(body["position"], seq);

    let (status, body) = p
        .get(&format!(
            "/v1/tenants/acme/views/tenant-summary/summary?min_position={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["open_accounts"], 3);
    assert_eq!(body["document"]["totals"]["EUR"], 1200);
    assert_eq!(p.counter("events_parked", "accounts"), 0);
    p.stop().await;
}

/// Compares every account document with the aggregate's own state.
async fn assert_views_match(
    p: &Instance,
    agg: &aggregate::App,
    accounts: &[shared::AggregateAddress],
) {
    for a in accounts {
        let loaded = agg.runtime.load(a).await.expect("load");
        let state = agg.runtime.state_json(a, &loaded);
        let key = format!("{}.{}", a.tenant_id, a.aggregate_id);
        let doc = projection::store::read_doc(&p.view("accounts").docs, &key)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{key} missing"));
        assert_eq!(doc.doc["balance"], state["balance"], "{key}");
        assert_eq!(doc.doc["status"], state["status"], "{key}");
        assert_eq!(doc.doc["version"], json!(loaded.version.get()), "{key}");
        assert_eq!(
            doc.position(),
            loaded.last_seq,
            "{key}: _position is the last event"
        );
    }
}

/// Writes `per_account` events to each of `n` accounts, concurrently across accounts.
async fn write_load(
    agg: &Arc<aggregate::App>,
    tenant: &str,
    n: usize,
    per_account: usize,
) -> (Vec<shared::AggregateAddress>, u64) {
    let accounts: Vec<_> = (0..n)
        .map(|i| account(tenant, &format!("acc{i}")))
        .collect();
    let results = futures::stream::iter(accounts.clone().into_iter().map(|a| {
        let agg = agg.clone();
        async move {
            let mut last = open(&agg, &a).await.position;
            for k in 1..per_account {
                let c = if k % 3 == 0 {
                    cmd("withdraw", json!({"amount": 1}))
                } else {
                    cmd("deposit", json!({"amount": 2}))
                };
                last = send(&agg, &a, c).await.position;
            }
            last
        }
    }))
    .buffer_unordered(n)
    .collect::<Vec<u64>>()
    .await;
    (accounts, results.into_iter().max().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_durable_apply_every_event_exactly_once() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let one = projection(&server).await;
    let two = projection(&server).await;
    let (accounts, last) = write_load(&agg, "acme", 50, 100).await;
    one.caught_up("accounts", last, Duration::from_secs(60))
        .await;
    assert_views_match(&one, &agg, &accounts).await;
    let applied =
        one.counter("events_applied", "accounts") + two.counter("events_applied", "accounts");
    assert_eq!(
        applied, 5_000,
        "every event applied once, by one of the instances"
    );
    let dup =
        one.counter("events_duplicate", "accounts") + two.counter("events_duplicate", "accounts");
    assert_eq!(dup, 0);
    // the summary agrees with the accounts
    two.caught_up("tenant-summary", last, Duration::from_secs(30))
        .await;
    let (status, body) = two
        .get("/v1/tenants/acme/views/tenant-summary/summary")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["document"]["open_accounts"], 50);
    // per account: 1 open + 66 deposits of 2 + 33 withdrawals of 1 = 99
    assert_eq!(body["document"]["totals"]["EUR"], 50 * 99);
    one.stop().await;
    two.stop().await;
}

/// A document cache far smaller than the documents in play evicts some and keeps the rest
/// (it never empties as a whole): every event is still folded exactly once, the documents agree
/// with the aggregates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_document_cache_smaller_than_the_working_set_still_folds_every_event_once() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let p = projection_with(
        &server,
        &["--cache-capacity", "3"],
        projection::default_views(),
    )
    .await;
    let (accounts, last) = write_load(&agg, "acme", 20, 10).await;
    p.caught_up("accounts", last, Duration::from_secs(60)).await;
    assert_views_match(&p, &agg, &accounts).await;
    assert_eq!(p.counter("events_applied", "accounts"), 200);
    assert_eq!(p.counter("events_duplicate", "accounts"), 0);
    assert_eq!(p.counter("events_parked", "accounts"), 0);
    p.caught_up("tenant-summary", last, Duration::from_secs(30))
        .await;
    let (status, body) = p.get("/v1/tenants/acme/views/tenant-summary/summary").await;
    assert_eq!(status, 200);
    assert_eq!(body["document"]["open_accounts"], 20);
    // per account: 6 deposits of 2, 3 withdrawals of 1
    assert_eq!(body["document"]["totals"]["EUR"], 20 * 9);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_is_replaced_and_views_converge_without_double_apply() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let first = projection(&server).await;
    let writer = {
        let agg = agg.clone();
        tokio::spawn(async move { write_load(&agg, "acme", 20, 60).await })
    };
    // kill it once it has committed something but (very likely) not everything
    let rt = first.view("accounts");
    testkit::eventually(
        "the first instance commits past position 100",
        Duration::from_secs(30),
        async || match rt.checkpoint().await {
            Ok(p) if p > 100 => Ok(()),
            other => Err(other),
        },
    )
    .await;
    first.kill();
    let standby = projection(&server).await;
    let (accounts, last) = writer.await.expect("writer");
    standby
        .caught_up("accounts", last, Duration::from_secs(60))
        .await;
    assert_views_match(&standby, &agg, &accounts).await;
    standby
        .caught_up("tenant-summary", last, Duration::from_secs(30))
        .await;
    let (_, body) = standby
        .get("/v1/tenants/acme/views/tenant-summary/summary")
        .await;
    // per account: 40 deposits of 2 - 19 withdrawals of 1 = 61
    assert_eq!(body["document"]["totals"]["EUR"], 20 * 61);
    standby.stop().await;
}

/// `accounts` under another version: a new consumer and a new bucket.
struct AccountsV2;

impl View for AccountsV2 {
    fn name(&self) -> ViewName {
        "accounts".parse().expect("name")
    }
    fn version(&self) -> u32 {
        2
    }
    fn events(&self) -> Vec<EventSpec> {
        projection::views::account_events()
    }
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        projection::views::Accounts.key(env)
    }
    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        projection::views::Accounts.apply(doc, env)
    }
}

/// Waits until `accounts` has counted exactly `n` applied events (never more: a later value
/// fails with what it was).
async fn applied(p: &Instance, n: u64) {
    testkit::eventually("events_applied", Duration::from_secs(10), async || match p
        .counter("events_applied", "accounts")
    {
        c if c == n => Ok(()),
        c => Err(c),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_resumes_and_a_new_version_replays_everything() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let a = account("acme", "r1");
    let p = projection(&server).await;
    open(&agg, &a).await;
    let mut last = 0;
    for _ in 0..20 {
        last = send(&agg, &a, cmd("deposit", json!({"amount": 1})))
            .await
            .position;
    }
    p.caught_up("accounts", last, Duration::from_secs(30)).await;
    // the counters move just after the commit that moved the checkpoint
    applied(&p, 21).await;
    p.stop().await;

    // same version: resumes after the last acknowledged event
    let p = projection(&server).await;
    let next = send(&agg, &a, cmd("deposit", json!({"amount": 1})))
        .await
        .position;
    p.caught_up("accounts", next, Duration::from_secs(30)).await;
    // only the new event
    applied(&p, 1).await;
    assert_eq!(p.counter("events_duplicate", "accounts"), 0);
    let js = async_nats::jetstream::new(p.app.core.client.clone());
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    // acked just after the commit
    testkit::eventually(
        "the consumer acked the new event",
        Duration::from_secs(10),
        async || {
            let floor = stream
                .consumer_info("view-accounts-v1")
                .await
                .expect("consumer")
                .ack_floor
                .stream_sequence;
            if floor == next { Ok(()) } else { Err(floor) }
        },
    )
    .await;
    p.stop().await;

    // new version: replays everything into a new bucket
    let p2 = projection_with(&server, &[], vec![Arc::new(AccountsV2)]).await;
    p2.caught_up("accounts", next, Duration::from_secs(30))
        .await;
    applied(&p2, 22).await;
    assert_eq!(p2.view("accounts").docs.name, "VIEW_accounts_v2");
    let (status, body) = p2.get("/v1/tenants/acme/views/accounts/r1").await;
    assert_eq!(status, 200);
    assert_eq!(body["document"]["balance"], 21);
    p2.stop().await;
}

#[tokio::test]
async fn a_consumer_with_another_configuration_is_refused_not_overwritten() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    p.stop().await;
    let cfg = config(&server, &["--max-deliver", "5"]);
    let err = projection::start(&cfg, projection::default_views())
        .await
        .err()
        .expect("refused");
    let text = format!("{err:#}");
    assert!(text.contains("max_deliver: expected 5, found 10"), "{text}");
    assert!(text.contains("view-accounts-v1"), "{text}");
}

/// The consumer's acknowledgement floor reaches `seq`.
async fn acked_up_to(js: &async_nats::jetstream::Context, consumer: &str, seq: u64) {
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    testkit::eventually(
        "the consumer acked every event",
        Duration::from_secs(10),
        async || {
            let info = stream.consumer_info(consumer).await.expect("consumer");
            if info.ack_floor.stream_sequence == seq && info.num_ack_pending == 0 {
                Ok(())
            } else {
                Err((info.ack_floor.stream_sequence, info.num_ack_pending))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_from_before_ack_all_is_served_as_it_is_with_three_batches_in_flight() {
    let server = NatsServer::start();
    let agg = aggregate(&server).await;
    let a = account("acme", "old");
    open(&agg, &a).await;
    // the consumer as instances before ack-all created it: explicit acks, one batch pending
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut old = projection::engine::ConsumerSettings::default()
        .consumer_config(&projection::views::Accounts, 0);
    old.ack_policy = AckPolicy::Explicit;
    old.max_ack_pending = 500;
    js.get_stream(shared::STREAM_NAME)
        .await
        .expect("stream")
        .create_consumer(old)
        .await
        .expect("the old consumer");

    let p = projection(&server).await;
    let mut last = 0;
    for _ in 0..30 {
        last = send(&agg, &a, cmd("deposit", json!({"amount": 2})))
            .await
            .position;
    }
    p.caught_up("accounts", last, Duration::from_secs(30)).await;
    applied(&p, 31).await;
    let (status, body) = p.get("/v1/tenants/acme/views/accounts/old").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["balance"], 60);
    // every message acknowledged on its own; only `max_ack_pending` was updated
    acked_up_to(&js, "view-accounts-v1", last).await;
    let config = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(shared::STREAM_NAME)
                .await
                .expect("stream")
                .consumer_info(name)
                .await
                .expect("consumer")
                .config
                .clone()
        }
    };
    let old = config("view-accounts-v1").await;
    assert_eq!(old.ack_policy, AckPolicy::Explicit);
    assert_eq!(old.max_ack_pending, 1500);
    // a consumer created now acknowledges all up to a message: one ack per commit
    assert_eq!(
        config("view-tenant-summary-v2").await.ack_policy,
        AckPolicy::All
    );
    p.caught_up("tenant-summary", last, Duration::from_secs(30))
        .await;
    acked_up_to(&js, "view-tenant-summary-v2", last).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changed_redelivery_and_take_over_timing_updates_the_consumer_in_place() {
    let server = NatsServer::start();
    let p = projection(&server).await;
    p.stop().await;
    let cfg = config(
        &server,
        &["--ack-wait-ms", "4000", "--priority-timeout-ms", "1500"],
    );
    let app = projection::start(&cfg, projection::default_views())
        .await
        .expect("timing changes are not a mismatch");
    let js = async_nats::jetstream::new(app.core.client.clone());
    let stream = js.get_stream(shared::STREAM_NAME).await.expect("stream");
    let info = stream
        .consumer_info("view-accounts-v1")
        .await
        .expect("consumer");
    assert_eq!(info.config.ack_wait, Duration::from_secs(4));
    assert_eq!(info.config.priority_timeout, Duration::from_millis(1500));
    assert_eq!(info.config.backoff.first(), Some(&Duration::from_secs(4)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_server_that_is_not_up_yet_then_projects() {
    let mut server = NatsServer::start();
    let cfg = config(&server, &[]);
    server.kill();
    let mark = testkit::logs::Mark::now();
    let starting = {
        let cfg = cfg.clone();
        tokio::spawn(async move { projection::start(&cfg, projection::default_views()).await })
    };
    let app = testkit::waits_until_brought_up(
        starting,
        mark.logged(platform::nats::RETRYING, 2, Duration::from_secs(30)),
        || server.restart(),
        Duration::from_secs(30),
    )
    .await
    .expect("start");
    let p = serving(&cfg, app);
    let agg = aggregate(&server).await;
    let last = open(&agg, &account("acme", "late")).await;
    p.caught_up("accounts", last.position, Duration::from_secs(30))
        .await;
    let (status, body) = p.get("/v1/tenants/acme/views/accounts/late").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["document"]["owner"], "Ada");
    p.stop().await;
}

#[tokio::test]
async fn start_up_does_not_retry_an_incompatible_stream() {
    let server = NatsServer::start();
    let client = async_nats::connect(server.url()).await.expect("connect");
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: shared::STREAM_NAME.to_owned(),
            subjects: vec!["other.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("stream");
    // a retried permanent error would only end at this (long) start-up timeout
    let cfg = config(&server, &["--startup-timeout-secs", "600"]);
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        projection::start(&cfg, projection::default_views()),
    )
    .await
    .expect("refused at once, not retried until the start-up timeout")
    .err()
    .expect("refused");
    assert!(format!("{err:#}").contains("other.>"), "{err:#}");
}

/// `accounts` with a key that is fine for short ids and too long for the longest the id rule
/// allows: refused before anything is consumed, naming the view, the event and the key.
struct PrefixedKey;

impl View for PrefixedKey {
    fn name(&self) -> ViewName {
        "prefixed".parse().expect("name")
    }
    fn version(&self) -> u32 {
        1
    }
    fn events(&self) -> Vec<EventSpec> {
        projection::views::account_events()
    }
    fn key(&self, env: &EventEnvelope) -> Option<String> {
        Some(format!("account-{}", env.aggregate_id))
    }
}

#[tokio::test]
async fn a_view_with_an_invalid_key_is_refused_at_start_up() {
    let server = NatsServer::start();
    let views: Vec<Arc<dyn View>> =
        vec![Arc::new(projection::views::Accounts), Arc::new(PrefixedKey)];
    let Err(e) = projection::start(&config(&server, &[]), views).await else {
        panic!("a view with invalid keys started");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("invalid view definition: view \"prefixed\", account/opened: invalid-key")
            && e.contains("token too long"),
        "{e}"
    );
    // refused before anything was created: no stream, no bucket, no consumer
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("connect"));
    let streams: Vec<String> = js
        .stream_names()
        .map(|n| n.expect("stream name"))
        .collect()
        .await;
    assert!(streams.is_empty(), "{streams:?}");
}

/// A batch of single-document events writes its documents ahead of the checkpoint (no atomic
/// batch): when the checkpoint is then refused (another writer changed it, as an instance that
/// took the pin over would), the documents already carry the events' positions, so the retry
/// counts them as duplicates and nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn documents_written_ahead_of_a_refused_checkpoint_are_not_applied_twice() {
    let server = NatsServer::start();
    let agg = Arc::new(aggregate(&server).await);
    let p = projection(&server).await;
    let (accounts, last) = write_load(&agg, "acme", 5, 2).await;
    p.caught_up("accounts", last, Duration::from_secs(30)).await;
    let applied_before = p.counter("events_applied", "accounts");
    let duplicates_before = p.counter("events_duplicate", "accounts");

    // another writer rewrites the checkpoint as it is: same position, a new revision
    let docs = &p.view("accounts").docs;
    let entry = docs
        .entry(projection::store::CHECKPOINT_KEY)
        .await
        .expect("read the checkpoint")
        .expect("a checkpoint");
    docs.put(projection::store::CHECKPOINT_KEY, entry.value)
        .await
        .expect("rewrite the checkpoint");

    let mut last = 0;
    for a in &accounts {
        last = send(&agg, a, cmd("deposit", json!({"amount": 10})))
            .await
            .position;
    }
    p.caught_up("accounts", last, Duration::from_secs(30)).await;
    assert_views_match(&p, &agg, &accounts).await;
    let applied = p.counter("events_applied", "accounts") - applied_before;
    let duplicates = p.counter("events_duplicate", "accounts") - duplicates_before;
    // the first attempt wrote documents and was refused on the checkpoint; the retry found
    // those documents done
    assert!(
        duplicates >= 1,
        "no document was written ahead of the refused checkpoint"
    );
    // each deposit counted once: applied, or found done; the balances above prove the effect
    assert_eq!(
        applied + duplicates,
        5,
        "applied {applied}, duplicates {duplicates}"
    );
    p.stop().await;
}
