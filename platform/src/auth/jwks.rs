//! The identity provider's signing keys (a JSON Web Key Set), fetched over HTTP(S) and cached.
//!
//! - The set comes from `AUTH_JWKS_URL`, or from the `jwks_uri` of the OpenID discovery
//!   document `AUTH_OIDC_ISSUER_URL/.well-known/openid-configuration`.
//! - A background task fetches it at start-up (retrying with backoff until it loads) and
//!   refreshes it after the response's `Cache-Control: max-age`, bounded by
//!   [`JwksSettings::refresh_min`] and [`JwksSettings::refresh_max`].
//! - A token whose `kid` is not in the set triggers one fetch, at most once per
//!   [`JwksSettings::unknown_kid_interval`] (every fetch counts, so a flood of random `kid`s
//!   cannot make more): a rotation is picked up without a restart.
//! - A fetch that fails keeps the keys already loaded (a provider outage does not lock out
//!   tokens signed with known keys) and logs a WARN naming the URL and the problem.
//! - Only RSA (RS256), EC P-256 (ES256) and Ed25519 (EdDSA) signature keys are used; other keys
//!   in the set are skipped with a WARN. A set with no usable key is an error, never "accept all".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// The key set's URL.
    Url(String),
    /// An OpenID provider's issuer URL: the key set is its discovery document's `jwks_uri`.
    Discovery(String),
}

impl JwksSource {
    fn discovery_url(issuer: &str) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )
    }
}

/// Timing of fetches.
#[derive(Debug, Clone, Copy)]
pub struct JwksSettings {
    /// Shortest time between background refreshes (a smaller `max-age` is raised to this).
    pub refresh_min: Duration,
    /// Longest time between background refreshes (also used without `max-age`).
    pub refresh_max: Duration,
    /// At most one fetch per this interval because of tokens with an unknown `kid`.
    pub unknown_kid_interval: Duration,
    /// Timeout of one HTTP request (discovery or key set).
    pub http_timeout: Duration,
}

/// One usable key.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// Why no key could be chosen for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The set has never been loaded; the reason is the last fetch error.
    NotLoaded(String),
    /// No key with this `kid` (after a fetch, or within the interval since the last one).
    UnknownKid,
    /// No `kid` in the token and more than one key could have signed it.
    Ambiguous,
}

#[derive(Default)]
struct State {
    /// Keys by `kid`; keys without a `kid` are under "".
    keys: Arc<HashMap<String, Key>>,
    loaded: bool,
    last_error: Option<String>,
    last_attempt: Option<Instant>,
    /// The `jwks_uri` found by discovery.
    jwks_uri: Option<String>,
}

/// Label of [`JwksMetrics::fetches`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchOutcome {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// What an operator watches: fetches by outcome and the number of usable keys (0 until the
/// first load: tokens cannot be verified).
#[derive(Clone, Default)]
pub struct JwksMetrics {
    /// Key set fetches (discovery included) by outcome.
    pub fetches: Family<FetchOutcome, Counter>,
    /// Usable keys in the cache.
    pub keys: Gauge,
}

impl JwksMetrics {
    /// Registers them as `auth_jwks_fetches` and `auth_jwks_keys` in a service's registry.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register(
            "auth_jwks_fetches",
            "Fetches of the identity provider's key set, by outcome",
            self.fetches.clone(),
        );
        metrics.register(
            "auth_jwks_keys",
            "Usable keys of the identity provider in the cache (0: tokens cannot be verified)",
            self.keys.clone(),
        );
    }
}

/// The cached key set, shared by every request; its refresher holds only a weak reference.
pub struct JwksCache {
    source: JwksSource,
    settings: JwksSettings,
    tls: tokio_rustls::TlsConnector,
    state: RwLock<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
    metrics: JwksMetrics,
}

/// What went wrong fetching the key set; the text names the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchError(pub(crate) String);

