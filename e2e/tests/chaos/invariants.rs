//! The one invariant check every scenario ends with, once the load has stopped.
//!
//! 1. Consumer hygiene: only the projection's `view-*` durables remain on the stream (no
//!    `fetch-*` left behind; polled, deletes are asynchronous, `inactive_threshold` is the
//!    backstop).
//! 2. The whole stream, read directly with an ordered consumer: no acknowledged command lost,
//!    none appended twice, its event at the position it was acknowledged with, versions 1..N per
//!    aggregate, every event from an acknowledged command or from one whose client gave up (at
//!    most once), none from a refused command.
//! 3. The views equal the fold of the stream once their checkpoints reach its last sequence:
//!    every `accounts` document (balance, status, version) and every `tenant-summary` document;
//!    nothing parked.
//! 4. What clients saw: no 500, no request past its timeout, no read-your-writes query that never
//!    caught up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Stack, Topology};
use crate::report::{Report, ms};
use crate::workload::{Client, Outcome, Workload};

const VIEW_DURABLES: [&str; 2] = ["view-accounts-v1", "view-tenant-summary-v2"];
const VIEW_BUCKETS: [&str; 2] = ["VIEW_accounts_v1", "VIEW_tenant-summary_v2"];

/// An account folded from the stream.
#[derive(Debug, Default, Clone)]
struct Folded {
    currency: String,
    balance: i64,
    status: &'static str,
    version: u64,
}

