//! A stalled or lagging view is loud: `GET /v1/admin/views` and the per-view metrics.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::NatsServer;

use crate::support::*;

fn view<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["views"]
        .as_array()
        .and_then(|l| l.iter().find(|v| v["view"] == name))
        .unwrap_or_else(|| panic!("no view {name} in {body}"))
}

fn gauge(text: &str, name: &str, view: &str) -> Option<f64> {
    let prefix = format!("projection_{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&format!("view=\"{view}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

/// Polls `GET /v1/admin/views` until `name` is in `state` (30 s); returns the last answer.
async fn wait_for_state(p: &Instance, name: &str, state: &str) -> Value {
    testkit::eventually(
        format!("{name} {state}"),
        Duration::from_secs(30),
        async || {
            let (status, body) = p.get("/v1/admin/views").await;
            assert_eq!(status, 200, "{body}");
            if view(&body, name)["state"] == state {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await
}

/// The log lines with every one of `needles`, waited for (the status is set just before the
/// line is written).
fn logged(logs: &testkit::logs::Logs, needles: &[&str]) -> Vec<String> {
    tokio::task::block_in_place(|| {
        testkit::wait_for("a log line", Duration::from_secs(10), || {
            let found = logs.matching(needles);
            if found.is_empty() {
                Err(format!("no line with {needles:?} in {:?}", logs.lines()))
            } else {
                Ok(found)
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_view_shows_its_cause_and_recovers_while_the_others_keep_moving() {
    // what an operator sees at the default log level
    let logs = testkit::logs::capture();
    let server = NatsServer::start();
    let p = projection_with(
        &server,
        &["--stall-after-ms", "1000"],
        projection::default_views(),
    )
    .await;
    let c = p.app.core.client.clone();
    let open = |id: &str| {
        envelope(
            "acme",
            id,
            Some(1),
            "opened",
            json!({"owner": "A", "currency": "EUR"}),
        )
    };
    let first = publish_raw(&c, "tenant.acme.aggregate.account.s1", open("s1")).await;
    p.caught_up("accounts", first, Duration::from_secs(30))
        .await;
    p.caught_up("tenant-summary", first, Duration::from_secs(30))
        .await;

    let (status, body) = p.get("/v1/admin/views").await;
    assert_eq!(status, 200, "{body}");
    for name in ["accounts", "tenant-summary"] {
        let v = view(&body, name);
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(v["position"], first, "{v}");
        assert_eq!(v["stream_last_seq"], first, "{v}");
        assert_eq!(v["lag_events"], 0, "{v}");
        assert_eq!(v["lag_seconds"], 0.0, "{v}");
        assert_eq!(v["parked"], 0, "{v}");
        assert_eq!(v["generation"], 0, "{v}");
        assert_eq!(v["active_instance"], "test", "{v}");
        assert!(v["cause"].is_null(), "{v}");
    }
    assert_eq!(view(&body, "tenant-summary")["version"], 2);

    // the accounts bucket takes nothing new: its commits fail, it stalls; tenant-summary moves
    let bucket = p.view("accounts").docs.name.clone();
    // no write at all: no new key fits in one byte, no existing key may be replaced
    reconfigure_bucket(&c, &bucket, |c| {
        c.max_bytes = 1;
        c.discard_new_per_subject = true;
    })
    .await;
    let stuck = publish_raw(&c, "tenant.acme.aggregate.account.s2", open("s2")).await;
    p.caught_up("tenant-summary", stuck, Duration::from_secs(30))
        .await;
    let last = wait_for_state(&p, "accounts", "stalled").await;
    let v = view(&last, "accounts");
    let cause = v["cause"].as_str().expect("cause");
    assert!(
        cause.contains("committing"),
        "the storage error is the cause: {cause}"
    );
    assert_eq!(v["lag_events"], 1, "{v}");
    assert!(v["lag_seconds"].as_f64().is_some_and(|s| s > 0.0), "{v}");
    assert!(v["stalled_since"].is_string(), "{v}");
    assert_eq!(view(&last, "tenant-summary")["state"], "running", "{last}");
    let metrics = p.app.core.metrics.render();
    assert_eq!(
        gauge(&metrics, "view_stalled", "accounts"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(gauge(&metrics, "view_stalled", "tenant-summary"), Some(0.0));
    assert_eq!(gauge(&metrics, "view_lag_events", "accounts"), Some(1.0));
    let warned = logged(
        &logs,
        &[
            "WARN",
            "view stalled",
            "view=accounts",
            "cause=",
            "committing",
        ],
    );
    assert!(
        logs.matching(&["view stalled", "view=tenant-summary"])
            .is_empty(),
        "{warned:?}"
    );

    // storage back: the batch redelivers, the view moves again
    reconfigure_bucket(&c, &bucket, |c| {
        c.max_bytes = -1;
        c.discard_new_per_subject = false;
    })
    .await;
    p.caught_up("accounts", stuck, Duration::from_secs(60))
        .await;
    let last = wait_for_state(&p, "accounts", "running").await;
    assert!(view(&last, "accounts")["cause"].is_null(), "{last}");
    logged(&logs, &["INFO", "view moving again", "view=accounts"]);
    let metrics = p.app.core.metrics.render();
    assert_eq!(
        gauge(&metrics, "view_stalled", "accounts"),
        Some(0.0),
        "{metrics}"
    );
    p.stop().await;
}