impl JwksCache {
    /// Builds the cache and starts its refresher (the first fetch starts at once).
    ///
    /// # Errors
    /// When there is no tokio runtime or the HTTP client cannot be built.
    pub fn start(source: JwksSource, settings: JwksSettings) -> Result<Arc<Self>, String> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "fetching a JWKS needs a tokio runtime".to_owned())?;
        let cache = Arc::new(JwksCache {
            source,
            settings,
            tls: tls_connector()?,
            state: RwLock::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetches: AtomicU64::new(0),
            metrics: JwksMetrics::default(),
        });
        handle.spawn(refresher(Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// Where the keys come from, for messages.
    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The fetch and key metrics (register them with [`JwksMetrics::register`]).
    pub fn metrics(&self) -> &JwksMetrics {
        &self.metrics
    }

    /// Key set fetches attempted so far (including failed ones).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// `None` when keys are loaded, else why not (for `/readyz`).
    pub fn not_ready(&self) -> Option<String> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if state.loaded {
            return None;
        }
        Some(format!(
            "auth: the identity provider's signing keys are not loaded: {}",
            state
                .last_error
                .as_deref()
                .unwrap_or("the first fetch is under way")
        ))
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Result<Key, Lookup> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if !state.loaded {
            return Err(Lookup::NotLoaded(
                state
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the first fetch is under way".into()),
            ));
        }
        match kid {
            Some(kid) => state.keys.get(kid).cloned().ok_or(Lookup::UnknownKid),
            None => {
                let mut candidates = state.keys.values().filter(|k| k.alg == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Ok(k.clone()),
                    (None, _) => Err(Lookup::UnknownKid),
                    (Some(_), Some(_)) => Err(Lookup::Ambiguous),
                }
            }
        }
    }

    /// The key for a token's `kid`: from the cache, or after one fetch when the `kid` is
    /// unknown and the last fetch is at least `unknown_kid_interval` old. Concurrent requests
    /// with unknown `kid`s wait for the same fetch.
    pub(crate) async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Key, Lookup> {
        match self.lookup(kid, alg) {
            Err(Lookup::UnknownKid) if kid.is_some() => {}
            other => return other,
        }
        let _guard = self.fetch_lock.lock().await;
        // another request may have fetched while this one waited
        match self.lookup(kid, alg) {
            Err(Lookup::UnknownKid) => {}
            other => return other,
        }
        let recent = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            state
                .last_attempt
                .is_some_and(|t| t.elapsed() < self.settings.unknown_kid_interval)
        };
        if recent {
            return Err(Lookup::UnknownKid);
        }
        tracing::info!(source = ?self.source, "a token names an unknown key id: fetching the key set");
        let _ = self.fetch_and_store().await;
        self.lookup(kid, alg)
    }

    /// One fetch under the fetch lock (the refresher's path).
    async fn refresh(&self) -> Result<Option<Duration>, FetchError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_and_store().await
    }

    /// Fetches and replaces the key set; on failure keeps the old one. The caller holds
    /// `fetch_lock`. Returns the response's `max-age`.
    async fn fetch_and_store(&self) -> Result<Option<Duration>, FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let outcome = self.fetch().await;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.last_attempt = Some(Instant::now());
        match outcome {
            Ok((uri, keys, max_age)) => {
                tracing::info!(url = %uri, keys = keys.len(), max_age_secs = max_age.map(|d| d.as_secs()), "identity provider keys loaded");
                self.metrics
                    .fetches
                    .get_or_create(&FetchOutcome { outcome: "ok" })
                    .inc();
                self.metrics
                    .keys
                    .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
                state.keys = Arc::new(keys);
                state.loaded = true;
                state.last_error = None;
                state.jwks_uri = Some(uri);
                Ok(max_age)
            }
            Err(e) => {
                self.metrics
                    .fetches
                    .get_or_create(&FetchOutcome { outcome: "error" })
                    .inc();
                if state.loaded {
                    tracing::warn!(error = %e.0, "refreshing the identity provider's keys failed; the keys loaded before stay in use");
                } else {
                    tracing::warn!(error = %e.0, "loading the identity provider's keys failed; /readyz reports it until they load");
                }
                if matches!(self.source, JwksSource::Discovery(_)) {
                    // the provider may have moved its key set: discover again next time
                    state.jwks_uri = None;
                }
                state.last_error = Some(e.0.clone());
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<(String, HashMap<String, Key>, Option<Duration>), FetchError> {
        let known_uri = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .jwks_uri
            .clone();
        let uri = match (&self.source, known_uri) {
            (JwksSource::Url(url), _) => url.clone(),
            (JwksSource::Discovery(_), Some(uri)) => uri,
            (JwksSource::Discovery(issuer), None) => {
                let url = JwksSource::discovery_url(issuer);
                let (body, _) = self.get(&url).await?;
                jwks_uri_of(&url, &body)?
            }
        };
        let (body, max_age) = self.get(&uri).await?;
        let keys = parse_jwks(&uri, &body)?;
        Ok((uri, keys, max_age))
    }

    /// GET `url` (http or https, no redirects) within the timeout: the body (at most
    /// [`DOCUMENT_LIMIT`] bytes) and the `Cache-Control` `max-age`.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let timeout = self.settings.http_timeout;
        tokio::time::timeout(timeout, self.get_once(url))
            .await
            .map_err(|_| FetchError(format!("{url}: no answer within {timeout:?}")))?
            .map_err(|e| FetchError(format!("{url}: {e}")))
    }

    async fn get_once(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        use axum::http::{Request, header};
        use http_body_util::BodyExt;

        let uri: axum::http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http:// or https:// URL".into()),
        };
        let authority = uri.authority().ok_or("the URL has no host")?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(header::HOST, authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("nats-es-platform/", env!("CARGO_PKG_VERSION")),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let response = if https {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("not a TLS server name: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(hyper_util::rt::TokioIo::new(tls), request).await?
        } else {
            send(hyper_util::rt::TokioIo::new(tcp), request).await?
        };
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP status {status}"));
        }
        let max_age = response
            .headers()
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let body = http_body_util::Limited::new(response.into_body(), DOCUMENT_LIMIT)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("the document exceeds {DOCUMENT_LIMIT} bytes")
                } else {
                    format!("reading the body: {e}")
                }
            })?
            .to_bytes();
        Ok((body.to_vec(), max_age))
    }
}

