//! The KV-sink baselines of the projection rows: the physical limit of any view kept in a
//! JetStream KV bucket. A durable pull consumer (explicit ack, batches of 500, like a view's)
//! takes the events; per batch each distinct document (here: the aggregate's key) gets ONE
//! compare-and-set write of the batch's last event for it (create, or update at the revision
//! the sink got back from its previous write: no read before a write), up to `in_flight` writes
//! at once; only then is the batch acknowledged. No decoding, no fold, no checkpoint.
//!
//! *Plain*: the next batch is pulled after this one is acknowledged. *Pipelined*: the next
//! batch is pulled and prepared while this one's writes are in flight (a writer task one batch
//! behind the reader); acknowledgements still follow the writes, and a batch's writes start
//! only after the previous batch's completed (they need its revisions).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message, consumer, kv};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};

/// Events per pulled batch (a view's default).
pub(crate) const SINK_BATCH: usize = 500;

/// How a sink runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SinkMode {
    /// Writes in flight at once.
    pub(crate) in_flight: usize,
    /// Whether the next batch is pulled and prepared while this one is written.
    pub(crate) pipelined: bool,
}

impl SinkMode {
    pub(crate) fn label(self) -> String {
        format!(
            "KV sink, {} (W={})",
            if self.pipelined { "pipelined" } else { "plain" },
            self.in_flight
        )
    }
}

/// One batch, prepared: its messages and one write per distinct key.
struct Prepared {
    messages: Vec<Message>,
    writes: Vec<(String, Bytes)>,
}

/// The document key of an event subject `tenant.<t>.aggregate.<type>.<id>`: `<t>.<id>`.
fn doc_key(subject: &str) -> String {
    let tokens: Vec<&str> = subject.split('.').collect();
    match tokens.as_slice() {
        [_, tenant, _, _, id] => format!("{tenant}.{id}"),
        _ => subject.replace('.', "_"),
    }
}

fn prepare(messages: Vec<Message>) -> Prepared {
    // the last event of each key wins: one write per distinct document
    let mut by_key: HashMap<String, usize> = HashMap::with_capacity(messages.len());
    let mut writes: Vec<(String, Bytes)> = Vec::with_capacity(messages.len());
    for m in &messages {
        let key = doc_key(m.subject.as_str());
        match by_key.get(&key) {
            Some(&i) => writes[i].1 = m.payload.clone(),
            None => {
                by_key.insert(key.clone(), writes.len());
                writes.push((key, m.payload.clone()));
            }
        }
    }
    Prepared { messages, writes }
}

/// The writer side: revisions it got back, per key.
struct Writer {
    js: jetstream::Context,
    prefix: String,
    revisions: HashMap<String, u64>,
    in_flight: usize,
}

impl Writer {
    /// Writes the batch's documents (compare-and-set, `in_flight` at once), then acks.
    async fn write(&mut self, batch: Prepared) -> anyhow::Result<usize> {
        let js = &self.js;
        let prefix = &self.prefix;
        let revisions = &self.revisions;
        let done: Vec<(String, u64)> = futures::stream::iter(batch.writes)
            .map(|(key, value)| async move {
                let mut h = HeaderMap::new();
                let expected = revisions.get(&key).copied().unwrap_or(0);
                h.insert(
                    shared::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected.to_string().as_str(),
                );
                let ack = js
                    .publish_with_headers(format!("{prefix}{key}"), h, value)
                    .await?
                    .await?;
                anyhow::Ok((key, ack.sequence))
            })
            .buffer_unordered(self.in_flight)
            .try_collect()
            .await?;
        self.revisions.extend(done);
        let n = batch.messages.len();
        for m in batch.messages {
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
        }
        Ok(n)
    }
}

/// Runs one sink over everything the stream's view filter holds; returns events/s.
pub(crate) async fn run(
    js: &jetstream::Context,
    name: &str,
    mode: SinkMode,
) -> anyhow::Result<f64> {
    consume(js, name, mode, None).await
}

/// Runs one sink live: over the next `events` the stream gets (published from `since` on, while
/// it runs); returns events/s since then.
pub(crate) async fn run_live(
    js: &jetstream::Context,
    name: &str,
    mode: SinkMode,
    events: usize,
    since: Instant,
) -> anyhow::Result<f64> {
    consume(js, name, mode, Some((events, since))).await
}

/// A sink over the backlog (`live`: `None`) or over events being published.
async fn consume(
    js: &jetstream::Context,
    name: &str,
    mode: SinkMode,
    live: Option<(usize, Instant)>,
) -> anyhow::Result<f64> {
    let bucket = format!("BENCH_SINK_{name}");
    let _ = js.delete_key_value(&bucket).await;
    let store = js
        .create_key_value(kv::Config {
            bucket: bucket.clone(),
            history: 1,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating bucket {bucket}"))?;
    let durable = format!("bench-sink-{}", name.to_lowercase());
    let config = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        filter_subject: shared::STREAM_FILTER.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        // pipelined: room for the batch being written, the one prepared and the one arriving
        max_ack_pending: if mode.pipelined { 3 } else { 1 } * SINK_BATCH as i64,
        ..Default::default()
    };
    let consumer: consumer::PullConsumer = js
        .create_consumer_on_stream(config, shared::STREAM_NAME)
        .await?;
    let pending = live.map_or(consumer.cached_info().num_pending as usize, |(n, _)| n);
    let mut writer = Writer {
        js: js.clone(),
        prefix: store.put_prefix.clone().unwrap_or(store.prefix.clone()),
        revisions: HashMap::new(),
        in_flight: mode.in_flight,
    };
    let started = live.map_or_else(Instant::now, |(_, since)| since);
    let messages = consumer
        .stream()
        .max_messages_per_batch(SINK_BATCH)
        .messages()
        .await?;
    let mut chunks = messages.ready_chunks(SINK_BATCH);
    let next = async |chunks: &mut futures::stream::ReadyChunks<_>| -> anyhow::Result<Prepared> {
        let chunk: Vec<Result<Message, _>> =
            tokio::time::timeout(Duration::from_secs(10), chunks.next())
                .await
                .context("the sink's consumer went quiet")?
                .context("the sink's consumer ended")?;
        let messages = chunk
            .into_iter()
            .collect::<Result<Vec<Message>, _>>()
            .map_err(|e| anyhow::anyhow!("sink consumer: {e}"))?;
        Ok(prepare(messages))
    };
    let mut done = 0usize;
    if mode.pipelined {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Prepared>(1);
        let writing = tokio::spawn(async move {
            let mut done = 0usize;
            while done < pending {
                let Some(batch) = rx.recv().await else { break };
                done += writer.write(batch).await?;
            }
            anyhow::Ok(done)
        });
        let mut taken = 0usize;
        while taken < pending {
            let batch = next(&mut chunks).await?;
            taken += batch.messages.len();
            if tx.send(batch).await.is_err() {
                break;
            }
        }
        drop(tx);
        done = writing.await??;
    } else {
        while done < pending {
            let batch = next(&mut chunks).await?;
            done += writer.write(batch).await?;
        }
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop(chunks);
    let _ = js
        .delete_consumer_from_stream(&durable, shared::STREAM_NAME)
        .await;
    let _ = js.delete_key_value(&bucket).await;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::doc_key;

    #[test]
    fn the_document_key_is_tenant_and_aggregate_id() {
        assert_eq!(doc_key("tenant.t1.aggregate.account.a-7"), "t1.a-7");
    }
}
