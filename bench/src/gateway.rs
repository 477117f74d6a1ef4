//! The whole stack: `scripts/stack.sh` (nats-server, 2 aggregate + 2 projection release
//! binaries, nginx) in a temporary directory on free ports, driven through the gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::report::{Row, Samples};
use crate::scenarios::Sizes;

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
    let started = Instant::now();
    for i in 0..sizes.gateway_round_trips {
        let t = Instant::now();
        let p = client.command("rt", &deposit).await?;
        client.read("rt", p).await?;
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
    Ok(rows)
}
