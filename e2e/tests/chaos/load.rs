//! The load test: no fault, 2 aggregate + 2 projection instances on one nats-server behind the
//! gateway, `LOAD_CLIENTS` (32) clients for `LOAD_SECONDS` (15) on a mix of hot and cold
//! accounts, every second acknowledged command followed by a read-your-writes query.
//! Throughput, p50/p99 of commands and of read-your-writes queries, 5xx (must be 0: nothing
//! is injected) and the RSS of each service process before and after, with a bound on its
//! growth; then the shared invariant check.
//!
//! It is a test of the chaos binary rather than a separate program so that it shares the
//! harness and the invariant check, and so that CI runs it (at its small default size).

use std::time::{Duration, Instant};

use crate::harness::{Scale, Stack, Topology, env_u32};
use crate::invariants;
use crate::report::{Report, ms};
use crate::workload::{Client, Load, LoadSpec, Outcome, Workload};

/// RSS growth bound per service process over the load: both must hold.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
const MAX_RSS_FACTOR: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_through_the_gateway() {
    let scale = Scale::from_env();
    let seconds = env_u32("LOAD_SECONDS", 15).max(1);
    let clients = env_u32("LOAD_CLIENTS", 32).max(1) as usize;
    let mut report = Report::new("load", scale.factor);
    let stack = Stack::up_with(Topology::Single, 2, Some("info")).unwrap_or_else(|e| panic!("{e}"));
    let w = Workload::new(3, 5 * scale.cold_accounts());
    let client = Client::new(&stack, &w.tenants);
    let mut opened = Outcome::default();
    client.open_all(&w, &mut opened).await;

    let names: Vec<String> = stack.services.iter().map(|(n, _)| n.clone()).collect();
    let rss_before: Vec<u64> = names.iter().map(|n| stack.rss_kib(n)).collect();
    let load = Load::start(
        &client,
        &w,
        LoadSpec {
            clients,
            read_every: 2,
            hot_percent: 30,
        },
    );
    let started = load.started;
    // the fixed-duration load phase
    tokio::time::sleep(Duration::from_secs(u64::from(seconds))).await;
    let mut out = load.stop().await;
    let elapsed = started.elapsed();
    let rss_after: Vec<u64> = names.iter().map(|n| stack.rss_kib(n)).collect();

    let acked = out.ack_times.len();
    report.set("clients", clients);
    report.set("load_seconds", seconds);
    report.set("hot_accounts", w.hot.len());
    report.set("cold_accounts", w.cold.len());
    report.set("load_ms", ms(elapsed));
    report.set("load_commands_acknowledged", acked);
    report.set(
        "commands_per_second",
        (acked as f64 / elapsed.as_secs_f64()).round(),
    );
    report.set("read_your_writes_queries", out.read_latencies.len());
    report.set_percentiles("command", &out.command_latencies, &["p50", "p99"]);
    report.set_percentiles("read_your_writes", &out.read_latencies, &["p50", "p99"]);
    let mut rss_violations = Vec::new();
    for ((name, before), after) in names.iter().zip(&rss_before).zip(&rss_after) {
        report.set(&format!("rss_kib_before_{name}"), *before);
        report.set(&format!("rss_kib_after_{name}"), *after);
        let growth = after.saturating_sub(*before);
        if growth >= MAX_RSS_GROWTH_KIB || *after >= MAX_RSS_FACTOR * before {
            rss_violations.push(format!(
                "{name}: RSS {before} KiB -> {after} KiB (bound: growth < {MAX_RSS_GROWTH_KIB} KiB and < {MAX_RSS_FACTOR}x)"
            ));
        }
    }
    report.set(
        "rss_bound",
        "growth < 64 MiB and after < 2x before, per process",
    );
    let five_xx = out.status_5xx();
    out.merge(opened);
    let check_started = Instant::now();
    invariants::check(&stack, &w, &out, &mut report).await;
    eprintln!("  (invariant check took {:?})", check_started.elapsed());
    assert_eq!(
        five_xx, 0,
        "5xx answers without any fault: {:?} / {:?}",
        out.command_statuses, out.read_statuses
    );
    assert!(rss_violations.is_empty(), "{rss_violations:?}");
}
