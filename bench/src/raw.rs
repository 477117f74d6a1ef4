//! The baseline: the same jobs done with plain async-nats calls and nothing else (no
//! decoding, no validation, no cache, no metrics). Its own connection, like a separate app.

use std::future::IntoFuture;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures::StreamExt as _;
use shared::{AggregateAddress, CommandId, Event, EventId, STREAM_NAME, Version};
use time::OffsetDateTime;

/// Size of the raw checked-publish body (roughly one of our `deposited` events).
pub(crate) const BODY_BYTES: usize = 200;

#[derive(Clone)]
pub(crate) struct Raw {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    body: Bytes,
}

impl Raw {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Raw> {
        let client = async_nats::ConnectOptions::new()
            .name("bench-raw")
            .connect(url)
            .await
            .context("connecting the raw baseline client")?;
        let js = jetstream::new(client.clone());
        let mut body = br#"{"event_type":"deposited","payload":{"amount":1},"pad":""#.to_vec();
        body.resize(BODY_BYTES - 2, b'x');
        body.extend_from_slice(br#""}"#);
        Ok(Raw {
            client,
            js,
            body: Bytes::from(body),
        })
    }

    /// One checked publish (`Nats-Expected-Last-Subject-Sequence` = `expected`), ack awaited;
    /// returns the new sequence.
    pub(crate) async fn checked_publish(
        &self,
        subject: &str,
        expected: u64,
    ) -> anyhow::Result<u64> {
        let mut h = HeaderMap::new();
        h.insert(
            shared::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), h, self.body.clone())
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Publishes `bodies` pipelined (acks awaited per chunk), for setting up data.
    pub(crate) async fn publish_all(
        &self,
        messages: impl IntoIterator<Item = (String, Bytes)>,
    ) -> anyhow::Result<()> {
        let mut pending = Vec::with_capacity(1024);
        for (subject, body) in messages {
            pending.push(self.js.publish(subject, body).await?);
            if pending.len() == 1024 {
                futures::future::try_join_all(pending.drain(..).map(IntoFuture::into_future))
                    .await?;
            }
        }
        futures::future::try_join_all(pending.into_iter().map(IntoFuture::into_future)).await?;
        Ok(())
    }

    /// Batch direct get (ADR-31) of every message on `subject`: one request for `batch`
    /// messages, read until the 204 end-of-batch (or 404); repeated only if the server capped
    /// the batch. Returns the raw payloads.
    pub(crate) async fn direct_get_all(
        &self,
        subject: &str,
        batch: usize,
    ) -> anyhow::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(batch);
        let mut from = 1u64;
        loop {
            let inbox = self.client.new_inbox();
            let mut sub = self.client.subscribe(inbox.clone()).await?;
            let request = serde_json::json!({"seq": from, "next_by_subj": subject, "batch": batch});
            self.client
                .publish_with_reply(
                    format!("$JS.API.DIRECT.GET.{STREAM_NAME}"),
                    inbox,
                    Bytes::from(request.to_string()),
                )
                .await?;
            let mut last_seq = 0u64;
            let pending: u64 = loop {
                let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
                    .await
                    .context("direct get went quiet")?
                    .context("subscription closed")?;
                let header = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .and_then(|v| v.as_str().parse::<u64>().ok())
                };
                if let Some(status) = msg.status {
                    match status.as_u16() {
                        204 => break header("Nats-Num-Pending").unwrap_or(0),
                        404 => break 0,
                        other => bail!("direct get answered {other}"),
                    }
                }
                last_seq = header("Nats-Sequence").unwrap_or(last_seq);
                out.push(msg.payload);
            };
            if pending == 0 || last_seq == 0 {
                return Ok(out);
            }
            from = last_seq + 1;
        }
    }

    /// An ephemeral pull consumer on `subject` (no acks, memory storage), one fetch of
    /// `expected` messages, then the consumer is deleted in the background (as ours does).
    pub(crate) async fn consumer_get_all(
        &self,
        subject: &str,
        expected: usize,
    ) -> anyhow::Result<Vec<Bytes>> {
        let config = consumer::pull::Config {
            filter_subject: subject.to_owned(),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::All,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let created: consumer::PullConsumer = self
            .js
            .create_consumer_on_stream(config, STREAM_NAME)
            .await?;
        let name = created.cached_info().name.clone();
        let mut out = Vec::with_capacity(expected);
        while out.len() < expected {
            let mut messages = created
                .fetch()
                .max_messages(expected - out.len())
                .expires(Duration::from_secs(2))
                .messages()
                .await?;
            let before = out.len();
            while let Some(msg) = messages.next().await {
                out.push(
                    msg.map_err(|e| anyhow::anyhow!("fetch: {e}"))?
                        .message
                        .payload,
                );
            }
            if out.len() == before {
                bail!("consumer fetch returned nothing");
            }
        }
        let js = self.js.clone();
        tokio::spawn(async move {
            let _ = js.delete_consumer_from_stream(&name, STREAM_NAME).await;
        });
        Ok(out)
    }
}

/// A valid `account` event (version 1 is `opened`, later ones `deposited`), as our reads
/// expect it on the aggregate's subject.
pub(crate) fn account_event(address: &AggregateAddress, version: u64) -> anyhow::Result<Bytes> {
    let (event_type, payload) = if version == 1 {
        (
            "opened",
            serde_json::json!({"owner": "Bench", "currency": "EUR"}),
        )
    } else {
        ("deposited", serde_json::json!({"amount": 1}))
    };
    let event = Event {
        event_id: EventId::new(),
        command_id: CommandId::new_random(),
        tenant_id: address.tenant_id.clone(),
        aggregate_type: address.aggregate_type.clone(),
        aggregate_id: address.aggregate_id.clone(),
        version: Version(version),
        event_type: event_type.to_owned(),
        payload,
        occurred_at: OffsetDateTime::now_utc(),
        metadata: None,
    };
    Ok(Bytes::from(serde_json::to_vec(&event)?))
}
