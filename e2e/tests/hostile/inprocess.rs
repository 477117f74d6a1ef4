//! Both services' complete routers in process (`tower::ServiceExt::oneshot`, no sockets) on a
//! real nats-server: a deterministic injection matrix and a proptest of arbitrary requests.
//! Never a 5xx, every 4xx is problem+json, and the only subjects written are the ones of
//! requests that were accepted with valid ids.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use clap::Parser as _;
use http_body_util::BodyExt as _;
use platform::auth::Authenticator;
use platform::http::HttpSettings;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::Value;
use testkit::NatsServer;
use tower::ServiceExt as _;

use crate::support::*;

struct Services {
    aggregate: Router,
    projection: Router,
    // kept alive for the routers
    _apps: (aggregate::App, projection::App),
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

async fn services(server: &NatsServer) -> Services {
    let url = leak(server.url());
    let settings = HttpSettings {
        body_limit: 64 * 1024,
        request_timeout: Duration::from_secs(10),
    };
    let auth = Authenticator::hs256(SECRET.as_bytes());
    let acfg =
        aggregate::Config::parse_from(["aggregate", "--nats-url", url, "--instance-id", "hostile"]);
    let agg = aggregate::start(&acfg, aggregate::default_aggregates())
        .await
        .expect("start aggregate");
    let pcfg = projection::Config::parse_from([
        "projection",
        "--nats-url",
        url,
        "--instance-id",
        "hostile",
        // a read that waits for a position not reached answers 503 quickly
        "--min-position-timeout-ms",
        "1",
    ]);
    let proj = projection::start(&pcfg, projection::default_views())
        .await
        .expect("start projection");
    Services {
        aggregate: aggregate::app(&agg, auth.clone(), settings),
        projection: projection::app(&proj, auth, pcfg.service.http()),
        _apps: (agg, proj),
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Answer {
    fn slug(&self) -> &str {
        self.body["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:nats-es:problem:")
    }

    fn is_problem(&self) -> bool {
        self.content_type == "application/problem+json"
            && self.body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:nats-es:problem:"))
            && self.body["status"] == self.status
    }
}

/// `None` when `uri` is not even a valid request target (the client library refuses it).
async fn send(
    s: &Services,
    method: &str,
    uri: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Option<Answer> {
    let router = if uri.starts_with("/v1/admin/") || uri.contains("/views") {
        &s.projection
    } else {
        &s.aggregate
    };
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {a}"));
    }
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    let req = req.body(Body::from(body)).ok()?;
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    Some(Answer {
        status,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_injection_matrix_covers_every_position_of_every_route() {
    let server = NatsServer::start();
    let tap = Wiretap::start(&server.url()).await;
    let s = services(&server).await;
    let mut segments = hostile_segments();
    segments.push(huge_segment());
    segments.push("a".repeat(10 * 1024));
    let mut grants = vec!["acme".to_owned()];
    grants.extend(segments.iter().map(|v| percent_decode(v)));
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    let token = hand_signed(
        &serde_json::json!({"alg": "HS256"}),
        &claims(&grants, true, 600),
        SECRET.as_bytes(),
    );
    let open = br#"{"type":"open","payload":{"owner":"Mallory","currency":"EUR"}}"#;
    let id = format!("victim-{}", uuid::Uuid::new_v4().simple());
    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let (mut sent, mut refused_by_client) = (0usize, 0usize);
    let mut failures = Vec::new();
    for (method, template, body) in ROUTES {
        for position in positions(template) {
            for value in &segments {
                let uri = fill(template, position, value, &id);
                let body = if *body { open.to_vec() } else { Vec::new() };
                let Some(a) = send(
                    &s,
                    method,
                    &uri,
                    Some(&token),
                    Some("application/json"),
                    body,
                )
                .await
                else {
                    refused_by_client += 1;
                    continue;
                };
                sent += 1;
                let a_key = matches!(position, "{key}" | "{after}")
                    && matches!(a.status, 200 | 404)
                    && is_document_key(&percent_decode(value));
                if !(a_key || a.is_problem() && allowed(position, a.status, a.slug())) {
                    failures.push(format!(
                        "{method} {} -> {} {} {}",
                        &uri[..uri.len().min(120)],
                        a.status,
                        a.content_type,
                        a.body
                    ));
                }
                *outcomes.entry((a.status, a.slug().to_owned())).or_default() += 1;
            }
        }
    }
    let (events, foreign) = tap.foreign(&BTreeSet::new()).await;
    eprintln!(
        "in-process injection: {sent} requests ({refused_by_client} targets refused by the http crate), outcomes {outcomes:?}; {events} messages on tenant.>"
    );
    assert!(
        foreign.is_empty(),
        "messages on foreign subjects: {foreign:?}"
    );
    assert!(
        failures.is_empty(),
        "{} wrong answers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// proptest

/// Path segments: valid ids, the real names, hostile values, and arbitrary unicode / bytes,
/// percent-encoded or raw.
fn segment() -> impl Strategy<Value = String> {
    let hostile = hostile_segments();
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,16}",
        2 => prop::sample::select(vec!["acme", "account", "accounts", "tenant-summary", "summary", "1", "0"]).prop_map(str::to_owned),
        3 => prop::sample::select(hostile),
        2 => any::<String>().prop_map(|s| percent_encode(s.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| percent_encode(&b)),
        1 => "[!-~]{0,80}",
        1 => (1usize..200).prop_map(|n| "a".repeat(n)),
    ]
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        prop::sample::select(vec![
            "open", "deposit", "withdraw", "close", "EUR", "acme", "a.b", "*", ">"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "type",
                        "payload",
                        "command_id",
                        "expected_version",
                        "metadata",
                        "amount",
                        "owner",
                        "currency",
                        "tenant_id",
                        "aggregate_id",
                    ])
                    .prop_map(str::to_owned),
                    any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => Just(br#"{"type":"open","payload":{"owner":"Eve","currency":"EUR"}}"#.to_vec()),
        1 => (0u64..1_000).prop_map(|n| format!(r#"{{"type":"deposit","payload":{{"amount":{n}}}}}"#).into_bytes()),
        1 => Just(Vec::new()),
        2 => prop::collection::vec(any::<u8>(), 0..256),
        4 => json_value().prop_map(|v| v.to_string().into_bytes()),
        4 => (
            prop::sample::select(vec!["open", "deposit", "withdraw", "close", "teleport", ""]),
            json_value(),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(t, p, v)| {
                let mut b = serde_json::json!({"type": t, "payload": p});
                if let Some(v) = v {
                    b["expected_version"] = v.into();
                }
                b.to_string().into_bytes()
            }),
    ]
}

fn query() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "from_version",
        "min_position",
        "limit",
        "after",
        "aggregate",
        "x",
        "from_version[]",
    ]);
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        Just("18446744073709551616".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        segment(),
    ];
    prop::collection::vec((key, value), 0..3).prop_map(|kv| {
        if kv.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("?{}", parts.join("&"))
    })
}

#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    template: &'static str,
    segments: Vec<String>,
    query: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    /// 0: a token granting the decoded tenant segment (and admin), 1: no token, 2: garbage.
    auth: u8,
}

fn case() -> impl Strategy<Value = Case> {
    let routes = vec![
        ("POST", "/v1/tenants/{}/aggregates/{}/{}/commands"),
        ("GET", "/v1/tenants/{}/aggregates/{}/{}"),
        ("GET", "/v1/tenants/{}/aggregates/{}/{}/events"),
        ("GET", "/v1/tenants/{}/views/{}"),
        ("GET", "/v1/tenants/{}/views/{}/{}"),
        ("GET", "/v1/admin/views/{}/parked"),
        ("POST", "/v1/admin/views/{}/parked/retry"),
        ("POST", "/v1/admin/views/{}/parked/{}/skip"),
    ];
    let templates: Vec<&'static str> = routes
        .iter()
        .map(|(_, t)| *t)
        .chain(["/v1/tenants/{}/aggregates/{}/{}/{}", "/{}", "/v1/{}/{}"])
        .collect();
    let route = prop_oneof![
        // the route's own method, mostly: the request reaches the handler
        4 => prop::sample::select(routes),
        1 => (
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
            prop::sample::select(templates),
        ),
    ];
    // the first three segments are often valid ids, so commands get accepted sometimes
    let seg = prop_oneof![2 => "[A-Za-z0-9_-]{1,8}", 3 => segment()];
    (
        route,
        (
            seg.clone(),
            prop_oneof![1 => Just("account".to_owned()), 1 => seg.clone()],
            seg,
            segment(),
        ),
        query(),
        body(),
        prop::sample::select(vec![
            Some("application/json"),
            Some("application/json"),
            Some("application/json"),
            Some("application/json; charset=utf-8"),
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ]),
        prop::sample::select(vec![0u8, 0, 0, 0, 0, 0, 1, 2]),
    )
        .prop_map(
            |((method, template), (a, b, c, d), query, body, content_type, auth)| Case {
                method,
                template,
                segments: vec![a, b, c, d],
                query,
                body,
                content_type,
                auth,
            },
        )
}

impl Case {
    fn uri(&self) -> String {
        let mut uri = String::new();
        let mut segs = self.segments.iter();
        for (i, part) in self.template.split("{}").enumerate() {
            if i > 0 {
                uri.push_str(segs.next().map_or("", String::as_str));
            }
            uri.push_str(part);
        }
        uri.push_str(&self.query);
        uri
    }
}

fn cases() -> u32 {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn arbitrary_requests_never_get_a_5xx_and_every_4xx_is_problem_json() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = NatsServer::start();
    let (s, tap) = rt.block_on(async {
        let tap = Wiretap::start(&server.url()).await;
        (services(&server).await, tap)
    });
    let legit = std::sync::Mutex::new(BTreeSet::new());
    let stats = std::sync::Mutex::new(BTreeMap::<u16, usize>::new());
    let mut runner = TestRunner::new(RunnerConfig {
        cases: cases(),
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&case(), |c| {
        let uri = c.uri();
        let tenant = c
            .segments
            .first()
            .map(|t| percent_decode(t))
            .unwrap_or_default();
        let token = match c.auth {
            0 => Some(hand_signed(
                &serde_json::json!({"alg": "HS256"}),
                &claims(&[tenant.as_str()], true, 600),
                SECRET.as_bytes(),
            )),
            1 => None,
            _ => Some("eyJhbGciOiJIUzI1NiJ9.e30.AAAA".to_owned()),
        };
        let Some(a) = rt.block_on(send(
            &s,
            c.method,
            &uri,
            token.as_deref(),
            c.content_type,
            c.body.clone(),
        )) else {
            return Ok(());
        };
        *stats.lock().expect("lock").entry(a.status).or_default() += 1;
        let mut ok_5xx = a.status == 503 && a.slug() == "position-not-reached";
        if a.status == 503 && c.method == "HEAD" {
            // a HEAD answer has no body to name its problem: the same request as GET does
            // (the position may have been reached meanwhile: 200 then)
            let get = rt.block_on(send(
                &s,
                "GET",
                &uri,
                token.as_deref(),
                c.content_type,
                c.body.clone(),
            ));
            ok_5xx = get.is_some_and(|g| {
                g.status == 200 || (g.status == 503 && g.slug() == "position-not-reached")
            });
        }
        if a.status >= 500 && !ok_5xx {
            return Err(TestCaseError::fail(format!(
                "{} {uri} -> {} {}",
                c.method, a.status, a.body
            )));
        }
        if (400..600).contains(&a.status) && c.method != "HEAD" && !a.is_problem() {
            return Err(TestCaseError::fail(format!(
                "{} {uri} -> {} {:?} is not problem+json: {}",
                c.method, a.status, a.content_type, a.body
            )));
        }
        if a.status == 200 && c.method == "POST" && c.template.ends_with("/commands") {
            // accepted: the address must be made of three valid ids, and is the only subject
            // this request may have written
            let ids: Vec<String> = c.segments[..3].iter().map(|v| percent_decode(v)).collect();
            let valid = ids.iter().all(|v| v.parse::<shared::TenantId>().is_ok());
            if !valid {
                return Err(TestCaseError::fail(format!("accepted a command on {uri}")));
            }
            legit
                .lock()
                .expect("lock")
                .insert(format!("tenant.{}.aggregate.{}.{}", ids[0], ids[1], ids[2]));
        }
        Ok(())
    });
    let legit = legit.into_inner().expect("lock");
    let (events, foreign) = rt.block_on(tap.foreign(&legit));
    eprintln!(
        "in-process proptest: {} cases, statuses {:?}; {} commands accepted, {events} messages on tenant.>, {} foreign",
        cases(),
        stats.lock().expect("lock"),
        legit.len(),
        foreign.len()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        foreign.is_empty(),
        "messages on foreign subjects: {foreign:?}"
    );
}
