//! Keys from an identity provider's key set, served over real HTTP by a small axum server:
//! selection by `kid`, every algorithm, rotation, the unknown-`kid` fetch limit, Cache-Control
//! refreshes, start-up before the provider is up, an outage, and bad documents.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use clap::Parser;
use jsonwebtoken::{Algorithm, Header};
use platform::auth::{AuthArgs, Authenticator};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    auth: AuthArgs,
}

/// What the provider serves; changed by the tests while it runs.
struct Served {
    discovery: Value,
    jwks: Value,
    jwks_body: Option<&'static str>,
    cache_control: &'static str,
    status: StatusCode,
}

#[derive(Clone)]
struct Provider {
    served: Arc<Mutex<Served>>,
    jwks_fetches: Arc<AtomicU64>,
    base: String,
}

impl Provider {
    /// Serves `/.well-known/openid-configuration` and `/jwks` on `port` (0: any).
    async fn start(port: u16, jwks: Value) -> (Provider, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let provider = Provider {
            served: Arc::new(Mutex::new(Served {
                discovery: json!({"issuer": base, "jwks_uri": format!("{base}/jwks")}),
                jwks,
                jwks_body: None,
                cache_control: "max-age=3600",
                status: StatusCode::OK,
            })),
            jwks_fetches: Arc::new(AtomicU64::new(0)),
            base,
        };
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(|State(p): State<Provider>| async move {
                    let served = p.served.lock().expect("lock");
                    axum::Json(served.discovery.clone())
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(|State(p): State<Provider>| async move {
                    p.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                    let served = p.served.lock().expect("lock");
                    let mut headers = HeaderMap::new();
                    headers.insert(
                        "cache-control",
                        HeaderValue::from_static(served.cache_control),
                    );
                    let body = served
                        .jwks_body
                        .map_or_else(|| served.jwks.to_string(), str::to_owned);
                    (served.status, headers, body).into_response()
                }),
            )
            .with_state(provider.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (provider, server)
    }

    fn set(&self, f: impl FnOnce(&mut Served)) {
        f(&mut self.served.lock().expect("lock"));
    }

    fn fetches(&self) -> u64 {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

fn public_keys(kids: &[&str]) -> Value {
    let all: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{FIXTURES}/jwks-public.json")).expect("fixture"),
    )
    .expect("json");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap_or("")))
        .cloned()
        .collect();
    json!({ "keys": keys })
}

/// A token signed with a fixture key, naming `kid`.
fn token(alg: Algorithm, private_key: &str, kid: Option<&str>) -> String {
    let key = crate::auth::encoding_key(alg, private_key);
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({
        "iss": "https://idp.test", "aud": "nats-es", "sub": "svc", "exp": now + 300,
        "tenants": ["acme"],
    });
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn authenticator(extra: &[&str]) -> Authenticator {
    let mut args = vec![
        "test",
        "--auth-jwt-issuer",
        "https://idp.test",
        "--auth-jwt-audience",
        "nats-es",
    ];
    args.extend_from_slice(extra);
    Authenticator::from_args(&Args::parse_from(args).auth).expect("authenticator")
}

async fn loaded(auth: &Authenticator) {
    testkit::eventually(
        "the keys load",
        Duration::from_secs(10),
        async || match auth.not_ready() {
            None => Ok(()),
            why => Err(why),
        },
    )
    .await;
}

/// Waits until the provider has served its key set three times.
async fn three_fetches(idp: &Provider) {
    testkit::eventually(
        "three fetches",
        Duration::from_secs(15),
        async || match idp.fetches() {
            n if n >= 3 => Ok(()),
            n => Err(n),
        },
    )
    .await;
}

fn detail(p: &platform::problem::Problem) -> String {
    p.detail.clone().unwrap_or_default()
}

#[tokio::test]
async fn every_algorithm_is_verified_with_the_key_its_kid_names() {
    let (idp, _server) = Provider::start(0, public_keys(&["rsa-1", "ec-1", "ed-1"])).await;
    let url = format!("{}/jwks", idp.base);
    let auth = authenticator(&["--auth-jwks-url", &url]);
    loaded(&auth).await;
    for (alg, key, kid) in [
        (Algorithm::RS256, "rsa-private.pem", "rsa-1"),
        (Algorithm::ES256, "ec-private.pem", "ec-1"),
        (Algorithm::EdDSA, "ed-private.pem", "ed-1"),
    ] {
        let claims = auth
            .verify(&token(alg, key, Some(kid)))
            .await
            .unwrap_or_else(|p| panic!("{alg:?}: {p:?}"));
        assert_eq!(claims.tenants, ["acme"]);
    }
    // the key named by kid is of another type than the token's algorithm
    let p = auth
        .verify(&token(Algorithm::ES256, "ec-private.pem", Some("ed-1")))
        .await
        .expect_err("kid of an EdDSA key on an ES256 token");
    assert!(detail(&p).contains("algorithm"), "{p:?}");
    // signed by another key than the one its kid names
    let p = auth
        .verify(&token(Algorithm::ES256, "ec2-private.pem", Some("ec-1")))
        .await
        .expect_err("forged");
    assert!(detail(&p).contains("signature"), "{p:?}");
    // an HS256 token is never accepted from a key set (no symmetric keys there)
    let hs = platform::auth::mint_hs256(b"0123456789abcdef0123", "x", &[], 60).expect("mint");
    assert!(detail(&auth.verify(&hs).await.expect_err("hs256")).contains("algorithm"));
    // several ES256 keys... here one: a token without kid uses the only key of its algorithm
    assert!(
        auth.verify(&token(Algorithm::ES256, "ec-private.pem", None))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_rotation_is_picked_up_and_an_unknown_kid_flood_fetches_at_most_once_per_interval() {
    let (idp, _server) = Provider::start(0, public_keys(&["rsa-1", "ec-1"])).await;
    let url = format!("{}/jwks", idp.base);
    let interval = Duration::from_secs(2);
    let auth = authenticator(&[
        "--auth-jwks-url",
        &url,
        "--auth-jwks-unknown-kid-interval-secs",
        "2",
    ]);
    loaded(&auth).await;
    let old = token(Algorithm::ES256, "ec-private.pem", Some("ec-1"));
    assert!(auth.verify(&old).await.is_ok());

    // the provider rotates: ec-2 signs, ec-1 stays published, rsa-1 is retired
    idp.set(|s| s.jwks = public_keys(&["ec-2", "ec-1"]));
    let new = token(Algorithm::ES256, "ec2-private.pem", Some("ec-2"));
    testkit::eventually(
        "the rotated key is picked up",
        Duration::from_secs(10),
        async || auth.verify(&new).await.map(drop),
    )
    .await;
    assert!(auth.verify(&old).await.is_ok(), "ec-1 is still published");
    let retired = token(Algorithm::RS256, "rsa-private.pem", Some("rsa-1"));
    let p = auth.verify(&retired).await.expect_err("retired key");
    assert!(detail(&p).contains("kid"), "{p:?}");

    // a flood of random kids, 2000 tokens over at least 3 intervals
    let before = idp.fetches();
    let started = Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < interval * 3 {
        let batch = (0..100).map(|i| {
            let t = token(
                Algorithm::ES256,
                "ec-private.pem",
                Some(&format!("random-{sent}-{i}")),
            );
            let auth = auth.clone();
            async move { auth.verify(&t).await }
        });
        let results = futures::future::join_all(batch).await;
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|p| p.status == 401))
        );
        sent += 100;
        // a known key keeps working in the middle of it
        assert!(auth.verify(&new).await.is_ok());
    }
    let elapsed = started.elapsed();
    let fetched = idp.fetches() - before;
    let allowed = (elapsed.as_secs_f64() / interval.as_secs_f64()).floor() as u64 + 1;
    eprintln!(
        "{sent} tokens with unknown kids in {elapsed:?}: {fetched} key set fetches (at most {allowed})"
    );
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {elapsed:?} with an interval of {interval:?}"
    );
    assert!(fetched >= 1, "the flood never refetched: {fetched}");
}

