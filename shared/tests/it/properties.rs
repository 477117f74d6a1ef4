//! Property tests: id validation and subject round trips over arbitrary strings.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use shared::{AggregateAddress, AggregateId, Event, EventEnvelope, MAX_ID_LEN, TenantId};

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn id_validation_matches_the_rule(s in any::<String>()) {
        prop_assert_eq!(s.parse::<TenantId>().is_ok(), is_token(&s));
        prop_assert_eq!(AggregateId::try_from(s.clone()).is_ok(), is_token(&s));
        let json = serde_json::to_string(&s).expect("string");
        prop_assert_eq!(serde_json::from_str::<TenantId>(&json).is_ok(), is_token(&s));
    }

    #[test]
    fn near_miss_ids_are_rejected(
        prefix in "[A-Za-z0-9_-]{0,20}",
        bad in prop::sample::select(vec![".", "*", ">", " ", "\t", "\n", "\u{7f}", "é", "\u{0}"]),
        suffix in "[A-Za-z0-9_-]{0,20}",
    ) {
        let s = format!("{prefix}{bad}{suffix}");
        prop_assert!(s.parse::<TenantId>().is_err());
    }

    #[test]
    fn subjects_round_trip(
        t in "[A-Za-z0-9_-]{1,64}",
        ty in "[A-Za-z0-9_-]{1,64}",
        id in "[A-Za-z0-9_-]{1,64}",
    ) {
        let addr = AggregateAddress::new(
            t.parse().expect("t"), ty.parse().expect("ty"), id.parse().expect("id"));
        let subject = addr.subject();
        prop_assert_eq!(subject.split('.').count(), 5);
        prop_assert_eq!(AggregateAddress::parse_subject(&subject).expect("parse"), addr);
    }

    #[test]
    fn subject_parser_never_panics_and_accepts_only_event_subjects(s in any::<String>()) {
        if let Ok(addr) = AggregateAddress::parse_subject(&s) {
            prop_assert_eq!(addr.subject(), s);
        }
    }

    #[test]
    fn envelope_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = serde_json::from_slice::<EventEnvelope>(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile input: many cases, decoders and parsers never panic, and whatever they accept is valid.

const FIELDS: &[&str] = &[
    "event_id",
    "command_id",
    "tenant_id",
    "aggregate_type",
    "aggregate_id",
    "version",
    "event_type",
    "payload",
    "occurred_at",
    "metadata",
];

/// Arbitrary JSON trees: every type, odd numbers, unicode strings, the wire's own field names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec![
            "acme",
            "a.b",
            "*",
            ">",
            "",
            "2025-01-01T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "0190a0b0-0000-7000-8000-000000000000",
            "not-a-uuid",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
                    any::<String>()
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A structurally valid envelope object whose fields each get either a plausible or an
/// arbitrary value (wrong type, wrong format, hostile id), some fields missing.
fn envelope_object() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{Value, json};
    let plausible = |field: &'static str| -> BoxedStrategy<Value> {
        match field {
            "event_id" | "command_id" => {
                Just(json!("0190a0b0-0000-7000-8000-000000000000")).boxed()
            }
            "tenant_id" | "aggregate_type" | "aggregate_id" => {
                "[A-Za-z0-9_.*> -]{0,70}".prop_map(Value::String).boxed()
            }
            "version" => any::<u64>().prop_map(Value::from).boxed(),
            "event_type" => "[a-z]{1,10}".prop_map(Value::String).boxed(),
            "occurred_at" => Just(json!("2025-01-01T00:00:00Z")).boxed(),
            "metadata" => prop::collection::btree_map(any::<String>(), any::<String>(), 0..3)
                .prop_map(|m| json!(m))
                .boxed(),
            _ => json_value().boxed(),
        }
    };
    let fields: Vec<BoxedStrategy<Option<Value>>> = FIELDS
        .iter()
        .map(|f| {
            prop_oneof![
                1 => Just(None),
                4 => plausible(f).prop_map(Some),
                2 => json_value().prop_map(Some),
            ]
            .boxed()
        })
        .collect();
    fields.prop_map(|values| {
        let mut m = serde_json::Map::new();
        for (f, v) in FIELDS.iter().zip(values) {
            if let Some(v) = v {
                m.insert((*f).to_owned(), v);
            }
        }
        Value::Object(m)
    })
}

