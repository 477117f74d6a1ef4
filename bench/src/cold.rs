//! Cold loads: reading a whole history with each of our strategies against a raw read that
//! does the same work (the same mechanism and the same decode into `shared::Event`), and a
//! load from a snapshot against a raw full read.

use std::time::{Duration, Instant};

use aggregate::store::{LoadStrategy, ReadPath};
use anyhow::bail;
use async_nats::jetstream::stream::Stream;
use rand::seq::SliceRandom as _;
use shared::{AggregateAddress, STREAM_NAME};

use crate::raw;
use crate::report::{Row, Samples};
use crate::scenarios::{Ctx, account};

fn progress(msg: impl std::fmt::Display) {
    eprintln!("[bench] {msg}");
}

/// One timed read of a whole history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// `EventStore::read_with` with this strategy.
    Ours(LoadStrategy),
    /// One raw batch direct get of every event, each decoded into `shared::Event`.
    RawDirect,
    /// One raw ephemeral consumer (ack none) and one fetch of every event, each decoded.
    RawConsumer,
}

/// Every read of one round, in the order of the first round (later rounds rotate it).
const READS: [Read; 5] = [
    Read::Ours(LoadStrategy::Direct),
    Read::RawDirect,
    Read::Ours(LoadStrategy::Consumer),
    Read::RawConsumer,
    Read::Ours(LoadStrategy::Auto),
];

/// Cold load of aggregates with 10 / 100 / 1 000 / 10 000 events. Each forced strategy is
/// held to the raw read with the same mechanism (direct vs raw direct get, consumer vs raw
/// consumer), `auto` to the faster of the two; every raw read decodes the same JSON into the
/// same type (`shared::Event`), as ours does. The order of the five reads rotates from one
/// round to the next, and each read starts once the server has no fetch consumer left from
/// the previous one (both sides delete theirs in the background), so neither side pays for
/// the other's clean-up.
pub(crate) async fn cold_load(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    // the histories, written pipelined as valid account events
    for &(events, _) in &ctx.sizes.cold {
        write_history(ctx, &account(&format!("cold-{events}"))?, 1, events as u64).await?;
    }
    progress("cold load: histories written");
    let mut stream = ctx.raw.js.get_stream(STREAM_NAME).await?;
    let consumers = stream.info().await?.state.consumer_count;
    let mut rows = Vec::new();
    for &(events, reps) in &ctx.sizes.cold {
        let address = account(&format!("cold-{events}"))?;
        let mut samples: Vec<Samples> = READS.iter().map(|_| Samples::default()).collect();
        // round 0 is an unmeasured pass of everything
        let mut order: Vec<usize> = (0..READS.len()).collect();
        let mut auto_by_consumer = 0usize;
        for round in 0..=reps {
            order.shuffle(&mut rand::rng());
            for &i in &order {
                settle(&mut stream, consumers).await?;
                let (took, path) = timed_read(ctx, &address, READS[i], events).await?;
                if round > 0 {
                    samples[i].record(took);
                    if READS[i] == Read::Ours(LoadStrategy::Auto)
                        && path == Some(ReadPath::Consumer)
                    {
                        auto_by_consumer += 1;
                    }
                }
            }
        }
        let mean = |read: Read| {
            READS
                .iter()
                .position(|r| *r == read)
                .map_or(f64::NAN, |i| samples[i].mean_ms())
        };
        let (direct_ms, consumer_ms) = (mean(Read::RawDirect), mean(Read::RawConsumer));
        progress(format_args!(
            "cold load {events} events: ours direct {:.3} ms vs raw direct {direct_ms:.3} ms, ours consumer {:.3} ms vs raw consumer {consumer_ms:.3} ms, ours auto {:.3} ms",
            mean(Read::Ours(LoadStrategy::Direct)),
            mean(Read::Ours(LoadStrategy::Consumer)),
            mean(Read::Ours(LoadStrategy::Auto)),
        ));
        let both = format!(
            "raw direct {direct_ms:.3} ms, raw consumer {consumer_ms:.3} ms, both with decode; {reps} loads each"
        );
        for (i, read) in READS.iter().enumerate() {
            let Read::Ours(strategy) = read else {
                continue;
            };
            let (name, baseline_ms, which) = match strategy {
                LoadStrategy::Direct => ("direct", direct_ms, "raw direct get"),
                LoadStrategy::Consumer => ("consumer", consumer_ms, "raw consumer"),
                LoadStrategy::Auto if direct_ms <= consumer_ms => {
                    ("auto", direct_ms, "the faster raw read, raw direct get")
                }
                LoadStrategy::Auto => ("auto", consumer_ms, "the faster raw read, raw consumer"),
            };
            let chose = if *strategy == LoadStrategy::Auto {
                format!("; auto read {auto_by_consumer} of {reps} by consumer")
            } else {
                String::new()
            };
            rows.push(Row::time(
                &format!("cold load, {events} events, {name}"),
                &mut samples[i],
                baseline_ms,
                1.1,
                format!("baseline = {which} + decode into shared::Event ({both}){chose}"),
            ));
        }
    }
    rows.push(cold_load_with_snapshot(ctx).await?);
    Ok(rows)
}

