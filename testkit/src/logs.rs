//! What the code under test logged at the services' default level (INFO and up), kept so that
//! a test can wait for a log line: the observable event of something that keeps failing (a
//! start-up retrying, a client refused by the server) instead of a sleep followed by "it has
//! not happened", or the proof that an operator sees a line at the default level.
//!
//! [`crate::init_tracing`] (called by every [`crate::NatsServer`] start, by [`Mark::now`] and
//! by [`capture`]) installs the capture for the whole test process: every event from INFO up,
//! as one line `LEVEL target: message field=value ...`, the last [`KEPT`] of them. nextest runs
//! each test in its own process, so the capture sees that test's lines only.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Lines kept; older ones are dropped (a mark before them counts only what is left).
pub const KEPT: usize = 10_000;

struct Captured {
    /// The index (since the process started) of `lines[0]`.
    first: u64,
    lines: VecDeque<String>,
}

static CAPTURED: Mutex<Captured> = Mutex::new(Captured {
    first: 0,
    lines: VecDeque::new(),
});

/// The layer [`crate::init_tracing`] installs.
pub(crate) struct Capture;

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut line = format!("{} {}:", meta.level(), meta.target());
        event.record(&mut Line(&mut line));
        if let Ok(mut captured) = CAPTURED.lock() {
            if captured.lines.len() >= KEPT {
                captured.lines.pop_front();
                captured.first += 1;
            }
            captured.lines.push_back(line);
        }
    }
}

struct Line<'a>(&'a mut String);

impl Visit for Line<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value}")
        } else {
            write!(self.0, " {}={value}", field.name())
        };
    }
}

/// A place in the captured log: what is logged after it counts.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

/// What [`Mark::logged`] saw when it gave up.
#[derive(Debug)]
pub struct Seen {
    /// The lines since the mark that matched.
    pub matched: Vec<String>,
    /// The last lines logged since the mark (up to 10), whatever they say.
    pub last: Vec<String>,
}

impl Mark {
    /// The end of the log now (installs the capture if it is not yet).
    pub fn now() -> Self {
        crate::init_tracing();
        let captured = CAPTURED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Mark(captured.first + captured.lines.len() as u64)
    }

    /// Lines logged since this mark (those still kept).
    pub fn lines(&self) -> Vec<String> {
        let captured = CAPTURED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let skip = usize::try_from(self.0.saturating_sub(captured.first)).unwrap_or(usize::MAX);
        captured.lines.iter().skip(skip).cloned().collect()
    }

    /// Waits until at least `times` lines containing `needle` have been logged since this
    /// mark, and returns the matching lines.
    ///
    /// # Panics
    /// After `within`, with the lines that matched and the last lines logged.
    pub async fn logged(&self, needle: &str, times: usize, within: Duration) -> Vec<String> {
        crate::eventually(
            format!("{times} log line(s) containing {needle:?}"),
            within,
            || async {
                let lines = self.lines();
                let matched: Vec<String> = lines
                    .iter()
                    .filter(|l| l.contains(needle))
                    .cloned()
                    .collect();
                if matched.len() >= times {
                    Ok(matched)
                } else {
                    let last = lines[lines.len().saturating_sub(10)..].to_vec();
                    Err(Seen { matched, last })
                }
            },
        )
        .await
    }
}

/// The lines logged since [`capture`].
#[derive(Debug, Clone)]
pub struct Logs(Mark);

impl Logs {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lines()
    }

    /// The lines that contain every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect()
    }
}

/// Captures this process's logs at the services' default level from now on.
pub fn capture() -> Logs {
    Logs(Mark::now())
}
