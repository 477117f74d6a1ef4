//! Live feeds of views over HTTP (Server-Sent Events): one document's versions, and a tenant's
//! documents of a view. Each event's `id:` is the view position (stream sequence of the event)
//! that produced the version sent, so a reconnect with `Last-Event-ID` resumes without a gap.
//! The plumbing (slots, buffers, heartbeats, slow clients, shutdown) is `platform::sse`'s.
//!
//! No server-side consumer:
//! - A document feed reads the document (from the current generation of the view) and is woken
//!   by a plain subscription on the document's subject in the view's bucket. Such a wake-up
//!   comes when the write is published, possibly before its atomic batch is committed, so an
//!   empty look is repeated a few times shortly after; a poll every heartbeat covers a lost
//!   wake-up. Versions that follow each other faster than the feed looks are coalesced: the
//!   client always gets the latest, with its position.
//! - A tenant's list feed follows the tenant's events in stream order (batch direct gets on the
//!   event stream, as the aggregate's feeds do), waits until the view has applied each page,
//!   and sends every document an event touched whose position is that event's (a document a
//!   later event changed again is sent with that later event). Without `Last-Event-ID` it
//!   starts with the current documents (no `id:`) and an `event: sync` whose `id:` is the
//!   view position they reflect.
//!
//! A deletion is an `event: deleted` with the key and position. At most one page of events and
//! the send buffer are held per feed, whatever the tenant's size.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use axum::response::sse::Event as SseEvent;
use platform::problem::Problem;
use platform::sse::{EndReason, FeedSender, Feeds, LiveArgs};
use platform::wakeup::Wakeups;
use serde_json::json;
use shared::{EventEnvelope, STREAM_NAME, TenantId};

use crate::engine::ViewRuntime;
use crate::rebuild::ViewSlot;
use crate::store::{self, StoredDoc};

/// Events read per page of a list feed.
const PAGE: usize = 256;
/// Documents per page of a list feed's first snapshot.
const SNAPSHOT_PAGE: usize = 100;
/// The longest pause while waiting for the view to apply a page.
const APPLIED_POLL_MAX: Duration = Duration::from_millis(500);

/// The live feeds of views on one instance.
pub struct Live {
    client: async_nats::Client,
    feeds: Feeds,
    wakeups: Wakeups,
}

/// The SSE event of one document version; `with_id`: carries the position as `id:`.
fn doc_event(key: &str, doc: &StoredDoc, with_id: bool) -> SseEvent {
    let event = if doc.is_deleted() {
        SseEvent::default()
            .event("deleted")
            .data(json!({"key": key, "position": doc.position()}).to_string())
    } else {
        SseEvent::default().data(store::ViewDocument::new(key, doc).to_json())
    };
    if with_id {
        event.id(doc.position().to_string())
    } else {
        event
    }
}

fn storage_gone(e: &store::StoreError) -> EndReason {
    tracing::info!(error = %e, "live view feed: view storage unavailable; the client resumes with Last-Event-ID");
    "view storage unavailable"
}

impl Live {
    /// Live view feeds over `client` with `args` as limits, ended by [`Live::close`].
    pub fn new(
        client: async_nats::Client,
        args: LiveArgs,
        metrics: &platform::metrics::Metrics,
    ) -> Self {
        Self {
            wakeups: Wakeups::new(client.clone()),
            client,
            feeds: Feeds::new(args, metrics),
        }
    }

    /// Ends every open feed (at shutdown) and refuses new ones.
    pub fn close(&self) {
        self.feeds.close();
    }

    /// A feed of one document: its current version (after `after`, the client's
    /// `Last-Event-ID`), then each new one.
    pub(crate) fn document(
        &self,
        slot: Arc<ViewSlot>,
        tenant: &TenantId,
        key: String,
        after: Option<u64>,
    ) -> Result<Response, Problem> {
        let full = ViewRuntime::full_key(tenant.as_str(), &key);
        let feed = DocFeed {
            wakeups: self.wakeups.clone(),
            slot,
            full: full.clone(),
            key,
            after,
            poll: self.feeds.args().heartbeat(),
        };
        self.feeds
            .start(format!("view document {full}"), move |out| feed.run(out))
    }

