//! Live feeds on the whole stack (release binaries behind nginx): how long after a command is
//! acknowledged its event reaches an SSE client, and what 1 000 idle open feeds cost an
//! instance in memory.
//!
//! The latency's reference is a plain NATS subscriber on the event's subject in this process,
//! timed from the same acknowledgement: the earliest any client can learn of the event. The
//! issue's targets are absolute (p99 < 10 ms idle; < 32 MiB per 1 000 idle feeds) and are
//! checked as such; the reference is shown beside them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use testkit::sse::Feed;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::report::{Row, Samples};

const TENANT: &str = "bench-live";
/// Feeds held open for the memory figure (the default `SSE_MAX_STREAMS`).
const IDLE_FEEDS: usize = 1000;
/// The pause between two commands: the feeds are idle when each command comes.
const IDLE_PAUSE: Duration = Duration::from_millis(5);

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// Reads a feed, sending (position, arrival) of every event that has an `id:`; aborting the
/// task closes the feed.
fn watch(mut feed: Feed) -> (mpsc::UnboundedReceiver<(u64, Instant)>, JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(e) = feed.next().await {
            if let Some(id) = e.id.as_deref().and_then(|i| i.parse().ok())
                && tx.send((id, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    (rx, task)
}

/// The `*_sse_open_streams` gauge of one instance (its `/metrics`).
async fn open_streams(http: &reqwest::Client, url: &str) -> anyhow::Result<i64> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find(|l| l.contains("_sse_open_streams") && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{url}/metrics has no sse_open_streams gauge"))
}

/// Waits until no instance holds an open feed: a feed notices its client gone when it next
/// writes, so a command (which every latency feed would send on) wakes them first.
async fn until_no_feed_is_open(
    stack: &e2e::Stack,
    http: &reqwest::Client,
    token: &str,
) -> anyhow::Result<()> {
    let deposit = json!({"type": "deposit", "payload": {"amount": 1}});
    command(http, &stack.gateway, token, &deposit).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, url) in &stack.services {
        loop {
            let open = open_streams(http, url).await?;
            if open == 0 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} still holds {open} feeds after the latency part ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Latencies from each acknowledgement to the arrival of its position on `rx`, until the last
/// one has arrived. `every`: each position must arrive (an event feed); else a feed may
/// coalesce versions (a document feed) and only those that arrive are timed.
async fn latencies(
    rx: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    acks: &HashMap<u64, Instant>,
    every: bool,
) -> anyhow::Result<Samples> {
    let last = acks.keys().copied().max().unwrap_or(0);
    let mut samples = Samples::default();
    loop {
        let Ok(Some((position, at))) =
            tokio::time::timeout(Duration::from_secs(30), rx.recv()).await
        else {
            anyhow::bail!(
                "a feed stopped after {} of {} events",
                samples.ops,
                acks.len()
            );
        };
        if let Some(ack) = acks.get(&position) {
            samples.record(at.saturating_duration_since(*ack));
        }
        if position >= last {
            break;
        }
    }
    if every && samples.ops != acks.len() as u64 {
        anyhow::bail!("a feed sent {} of {} events", samples.ops, acks.len());
    }
    Ok(samples)
}

async fn command(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<u64> {
    let r = http
        .post(format!(
            "{gateway}/v1/tenants/{TENANT}/aggregates/account/lat/commands"
        ))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "command: HTTP {}", r.status());
    let v: Value = r.json().await?;
    v["position"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no position in {v}"))
}

/// The rows: latency to the tenant feed, to a view document feed, and memory per 1 000 feeds on
/// each service.
pub(crate) async fn live(stack: &e2e::Stack, commands: usize) -> anyhow::Result<Vec<Row>> {
    let gw = stack.gateway.clone();
    let token = e2e::Stack::token(&[TENANT]);
    let http = reqwest::Client::new();
    let opened = command(
        &http,
        &gw,
        &token,
        &json!({"type": "open", "payload": {"owner": "Bench", "currency": "EUR"}}),
    )
    .await?;
    let from = opened + 1;
    let events = Feed::start(
        &format!("{gw}/v1/tenants/{TENANT}/events?follow=true&from_position={from}"),
        &token,
        None,
    )
    .await;
    let doc = Feed::start(
        &format!("{gw}/v1/tenants/{TENANT}/views/accounts/lat?follow=true"),
        &token,
        Some(&opened.to_string()),
    )
    .await;
    let nats = stack.nats().await;
    let mut core = nats
        .subscribe(format!("tenant.{TENANT}.aggregate.account.lat"))
        .await?;
    nats.flush().await?;
    let ((mut on_events, events_task), (mut on_doc, doc_task)) = (watch(events), watch(doc));
    // the plain subscriber sees no position: the n-th message is the n-th command's
    let (core_tx, mut on_core) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0u64;
        while core.next().await.is_some() {
            n += 1;
            if core_tx.send((n, Instant::now())).is_err() {
                return;
            }
        }
    });

    progress(format_args!(
        "live: {commands} commands, each timed to its SSE event"
    ));
    let deposit = json!({"type": "deposit", "payload": {"amount": 1}});
    let mut acks = HashMap::new();
    let mut acks_by_number = HashMap::new();
    for n in 1..=commands as u64 {
        tokio::time::sleep(IDLE_PAUSE).await;
        let position = command(&http, &gw, &token, &deposit).await?;
        let at = Instant::now();
        acks.insert(position, at);
        acks_by_number.insert(n, at);
    }
    let mut to_events = latencies(&mut on_events, &acks, true).await?;
    let mut to_doc = latencies(&mut on_doc, &acks, false).await?;
    let mut to_core = latencies(&mut on_core, &acks_by_number, true).await?;
    // the latency feeds hold slots of the 1 000 the memory part opens on one instance
    events_task.abort();
    doc_task.abort();
    until_no_feed_is_open(stack, &http, &token).await?;
    let (c50, c99) = to_core.percentiles_ms();
    let (e50, e99) = to_events.percentiles_ms();
    let (d50, d99) = to_doc.percentiles_ms();
    let mut rows = vec![
        Row::limit(
            "live: command acknowledged -> event at an SSE client (tenant feed, gateway)",
            "ms p99",
            e99,
            10.0,
            (e50, e99),
            Some((c50, c99)),
            "target p99 < 10 ms idle (absolute); baseline: a plain NATS subscriber on the subject, from the same ack",
        ),
        Row::limit(
            "live: command acknowledged -> view document at an SSE client (accounts, gateway)",
            "ms p99",
            d99,
            f64::NAN,
            (d50, d99),
            Some((c50, c99)),
            "information: includes the view's apply and commit; versions a feed coalesces are not timed",
        ),
    ];

    for (service, url) in [
        (
            "aggregate-1",
            format!(
                "{}/v1/tenants/{TENANT}/events?follow=true",
                stack.url_of("aggregate-1")
            ),
        ),
        (
            "projection-1",
            format!(
                "{}/v1/tenants/{TENANT}/views/accounts/lat?follow=true",
                stack.url_of("projection-1")
            ),
        ),
    ] {
        let before = stack.rss_kib(service);
        let mut feeds = Vec::with_capacity(IDLE_FEEDS);
        for i in 0..IDLE_FEEDS {
            feeds.push(Feed::start(&url, &token, None).await);
            if (i + 1) % 250 == 0 {
                progress(format_args!(
                    "live: {} / {IDLE_FEEDS} idle feeds open on {service}",
                    i + 1
                ));
            }
        }
        // every feed has sent what it had (the document, or nothing): they are idle now
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = stack.rss_kib(service);
        drop(feeds);
        let extra = after.saturating_sub(before) as f64 / 1024.0;
        rows.push(Row::limit(
            &format!("live: {IDLE_FEEDS} idle open feeds on {service}"),
            "MiB RSS extra",
            extra,
            32.0,
            (f64::NAN, f64::NAN),
            None,
            &format!(
                "RSS {} -> {} MiB; target < 32 MiB (absolute)",
                before / 1024,
                after / 1024
            ),
        ));
    }
    Ok(rows)
}
