//! Bearer JWT authentication and tenant isolation, identical in both services.
//!
//! `Authorization: Bearer <JWT>`, verified with one of: an HS256 shared secret, an RS256 /
//! ES256 / EdDSA public key file, or an identity provider's key set ([`jwks`]: `AUTH_JWKS_URL`
//! or OpenID discovery from `AUTH_OIDC_ISSUER_URL`). `exp` is required, `nbf` honoured, both
//! with `AUTH_JWT_LEEWAY_SECS`; `iss` must equal `AUTH_JWT_ISSUER` and `aud` must contain one
//! of `AUTH_JWT_AUDIENCE` when those are set. The tenants and the admin right come from
//! configurable claims ([`claims`]). A request for a tenant not in the token is 403; a
//! missing, expired, misdirected or badly signed token is 401 whose `detail` says which check
//! failed (never the token). Running without authentication needs an explicit switch and logs
//! a warning at start-up.

pub mod claims;
pub mod jwks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use self::claims::{AdminRule, ClaimMapping, ClaimPath};
use self::jwks::{JwksCache, JwksSettings, JwksSource, Lookup};
use crate::problem::Problem;

/// The issuer the development tokens carry and the local stack expects.
pub const DEV_ISSUER: &str = "nats-es-dev";
/// The audience the development tokens carry and the local stack expects.
pub const DEV_AUDIENCE: &str = "nats-es";

/// Authentication settings, from flags or environment.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthArgs {
    /// HS256 shared secret.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub auth_jwt_secret: Option<String>,
    /// File holding the HS256 shared secret (trailing whitespace is ignored).
    #[arg(long, env = "AUTH_JWT_SECRET_FILE")]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// PEM public key for RS256, ES256 or EdDSA tokens.
    #[arg(long, env = "AUTH_JWT_PUBLIC_KEY_FILE")]
    pub auth_jwt_public_key_file: Option<PathBuf>,
    /// Algorithm of the public key: RS256, ES256 or EdDSA.
    #[arg(long, env = "AUTH_JWT_ALGORITHM", default_value = "RS256")]
    pub auth_jwt_algorithm: String,
    /// URL of the identity provider's JSON Web Key Set (keys chosen by `kid`, refreshed).
    #[arg(long, env = "AUTH_JWKS_URL")]
    pub auth_jwks_url: Option<String>,
    /// OpenID provider issuer URL: the key set is found through
    /// `<url>/.well-known/openid-configuration` (its `jwks_uri`).
    #[arg(long, env = "AUTH_OIDC_ISSUER_URL")]
    pub auth_oidc_issuer_url: Option<String>,
    /// The `iss` every token must carry (recommended in production).
    #[arg(long, env = "AUTH_JWT_ISSUER")]
    pub auth_jwt_issuer: Option<String>,
    /// Audiences, comma-separated: a token's `aud` must contain one (recommended in production).
    #[arg(long, env = "AUTH_JWT_AUDIENCE", value_delimiter = ',')]
    pub auth_jwt_audience: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[arg(long, env = "AUTH_JWT_LEEWAY_SECS", default_value_t = 5)]
    pub auth_jwt_leeway_secs: u64,
    /// Claim holding the list of tenants: a name (`tenants`, `https://example.com/tenants`),
    /// a dotted path (`org.tenants`) or a JSON pointer (`/org/tenants`).
    #[arg(long, env = "AUTH_TENANTS_CLAIM", default_value = "tenants")]
    pub auth_tenants_claim: String,
    /// Claim deciding the admin right: a boolean, or with AUTH_ADMIN_ROLE a list of roles.
    #[arg(long, env = "AUTH_ADMIN_CLAIM", default_value = "admin")]
    pub auth_admin_claim: String,
    /// The role in AUTH_ADMIN_CLAIM that grants the admin routes (e.g. `nats-es-admin` in
    /// `realm_access.roles`); unset, AUTH_ADMIN_CLAIM is a boolean.
    #[arg(long, env = "AUTH_ADMIN_ROLE")]
    pub auth_admin_role: Option<String>,
    /// Shortest time between background key set refreshes, in seconds.
    #[arg(long, env = "AUTH_JWKS_REFRESH_MIN_SECS", default_value_t = 60)]
    pub auth_jwks_refresh_min_secs: u64,
    /// Longest time between background key set refreshes (and the period without
    /// `Cache-Control: max-age`), in seconds.
    #[arg(long, env = "AUTH_JWKS_REFRESH_MAX_SECS", default_value_t = 3600)]
    pub auth_jwks_refresh_max_secs: u64,
    /// At most one key set fetch per this many seconds because of tokens with an unknown `kid`.
    #[arg(
        long,
        env = "AUTH_JWKS_UNKNOWN_KID_INTERVAL_SECS",
        default_value_t = 30
    )]
    pub auth_jwks_unknown_kid_interval_secs: u64,
    /// Timeout of one request to the identity provider, in seconds.
    #[arg(long, env = "AUTH_JWKS_TIMEOUT_SECS", default_value_t = 10)]
    pub auth_jwks_timeout_secs: u64,
    /// Serve without authentication (development only; logged as a warning).
    #[arg(long = "insecure-no-auth", env = "AUTH_DISABLED")]
    pub insecure_no_auth: bool,
}

