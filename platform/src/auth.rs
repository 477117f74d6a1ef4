//! Bearer JWT authentication and tenant isolation, identical in both services.
//!
//! `Authorization: Bearer <JWT>` signed with HS256 (shared secret) or RS256 / ES256 (public key
//! file). Claims: `sub`, `exp`, `tenants` (the tenants the bearer may act on). A request for a
//! tenant not in the token is 403; a missing, expired or badly signed token is 401. Running
//! without authentication needs an explicit switch and logs a warning at start-up.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Authentication settings, from flags or environment.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// HS256 shared secret.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// File holding the HS256 shared secret (trailing whitespace is ignored).
    #[arg(long, env = "AUTH_JWT_SECRET_FILE")]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// PEM public key for RS256 or ES256 tokens.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,
    /// Algorithm of the public key: RS256 or ES256.
    #[arg(long, env = "AUTH_JWT_ALGORITHM", default_value = "RS256")]
    pub auth_jwt_algorithm: String,
    /// Serve without authentication (development only; logged as a warning).
    #[arg(long = "insecure-no-auth", env = "AUTH_DISABLED")]
    pub insecure_no_auth: bool,
}

/// The claims we read from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    /// Subject (who).
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Tenants the bearer may access.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// May use the admin routes (`/v1/admin/...`: parked events, rebuilds), which span tenants.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Why authentication settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// No key and no explicit opt-out.
    #[error(
        "no authentication configured: set AUTH_JWT_SECRET, AUTH_JWT_SECRET_FILE or \
         AUTH_JWT_PUBLIC_KEY_FILE, or run with --insecure-no-auth (AUTH_DISABLED=true)"
    )]
    Missing,
    /// A key file could not be read or parsed.
    #[error("authentication key: {0}")]
    Key(String),
}

/// A verifier of bearer tokens, or the explicit absence of one.
#[derive(Clone)]
pub struct Authenticator {
    inner: Option<Arc<(DecodingKey, Validation)>>,
}

impl Authenticator {
    /// Builds the verifier from the settings.
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthConfigError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| AuthConfigError::Key(format!("{}: {e}", p.display())))
        };
        let secret = match (&args.auth_jwt_secret, &args.auth_jwt_secret_file) {
            (Some(s), _) => Some(s.trim().as_bytes().to_vec()),
            (None, Some(p)) => Some(
                String::from_utf8_lossy(&read(p)?)
                    .trim_end()
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        if let Some(secret) = secret {
            if secret.len() < 16 {
                return Err(AuthConfigError::Key(
                    "the HS256 secret must be at least 16 bytes".into(),
                ));
            }
            return Ok(Self::hs256(&secret));
        }
        if let Some(path) = &args.auth_jwt_public_key_file {
            let pem = read(path)?;
            let (key, alg) = match args.auth_jwt_algorithm.to_ascii_uppercase().as_str() {
                "RS256" => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                "ES256" => (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
                other => {
                    return Err(AuthConfigError::Key(format!(
                        "unsupported algorithm {other}; use RS256 or ES256"
                    )));
                }
            };
            let key = key.map_err(|e| AuthConfigError::Key(e.to_string()))?;
            return Ok(Self::with(key, alg));
        }
        if args.insecure_no_auth {
            tracing::warn!(
                "authentication is DISABLED (--insecure-no-auth): every request is accepted for every tenant"
            );
            return Ok(Self::disabled());
        }
        Err(AuthConfigError::Missing)
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    fn with(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Authenticator {
            inner: Some(Arc::new((key, validation))),
        }
    }

    /// No authentication.
    pub fn disabled() -> Self {
        Authenticator { inner: None }
    }

    /// Whether tokens are checked.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Verifies a token; the error is a 401 problem saying why.
    pub fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let Some(inner) = &self.inner else {
            return Ok(Claims {
                sub: "anonymous".into(),
                exp: u64::MAX,
                tenants: Vec::new(),
                admin: true,
            });
        };
        jsonwebtoken::decode::<Claims>(token, &inner.0, &inner.1)
            .map(|d| d.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "the token algorithm is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                Problem::unauthorized(why)
            })
    }
}

/// Signs an HS256 development token for `tenants`, valid for `ttl_secs`.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    tenants: &[String],
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_claims(secret, sub, tenants, false, ttl_secs)
}

/// Like [`mint_hs256`], choosing whether the token may use the admin routes.
pub fn mint_hs256_claims(
    secret: &[u8],
    sub: &str,
    tenants: &[String],
    admin: bool,
    ttl_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: sub.to_owned(),
            exp: now + ttl_secs,
            tenants: tenants.to_vec(),
            admin,
        },
        &EncodingKey::from_secret(secret),
    )
}

/// Middleware for API routes (apply with `route_layer`): verifies the bearer token and, when
/// the route has a `{tenant}` parameter, that the token grants that tenant. A path parameter
/// that does not percent-decode to UTF-8 (`%FF`) is a 400 `invalid-id` problem here, before
/// any handler's `Path` extractor could answer it as plain text.
pub async fn require_auth(
    State(auth): State<Authenticator>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(p) => p,
        Err(e) => {
            return Problem::invalid_id(format!("a path segment is invalid: {}", e.body_text()))
                .into_response();
        }
    };
    if !auth.is_enabled() {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return Problem::unauthorized("send Authorization: Bearer <token>").into_response();
    };
    let claims = match auth.verify(token.trim()) {
        Ok(c) => c,
        Err(p) => return p.into_response(),
    };
    if let Some((_, tenant)) = params.iter().find(|(k, _)| *k == "tenant")
        && !claims.tenants.iter().any(|t| t == tenant)
    {
        return Problem::forbidden("the token does not grant access to this tenant")
            .into_response();
    }
    if req.uri().path().starts_with("/v1/admin/") && !claims.admin {
        return Problem::forbidden("the admin routes need a token with \"admin\": true")
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn verifies_a_minted_token() {
        let token = mint_hs256(SECRET, "dev", &["acme".into()], 60).expect("mint");
        let claims = Authenticator::hs256(SECRET).verify(&token).expect("valid");
        assert_eq!(claims.tenants, ["acme"]);
    }

    #[test]
    fn refuses_bad_tokens() {
        let auth = Authenticator::hs256(SECRET);
        let other = mint_hs256(b"another-secret-of-32-bytes-long!", "x", &[], 60).expect("mint");
        assert_eq!(auth.verify(&other).expect_err("sig").status, 401);
        assert_eq!(auth.verify("not.a.token").expect_err("garbage").status, 401);
        // alg none: header {"alg":"none"}, claims, empty signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5LCJ0ZW5hbnRzIjpbImFjbWUiXX0.";
        assert_eq!(auth.verify(none).expect_err("alg none").status, 401);
    }

    #[test]
    fn refuses_expired_tokens() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "x".into(),
                exp: now - 120,
                tenants: vec!["acme".into()],
                admin: false,
            },
            &EncodingKey::from_secret(SECRET),
        )
        .expect("mint");
        let p = Authenticator::hs256(SECRET)
            .verify(&expired)
            .expect_err("expired");
        assert_eq!(p.detail.as_deref(), Some("the token has expired"));
    }
}
