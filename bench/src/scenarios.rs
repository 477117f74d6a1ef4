//! The scenarios. Each measures our code and the raw baseline in the same process run,
//! alternating in rounds so that drift (other load on the machine, the stream growing) hits
//! both sides alike.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate::runtime::{CommandRequest, Runtime};
use anyhow::bail;
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::json;
use shared::{AggregateAddress, Metadata};

use crate::raw::Raw;
use crate::report::{Row, Samples};

/// Problem sizes; `--quick` shrinks them for a smoke run.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) hot_commands: usize,
    pub(crate) http_commands: usize,
    pub(crate) rounds: usize,
    pub(crate) many_accounts: usize,
    pub(crate) many_clients: usize,
    pub(crate) many_phase: Duration,
    pub(crate) cold: Vec<(usize, usize)>,
    pub(crate) projection_events: usize,
    /// Events and accounts of the rebuild whose memory is measured.
    pub(crate) projection_memory_events: usize,
    pub(crate) projection_memory_accounts: usize,
    pub(crate) gateway_round_trips: usize,
    pub(crate) gateway_accounts: usize,
    pub(crate) gateway_clients: usize,
    pub(crate) gateway_phase: Duration,
    pub(crate) http_concurrent_phase: Duration,
    pub(crate) workload_accounts: usize,
    pub(crate) workload_phase: Duration,
    pub(crate) gateway_workload_accounts: usize,
    pub(crate) snapshot_history: usize,
    pub(crate) snapshot_loads: usize,
    pub(crate) live_commands: usize,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                hot_commands: 400,
                http_commands: 300,
                rounds: 2,
                many_accounts: 1_000,
                many_clients: 256,
                many_phase: Duration::from_millis(750),
                cold: vec![(10, 20), (100, 10), (1_000, 4), (10_000, 2)],
                projection_events: 10_000,
                projection_memory_events: 20_000,
                projection_memory_accounts: 2_000,
                gateway_round_trips: 300,
                gateway_accounts: 200,
                gateway_clients: 32,
                gateway_phase: Duration::from_secs(2),
                http_concurrent_phase: Duration::from_millis(1_000),
                workload_accounts: 2_000,
                workload_phase: Duration::from_millis(750),
                gateway_workload_accounts: 2_000,
                snapshot_history: 10_000,
                snapshot_loads: 20,
                live_commands: 100,
            }
        } else {
            Sizes {
                hot_commands: 6_000,
                http_commands: 4_000,
                rounds: 6,
                many_accounts: 10_000,
                many_clients: 256,
                many_phase: Duration::from_secs(8),
                cold: vec![(10, 200), (100, 100), (1_000, 30), (10_000, 8)],
                projection_events: 100_000,
                projection_memory_events: 1_000_000,
                projection_memory_accounts: 100_000,
                gateway_round_trips: 2_000,
                gateway_accounts: 2_000,
                gateway_clients: 64,
                gateway_phase: Duration::from_secs(10),
                http_concurrent_phase: Duration::from_secs(4),
                workload_accounts: 100_000,
                workload_phase: Duration::from_secs(8),
                gateway_workload_accounts: 100_000,
                snapshot_history: 10_000,
                snapshot_loads: 200,
                live_commands: 500,
            }
        }
    }
}

/// What every scenario needs.
pub(crate) struct Ctx {
    pub(crate) app: aggregate::App,
    pub(crate) raw: Raw,
    pub(crate) sizes: Sizes,
    pub(crate) server_pid: Option<u32>,
}

const TENANT: &str = "bench";

pub(crate) fn account(id: &str) -> anyhow::Result<AggregateAddress> {
    account_in(TENANT, id)
}

pub(crate) fn account_in(tenant: &str, id: &str) -> anyhow::Result<AggregateAddress> {
    Ok(AggregateAddress::new(
        tenant.parse()?,
        "account".parse()?,
        id.parse()?,
    ))
}

/// A raw subject inside the events stream, apart from every account.
pub(crate) fn raw_subject(id: &str) -> String {
    format!("tenant.{TENANT}.aggregate.raw.{id}")
}

fn command(command_type: &str, payload: serde_json::Value) -> CommandRequest {
    CommandRequest {
        command_id: None,
        command_type: command_type.to_owned(),
        payload,
        expected_version: None,
        metadata: Metadata::new(),
    }
}

