//! Tokens from a real OpenID provider (node's `oidc-provider`, e2e/oidc): both services take
//! their keys from its discovery document, accept its access tokens for our audience through the
//! gateway and directly, refuse another audience, pick up a key rotation without a restart, and
//! fetch its key set at most once per interval under a flood of unknown `kid`s.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use e2e::oidc::OidcProvider;
use serde_json::Value;

use crate::support::{Stack, Topology};

const AUDIENCE: &str = "urn:nats-es";
const TENANTS_CLAIM: &str = "https://nats-es.example/tenants";
/// AUTH_JWKS_UNKNOWN_KID_INTERVAL_SECS of the services under test.
const INTERVAL: Duration = Duration::from_secs(3);

fn auth_env(issuer: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AUTH_OIDC_ISSUER_URL", issuer.to_owned()),
        ("AUTH_JWT_ISSUER", issuer.to_owned()),
        ("AUTH_JWT_AUDIENCE", AUDIENCE.to_owned()),
        ("AUTH_TENANTS_CLAIM", TENANTS_CLAIM.to_owned()),
        ("AUTH_ADMIN_CLAIM", "realm_access.roles".to_owned()),
        ("AUTH_ADMIN_ROLE", "nats-es-admin".to_owned()),
        (
            "AUTH_JWKS_UNKNOWN_KID_INTERVAL_SECS",
            INTERVAL.as_secs().to_string(),
        ),
    ]
}