/// What a verified token grants.
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
        "no authentication configured: set AUTH_JWT_SECRET, AUTH_JWT_SECRET_FILE, \
         AUTH_JWT_PUBLIC_KEY_FILE, AUTH_JWKS_URL or AUTH_OIDC_ISSUER_URL, or run with \
         --insecure-no-auth (AUTH_DISABLED=true)"
    )]
    Missing,
    /// More than one key source.
    #[error("authentication: set only one of {0}")]
    Ambiguous(String),
    /// A key file could not be read or parsed.
    #[error("authentication key: {0}")]
    Key(String),
    /// A claim or timing setting is invalid.
    #[error("authentication setting: {0}")]
    Setting(String),
}

/// Where verification keys come from.
enum Keys {
    Static { key: DecodingKey, alg: Algorithm },
    Jwks(Arc<JwksCache>),
}

struct Verifier {
    keys: Keys,
    /// `iss`, `aud`, leeway, required claims; `algorithms` is set per token.
    validation: Validation,
    mapping: ClaimMapping,
}

/// A verifier of bearer tokens, or the explicit absence of one.
#[derive(Clone)]
pub struct Authenticator {
    inner: Option<Arc<Verifier>>,
}

/// Issuer, audience, leeway and claim mapping, apart from the keys.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Accepted audiences (one must be in `aud`); empty: `aud` is not checked.
    pub audience: Vec<String>,
    /// Leeway on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Tenants and admin claims.
    pub mapping: ClaimMapping,
}

impl Policy {
    /// No issuer or audience check, 5 s leeway, the `tenants` / `admin` claims.
    pub fn lenient() -> Self {
        Policy {
            issuer: None,
            audience: Vec::new(),
            leeway_secs: 5,
            mapping: ClaimMapping::standard(),
        }
    }

    fn from_args(args: &AuthArgs) -> Result<Self, AuthConfigError> {
        let path = |name: &str, value: &str| {
            ClaimPath::parse(value).map_err(|e| AuthConfigError::Setting(format!("{name}: {e}")))
        };
        let tenants = path("AUTH_TENANTS_CLAIM", &args.auth_tenants_claim)?;
        let admin_claim = path("AUTH_ADMIN_CLAIM", &args.auth_admin_claim)?;
        let admin = match &args.auth_admin_role {
            Some(role) if !role.is_empty() => AdminRule::Role {
                claim: admin_claim,
                role: role.clone(),
            },
            Some(_) => {
                return Err(AuthConfigError::Setting(
                    "AUTH_ADMIN_ROLE must not be empty".into(),
                ));
            }
            None => AdminRule::Flag(admin_claim),
        };
        let audience: Vec<String> = args
            .auth_jwt_audience
            .iter()
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        Ok(Policy {
            issuer: args
                .auth_jwt_issuer
                .clone()
                .filter(|i| !i.trim().is_empty()),
            audience,
            leeway_secs: args.auth_jwt_leeway_secs,
            mapping: ClaimMapping { tenants, admin },
        })
    }