    /// A feed of a tenant's documents of a view: the current ones and a `sync` (or, resuming,
    /// nothing), then every version an event produces.
    pub(crate) fn list(
        &self,
        slot: Arc<ViewSlot>,
        tenant: TenantId,
        after: Option<u64>,
    ) -> Result<Response, Problem> {
        let label = format!("view list {}.{tenant}", slot.current().view.name());
        let feed = ListFeed {
            client: self.client.clone(),
            wakeups: self.wakeups.clone(),
            filter: shared::tenant_events_filter(&tenant, None),
            slot,
            tenant,
            next: after.map_or(0, |p| p.saturating_add(1)),
            poll: self.feeds.args().heartbeat(),
        };
        self.feeds
            .start(label, move |out| feed.run(out, after.is_none()))
    }
}

/// One document's feed.
struct DocFeed {
    wakeups: Wakeups,
    slot: Arc<ViewSlot>,
    full: String,
    key: String,
    /// The position of the last version sent (or, from `Last-Event-ID`, received).
    after: Option<u64>,
    poll: Duration,
}

impl DocFeed {
    async fn run(mut self, out: FeedSender) -> Result<(), EndReason> {
        let mut bucket = String::new();
        let mut wakeups = None;
        loop {
            let rt = self.slot.current();
            if rt.docs.name != bucket {
                // a rebuild switched the view to another bucket: subscribe there before reading
                bucket.clone_from(&rt.docs.name);
                let subject = format!("{}{}", rt.docs.prefix, self.full);
                wakeups = Some(
                    self.wakeups
                        .subscribe(&subject)
                        .await
                        .map_err(|_| "cannot subscribe")?,
                );
            }
            self.send_if_newer(&rt, &out).await?;
            let Some(sub) = wakeups.as_mut() else {
                return Err("no subscription");
            };
            // a notification that came during the read may be for a write committed only now
            let woke = sub.drain()
                || match out
                    .until(tokio::time::timeout(self.poll, sub.next()))
                    .await?
                {
                    Ok(None) => return Err("subscription ended"),
                    Ok(Some(_)) => true,
                    // the heartbeat's poll
                    Err(_) => false,
                };
            if woke {
                // a wake-up comes with the write, possibly before its batch is committed
                for pause in platform::sse::SETTLE_AFTER_WAKEUP {
                    if self.send_if_newer(&rt, &out).await? {
                        break;
                    }
                    out.idle(pause).await?;
                }
            }
        }
    }

    /// Sends the document if it is newer than what the client has; whether it did.
    async fn send_if_newer(
        &mut self,
        rt: &ViewRuntime,
        out: &FeedSender,
    ) -> Result<bool, EndReason> {
        let Some(doc) = store::read_doc(&rt.docs, &self.full)
            .await
            .map_err(|e| storage_gone(&e))?
        else {
            return Ok(false);
        };
        let position = doc.position();
        let newer = match self.after {
            Some(after) => position > after,
            // the first look: a deleted document is no document, later deletions are events
            None => !doc.is_deleted(),
        };
        self.after = Some(self.after.unwrap_or(0).max(position));
        if newer {
            out.send(doc_event(&self.key, &doc, true)).await?;
        }
        Ok(newer)
    }
}

/// A tenant's list feed.
struct ListFeed {
    client: async_nats::Client,
    wakeups: Wakeups,
    slot: Arc<ViewSlot>,
    tenant: TenantId,
    filter: String,
    /// The next stream sequence to look at.
    next: u64,
    poll: Duration,
}

