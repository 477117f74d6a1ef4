//! Wake-ups for live feeds, one NATS subscription per subject however many feeds wait on it.
//!
//! A feed reads its source (a stream, a bucket) and then waits for a message on the subject its
//! source is written on, as the sign to read again. A subscription per feed costs each feed a
//! client-side channel (~6 KiB, measured with heaptrack on 1 000 feeds); feeds on one subject
//! (one tenant's events, one document) share one here. The subscription's messages bump a
//! counter that every waiting feed sees once (`tokio::sync::watch`), so a feed learns that
//! something came since it last looked, not how much: all it needs before it reads again.
//! The subscription ends when the last feed on its subject lets go of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use futures::StreamExt as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The shared wake-up subscriptions of one instance.
#[derive(Clone)]
pub struct Wakeups {
    client: async_nats::Client,
    topics: Arc<Mutex<HashMap<String, Weak<Topic>>>>,
}

/// One subject's subscription: a task that counts its messages.
struct Topic {
    /// A receiver to clone for each new feed.
    counter: watch::Receiver<u64>,
    pump: JoinHandle<()>,
}

impl Drop for Topic {
    fn drop(&mut self) {
        // the task owns the subscription: ending it unsubscribes
        self.pump.abort();
    }
}

/// One feed's view of a subject's messages.
pub struct Wakeup {
    counter: watch::Receiver<u64>,
    _topic: Arc<Topic>,
}

impl Wakeups {
    /// Wake-ups over `client`, with no subscription yet: the first feed on a subject subscribes.
    pub fn new(client: async_nats::Client) -> Self {
        Wakeups {
            client,
            topics: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Wake-ups for messages on `subject` published from now on (the subscription is in place,
    /// on the server too, before a request this client sends afterwards is handled).
    ///
    /// # Errors
    /// When the client cannot subscribe.
    pub async fn subscribe(&self, subject: &str) -> Result<Wakeup, async_nats::SubscribeError> {
        if let Some(wakeup) = self.existing(subject) {
            return Ok(wakeup);
        }
        let mut subscription = self.client.subscribe(subject.to_owned()).await?;
        let (bump, counter) = watch::channel(0u64);
        let pump = tokio::spawn(async move {
            while subscription.next().await.is_some() {
                bump.send_modify(|n| *n = n.wrapping_add(1));
            }
            // dropping `bump` ends every feed's wait: the subscription is gone
        });
        let topic = Arc::new(Topic { counter, pump });
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        // another feed may have subscribed meanwhile: use one, drop the other
        if let Some(existing) = topics.get(subject).and_then(Weak::upgrade) {
            return Ok(Wakeup::on(existing));
        }
        topics.retain(|_, t| t.strong_count() > 0);
        topics.insert(subject.to_owned(), Arc::downgrade(&topic));
        Ok(Wakeup::on(topic))
    }

    fn existing(&self, subject: &str) -> Option<Wakeup> {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics.get(subject).and_then(Weak::upgrade).map(Wakeup::on)
    }

    /// Subjects with a subscription now (for tests and metrics).
    pub fn subscribed(&self) -> usize {
        let topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics.values().filter(|t| t.strong_count() > 0).count()
    }
}

impl Wakeup {
    fn on(topic: Arc<Topic>) -> Self {
        let mut counter = topic.counter.clone();
        // what came before this feed subscribed is not its wake-up
        counter.borrow_and_update();
        Wakeup {
            counter,
            _topic: topic,
        }
    }

    /// Whether a message came since the last look, without waiting (and takes it). A feed
    /// drains after it has read, not before, so a message that came during the read, which
    /// the read may have missed, makes it look again.
    pub fn drain(&mut self) -> bool {
        match self.counter.has_changed() {
            Ok(true) => {
                self.counter.borrow_and_update();
                true
            }
            _ => false,
        }
    }

    /// Waits for the next message; `None` when the subscription has ended.
    pub async fn next(&mut self) -> Option<()> {
        self.counter.changed().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn feeds_on_one_subject_share_a_subscription_that_ends_with_the_last() {
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.expect("connect");
        let wakeups = Wakeups::new(client.clone());
        let mut one = wakeups.subscribe("w.a").await.expect("subscribe");
        let mut two = wakeups.subscribe("w.a").await.expect("subscribe");
        let other = wakeups.subscribe("w.b").await.expect("subscribe");
        assert_eq!(wakeups.subscribed(), 2);
        assert!(!one.drain() && !two.drain(), "nothing came yet");
        client.publish("w.a", "x".into()).await.expect("publish");
        client.publish("w.a", "y".into()).await.expect("publish");
        client.flush().await.expect("flush");
        let within = Duration::from_secs(10);
        // both feeds see the messages (a wait may take one or both)
        tokio::time::timeout(within, one.next())
            .await
            .expect("woken")
            .expect("open");
        tokio::time::timeout(within, two.next())
            .await
            .expect("woken")
            .expect("open");
        testkit::eventually("both messages counted", within, async || {
            match *one.counter.borrow() {
                2 => Ok(()),
                n => Err(n),
            }
        })
        .await;
        one.counter.borrow_and_update();
        // woken once for the two: nothing more to take
        assert!(!one.drain());
        drop(other);
        assert_eq!(wakeups.subscribed(), 1, "the last feed on w.b let go");
        drop((one, two));
        assert_eq!(wakeups.subscribed(), 0);
        // a subject subscribed again works (a new subscription)
        let mut again = wakeups.subscribe("w.a").await.expect("subscribe");
        client.publish("w.a", "z".into()).await.expect("publish");
        tokio::time::timeout(within, again.next())
            .await
            .expect("woken")
            .expect("open");
    }
}