/// One request on a fresh HTTP/1.1 connection.
async fn send<T>(
    io: T,
    request: axum::http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<axum::http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))
}

/// Largest accepted discovery or key set document.
const DOCUMENT_LIMIT: usize = 1024 * 1024;

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `max-age` of a `Cache-Control` header value (`no-cache`/`no-store` count as 0).
pub(crate) fn max_age(header: &str) -> Option<Duration> {
    let mut found = None;
    for directive in header.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            found = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    found
}

/// The `jwks_uri` of a discovery document.
pub(crate) fn jwks_uri_of(url: &str, body: &[u8]) -> Result<String, FetchError> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| FetchError(format!("{url}: the discovery document is not JSON: {e}")))?;
    match doc.get("jwks_uri") {
        Some(serde_json::Value::String(uri)) if !uri.is_empty() => Ok(uri.clone()),
        Some(_) => Err(FetchError(format!(
            "{url}: the discovery document's jwks_uri is not a URL string"
        ))),
        None => Err(FetchError(format!(
            "{url}: the discovery document has no jwks_uri"
        ))),
    }
}

/// The usable keys of a key set document; unusable keys are skipped with a WARN.
pub(crate) fn parse_jwks(url: &str, body: &[u8]) -> Result<HashMap<String, Key>, FetchError> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| FetchError(format!("{url}: the key set is not JSON: {e}")))?;
    let Some(entries) = doc.get("keys").and_then(serde_json::Value::as_array) else {
        return Err(FetchError(format!(
            "{url}: not a JSON Web Key Set (no \"keys\" array)"
        )));
    };
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let kid = entry
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned();
        match usable_key(entry) {
            Ok(key) => {
                if keys.insert(kid.clone(), key).is_some() {
                    skipped.push(format!("key {i} (kid {kid:?}): duplicate kid"));
                }
            }
            Err(why) => skipped.push(format!("key {i} (kid {kid:?}): {why}")),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(url, skipped = %skipped.join("; "), "some keys of the identity provider's key set are not used");
    }
    if keys.is_empty() {
        return Err(FetchError(format!(
            "{url}: the key set has no usable signing key (RS256, ES256 or EdDSA){}",
            if skipped.is_empty() {
                String::new()
            } else {
                format!(": {}", skipped.join("; "))
            }
        )));
    }
    Ok(keys)
}

