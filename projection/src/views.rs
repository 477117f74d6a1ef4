//! The views shipped with the service, over `account` events.

use serde_json::{Map, Value, json};
use shared::{EventEnvelope, ViewName};
use time::format_description::well_known::Rfc3339;

use crate::view::{Docs, EventSpec, Fold, Folded, View, ViewError, payload_i64, payload_str};

const ACCOUNT: &str = "account";

/// The `account` events both shipped views fold, with example payloads.
pub fn account_events() -> Vec<EventSpec> {
    vec![
        EventSpec::new(ACCOUNT, "opened").example(json!({"owner": "o", "currency": "EUR"})),
        EventSpec::new(ACCOUNT, "deposited").example(json!({"amount": 1})),
        EventSpec::new(ACCOUNT, "withdrawn").example(json!({"amount": 1})),
        EventSpec::new(ACCOUNT, "closed"),
    ]
}

fn view_name(s: &'static str) -> ViewName {
    // a literal that satisfies the id rule
    ViewName::try_from(s).unwrap_or_else(|_| unreachable!())
}

fn timestamp(env: &EventEnvelope) -> Value {
    env.occurred_at
        .format(&Rfc3339)
        .map_or(Value::Null, Value::String)
}

/// `accounts`: one document per account, key = the account id (stored as `<tenant>.<id>`).
///
/// Document: `{owner, currency, balance, status, version, last_event_at}`. An event whose
/// `version` is present and is not the document's version + 1 is refused (parked).
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts;

impl View for Accounts {
    fn name(&self) -> ViewName {
        view_name("accounts")
    }

    fn version(&self) -> u32 {
        1
    }

    fn events(&self) -> Vec<EventSpec> {
        account_events()
    }

    fn key(&self, env: &EventEnvelope) -> Option<String> {
        (env.aggregate_type.as_str() == ACCOUNT).then(|| env.aggregate_id.to_string())
    }

    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        let mut doc = match doc {
            Some(Value::Object(m)) => m,
            _ => {
                let mut m = Map::new();
                m.insert("owner".into(), Value::Null);
                m.insert("currency".into(), Value::Null);
                m.insert("balance".into(), json!(0));
                m.insert("status".into(), json!("new"));
                m.insert("version".into(), json!(0));
                m
            }
        };
        let have = doc.get("version").and_then(Value::as_u64).unwrap_or(0);
        if let Some(got) = env.version
            && got.get() != have + 1
        {
            return Err(ViewError::VersionGap {
                have,
                got: got.get(),
            });
        }
        let balance = doc.get("balance").and_then(Value::as_i64).unwrap_or(0);
        match env.event_type.as_str() {
            "opened" => {
                doc.insert("owner".into(), json!(payload_str(env, "owner")?));
                doc.insert("currency".into(), json!(payload_str(env, "currency")?));
                doc.insert("status".into(), json!("open"));
            }
            "deposited" => {
                let amount = payload_i64(env, "amount")?;
                doc.insert("balance".into(), json!(balance.saturating_add(amount)));
            }
            "withdrawn" => {
                let amount = payload_i64(env, "amount")?;
                doc.insert("balance".into(), json!(balance.saturating_sub(amount)));
            }
            "closed" => {
                doc.insert("status".into(), json!("closed"));
            }
            _ => return Ok(Fold::Unknown),
        }
        doc.insert("version".into(), json!(have + 1));
        doc.insert("last_event_at".into(), timestamp(env));
        Ok(Fold::Set(Value::Object(doc)))
    }
}

/// `tenant-summary`: per tenant, one summary document (key `summary`) and one small entry per
/// account (key `account.<id>`), both stored in the view's bucket under the tenant.
///
/// Summary: `{open_accounts, account_count, totals: {<currency>: balance}, last_event_at}`;
/// entry: `{currency, balance, open}`. Deposits and withdrawals do not carry the currency, so
/// the entry remembers it. Each event reads and writes exactly its account's entry and the
/// summary (the engine commits both atomically), so no document grows with the number of
/// accounts and an event costs the same for a tenant with one account or a million. Version 2:
/// version 1 kept every entry inside the summary, which outgrew the 1 MiB value limit at about
/// 20 000 accounts.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantSummary;

/// The URL / storage key of a tenant's summary document.
pub const SUMMARY_KEY: &str = "summary";

/// The key of an account's entry in `tenant-summary`.
pub fn summary_entry_key(account: &str) -> String {
    format!("account.{account}")
}

impl View for TenantSummary {
    fn name(&self) -> ViewName {
        view_name("tenant-summary")
    }

    fn version(&self) -> u32 {
        2
    }

    fn events(&self) -> Vec<EventSpec> {
        account_events()
    }

    fn keys(&self, env: &EventEnvelope) -> Vec<String> {
        if env.aggregate_type.as_str() != ACCOUNT {
            return Vec::new();
        }
        vec![
            SUMMARY_KEY.to_owned(),
            summary_entry_key(env.aggregate_id.as_str()),
        ]
    }

