//! Header names used on the wire.

/// JetStream de-duplication id; we set it to the event id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// JetStream optimistic concurrency: the stream sequence of the subject's last message.
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// ADR-50 atomic batch: the batch id.
pub const NATS_BATCH_ID: &str = "Nats-Batch-Id";
/// ADR-50 atomic batch: 1-based position in the batch.
pub const NATS_BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// ADR-50 atomic batch: set to `1` on the last message to commit the batch.
pub const NATS_BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// Ours: the event type, so consumers can route without decoding the body.
pub const EVENT_TYPE_HEADER: &str = "Es-Event-Type";
/// Ours: the command that produced the event.
pub const COMMAND_ID_HEADER: &str = "Es-Command-Id";
/// W3C trace context, copied from the HTTP request that produced the event.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Metadata key under which the W3C `traceparent` of the producing request is stored.
pub const TRACEPARENT_METADATA_KEY: &str = "traceparent";
/// Metadata key for the request id (`X-Request-Id`) of the producing request.
pub const REQUEST_ID_METADATA_KEY: &str = "request_id";
