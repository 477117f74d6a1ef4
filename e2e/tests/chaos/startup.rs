//! Start-up of the documented cluster recipe (`scripts/stack.sh cluster-up`: three nodes,
//! `STREAM_REPLICAS=3`, two aggregate and two projection instances started together).

use crate::harness::{Stack, Topology};

/// Regression test of bug 1 (RELIABILITY.md, "Bugs found, and fixed"): on a fresh cluster the
/// second projection instance found the R3 bucket `PROJECTION_GENERATIONS` the first one had
/// just created, read it at once, got `503 no responders` (no replica served direct gets yet)
/// and exited. Every bucket is now probed until it answers before it is used.
#[test]
fn a_fresh_cluster_starts_two_projection_instances() {
    let stack =
        Stack::up_with(Topology::Cluster, 2, Some("info")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stack.services.len(), 4);
}

/// The console's Health page on a cluster: every instance reports the stream's RAFT group
/// (`GET /v1/admin/health` through the gateway's `/instances/<name>/health`): a leader among
/// n1..n3 and the two other nodes as replicas, three configured; the page shows them in a real
/// browser.
#[test]
fn instances_report_the_streams_leader_and_replicas_on_a_cluster() {
    let stack =
        Stack::up_with(Topology::Cluster, 1, Some("info")).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        for name in ["aggregate-1", "aggregate-2", "projection-1"] {
            let resp = http
                .get(format!("{}/instances/{name}/health", stack.gateway))
                .bearer_auth(Stack::admin_token())
                .send()
                .await
                .expect("health");
            assert_eq!(resp.status(), reqwest::StatusCode::OK, "{name}");
            let body: serde_json::Value = resp.json().await.expect("health json");
            assert_eq!(body["instance"], name, "{body}");
            assert_eq!(body["nats"]["state"], "connected", "{body}");
            let stream = &body["stream"];
            assert_eq!(stream["replicas"], 3, "{body}");
            let leader = stream["cluster"]["leader"].as_str().unwrap_or_default();
            assert!(["n1", "n2", "n3"].contains(&leader), "{body}");
            let mut peers: Vec<&str> = stream["cluster"]["replicas"]
                .as_array()
                .map(|r| r.iter().filter_map(|p| p["name"].as_str()).collect())
                .unwrap_or_default();
            peers.push(leader);
            peers.sort_unstable();
            assert_eq!(peers, ["n1", "n2", "n3"], "{body}");
        }

        let browser = testkit::browser::Browser::start().await;
        let token = platform::auth::mint_hs256_claims(
            e2e::SECRET.as_bytes(),
            "ops",
            &["acme".to_owned()],
            true,
            3600,
        )
        .expect("token");
        browser
            .goto(&format!("{}/console/#token={token}", stack.gateway))
            .await;
        browser
            .goto(&format!("{}/console/#/health", stack.gateway))
            .await;
        let shown = browser
            .wait_for(
                "the stream's leader and two replicas",
                "const leader = document.querySelector(\"#stream-facts dd[data-fact='Leader']\"); \
                 const rows = [...document.querySelectorAll('#replicas-table tbody th')].map(t => t.innerText); \
                 return leader && rows.length === 2 ? [leader.innerText, ...rows].sort() : null;",
                std::time::Duration::from_secs(30),
            )
            .await;
        assert_eq!(shown, serde_json::json!(["n1", "n2", "n3"]));
        let cluster = browser
            .run(
                "return document.querySelector(\"#stream-facts dd[data-fact='Cluster']\").innerText;",
                vec![],
            )
            .await;
        assert_eq!(cluster, "nats-es-local", "the cluster's name");
    });
}
