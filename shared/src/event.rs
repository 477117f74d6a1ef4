//! The event shapes on the wire.
//!
//! [`Event`] is what `aggregate` publishes; [`EventEnvelope`] is what `projection` decodes. The
//! envelope is deliberately more tolerant: ids and version are optional (older producers did not
//! write them) and unknown fields are ignored, so new optional fields can be added to `Event`
//! without breaking any reader.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AggregateId, AggregateType, TenantId};

/// Free-form string metadata carried by an event (correlation / causation ids, trace context).
pub type Metadata = BTreeMap<String, String>;

/// The id of one event: a UUID v7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for EventId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The id of one command, chosen by the client (any UUID) for idempotent retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct CommandId(Uuid);

impl CommandId {
    /// A fresh random id, for commands sent without one.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for CommandId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

impl FromStr for CommandId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// An aggregate's version: the number of events it has. The first event has version 1; an
/// aggregate with no events is at [`Version::ZERO`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// No events yet.
    pub const ZERO: Version = Version(0);
    /// The version of an aggregate's first event.
    pub const FIRST: Version = Version(1);

    /// The version after this one.
    #[must_use]
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event as `aggregate` publishes it: one JetStream message on the aggregate's subject.
///
/// Field names are part of the wire contract (see ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Unique, time-ordered id; also the JetStream `Nats-Msg-Id`.
    pub event_id: EventId,
    /// The command that produced this event.
    pub command_id: CommandId,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Aggregate type, e.g. `account`.
    pub aggregate_type: AggregateType,
    /// Aggregate id within tenant and type.
    pub aggregate_id: AggregateId,
    /// This event's version within its aggregate (1-based, contiguous).
    pub version: Version,
    /// Domain event type, e.g. `deposited`.
    pub event_type: String,
    /// Domain event body.
    pub payload: serde_json::Value,
    /// When the event was decided, RFC 3339, UTC.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub occurred_at: OffsetDateTime,
    /// Optional string metadata (trace context, correlation ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, String>>))]
    pub metadata: Option<Metadata>,
}

/// An event as `projection` decodes it: the minimum a view needs, tolerant of older producers
/// (no ids, no version) and of newer ones (unknown fields are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    /// Unique event id, when the producer wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<EventId>,
    /// Producing command id, when the producer wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Aggregate type.
    pub aggregate_type: AggregateType,
    /// Aggregate id.
    pub aggregate_id: AggregateId,
    /// Version within the aggregate, when the producer wrote one; readers fall back to the
    /// stream sequence for ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Version>,
    /// Domain event type.
    pub event_type: String,
    /// Domain event body.
    pub payload: serde_json::Value,
    /// When the event was decided, RFC 3339, UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// Optional string metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

impl From<Event> for EventEnvelope {
    fn from(e: Event) -> Self {
        EventEnvelope {
            event_id: Some(e.event_id),
            command_id: Some(e.command_id),
            tenant_id: e.tenant_id,
            aggregate_type: e.aggregate_type,
            aggregate_id: e.aggregate_id,
            version: Some(e.version),
            event_type: e.event_type,
            payload: e.payload,
            occurred_at: e.occurred_at,
            metadata: e.metadata,
        }
    }
}

impl Event {
    /// The address (tenant, type, id) of the aggregate this event belongs to.
    pub fn address(&self) -> crate::AggregateAddress {
        crate::AggregateAddress {
            tenant_id: self.tenant_id.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
        }
    }
}

impl EventEnvelope {
    /// The address (tenant, type, id) of the aggregate this event belongs to.
    pub fn address(&self) -> crate::AggregateAddress {
        crate::AggregateAddress {
            tenant_id: self.tenant_id.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_v7_and_time_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b, "{a} < {b}");
    }

    #[test]
    fn version_starts_at_one() {
        assert_eq!(Version::ZERO.next(), Version::FIRST);
        assert_eq!(Version::FIRST.get(), 1);
    }
}
