//! The `account` domain shipped with the platform: open, deposit, withdraw, close.
//!
//! Amounts are integer minor units (cents). Rules: nothing before `open` or after `close`,
//! amounts > 0, a withdrawal never makes the balance negative, `close` only at zero balance,
//! `open` only once.

use serde::{Deserialize, Serialize};
use shared::{AggregateAddress, AggregateType, IdError};

use crate::domain::{Aggregate, CommandSchema, DomainError, Snapshotting};

/// Lifecycle of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No `opened` event yet.
    #[default]
    New,
    /// Open for business.
    Open,
    /// Closed for good.
    Closed,
}

/// The state of one account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    /// Lifecycle.
    pub status: Status,
    /// Owner's name.
    pub owner: Option<String>,
    /// ISO 4217 currency code.
    pub currency: Option<String>,
    /// Balance in minor units.
    pub balance: i64,
}

/// Commands, as sent in `{"type": ..., "payload": ...}`; their schema is the OpenAPI
/// document's `Commands.account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "type",
    content = "payload",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum AccountCommand {
    /// Opens the account.
    Open {
        /// Owner's name.
        owner: String,
        /// ISO 4217 code, three upper-case letters.
        currency: String,
    },
    /// Adds money.
    Deposit {
        /// Minor units, > 0.
        amount: i64,
    },
    /// Takes money out.
    Withdraw {
        /// Minor units, > 0 and at most the balance.
        amount: i64,
    },
    /// Closes the account (balance must be zero).
    Close {},
}

/// Events, as stored in `event_type` / `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Owner's name.
        owner: String,
        /// ISO 4217 code.
        currency: String,
    },
    /// Money came in.
    Deposited {
        /// Minor units.
        amount: i64,
    },
    /// Money went out.
    Withdrawn {
        /// Minor units.
        amount: i64,
    },
    /// The account was closed.
    Closed {},
}

/// Why an account command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `open` on an account that exists.
    #[error("the account is already open")]
    AlreadyOpen,
    /// Any command but `open` before `open`.
    #[error("the account is not open yet")]
    NotOpen,
    /// Any command after `close`.
    #[error("the account is closed")]
    Closed,
    /// A zero or negative amount.
    #[error("amount must be greater than zero, got {0}")]
    NonPositiveAmount(i64),
    /// A withdrawal larger than the balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// Current balance.
        balance: i64,
        /// Requested amount.
        requested: i64,
    },
    /// `close` with money in the account.
    #[error("the balance must be zero to close, it is {0}")]
    NonZeroBalance(i64),
    /// A deposit that would overflow the balance.
    #[error("the balance would overflow")]
    Overflow,
    /// Bad open parameters.
    #[error("invalid account: {0}")]
    Invalid(&'static str),
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::AlreadyOpen => "account-already-open",
            AccountError::NotOpen => "account-not-open",
            AccountError::Closed => "account-closed",
            AccountError::NonPositiveAmount(_) => "non-positive-amount",
            AccountError::InsufficientFunds { .. } => "insufficient-funds",
            AccountError::NonZeroBalance(_) => "non-zero-balance",
            AccountError::Overflow => "balance-overflow",
            AccountError::Invalid(_) => "invalid-account",
        }
    }
}

/// The `account` aggregate type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Account;

impl Account {
    /// The type name.
    pub const TYPE: &'static str = "account";

    /// The address of account `id` of `tenant`.
    ///
    /// # Errors
    /// `tenant` or `id` breaks the id rule.
    pub fn address(tenant: &str, id: &str) -> Result<AggregateAddress, IdError> {
        Ok(AggregateAddress::new(
            tenant.parse()?,
            Account.aggregate_type(),
            id.parse()?,
        ))
    }
}

impl Snapshotting for Account {
    /// Bump when `AccountState` or `apply` changes meaning (old snapshots are then ignored).
    const STATE_SCHEMA: u32 = 1;
}

impl Aggregate for Account {
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn aggregate_type(&self) -> AggregateType {
        // a literal that satisfies the id rule
        AggregateType::try_from(Self::TYPE).unwrap_or_else(|_| unreachable!())
    }

