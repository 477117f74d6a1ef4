//! `just bench`: whole-scenario benchmarks of our code against raw JetStream, both measured in
//! the same process run on the same nats-server, which this binary starts itself (file storage,
//! one replica). Progress goes to stderr, the result table to stdout, and the same results as
//! JSON to `target/bench/latest.json`. See BENCHMARKS.md for what each figure means.

// A benchmark's job is to print its result table on stdout; everything else goes to stderr.
#![allow(clippy::print_stdout)]

mod cold;
mod gateway;
mod live;
mod projection;
mod raw;
mod report;
mod scenarios;
mod sink;
mod workload;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use serde::Serialize;

use crate::report::Row;
use crate::scenarios::{Ctx, Sizes};

/// The services' allocator (their `main.rs`), so that the library rows measure what the
/// services run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmarks our code against the raw-JetStream baseline.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Small sizes for a smoke run (under a minute).
    #[arg(long)]
    quick: bool,
    /// Run only the scenarios whose name contains one of these (hot, http, many, cold,
    /// workload, projection, gateway); repeatable. Default: all.
    #[arg(long)]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench/latest.json"))]
    out: PathBuf,
}

#[derive(Serialize)]
struct Results<'a> {
    quick: bool,
    nats_server: String,
    cpus: usize,
    started_unix: i64,
    duration_secs: f64,
    ratio_kinds: &'static str,
    rows: &'a [Row],
}

const RATIO_KINDS: &str = "speed rows: ratio = ours rate / baseline rate (higher is better, target is a minimum); \
     time rows: ratio = ours mean time / baseline mean time (lower is better, target is a maximum)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let started_unix = time::OffsetDateTime::now_utc().unix_timestamp();
    let sizes = Sizes::new(args.quick);
    let server = testkit::NatsServer::start();
    let (major, minor, patch) = server.version();
    let nats_server = format!("{major}.{minor}.{patch}");
    eprintln!(
        "[bench] nats-server {nats_server} on {} (file storage, 1 replica){}",
        server.url(),
        if args.quick { ", --quick" } else { "" }
    );
    let config = aggregate::Config::parse_from([
        "bench",
        "--nats-url",
        &server.url(),
        "--insecure-no-auth",
        "--instance-id",
        "bench",
    ]);
    let app = aggregate::start(&config, aggregate::default_aggregates())
        .await
        .context("starting the aggregate library")?;
    let raw = raw::Raw::connect(&server.url()).await?;
    let ctx = Ctx {
        app,
        raw,
        sizes,
        server_pid: server.pid(),
    };

    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| name.contains(o));
    if wanted("projection") || wanted("gateway") {
        // the service binaries these scenarios start: built (or found up to date) before
        // anything is measured, not in the middle of the run
        eprintln!("[bench] building the service binaries (cargo build --release, once)");
        tokio::task::spawn_blocking(e2e::binaries).await?;
    }
    let mut rows = Vec::new();
    if wanted("hot") {
        rows.extend(scenarios::hot_library(&ctx).await?);
    }
    if wanted("http") {
        rows.extend(scenarios::hot_http(&ctx).await?);
    }
    if wanted("many") {
        rows.extend(scenarios::many(&ctx).await?);
    }
    if wanted("cold") {
        rows.extend(cold::cold_load(&ctx).await?);
    }
    if wanted("workload") {
        rows.extend(workload::library(&ctx).await?);
    }
    if wanted("projection") {
        rows.extend(projection::projection(&ctx.sizes).await?);
    }
    if wanted("gateway") {
        rows.extend(gateway::gateway(&ctx.sizes).await?);
    }

    let duration = started.elapsed();
    eprintln!("[bench] done in {duration:.1?}");
    println!(
        "nats-server {nats_server}, {} cpus{}",
        std::thread::available_parallelism().map_or(0, usize::from),
        if args.quick { ", --quick sizes" } else { "" }
    );
    println!("ratio: {RATIO_KINDS}");
    println!();
    print!("{}", report::table(&rows));

    let results = Results {
        quick: args.quick,
        nats_server,
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        started_unix,
        duration_secs: duration.as_secs_f64(),
        ratio_kinds: RATIO_KINDS,
        rows: &rows,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    let written = std::fs::canonicalize(&args.out).unwrap_or_else(|_| args.out.clone());
    eprintln!("[bench] results written to {}", written.display());
    let missed = rows.iter().filter(|r| r.holds == Some(false)).count();
    if missed > 0 {
        eprintln!("[bench] {missed} target(s) missed (see the holds? column)");
    }
    drop(ctx);
    drop(server);
    Ok(())
}
