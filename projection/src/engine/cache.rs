//! The documents the live loop committed or read last, by stored key, and whether they are
//! every document of the bucket.
//!
//! A document missing from a cache that holds the whole bucket does not exist, so it needs no
//! read before it is created. The cache is filled once when the loop starts, by streaming the
//! bucket's current values (one ordered consumer, last value per key), when the bucket has no
//! more documents than the cache's capacity; it stops being complete when it evicts, is
//! cleared, or fails. Nothing depends on it for correctness: every write is a compare-and-set on
//! the revision the cache holds (a stale entry or a wrong "absent" is refused and read again),
//! and a fold refused against cached documents is checked again against the stored ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use quick_cache::{DefaultHashBuilder, UnitWeighter};

use crate::store::{CHECKPOINT_KEY, StoreError, StoredDoc};

/// Marks an eviction.
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicBool>);

impl quick_cache::Lifecycle<String, StoredDoc> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _: &mut Self::RequestState, _: String, _: StoredDoc) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A bounded cache of documents (least recently used go first).
pub(crate) struct DocCache {
    docs:
        quick_cache::unsync::Cache<String, StoredDoc, UnitWeighter, DefaultHashBuilder, Evictions>,
    evicted: Evictions,
    /// Filled with the whole bucket and nothing evicted or cleared since.
    complete: bool,
    capacity: usize,
}

impl DocCache {
    /// An empty cache of `capacity` documents.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let evicted = Evictions::default();
        DocCache {
            docs: quick_cache::unsync::Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                evicted.clone(),
            ),
            evicted,
            complete: false,
            capacity,
        }
    }

    /// The cached document.
    pub(crate) fn get(&self, key: &str) -> Option<&StoredDoc> {
        self.docs.get(key)
    }

    /// Whether `key` is cached.
    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.docs.contains_key(key)
    }

    /// Whether `key` is known not to exist: the cache holds the whole bucket and not `key`.
    pub(crate) fn known_absent(&self, key: &str) -> bool {
        self.is_complete() && !self.docs.contains_key(key)
    }

    /// Caches a document as committed.
    pub(crate) fn insert(&mut self, key: String, doc: StoredDoc) {
        self.docs.insert(key, doc);
    }

    /// Whether the cache holds every document of the bucket.
    pub(crate) fn is_complete(&self) -> bool {
        self.complete && !self.evicted.0.load(Ordering::Relaxed)
    }

    /// Forgets one document (it is no longer complete).
    pub(crate) fn remove(&mut self, key: &str) {
        self.docs.remove(key);
        self.complete = false;
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        self.docs.clear();
        self.complete = false;
    }

    /// Streams the bucket's documents into the (empty) cache: complete when they all fit.
    /// Returns how many were cached.
    pub(crate) async fn fill(&mut self, bucket: &kv::Store) -> Result<usize, StoreError> {
        self.clear();
        self.evicted.0.store(false, Ordering::Relaxed);
        // fresh: `kv::Store::status` answers the information cached when the bucket was opened
        let values = bucket
            .stream
            .get_info()
            .await
            .map_err(|e| StoreError::new("reading the view bucket's state", e))?
            .state
            .messages;
        // the checkpoint is a key of the bucket too
        if values > self.capacity as u64 + 1 {
            return Ok(0);
        }
        if values > 0 {
            let mut watch = bucket
                .watch_with_history(">")
                .await
                .map_err(|e| StoreError::new("streaming the view bucket", e))?;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| StoreError::new("streaming the view bucket", e))?;
                if entry.operation == kv::Operation::Put
                    && entry.key != CHECKPOINT_KEY
                    && let Ok(doc) = serde_json::from_slice(&entry.value)
                {
                    self.docs.insert(
                        entry.key.clone(),
                        StoredDoc {
                            doc,
                            revision: entry.revision,
                        },
                    );
                }
                // the last of the values there were when the watch started
                if entry.delta == 0 {
                    break;
                }
            }
        }
        self.complete = true;
        Ok(self.docs.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use testkit::NatsServer;

    async fn bucket(server: &NatsServer, docs: &[&str]) -> kv::Store {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        let kv = js
            .create_key_value(kv::Config {
                bucket: "CACHE_TEST".into(),
                ..Default::default()
            })
            .await
            .expect("bucket");
        kv.put(CHECKPOINT_KEY, Bytes::from_static(br#"{"position":9}"#))
            .await
            .expect("checkpoint");
        for key in docs {
            kv.put(*key, Bytes::from_static(br#"{"_position":1}"#))
                .await
                .expect("put");
        }
        kv
    }

    #[tokio::test]
    async fn a_cache_filled_with_the_whole_bucket_knows_what_is_absent() {
        let server = NatsServer::start();
        let kv = bucket(&server, &["t.a", "t.b", "t.c"]).await;
        let mut cache = DocCache::new(10);
        assert_eq!(cache.fill(&kv).await.expect("fill"), 3);
        assert!(cache.contains_key("t.a"));
        assert!(!cache.contains_key(CHECKPOINT_KEY));
        assert!(cache.known_absent("t.z"));
        assert!(!cache.known_absent("t.a"));
        // a document read again from the bucket: the cache no longer claims the whole bucket
        cache.remove("t.a");
        assert!(!cache.known_absent("t.z"));
    }

    #[tokio::test]
    async fn a_bucket_larger_than_the_cache_is_not_filled_and_nothing_is_known_absent() {
        let server = NatsServer::start();
        let kv = bucket(&server, &["t.a", "t.b", "t.c"]).await;
        let mut cache = DocCache::new(2);
        assert_eq!(cache.fill(&kv).await.expect("fill"), 0);
        assert!(!cache.known_absent("t.z"));
    }

    #[tokio::test]
    async fn an_eviction_ends_completeness() {
        let server = NatsServer::start();
        let kv = bucket(&server, &[]).await;
        let mut cache = DocCache::new(2);
        assert_eq!(cache.fill(&kv).await.expect("fill"), 0);
        assert!(cache.known_absent("t.z"));
        for key in ["t.a", "t.b", "t.c", "t.d"] {
            cache.insert(
                key.to_owned(),
                StoredDoc {
                    doc: serde_json::json!({}),
                    revision: 1,
                },
            );
        }
        assert!(!cache.known_absent("t.z"), "evicted documents may exist");
        cache.clear();
        assert!(!cache.known_absent("t.z"));
    }
}
