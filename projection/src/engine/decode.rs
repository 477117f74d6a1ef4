//! Decoding a message: subject and body must name the same aggregate.

use shared::{AggregateAddress, EventEnvelope};

/// Why one message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The subject is not an aggregate event subject.
    #[error(transparent)]
    Subject(#[from] shared::SubjectError),
    /// The body is not an event envelope.
    #[error("body is not an event envelope: {0}")]
    Body(String),
    /// Subject and body disagree.
    #[error("subject names {subject} but the body names {body}")]
    Mismatch {
        /// From the subject.
        subject: String,
        /// From the body.
        body: String,
    },
}

/// An event decoded from a message whose subject and body agree.
#[derive(Debug, Clone)]
pub struct DecodedEvent {
    /// The aggregate, from the subject.
    pub address: AggregateAddress,
    /// The body.
    pub env: EventEnvelope,
}

/// Decodes a message body against its subject.
pub fn decode(subject: &str, body: &[u8]) -> Result<DecodedEvent, DecodeError> {
    let address = AggregateAddress::parse_subject(subject)?;
    let env: EventEnvelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    if env.address() != address {
        return Err(DecodeError::Mismatch {
            subject: address.to_string(),
            body: env.address().to_string(),
        });
    }
    Ok(DecodedEvent { address, env })
}

/// The trace id (32 hex digits) of an event: from its metadata `traceparent`, else from the
/// message's `traceparent` header.
pub fn trace_id(env: Option<&EventEnvelope>, header: Option<&str>) -> String {
    env.and_then(|e| e.metadata.as_ref())
        .and_then(|m| m.get(shared::TRACEPARENT_METADATA_KEY))
        .map(String::as_str)
        .or(header)
        .and_then(|tp| tp.get(3..35))
        .unwrap_or("")
        .to_owned()
}
