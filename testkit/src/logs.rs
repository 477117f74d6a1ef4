//! What a service logs at its default level, captured for a test to wait on.
//!
//! [`capture`] installs the process's global subscriber with the services' default filter
//! (`info`, no ANSI colours, one line per event) writing into memory, so a test can prove that
//! an operator would see a line at the default log level. nextest runs each test in its own
//! process, so the capture sees that test's lines only.

use std::io::Write;
use std::sync::{Arc, Mutex};

/// The captured output.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines that contain every one of `needles`.
    pub fn matching(&self, needles: &[&str]) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .collect()
    }
}

/// One write into the shared buffer.
pub struct Writer(Arc<Mutex<Vec<u8>>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Writer;

    fn make_writer(&'a self) -> Writer {
        Writer(self.0.clone())
    }
}

/// Captures this process's logs at the services' default level from now on.
///
/// # Panics
/// When a global subscriber is installed already (e.g. by [`crate::init_tracing`] with
/// `TEST_LOG` set): the capture would see nothing.
pub fn capture() -> Logs {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_ansi(false)
        .with_writer(logs.clone())
        .try_init()
        .unwrap_or_else(|e| {
            panic!("cannot capture logs, a subscriber is installed already (TEST_LOG?): {e}")
        });
    logs
}