/// `(status, problem detail)` of `GET url` with `token`.
async fn get(http: &reqwest::Client, url: &str, token: &str) -> (u16, String) {
    let r = http
        .get(url)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["detail"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A tenant route on each service: an aggregate read and a view listing.
fn tenant_routes(base: &str, service: &str) -> String {
    if service.starts_with("aggregate") {
        format!("{base}/v1/tenants/acme/aggregates/account/oidc-probe")
    } else {
        format!("{base}/v1/tenants/acme/views/accounts")
    }
}

/// What an accepted tenant token gets: 404 for the unknown account, 200 for the view listing.
fn accepted(status: u16) -> bool {
    status == 404 || status == 200
}

/// The same token with another `kid` in its header (its signature is then irrelevant: the kid
/// is unknown).
fn with_kid(token: &str, kid: &str) -> String {
    let mut parts = token.split('.');
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts.next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let mut header = header;
    header["kid"] = Value::String(kid.to_owned());
    let rest: Vec<&str> = parts.collect();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        rest.join(".")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_openid_provider() {
    let state = tempfile::tempdir().expect("dir");
    let mut idp = OidcProvider::start(state.path(), testkit::free_port());
    let issuer = idp.issuer();
    let env = auth_env(&issuer);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stack = Stack::up_with_env(Topology::Single, 2, None, &env_refs)
        .unwrap_or_else(|e| panic!("{e}\nprovider log:\n{}", idp.log()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let gw = stack.gateway.clone();
    let pids: Vec<u32> = stack.services.iter().map(|(n, _)| stack.pid(n)).collect();

    // accepted with the right iss and aud, RS256, ES256 and EdDSA, through the gateway (which
    // passes Authorization on unchanged: the signature still verifies) and on every instance
    for client in ["tenant-es", "tenant-rs", "tenant-ed"] {
        let token = idp.token(client, AUDIENCE);
        for service in ["aggregate", "projection"] {
            let (status, detail) = get(&http, &tenant_routes(&gw, service), &token).await;
            assert!(
                accepted(status),
                "{client} via the gateway to {service}: {status} {detail}"
            );
        }
        for (name, url) in &stack.services {
            let (status, detail) = get(&http, &tenant_routes(url, name), &token).await;
            assert!(accepted(status), "{client} at {name}: {status} {detail}");
        }
    }
    // a write goes through too
    let token = idp.token("tenant-es", AUDIENCE);
    let r = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/oidc-1/commands"
        ))
        .header("authorization", format!("Bearer {token}"))
        .json(&serde_json::json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}))
        .send()
        .await
        .expect("open");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // tenants from the namespaced claim: another tenant is 403
    let (status, _) = get(
        &http,
        &format!("{gw}/v1/tenants/globex/views/accounts"),
        &token,
    )
    .await;
    assert_eq!(status, 403);
    // admin from the role in realm_access.roles
    let admin = idp.token("admin-es", AUDIENCE);
    let parked = format!("{gw}/v1/admin/views/accounts/parked");
    assert_eq!(get(&http, &parked, &admin).await.0, 200);
    assert_eq!(get(&http, &parked, &token).await.0, 403);
    assert_eq!(
        get(&http, &tenant_routes(&gw, "projection"), &admin)
            .await
            .0,
        403
    );

    // refused for another audience, with a detail naming `aud`
    let other = idp.token("tenant-es", "urn:other-service");
    for service in ["aggregate", "projection"] {
        let (status, detail) = get(&http, &tenant_routes(&gw, service), &other).await;
        assert_eq!(status, 401, "{service}: {detail}");
        assert!(
            detail.contains("`aud`") && !detail.contains("malformed"),
            "{service}: {detail}"
        );
    }

    // the provider rotates its keys; the services are not restarted
    let old = idp.token("tenant-ed", AUDIENCE);
    idp.rotate();
    let rotated = idp.token("tenant-ed", AUDIENCE);
    assert_ne!(
        kid_of(&old),
        kid_of(&rotated),
        "the provider did not rotate"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, url) in &stack.services {
        loop {
            let (status, detail) = get(&http, &tenant_routes(url, name), &rotated).await;
            if accepted(status) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never accepted the rotated key: {status} {detail}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // the previous generation is still published, so its tokens still pass
        let (status, detail) = get(&http, &tenant_routes(url, name), &old).await;
        assert!(accepted(status), "{name}, old key: {status} {detail}");
    }
    let now: Vec<u32> = stack.services.iter().map(|(n, _)| stack.pid(n)).collect();
    assert_eq!(pids, now, "a service was restarted");
    // the metrics show the rotated key set: generation 2 and 1, three keys each
    for (name, url) in &stack.services {
        let text = http
            .get(format!("{url}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            text.contains("_auth_jwks_keys 6")
                && text.contains("_auth_jwks_fetches_total{outcome=\"ok\"}"),
            "{name}: {}",
            text.lines()
                .filter(|l| l.contains("auth_jwks"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // a flood of unknown kids on every instance: at most one key set fetch per instance and
    // interval (every instance has its own cache)
    let before = idp.jwks_fetches();
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < INTERVAL * 2 {
        let batch: Vec<_> = (0..40)
            .map(|i| {
                let (name, url) = &stack.services[i % stack.services.len()];
                let url = tenant_routes(url, name);
                let forged = with_kid(&rotated, &format!("flood-{sent}-{i}"));
                let http = http.clone();
                async move { get(&http, &url, &forged).await }
            })
            .collect();
        for (status, detail) in futures::future::join_all(batch).await {
            assert_eq!(status, 401, "{detail}");
            assert!(detail.contains("kid"), "{detail}");
        }
        sent += 40;
    }
    let elapsed = started.elapsed();
    let fetched = idp.jwks_fetches() - before;
    let instances = stack.services.len() as u64;
    let windows = (elapsed.as_secs_f64() / INTERVAL.as_secs_f64()).floor() as u64 + 1;
    eprintln!(
        "oidc: {sent} requests with unknown kids over {elapsed:?} on {instances} instances: \
         {fetched} key set fetches at the provider (at most {})",
        instances * windows
    );
    assert!(
        fetched <= instances * windows,
        "{fetched} fetches for {instances} instances in {elapsed:?} (interval {INTERVAL:?})"
    );
    assert!(fetched >= 1, "the flood caused no fetch at all");
    // the valid token still passes after the flood
    let (status, detail) = get(&http, &tenant_routes(&gw, "aggregate"), &rotated).await;
    assert!(accepted(status), "{status} {detail}");
    assert!(stack.panics().is_empty(), "{:?}", stack.panics());
}

fn kid_of(token: &str) -> String {
    let header = token.split('.').next().expect("header");
    let v: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("b64")).expect("json");
    v["kid"].as_str().unwrap_or_default().to_owned()
}

/// A service process, killed on drop.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Started while the provider is down, each service serves, `/readyz` is 503 and names the
/// discovery URL, and becomes ready once the provider is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_started_before_the_provider_report_it_until_keys_load() {
    let nats = testkit::NatsServer::start();
    let (agg, proj) = e2e::binaries();
    let idp_port = testkit::free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let http = reqwest::Client::new();
    let mut services = Vec::new();
    for bin in [&agg, &proj] {
        let port = testkit::free_port();
        let mut cmd = Command::new(bin);
        cmd.env("NATS_URL", nats.url())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env_remove("AUTH_JWT_SECRET")
            .env_remove("AUTH_DISABLED")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in auth_env(&issuer) {
            cmd.env(k, v);
        }
        services.push((
            Service(cmd.spawn().expect("spawn")),
            format!("http://127.0.0.1:{port}/readyz"),
        ));
    }
    let discovery = format!("{issuer}/.well-known/openid-configuration");
    for (_, readyz) in &services {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = match http.get(readyz).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.text().await.unwrap_or_default())
                }
                Err(e) => (0, e.to_string()),
            };
            if seen.0 == 503 && seen.1.contains(&discovery) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{readyz} never said why: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let state = tempfile::tempdir().expect("dir");
    let _idp = OidcProvider::start(state.path(), idp_port);
    for (_, readyz) in &services {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = http
                .get(readyz)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{readyz} not ready after the provider came up: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
