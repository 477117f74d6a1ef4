//! Reading and appending an aggregate's events in `AGGREGATE_EVENTS`.
//!
//! Reads: batch direct get (ADR-31, one request, the server streams up to `batch` messages of
//! one subject) for short histories, and a unique ephemeral pull consumer for long ones. The
//! `Auto` strategy asks for one direct batch and decides at its first reply, whose
//! `Nats-Num-Pending` header says how long the history is: a history longer than the batch is
//! read by a consumer from the read's start instead (the rest of the batch is dropped). Appends:
//! one checked publish per event (`Nats-Expected-Last-Subject-Sequence`), or an ADR-50 atomic
//! batch for commands that produce several events.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use bytes::Bytes;
use futures::StreamExt;
use shared::{AggregateAddress, Event, STREAM_NAME};

/// The largest direct get batch asked for: the whole history in one request for `Direct` (a
/// follow-up batch is sized from the pending count the server reported, up to this). Well
/// below the client's per-subscription buffer (65 536 messages), so one burst cannot overflow it.
const MAX_DIRECT_BATCH: usize = 10_000;

/// How an aggregate's history is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadStrategy {
    /// Batch direct get for a history of at most `direct_batch` events, a consumer for a
    /// longer one (decided at the first direct reply).
    Auto,
    /// Batch direct get only.
    Direct,
    /// An ephemeral consumer only.
    Consumer,
}

/// Read limits.
#[derive(Debug, Clone, Copy)]
pub struct LoadSettings {
    /// Strategy.
    pub strategy: LoadStrategy,
    /// In `Auto`: the direct get request's batch, and the longest history read by direct get.
    /// A longer one is read by a consumer: the first direct reply's `Nats-Num-Pending` says so
    /// before the rest is decoded.
    pub direct_batch: usize,
    /// Overall bound of one read.
    pub deadline: Duration,
    /// Bound of the wait for the next message.
    pub idle_timeout: Duration,
}

impl LoadSettings {
    /// Settings measured to be good on one node (see BENCHMARKS.md): one batch direct get
    /// covers short histories in one round trip; from about a hundred events on, a consumer
    /// (its creation costs ~0.5 ms more) streams them faster than direct get.
    pub fn recommended() -> Self {
        LoadSettings {
            strategy: LoadStrategy::Auto,
            direct_batch: 128,
            deadline: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(2),
        }
    }
}

/// Which mechanism served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadPath {
    /// Batch direct get.
    Direct,
    /// An ephemeral consumer.
    Consumer,
}

/// A read's events and the mechanism that served them.
#[derive(Debug)]
pub struct Read {
    /// The events, in order.
    pub events: Vec<Stored>,
    /// What served them (what `Auto` chose).
    pub path: ReadPath,
}

/// A stored event and its stream sequence.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The event.
    pub event: Event,
    /// Its stream sequence.
    pub seq: u64,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The read did not finish within the deadline, or the server went quiet.
    #[error("reading {address} timed out after {elapsed:?} ({read} events read)")]
    Timeout {
        /// Which aggregate.
        address: String,
        /// How long it ran.
        elapsed: Duration,
        /// Events read before giving up.
        read: usize,
    },
    /// A stored message is not a valid event of this aggregate. Never skipped.
    #[error("stream sequence {seq} on {subject} is not a valid event of this aggregate: {reason}")]
    Corrupt {
        /// Sequence of the bad message.
        seq: u64,
        /// Its subject.
        subject: String,
        /// What is wrong.
        reason: String,
    },
    /// NATS failed; the source says how.
    #[error("reading events failed: {0}")]
    Nats(#[from] ReadFailure),
}

