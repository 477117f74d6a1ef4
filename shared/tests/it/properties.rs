//! Property tests: id validation and subject round trips over arbitrary strings.

use proptest::prelude::*;
use shared::{AggregateAddress, AggregateId, EventEnvelope, MAX_ID_LEN, TenantId};

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