pub(crate) fn open() -> CommandRequest {
    command("open", json!({"owner": "Bench", "currency": "EUR"}))
}

fn deposit() -> CommandRequest {
    command("deposit", json!({"amount": 1}))
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// Which side runs first in `round`: alternate, so neither always gets the warmer machine.
pub(crate) fn order(round: usize) -> [bool; 2] {
    if round.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

/// Hot aggregate through the library: sequential deposits on one account vs sequential raw
/// checked publishes on one subject.
pub(crate) async fn hot_library(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let runtime = &ctx.app.runtime;
    let address = account("hot-lib")?;
    runtime.handle(&address, open()).await?;
    let subject = raw_subject("hot-lib");
    let mut last = ctx.raw.checked_publish(&subject, 0).await?;
    // warm-up (connections, caches, allocator) for both, not measured
    for _ in 0..50 {
        runtime.handle(&address, deposit()).await?;
        last = ctx.raw.checked_publish(&subject, last).await?;
    }
    let per_round = ctx.sizes.hot_commands / ctx.sizes.rounds;
    let (mut ours, mut base) = (Samples::default(), Samples::default());
    for round in 0..ctx.sizes.rounds {
        for ours_turn in order(round) {
            let started = Instant::now();
            for _ in 0..per_round {
                let t = Instant::now();
                if ours_turn {
                    runtime.handle(&address, deposit()).await?;
                    ours.record(t.elapsed());
                } else {
                    last = ctx.raw.checked_publish(&subject, last).await?;
                    base.record(t.elapsed());
                }
            }
            if ours_turn {
                ours.wall += started.elapsed();
            } else {
                base.wall += started.elapsed();
            }
        }
        progress(format_args!(
            "hot aggregate (library) round {}/{}: ours {:.0}/s, raw {:.0}/s",
            round + 1,
            ctx.sizes.rounds,
            ours.rate(),
            base.rate()
        ));
    }
    Ok(vec![Row::speed(
        "hot aggregate, library (1 account, sequential deposits)",
        "commands/s",
        &mut ours,
        &mut base,
        0.8,
    )])
}

/// The HTTP baseline: an axum server (no middleware) with one route that parses the JSON body,
/// does one raw checked publish on one subject (serialised, as our runtime serialises one
/// aggregate) and answers the sequence as JSON.
async fn baseline_http_server(
    raw: Raw,
    subject: String,
) -> anyhow::Result<(
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    #[derive(Clone)]
    struct Baseline {
        raw: Raw,
        subject: Arc<String>,
        last: Arc<tokio::sync::Mutex<u64>>,
    }
    async fn publish(
        axum::extract::State(b): axum::extract::State<Baseline>,
        axum::Json(_body): axum::Json<serde_json::Value>,
    ) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
        let mut last = b.last.lock().await;
        let seq = b
            .raw
            .checked_publish(&b.subject, *last)
            .await
            .map_err(|e| (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        *last = seq;
        Ok(axum::Json(json!({ "sequence": seq })))
    }
    let last = raw.checked_publish(&subject, 0).await?;
    let router = axum::Router::new()
        .route("/raw", axum::routing::post(publish))
        .with_state(Baseline {
            raw,
            subject: Arc::new(subject),
            last: Arc::new(tokio::sync::Mutex::new(last)),
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((
        addr,
        tokio::spawn(async move { axum::serve(listener, router).await }),
    ))
}

/// POSTs `body` to `url`, failing on a non-2xx answer; reads the whole answer.
async fn post_ok(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let response = http.post(url).json(body).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "HTTP {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    // read the body, as a client would
    let _ = response.bytes().await?;
    Ok(())
}

/// Hot aggregate through HTTP (`aggregate::app` on 127.0.0.1:0, auth disabled): against an
/// axum baseline server doing one raw checked publish per request (one sequential keep-alive
/// client, then 64 concurrent clients), and, as before, against raw checked publishes.
pub(crate) async fn hot_http(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let router = aggregate::app(
        &ctx.app,
        platform::auth::Authenticator::disabled(),
        platform::http::HttpSettings {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let (base_addr, base_server) =
        baseline_http_server(ctx.raw.clone(), raw_subject("hot-http-baseline")).await?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/v1/tenants/{TENANT}/aggregates/account/hot-http/commands");
    let base_url = format!("http://{base_addr}/raw");
    let deposit_body = json!({"type": "deposit", "payload": {"amount": 1}});
    post_ok(
        &http,
        &url,
        &json!({"type": "open", "payload": {"owner": "Bench", "currency": "EUR"}}),
    )
    .await?;
    let subject = raw_subject("hot-http");
    let mut last = ctx.raw.checked_publish(&subject, 0).await?;
    for _ in 0..50 {
        post_ok(&http, &url, &deposit_body).await?;
        post_ok(&http, &base_url, &deposit_body).await?;
        last = ctx.raw.checked_publish(&subject, last).await?;
    }
    let per_round = ctx.sizes.http_commands / ctx.sizes.rounds;
    // 0 = ours, 1 = the HTTP baseline, 2 = raw publishes; the order rotates per round
    let mut sides: [Samples; 3] = Default::default();
    for round in 0..ctx.sizes.rounds {
        for k in 0..3 {
            let side = (round + k) % 3;
            let started = Instant::now();
            for _ in 0..per_round {
                let t = Instant::now();
                match side {
                    0 => post_ok(&http, &url, &deposit_body).await?,
                    1 => post_ok(&http, &base_url, &deposit_body).await?,
                    _ => last = ctx.raw.checked_publish(&subject, last).await?,
                }
                sides[side].record(t.elapsed());
            }
            sides[side].wall += started.elapsed();
        }
        progress(format_args!(
            "hot aggregate (HTTP, sequential) round {}/{}: ours {:.0}/s, HTTP baseline {:.0}/s, raw {:.0}/s",
            round + 1,
            ctx.sizes.rounds,
            sides[0].rate(),
            sides[1].rate(),
            sides[2].rate()
        ));
    }
    // 64 concurrent clients on the same account / the same baseline subject
    let (mut ours_c, mut base_c) = (Samples::default(), Samples::default());
    for round in 0..2 {
        for ours_turn in order(round) {
            let target = if ours_turn { &url } else { &base_url };
            let started = Instant::now();
            let deadline = started + ctx.sizes.http_concurrent_phase;
            let mut tasks = Vec::new();
            for _ in 0..64 {
                let (http, target, body) = (http.clone(), target.clone(), deposit_body.clone());
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        post_ok(&http, &target, &body).await?;
                        latencies.push(t.elapsed());
                    }
                    anyhow::Ok(latencies)
                }));
            }
            let side = if ours_turn { &mut ours_c } else { &mut base_c };
            for task in tasks {
                side.extend(task.await??);
            }
            side.wall += started.elapsed();
        }
        progress(format_args!(
            "hot aggregate (HTTP, 64 concurrent) round {}/2: ours {:.0}/s, HTTP baseline {:.0}/s",
            round + 1,
            ours_c.rate(),
            base_c.rate()
        ));
    }
    server.abort();
    base_server.abort();
    let [mut ours, mut base_http, mut raw] = sides;
    let mut vs_raw = Row::speed(
        "hot aggregate, HTTP vs raw publish (1 account, sequential POSTs)",
        "commands/s",
        &mut ours,
        &mut raw,
        0.8,
    );
    // information: what HTTP itself costs; the target is held against the HTTP baseline
    vs_raw.target = None;
    vs_raw.holds = None;
    vs_raw.note = "baseline = raw checked publishes, no HTTP (kept for comparison; information: the 0.8x target is held against the HTTP baseline below)".to_owned();
    Ok(vec![
        vs_raw,
        Row {
            note: "baseline = axum route doing one raw checked publish, one keep-alive client"
                .to_owned(),
            ..Row::speed(
                "hot aggregate, HTTP vs HTTP baseline (1 account, sequential)",
                "commands/s",
                &mut ours,
                &mut base_http,
                0.8,
            )
        },
        Row {
            note: "baseline = axum route doing one raw checked publish (serialised per subject)"
                .to_owned(),
            ..Row::speed(
                "hot aggregate, HTTP vs HTTP baseline (1 account, 64 concurrent clients)",
                "commands/s",
                &mut ours_c,
                &mut base_c,
                0.8,
            )
        },
    ])
}

/// Resets the process's peak RSS (VmHWM), so the next reading covers only what follows.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A `VmXXX:` line of /proc/<pid>/status, in MiB.
pub(crate) fn proc_status_mib(pid: &str, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Many aggregates: open them all, then `many_clients` concurrent clients deposit to random
/// ones for a fixed time, vs as many concurrent raw checked publishes on as many subjects.
pub(crate) async fn many(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let n = ctx.sizes.many_accounts;
    let clients = ctx.sizes.many_clients;
    let peak_reset = reset_peak_rss();
    let accounts: Arc<Vec<AggregateAddress>> = Arc::new(
        (0..n)
            .map(|i| account(&format!("many-{i}")))
            .collect::<anyhow::Result<_>>()?,
    );
    let started = Instant::now();
    futures::stream::iter(accounts.iter())
        .map(|a| ctx.app.runtime.handle(a, open()))
        .buffer_unordered(clients)
        .try_collect::<Vec<_>>()
        .await?;
    let open_ours = started.elapsed();
    let subjects: Arc<Vec<String>> =
        Arc::new((0..n).map(|i| raw_subject(&format!("many-{i}"))).collect());
    let started = Instant::now();
    let lasts: Vec<u64> = futures::stream::iter(subjects.iter())
        .map(|s| ctx.raw.checked_publish(s, 0))
        .buffered(clients)
        .try_collect()
        .await?;
    let open_raw = started.elapsed();
    progress(format_args!(
        "many aggregates: opened {n} accounts in {open_ours:.1?} (raw: {n} subjects in {open_raw:.1?})"
    ));
    let lasts: Arc<Vec<tokio::sync::Mutex<u64>>> =
        Arc::new(lasts.into_iter().map(tokio::sync::Mutex::new).collect());

    let (mut ours, mut base) = (Samples::default(), Samples::default());
    let phase = ctx.sizes.many_phase;
    for round in 0..ctx.sizes.rounds.min(2) {
        for ours_turn in order(round) {
            let started = Instant::now();
            let deadline = started + phase;
            let mut tasks = Vec::with_capacity(clients);
            for _ in 0..clients {
                let runtime: Arc<Runtime> = ctx.app.runtime.clone();
                let accounts = accounts.clone();
                let raw = ctx.raw.clone();
                let subjects = subjects.clone();
                let lasts = lasts.clone();
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let i = rand::random_range(0..accounts.len());
                        let t = Instant::now();
                        if ours_turn {
                            runtime.handle(&accounts[i], deposit()).await?;
                        } else {
                            // serialised per subject, as our runtime serialises per aggregate
                            let mut last = lasts[i].lock().await;
                            *last = raw.checked_publish(&subjects[i], *last).await?;
                        }
                        latencies.push(t.elapsed());
                    }
                    anyhow::Ok(latencies)
                }));
            }
            let side = if ours_turn { &mut ours } else { &mut base };
            for task in tasks {
                side.extend(task.await??);
            }
            side.wall += started.elapsed();
        }
        progress(format_args!(
            "many aggregates round {}/{}: ours {:.0}/s, raw {:.0}/s",
            round + 1,
            ctx.sizes.rounds.min(2),
            ours.rate(),
            base.rate()
        ));
    }
    let mut rows = vec![Row::speed(
        &format!("many aggregates, library ({n} accounts, {clients} concurrent clients)"),
        "commands/s",
        &mut ours,
        &mut base,
        0.5,
    )];
    let peak = proc_status_mib("self", "VmHWM:");
    let note = if peak_reset {
        "peak RSS since the scenario started (VmHWM reset via clear_refs); library and raw client in-process"
    } else {
        "peak RSS since process start (VmHWM could not be reset); library and raw client in-process"
    };
    if let Some(peak) = peak {
        rows.push(Row::info(
            "memory: bench process (library in-process), many aggregates",
            "MiB peak RSS",
            peak,
            note,
        ));
    }
    if let Some(server) = ctx
        .server_pid
        .and_then(|pid| proc_status_mib(&pid.to_string(), "VmHWM:"))
    {
        rows.push(Row::info(
            "memory: nats-server after many aggregates",
            "MiB peak RSS",
            server,
            "whole server lifetime so far (not reset)",
        ));
    }
    Ok(rows)
}
