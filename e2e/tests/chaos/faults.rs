//! The fault scenarios: (a) kill -9 the stream leader node of a 3-node cluster, (b) kill -9 one
//! aggregate and one projection instance, (c) kill -9 and restart the single nats-server; each
//! mid-load, each followed by the shared invariant check (which includes (d), consumer hygiene).

use std::time::{Duration, Instant};

use crate::harness::{Scale, Stack, Topology};
use crate::invariants;
use crate::report::{Report, ms};
use crate::workload::{Client, Load, LoadSpec, Outcome, Workload};

/// The common frame: a stack, opened accounts, load running. `fault` runs mid-load and
/// returns when the stack has recovered; then the load runs one more phase and stops.
struct Run {
    stack: Stack,
    workload: Workload,
    client: Client,
    opened: Outcome,
    scale: Scale,
}

impl Run {
    async fn start(topology: Topology, projections: usize) -> Run {
        let scale = Scale::from_env();
        let stack =
            Stack::up_with(topology, projections, Some("info")).unwrap_or_else(|e| panic!("{e}"));
        let workload = Workload::new(3, scale.cold_accounts());
        let client = Client::new(&stack, &workload.tenants);
        let mut opened = Outcome::default();
        client.open_all(&workload, &mut opened).await;
        Run {
            stack,
            workload,
            client,
            opened,
            scale,
        }
    }

    fn load(&self) -> Load {
        Load::start(
            &self.client,
            &self.workload,
            LoadSpec {
                clients: self.scale.clients(),
                read_every: 4,
                hot_percent: 50,
            },
        )
    }

    /// A fixed-duration load phase, then at least 20 more acknowledgements (bounded).
    async fn phase(&self, load: &Load, what: &str) {
        let before = load.acks();
        tokio::time::sleep(self.scale.phase()).await;
        load.wait_progress(before, 20, Duration::from_secs(30), what)
            .await;
    }

    /// Stops the load, records the load figures and runs the invariant check.
    async fn finish(self, load: Load, fault_at: Instant, mut report: Report) {
        let started = load.started;
        let mut out = load.stop().await;
        let ended = Instant::now();
        let load_acks = out.ack_times.len();
        out.merge(self.opened);
        report.set("clients", self.scale.clients());
        report.set("accounts", self.workload.accounts().count());
        report.set("load_ms", ms(ended - started));
        report.set("load_commands_acknowledged", load_acks);
        report.set(
            "first_ack_after_fault_ms",
            out.ack_times
                .iter()
                .filter(|t| **t > fault_at)
                .min()
                .map_or(-1.0, |t| ms(*t - fault_at)),
        );
        report.set_ms(
            "longest_ack_gap_from_fault_ms",
            out.longest_ack_gap(fault_at, ended),
        );
        report.set_percentiles("command", &out.command_latencies, &["p50", "p99", "max"]);
        report.set_percentiles("read_your_writes", &out.read_latencies, &["p99", "max"]);
        invariants::check(&self.stack, &self.workload, &out, &mut report).await;
    }
}

/// The server name (`n1..n3`) of the stream leader, once there is one (JetStream requests
/// time out after 500 ms, so an election in progress costs little).
async fn stream_leader(nats: &async_nats::Client, not: Option<&str>) -> String {
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(nats.clone());
    testkit::eventually(
        "a stream leader (other than the killed node)",
        Duration::from_secs(30),
        async || {
            let leader = async {
                let s = js.get_stream(shared::STREAM_NAME).await.ok()?;
                s.cached_info().cluster.clone()?.leader
            }
            .await;
            match leader {
                Some(l) if Some(l.as_str()) != not => Ok(l),
                other => Err(other),
            }
        },
    )
    .await
}

/// (a) kill -9 the node that leads `AGGREGATE_EVENTS` while commands flow, restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killing_the_stream_leader_node_loses_and_duplicates_nothing() {
    // One projection instance: two, started together on a fresh cluster, do not come up (the
    // bug that `startup::a_fresh_cluster_starts_two_projection_instances` shows). Set this to 2
    // once it is fixed.
    let run = Run::start(Topology::Cluster, 1).await;
    let mut report = Report::new("leader_kill", run.scale.factor);
    let nats = run.stack.nats().await;
    let load = run.load();
    run.phase(&load, "acknowledgements before the fault").await;

    let leader = stream_leader(&nats, None).await;
    let victim = format!("nats-{leader}");
    report.set("killed", victim.as_str());
    // watch the election from a connection to the two surviving nodes
    let k = leader
        .strip_prefix('n')
        .and_then(|k| k.parse::<usize>().ok())
        .expect("leader named n1..n3");
    let survivors: Vec<String> = (1..=3)
        .filter(|i| *i != k)
        .map(|i| run.stack.nats_urls[i - 1].clone())
        .collect();
    let watcher = async_nats::ConnectOptions::new()
        .connect(survivors)
        .await
        .expect("connect to the surviving nodes");
    let acks_before = load.acks();
    let fault_at = Instant::now();
    run.stack.kill(&victim).await;
    let new_leader = stream_leader(&watcher, Some(&leader)).await;
    report.set_ms("new_leader_after_ms", fault_at.elapsed());
    report.set("new_leader", new_leader.as_str());
    load.wait_progress(
        acks_before,
        20,
        Duration::from_secs(30),
        "acknowledgements with the old leader down",
    )
    .await;
    report.set_ms("progress_with_node_down_after_ms", fault_at.elapsed());
    let t = Instant::now();
    run.stack.start(&victim).await; // returns once the node's /healthz is 200
    report.set_ms("node_healthy_after_restart_ms", t.elapsed());
    run.phase(&load, "acknowledgements after the node came back")
        .await;
    run.finish(load, fault_at, report).await;
}

