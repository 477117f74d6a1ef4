//! A realistic write workload, as public event-store benchmarks define one: `N` accounts
//! (100 000; 10 000 with `--quick`), the account of each command drawn from a Zipf distribution
//! (s = 1.0: a few hot accounts, a long tail), 64 concurrent writers, 5 % of the commands with
//! a stale `expected_version` (each answered 409 `version-conflict`). Ours through the library
//! and through the gateway; the baseline is raw concurrent checked publishes on the same key
//! distribution (serialised per subject like our runtime serialises per aggregate, 5 % of them
//! with a stale expected sequence, which the server refuses). Through the gateway a third side
//! runs: the same raw publishes behind a bare HTTP server, what any HTTP front costs here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aggregate::runtime::{CommandError, Runtime};
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use serde_json::json;
use shared::{AggregateAddress, Version};

use crate::raw::Raw;
use crate::report::{Row, Samples};

/// Concurrent writers.
pub(crate) const WRITERS: usize = 64;
/// Share of commands sent with a stale `expected_version`.
pub(crate) const STALE_SHARE: f64 = 0.05;
/// The Zipf exponent.
const ZIPF_S: f64 = 1.0;

/// Zipf-distributed indexes 0..n (index 0 the most frequent), by inverse CDF.
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub(crate) fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|k| {
                total += 1.0 / (k as f64).powf(ZIPF_S);
                total
            })
            .collect::<Vec<_>>();
        Zipf {
            cdf: cdf.into_iter().map(|c| c / total).collect(),
        }
    }

    pub(crate) fn sample(&self) -> usize {
        let u: f64 = rand::random();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// What one side of the workload did.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) samples: Samples,
    /// Intended conflicts answered (409 version-conflict / wrong last sequence).
    pub(crate) conflicts: u64,
    /// Anything else that was not a success (must be 0).
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.samples.extend(other.samples.into_latencies());
        self.conflicts += other.conflicts;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }
}

/// One writer's job: pick an account, send one command, say how it went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Ok,
    Conflict,
}

/// One side of a comparison: what a writer does for (account index, stale).
pub(crate) type Side =
    Arc<dyn Fn(usize, bool) -> BoxFuture<'static, anyhow::Result<Answer>> + Send + Sync>;

/// `op` as a [`Side`].
pub(crate) fn side<F, Fut>(op: F) -> Side
where
    F: Fn(usize, bool) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Answer>> + Send + 'static,
{
    Arc::new(move |i, stale| op(i, stale).boxed())
}

/// Runs `WRITERS` tasks for `phase`, each repeatedly calling `op(index, stale)`.
async fn drive(zipf: &Arc<Zipf>, phase: Duration, op: &Side) -> Tally {
    let started = Instant::now();
    let deadline = started + phase;
    let mut tasks = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let zipf = zipf.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let i = zipf.sample();
                let stale = rand::random::<f64>() < STALE_SHARE;
                let t = Instant::now();
                match op(i, stale).await {
                    Ok(Answer::Ok) => tally.samples.record(t.elapsed()),
                    Ok(Answer::Conflict) => {
                        tally.samples.record(t.elapsed());
                        tally.conflicts += 1;
                    }
                    Err(e) => tally.error(e),
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        match t.await {
            Ok(tally) => all.merge(tally),
            Err(e) => all.error(e),
        }
    }
    all.samples.wall = started.elapsed();
    all
}

/// The raw side: one subject per account, the last sequence of each behind a lock.
pub(crate) struct RawKeys {
    raw: Raw,
    subjects: Vec<String>,
    lasts: Vec<tokio::sync::Mutex<u64>>,
}

impl RawKeys {
    /// Publishes one message on each of `subjects` (as the accounts are opened on our side).
    pub(crate) async fn open(raw: Raw, subjects: Vec<String>) -> anyhow::Result<Arc<RawKeys>> {
        let lasts: Vec<u64> = futures::stream::iter(subjects.iter())
            .map(|s| raw.checked_publish(s, 0))
            .buffered(WRITERS)
            .try_collect()
            .await?;
        Ok(Arc::new(RawKeys {
            raw,
            subjects,
            lasts: lasts.into_iter().map(tokio::sync::Mutex::new).collect(),
        }))
    }

