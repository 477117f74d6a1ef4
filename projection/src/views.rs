//! The views shipped with the service, over `account` events.

use serde_json::{Map, Value, json};
use shared::{EventEnvelope, ViewName};
use time::format_description::well_known::Rfc3339;

use crate::view::{Change, Fold, View, ViewError, payload_i64, payload_str};

const ACCOUNT: &str = "account";

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

/// `tenant-summary`: one document per tenant, key = `summary` (stored as `<tenant>.summary`).
///
/// Document: `{open_accounts, totals: {<currency>: balance}, accounts: {<id>: {currency,
/// balance, open}}}`. Deposits and withdrawals do not carry the currency, so the document keeps a
/// small entry per account (bound: one KV value holds the whole tenant, so with the default
/// 1 MiB max payload a tenant can have roughly 15 000 accounts in this view). `open_accounts`
/// and `totals` are kept up to date with each event's change to its account's entry, so an
/// event costs the same however many accounts the tenant has; the unit tests check that they
/// always equal what the entries add up to.
#[derive(Debug, Clone, Copy, Default)]
pub struct TenantSummary;

/// The URL / storage key of a tenant's summary document.
pub const SUMMARY_KEY: &str = "summary";

impl View for TenantSummary {
    fn name(&self) -> ViewName {
        view_name("tenant-summary")
    }

    fn version(&self) -> u32 {
        1
    }

    fn key(&self, env: &EventEnvelope) -> Option<String> {
        (env.aggregate_type.as_str() == ACCOUNT).then(|| SUMMARY_KEY.to_owned())
    }

    fn apply(&self, doc: Option<Value>, env: &EventEnvelope) -> Result<Fold, ViewError> {
        let mut doc = doc;
        Ok(match self.apply_in_place(&mut doc, env)? {
            Change::Changed => Fold::Set(doc.unwrap_or(Value::Null)),
            Change::Deleted => Fold::Delete,
            Change::Unknown => Fold::Unknown,
        })
    }

    /// Touches only this account's entry and its currency's total: the cost of an event does
    /// not grow with the tenant's accounts (the engine does not copy the document either).
    fn apply_in_place(
        &self,
        doc: &mut Option<Value>,
        env: &EventEnvelope,
    ) -> Result<Change, ViewError> {
        let id = env.aggregate_id.as_str();
        let state_err = |what: &str| ViewError::State(format!("account {id}: {what}"));
        let entry = doc
            .as_ref()
            .and_then(|d| d.get("accounts"))
            .and_then(|a| a.get(id))
            .map(|e| Entry {
                currency: e.get("currency").and_then(Value::as_str).map(str::to_owned),
                balance: e.get("balance").and_then(Value::as_i64).unwrap_or(0),
                open: e.get("open").and_then(Value::as_bool) == Some(true),
            });
        // everything is checked before anything changes
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
            _ => return Ok(Change::Unknown),
        };
        if !matches!(doc, Some(Value::Object(_))) {
            *doc = Some(Value::Object(Map::new()));
        }
        let Some(Value::Object(doc)) = doc else {
            unreachable!("made an object above")
        };
        let before = entry.unwrap_or_default();
        let open = doc
            .get("open_accounts")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + i64::from(updated.open)
            - i64::from(before.open);
        doc.insert("open_accounts".into(), json!(open));
        if let Some(c) = &updated.currency {
            let totals = object_field(doc, "totals");
            let t = totals.get(c).and_then(Value::as_i64).unwrap_or(0);
            totals.insert(
                c.clone(),
                json!(t.saturating_add(updated.balance.saturating_sub(before.balance))),
            );
        }
        object_field(doc, "accounts").insert(id.to_owned(), updated.to_json());
        doc.insert("last_event_at".into(), timestamp(env));
        Ok(Change::Changed)
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

    #[test]
    fn summary_totals_are_derived() {
        let v = TenantSummary;
        let d = set(v
            .apply(
                None,
                &env(
                    "a",
                    None,
                    "opened",
                    json!({"owner": "A", "currency": "EUR"}),
                ),
            )
            .expect("open a"));
        let d = set(v
            .apply(
                Some(d),
                &env(
                    "b",
                    None,
                    "opened",
                    json!({"owner": "B", "currency": "USD"}),
                ),
            )
            .expect("open b"));
        let d = set(v
            .apply(Some(d), &env("a", None, "deposited", json!({"amount": 5})))
            .expect("dep"));
        let d = set(v
            .apply(Some(d), &env("b", None, "closed", json!({})))
            .expect("close"));
        assert_eq!(d["open_accounts"], 1);
        assert_eq!(d["totals"]["EUR"], 5);
        assert_eq!(d["totals"]["USD"], 0);
        assert!(
            v.apply(Some(d), &env("z", None, "deposited", json!({"amount": 1})))
                .is_err()
        );
    }

    /// What `open_accounts` and `totals` must be: recomputed from the entries.
    fn derived(doc: &Value) -> (i64, Map<String, Value>) {
        let mut totals = Map::new();
        let mut open = 0;
        for e in doc["accounts"].as_object().expect("accounts").values() {
            open += i64::from(e["open"] == json!(true));
            let c = e["currency"].as_str().expect("currency");
            let t = totals.get(c).and_then(Value::as_i64).unwrap_or(0);
            totals.insert(
                c.to_owned(),
                json!(t + e["balance"].as_i64().expect("balance")),
            );
        }
        (open, totals)
    }

    proptest::proptest! {
        /// Whatever the events (valid or refused, in any order), the incrementally kept
        /// `open_accounts` and `totals` equal what the entries add up to.
        #[test]
        fn summary_counters_always_match_the_entries(
            events in proptest::collection::vec((0u8..6, 0u8..4, 0i64..1000), 1..200)
        ) {
            let v = TenantSummary;
            let mut doc: Option<Value> = None;
            for (account, kind, amount) in events {
                let id = format!("a{account}");
                let currency = if account % 2 == 0 { "EUR" } else { "USD" };
                let (ty, payload) = match kind {
                    0 => ("opened", json!({"owner": "O", "currency": currency})),
                    1 => ("deposited", json!({"amount": amount})),
                    2 => ("withdrawn", json!({"amount": amount})),
                    _ => ("closed", json!({})),
                };
                let event = env(&id, None, ty, payload);
                // the in-place fold agrees with the copying one, and leaves a refused
                // document exactly as it was
                let mut in_place = doc.clone();
                let change = v.apply_in_place(&mut in_place, &event);
                match v.apply(doc.clone(), &event) {
                    Ok(Fold::Set(d)) => {
                        proptest::prop_assert_eq!(change, Ok(Change::Changed));
                        proptest::prop_assert_eq!(in_place.as_ref(), Some(&d));
                        let (open, totals) = derived(&d);
                        proptest::prop_assert_eq!(&d["open_accounts"], &json!(open));
                        proptest::prop_assert_eq!(&d["totals"], &Value::Object(totals));
                        doc = Some(d);
                    }
                    Ok(other) => proptest::prop_assert!(false, "unexpected {:?}", other),
                    Err(ViewError::State(_)) => {
                        proptest::prop_assert!(change.is_err());
                        proptest::prop_assert_eq!(&in_place, &doc);
                    }
                    Err(e) => proptest::prop_assert!(false, "unexpected {}", e),
                }
            }
        }
    }
}
