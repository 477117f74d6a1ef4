//! The wire contract between `aggregate` and `projection`.
//!
//! Everything both services must agree on lives here and nowhere else: validated ids, the event
//! shapes on the wire, subject / stream / consumer naming and the header names. The crate is pure:
//! no I/O, no async runtime, no NATS client, no business rules. Every serializable type here is a
//! compatibility promise, so changes are additive only (optional fields, tolerant decoding) and
//! golden fixtures under `tests/fixtures/` pin the bytes.

mod event;
mod headers;
mod id;
mod naming;
mod stream;
mod subject;

pub use event::{CommandId, Event, EventEnvelope, EventId, Metadata, Version};
pub use headers::*;
pub use id::{AggregateId, AggregateType, IdError, MAX_ID_LEN, TenantId, ViewName};
pub use naming::{
    MAX_CONSUMER_NAME_LEN, durable_consumer_name, ephemeral_fetch_consumer_name,
    generation_consumer_name,
};
pub use stream::{Retention, STREAM_FILTER, STREAM_NAME, Storage, StreamSpec};
pub use subject::{AggregateAddress, SubjectError, tenant_events_filter};