    fn validation(&self) -> Validation {
        let mut v = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        v.leeway = self.leeway_secs;
        v.validate_exp = true;
        v.validate_nbf = true;
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if self.audience.is_empty() {
            // without a configured audience, a token's `aud` is not checked (a start-up WARN
            // recommends configuring one)
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

impl Authenticator {
    /// Builds the verifier from the settings. With a key set URL, its refresher starts on the
    /// current tokio runtime (the first fetch at once; `/readyz` reports until it loads).
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthConfigError> {
        // an empty variable (`AUTH_JWT_SECRET=`) counts as unset
        let mut args = args.clone();
        let keep = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        let keep_path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        args.auth_jwt_secret = keep(&args.auth_jwt_secret);
        args.auth_jwt_secret_file = keep_path(&args.auth_jwt_secret_file);
        args.auth_jwt_public_key_file = keep_path(&args.auth_jwt_public_key_file);
        args.auth_jwks_url = keep(&args.auth_jwks_url);
        args.auth_oidc_issuer_url = keep(&args.auth_oidc_issuer_url);
        let args = &args;
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| AuthConfigError::Key(format!("{}: {e}", p.display())))
        };
        let sources: Vec<&str> = [
            (args.auth_jwt_secret.is_some(), "AUTH_JWT_SECRET"),
            (args.auth_jwt_secret_file.is_some(), "AUTH_JWT_SECRET_FILE"),
            (
                args.auth_jwt_public_key_file.is_some(),
                "AUTH_JWT_PUBLIC_KEY_FILE",
            ),
            (args.auth_jwks_url.is_some(), "AUTH_JWKS_URL"),
            (args.auth_oidc_issuer_url.is_some(), "AUTH_OIDC_ISSUER_URL"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        if sources.len() > 1 {
            return Err(AuthConfigError::Ambiguous(sources.join(", ")));
        }
        if sources.is_empty() {
            if args.insecure_no_auth {
                tracing::warn!(
                    "authentication is DISABLED (--insecure-no-auth): every request is accepted for every tenant"
                );
                return Ok(Self::disabled());
            }
            return Err(AuthConfigError::Missing);
        }
        let policy = Policy::from_args(args)?;
        let keys = if let Some(secret) = &args.auth_jwt_secret {
            Self::secret_key(secret.trim().as_bytes().to_vec())?
        } else if let Some(p) = &args.auth_jwt_secret_file {
            Self::secret_key(
                String::from_utf8_lossy(&read(p)?)
                    .trim_end()
                    .as_bytes()
                    .to_vec(),
            )?
        } else if let Some(path) = &args.auth_jwt_public_key_file {
            let pem = read(path)?;
            let (key, alg) = match args.auth_jwt_algorithm.to_ascii_uppercase().as_str() {
                "RS256" => (DecodingKey::from_rsa_pem(&pem), Algorithm::RS256),
                "ES256" => (DecodingKey::from_ec_pem(&pem), Algorithm::ES256),
                "EDDSA" => (DecodingKey::from_ed_pem(&pem), Algorithm::EdDSA),
                other => {
                    return Err(AuthConfigError::Key(format!(
                        "unsupported algorithm {other}; use RS256, ES256 or EdDSA"
                    )));
                }
            };
            let key = key.map_err(|e| AuthConfigError::Key(format!("{}: {e}", path.display())))?;
            Keys::Static { key, alg }
        } else {
            let source = match (&args.auth_jwks_url, &args.auth_oidc_issuer_url) {
                (Some(url), _) => JwksSource::Url(check_url("AUTH_JWKS_URL", url)?),
                (None, Some(url)) => JwksSource::Discovery(check_url("AUTH_OIDC_ISSUER_URL", url)?),
                (None, None) => return Err(AuthConfigError::Missing),
            };
            let settings = JwksSettings {
                refresh_min: Duration::from_secs(args.auth_jwks_refresh_min_secs.max(1)),
                refresh_max: Duration::from_secs(
                    args.auth_jwks_refresh_max_secs
                        .max(args.auth_jwks_refresh_min_secs.max(1)),
                ),
                unknown_kid_interval: Duration::from_secs(args.auth_jwks_unknown_kid_interval_secs),
                http_timeout: Duration::from_secs(args.auth_jwks_timeout_secs.max(1)),
            };
            Keys::Jwks(JwksCache::start(source, settings).map_err(AuthConfigError::Setting)?)
        };
        if policy.issuer.is_none() && policy.audience.is_empty() {
            tracing::warn!(
                "neither AUTH_JWT_ISSUER nor AUTH_JWT_AUDIENCE is set: tokens are accepted whatever their iss and aud; \
                 set both in production so that tokens issued for other services are refused"
            );
        } else if policy.issuer.is_none() {
            tracing::warn!("AUTH_JWT_ISSUER is not set: tokens are accepted whatever their iss");
        } else if policy.audience.is_empty() {
            tracing::warn!("AUTH_JWT_AUDIENCE is not set: tokens are accepted whatever their aud");
        }
        Ok(Self::with(keys, policy))
    }

    fn secret_key(secret: Vec<u8>) -> Result<Keys, AuthConfigError> {
        if secret.len() < 16 {
            return Err(AuthConfigError::Key(
                "the HS256 secret must be at least 16 bytes".into(),
            ));
        }
        Ok(Keys::Static {
            key: DecodingKey::from_secret(&secret),
            alg: Algorithm::HS256,
        })
    }

    /// HS256 with a shared secret, no issuer or audience check, the standard claims.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::hs256_with(secret, Policy::lenient())
    }

    /// HS256 with a shared secret and the given policy.
    pub fn hs256_with(secret: &[u8], policy: Policy) -> Self {
        Self::with(
            Keys::Static {
                key: DecodingKey::from_secret(secret),
                alg: Algorithm::HS256,
            },
            policy,
        )
    }

    fn with(keys: Keys, policy: Policy) -> Self {
        Authenticator {
            inner: Some(Arc::new(Verifier {
                keys,
                validation: policy.validation(),
                mapping: policy.mapping,
            })),
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

    /// For `/readyz`: why tokens cannot be verified yet (the identity provider's keys have not
    /// loaded), or `None`.
    pub fn not_ready(&self) -> Option<String> {
        match &self.inner.as_ref()?.keys {
            Keys::Jwks(cache) => cache.not_ready(),
            Keys::Static { .. } => None,
        }
    }

    /// Registers the key set metrics (`auth_jwks_fetches`, `auth_jwks_keys`) when keys come
    /// from an identity provider.
    pub fn register_metrics(&self, metrics: &crate::metrics::Metrics) {
        if let Some(cache) = self.jwks() {
            cache.metrics().register(metrics);
        }
    }

    /// The key set cache, when keys come from an identity provider.
    pub fn jwks(&self) -> Option<&Arc<JwksCache>> {
        match &self.inner.as_ref()?.keys {
            Keys::Jwks(cache) => Some(cache),
            Keys::Static { .. } => None,
        }
    }

    /// Verifies a token; the error is a 401 problem saying which check failed (or 503 while
    /// the identity provider's keys have never loaded).
    pub async fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let Some(inner) = &self.inner else {
            return Ok(Claims {
                sub: "anonymous".into(),
                exp: u64::MAX,
                tenants: Vec::new(),
                admin: true,
            });
        };
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the token is malformed (not a JWT)"))?;
        let key = match &inner.keys {
            Keys::Static { key, alg } => {
                if header.alg != *alg {
                    return Err(refusal(&ErrorKind::InvalidAlgorithm));
                }
                key.clone()
            }
            Keys::Jwks(cache) => {
                if !matches!(
                    header.alg,
                    Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA
                ) {
                    return Err(refusal(&ErrorKind::InvalidAlgorithm));
                }
                match cache.key_for(header.kid.as_deref(), header.alg).await {
                    Ok(k) if k.alg == header.alg => k.key,
                    Ok(_) => return Err(refusal(&ErrorKind::InvalidAlgorithm)),
                    Err(Lookup::NotLoaded(why)) => {
                        return Err(Problem::unavailable(format!(
                            "the identity provider's signing keys are not loaded yet: {why}"
                        )));
                    }
                    Err(Lookup::UnknownKid) => {
                        return Err(Problem::unauthorized(
                            "the token's signing key (kid) is not among the identity provider's keys",
                        ));
                    }
                    Err(Lookup::Ambiguous) => {
                        return Err(Problem::unauthorized(
                            "the token has no kid header and the identity provider has several keys",
                        ));
                    }
                }
            }
        };
        let mut validation = inner.validation.clone();
        validation.algorithms = vec![header.alg];
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Problem::unauthorized("the token's `sub` claim must be a string"))?
            .to_owned();
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .ok_or_else(|| Problem::unauthorized("the token's `exp` claim must be a number"))?;
        let tenants = inner
            .mapping
            .tenants(&claims)
            .map_err(Problem::unauthorized)?;
        let admin = inner
            .mapping
            .admin(&claims)
            .map_err(Problem::unauthorized)?;
        Ok(Claims {
            sub,
            exp,
            tenants,
            admin,
        })
    }
}

fn check_url(name: &str, url: &str) -> Result<String, AuthConfigError> {
    let url = url.trim();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.to_owned())
    } else {
        Err(AuthConfigError::Setting(format!(
            "{name} must be an http:// or https:// URL, got {url:?}"
        )))
    }
}

