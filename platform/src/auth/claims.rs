//! Where in a verified token's claims the tenants and the admin right are found
//! (`AUTH_TENANTS_CLAIM`, `AUTH_ADMIN_CLAIM`, `AUTH_ADMIN_ROLE`).
//!
//! A claim is named in one of two ways:
//! - a string starting with `/` is an RFC 6901 JSON pointer into the claims object
//!   (`/realm_access/roles`; `~1` stands for `/` and `~0` for `~` inside a segment);
//! - any other string is first looked up as one top-level claim name, literally (so
//!   `https://example.com/tenants` works); only when the token has no such top-level claim and
//!   the name contains dots is it read as a dotted path through nested objects
//!   (`realm_access.roles`).

use serde_json::Value;

/// A configured claim location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    raw: String,
}

impl ClaimPath {
    /// Parses a configured claim name; empty names and pointers that are not RFC 6901 are
    /// refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a claim name must not be empty".into());
        }
        if let Some(pointer) = raw.strip_prefix('/') {
            for segment in pointer.split('/') {
                let mut chars = segment.chars();
                while let Some(c) = chars.next() {
                    if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                        return Err(format!(
                            "{raw:?} is not a JSON pointer: `~` must be followed by 0 or 1"
                        ));
                    }
                }
            }
        }
        Ok(ClaimPath {
            raw: raw.to_owned(),
        })
    }

    /// The name as configured (for error messages).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The value at this location, if any.
    pub fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        if self.raw.starts_with('/') {
            return claims.pointer(&self.raw);
        }
        if let Some(v) = claims.get(&self.raw) {
            return Some(v);
        }
        if !self.raw.contains('.') {
            return None;
        }
        self.raw
            .split('.')
            .try_fold(claims, |v, segment| v.get(segment))
    }
}

/// How the admin right is read from a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRule {
    /// The claim is a boolean; `true` grants the admin routes.
    Flag(ClaimPath),
    /// The claim is a list of strings (or one space-separated string, like `scope`); containing
    /// the role grants the admin routes.
    Role {
        /// Where the roles are.
        claim: ClaimPath,
        /// The role that grants admin.
        role: String,
    },
}

/// The configured claim mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// Where the list of tenants is.
    pub tenants: ClaimPath,
    /// How admin is decided.
    pub admin: AdminRule,
}

impl ClaimMapping {
    /// `tenants` (list of strings) and `admin` (boolean): what the development tokens carry.
    pub fn standard() -> Self {
        ClaimMapping {
            tenants: ClaimPath {
                raw: "tenants".into(),
            },
            admin: AdminRule::Flag(ClaimPath {
                raw: "admin".into(),
            }),
        }
    }

    /// The tenants the token grants: absent means none; anything but a list of strings is an
    /// error naming the claim.
    pub fn tenants(&self, claims: &Value) -> Result<Vec<String>, String> {
        match self.tenants.find(claims) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.wrong_tenants()),
            Some(_) => Err(self.wrong_tenants()),
        }
    }

    fn wrong_tenants(&self) -> String {
        format!(
            "the token's `{}` claim (the tenants) must be a list of strings",
            self.tenants.as_str()
        )
    }

    /// Whether the token grants the admin routes: absent means no; a value of the wrong shape
    /// is an error naming the claim.
    pub fn admin(&self, claims: &Value) -> Result<bool, String> {
        match &self.admin {
            AdminRule::Flag(path) => match path.find(claims) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(format!(
                    "the token's `{}` claim (admin) must be a boolean",
                    path.as_str()
                )),
            },
            AdminRule::Role { claim, role } => match claim.find(claims) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::String(s)) => Ok(s.split(' ').any(|r| r == role)),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                    Ok(items.iter().any(|v| v.as_str() == Some(role)))
                }
                Some(_) => Err(format!(
                    "the token's `{}` claim (roles) must be a list of strings",
                    claim.as_str()
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(s: &str) -> ClaimPath {
        ClaimPath::parse(s).expect("valid")
    }

    #[test]
    fn literal_names_win_over_dotted_paths() {
        let claims = json!({
            "https://example.com/tenants": ["acme"],
            "realm_access": {"roles": ["nats-es-admin"]},
            "a.b": 1,
            "a": {"b": 2},
        });
        assert_eq!(
            path("https://example.com/tenants").find(&claims),
            Some(&json!(["acme"]))
        );
        assert_eq!(
            path("realm_access.roles").find(&claims),
            Some(&json!(["nats-es-admin"]))
        );
        assert_eq!(path("a.b").find(&claims), Some(&json!(1)));
        assert_eq!(path("/a/b").find(&claims), Some(&json!(2)));
        assert_eq!(path("missing.path").find(&claims), None);
        assert_eq!(path("tenants").find(&claims), None);
    }

    #[test]
    fn json_pointers_unescape_slashes() {
        let claims = json!({"https://x/y": {"k": true}});
        assert_eq!(path("/https:~1~1x~1y/k").find(&claims), Some(&json!(true)));
        assert!(ClaimPath::parse("/bad~2").is_err());
        assert!(ClaimPath::parse("").is_err());
    }

    #[test]
    fn tenants_must_be_a_list_of_strings() {
        let m = ClaimMapping::standard();
        assert_eq!(
            m.tenants(&json!({"tenants": ["a", "b"]})),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(m.tenants(&json!({})), Ok(vec![]));
        for bad in [json!("acme"), json!([1]), json!({"a": 1}), json!(true)] {
            let err = m
                .tenants(&json!({ "tenants": bad }))
                .expect_err("wrong shape");
            assert!(err.contains("`tenants`"), "{err}");
        }
    }

    #[test]
    fn admin_as_a_flag_or_a_role() {
        let flag = ClaimMapping::standard();
        assert_eq!(flag.admin(&json!({"admin": true})), Ok(true));
        assert_eq!(flag.admin(&json!({"admin": false})), Ok(false));
        assert_eq!(flag.admin(&json!({})), Ok(false));
        assert!(flag.admin(&json!({"admin": "true"})).is_err());

        let role = ClaimMapping {
            tenants: path("tenants"),
            admin: AdminRule::Role {
                claim: path("realm_access.roles"),
                role: "nats-es-admin".into(),
            },
        };
        let with = |roles: Value| json!({"realm_access": {"roles": roles}});
        assert_eq!(role.admin(&with(json!(["x", "nats-es-admin"]))), Ok(true));
        assert_eq!(role.admin(&with(json!(["nats-es-admin-not"]))), Ok(false));
        assert_eq!(role.admin(&json!({})), Ok(false));
        assert_eq!(role.admin(&with(json!("api nats-es-admin"))), Ok(true));
        assert!(role.admin(&with(json!([1]))).is_err());
        assert!(role.admin(&with(json!({"nats-es-admin": true}))).is_err());
    }
}