impl ListFeed {
    async fn run(mut self, out: FeedSender, snapshot: bool) -> Result<(), EndReason> {
        // subscribe before the first read, so nothing appended after it goes unnoticed
        let mut wakeups = self
            .wakeups
            .subscribe(&self.filter)
            .await
            .map_err(|_| "cannot subscribe")?;
        if snapshot {
            self.snapshot(&out).await?;
        }
        // after a wake-up: the pauses left before looking again when a look found nothing
        let mut settle: &[Duration] = &[];
        loop {
            let before = self.next;
            loop {
                let page = platform::nats::direct_batch(
                    &self.client,
                    STREAM_NAME,
                    self.next.max(1),
                    &self.filter,
                    PAGE,
                )
                .await?;
                let full = page.len() == PAGE;
                if let Some(last) = page.last() {
                    self.wait_applied(last.seq, &out).await?;
                }
                let rt = self.slot.current();
                for raw in page {
                    self.next = raw.seq + 1;
                    self.send_event_docs(&rt, raw.seq, &raw.payload, &out)
                        .await?;
                }
                if !full {
                    break;
                }
            }
            // notifications that came during the read: look again at once
            if wakeups.drain() {
                settle = &platform::sse::SETTLE_AFTER_WAKEUP;
                continue;
            }
            // a wake-up comes with the publish, possibly before the stream has stored it
            if self.next == before
                && let Some((pause, rest)) = settle.split_first()
            {
                out.idle(*pause).await?;
                settle = rest;
                continue;
            }
            settle = match out
                .until(tokio::time::timeout(self.poll, wakeups.next()))
                .await?
            {
                Ok(None) => return Err("subscription ended"),
                Ok(Some(_)) => &platform::sse::SETTLE_AFTER_WAKEUP,
                Err(_) => &[],
            };
        }
    }

    /// The tenant's current documents (no `id:`), then `event: sync` with the position they
    /// reflect at least; the feed goes on after it.
    async fn snapshot(&mut self, out: &FeedSender) -> Result<(), EndReason> {
        let rt = self.slot.current();
        // read before the documents: any change made while they are listed comes after it
        let position = rt.checkpoint().await.map_err(|e| storage_gone(&e))?;
        let mut after: Option<String> = None;
        loop {
            let page = store::list_docs(&rt.docs, &self.tenant, after.as_deref(), SNAPSHOT_PAGE)
                .await
                .map_err(|e| storage_gone(&e))?;
            for item in &page.items {
                out.send(SseEvent::default().data(item.to_json())).await?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.send(
            SseEvent::default()
                .event("sync")
                .id(position.to_string())
                .data(json!({"position": position}).to_string()),
        )
        .await?;
        self.next = position + 1;
        Ok(())
    }

    /// Waits until the view has applied (or parked, or skipped) stream sequence `seq`.
    async fn wait_applied(&self, seq: u64, out: &FeedSender) -> Result<(), EndReason> {
        let mut pause = Duration::from_millis(1);
        loop {
            let position = self
                .slot
                .current()
                .checkpoint()
                .await
                .map_err(|e| storage_gone(&e))?;
            if position >= seq {
                return Ok(());
            }
            out.idle(pause).await?;
            pause = (pause * 2).min(APPLIED_POLL_MAX);
        }
    }

    /// Sends the documents the event at `seq` produced (the last one with `id:` = `seq`).
    async fn send_event_docs(
        &self,
        rt: &ViewRuntime,
        seq: u64,
        payload: &[u8],
        out: &FeedSender,
    ) -> Result<(), EndReason> {
        // not an event, or not this tenant's (never read another tenant's documents): the view
        // parked or skipped it
        let Ok(env) = serde_json::from_slice::<EventEnvelope>(payload) else {
            return Ok(());
        };
        if env.tenant_id != self.tenant {
            return Ok(());
        }
        let Ok(keys) = rt.event_keys(&env) else {
            return Ok(());
        };
        let mut docs = Vec::with_capacity(keys.len());
        for (full, local) in keys {
            let doc = store::read_doc(&rt.docs, &full)
                .await
                .map_err(|e| storage_gone(&e))?;
            if let Some(doc) = doc.filter(|d| d.position() == seq) {
                docs.push((local, doc));
            }
        }
        let count = docs.len();
        for (i, (local, doc)) in docs.into_iter().enumerate() {
            out.send(doc_event(&local, &doc, i + 1 == count)).await?;
        }
        Ok(())
    }
}