/// The 401 for a failed check, naming the check.
fn refusal(kind: &ErrorKind) -> Problem {
    let why = match kind {
        ErrorKind::ExpiredSignature => "the token has expired (`exp`)".to_owned(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (`nbf`)".to_owned(),
        ErrorKind::InvalidIssuer => {
            "the token's `iss` is not the accepted issuer (AUTH_JWT_ISSUER)".to_owned()
        }
        ErrorKind::InvalidAudience => {
            "the token's `aud` does not name this service (AUTH_JWT_AUDIENCE)".to_owned()
        }
        ErrorKind::MissingRequiredClaim(c) => format!("the token lacks the required `{c}` claim"),
        ErrorKind::InvalidClaimFormat(c) => format!("the token's `{c}` claim has the wrong type"),
        ErrorKind::InvalidSignature => "the token signature is invalid".to_owned(),
        ErrorKind::InvalidAlgorithm => "the token algorithm is not accepted".to_owned(),
        ErrorKind::InvalidToken => "the token is not valid".to_owned(),
        ErrorKind::Json(_) => "the token's claims are not a JSON object".to_owned(),
        _ => "the token is malformed".to_owned(),
    };
    Problem::unauthorized(why)
}

/// Signs an HS256 development token for `tenants`, valid for `ttl_secs`, with
/// `iss` = [`DEV_ISSUER`] and `aud` = [`DEV_AUDIENCE`] (what the local stack expects).
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
    let mut claims = serde_json::json!({
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": sub,
        "iat": now,
        "exp": now + ttl_secs,
        "tenants": tenants,
    });
    if admin {
        claims["admin"] = serde_json::Value::Bool(true);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
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
    let claims = match auth.verify(token.trim()).await {
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
        return Problem::forbidden("the admin routes need a token that grants admin")
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn sign(header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET)).expect("sign")
    }

    fn hs(claims: &Value) -> String {
        sign(Header::new(Algorithm::HS256), claims)
    }

    fn strict() -> Authenticator {
        Authenticator::hs256_with(
            SECRET,
            Policy {
                issuer: Some("https://idp.example/realms/acme".into()),
                audience: vec!["nats-es".into(), "nats-es-eu".into()],
                leeway_secs: 5,
                mapping: ClaimMapping::standard(),
            },
        )
    }

    fn good() -> Value {
        json!({
            "iss": "https://idp.example/realms/acme",
            "aud": ["account-console", "nats-es"],
            "sub": "svc",
            "exp": now() + 60,
            "tenants": ["acme"],
        })
    }

    fn with(mut v: Value, key: &str, value: Value) -> Value {
        v[key] = value;
        v
    }

    fn without(mut v: Value, key: &str) -> Value {
        v.as_object_mut().expect("object").remove(key);
        v
    }

    #[tokio::test]
    async fn verifies_a_minted_token() {
        let token = mint_hs256(SECRET, "dev", &["acme".into()], 60).expect("mint");
        let claims = Authenticator::hs256(SECRET)
            .verify(&token)
            .await
            .expect("valid");
        assert_eq!(claims.tenants, ["acme"]);
        // the development tokens carry the local stack's issuer and audience
        let dev = Authenticator::hs256_with(
            SECRET,
            Policy {
                issuer: Some(DEV_ISSUER.into()),
                audience: vec![DEV_AUDIENCE.into()],
                ..Policy::lenient()
            },
        );
        assert_eq!(dev.verify(&token).await.expect("valid").sub, "dev");
    }

    /// The issue's first finding: a token with `aud` (every provider's) was refused as
    /// "malformed" when no audience was configured.
    #[tokio::test]
    async fn without_issuer_and_audience_tokens_with_them_are_accepted() {
        let claims = Authenticator::hs256(SECRET)
            .verify(&hs(&good()))
            .await
            .expect("accepted");
        assert_eq!(claims.tenants, ["acme"]);
        let single = with(good(), "aud", json!("some-other-service"));
        assert!(
            Authenticator::hs256(SECRET)
                .verify(&hs(&single))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked() {
        let auth = strict();
        assert_eq!(auth.verify(&hs(&good())).await.expect("ok").sub, "svc");
        let single_aud = with(good(), "aud", json!("nats-es-eu"));
        assert!(
            auth.verify(&hs(&single_aud)).await.is_ok(),
            "second audience"
        );
        let p = auth.verify(&hs(&good())).await;
        assert!(p.is_ok());
        for (label, claims, want) in [
            (
                "other issuer",
                with(good(), "iss", json!("https://evil.example")),
                "`iss`",
            ),
            ("no issuer", without(good(), "iss"), "required `iss`"),
            (
                "other audience",
                with(good(), "aud", json!(["account"])),
                "`aud`",
            ),
            (
                "audience string",
                with(good(), "aud", json!("account")),
                "`aud`",
            ),
            ("no audience", without(good(), "aud"), "required `aud`"),
            (
                "issuer not a string",
                with(good(), "iss", json!(7)),
                "`iss`",
            ),
        ] {
            let p = auth.verify(&hs(&claims)).await.expect_err(label);
            let detail = p.detail.clone().unwrap_or_default();
            assert_eq!(p.status, 401, "{label}");
            assert!(detail.contains(want), "{label}: {detail}");
            assert!(!detail.contains("malformed"), "{label}: {detail}");
        }
    }

    /// Every refusal class: status 401, a detail naming the failed check, never the token, and
    /// "malformed" only for what is not a JWT.
    #[tokio::test]
    async fn every_refusal_names_its_check() {
        let auth = strict();
        let other_key = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &good(),
            &EncodingKey::from_secret(b"another-secret-of-32-bytes-long!"),
        )
        .expect("sign");
        // header {"alg":"none"}, claims, empty signature
        let alg_none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4IiwiZXhwIjo5OTk5OTk5OTk5LCJ0ZW5hbnRzIjpbImFjbWUiXX0.".to_owned();
        let cases: Vec<(&str, String, &str)> = vec![
            ("not a JWT", "not-a-token".into(), "malformed"),
            ("three dots of garbage", "a.b.c".into(), "malformed"),
            ("other key", other_key, "signature is invalid"),
            ("alg none", alg_none, "malformed"),
            (
                "HS512 header",
                sign(Header::new(Algorithm::HS512), &good()),
                "algorithm",
            ),
            (
                "expired",
                hs(&with(good(), "exp", json!(now() - 60))),
                "expired (`exp`)",
            ),
            ("no exp", hs(&without(good(), "exp")), "required `exp`"),
            (
                "not yet valid",
                hs(&with(good(), "nbf", json!(now() + 120))),
                "`nbf`",
            ),
            ("no sub", hs(&without(good(), "sub")), "required `sub`"),
            (
                "tenants a string",
                hs(&with(good(), "tenants", json!("acme"))),
                "`tenants`",
            ),
            (
                "admin a string",
                hs(&with(good(), "admin", json!("true"))),
                "`admin`",
            ),
            (
                "claims an array",
                sign(Header::new(Algorithm::HS256), &json!([1, 2])),
                "JSON object",
            ),
        ];
        for (label, token, want) in cases {
            let p = auth.verify(&token).await.expect_err(label);
            let detail = p.detail.clone().unwrap_or_default();
            assert_eq!(p.status, 401, "{label}");
            assert!(detail.contains(want), "{label}: {detail}");
            assert!(
                !detail.contains(&token),
                "{label}: the detail echoes the token"
            );
            if want != "malformed" {
                assert!(!detail.contains("malformed"), "{label}: {detail}");
            }
        }
    }

    #[tokio::test]
    async fn nbf_and_exp_within_the_leeway_pass() {
        let auth = strict();
        let claims = with(
            with(good(), "nbf", json!(now() + 2)),
            "exp",
            json!(now() - 2),
        );
        assert!(auth.verify(&hs(&claims)).await.is_ok());
        let none = Authenticator::hs256_with(
            SECRET,
            Policy {
                leeway_secs: 0,
                ..Policy::lenient()
            },
        );
        let late = with(good(), "exp", json!(now() - 3));
        assert!(none.verify(&hs(&late)).await.is_err(), "no leeway");
    }

    #[tokio::test]
    async fn claims_mapping_reads_namespaced_and_nested_claims() {
        let auth = Authenticator::hs256_with(
            SECRET,
            Policy {
                mapping: ClaimMapping {
                    tenants: ClaimPath::parse("https://nats-es.example/tenants").expect("path"),
                    admin: AdminRule::Role {
                        claim: ClaimPath::parse("realm_access.roles").expect("path"),
                        role: "nats-es-admin".into(),
                    },
                },
                ..Policy::lenient()
            },
        );
        let claims = json!({
            "sub": "ops", "exp": now() + 60,
            "https://nats-es.example/tenants": ["acme", "globex"],
            "realm_access": {"roles": ["offline_access", "nats-es-admin"]},
            "tenants": ["ignored"],
            "admin": false,
        });
        let c = auth.verify(&hs(&claims)).await.expect("valid");
        assert_eq!(
            (c.tenants, c.admin),
            (vec!["acme".into(), "globex".into()], true)
        );
        let plain = json!({"sub": "u", "exp": now() + 60, "realm_access": {"roles": ["user"]}});
        let c = auth.verify(&hs(&plain)).await.expect("valid");
        assert_eq!((c.tenants.len(), c.admin), (0, false));
    }

    #[test]
    fn key_sources_are_exclusive_and_settings_checked() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Args {
            #[command(flatten)]
            auth: AuthArgs,
        }
        let parse =
            |args: &[&str]| Args::parse_from(std::iter::once("t").chain(args.iter().copied())).auth;
        let two = parse(&[
            "--auth-jwt-secret",
            "0123456789abcdef0123",
            "--auth-jwks-url",
            "http://127.0.0.1:9/jwks",
        ]);
        let e = Authenticator::from_args(&two).err().expect("two sources");
        assert!(e.to_string().contains("AUTH_JWKS_URL"), "{e}");
        let bad_url = parse(&["--auth-oidc-issuer-url", "idp.example"]);
        let e = Authenticator::from_args(&bad_url).err().expect("no scheme");
        assert!(e.to_string().contains("AUTH_OIDC_ISSUER_URL"), "{e}");
        let bad_claim = parse(&[
            "--auth-jwt-secret",
            "0123456789abcdef0123",
            "--auth-tenants-claim",
            "",
        ]);
        assert!(Authenticator::from_args(&bad_claim).is_err());
        let audiences = parse(&["--auth-jwt-audience", "a, b,,c"]);
        assert_eq!(
            Policy::from_args(&audiences).expect("policy").audience,
            ["a", "b", "c"]
        );
    }
}
