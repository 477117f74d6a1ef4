//! The whole stack: `scripts/stack.sh` (nats-server, 2 aggregate + 2 projection release
//! binaries, nginx) in a temporary directory on free ports, driven through the gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::bail;
use serde_json::{Value, json};

use crate::raw::Raw;
use crate::report::{Row, Samples};
use crate::scenarios::Sizes;
use crate::workload::{Answer, RawKeys};

const TENANT: &str = "bench";

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

struct Client {
    http: reqwest::Client,
    gateway: String,
    auth: String,
}

impl Client {
    async fn command(&self, account: &str, body: &Value) -> anyhow::Result<u64> {
        let r = self
            .http
            .post(format!(
                "{}/v1/tenants/{TENANT}/aggregates/account/{account}/commands",
                self.gateway
            ))
            .header("authorization", &self.auth)
            .json(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "command: HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let v: Value = r.json().await?;
        v["position"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no position in {v}"))
    }

    async fn read(&self, account: &str, min_position: u64) -> anyhow::Result<()> {
        let r = self
            .http
            .get(format!(
                "{}/v1/tenants/{TENANT}/views/accounts/{account}?min_position={min_position}",
                self.gateway
            ))
            .header("authorization", &self.auth)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!(
                "read: HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let _ = r.bytes().await?;
        Ok(())
    }
}

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Command then read-your-writes query, sequentially (p50/p99 of the pair), then a concurrent
/// load through the gateway during which each service's peak RSS is taken.
pub(crate) async fn gateway(sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    progress("gateway: starting the stack (release binaries, nginx)");
    let stack = e2e::Stack::up_with(e2e::Topology::Single, 2, Some("warn"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?,
        gateway: stack.gateway.clone(),
        auth: format!("Bearer {}", e2e::Stack::token(&[TENANT])),
    });
    let open = json!({"type": "open", "payload": {"owner": "Bench", "currency": "EUR"}});
    let deposit = json!({"type": "deposit", "payload": {"amount": 1}});
    client.command("rt", &open).await?;
    for _ in 0..20 {
        let p = client.command("rt", &deposit).await?;
        client.read("rt", p).await?;
    }
    let mut pairs = Samples::default();
    // from the command's acknowledgement to the view's answer (the reference of the loaded row)
    let mut idle_ryw = Samples::default();
    let started = Instant::now();
    for i in 0..sizes.gateway_round_trips {
        let t = Instant::now();
        let p = client.command("rt", &deposit).await?;
        let acked = Instant::now();
        client.read("rt", p).await?;
        idle_ryw.record(acked.elapsed());
        pairs.record(t.elapsed());
        if (i + 1) % 500 == 0 {
            progress(format_args!(
                "gateway: {} / {} command + read-your-writes pairs",
                i + 1,
                sizes.gateway_round_trips
            ));
        }
    }
    pairs.wall = started.elapsed();
    let (p50, p99) = pairs.percentiles_ms();

    // concurrent load for the memory figures
    let accounts = sizes.gateway_accounts;
    for a in 0..accounts {
        client.command(&format!("m{a}"), &open).await?;
    }
    progress(format_args!(
        "gateway: {} clients on {accounts} accounts for {:?}",
        sizes.gateway_clients, sizes.gateway_phase
    ));
    let deadline = Instant::now() + sizes.gateway_phase;
    let mut tasks = Vec::new();
    for c in 0..sizes.gateway_clients {
        let client = client.clone();
        let deposit = deposit.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let account = format!("m{}", (c * 7919 + n as usize) % accounts);
                client.command(&account, &deposit).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut commands = 0;
    for t in tasks {
        commands += t.await??;
    }
    let load_rate = commands as f64 / sizes.gateway_phase.as_secs_f64();
    let ryw_row = ryw_under_load(&client, sizes, idle_ryw.percentiles_ms()).await?;

    let mut rows = vec![Row {
        target: Some(10.0),
        holds: Some(p99 < 10.0),
        ours_p50_ms: Some(p50),
        ours_p99_ms: Some(p99),
        ..Row::info(
            "end to end through the gateway: command + read-your-writes query",
            "pairs/s (sequential); target: p99 < 10 ms",
            pairs.rate(),
            "2 aggregate + 2 projection instances behind nginx, one nats-server",
        )
    }];
    rows.push(Row::info(
        "gateway under load: concurrent commands",
        "commands/s",
        load_rate,
        &format!(
            "{} clients, {accounts} accounts, during which the RSS below was taken",
            sizes.gateway_clients
        ),
    ));
    for name in ["aggregate-1", "aggregate-2", "projection-1", "projection-2"] {
        let mib = peak_rss_mib(stack.pid(name)).unwrap_or(f64::NAN);
        rows.push(Row {
            target: Some(64.0),
            holds: Some(mib < 64.0),
            ..Row::info(
                &format!("memory: {name} peak RSS (VmHWM) under the gateway load"),
                "MiB; target < 64",
                mib,
                "",
            )
        });
    }
    rows.push(ryw_row);
    // live feeds on an idle stack, before the workload fills the caches
    rows.extend(crate::live::live(&stack, sizes.live_commands).await?);
    // after the memory figures, which it would change (100 000 accounts in the caches)
    rows.extend(realistic(&stack, &client, sizes).await?);
    Ok(rows)
}

/// Read-your-writes while 64 writers load the stack: one prober sends a command and times from
/// its acknowledgement to the `accounts` view answering with `min_position` (the server waits
/// for the position), again and again for one gateway phase; the writers deposit on the
/// `m<i>` accounts. `idle`: the same latency on the idle stack (p50/p99 ms), the reference.
async fn ryw_under_load(
    client: &Arc<Client>,
    sizes: &Sizes,
    idle: (f64, f64),
) -> anyhow::Result<Row> {
    const WRITERS: usize = 64;
    let deposit = json!({"type": "deposit", "payload": {"amount": 1}});
    let open = json!({"type": "open", "payload": {"owner": "Bench", "currency": "EUR"}});
    client.command("ryw", &open).await?;
    progress(format_args!(
        "gateway: read-your-writes latency while {WRITERS} writers run for {:?}",
        sizes.gateway_phase
    ));
    let deadline = Instant::now() + sizes.gateway_phase;
    let accounts = sizes.gateway_accounts;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, deposit) = (client.clone(), deposit.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let account = format!("m{}", (w * 7919 + n) % accounts);
                client.command(&account, &deposit).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut ryw = Samples::default();
    let started = Instant::now();
    while Instant::now() < deadline {
        let p = client.command("ryw", &deposit).await?;
        let acked = Instant::now();
        client.read("ryw", p).await?;
        ryw.record(acked.elapsed());
    }
    ryw.wall = started.elapsed();
    let mut commands = 0;
    for w in writers {
        commands += w.await??;
    }
    let (p50, p99) = ryw.percentiles_ms();
    Ok(Row::limit(
        "read-your-writes under load: command acknowledged -> accounts view answers min_position (gateway)",
        "ms p99",
        p99,
        50.0,
        (p50, p99),
        Some(idle),
        &format!(
            "{} probes while {WRITERS} writers sent {:.0} commands/s; reference = the same on the idle stack; target p99 < 50 ms (absolute)",
            ryw.ops,
            commands as f64 / sizes.gateway_phase.as_secs_f64()
        ),
    ))
}

/// The realistic workload (see `workload.rs`) through the gateway, against raw concurrent
/// checked publishes on the stack's own nats-server (into a stream of their own, `BENCH_RAW`,
/// configured like the events stream, so the projections do not see them). The accounts are
/// opened by publishing their `opened` events directly (as many commands through HTTP would
/// take minutes), so the aggregate instances load each account on its first command; the
/// projections apply them before the measurement starts.
async fn realistic(
    stack: &e2e::Stack,
    client: &Arc<Client>,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Row>> {
    let n = sizes.gateway_workload_accounts;
    let url = stack
        .nats_urls
        .first()
        .ok_or_else(|| anyhow::anyhow!("the stack has no nats-server"))?;
    let raw = Raw::connect(url).await?;
    let mut config = platform::nats::stream_config(&shared::StreamSpec::events(1));
    config.name = "BENCH_RAW".to_owned();
    config.subjects = vec!["bench-raw.>".to_owned()];
    raw.js.create_stream(config).await?;
    let started = Instant::now();
    let accounts: Vec<shared::AggregateAddress> = (0..n)
        .map(|i| crate::scenarios::account(&format!("gw-{i}")))
        .collect::<anyhow::Result<_>>()?;
    raw.publish_all(
        accounts
            .iter()
            .map(|a| crate::raw::account_event(a, 1).map(|body| (a.subject(), body)))
            .collect::<anyhow::Result<Vec<_>>>()?,
    )
    .await?;
    let keys = RawKeys::open(
        raw.clone(),
        (0..n).map(|i| format!("bench-raw.gw-{i}")).collect(),
    )
    .await?;
    // let the projections apply the opens before measuring
    let mut stream = raw.js.get_stream(shared::STREAM_NAME).await?;
    let last = stream.info().await?.state.last_sequence;
    let deadline = Instant::now() + Duration::from_secs(300);
    while client.read(&format!("gw-{}", n - 1), last).await.is_err() {
        if Instant::now() > deadline {
            bail!("the projections did not apply {n} opened accounts within 300 s");
        }
    }
    progress(format_args!(
        "realistic workload (gateway): {n} accounts opened and projected in {:.1?}",
        started.elapsed()
    ));
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(1)).collect());
    let client = client.clone();
    let ours = crate::workload::side(move |i, stale| {
        let (client, seen) = (client.clone(), seen.clone());
        async move { client.workload_command(&seen, i, stale).await }
    });
    let (http, server) = crate::workload::http_baseline(keys.clone()).await?;
    let [mut ours, mut raw, mut http] = crate::workload::compare(
        "gateway",
        n,
        sizes.workload_phase,
        [
            ("ours", ours),
            ("raw", keys.side()),
            ("HTTP baseline", http),
        ],
    )
    .await;
    server.abort();
    let what = format!(
        "{n} accounts, Zipf s=1, {} writers, 5 % stale",
        crate::workload::WRITERS
    );
    Ok(vec![
        crate::workload::row(
            &format!("realistic workload, gateway ({what})"),
            ("ours", &mut ours),
            ("raw", &mut raw),
            Some(0.5),
        ),
        crate::workload::row(
            &format!("realistic workload, HTTP baseline vs raw ({what})"),
            ("HTTP baseline", &mut http),
            ("raw", &mut raw),
            None,
        ),
        crate::workload::row(
            &format!("realistic workload, gateway vs HTTP baseline ({what})"),
            ("ours", &mut ours),
            ("HTTP baseline", &mut http),
            None,
        ),
    ])
}

impl Client {
    /// A deposit on `gw-<i>`; a stale one carries the last version seen minus one and must be
    /// answered 409 `version-conflict`.
    async fn workload_command(
        &self,
        seen: &[AtomicU64],
        i: usize,
        stale: bool,
    ) -> anyhow::Result<Answer> {
        let mut body = json!({"type": "deposit", "payload": {"amount": 1}});
        if stale {
            body["expected_version"] = json!(seen[i].load(Ordering::Relaxed).saturating_sub(1));
        }
        let r = self
            .http
            .post(format!(
                "{}/v1/tenants/{TENANT}/aggregates/account/gw-{i}/commands",
                self.gateway
            ))
            .header("authorization", &self.auth)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            if let Some(version) = v["version"].as_u64() {
                seen[i].fetch_max(version, Ordering::Relaxed);
            }
            return Ok(Answer::Ok);
        }
        if stale
            && status == reqwest::StatusCode::CONFLICT
            && v["type"] == "urn:nats-es:problem:version-conflict"
        {
            if let Some(current) = v["current_version"].as_u64() {
                seen[i].fetch_max(current, Ordering::Relaxed);
            }
            return Ok(Answer::Conflict);
        }
        bail!("HTTP {status}: {v}")
    }
}
