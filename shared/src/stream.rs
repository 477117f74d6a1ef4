//! The one definition of the `AGGREGATE_EVENTS` stream, used by both services.
//!
//! Pure data: each service converts it into its NATS client's configuration and compares it
//! with what the server has, refusing to start on an incompatible stream.

use std::time::Duration;

/// The stream holding every aggregate's events.
pub const STREAM_NAME: &str = "AGGREGATE_EVENTS";
/// The subjects of that stream: every tenant, every aggregate type, every id.
pub const STREAM_FILTER: &str = "tenant.*.aggregate.*.*";

/// Message retention of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep by limits (events are kept forever unless limits say otherwise).
    Limits,
}

/// Storage backend of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk.
    File,
    /// In memory (tests and benchmarks only).
    Memory,
}

/// What the events stream must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name.
    pub name: &'static str,
    /// Subjects captured.
    pub subjects: Vec<String>,
    /// Retention policy: an event store keeps everything.
    pub retention: Retention,
    /// Storage backend.
    pub storage: Storage,
    /// Number of replicas (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// JetStream de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Direct get (needed for batch direct get reads).
    pub allow_direct: bool,
    /// ADR-50 atomic batch publish (multi-event commands).
    pub allow_atomic: bool,
    /// Events are never deleted one by one.
    pub deny_delete: bool,
}

impl StreamSpec {
    /// The default duplicate window: JetStream's own default.
    pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

    /// The stream definition for a given number of replicas.
    pub fn events(replicas: usize) -> Self {
        StreamSpec {
            name: STREAM_NAME,
            subjects: vec![STREAM_FILTER.to_owned()],
            retention: Retention::Limits,
            storage: Storage::File,
            replicas,
            duplicate_window: Self::DEFAULT_DUPLICATE_WINDOW,
            allow_direct: true,
            allow_atomic: true,
            deny_delete: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_captures_exactly_the_event_subjects() {
        let spec = StreamSpec::events(3);
        assert_eq!(spec.name, "AGGREGATE_EVENTS");
        assert_eq!(spec.subjects, ["tenant.*.aggregate.*.*"]);
        assert_eq!(spec.replicas, 3);
        assert!(spec.allow_direct && spec.allow_atomic);
    }
}