    /// One checked publish on key `i`; `stale` sends an expected sequence that no longer holds.
    pub(crate) async fn publish(&self, i: usize, stale: bool) -> anyhow::Result<Answer> {
        let mut last = self.lasts[i].lock().await;
        if stale {
            return match self
                .raw
                .checked_publish(&self.subjects[i], last.saturating_sub(1))
                .await
            {
                Err(e)
                    if e.downcast_ref::<async_nats::jetstream::context::PublishError>()
                        .is_some_and(|p| {
                            p.kind()
                                == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence
                        }) =>
                {
                    Ok(Answer::Conflict)
                }
                Err(e) => Err(e),
                Ok(seq) => anyhow::bail!("a stale checked publish was accepted at {seq}"),
            };
        }
        *last = self.raw.checked_publish(&self.subjects[i], *last).await?;
        Ok(Answer::Ok)
    }

    /// The raw baseline as a [`Side`].
    pub(crate) fn side(self: &Arc<Self>) -> Side {
        let keys = self.clone();
        side(move |i, stale| {
            let keys = keys.clone();
            async move { keys.publish(i, stale).await }
        })
    }
}

/// The HTTP baseline: a bare axum server (no middleware, no auth, no read side) whose one route,
/// `POST /keys/{i}?stale=<bool>`, parses the JSON body and does the raw side's checked publish
/// on key `i` (answering 409 to a refused stale one), and a [`Side`] that calls it, 64 writers
/// on one keep-alive pool. What an HTTP front costs on this machine, with nothing behind it.
pub(crate) async fn http_baseline(
    keys: Arc<RawKeys>,
) -> anyhow::Result<(Side, tokio::task::JoinHandle<std::io::Result<()>>)> {
    #[derive(serde::Deserialize)]
    struct Query {
        stale: bool,
    }
    async fn publish(
        axum::extract::State(keys): axum::extract::State<Arc<RawKeys>>,
        axum::extract::Path(i): axum::extract::Path<usize>,
        axum::extract::Query(q): axum::extract::Query<Query>,
        axum::Json(_body): axum::Json<serde_json::Value>,
    ) -> (axum::http::StatusCode, String) {
        use axum::http::StatusCode;
        if i >= keys.subjects.len() {
            return (StatusCode::NOT_FOUND, format!("no key {i}"));
        }
        match keys.publish(i, q.stale).await {
            Ok(Answer::Ok) => (StatusCode::OK, "{}".to_owned()),
            Ok(Answer::Conflict) => (StatusCode::CONFLICT, "{}".to_owned()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    let router = axum::Router::new()
        .route("/keys/{i}", axum::routing::post(publish))
        .with_state(keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()?;
    let body = json!({"type": "deposit", "payload": {"amount": 1}});
    let op = side(move |i, stale| {
        let request = http
            .post(format!("{base}/keys/{i}?stale={stale}"))
            .json(&body)
            .send();
        async move {
            let response = request.await?;
            let status = response.status();
            let text = response.text().await?;
            match status {
                reqwest::StatusCode::OK => Ok(Answer::Ok),
                reqwest::StatusCode::CONFLICT if stale => Ok(Answer::Conflict),
                _ => anyhow::bail!("HTTP {status}: {text}"),
            }
        }
    });
    Ok((op, server))
}

/// Our side through the library: a deposit on account `i`; a stale one sends the last version
/// this writer pool saw minus one.
pub(crate) async fn library_command(
    runtime: &Runtime,
    accounts: &[AggregateAddress],
    seen: &[AtomicU64],
    i: usize,
    stale: bool,
) -> anyhow::Result<Answer> {
    let mut request = aggregate::runtime::CommandRequest {
        command_id: None,
        command_type: "deposit".to_owned(),
        payload: json!({"amount": 1}),
        expected_version: None,
        metadata: shared::Metadata::new(),
    };
    if stale {
        request.expected_version = Some(Version(seen[i].load(Ordering::Relaxed).saturating_sub(1)));
    }
    match runtime.handle(&accounts[i], request).await {
        Ok(out) => {
            seen[i].fetch_max(out.version.get(), Ordering::Relaxed);
            Ok(Answer::Ok)
        }
        Err(CommandError::VersionConflict { current, .. }) if stale => {
            seen[i].fetch_max(current.get(), Ordering::Relaxed);
            Ok(Answer::Conflict)
        }
        Err(e) => Err(e.into()),
    }
}

/// The result row of one workload comparison: `ours` against `base`, each named in the note;
/// `target` None makes it information only.
pub(crate) fn row(
    scenario: &str,
    (ours_name, ours): (&str, &mut Tally),
    (base_name, base): (&str, &mut Tally),
    target: Option<f64>,
) -> Row {
    let mut row = Row::speed(
        scenario,
        "commands/s",
        &mut ours.samples,
        &mut base.samples,
        target.unwrap_or(f64::NAN),
    );
    row.note = format!(
        "{} | {}",
        ours.describe(ours_name),
        base.describe(base_name)
    );
    row.target = target;
    row.holds = target.map(|_| row.holds == Some(true) && ours.errors == 0 && base.errors == 0);
    row
}

/// The workload through the library (`Runtime::handle`, the accounts opened through it first)
/// vs raw concurrent checked publishes, in alternating rounds.
pub(crate) async fn library(ctx: &crate::scenarios::Ctx) -> anyhow::Result<Vec<Row>> {
    let n = ctx.sizes.workload_accounts;
    let phase = ctx.sizes.workload_phase;
    let runtime = ctx.app.runtime.clone();
    let accounts: Arc<Vec<AggregateAddress>> = Arc::new(
        (0..n)
            .map(|i| crate::scenarios::account(&format!("w-{i}")))
            .collect::<anyhow::Result<_>>()?,
    );
    let started = Instant::now();
    futures::stream::iter(accounts.iter())
        .map(|a| runtime.handle(a, crate::scenarios::open()))
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<_>>()
        .await?;
    let keys = RawKeys::open(
        ctx.raw.clone(),
        (0..n)
            .map(|i| crate::scenarios::raw_subject(&format!("w-{i}")))
            .collect(),
    )
    .await?;
    progress(format_args!(
        "realistic workload (library): {n} accounts and {n} raw subjects opened in {:.1?}",
        started.elapsed()
    ));
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(1)).collect());
    let ours = side(move |i, stale| {
        let (runtime, accounts, seen) = (runtime.clone(), accounts.clone(), seen.clone());
        async move { library_command(&runtime, &accounts, &seen, i, stale).await }
    });
    let [mut ours, mut base] =
        compare("library", n, phase, [("ours", ours), ("raw", keys.side())]).await;
    Ok(vec![row(
        &format!(
            "realistic workload, library ({n} accounts, Zipf s=1, {WRITERS} writers, 5 % stale)"
        ),
        ("ours", &mut ours),
        ("raw", &mut base),
        Some(0.5),
    )])
}

/// Two rounds over `n` Zipf-distributed keys, each side running `phase` per round, the sides
/// in turn (in reverse order in the second round); returns each side's tally, in order.
pub(crate) async fn compare<const K: usize>(
    via: &str,
    n: usize,
    phase: Duration,
    sides: [(&str, Side); K],
) -> [Tally; K] {
    let zipf = Arc::new(Zipf::new(n));
    let mut tallies: [Tally; K] = std::array::from_fn(|_| Tally::default());
    for round in 0..2 {
        let mut turns: Vec<usize> = (0..K).collect();
        if round % 2 == 1 {
            turns.reverse();
        }
        for k in turns {
            tallies[k].merge_phase(drive(&zipf, phase, &sides[k].1).await);
        }
        let rates = sides
            .iter()
            .zip(&tallies)
            .map(|((name, _), t)| format!("{name} {:.0}/s", t.samples.rate()))
            .collect::<Vec<_>>()
            .join(", ");
        progress(format_args!(
            "realistic workload ({via}) round {}/2: {rates}",
            round + 1
        ));
    }
    tallies
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

impl Tally {
    /// `name: <n> ok, <n> conflicts (409), <n> errors (first: ...); p95/p99.9 <ms>/<ms> ms`
    fn describe(&mut self, name: &str) -> String {
        format!(
            "{name}: {} ok, {} conflicts (409), {} errors{}; p95/p99.9 {:.2}/{:.2} ms",
            self.samples.ops - self.conflicts,
            self.conflicts,
            self.errors,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default(),
            self.samples.pct_ms(95.0),
            self.samples.pct_ms(99.9),
        )
    }

    /// Adds one measured phase (its wall time too).
    pub(crate) fn merge_phase(&mut self, phase: Tally) {
        self.samples.wall += phase.samples.wall;
        self.merge(phase);
    }
}