/// How talking to NATS failed during a read, with the client's typed error as the source.
#[derive(Debug, thiserror::Error)]
pub enum ReadFailure {
    /// Subscribing to the reply inbox of a direct get.
    #[error("subscribing to the reply inbox: {0}")]
    Subscribe(#[source] async_nats::SubscribeError),
    /// Sending the direct get request.
    #[error("sending the direct get request: {0}")]
    Request(#[source] async_nats::PublishError),
    /// The reply subscription ended (the connection is closing).
    #[error("the reply subscription closed")]
    SubscriptionClosed,
    /// The server answered a direct get with an unexpected status.
    #[error("direct get answered {status} {description}")]
    DirectGetStatus {
        /// The status code.
        status: u16,
        /// The server's description.
        description: String,
    },
    /// A direct get reply without a (numeric) `Nats-Sequence` header.
    #[error("direct get reply without a valid Nats-Sequence header")]
    MissingSequence,
    /// Creating the ephemeral fetch consumer.
    #[error("creating the fetch consumer: {0}")]
    CreateConsumer(#[source] jetstream::stream::ConsumerCreateStrictError),
    /// Starting a fetch.
    #[error("fetching from the consumer: {0}")]
    Fetch(#[source] jetstream::consumer::pull::BatchError),
    /// Receiving a fetched message, or reading its JetStream metadata.
    #[error("receiving a fetched message: {0}")]
    Receive(#[source] async_nats::Error),
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended first (the expected last sequence did not hold).
    #[error("another writer appended first")]
    Conflict,
    /// The stream does not support atomic batches, so a multi-event command is refused.
    #[error(
        "this stream does not support atomic batch publish (nats-server >= 2.12 with allow_atomic); multi-event commands are refused"
    )]
    AtomicUnsupported,
    /// An event is larger than the server's `max_payload`; retrying cannot help.
    #[error("an event of this command exceeds the NATS server's max_payload")]
    TooLarge,
    /// An event could not be encoded as JSON; nothing was sent.
    #[error("encoding an event failed: {0}")]
    Encode(#[source] serde_json::Error),
    /// NATS failed or timed out; the outcome is unknown (a retry with the same command id is safe).
    #[error("append failed: {0}")]
    Nats(#[from] PublishFailure),
}

/// How a publish failed, with the client's typed error as the source.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// A JetStream publish (acknowledged): its kind says why (`TimedOut`, `BrokenPipe`, ...).
    #[error("{0}")]
    JetStream(#[source] jetstream::context::PublishError),
    /// A core publish of a non-final message of an atomic batch.
    #[error("{0}")]
    Core(#[source] async_nats::PublishError),
}

/// The event store on one JetStream context.
#[derive(Clone)]
pub struct EventStore {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: LoadSettings,
    atomic: bool,
}

impl EventStore {
    /// A store; `atomic` says whether the stream allows atomic batches.
    pub fn new(client: async_nats::Client, settings: LoadSettings, atomic: bool) -> Self {
        let js = jetstream::new(client.clone());
        EventStore {
            client,
            js,
            settings,
            atomic,
        }
    }

    /// Whether the NATS connection is up (requests fail fast with 503 while it is not).
    pub fn is_connected(&self) -> bool {
        platform::nats::is_connected(&self.client)
    }

    /// The read settings.
    pub fn settings(&self) -> LoadSettings {
        self.settings
    }

    /// Reads the aggregate's events with stream sequence >= `from_seq`, in order, with the
    /// configured strategy, bounded by the deadline.
    #[tracing::instrument(skip_all, fields(subject = %address.subject(), from_seq))]
    pub async fn read(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
    ) -> Result<Vec<Stored>, LoadError> {
        self.read_with(address, from_seq, self.settings.strategy)
            .await
    }

    /// Like [`EventStore::read`] with an explicit strategy.
    pub async fn read_with(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
        strategy: LoadStrategy,
    ) -> Result<Vec<Stored>, LoadError> {
        Ok(self
            .read_reporting(address, from_seq, strategy)
            .await?
            .events)
    }

    /// Like [`EventStore::read_with`], also saying which mechanism served the read.
    pub async fn read_reporting(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
        strategy: LoadStrategy,
    ) -> Result<Read, LoadError> {
        let started = Instant::now();
        let mut out = Vec::new();
        let work = async {
            match strategy {
                LoadStrategy::Consumer => {
                    self.read_consumer(address, from_seq, &mut out).await?;
                    Ok(ReadPath::Consumer)
                }
                LoadStrategy::Direct => {
                    self.read_direct_all(address, from_seq, MAX_DIRECT_BATCH, false, &mut out)
                        .await?;
                    Ok(ReadPath::Direct)
                }
                LoadStrategy::Auto => {
                    let batch = self.settings.direct_batch.clamp(1, MAX_DIRECT_BATCH);
                    if self
                        .read_direct_all(address, from_seq, batch, true, &mut out)
                        .await?
                    {
                        return Ok(ReadPath::Direct);
                    }
                    // longer than a batch: a consumer from the start of the read. Not from
                    // after the first reply: a consumer starting inside the subject's range
                    // makes the server count its pending messages by scanning the rest of the
                    // block (filestore `NumPending`), from the start it has the count at hand
                    out.clear();
                    self.read_consumer(address, from_seq, &mut out).await?;
                    Ok(ReadPath::Consumer)
                }
            }
        };
        match tokio::time::timeout(self.settings.deadline, work).await {
            Ok(Ok(path)) => Ok(Read { events: out, path }),
            Ok(Err(LoadError::Timeout { .. })) | Err(_) => Err(LoadError::Timeout {
                address: address.to_string(),
                elapsed: started.elapsed(),
                read: out.len(),
            }),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads by batch direct get from `from_seq`: a first request for `batch` messages, then
    /// follow-ups sized from the pending count each end-of-batch reports (events appended
    /// meanwhile, or a batch the server capped). With `only_if_fits`, gives up at the first
    /// reply when the history is longer than `batch` and returns `false`, nothing added to
    /// `out`; `true` when everything was read.
    async fn read_direct_all(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
        batch: usize,
        only_if_fits: bool,
        out: &mut Vec<Stored>,
    ) -> Result<bool, LoadError> {
        let mut next = from_seq.max(1);
        let mut batch = batch;
        let mut limit = only_if_fits.then_some(batch as u64);
        loop {
            let pending = match self
                .read_direct(address, next, batch, limit.take(), out)
                .await?
            {
                DirectEnd::TooLong => return Ok(false),
                DirectEnd::Pending(0) => return Ok(true),
                DirectEnd::Pending(pending) => pending,
            };
            let Some(last) = out.last() else {
                return Ok(true);
            };
            next = last.seq + 1;
            batch = usize::try_from(pending)
                .unwrap_or(MAX_DIRECT_BATCH)
                .clamp(1, MAX_DIRECT_BATCH);
        }
    }

    /// One batch direct get (ADR-31) of up to `batch` messages from `from_seq`; appends to
    /// `out` and returns how many matching messages remain after the batch. With a `limit`,
    /// stops at the first reply when its `Nats-Num-Pending` (the matching messages after it)
    /// shows more than `limit` messages from `from_seq` on: the subscription is dropped, the
    /// server's remaining replies go nowhere.
    async fn read_direct(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
        batch: usize,
        mut limit: Option<u64>,
        out: &mut Vec<Stored>,
    ) -> Result<DirectEnd, LoadError> {
        let subject = address.subject();
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(ReadFailure::Subscribe)?;
        let request = serde_json::json!({
            "seq": from_seq,
            "next_by_subj": subject,
            "batch": batch,
        });
        self.client
            .publish_with_reply(
                format!("$JS.API.DIRECT.GET.{STREAM_NAME}"),
                inbox,
                Bytes::from(request.to_string()),
            )
            .await
            .map_err(ReadFailure::Request)?;
        let mut previous = previous_version(out, from_seq);
        loop {
            let msg = match tokio::time::timeout(self.settings.idle_timeout, sub.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(ReadFailure::SubscriptionClosed.into()),
                Err(_) => {
                    return Err(LoadError::Timeout {
                        address: address.to_string(),
                        elapsed: self.settings.idle_timeout,
                        read: out.len(),
                    });
                }
            };
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            if let Some(status) = msg.status {
                // 204 EOB ends a batch; 404 means nothing (more) on this subject
                return match status.as_u16() {
                    204 => Ok(DirectEnd::Pending(
                        header("Nats-Num-Pending")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                    )),
                    404 => Ok(DirectEnd::Pending(0)),
                    408 => Err(LoadError::Timeout {
                        address: address.to_string(),
                        elapsed: self.settings.idle_timeout,
                        read: out.len(),
                    }),
                    other => Err(ReadFailure::DirectGetStatus {
                        status: other,
                        description: msg.description.clone().unwrap_or_default(),
                    }
                    .into()),
                };
            }
            let seq: u64 = header("Nats-Sequence")
                .and_then(|v| v.parse().ok())
                .ok_or(ReadFailure::MissingSequence)?;
            let stored_subject = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Subject"))
                .map_or("", |v| v.as_str());
            if let Some(limit) = limit.take() {
                // the first reply counts the matching messages after it (an old server without
                // batch support sends no count: then read on)
                let after: u64 = header("Nats-Num-Pending")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if after >= limit {
                    return Ok(DirectEnd::TooLong);
                }
            }
            let event = decode(address, stored_subject, seq, &msg.payload, previous)?;
            previous = Some(event.version.get());
            out.push(Stored { event, seq });
        }
    }

    /// Reads with a unique ephemeral consumer, deleted afterwards (also on error or when the
    /// future is dropped), with `inactive_threshold` as the server-side backstop.
    async fn read_consumer(
        &self,
        address: &AggregateAddress,
        from_seq: u64,
        out: &mut Vec<Stored>,
    ) -> Result<(), LoadError> {
        let name = shared::ephemeral_fetch_consumer_name(address);
        let config = consumer::pull::Config {
            name: Some(name.clone()),
            filter_subject: address.subject(),
            // nothing is acked: the server keeps no per-message pending state
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: if from_seq <= 1 {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq,
                }
            },
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let created: consumer::PullConsumer = self
            .js
            .create_consumer_strict_on_stream(config, STREAM_NAME)
            .await
            .map_err(ReadFailure::CreateConsumer)?;
        // from here on the consumer is deleted whatever happens, drop included
        let _guard = DeleteOnDrop {
            js: self.js.clone(),
            name,
        };
        let mut remaining = created.cached_info().num_pending;
        let mut previous = previous_version(out, from_seq);
        while remaining > 0 {
            let batch = remaining.min(10_000) as usize;
            let mut messages = created
                .fetch()
                .max_messages(batch)
                .expires(self.settings.idle_timeout)
                .messages()
                .await
                .map_err(ReadFailure::Fetch)?;
            let mut got = 0usize;
            while let Some(msg) = messages.next().await {
                let msg = msg.map_err(ReadFailure::Receive)?;
                let info = msg.info().map_err(ReadFailure::Receive)?;
                let seq = info.stream_sequence;
                let event = decode(address, msg.subject.as_str(), seq, &msg.payload, previous)?;
                previous = Some(event.version.get());
                out.push(Stored { event, seq });
                got += 1;
            }
            if got == 0 {
                return Err(LoadError::Timeout {
                    address: address.to_string(),
                    elapsed: self.settings.idle_timeout,
                    read: out.len(),
                });
            }
            remaining = remaining.saturating_sub(got as u64);
        }
        Ok(())
    }

    /// Appends `events` after `expected_last_seq` (0 for a new aggregate); returns the stream
    /// sequence of the last one. One event: one checked publish. Several: one ADR-50 atomic
    /// batch, all or nothing.
    #[tracing::instrument(skip_all, fields(subject = %address.subject(), expected_last_seq, events = events.len()))]
    pub async fn append(
        &self,
        address: &AggregateAddress,
        expected_last_seq: u64,
        events: &[Event],
    ) -> Result<u64, AppendError> {
        let subject = address.subject();
        let headers_for = |event: &Event| -> Result<(HeaderMap, Bytes), AppendError> {
            let mut h = HeaderMap::new();
            h.insert(shared::NATS_MSG_ID, event.event_id.to_string().as_str());
            h.insert(shared::EVENT_TYPE_HEADER, event.event_type.as_str());
            h.insert(
                shared::COMMAND_ID_HEADER,
                event.command_id.to_string().as_str(),
            );
            if let Some(tp) = event
                .metadata
                .as_ref()
                .and_then(|m| m.get(shared::TRACEPARENT_METADATA_KEY))
            {
                h.insert(shared::TRACEPARENT_HEADER, tp.as_str());
            }
            let body = serde_json::to_vec(event).map_err(AppendError::Encode)?;
            Ok((h, Bytes::from(body)))
        };
        match events {
            [] => Ok(expected_last_seq),
            [event] => {
                let (mut h, body) = headers_for(event)?;
                h.insert(
                    shared::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected_last_seq.to_string().as_str(),
                );
                self.publish_acked(subject, h, body).await
            }
            [.., last] => {
                if !self.atomic {
                    return Err(AppendError::AtomicUnsupported);
                }
                let batch_id = uuid::Uuid::new_v4().simple().to_string();
                let batch_headers = |event: &Event, i: usize| {
                    let (mut h, body) = headers_for(event)?;
                    h.insert(shared::NATS_BATCH_ID, batch_id.as_str());
                    h.insert(shared::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
                    if i == 0 {
                        h.insert(
                            shared::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                            expected_last_seq.to_string().as_str(),
                        );
                    }
                    Ok::<_, AppendError>((h, body))
                };
                let n = events.len();
                for (i, event) in events[..n - 1].iter().enumerate() {
                    let (h, body) = batch_headers(event, i)?;
                    self.client
                        .publish_with_headers(subject.clone(), h, body)
                        .await
                        .map_err(|e| match e.kind() {
                            async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
                                AppendError::TooLarge
                            }
                            _ => PublishFailure::Core(e).into(),
                        })?;
                }
                let (mut h, body) = batch_headers(last, n - 1)?;
                h.insert(shared::NATS_BATCH_COMMIT, "1");
                self.publish_acked(subject, h, body).await
            }
        }
    }
}

impl EventStore {
    /// One JetStream publish, its ack awaited; returns the stream sequence.
    async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<u64, AppendError> {
        let publish_err = |e: jetstream::context::PublishError| {
            if platform::nats::is_wrong_last_sequence(&e) {
                AppendError::Conflict
            } else if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                AppendError::TooLarge
            } else {
                PublishFailure::JetStream(e).into()
            }
        };
        let ack = self
            .js
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(publish_err)?
            .await
            .map_err(publish_err)?;
        Ok(ack.sequence)
    }
}

/// How one batch direct get ended.
enum DirectEnd {
    /// The end of the batch (or nothing to read), with the matching messages after it.
    Pending(u64),
    /// The first reply showed more messages than the limit; the batch was abandoned.
    TooLong,
}

/// Deletes an ephemeral consumer when dropped: after success, after an error, and when the
/// reading future is cancelled. Best effort; `inactive_threshold` is the backstop.
struct DeleteOnDrop {
    js: jetstream::Context,
    name: String,
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let js = self.js.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = js.delete_consumer_from_stream(&name, STREAM_NAME).await {
                    tracing::debug!(consumer = %name, error = %e, "could not delete fetch consumer; inactive_threshold will");
                }
            });
        }
    }
}

/// The version the next event read must follow: the last one read so far; none when a read
/// starts mid-history (the caller checks the first against its base); 0 from the start.
fn previous_version(out: &[Stored], from_seq: u64) -> Option<u64> {
    match out.last() {
        Some(s) => Some(s.event.version.get()),
        None if from_seq <= 1 => Some(0),
        None => None,
    }
}

/// Decodes one stored message as the next event of `address`: the subject, the ids in the
/// body and the version (contiguous) must all agree. Anything else is `Corrupt`, never skipped.
fn decode(
    address: &AggregateAddress,
    subject: &str,
    seq: u64,
    payload: &[u8],
    previous_version: Option<u64>,
) -> Result<Event, LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        seq,
        subject: subject.to_owned(),
        reason,
    };
    let event: Event = serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
    if event.tenant_id != address.tenant_id
        || event.aggregate_type != address.aggregate_type
        || event.aggregate_id != address.aggregate_id
    {
        return Err(corrupt(format!(
            "body names aggregate {}, subject is {}",
            event.address(),
            address
        )));
    }
    if let Some(previous) = previous_version
        && event.version.get() != previous + 1
    {
        return Err(corrupt(format!(
            "version {} does not follow {previous}",
            event.version
        )));
    }
    Ok(event)
}
