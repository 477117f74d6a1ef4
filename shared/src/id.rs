//! Validated identifiers that are safe to embed in a NATS subject as one token.

use std::fmt;
use std::str::FromStr;

/// The longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id. Each variant names the problem precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The value was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id was being parsed (e.g. `tenant id`).
        kind: &'static str,
    },
    /// The value was longer than [`MAX_ID_LEN`] bytes.
    #[error("{kind} is {len} bytes long; at most {MAX_ID_LEN} bytes are allowed")]
    TooLong {
        /// Which id was being parsed.
        kind: &'static str,
        /// The length that was given.
        len: usize,
    },
    /// The value contained a character outside `[A-Za-z0-9_-]`.
    #[error(
        "{kind} contains {found} at byte {index}; only ASCII letters, digits, '_' and '-' are allowed"
    )]
    InvalidChar {
        /// Which id was being parsed.
        kind: &'static str,
        /// A description of the offending character (e.g. `'.' (subject separator)`).
        found: String,
        /// Byte offset of the offending character.
        index: usize,
    },
}

fn describe(c: char) -> String {
    match c {
        '.' => "'.' (NATS subject separator)".to_owned(),
        '*' => "'*' (NATS wildcard)".to_owned(),
        '>' => "'>' (NATS wildcard)".to_owned(),
        c if c.is_whitespace() => format!("whitespace {:?}", c),
        c if c.is_control() => format!("control character U+{:04X}", u32::from(c)),
        c if !c.is_ascii() => format!("non-ASCII character {:?}", c),
        c => format!("{:?}", c),
    }
}

/// The single validation rule shared by every id type: one NATS subject token.
fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some((index, c)) = value
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(IdError::InvalidChar {
            kind,
            found: describe(c),
            index,
        });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        ///
        /// A valid value is one NATS subject token: 1 to 64 bytes ([`MAX_ID_LEN`]) of
        /// `[A-Za-z0-9_-]`. `.`, `*`, `>`, whitespace, control and non-ASCII characters are
        /// rejected with an [`IdError`] naming the problem. Validation runs in `FromStr`,
        /// `TryFrom<String>`, `TryFrom<&str>` and deserialization, so an invalid value can never be
        /// constructed.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Human-readable kind of this id, used in error messages.
            pub const KIND: &'static str = $kind;

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                validate($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                validate($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($kind)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

/// The OpenAPI schema of every id: the rule [`validate`] enforces, as a pattern.
#[cfg(feature = "openapi")]
fn id_schema(kind: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!(
            "{kind}, one NATS subject token: 1 to {MAX_ID_LEN} bytes of [A-Za-z0-9_-]"
        )))
        .pattern(Some(format!("^[A-Za-z0-9_-]{{1,{MAX_ID_LEN}}}$")))
        .into()
}

token_id!(
    /// A tenant: the first token after `tenant.` in every event subject.
    TenantId,
    "tenant id"
);
token_id!(
    /// The kind of aggregate, e.g. `account`.
    AggregateType,
    "aggregate type"
);
token_id!(
    /// The id of one aggregate instance within a tenant and type.
    AggregateId,
    "aggregate id"
);
token_id!(
    /// The name of a projection view, e.g. `accounts`; part of its durable consumer name.
    ViewName,
    "view name"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_tokens() {
        for ok in ["acme", "A-b_9", "x", &"a".repeat(MAX_ID_LEN)] {
            let id: TenantId = ok.parse().expect("valid");
            assert_eq!(id.as_str(), ok);
            assert_eq!(id.to_string(), ok);
        }
    }

    #[test]
    fn rejects_each_class_with_a_named_reason() {
        let cases: &[(&str, &str)] = &[
            ("acme.corp", "subject separator"),
            ("*", "wildcard"),
            (">", "wildcard"),
            ("a b", "whitespace"),
            ("a\tb", "whitespace"),
            ("a\u{0}b", "control character"),
            ("ä", "non-ASCII"),
            ("a/b", "'/'"),
            ("", "must not be empty"),
        ];
        for (bad, why) in cases {
            let err = TenantId::from_str(bad).expect_err(bad);
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
            assert!(err.to_string().starts_with("tenant id"), "{err}");
        }
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            TenantId::from_str(&long),
            Err(IdError::TooLong {
                kind: "tenant id",
                len: 65
            })
        );
    }

    #[test]
    fn serde_validates_and_is_transparent() {
        let id: AggregateId = serde_json::from_str("\"acc-1\"").expect("valid");
        assert_eq!(serde_json::to_string(&id).expect("ser"), "\"acc-1\"");
        let err = serde_json::from_str::<AggregateId>("\"a.b\"").expect_err("invalid");
        assert!(err.to_string().contains("aggregate id"), "{err}");
    }

    #[test]
    fn try_from_string_validates() {
        assert!(AggregateType::try_from("account".to_owned()).is_ok());
        assert!(AggregateType::try_from(">".to_owned()).is_err());
        assert!(ViewName::try_from("a.b").is_err());
    }
}