#[tokio::test]
async fn a_provider_down_at_start_up_is_reported_until_its_keys_load() {
    let port = testkit::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let auth = authenticator(&["--auth-oidc-issuer-url", &issuer]);
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    testkit::eventually(
        "readiness names the discovery URL",
        Duration::from_secs(10),
        async || {
            let why = auth.not_ready().unwrap_or_default();
            if why.contains(&discovery) {
                Ok(())
            } else {
                Err(why)
            }
        },
    )
    .await;
    let t = token(Algorithm::EdDSA, "ed-private.pem", Some("ed-1"));
    let p = auth.verify(&t).await.expect_err("no keys yet");
    assert_eq!(p.status, 503, "{p:?}");
    assert!(detail(&p).contains("not loaded"), "{p:?}");

    let (_idp, _server) = Provider::start(port, public_keys(&["ed-1"])).await;
    loaded(&auth).await;
    assert!(auth.verify(&t).await.is_ok());
}

#[tokio::test]
async fn known_keys_keep_working_while_the_provider_is_down() {
    let (idp, server) = Provider::start(0, public_keys(&["ec-1"])).await;
    let url = format!("{}/jwks", idp.base);
    let auth = authenticator(&[
        "--auth-jwks-url",
        &url,
        "--auth-jwks-unknown-kid-interval-secs",
        "0",
    ]);
    loaded(&auth).await;
    let fetches = auth.jwks().expect("jwks").fetches();
    server.abort();
    let _ = server.await;
    // an unknown kid makes it fetch, which fails
    let p = auth
        .verify(&token(Algorithm::ES256, "ec2-private.pem", Some("ec-2")))
        .await
        .expect_err("unknown kid");
    assert_eq!(p.status, 401);
    assert!(
        auth.jwks().expect("jwks").fetches() > fetches,
        "no fetch was tried"
    );
    assert_eq!(auth.not_ready(), None, "loaded keys stay loaded");
    assert!(
        auth.verify(&token(Algorithm::ES256, "ec-private.pem", Some("ec-1")))
            .await
            .is_ok()
    );
    // visible in the metrics
    let metrics = platform::metrics::Metrics::new("test");
    auth.register_metrics(&metrics);
    let text = metrics.render();
    assert!(
        text.contains("test_auth_jwks_fetches_total{outcome=\"error\"} 1")
            && text.contains("test_auth_jwks_fetches_total{outcome=\"ok\"} 1")
            && text.contains("test_auth_jwks_keys 1"),
        "{text}"
    );
    // an answer that is an error keeps the keys too
    let (idp2, _server2) = Provider::start(0, public_keys(&["ec-1"])).await;
    idp2.set(|s| s.status = StatusCode::INTERNAL_SERVER_ERROR);
    let auth2 = authenticator(&["--auth-jwks-url", &format!("{}/jwks", idp2.base)]);
    testkit::eventually(
        "readiness names the HTTP status",
        Duration::from_secs(10),
        async || {
            let why = auth2.not_ready().unwrap_or_default();
            if why.contains("HTTP status 500") {
                Ok(())
            } else {
                Err(why)
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_documents_are_errors_naming_the_url_never_accept_all() {
    let t = token(Algorithm::ES256, "ec-private.pem", Some("ec-1"));
    for (label, setup, path, want) in [
        (
            "discovery without jwks_uri",
            (|s: &mut Served| s.discovery = json!({"issuer": "x"})) as fn(&mut Served),
            "/.well-known/openid-configuration",
            "no jwks_uri",
        ),
        (
            "key set that is not JSON",
            |s: &mut Served| s.jwks_body = Some("<html>oops</html>"),
            "/jwks",
            "not JSON",
        ),
        (
            "key set without keys",
            |s: &mut Served| s.jwks = json!({"issuer": "x"}),
            "/jwks",
            "no \"keys\" array",
        ),
        (
            "only unsupported keys",
            |s: &mut Served| {
                s.jwks = json!({"keys": [
                    {"kty": "oct", "kid": "h", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"},
                    {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}
                ]})
            },
            "/jwks",
            "no usable signing key",
        ),
    ] {
        let (idp, _server) = Provider::start(0, public_keys(&["ec-1"])).await;
        idp.set(setup);
        let auth = authenticator(&["--auth-oidc-issuer-url", &idp.base]);
        let url = format!("{}{path}", idp.base);
        testkit::eventually(
            format!("{label}: readiness names {url} and {want:?}"),
            Duration::from_secs(10),
            async || {
                let why = auth.not_ready().unwrap_or_default();
                if why.contains(&url) && why.contains(want) {
                    Ok(())
                } else {
                    Err(why)
                }
            },
        )
        .await;
        let p = auth.verify(&t).await.expect_err(label);
        assert_eq!(p.status, 503, "{label}: {p:?}");
    }
}

#[tokio::test]
async fn cache_control_max_age_drives_the_background_refresh_within_bounds() {
    // max-age=1, raised to refresh_min=1: a fetch about every second, without any token
    let (idp, _server) = Provider::start(0, public_keys(&["ec-1"])).await;
    idp.set(|s| s.cache_control = "public, max-age=1");
    let url = format!("{}/jwks", idp.base);
    let auth = authenticator(&["--auth-jwks-url", &url, "--auth-jwks-refresh-min-secs", "1"]);
    three_fetches(&idp).await;
    drop(auth);

    // a max-age of a day, bounded by refresh_max=1
    let (idp, _server) = Provider::start(0, public_keys(&["ec-1"])).await;
    idp.set(|s| s.cache_control = "max-age=86400");
    let url = format!("{}/jwks", idp.base);
    let _auth = authenticator(&[
        "--auth-jwks-url",
        &url,
        "--auth-jwks-refresh-min-secs",
        "1",
        "--auth-jwks-refresh-max-secs",
        "1",
    ]);
    three_fetches(&idp).await;
}
