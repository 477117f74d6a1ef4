//! What differs between a configuration a service needs and the one the server has, in words:
//! one entry per setting, `<setting>: expected <ours>, found <theirs>`. The events stream's
//! check ([`crate::nats::incompatibilities`]) and the projection's durable consumer check
//! both write their refusals with it.

use std::fmt::{Debug, Display};

/// The differences found so far, in the order they were checked.
#[derive(Debug, Default)]
pub struct Differences(Vec<String>);

impl Differences {
    /// No difference yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `what: expected {expected}, found {found}` unless `same`: for settings whose
    /// "same" is not plain equality, or whose values are written in words.
    pub fn check(&mut self, what: &str, same: bool, expected: impl Display, found: impl Display) {
        if !same {
            self.0
                .push(format!("{what}: expected {expected}, found {found}"));
        }
    }

    /// Records `what: expected {expected:?}, found {found:?}` unless the two are equal.
    pub fn compare<T: PartialEq + Debug + ?Sized>(&mut self, what: &str, expected: &T, found: &T) {
        if expected != found {
            self.0
                .push(format!("{what}: expected {expected:?}, found {found:?}"));
        }
    }

    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One entry per difference.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_difference_in_the_order_checked_and_nothing_that_matches() {
        let mut d = Differences::new();
        d.compare("same", &1, &1);
        d.check("agrees", true, "a", "b");
        d.compare("retention", &"Limits", &"WorkQueue");
        d.check(
            "max_age",
            false,
            "unlimited",
            format!("{:?}", std::time::Duration::from_secs(60)),
        );
        d.compare("max_deliver", &5_i64, &10_i64);
        assert_eq!(
            d.into_vec(),
            [
                "retention: expected \"Limits\", found \"WorkQueue\"",
                "max_age: expected unlimited, found 60s",
                "max_deliver: expected 5, found 10",
            ]
        );
    }

    #[test]
    fn is_empty_until_something_differs() {
        let mut d = Differences::new();
        d.compare("subjects", &["a"][..], &["a"][..]);
        assert!(d.is_empty());
        d.compare("subjects", &["a"][..], &["b"][..]);
        assert!(!d.is_empty());
    }
}