    /// Touches only this account's entry and the summary's counters.
    fn fold(&self, docs: &mut Docs, env: &EventEnvelope) -> Result<Folded, ViewError> {
        let id = env.aggregate_id.as_str();
        let entry_key = summary_entry_key(id);
        let state_err = |what: &str| ViewError::State(format!("account {id}: {what}"));
        let entry = docs.get(&entry_key).map(|e| Entry {
            currency: e.get("currency").and_then(Value::as_str).map(str::to_owned),
            balance: e.get("balance").and_then(Value::as_i64).unwrap_or(0),
            open: e.get("open").and_then(Value::as_bool) == Some(true),
        });
        let updated = match (env.event_type.as_str(), entry.clone()) {
            ("opened", None) => Entry {
                currency: Some(payload_str(env, "currency")?),
                balance: 0,
                open: true,
            },
            ("opened", Some(_)) => return Err(state_err("opened twice")),
            ("deposited" | "withdrawn", Some(mut e)) => {
                let amount = payload_i64(env, "amount")?;
                e.balance = if env.event_type == "deposited" {
                    e.balance.saturating_add(amount)
                } else {
                    e.balance.saturating_sub(amount)
                };
                e
            }
            ("deposited" | "withdrawn", None) => {
                return Err(state_err("money moved before opened"));
            }
            ("closed", Some(mut e)) => {
                e.open = false;
                e
            }
            ("closed", None) => return Err(state_err("closed before opened")),
            _ => return Ok(Folded::Unknown),
        };
        let mut summary = match docs.get(SUMMARY_KEY) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        let counter =
            |m: &Map<String, Value>, f: &str| m.get(f).and_then(Value::as_i64).unwrap_or(0);
        let before = entry.clone().unwrap_or_default();
        let open =
            counter(&summary, "open_accounts") + i64::from(updated.open) - i64::from(before.open);
        summary.insert("open_accounts".into(), json!(open));
        let count = counter(&summary, "account_count") + i64::from(entry.is_none());
        summary.insert("account_count".into(), json!(count));
        if let Some(c) = &updated.currency {
            let totals = object_field(&mut summary, "totals");
            let t = totals.get(c).and_then(Value::as_i64).unwrap_or(0);
            totals.insert(
                c.clone(),
                json!(t.saturating_add(updated.balance.saturating_sub(before.balance))),
            );
        }
        summary.insert("last_event_at".into(), timestamp(env));
        docs.set(SUMMARY_KEY, Value::Object(summary))?;
        docs.set(&entry_key, updated.to_json())?;
        Ok(Folded::Applied)
    }
}

/// One account's entry in the tenant summary.
#[derive(Debug, Clone, Default)]
struct Entry {
    currency: Option<String>,
    balance: i64,
    open: bool,
}

impl Entry {
    fn to_json(&self) -> Value {
        json!({"currency": self.currency, "balance": self.balance, "open": self.open})
    }
}