fn check_decoded(env: &EventEnvelope) -> Result<(), TestCaseError> {
    for id in [
        env.tenant_id.as_str(),
        env.aggregate_type.as_str(),
        env.aggregate_id.as_str(),
    ] {
        prop_assert!(is_token(id), "decoded an invalid id {id:?}");
    }
    // whatever decodes is a valid subject and survives a round trip
    let subject = env.address().subject();
    prop_assert_eq!(
        AggregateAddress::parse_subject(&subject).expect("own subject"),
        env.address()
    );
    let again: EventEnvelope =
        serde_json::from_str(&serde_json::to_string(env).expect("serialize")).expect("re-decode");
    prop_assert_eq!(&again, env);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn envelope_decoder_never_panics_on_many_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        if let Ok(env) = serde_json::from_slice::<EventEnvelope>(&bytes) {
            check_decoded(&env)?;
        }
        let _ = serde_json::from_slice::<Event>(&bytes);
    }

    #[test]
    fn id_parsing_on_arbitrary_unicode(s in "\\PC{0,80}|[\\x00-\\x7f]{0,80}|[A-Za-z0-9_-]{60,70}") {
        let parsed = s.parse::<TenantId>();
        prop_assert_eq!(parsed.is_ok(), is_token(&s));
        if let Err(e) = parsed {
            let msg = e.to_string();
            prop_assert!(msg.starts_with("tenant id"), "{msg}");
            if let shared::IdError::InvalidChar { index, .. } = e {
                prop_assert!(s.is_char_boundary(index) && index < s.len());
            }
        }
    }

    #[test]
    fn subject_parser_on_near_miss_subjects(
        t in "[A-Za-z0-9_-]{1,20}",
        ty in "[A-Za-z0-9_-]{1,20}",
        id in "[A-Za-z0-9_-]{1,20}",
        at in any::<prop::sample::Index>(),
        edit in prop::sample::select(vec![
            ".", "*", ">", " ", "\t", "\n", "\r", "\0", "..", "é", "\u{ff0e}", "\u{2024}",
            "%2E", "TENANT", "",
        ]),
        mode in 0u8..4,
    ) {
        let good = format!("tenant.{t}.aggregate.{ty}.{id}");
        let pos = at.index(good.len() + 1);
        let s = match mode {
            0 => format!("{}{edit}{}", &good[..pos], &good[pos..]),
            1 => format!("{}{edit}{}", &good[..pos], &good[(pos + 1).min(good.len())..]),
            2 => format!("{good}{edit}"),
            _ => format!("{edit}{good}"),
        };
        match AggregateAddress::parse_subject(&s) {
            Ok(addr) => {
                // only an edit that keeps it a plain five-token event subject may parse
                prop_assert_eq!(addr.subject(), s.clone());
                prop_assert!(!s.contains(['*', '>', ' ', '\0']) && s.split('.').count() == 5);
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn subject_parser_never_accepts_wildcards_or_extra_tokens(s in "[a-z.*> ]{0,60}") {
        if let Ok(addr) = AggregateAddress::parse_subject(&s) {
            prop_assert_eq!(addr.subject(), s.clone());
            prop_assert!(!s.contains(['*', '>', ' ']));
        }
    }

    #[test]
    fn consumer_names_of_any_valid_address_are_safe(
        t in "[A-Za-z0-9_-]{1,64}",
        ty in "[A-Za-z0-9_-]{1,64}",
        id in "[A-Za-z0-9_-]{1,64}",
    ) {
        let addr = AggregateAddress::new(t.parse().expect("t"), ty.parse().expect("ty"), id.parse().expect("id"));
        let name = shared::ephemeral_fetch_consumer_name(&addr);
        prop_assert!(name.len() <= shared::MAX_CONSUMER_NAME_LEN);
        prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{name}");
    }
}

// JSON trees are costlier to generate and shrink: fewer cases.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(3_000))]

    #[test]
    fn envelope_decoder_on_arbitrary_json_trees(v in json_value()) {
        let bytes = serde_json::to_vec(&v).expect("json");
        if let Ok(env) = serde_json::from_slice::<EventEnvelope>(&bytes) {
            check_decoded(&env)?;
        }
        let _ = serde_json::from_value::<Event>(v);
    }

    #[test]
    fn envelope_decoder_on_envelope_shaped_objects(v in envelope_object()) {
        let bytes = serde_json::to_vec(&v).expect("json");
        match serde_json::from_slice::<EventEnvelope>(&bytes) {
            Ok(env) => {
                check_decoded(&env)?;
                prop_assert_eq!(env.tenant_id.as_str(), v["tenant_id"].as_str().unwrap_or(""));
            }
            Err(_) => {
                // refused: then something in it really is wrong
                let ok_ids = ["tenant_id", "aggregate_type", "aggregate_id"]
                    .iter()
                    .all(|f| v[*f].as_str().is_some_and(is_token));
                let required = ["event_type", "payload", "occurred_at"].iter().all(|f| v.get(*f).is_some());
                prop_assert!(
                    !(ok_ids && required && v["event_type"].is_string()
                        && v["occurred_at"] == "2025-01-01T00:00:00Z"
                        && v.get("event_id").is_none_or(|e| e == "0190a0b0-0000-7000-8000-000000000000")
                        && v.get("command_id").is_none_or(|e| e == "0190a0b0-0000-7000-8000-000000000000")
                        && v.get("version").is_none_or(serde_json::Value::is_u64)
                        && v.get("metadata").is_none_or(|m| m.as_object().is_some_and(|o| o.values().all(serde_json::Value::is_string)))),
                    "a valid envelope was refused: {v}"
                );
            }
        }
        let _ = serde_json::from_value::<Event>(v);
    }
}
