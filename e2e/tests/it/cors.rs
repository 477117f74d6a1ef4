//! CORS at the gateway (`CORS_ALLOWED_ORIGINS`): real preflights through nginx, and a real
//! browser (headless Chromium) calling the API from a page of an allowed and of another origin.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::browser::Browser;

use crate::support::{Stack, Topology};

/// Serves one small HTML page on a loopback port; its origin is `http://127.0.0.1:<port>`.
async fn page_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>a web app</title><p>hello</p>")
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (origin, task)
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn cors_headers(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn lists(value: Option<&str>, wanted: &[&str]) -> bool {
    let items: Vec<String> = value
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    wanted
        .iter()
        .all(|w| items.contains(&w.to_ascii_lowercase()))
}

/// The page's `fetch` of `url` (a command when `body` is given), as the browser saw it.
const FETCH: &str = r"
const [url, token, body, done] = arguments;
const init = { method: body ? 'POST' : 'GET', headers: { 'Authorization': 'Bearer ' + token } };
if (body) { init.headers['Content-Type'] = 'application/json'; init.body = JSON.stringify(body); }
fetch(url, init)
  .then(async r => done({ ok: true, status: r.status, request_id: r.headers.get('X-Request-Id'),
                          body: await r.text() }))
  .catch(e => done({ ok: false, error: String(e) }));
";

/// The page subscribes to a live feed with `fetch` (an `EventSource` cannot send a bearer
/// token), resuming after `Last-Event-ID` 0, and answers the first event frame it reads.
const SUBSCRIBE: &str = r"
const [url, token, done] = arguments;
fetch(url, { headers: { 'Authorization': 'Bearer ' + token, 'Last-Event-ID': '0' } })
  .then(async r => {
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) { done({ ok: false, error: 'the feed ended' }); return; }
      buf += decoder.decode(value, { stream: true });
      for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
        const frame = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (frame.includes('data:')) {
          reader.cancel();
          done({ ok: true, status: r.status, type: r.headers.get('Content-Type'), frame });
          return;
        }
      }
    }
  })
  .catch(e => done({ ok: false, error: String(e) }));
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_allowed_origins_call_the_api_others_get_no_cors_headers() {
    let (allowed, _a) = page_server().await;
    let (foreign, _f) = page_server().await;
    let origins = format!("{allowed}, https://app.example.com");
    let stack = tokio::task::block_in_place(|| {
        Stack::up_with_env(
            Topology::Single,
            1,
            None,
            &[("CORS_ALLOWED_ORIGINS", origins.as_str())],
        )
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let gw = &stack.gateway;
    let http = reqwest::Client::new();
    let token = Stack::token(&["acme"]);
    let command = format!("{gw}/v1/tenants/acme/aggregates/account/cors-1/commands");

    // preflights from an allowed origin are answered by the gateway, on every routed prefix
    for path in [
        "/v1/tenants/acme/aggregates/account/cors-1/commands",
        "/v1/tenants/acme/views/accounts/cors-1",
        "/v1/admin/views/accounts/parked",
    ] {
        let resp = http
            .request(Method::OPTIONS, format!("{gw}{path}"))
            .header("Origin", &allowed)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type,last-event-id,traceparent",
            )
            .send()
            .await
            .expect("preflight");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{path}");
        assert_eq!(
            header(&resp, "access-control-allow-origin"),
            Some(allowed.as_str())
        );
        assert!(lists(
            header(&resp, "access-control-allow-methods"),
            &["GET", "POST"]
        ));
        assert!(lists(
            header(&resp, "access-control-allow-headers"),
            &[
                "Authorization",
                "Content-Type",
                "Last-Event-ID",
                "traceparent"
            ]
        ));
        assert_eq!(header(&resp, "vary"), Some("Origin"));
        assert!(header(&resp, "access-control-max-age").is_some());
    }

    // a preflight from another origin gets no CORS header (and is not allowed)
    let resp = http
        .request(Method::OPTIONS, &command)
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .expect("foreign preflight");
    assert_ne!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(cors_headers(&resp), Vec::<String>::new());

    // real requests: the allowed origin is echoed and the API's headers exposed, on the
    // services' answers and on the gateway's own
    let resp = http
        .post(&command)
        .header("Origin", &allowed)
        .bearer_auth(&token)
        .json(&json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}))
        .send()
        .await
        .expect("command");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some(allowed.as_str())
    );
    assert!(lists(
        header(&resp, "access-control-expose-headers"),
        &["Retry-After", "X-Request-Id", "Location"]
    ));
    let resp = http
        .get(format!("{gw}/no-such-route"))
        .header("Origin", "https://app.example.com")
        .send()
        .await
        .expect("gateway 404");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some("https://app.example.com")
    );
    for origin in [None, Some("http://evil.example")] {
        let mut req = http.get(format!("{gw}/v1/tenants/acme/aggregates/account/cors-1"));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let resp = req.bearer_auth(&token).send().await.expect("query");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(cors_headers(&resp), Vec::<String>::new(), "{origin:?}");
    }

    // a real browser: a page of the allowed origin sends a command and reads its answer,
    // including an exposed header; the same call from a page of another origin is blocked
    let browser = Browser::start().await;
    browser.goto(&format!("{allowed}/")).await;
    let deposit = json!({"type": "deposit", "payload": {"amount": 5}});
    let seen = browser
        .run_async(FETCH, vec![json!(command), json!(token), deposit.clone()])
        .await;
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["status"], 200, "{seen}");
    assert!(
        seen["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{seen}"
    );
    let answer: Value = serde_json::from_str(seen["body"].as_str().unwrap_or("")).expect("json");
    assert_eq!(answer["version"], 2, "{answer}");
    let state = format!("{gw}/v1/tenants/acme/aggregates/account/cors-1");
    let seen = browser
        .run_async(FETCH, vec![json!(state), json!(token), Value::Null])
        .await;
    assert_eq!(seen["status"], 200, "{seen}");

    // a live feed (Server-Sent Events) from the page of the allowed origin
    let feed = format!("{gw}/v1/tenants/acme/events?follow=true");
    let seen = browser
        .run_async(SUBSCRIBE, vec![json!(feed), json!(token)])
        .await;
    assert_eq!(seen["ok"], true, "{seen}");
    assert_eq!(seen["status"], 200, "{seen}");
    assert_eq!(seen["type"], "text/event-stream", "{seen}");
    let frame = seen["frame"].as_str().unwrap_or("");
    assert!(
        frame.contains("id:") && frame.contains("\"tenant_id\":\"acme\""),
        "{frame}"
    );

    browser.goto(&format!("{foreign}/")).await;
    let seen = browser
        .run_async(FETCH, vec![json!(command), json!(token), deposit])
        .await;
    assert_eq!(
        seen["ok"], false,
        "a page of another origin must be blocked: {seen}"
    );
    let seen = browser
        .run_async(SUBSCRIBE, vec![json!(feed), json!(token)])
        .await;
    assert_eq!(
        seen["ok"], false,
        "a feed from another origin must be blocked: {seen}"
    );
    // and the blocked preflight sent nothing: the aggregate is still at version 2
    let resp = http
        .get(&state)
        .bearer_auth(&token)
        .send()
        .await
        .expect("state");
    let body: Value = resp.json().await.expect("state json");
    assert_eq!(body["version"], 2, "{body}");
}
