//! A Server-Sent Events client for tests: opens a feed with a bearer token (and
//! `Last-Event-ID`), and reads it event by event, heartbeat comments skipped.

use std::time::Duration;

use serde_json::Value;

/// How long [`Feed::next`] waits for the next bytes before it fails the test.
pub const WAIT: Duration = Duration::from_secs(30);

/// One parsed event.
#[derive(Debug, Clone)]
pub struct Sse {
    /// `id:`, the stream position.
    pub id: Option<String>,
    /// `event:`, when not a plain message.
    pub event: Option<String>,
    /// `data:`, parsed as JSON when it is JSON.
    pub data: Value,
}

/// A feed being read frame by frame.
pub struct Feed {
    resp: reqwest::Response,
    buf: String,
}

impl Feed {
    /// Sends the request and returns the raw response (for refusals).
    ///
    /// # Panics
    /// When the request cannot be sent.
    pub async fn open(url: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut req = reqwest::Client::new().get(url).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        req.send().await.expect("feed request")
    }

    /// Opens a feed that must answer 200 `text/event-stream`.
    ///
    /// # Panics
    /// On any other answer.
    pub async fn start(url: &str, token: &str, last_event_id: Option<&str>) -> Self {
        let resp = Self::open(url, token, last_event_id).await;
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(
            resp.headers()["content-type"].to_str().expect("ascii"),
            "text/event-stream",
            "{url}"
        );
        Self {
            resp,
            buf: String::new(),
        }
    }

    /// The feed of an answer, when it is one (200 `text/event-stream`); `None` for a refusal
    /// or a gateway error.
    pub fn from_response(resp: reqwest::Response) -> Option<Self> {
        let is_feed = resp.status() == 200
            && resp
                .headers()
                .get("content-type")
                .is_some_and(|t| t.as_bytes() == b"text/event-stream");
        is_feed.then(|| Self {
            resp,
            buf: String::new(),
        })
    }

    /// What has been received and not yet returned as an event.
    pub fn buffered(&self) -> &str {
        &self.buf
    }

    /// Reads the next bytes into the buffer; `false` when the feed has ended.
    pub async fn read_more(&mut self) -> bool {
        match self.resp.chunk().await {
            Ok(Some(bytes)) => {
                self.buf.push_str(&String::from_utf8_lossy(&bytes));
                true
            }
            Ok(None) | Err(_) => false,
        }
    }

    /// The next event (comments skipped); `None` when the feed ended.
    ///
    /// # Panics
    /// When no event arrives within [`WAIT`] (heartbeat comments do not count).
    pub async fn next(&mut self) -> Option<Sse> {
        // one deadline for the event, not per read: heartbeat comments do not extend it
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a comment (heartbeat)
                }
                let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(Sse { id, event, data });
            }
            match tokio::time::timeout_at(deadline, self.read_more()).await {
                Ok(true) => {}
                Ok(false) => return None,
                Err(_) => panic!("no event within {WAIT:?}; buffered: {:?}", self.buf),
            }
        }
    }

    /// The next `n` events.
    ///
    /// # Panics
    /// When the feed ends before.
    pub async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(
                self.next()
                    .await
                    .unwrap_or_else(|| panic!("the feed ended after {out:?}")),
            );
        }
        out
    }
}
