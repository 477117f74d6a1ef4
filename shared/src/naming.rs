//! Consumer naming, shared so that both services and operators agree on what a name means.

use uuid::Uuid;

use crate::{AggregateAddress, ViewName};

/// The longest consumer name these helpers produce, in bytes. Well below the server's limit and
/// safe as a file name on every platform.
pub const MAX_CONSUMER_NAME_LEN: usize = 128;

/// How many bytes of each id an ephemeral fetch consumer name keeps (for humans reading
/// `nats consumer ls`); uniqueness comes from the uuid, not from these.
const EPHEMERAL_ID_PREFIX: usize = 20;

/// The durable consumer name of a view at a version: `view-<name>-v<version>`.
///
/// Stable across restarts (so a restarted projection resumes) and different for every version
/// (so a new version replays from the beginning).
pub fn durable_consumer_name(view: &ViewName, version: u32) -> String {
    format!("view-{view}-v{version}")
}

/// The durable consumer name of one generation of a view version. Generation 0 is the
/// original ([`durable_consumer_name`]); a rebuild replays into generation `g > 0`:
/// `view-<name>-v<version>-g<g>`.
pub fn generation_consumer_name(view: &ViewName, version: u32, generation: u32) -> String {
    match generation {
        0 => durable_consumer_name(view, version),
        g => format!("view-{view}-v{version}-g{g}"),
    }
}

/// A fresh, unique name for one ad-hoc fetch of an aggregate's history:
/// `fetch-<tenant>-<type>-<id>-<uuid>`, each id cut to 20 bytes. Two calls never return the
/// same name (the uuid is v4, 122 random bits).
pub fn ephemeral_fetch_consumer_name(address: &AggregateAddress) -> String {
    // ids are ASCII, so slicing on bytes is slicing on chars
    let cut = |s: &str| s[..s.len().min(EPHEMERAL_ID_PREFIX)].to_owned();
    format!(
        "fetch-{}-{}-{}-{}",
        cut(address.tenant_id.as_str()),
        cut(address.aggregate_type.as_str()),
        cut(address.aggregate_id.as_str()),
        Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::MAX_ID_LEN;

    fn valid_consumer_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_CONSUMER_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }

    #[test]
    fn durable_names_are_stable_and_versioned() {
        let v: ViewName = "accounts".parse().expect("view");
        assert_eq!(durable_consumer_name(&v, 1), "view-accounts-v1");
        assert_eq!(durable_consumer_name(&v, 1), durable_consumer_name(&v, 1));
        assert_ne!(durable_consumer_name(&v, 1), durable_consumer_name(&v, 2));
        let longest: ViewName = "v".repeat(MAX_ID_LEN).parse().expect("view");
        assert!(valid_consumer_name(&durable_consumer_name(
            &longest,
            u32::MAX
        )));
    }

    #[test]
    fn ephemeral_names_are_valid_for_the_longest_ids_and_unique() {
        let long = "x".repeat(MAX_ID_LEN);
        let addr = AggregateAddress::new(
            long.parse().expect("t"),
            long.parse().expect("ty"),
            long.parse().expect("id"),
        );
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let name = ephemeral_fetch_consumer_name(&addr);
            assert!(valid_consumer_name(&name), "{name}");
            assert!(seen.insert(name), "duplicate ephemeral name");
        }
    }
}