/// Runs the checks, records the figures in `report`, writes it, then fails on any violation.
pub(crate) async fn check(stack: &Stack, w: &Workload, out: &Outcome, report: &mut Report) {
    let started = Instant::now();
    let mut violations: Vec<String> = Vec::new();
    let nats = stack.nats().await;
    let js = jetstream::new(nats.clone());
    let mut stream = js
        .get_stream(shared::STREAM_NAME)
        .await
        .expect("stream AGGREGATE_EVENTS");

    if stack.topology == Topology::Cluster {
        // every replica current again after the fault
        let t = Instant::now();
        testkit::eventually(
            "all replicas of AGGREGATE_EVENTS current",
            Duration::from_secs(60),
            async || {
                let cluster = async {
                    let info = js
                        .get_stream(shared::STREAM_NAME)
                        .await
                        .ok()?
                        .cached_info()
                        .clone();
                    info.cluster
                }
                .await;
                match cluster {
                    Some(c)
                        if c.leader.is_some()
                            && c.replicas.len() == 2
                            && c.replicas.iter().all(|r| r.current) =>
                    {
                        Ok(())
                    }
                    other => Err(other),
                }
            },
        )
        .await;
        report.set_ms("replicas_current_after_ms", t.elapsed());
    }

    // 1. consumer hygiene, before this check creates its own (ordered) consumer
    let t = Instant::now();
    let deadline = t + Duration::from_secs(45);
    let consumers = loop {
        let names: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .expect("consumer names");
        let stray: Vec<&String> = names.iter().filter(|n| !n.starts_with("view-")).collect();
        if stray.is_empty() {
            break names;
        }
        if Instant::now() >= deadline {
            violations.push(format!(
                "consumers other than view-* still on the stream after 45 s: {stray:?}"
            ));
            break names;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    report.set_ms("consumer_hygiene_wait_ms", t.elapsed());
    report.set("consumers_on_stream", json!(consumers));
    for d in VIEW_DURABLES {
        if !consumers.iter().any(|c| c == d) {
            violations.push(format!("durable {d} missing from the stream"));
        }
    }

    // 2. the views catch up with the stream
    let last_seq = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let t = Instant::now();
    for bucket in VIEW_BUCKETS {
        let kv = js.get_key_value(bucket).await.expect("view bucket");
        testkit::eventually(
            format!("{bucket} checkpoint reaching stream sequence {last_seq}"),
            Duration::from_secs(60),
            async || {
                let position = async {
                    let e = kv.get("_checkpoint").await.ok()??;
                    let v: Value = serde_json::from_slice(&e).ok()?;
                    v["position"].as_u64()
                }
                .await;
                match position {
                    Some(p) if p >= last_seq => Ok(()),
                    other => Err(other),
                }
            },
        )
        .await;
    }
    report.set_ms("views_caught_up_after_ms", t.elapsed());

    // 3. the whole stream
    let events = read_stream(&mut stream, last_seq).await;
    report.set("events_in_stream", events.len());
    let mut per_command: HashMap<Uuid, Vec<(u64, String, String)>> = HashMap::new();
    let mut folded: BTreeMap<(String, String), Folded> = BTreeMap::new();
    let mut version_breaks = 0u64;
    for (seq, subject, e) in &events {
        let tenant = e.tenant_id.as_str().to_owned();
        let id = e.aggregate_id.as_str().to_owned();
        let expected = format!(
            "tenant.{tenant}.aggregate.{}.{id}",
            e.aggregate_type.as_str()
        );
        if *subject != expected {
            violations.push(format!(
                "seq {seq}: subject {subject} but body says {expected}"
            ));
        }
        per_command
            .entry(e.command_id.as_uuid())
            .or_default()
            .push((*seq, tenant.clone(), id.clone()));
        let f = folded.entry((tenant, id)).or_default();
        if e.version.get() != f.version + 1 {
            version_breaks += 1;
            violations.push(format!(
                "seq {seq} ({subject}): version {} after {}",
                e.version.get(),
                f.version
            ));
        }
        f.version = e.version.get();
        let amount = e.payload["amount"].as_i64().unwrap_or(0);
        match e.event_type.as_str() {
            "opened" => {
                f.status = "open";
                f.currency = e.payload["currency"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            "deposited" => f.balance += amount,
            "withdrawn" => f.balance -= amount,
            "closed" => f.status = "closed",
            other => violations.push(format!("seq {seq}: unexpected event type {other}")),
        }
    }
    let (mut lost, mut duplicated, mut misplaced) = (0u64, 0u64, 0u64);
    for (id, ack) in &out.acked {
        match per_command.get(id).map(Vec::as_slice) {
            None | Some([]) => {
                lost += 1;
                violations.push(format!(
                    "acknowledged command {id} ({}/{} at {}) is not in the stream",
                    ack.tenant, ack.account, ack.position
                ));
            }
            Some([(seq, t, a)]) => {
                if *seq != ack.position || *t != ack.tenant || *a != ack.account {
                    misplaced += 1;
                    violations.push(format!(
                        "command {id} acknowledged at {}/{} position {} but stored at {t}/{a} seq {seq}",
                        ack.tenant, ack.account, ack.position
                    ));
                }
            }
            Some(many) => {
                duplicated += 1;
                violations.push(format!(
                    "command {id} appended {} times: {many:?}",
                    many.len()
                ));
            }
        }
    }
    let mut gave_up_in_stream = 0u64;
    for id in out.gave_up.keys() {
        match per_command.get(id).map(Vec::len).unwrap_or(0) {
            0 => {}
            1 => gave_up_in_stream += 1,
            n => {
                duplicated += 1;
                violations.push(format!("given-up command {id} appended {n} times"));
            }
        }
    }
    for (id, why) in &out.refused {
        if per_command.contains_key(id) {
            violations.push(format!("refused command {id} ({why}) is in the stream"));
        }
    }
    let unknown: Vec<&Uuid> = per_command
        .keys()
        .filter(|id| !out.acked.contains_key(id) && !out.gave_up.contains_key(id))
        .collect();
    for id in &unknown {
        violations.push(format!(
            "event(s) {:?} of command {id}, which no client sent or was acknowledged",
            per_command[id]
        ));
    }
    report.set("commands_acknowledged", out.acked.len());
    report.set("commands_given_up", out.gave_up.len());
    report.set("given_up_but_in_stream", gave_up_in_stream);
    report.set("commands_refused", out.refused.len());
    report.set("lost", lost);
    report.set("duplicated", duplicated);
    report.set("misplaced", misplaced);
    report.set("events_of_unknown_commands", unknown.len());
    report.set("version_breaks", version_breaks);

    // 4. the views equal the fold
    let client = Client::new(stack, &w.tenants);
    let mut view_mismatches = 0u64;
    let mut docs_checked = 0u64;
    for tenant in &w.tenants {
        let mine: BTreeMap<&str, &Folded> = folded
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, id), f)| (id.as_str(), f))
            .collect();
        let docs = list_accounts(&client, tenant).await;
        let ids: BTreeSet<&str> = docs.keys().map(String::as_str).collect();
        let expected: BTreeSet<&str> = mine.keys().copied().collect();
        if ids != expected {
            view_mismatches += 1;
            violations.push(format!(
                "tenant {tenant}: accounts view has {} documents, the stream {} accounts; only in view: {:?}, only in stream: {:?}",
                ids.len(),
                expected.len(),
                ids.difference(&expected).take(5).collect::<Vec<_>>(),
                expected.difference(&ids).take(5).collect::<Vec<_>>()
            ));
        }
        for (id, f) in &mine {
            let Some(doc) = docs.get(*id) else { continue };
            docs_checked += 1;
            let want = json!({"balance": f.balance, "status": f.status, "version": f.version});
            let got = json!({"balance": doc["balance"], "status": doc["status"], "version": doc["version"]});
            if want != got {
                view_mismatches += 1;
                violations.push(format!(
                    "{tenant}/{id}: view {got} but the stream folds to {want}"
                ));
            }
        }
        let summary = get_json(
            &client,
            &format!("/v1/tenants/{tenant}/views/tenant-summary/summary"),
        )
        .await;
        let doc = &summary["document"];
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        let mut open = 0u64;
        for f in mine.values() {
            *totals.entry(f.currency.clone()).or_default() += f.balance;
            if f.status == "open" {
                open += 1;
            }
        }
        let got_totals: BTreeMap<String, i64> = doc["totals"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(i64::MIN)))
                    .collect()
            })
            .unwrap_or_default();
        if got_totals != totals || doc["open_accounts"].as_u64() != Some(open) {
            view_mismatches += 1;
            violations.push(format!(
                "{tenant}: tenant-summary totals {got_totals:?}, open {} but the stream folds to {totals:?}, open {open}",
                doc["open_accounts"]
            ));
        }
        // the summary's per-account entries live under their own keys (`account.<id>`)
        let entries = list_view(&client, tenant, "tenant-summary").await;
        for (id, f) in &mine {
            let e = entries
                .get(&format!("account.{id}"))
                .cloned()
                .unwrap_or(Value::Null);
            if e["balance"].as_i64() != Some(f.balance)
                || e["open"].as_bool() != Some(f.status == "open")
            {
                view_mismatches += 1;
                violations.push(format!(
                    "{tenant}: tenant-summary entry of {id} is {e}, the stream folds to balance {} status {}",
                    f.balance, f.status
                ));
            }
        }
    }
    let admin = crate::harness::Stack::admin_token();
    let mut parked = 0u64;
    for view in ["accounts", "tenant-summary"] {
        let resp = client
            .get_as(&format!("/v1/admin/views/{view}/parked"), &admin)
            .await
            .expect("parked");
        assert_eq!(resp.status(), 200, "GET parked of {view}");
        let v: Value = resp.json().await.expect("parked json");
        let n = v["parked"].as_array().map_or(0, Vec::len) as u64;
        if n > 0 {
            violations.push(format!("view {view} parked {n} events: {v}"));
        }
        parked += n;
    }
    report.set("view_documents_checked", docs_checked);
    report.set("view_mismatches", view_mismatches);
    report.set("parked_events", parked);

    // 5. what the clients saw
    report.set("http_500", out.status_500());
    report.set("http_5xx_total", out.status_5xx());
    report.set("requests_past_timeout", out.timeouts);
    report.set("transport_errors", out.transport_errors);
    report.set("command_retries", out.retries);
    report.set("stale_read_your_writes", out.stale_reads);
    report.set("command_statuses", json!(out.command_statuses));
    report.set("read_statuses", json!(out.read_statuses));
    if out.status_500() > 0 {
        violations.push(format!("{} responses with status 500", out.status_500()));
    }
    if out.timeouts > 0 {
        violations.push(format!(
            "{} requests hung past the client timeout",
            out.timeouts
        ));
    }
    if out.stale_reads > 0 {
        violations.push(format!(
            "{} read-your-writes queries never saw their position",
            out.stale_reads
        ));
    }
    if out.acked.is_empty() {
        violations.push("no command was acknowledged".to_owned());
    }
    report.set("check_ms", ms(started.elapsed()));
    report.set("violations", violations.len());
    report.finish();
    assert!(
        violations.is_empty(),
        "{} invariant violations:\n  {}",
        violations.len(),
        violations
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Every message of the stream up to `last_seq`, decoded strictly as `shared::Event`.
async fn read_stream(
    stream: &mut jetstream::stream::Stream,
    last_seq: u64,
) -> Vec<(u64, String, shared::Event)> {
    let mut events = Vec::new();
    if last_seq == 0 {
        return events;
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "reading the stream: {} of {last_seq} messages after 120 s",
                    events.len()
                )
            })
            .expect("the stream ended")
            .expect("message");
        let seq = m.info().expect("message info").stream_sequence;
        let e: shared::Event = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|err| panic!("seq {seq} is not an Event: {err}"));
        events.push((seq, m.subject.to_string(), e));
        if seq >= last_seq {
            return events;
        }
    }
}

/// GET through the gateway, retrying 502/503/504 (bounded): a restarted instance may briefly
/// be out of nginx's rotation.
async fn get_json(client: &Client, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client.get(path).await.expect("GET through the gateway");
        let status = resp.status();
        if status == 200 {
            return resp.json().await.expect("json");
        }
        let body = resp.text().await.unwrap_or_default();
        assert!(
            matches!(status.as_u16(), 502..=504) && Instant::now() < deadline,
            "GET {path}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `accounts` document of a tenant (pages of 1000), by id.
async fn list_accounts(client: &Client, tenant: &str) -> BTreeMap<String, Value> {
    list_view(client, tenant, "accounts").await
}

/// Every document of `tenant` in `view`, by key, read page by page.
async fn list_view(client: &Client, tenant: &str, view: &str) -> BTreeMap<String, Value> {
    let mut docs = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/v1/tenants/{tenant}/views/{view}?limit=1000&after={a}"),
            None => format!("/v1/tenants/{tenant}/views/{view}?limit=1000"),
        };
        let page = get_json(client, &path).await;
        for item in page["items"].as_array().expect("items") {
            let key = item["key"].as_str().expect("key").to_owned();
            docs.insert(key, item["document"].clone());
        }
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return docs,
        }
    }
}
