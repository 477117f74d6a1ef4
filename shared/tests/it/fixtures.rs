//! Golden fixtures: the bytes on the wire. A change to a fixture is a breaking change.

use shared::{AggregateAddress, Event, EventEnvelope, Version};

const EVENT: &str = include_str!("../fixtures/event.json");
const LEGACY: &str = include_str!("../fixtures/legacy_envelope.json");
const FUTURE: &str = include_str!("../fixtures/future_event.json");

#[test]
fn every_fixture_decodes_as_an_envelope() {
    for (name, json) in [("event", EVENT), ("legacy", LEGACY), ("future", FUTURE)] {
        let env: EventEnvelope =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.tenant_id.as_str(), "acme", "{name}");
        assert_eq!(env.aggregate_type.as_str(), "account", "{name}");
    }
}

#[test]
fn legacy_envelope_reserializes_byte_identical() {
    let env: EventEnvelope = serde_json::from_str(LEGACY).expect("decode");
    assert_eq!(env.event_id, None);
    assert_eq!(env.command_id, None);
    assert_eq!(env.version, None);
    assert_eq!(serde_json::to_string(&env).expect("encode"), LEGACY);
}

#[test]
fn event_fixture_round_trips_byte_identical() {
    let event: Event = serde_json::from_str(EVENT).expect("decode");
    assert_eq!(event.version, Version(2));
    assert_eq!(event.payload["amount"], 1500);
    assert_eq!(serde_json::to_string(&event).expect("encode"), EVENT);
}

#[test]
fn event_converts_losslessly_into_an_envelope() {
    let event: Event = serde_json::from_str(EVENT).expect("decode");
    let env = EventEnvelope::from(event.clone());
    // the envelope of a full event carries the same bytes as the event itself
    assert_eq!(
        serde_json::to_string(&env).expect("encode"),
        serde_json::to_string(&event).expect("encode")
    );
    assert_eq!(env.event_id, Some(event.event_id));
    assert_eq!(env.command_id, Some(event.command_id));
    assert_eq!(env.version, Some(event.version));
    assert_eq!(env.metadata, event.metadata);
}

#[test]
fn unknown_future_fields_are_ignored() {
    let env: EventEnvelope = serde_json::from_str(FUTURE).expect("decode");
    assert_eq!(env.version, Some(Version(3)));
    assert_eq!(env.payload["reference"], "inv-7");
    // an Event decoder is tolerant too
    let event: Event = serde_json::from_str(FUTURE).expect("decode as event");
    assert_eq!(event.event_type, "withdrawn");
}

#[test]
fn fixture_address_matches_subject() {
    let env: EventEnvelope = serde_json::from_str(EVENT).expect("decode");
    let subject = env.address().subject();
    assert_eq!(subject, "tenant.acme.aggregate.account.acc-1");
    assert_eq!(
        AggregateAddress::parse_subject(&subject).expect("parse"),
        env.address()
    );
}

#[test]
fn envelope_with_an_invalid_id_is_rejected() {
    let bad = LEGACY.replace("\"acme\"", "\"ac.me\"");
    let err = serde_json::from_str::<EventEnvelope>(&bad).expect_err("invalid tenant");
    assert!(err.to_string().contains("tenant id"), "{err}");
}
