//! The views shipped with the service, over `account` events.

use serde_json::{Map, Value, json};
use shared::{EventEnvelope, ViewName};
use time::format_description::well_known::Rfc3339;

use crate::view::{Fold, View, ViewError, payload_i64, payload_str};

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
/// and `totals` are derived from `accounts` on every fold, so they can never drift.
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
        let mut accounts = doc
            .as_ref()
            .and_then(|d| d.get("accounts"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let id = env.aggregate_id.as_str();
        let entry = accounts.get(id).cloned();
        let state_err = |what: &str| ViewError::State(format!("account {id}: {what}"));
        let balance_of = |e: &Value| e.get("balance").and_then(Value::as_i64).unwrap_or(0);
        let updated = match env.event_type.as_str() {
            "opened" => {
                if entry.is_some() {
                    return Err(state_err("opened twice"));
                }
                json!({"currency": payload_str(env, "currency")?, "balance": 0, "open": true})
            }
            "deposited" | "withdrawn" => {
                let mut e = entry.ok_or_else(|| state_err("money moved before opened"))?;
                let amount = payload_i64(env, "amount")?;
                let b = if env.event_type == "deposited" {
                    balance_of(&e).saturating_add(amount)
                } else {
                    balance_of(&e).saturating_sub(amount)
                };
                e["balance"] = json!(b);
                e
            }
            "closed" => {
                let mut e = entry.ok_or_else(|| state_err("closed before opened"))?;
                e["open"] = json!(false);
                e
            }
            _ => return Ok(Fold::Unknown),
        };
        accounts.insert(id.to_owned(), updated);
        let mut totals = Map::new();
        let mut open = 0u64;
        for e in accounts.values() {
            if e.get("open").and_then(Value::as_bool) == Some(true) {
                open += 1;
            }
            if let Some(c) = e.get("currency").and_then(Value::as_str) {
                let t = totals.get(c).and_then(Value::as_i64).unwrap_or(0);
                totals.insert(c.to_owned(), json!(t.saturating_add(balance_of(e))));
            }
        }
        Ok(Fold::Set(json!({
            "open_accounts": open,
            "totals": totals,
            "accounts": accounts,
            "last_event_at": timestamp(env),
        })))
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
}
