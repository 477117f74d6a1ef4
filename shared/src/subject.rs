//! Event subjects: `tenant.<tenant>.aggregate.<type>.<id>`.

use std::fmt;

use crate::{AggregateId, AggregateType, IdError, TenantId};

/// Why a subject is not an aggregate event subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject does not have the five tokens `tenant.<t>.aggregate.<type>.<id>`.
    #[error("subject {0:?} is not of the form tenant.<tenant>.aggregate.<type>.<id>")]
    Shape(String),
    /// One of the tokens is not a valid id.
    #[error("subject {subject:?}: {source}")]
    Id {
        /// The subject that failed to parse.
        subject: String,
        /// The id problem.
        source: IdError,
    },
}

/// The subject filter of a tenant's events: every aggregate of `aggregate_type`, or of every
/// type (`None`): `tenant.<tenant>.aggregate.<type or *>.*`. Built only from validated ids, so
/// the only wildcards are the ones put here.
pub fn tenant_events_filter(tenant: &TenantId, aggregate_type: Option<&AggregateType>) -> String {
    match aggregate_type {
        Some(ty) => format!("tenant.{tenant}.aggregate.{ty}.*"),
        None => format!("tenant.{tenant}.aggregate.*.*"),
    }
}

/// The full address of one aggregate: everything its subject is made of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggregateAddress {
    /// Tenant.
    pub tenant_id: TenantId,
    /// Aggregate type.
    pub aggregate_type: AggregateType,
    /// Aggregate id.
    pub aggregate_id: AggregateId,
}

impl AggregateAddress {
    /// Builds an address from its parts.
    pub fn new(
        tenant_id: TenantId,
        aggregate_type: AggregateType,
        aggregate_id: AggregateId,
    ) -> Self {
        Self {
            tenant_id,
            aggregate_type,
            aggregate_id,
        }
    }

    /// The subject this aggregate's events are published on.
    pub fn subject(&self) -> String {
        format!(
            "tenant.{}.aggregate.{}.{}",
            self.tenant_id, self.aggregate_type, self.aggregate_id
        )
    }

    /// The aggregate type token of an event subject, if it is one.
    pub fn type_of_subject(subject: &str) -> Option<&str> {
        let mut parts = subject.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("tenant"), Some(_), Some("aggregate"), Some(ty)) => Some(ty),
            _ => None,
        }
    }

    /// Parses an event subject back into its address, rejecting anything else.
    pub fn parse_subject(subject: &str) -> Result<Self, SubjectError> {
        let shape = || SubjectError::Shape(subject.to_owned());
        let mut parts = subject.split('.');
        let (Some("tenant"), Some(t), Some("aggregate"), Some(ty), Some(id), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(shape());
        };
        let id_err = |source| SubjectError::Id {
            subject: subject.to_owned(),
            source,
        };
        Ok(Self {
            tenant_id: t.parse().map_err(id_err)?,
            aggregate_type: ty.parse().map_err(id_err)?,
            aggregate_id: id.parse().map_err(id_err)?,
        })
    }
}

impl fmt::Display for AggregateAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.tenant_id, self.aggregate_type, self.aggregate_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_filter_has_wildcards_only_where_put() {
        let t: TenantId = "acme".parse().expect("t");
        let ty: AggregateType = "account".parse().expect("ty");
        assert_eq!(
            tenant_events_filter(&t, Some(&ty)),
            "tenant.acme.aggregate.account.*"
        );
        assert_eq!(tenant_events_filter(&t, None), "tenant.acme.aggregate.*.*");
        assert_eq!(
            AggregateAddress::type_of_subject("tenant.acme.aggregate.account.a1"),
            Some("account")
        );
        assert_eq!(AggregateAddress::type_of_subject("other.acme"), None);
    }

    fn addr() -> AggregateAddress {
        AggregateAddress::new(
            "acme".parse().expect("t"),
            "account".parse().expect("ty"),
            "a-1".parse().expect("id"),
        )
    }

    #[test]
    fn builds_the_documented_subject() {
        assert_eq!(addr().subject(), "tenant.acme.aggregate.account.a-1");
    }

    #[test]
    fn round_trips() {
        assert_eq!(
            AggregateAddress::parse_subject(&addr().subject()).expect("parse"),
            addr()
        );
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "tenant.acme.aggregate.account",
            "tenant.acme.aggregate.account.a.b",
            "tenants.acme.aggregate.account.a",
            "tenant.acme.aggregates.account.a",
            "tenant.*.aggregate.account.a",
            "tenant.acme.aggregate.>",
            "tenant..aggregate.account.a",
        ] {
            assert!(AggregateAddress::parse_subject(bad).is_err(), "{bad:?}");
        }
    }
}
