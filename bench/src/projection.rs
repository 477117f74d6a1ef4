//! The read side: the `projection` crate's views against what consuming the same events costs
//! without them, all on a nats-server of its own (its stream holds only valid account events).
//!
//! Baselines, same run, same events: a raw consume-and-ack (nothing written) and the KV sinks
//! of `sink.rs` (one compare-and-set write per distinct document per batch, plain and
//! pipelined: what no KV-backed view can beat). Ours: both shipped views (`accounts`,
//! `tenant-summary`) catching up over the backlog from a fresh deployment, a rebuild of each
//! into a fresh generation, then live while as many events again are published. A second
//! server runs four views in one service (the shipped two and two bench-only ones) against four
//! KV sinks at once. A third holds a larger backlog for a rebuild by the `projection` binary
//! whose peak RSS is measured.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use clap::Parser as _;
use futures::StreamExt as _;
use shared::AggregateAddress;

use crate::raw::{self, Raw};
use crate::report::{RatioKind, Row};
use crate::scenarios::{Sizes, account_in};
use crate::sink::{self, SinkMode};

/// The projection scenario's events live under their own tenant.
const PROJECTION_TENANT: &str = "bench-projection";
/// Accounts the projection rows' events are spread over.
const ACCOUNTS: usize = 10_000;
/// The live and rebuild target against the best KV sink / the raw consume-and-ack.
const TARGET: f64 = 0.8;
/// The memory target of the service during a rebuild, MiB.
const REBUILD_RSS_TARGET_MIB: f64 = 256.0;

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// Account events round-robin over `accounts` (versions contiguous per account), made in
/// pieces of at most `piece` so a large backlog never sits in memory whole.
struct EventSource {
    addresses: Vec<AggregateAddress>,
    versions: Vec<u64>,
    next: usize,
}

impl EventSource {
    fn new(accounts: usize) -> anyhow::Result<EventSource> {
        Ok(EventSource {
            addresses: (0..accounts)
                .map(|i| account_in(PROJECTION_TENANT, &format!("a-{i}")))
                .collect::<anyhow::Result<Vec<_>>>()?,
            versions: vec![0; accounts],
            next: 0,
        })
    }

    fn take(&mut self, count: usize) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
        (0..count)
            .map(|_| {
                let i = self.next % self.addresses.len();
                self.next += 1;
                self.versions[i] += 1;
                let address = &self.addresses[i];
                raw::account_event(address, self.versions[i]).map(|body| (address.subject(), body))
            })
            .collect()
    }

    async fn publish(&mut self, raw: &Raw, count: usize) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(20_000);
            raw.publish_all(self.take(n)?).await?;
            left -= n;
        }
        Ok(())
    }
}