/// A key we can verify with, or why not.
fn usable_key(entry: &serde_json::Value) -> Result<Key, String> {
    let jwk: Jwk =
        serde_json::from_value(entry.clone()).map_err(|e| format!("not a valid JWK: {e}"))?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err("not a signature key (use is not \"sig\")".into());
    }
    let natural = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(format!("unsupported curve {:?}", p.curve));
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            return Err(format!("unsupported curve {:?}", p.curve));
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key is never accepted from a key set".into());
        }
        _ => {
            let kty = entry
                .get("kty")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            return Err(format!("unsupported key type {kty:?}"));
        }
    };
    let declared = match jwk.common.key_algorithm {
        None => natural,
        Some(KeyAlgorithm::RS256) => Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
        Some(other) => return Err(format!("unsupported algorithm {other:?}")),
    };
    if declared != natural {
        return Err(format!(
            "algorithm {declared:?} does not fit the key type ({natural:?})"
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(Key { alg: declared, key })
}

/// TLS with ring and the system's root certificates.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS configuration: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Fetches at once, then as [`next_delay`] says.
async fn refresher(cache: Weak<JwksCache>) {
    let mut failures = 0u32;
    let mut delay = Duration::ZERO;
    loop {
        tokio::time::sleep(delay).await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let outcome = cache.refresh().await;
        failures = if outcome.is_ok() {
            0
        } else {
            failures.saturating_add(1)
        };
        let loaded = cache.not_ready().is_none();
        delay = next_delay(
            &cache.settings,
            outcome.as_ref().ok().copied(),
            loaded,
            failures,
        );
    }
}

/// When to fetch next: after a success, the `max-age` bounded by `refresh_min` and
/// `refresh_max` (`refresh_max` without one); while nothing has loaded, after 1, 2, 4 ... s up
/// to `refresh_min`; after a failed refresh of loaded keys, after `refresh_min`.
pub(crate) fn next_delay(
    settings: &JwksSettings,
    success: Option<Option<Duration>>,
    loaded: bool,
    failures: u32,
) -> Duration {
    match success {
        Some(max_age) => max_age
            .unwrap_or(settings.refresh_max)
            .clamp(settings.refresh_min, settings.refresh_max),
        None if loaded => settings.refresh_min,
        None => {
            Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(settings.refresh_min)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_delays_are_bounded() {
        let s = JwksSettings {
            refresh_min: Duration::from_secs(60),
            refresh_max: Duration::from_secs(3600),
            unknown_kid_interval: Duration::from_secs(30),
            http_timeout: Duration::from_secs(10),
        };
        let secs = |d: Duration| d.as_secs();
        assert_eq!(
            secs(next_delay(
                &s,
                Some(Some(Duration::from_secs(300))),
                true,
                0
            )),
            300
        );
        assert_eq!(
            secs(next_delay(&s, Some(Some(Duration::ZERO)), true, 0)),
            60,
            "min"
        );
        assert_eq!(
            secs(next_delay(
                &s,
                Some(Some(Duration::from_secs(86_400))),
                true,
                0
            )),
            3600,
            "max"
        );
        assert_eq!(
            secs(next_delay(&s, Some(None), true, 0)),
            3600,
            "no max-age"
        );
        assert_eq!(secs(next_delay(&s, None, true, 3)), 60, "failed refresh");
        let backoff: Vec<u64> = (1..=8)
            .map(|f| secs(next_delay(&s, None, false, f)))
            .collect();
        assert_eq!(
            backoff,
            [1, 2, 4, 8, 16, 32, 60, 60],
            "until the first load"
        );
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn discovery_without_jwks_uri_names_the_url() {
        let e = jwks_uri_of(
            "http://idp/.well-known/openid-configuration",
            br#"{"issuer":"x"}"#,
        )
        .expect_err("no jwks_uri");
        assert!(
            e.0.contains("http://idp/.well-known/openid-configuration"),
            "{}",
            e.0
        );
        assert!(e.0.contains("no jwks_uri"), "{}", e.0);
        let e = jwks_uri_of("u", b"<html>").expect_err("not json");
        assert!(e.0.contains("not JSON"), "{}", e.0);
        let e = jwks_uri_of("u", br#"{"jwks_uri": 7}"#).expect_err("not a string");
        assert!(e.0.contains("not a URL string"), "{}", e.0);
        assert_eq!(
            jwks_uri_of("u", br#"{"jwks_uri": "http://idp/jwks"}"#),
            Ok("http://idp/jwks".into())
        );
    }

    #[test]
    fn malformed_key_sets_are_errors_naming_the_url() {
        for (body, want) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"kid": "x"}"#, "no \"keys\" array"),
            (br#"{"keys": {}}"#, "no \"keys\" array"),
            (br#"{"keys": []}"#, "no usable signing key"),
            (
                br#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#,
                "symmetric",
            ),
            (
                br#"{"keys": [{"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}]}"#,
                "unsupported curve",
            ),
            (br#"{"keys": [{"kty": "XYZ", "kid": "q"}]}"#, "key 0"),
            (
                br#"{"keys": [{"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#,
                "not a signature key",
            ),
            (
                br#"{"keys": [{"kty": "RSA", "kid": "ps", "alg": "PS256", "n": "AQAB", "e": "AQAB"}]}"#,
                "unsupported algorithm",
            ),
            (
                br#"{"keys": [{"kty": "RSA", "kid": "mix", "alg": "ES256", "n": "AQAB", "e": "AQAB"}]}"#,
                "does not fit",
            ),
        ] {
            let err = parse_jwks("https://idp.example/jwks", body)
                .err()
                .unwrap_or_else(|| panic!("accepted {}", String::from_utf8_lossy(body)));
            assert!(err.0.starts_with("https://idp.example/jwks: "), "{}", err.0);
            assert!(err.0.contains(want), "{want}: {}", err.0);
        }
    }

    #[test]
    fn usable_keys_are_kept_beside_unusable_ones() {
        let body = br#"{"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}
        ]}"#;
        let keys = parse_jwks("u", body).expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys["ed"].alg, Algorithm::EdDSA);
    }
}