/// (b) kill -9 one aggregate and one projection instance mid-load, restart them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_killing_service_instances_loses_and_duplicates_nothing() {
    let run = Run::start(Topology::Single, 2).await;
    let mut report = Report::new("instance_kill", run.scale.factor);
    let load = run.load();
    run.phase(&load, "acknowledgements before the fault").await;

    let acks_before = load.acks();
    let fault_at = Instant::now();
    run.stack.kill("aggregate-1").await;
    run.stack.kill("projection-1").await;
    report.set("killed", "aggregate-1, projection-1");
    load.wait_progress(
        acks_before,
        20,
        Duration::from_secs(30),
        "acknowledgements with one aggregate instance",
    )
    .await;
    report.set_ms("progress_with_one_instance_after_ms", fault_at.elapsed());
    // the surviving projection instance takes the pinned consumers over: a fresh
    // read-your-writes query answers
    let takeover = run.client.clone();
    let hot = run.workload.hot[0].clone();
    testkit::eventually(
        "a read-your-writes answer from the surviving projection",
        Duration::from_secs(45),
        async || {
            let status = async {
                let path = format!(
                    "/v1/tenants/{}/aggregates/account/{}/events",
                    hot.tenant, hot.id
                );
                let events: serde_json::Value =
                    takeover.get(&path).await.ok()?.json().await.ok()?;
                let last = events["events"].as_array()?.last()?["position"].as_u64()?;
                let r = takeover
                    .get(&format!(
                        "/v1/tenants/{}/views/accounts/{}?min_position={last}",
                        hot.tenant, hot.id
                    ))
                    .await
                    .ok()?;
                Some(r.status())
            }
            .await;
            match status {
                Some(s) if s == 200 => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    report.set_ms("projection_answers_after_ms", fault_at.elapsed());
    let t = Instant::now();
    run.stack.start("aggregate-1").await;
    run.stack.start("projection-1").await;
    report.set_ms("instances_ready_after_restart_ms", t.elapsed());
    run.phase(&load, "acknowledgements after the restart").await;
    run.finish(load, fault_at, report).await;
}

async fn readyz(http: &reqwest::Client, base: &str) -> Option<u16> {
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// (c) kill -9 the only nats-server mid-load and start it again on the same port and store:
/// the services reconnect by themselves, `/readyz` goes 503 then 200, clients see 503 (never
/// 500, never a hang), nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_restarting_nats_loses_nothing_and_answers_503_meanwhile() {
    let run = Run::start(Topology::Single, 2).await;
    let mut report = Report::new("nats_restart", run.scale.factor);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http");
    let load = run.load();
    run.phase(&load, "acknowledgements before the fault").await;

    let fault_at = Instant::now();
    run.stack.kill("nats").await;
    // every instance reports not ready while NATS is gone
    let services = run.stack.services.clone();
    for (name, base) in &services {
        testkit::eventually(
            format!("{name} /readyz answering 503 with NATS down"),
            Duration::from_secs(15),
            async || match readyz(&http, base).await {
                Some(503) => Ok(()),
                other => Err(other),
            },
        )
        .await;
    }
    report.set_ms("all_readyz_503_after_ms", fault_at.elapsed());
    // a command sent while NATS is gone is answered 503 with Retry-After at once, never a 500
    // nor a hang (the load's clients may all be waiting on requests sent before the fault, so
    // whether one of theirs falls into the outage is timing; this one does by construction):
    // fresh aggregates of a workload tenant, spread over the aggregate instances by their ids
    let tenant = run.workload.tenants[0].clone();
    let auth = format!("Bearer {}", Stack::token(std::slice::from_ref(&tenant)));
    for n in 0..8 {
        let probe = http
            .post(format!(
                "{}/v1/tenants/{tenant}/aggregates/account/probe-nats-down-{n}/commands",
                run.stack.gateway
            ))
            .header("authorization", &auth)
            .json(&serde_json::json!({"type": "open", "payload": {"owner": "Probe", "currency": "EUR"}}))
            .send()
            .await
            .expect("a command while NATS is down is answered within 2 s");
        assert_eq!(probe.status(), 503, "a command while NATS is down");
        assert!(
            probe.headers().contains_key("retry-after"),
            "503 without Retry-After"
        );
    }
    let t = Instant::now();
    run.stack.start("nats").await;
    report.set_ms("nats_healthy_after_restart_ms", t.elapsed());
    for (name, base) in &services {
        testkit::eventually(
            format!("{name} /readyz answering 200 after NATS came back"),
            Duration::from_secs(30),
            async || match readyz(&http, base).await {
                Some(200) => Ok(()),
                other => Err(other),
            },
        )
        .await;
    }
    report.set_ms("all_readyz_200_after_ms", fault_at.elapsed());
    let acks = load.acks();
    load.wait_progress(
        acks,
        20,
        Duration::from_secs(30),
        "acknowledgements after NATS came back",
    )
    .await;
    report.set_ms("first_progress_after_outage_ms", fault_at.elapsed());
    run.phase(&load, "acknowledgements after the restart").await;
    run.finish(load, fault_at, report).await;
}