/// A durable pull consumer with explicit ack per message, batches of 500 (`max_ack_pending`
/// 500), over everything the view filter holds; returns events/s.
async fn raw_consume(js: &jetstream::Context) -> anyhow::Result<f64> {
    let config = jetstream::consumer::pull::Config {
        durable_name: Some("bench-projection-baseline".to_owned()),
        filter_subject: shared::STREAM_FILTER.to_owned(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        max_ack_pending: 500,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer = js
        .create_consumer_on_stream(config, shared::STREAM_NAME)
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await?;
    let mut seen = 0usize;
    while seen < pending {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("baseline consumer went quiet")?
            .context("baseline consumer ended")?
            .map_err(|e| anyhow::anyhow!("baseline consumer: {e}"))?;
        msg.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        seen += 1;
    }
    let rate = seen as f64 / started.elapsed().as_secs_f64();
    drop(messages);
    let _ = js
        .delete_consumer_from_stream("bench-projection-baseline", shared::STREAM_NAME)
        .await;
    Ok(rate)
}

async fn last_seq(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(shared::STREAM_NAME).await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// Per view, the commits its live consumer loop made so far (`projection_view_commits`).
fn commits(app: &projection::App, names: &[&str]) -> anyhow::Result<Vec<u64>> {
    names
        .iter()
        .map(|name| {
            let rt = app.views.get(*name).context("a view is missing")?.current();
            Ok(rt.metrics.commits.get_or_create(&rt.labels).get())
        })
        .collect()
}

/// Waits until every view's checkpoint reaches `target`; returns, per view, the time from
/// `started` at which it did.
async fn caught_up(
    app: &projection::App,
    names: &[&str],
    target: u64,
    started: Instant,
    within: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut at: Vec<Option<Duration>> = vec![None; names.len()];
    let deadline = Instant::now() + within;
    loop {
        for (i, name) in names.iter().enumerate() {
            if at[i].is_some() {
                continue;
            }
            let slot = app.views.get(*name).context("a view is missing")?;
            let position = slot
                .current()
                .checkpoint()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if position >= target {
                at[i] = Some(started.elapsed());
            }
        }
        if at.iter().all(Option::is_some) {
            return Ok(at.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!("the views did not reach position {target} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn speed_row(name: String, ours: f64, baseline: f64, target: Option<f64>, note: &str) -> Row {
    let ratio = ours / baseline;
    Row {
        scenario: name,
        unit: "events/s".to_owned(),
        ours: Some(ours),
        baseline: Some(baseline),
        ratio_kind: RatioKind::Speed,
        ratio: Some(ratio),
        target,
        holds: target.map(|t| ratio >= t),
        ours_p50_ms: None,
        ours_p99_ms: None,
        baseline_p50_ms: None,
        baseline_p99_ms: None,
        note: note.to_owned(),
    }
}

/// The projection rows (see the module documentation).
pub(crate) async fn projection(sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let mut rows = views(sizes).await?;
    rows.extend(four_views(sizes).await?);
    rows.extend(rebuild_memory(sizes).await?);
    Ok(rows)
}

/// A nats-server of the scenario's own whose stream holds `events` valid account events over
/// `accounts` accounts; the source goes on from there. Also how long the publishing took.
async fn backlog(
    accounts: usize,
    events: usize,
) -> anyhow::Result<(testkit::NatsServer, Raw, EventSource, Duration)> {
    let server = testkit::NatsServer::start();
    let raw = Raw::connect(&server.url()).await?;
    platform::nats::ensure_stream(&raw.js, &shared::StreamSpec::events(1)).await?;
    let mut source = EventSource::new(accounts)?;
    let started = Instant::now();
    source.publish(&raw, events).await?;
    Ok((server, raw, source, started.elapsed()))
}

async fn views(sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let events = sizes.projection_events;
    let (server, raw, mut source, took) = backlog(ACCOUNTS, events).await?;
    let js = &raw.js;
    progress(format_args!(
        "projection: {events} events over {ACCOUNTS} accounts written in {took:.1?} (own nats-server)"
    ));

    // baselines, on the same backlog
    let consume = raw_consume(js).await?;
    progress(format_args!(
        "projection baseline: raw consume-and-ack {consume:.0}/s"
    ));
    let modes = [
        SinkMode {
            in_flight: 256,
            pipelined: false,
        },
        SinkMode {
            in_flight: 1024,
            pipelined: false,
        },
        SinkMode {
            in_flight: 1024,
            pipelined: true,
        },
    ];
    let mut sinks = Vec::new();
    for (i, mode) in modes.into_iter().enumerate() {
        let rate = sink::run(js, &format!("S{i}"), mode).await?;
        progress(format_args!(
            "projection baseline: {} {rate:.0}/s",
            mode.label()
        ));
        sinks.push((mode, rate));
    }
    let (best_mode, best_sink) = sinks
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .context("no sink ran")?;
    let best = best_mode.label();
    // what two views at once can reach: two of the best sinks at once, their rates summed
    let pair =
        futures::future::try_join_all(["P0", "P1"].map(|label| sink::run(js, label, best_mode)))
            .await?;
    let pair_total: f64 = pair.iter().sum();
    progress(format_args!(
        "projection baseline: 2 x {best} at once {pair_total:.0}/s in total ({:.0}, {:.0})",
        pair[0], pair[1]
    ));

    // ours: both shipped views, fresh, over the backlog
    let config = projection::Config::parse_from([
        "bench",
        "--nats-url",
        &server.url(),
        "--insecure-no-auth",
        "--instance-id",
        "bench",
    ]);
    let mut app = projection::start(&config, projection::default_views())
        .await
        .context("starting the projection library")?;
    let names = ["accounts", "tenant-summary"];
    let limit = Duration::from_secs(300);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let target = last_seq(js).await?;
    let started = Instant::now();
    let handles = app.spawn_projectors(&shutdown);
    let catch_up = caught_up(&app, &names, target, started, limit).await?;
    let catch_up_commits = commits(&app, &names)?;
    progress(format_args!(
        "projection catch-up of a fresh deployment: accounts {:.1?}, tenant-summary {:.1?}",
        catch_up[0], catch_up[1]
    ));

    // ours: a rebuild of each view into a fresh generation, over the same backlog
    let mut rebuilds = Vec::new();
    for name in names {
        let view = projection::default_views()
            .into_iter()
            .find(|v| v.name().as_str() == name)
            .context("a view is missing")?;
        let started = Instant::now();
        let mut done_at = None;
        let mut shown = Instant::now();
        let claim = app.generations.claim(&*view).await?;
        app.generations
            .rebuild(view, claim, |p| {
                if p.done >= p.total && done_at.is_none() {
                    done_at = Some(started.elapsed());
                }
                if shown.elapsed() > Duration::from_secs(1) {
                    shown = Instant::now();
                    progress(format_args!(
                        "projection rebuild {name}: {}/{} at {:.0}/s",
                        p.done, p.total, p.rate
                    ));
                }
            })
            .await
            .with_context(|| format!("rebuilding {name}"))?;
        let took = done_at.unwrap_or_else(|| started.elapsed());
        let rate = events as f64 / took.as_secs_f64();
        progress(format_args!(
            "projection rebuild {name}: {events} events in {took:.2?} ({rate:.0}/s)"
        ));
        rebuilds.push((name, rate, took));
    }

    // ours: live, both views running, as many events again published
    let commits_before = commits(&app, &names)?;
    let started = Instant::now();
    source.publish(&raw, events).await?;
    let target = last_seq(js).await?;
    let live = caught_up(&app, &names, target, started, limit).await?;
    let live_commits: Vec<u64> = commits(&app, &names)?
        .iter()
        .zip(&commits_before)
        .map(|(after, before)| after - before)
        .collect();
    progress(format_args!(
        "projection live: accounts {:.1?}, tenant-summary {:.1?}",
        live[0], live[1]
    ));
    shutdown.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    drop(app);
    drop(server);

    let mut rows = vec![Row::info(
        &format!("projection baseline: raw consume-and-ack ({events} events)"),
        "events/s",
        consume,
        "durable pull consumer, explicit ack per message, batches of 500; writes nothing",
    )];
    for (mode, rate) in &sinks {
        rows.push(speed_row(
            format!("projection baseline: {} vs raw consume", mode.label()),
            *rate,
            consume,
            None,
            "one compare-and-set write per distinct document per batch of 500, then ack; \
             baseline = raw consume-and-ack",
        ));
    }
    // what two views at once can reach live: two of the best sinks while the events are
    // published (the publisher shares the machine, as in the views' live phase), on a server
    // of their own (the views' stream keeps its backlog)
    let pair_live = {
        let (_live_server, live_raw, mut live_source, _) = backlog(ACCOUNTS, 0).await?;
        let since = Instant::now();
        let sinks = futures::future::try_join_all(
            ["L0", "L1"].map(|label| sink::run_live(&live_raw.js, label, best_mode, events, since)),
        );
        let (rates, published) = tokio::join!(sinks, live_source.publish(&live_raw, events));
        published?;
        let rates = rates?;
        progress(format_args!(
            "projection baseline: 2 x {best} at once, live {:.0}/s in total ({:.0}, {:.0})",
            rates[0] + rates[1],
            rates[0],
            rates[1]
        ));
        rates[0] + rates[1]
    };
    rows.push(speed_row(
        format!("projection baseline: 2 x {best} at once, live, vs raw consume"),
        pair_live,
        consume,
        None,
        &format!(
            "two sinks on a server of their own while {events} events are published to it \
             (from the first publish until both wrote the last): the ceiling of two views live; \
             baseline = raw consume-and-ack"
        ),
    ));
    rows.push(speed_row(
        format!("projection baseline: 2 x {best} at once vs raw consume"),
        pair_total,
        consume,
        None,
        "two sinks on their own consumers and buckets, same backlog, rates summed: the \
         ceiling of two views at once; baseline = raw consume-and-ack",
    ));
    let per_view = |phase: &str,
                    times: &[Duration],
                    commits: &[u64],
                    target: Option<f64>,
                    pair: (f64, &str)| {
        let mut out = Vec::new();
        for ((name, t), n) in names.iter().zip(times).zip(commits) {
            out.push(speed_row(
                format!("projection {phase}: {name} ({events} events, both views running)"),
                events as f64 / t.as_secs_f64(),
                best_sink,
                target,
                &format!(
                    "{n} commits ({:.0} events per commit); baseline = best KV sink ({best})",
                    events as f64 / (*n).max(1) as f64
                ),
            ));
        }
        let slowest = times.iter().max().copied().unwrap_or_default();
        out.push(speed_row(
            format!("projection {phase}: both views together (applied events)"),
            (names.len() * events) as f64 / slowest.as_secs_f64(),
            pair.0,
            target,
            &format!(
                "2 x {events} applied events / time until both caught up; baseline = 2 x {best} at once{}, summed",
                pair.1
            ),
        ));
        out
    };
    rows.extend(per_view(
        "catch-up of a fresh deployment",
        &catch_up,
        &catch_up_commits,
        None,
        (pair_total, ""),
    ));
    rows.extend(per_view(
        "live",
        &live,
        &live_commits,
        Some(TARGET),
        (pair_live, ", live"),
    ));
    for (name, rate, took) in rebuilds {
        rows.push(speed_row(
            format!("projection rebuild: {name} ({events} events over {ACCOUNTS} accounts)"),
            rate,
            consume,
            Some(TARGET),
            &format!(
                "fresh generation until caught up ({:.2} s; pointer switch and cleanup not counted); baseline = raw consume-and-ack",
                took.as_secs_f64()
            ),
        ));
    }
    Ok(rows)
}

/// A rebuild of a large backlog by the `projection` binary (`projection rebuild --view
/// accounts`), its peak RSS (VmHWM) sampled until it exits.
async fn rebuild_memory(sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let (_, binary) = tokio::task::spawn_blocking(e2e::binaries).await?;
    let events = sizes.projection_memory_events;
    let accounts = sizes.projection_memory_accounts;
    let (server, _raw, _source, took) = backlog(accounts, events).await?;
    progress(format_args!(
        "projection memory: {events} events over {accounts} accounts written in {took:.1?}"
    ));
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&binary)
        // the service's flags before the subcommand: they are not global
        .args([
            "--nats-url",
            &server.url(),
            "--insecure-no-auth",
            "--instance-id",
            "bench-rebuild",
            "rebuild",
            "--view",
            "accounts",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the rebuild has no pid")?.to_string();
    let mut peak = 0.0f64;
    let status = loop {
        if let Some(hwm) = crate::scenarios::proc_status_mib(&pid, "VmHWM:") {
            peak = peak.max(hwm);
        }
        tokio::select! {
            s = child.wait() => break s?,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    let took = started.elapsed();
    if !status.success() {
        bail!("projection rebuild exited with {status}");
    }
    progress(format_args!(
        "projection memory: rebuild of {events} events in {took:.1?}, peak RSS {peak:.1} MiB"
    ));
    drop(server);
    Ok(vec![
        Row {
            target: Some(REBUILD_RSS_TARGET_MIB),
            holds: Some(peak > 0.0 && peak < REBUILD_RSS_TARGET_MIB),
            ..Row::info(
                &format!(
                    "memory: projection rebuild of {events} events over {accounts} accounts, peak RSS"
                ),
                "MiB; target < 256",
                peak,
                "the `projection rebuild --view accounts` process, VmHWM sampled every 50 ms until it exits",
            )
        },
        Row::info(
            &format!("projection rebuild of {events} events over {accounts} accounts, wall time"),
            "seconds",
            took.as_secs_f64(),
            "whole process: connect, replay, pointer switch, 3 s grace before the old generation is removed",
        ),
    ])
}

/// A bench-only view counting events per document: `bench-events` keys them by account (one
/// document per event, like `accounts` but another fold), `bench-types` by event type (few
/// documents, each changed by many events of a batch).
struct BenchCount {
    name: &'static str,
    key: fn(&shared::EventEnvelope) -> String,
}

const BENCH_VIEWS: [BenchCount; 2] = [
    BenchCount {
        name: "bench-events",
        key: |env| env.aggregate_id.to_string(),
    },
    BenchCount {
        name: "bench-types",
        key: |env| format!("type.{}", env.event_type),
    },
];

impl projection::view::View for BenchCount {
    fn name(&self) -> shared::ViewName {
        shared::ViewName::try_from(self.name).unwrap_or_else(|_| unreachable!())
    }

    fn version(&self) -> u32 {
        1
    }

    fn events(&self) -> Vec<projection::view::EventSpec> {
        projection::views::account_events()
    }

    fn key(&self, env: &shared::EventEnvelope) -> Option<String> {
        Some((self.key)(env))
    }

    fn apply(
        &self,
        doc: Option<serde_json::Value>,
        _: &shared::EventEnvelope,
    ) -> Result<projection::view::Fold, projection::view::ViewError> {
        let n = doc.as_ref().and_then(|d| d["count"].as_u64()).unwrap_or(0);
        Ok(projection::view::Fold::Set(
            serde_json::json!({ "count": n + 1 }),
        ))
    }
}

/// Four views on one stream (the two shipped ones and two bench-only ones) against four KV sinks
/// running at once, on a nats-server of their own: the service's total applied rate, live.
async fn four_views(sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let events = sizes.projection_events;
    let (server, raw, mut source, _) = backlog(ACCOUNTS, events).await?;
    let js = &raw.js;

    // baseline: four pipelined sinks at once, on the same backlog
    let mode = SinkMode {
        in_flight: 1024,
        pipelined: true,
    };
    let labels: Vec<String> = (0..4).map(|i| format!("F{i}")).collect();
    let sinks =
        futures::future::try_join_all(labels.iter().map(|l| sink::run(js, l, mode))).await?;
    let sinks_total: f64 = sinks.iter().sum();
    progress(format_args!(
        "projection, 4 views: four KV sinks at once {sinks_total:.0}/s in total ({})",
        sinks
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let config = projection::Config::parse_from([
        "bench",
        "--nats-url",
        &server.url(),
        "--insecure-no-auth",
        "--instance-id",
        "bench-4",
    ]);
    let mut views = projection::default_views();
    for view in BENCH_VIEWS {
        views.push(std::sync::Arc::new(view));
    }
    let names = ["accounts", "tenant-summary", "bench-events", "bench-types"];
    let mut app = projection::start(&config, views)
        .await
        .context("starting the projection library with four views")?;
    let limit = Duration::from_secs(300);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handles = app.spawn_projectors(&shutdown);
    let target = last_seq(js).await?;
    caught_up(&app, &names, target, Instant::now(), limit).await?;

    let started = Instant::now();
    source.publish(&raw, events).await?;
    let target = last_seq(js).await?;
    let live = caught_up(&app, &names, target, started, limit).await?;
    let slowest = live.iter().max().copied().unwrap_or_default();
    let total = (names.len() * events) as f64 / slowest.as_secs_f64();
    progress(format_args!(
        "projection, 4 views live: {total:.0} applied events/s in total ({})",
        names
            .iter()
            .zip(&live)
            .map(|(n, t)| format!("{n} {t:.1?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    shutdown.cancel();
    for h in handles {
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
    drop(app);
    drop(server);
    Ok(vec![speed_row(
        format!("projection live, 4 views on one stream: total applied ({events} events each)"),
        total,
        sinks_total,
        Some(TARGET),
        "accounts, tenant-summary and two bench-only views (per-account count, per-type count) \
         in one service; 4 x events / time until all caught up; baseline = four pipelined KV \
         sinks (W=1024) running at once on the same backlog, their rates summed",
    )])
}