/// The object at `doc[field]`, created (or replacing a non-object) when needed.
fn object_field<'a>(doc: &'a mut Map<String, Value>, field: &str) -> &'a mut Map<String, Value> {
    let slot = doc
        .entry(field.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(id: &str, version: Option<u64>, ty: &str, payload: Value) -> EventEnvelope {
        serde_json::from_value(json!({
            "tenant_id": "acme", "aggregate_type": "account", "aggregate_id": id,
            "version": version, "event_type": ty, "payload": payload,
            "occurred_at": "2026-01-01T00:00:00Z"
        }))
        .expect("envelope")
    }

    fn set(f: Fold) -> Value {
        match f {
            Fold::Set(v) => v,
            other => panic!("expected Set, got {other:?}"),
        }
    }

    #[test]
    fn accounts_fold_and_version_check() {
        let v = Accounts;
        let d = set(v
            .apply(
                None,
                &env(
                    "a",
                    Some(1),
                    "opened",
                    json!({"owner": "Ada", "currency": "EUR"}),
                ),
            )
            .expect("open"));
        let d = set(v
            .apply(
                Some(d),
                &env("a", Some(2), "deposited", json!({"amount": 10})),
            )
            .expect("dep"));
        let d = set(v
            .apply(Some(d), &env("a", None, "withdrawn", json!({"amount": 3})))
            .expect("wd"));
        assert_eq!(d["balance"], 7);
        assert_eq!(d["version"], 3);
        assert_eq!(d["status"], "open");
        let gap = v.apply(
            Some(d.clone()),
            &env("a", Some(9), "deposited", json!({"amount": 1})),
        );
        assert_eq!(gap, Err(ViewError::VersionGap { have: 3, got: 9 }));
        assert_eq!(
            v.apply(Some(d), &env("a", Some(4), "renamed", json!({}))),
            Ok(Fold::Unknown)
        );
        assert!(
            v.apply(
                None,
                &env("a", Some(1), "deposited", json!({"amount": "x"}))
            )
            .is_err()
        );
    }

    /// A tiny in-memory engine: folds `event` into `store` the way the engine does (every
    /// document the view names, all or nothing).
    fn fold_into(
        store: &mut BTreeMap<String, Value>,
        v: &dyn View,
        event: &EventEnvelope,
    ) -> Result<Folded, ViewError> {
        let mut docs = Docs::new(v.keys(event).into_iter().map(|k| {
            let d = store.get(&k).cloned();
            (k, d)
        }));
        let r = v.fold(&mut docs, event);
        if r == Ok(Folded::Applied) {
            for s in docs.slots {
                match s.doc {
                    Some(d) => store.insert(s.key, d),
                    None => store.remove(&s.key),
                };
            }
        }
        r
    }

    fn opened(id: &str, currency: &str) -> EventEnvelope {
        env(
            id,
            None,
            "opened",
            json!({"owner": "O", "currency": currency}),
        )
    }

    #[test]
    fn summary_totals_are_derived() {
        let v = TenantSummary;
        let mut store = BTreeMap::new();
        for e in [
            opened("a", "EUR"),
            opened("b", "USD"),
            env("a", None, "deposited", json!({"amount": 5})),
            env("b", None, "closed", json!({})),
        ] {
            assert_eq!(fold_into(&mut store, &v, &e), Ok(Folded::Applied));
        }
        let d = &store[SUMMARY_KEY];
        assert_eq!(d["open_accounts"], 1);
        assert_eq!(d["account_count"], 2);
        assert_eq!(d["totals"]["EUR"], 5);
        assert_eq!(d["totals"]["USD"], 0);
        assert!(d.get("accounts").is_none(), "no per-account map: {d}");
        assert_eq!(
            store["account.a"],
            json!({"currency": "EUR", "balance": 5, "open": true})
        );
        let before = store.clone();
        assert!(
            fold_into(
                &mut store,
                &v,
                &env("z", None, "deposited", json!({"amount": 1}))
            )
            .is_err()
        );
        assert_eq!(store, before, "a refused event changes nothing");
    }

    #[test]
    fn the_summary_does_not_grow_with_the_accounts() {
        let v = TenantSummary;
        let mut store = BTreeMap::new();
        let mut sizes = Vec::new();
        for i in 0..5_000 {
            fold_into(&mut store, &v, &opened(&format!("acc{i:05}"), "EUR")).expect("open");
            if i == 9 || i == 4_999 {
                sizes.push(serde_json::to_vec(&store[SUMMARY_KEY]).expect("json").len());
            }
        }
        assert_eq!(store[SUMMARY_KEY]["open_accounts"], 5_000);
        // only the counters' digits grow
        assert!(sizes[1] <= sizes[0] + 8, "summary sizes {sizes:?}");
    }

    /// What `open_accounts`, `account_count` and `totals` must be: recomputed from the entries.
    fn derived(store: &BTreeMap<String, Value>) -> (i64, i64, Map<String, Value>) {
        let mut totals = Map::new();
        let mut open = 0;
        let mut count = 0;
        for (k, e) in store {
            if !k.starts_with("account.") {
                continue;
            }
            count += 1;
            open += i64::from(e["open"] == json!(true));
            let c = e["currency"].as_str().expect("currency");
            let t = totals.get(c).and_then(Value::as_i64).unwrap_or(0);
            totals.insert(
                c.to_owned(),
                json!(t + e["balance"].as_i64().expect("balance")),
            );
        }
        (open, count, totals)
    }

    proptest::proptest! {
        /// Whatever the events (valid or refused, in any order), the incrementally kept
        /// counters equal what the entries add up to, and a refused event changes nothing.
        #[test]
        fn summary_counters_always_match_the_entries(
            events in proptest::collection::vec((0u8..6, 0u8..4, 0i64..1000), 1..200)
        ) {
            let v = TenantSummary;
            let mut store: BTreeMap<String, Value> = BTreeMap::new();
            for (account, kind, amount) in events {
                let id = format!("a{account}");
                let currency = if account % 2 == 0 { "EUR" } else { "USD" };
                let (ty, payload) = match kind {
                    0 => ("opened", json!({"owner": "O", "currency": currency})),
                    1 => ("deposited", json!({"amount": amount})),
                    2 => ("withdrawn", json!({"amount": amount})),
                    _ => ("closed", json!({})),
                };
                let before = store.clone();
                match fold_into(&mut store, &v, &env(&id, None, ty, payload)) {
                    Ok(Folded::Applied) => {
                        let (open, count, totals) = derived(&store);
                        let d = &store[SUMMARY_KEY];
                        proptest::prop_assert_eq!(&d["open_accounts"], &json!(open));
                        proptest::prop_assert_eq!(&d["account_count"], &json!(count));
                        proptest::prop_assert_eq!(&d["totals"], &Value::Object(totals));
                    }
                    Ok(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
                    Err(ViewError::State(_)) => proptest::prop_assert_eq!(&store, &before),
                    Err(e) => proptest::prop_assert!(false, "unexpected {}", e),
                }
            }
        }
    }
}