/// Waits (unmeasured) until the stream has no more consumers than `consumers`: the fetch
/// consumer of the previous read, deleted in the background, is gone.
async fn settle(stream: &mut Stream, consumers: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = stream.info().await?.state.consumer_count;
        if left <= consumers {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} consumers on the stream 10 s after a read (expected {consumers})");
        }
    }
}

/// One read of the whole history of `address`, checked to return exactly `events` events;
/// for ours, also which mechanism served it.
async fn timed_read(
    ctx: &Ctx,
    address: &AggregateAddress,
    read: Read,
    events: usize,
) -> anyhow::Result<(Duration, Option<ReadPath>)> {
    let subject = address.subject();
    let t = Instant::now();
    let (n, path) = match read {
        Read::Ours(strategy) => {
            let read = ctx
                .app
                .runtime
                .store()
                .read_reporting(address, 1, strategy)
                .await?;
            (read.events.len(), Some(read.path))
        }
        Read::RawDirect => (
            decode_all(&ctx.raw.direct_get_all(&subject, events).await?)?,
            None,
        ),
        Read::RawConsumer => (
            decode_all(&ctx.raw.consumer_get_all(&subject, events).await?)?,
            None,
        ),
    };
    let took = t.elapsed();
    if n != events {
        bail!("{read:?} read {n} of {events} events");
    }
    Ok((took, path))
}

/// Decodes every body into `shared::Event`, as our reads do; returns how many.
fn decode_all(bodies: &[bytes::Bytes]) -> anyhow::Result<usize> {
    let events = bodies
        .iter()
        .map(|b| serde_json::from_slice::<shared::Event>(b))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(events.len())
}

/// Publishes valid account events `from..=to` of `address`, pipelined.
async fn write_history(
    ctx: &Ctx,
    address: &AggregateAddress,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    let subject = address.subject();
    let messages = (from..=to)
        .map(|v| raw::account_event(address, v).map(|body| (subject.clone(), body)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ctx.raw.publish_all(messages).await
}

/// A cold load (cache evicted) of an account with a long history and a snapshot, through the
/// runtime (snapshot read + the tail after it), vs the faster raw full read of its history
/// (no decoding: the strictest baseline).
async fn cold_load_with_snapshot(ctx: &Ctx) -> anyhow::Result<Row> {
    let runtime = &ctx.app.runtime;
    let events = ctx.sizes.snapshot_history as u64;
    let tail = 50u64;
    let address = account("cold-snapshot")?;
    write_history(ctx, &address, 1, events).await?;
    // a cold load of the whole history writes the snapshot (every 100 events by default) ...
    runtime.evict(&address);
    runtime.load(&address).await?;
    let js = async_nats::jetstream::new(ctx.raw.client.clone());
    let kv = js
        .get_key_value(aggregate::snapshot::SNAPSHOTS_BUCKET)
        .await?;
    let key = aggregate::snapshot::snapshot_key(&address);
    let deadline = Instant::now() + Duration::from_secs(10);
    while kv.get(&key).await?.is_none() {
        if Instant::now() > deadline {
            bail!("no snapshot of {address} was written");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and then the history grows by a tail the snapshot does not cover
    write_history(ctx, &address, events + 1, events + tail).await?;
    let total = (events + tail) as usize;
    let subject = address.subject();
    let (mut ours, mut raw_direct, mut raw_consumer) =
        (Samples::default(), Samples::default(), Samples::default());
    let reps = ctx.sizes.snapshot_loads;
    let raw_reps = reps.min(8);
    for rep in 0..=reps {
        runtime.evict(&address);
        let t = Instant::now();
        let loaded = runtime.load(&address).await?;
        let took = t.elapsed();
        if loaded.version.get() != events + tail {
            bail!("snapshot load reached version {}", loaded.version);
        }
        if rep > 0 {
            ours.record(took);
        }
        if rep <= raw_reps {
            let t = Instant::now();
            let n = ctx.raw.direct_get_all(&subject, total).await?.len();
            let took = t.elapsed();
            if rep > 0 {
                raw_direct.record(took);
            }
            let t = Instant::now();
            let m = ctx.raw.consumer_get_all(&subject, total).await?.len();
            let took_consumer = t.elapsed();
            if rep > 0 {
                raw_consumer.record(took_consumer);
            }
            if n != total || m != total {
                bail!("raw reads got {n} and {m} of {total} events");
            }
        }
    }
    // the runtime re-wrote its snapshot at most once per 100 events; it is still at `events`
    let (direct_ms, consumer_ms) = (raw_direct.mean_ms(), raw_consumer.mean_ms());
    let baseline_ms = direct_ms.min(consumer_ms);
    progress(format_args!(
        "cold load with snapshot, {total} events: ours {:.3} ms, raw direct {direct_ms:.3} ms, raw consumer {consumer_ms:.3} ms",
        ours.mean_ms()
    ));
    Ok(Row::time(
        &format!("cold load with snapshot, {total} events (snapshot + {tail}-event tail)"),
        &mut ours,
        baseline_ms,
        0.1,
        format!(
            "Runtime::load after evict: snapshot get + direct get from its sequence; baseline = faster raw full read without decoding (raw direct {direct_ms:.3} ms, raw consumer {consumer_ms:.3} ms); {reps} loads"
        ),
    ))
}