    fn command_types(&self) -> &'static [&'static str] {
        &["open", "deposit", "withdraw", "close"]
    }

    fn command_schema(&self) -> Option<CommandSchema> {
        Some(CommandSchema::of::<AccountCommand>())
    }

    fn apply(&self, state: &mut AccountState, event: AccountEvent) {
        match event {
            AccountEvent::Opened { owner, currency } => {
                state.status = Status::Open;
                state.owner = Some(owner);
                state.currency = Some(currency);
            }
            AccountEvent::Deposited { amount } => {
                state.balance = state.balance.saturating_add(amount)
            }
            AccountEvent::Withdrawn { amount } => {
                state.balance = state.balance.saturating_sub(amount)
            }
            AccountEvent::Closed {} => state.status = Status::Closed,
        }
    }

    fn decide(
        &self,
        state: &AccountState,
        command: AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        let positive = |amount: i64| {
            if amount > 0 {
                Ok(amount)
            } else {
                Err(AccountError::NonPositiveAmount(amount))
            }
        };
        match (state.status, command) {
            (Status::New, AccountCommand::Open { owner, currency }) => {
                if owner.trim().is_empty() || owner.len() > 200 {
                    return Err(AccountError::Invalid("owner must be 1 to 200 bytes"));
                }
                if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(AccountError::Invalid(
                        "currency must be three upper-case letters (ISO 4217)",
                    ));
                }
                Ok(vec![AccountEvent::Opened { owner, currency }])
            }
            (Status::Open | Status::Closed, AccountCommand::Open { .. }) => {
                Err(AccountError::AlreadyOpen)
            }
            (Status::New, _) => Err(AccountError::NotOpen),
            (Status::Closed, _) => Err(AccountError::Closed),
            (Status::Open, AccountCommand::Deposit { amount }) => {
                let amount = positive(amount)?;
                state
                    .balance
                    .checked_add(amount)
                    .ok_or(AccountError::Overflow)?;
                Ok(vec![AccountEvent::Deposited { amount }])
            }
            (Status::Open, AccountCommand::Withdraw { amount }) => {
                let amount = positive(amount)?;
                if amount > state.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: state.balance,
                        requested: amount,
                    });
                }
                Ok(vec![AccountEvent::Withdrawn { amount }])
            }
            (Status::Open, AccountCommand::Close {}) => {
                if state.balance != 0 {
                    return Err(AccountError::NonZeroBalance(state.balance));
                }
                Ok(vec![AccountEvent::Closed {}])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DecideError, DynAggregate};
    use serde_json::json;

    fn run(commands: &[AccountCommand]) -> Result<AccountState, AccountError> {
        let mut state = AccountState::default();
        for c in commands {
            for e in Aggregate::decide(&Account, &state, c.clone())? {
                Aggregate::apply(&Account, &mut state, e);
            }
        }
        Ok(state)
    }

    fn open() -> AccountCommand {
        AccountCommand::Open {
            owner: "Ada".into(),
            currency: "EUR".into(),
        }
    }

    #[test]
    fn happy_path() {
        let s = run(&[
            open(),
            AccountCommand::Deposit { amount: 100 },
            AccountCommand::Withdraw { amount: 100 },
            AccountCommand::Close {},
        ])
        .expect("ok");
        assert_eq!(s.status, Status::Closed);
        assert_eq!(s.balance, 0);
    }

    #[test]
    fn rules() {
        use AccountCommand::*;
        assert_eq!(run(&[Deposit { amount: 1 }]), Err(AccountError::NotOpen));
        assert_eq!(run(&[open(), open()]), Err(AccountError::AlreadyOpen));
        assert_eq!(
            run(&[open(), Deposit { amount: 0 }]),
            Err(AccountError::NonPositiveAmount(0))
        );
        assert_eq!(
            run(&[open(), Withdraw { amount: -5 }]),
            Err(AccountError::NonPositiveAmount(-5))
        );
        assert_eq!(
            run(&[open(), Deposit { amount: 5 }, Withdraw { amount: 6 }]),
            Err(AccountError::InsufficientFunds {
                balance: 5,
                requested: 6
            })
        );
        assert_eq!(
            run(&[open(), Deposit { amount: 5 }, Close {}]),
            Err(AccountError::NonZeroBalance(5))
        );
        assert_eq!(
            run(&[open(), Close {}, Deposit { amount: 1 }]),
            Err(AccountError::Closed)
        );
        assert_eq!(
            run(&[open(), Deposit { amount: i64::MAX }, Deposit { amount: 1 }]),
            Err(AccountError::Overflow)
        );
        assert!(matches!(
            run(&[AccountCommand::Open {
                owner: "A".into(),
                currency: "eur".into()
            }]),
            Err(AccountError::Invalid(_))
        ));
    }

    #[test]
    fn erased_decide_classifies_errors() {
        let agg: &dyn DynAggregate = &Account;
        let s = agg.initial();
        assert!(matches!(
            agg.decide(&s, "teleport", json!({})),
            Err(DecideError::UnknownCommand { .. })
        ));
        assert!(matches!(
            agg.decide(&s, "open", json!({"owner": 1})),
            Err(DecideError::InvalidPayload { .. })
        ));
        assert!(matches!(
            agg.decide(&s, "deposit", json!({"amount": 1.5})),
            Err(DecideError::InvalidPayload { .. })
        ));
        // the reason names the field by its path in the command body
        let Err(DecideError::InvalidPayload { reason, .. }) =
            agg.decide(&s, "open", json!({"owner": "Ada", "currency": ["EUR"]}))
        else {
            panic!("not an invalid payload")
        };
        assert!(
            reason.starts_with("payload.currency: invalid type"),
            "{reason}"
        );
        // an event of a type `account` does not know names its index
        let err = agg
            .apply_all(
                &s,
                &mut [
                    ("deposited", &json!({"amount": 1})),
                    ("teleported", &json!({})),
                ]
                .into_iter(),
            )
            .expect_err("unknown event type");
        assert_eq!((err.index, err.event_type.as_str()), (1, "teleported"));
        assert!(matches!(
            agg.decide(&s, "deposit", json!({"amount": 5})),
            Err(DecideError::Domain {
                code: "account-not-open",
                ..
            })
        ));
        let events = agg
            .decide(&s, "open", json!({"owner": "Ada", "currency": "EUR"}))
            .expect("open");
        assert_eq!(events[0].0, "opened");
        assert_eq!(events[0].1, json!({"owner": "Ada", "currency": "EUR"}));
        let s = agg
            .apply_all(&s, &mut events.iter().map(|(t, p)| (t.as_str(), p)))
            .expect("apply");
        assert_eq!(agg.state_json(&s)["status"], "open");
        // close without a payload is accepted
        let closed = agg
            .decide(&s, "close", serde_json::Value::Null)
            .expect("close");
        assert_eq!(closed, vec![("closed".to_owned(), json!({}))]);
    }

    #[test]
    fn every_listed_command_type_decodes() {
        for t in Account.command_types() {
            let payload = match *t {
                "open" => json!({"owner": "A", "currency": "EUR"}),
                "deposit" | "withdraw" => json!({"amount": 1}),
                _ => json!({}),
            };
            let v = json!({"type": t, "payload": payload});
            serde_json::from_value::<AccountCommand>(v).expect(t);
        }
    }
}
