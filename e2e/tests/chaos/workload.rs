//! The load: clients that send deposits with fresh command ids to a mix of hot (few) and cold
//! (many) accounts through the gateway, and retry THE SAME command id on 502/503/504, on a
//! `concurrency-conflict` 409 or on a transport error, with back-off, until it is acknowledged
//! or their give-up deadline passes. Every outcome is recorded for the invariant check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::Stack;

/// How long a client keeps retrying one command before it gives up on it.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The per-request timeout: a request that takes longer counts as hung.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// One account of the workload.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) tenant: String,
    pub(crate) id: String,
    pub(crate) currency: &'static str,
}

/// Tenants and accounts.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) tenants: Vec<String>,
    pub(crate) hot: Vec<Account>,
    pub(crate) cold: Vec<Account>,
}

impl Workload {
    /// `hot` and `cold` accounts per tenant, in two tenants.
    pub(crate) fn new(hot: usize, cold: usize) -> Workload {
        let tenants = vec!["acme".to_owned(), "globex".to_owned()];
        let run = &Uuid::new_v4().simple().to_string()[..8];
        let make = |t: &String, kind: &str, n: usize| {
            (0..n)
                .map(|i| Account {
                    tenant: t.clone(),
                    id: format!("{kind}-{run}-{i}"),
                    currency: if i % 2 == 0 { "EUR" } else { "USD" },
                })
                .collect::<Vec<_>>()
        };
        Workload {
            hot: tenants.iter().flat_map(|t| make(t, "hot", hot)).collect(),
            cold: tenants.iter().flat_map(|t| make(t, "cold", cold)).collect(),
            tenants,
        }
    }

    pub(crate) fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.hot.iter().chain(self.cold.iter())
    }
}

/// An acknowledged command.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) tenant: String,
    pub(crate) account: String,
    pub(crate) position: u64,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Acknowledged command ids.
    pub(crate) acked: HashMap<Uuid, Ack>,
    /// Commands whose client gave up (never acknowledged): each may appear at most once.
    pub(crate) gave_up: HashMap<Uuid, String>,
    /// Commands answered with a final refusal (4xx other than a conflict): must not appear.
    pub(crate) refused: HashMap<Uuid, String>,
    /// Every HTTP status the commands got, attempts included.
    pub(crate) command_statuses: BTreeMap<u16, u64>,
    /// Every HTTP status the read-your-writes queries got.
    pub(crate) read_statuses: BTreeMap<u16, u64>,
    /// Requests that hit the client timeout (hung).
    pub(crate) timeouts: u64,
    /// Connection errors (no HTTP answer at all).
    pub(crate) transport_errors: u64,
    /// Re-sends of a command id.
    pub(crate) retries: u64,
    /// Read-your-writes queries that never saw the position in time.
    pub(crate) stale_reads: u64,
    /// Latency to acknowledgement per command (retries included).
    pub(crate) command_latencies: Vec<Duration>,
    /// Latency of read-your-writes queries (`?min_position=` the command's position).
    pub(crate) read_latencies: Vec<Duration>,
    /// When each acknowledgement arrived.
    pub(crate) ack_times: Vec<Instant>,
}

impl Outcome {
    pub(crate) fn merge(&mut self, o: Outcome) {
        self.acked.extend(o.acked);
        self.gave_up.extend(o.gave_up);
        self.refused.extend(o.refused);
        for (k, v) in o.command_statuses {
            *self.command_statuses.entry(k).or_default() += v;
        }
        for (k, v) in o.read_statuses {
            *self.read_statuses.entry(k).or_default() += v;
        }
        self.timeouts += o.timeouts;
        self.transport_errors += o.transport_errors;
        self.retries += o.retries;
        self.stale_reads += o.stale_reads;
        self.command_latencies.extend(o.command_latencies);
        self.read_latencies.extend(o.read_latencies);
        self.ack_times.extend(o.ack_times);
    }

    /// Responses with status 500 (commands and reads).
    pub(crate) fn status_500(&self) -> u64 {
        self.command_statuses.get(&500).copied().unwrap_or(0)
            + self.read_statuses.get(&500).copied().unwrap_or(0)
    }

    /// Responses with any 5xx status (commands and reads).
    pub(crate) fn status_5xx(&self) -> u64 {
        self.command_statuses
            .iter()
            .chain(self.read_statuses.iter())
            .filter(|(s, _)| (500..600).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The longest time without any acknowledgement between `from` and `to`.
    pub(crate) fn longest_ack_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut times: Vec<Instant> = self
            .ack_times
            .iter()
            .copied()
            .filter(|t| *t >= from && *t <= to)
            .collect();
        times.sort();
        let mut prev = from;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().chain(std::iter::once(to)) {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap
    }
}

/// An HTTP client for the gateway.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    gateway: String,
    auth: String,
}

enum Sent {
    Acked(u64),
    Refused(String),
    GaveUp(String),
}

impl Client {
    pub(crate) fn new(stack: &Stack, tenants: &[String]) -> Client {
        Client {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            gateway: stack.gateway.clone(),
            auth: format!("Bearer {}", Stack::token(tenants)),
        }
    }

    pub(crate) async fn get(&self, path: &str) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.gateway))
            .header("authorization", &self.auth)
            .send()
            .await
    }

    pub(crate) async fn get_as(
        &self,
        path: &str,
        token: &str,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .get(format!("{}{path}", self.gateway))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
    }

    /// Sends one command (retrying the same id) and records what happened in `out`.
    async fn command(&self, a: &Account, body: Value, out: &mut Outcome) -> Sent {
        let url = format!(
            "{}/v1/tenants/{}/aggregates/account/{}/commands",
            self.gateway, a.tenant, a.id
        );
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut backoff = Duration::from_millis(25);
        let mut last;
        loop {
            let res = self
                .http
                .post(&url)
                .header("authorization", &self.auth)
                .json(&body)
                .send()
                .await;
            match res {
                Ok(resp) => {
                    let status = resp.status();
                    *out.command_statuses.entry(status.as_u16()).or_default() += 1;
                    let text = resp.text().await.unwrap_or_default();
                    match status {
                        StatusCode::OK => {
                            let v: Value = serde_json::from_str(&text)
                                .unwrap_or_else(|e| panic!("command answer {text:?}: {e}"));
                            let position = v["position"]
                                .as_u64()
                                .unwrap_or_else(|| panic!("no position in {v}"));
                            return Sent::Acked(position);
                        }
                        StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                        | StatusCode::INTERNAL_SERVER_ERROR => {}
                        StatusCode::CONFLICT if text.contains("concurrency-conflict") => {}
                        _ => return Sent::Refused(format!("{status}: {text}")),
                    }
                    last = format!("{status}: {text}");
                }
                Err(e) if e.is_timeout() => {
                    out.timeouts += 1;
                    last = format!("timeout: {e}");
                }
                Err(e) => {
                    out.transport_errors += 1;
                    last = format!("transport: {e}");
                }
            }
            if Instant::now() + backoff > deadline {
                return Sent::GaveUp(last);
            }
            out.retries += 1;
            // back-off between retries of one command (not a synchronisation)
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Opens every account of the workload (16 at a time); panics if one is not acknowledged.
    pub(crate) async fn open_all(&self, w: &Workload, out: &mut Outcome) {
        use futures::StreamExt as _;
        let results: Vec<(Uuid, Account, Outcome, Sent)> =
            futures::stream::iter(w.accounts().cloned())
                .map(|a| async move {
                    let id = Uuid::new_v4();
                    let body = json!({"command_id": id, "type": "open",
                        "payload": {"owner": format!("owner of {}", a.id), "currency": a.currency}});
                    let mut o = Outcome::default();
                    let sent = self.command(&a, body, &mut o).await;
                    (id, a, o, sent)
                })
                .buffer_unordered(16)
                .collect()
                .await;
        for (id, a, o, sent) in results {
            out.merge(o);
            match sent {
                Sent::Acked(position) => {
                    out.acked.insert(
                        id,
                        Ack {
                            tenant: a.tenant,
                            account: a.id,
                            position,
                        },
                    );
                }
                Sent::Refused(why) | Sent::GaveUp(why) => {
                    panic!("opening {}/{} failed: {why}", a.tenant, a.id)
                }
            }
        }
    }
}

/// Clients running in the background until [`Load::stop`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Outcome>>,
    pub(crate) started: Instant,
}

/// What each client does besides commands.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadSpec {
    pub(crate) clients: usize,
    /// Every n-th acknowledged command of a client is followed by a read-your-writes query
    /// (`GET views/accounts/{id}?min_position=<position>`); 0 = never.
    pub(crate) read_every: u64,
    /// Share of commands that go to a hot account, in percent.
    pub(crate) hot_percent: u64,
}

impl Load {
    pub(crate) fn start(client: &Client, w: &Workload, spec: LoadSpec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let tasks = (0..spec.clients)
            .map(|n| {
                let (client, w, stop, acks) =
                    (client.clone(), w.clone(), stop.clone(), acks.clone());
                tokio::spawn(async move { run_client(n as u64, client, w, spec, stop, acks).await })
            })
            .collect();
        Load {
            stop,
            acks,
            tasks,
            started: Instant::now(),
        }
    }

    /// Acknowledged commands so far.
    pub(crate) fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until at least `n` more commands are acknowledged than `from`.
    pub(crate) async fn wait_progress(&self, from: u64, n: u64, within: Duration, what: &str) {
        testkit::eventually(what, within, async || match self.acks() {
            acks if acks >= from + n => Ok(()),
            acks => Err(format!(
                "{acks} acknowledged, {} more wanted",
                from + n - acks
            )),
        })
        .await;
    }

    /// Stops the clients (each finishes, or gives up on, the command it is sending) and
    /// collects what they saw.
    pub(crate) async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Outcome::default();
        for t in self.tasks {
            let o = tokio::time::timeout(GIVE_UP_AFTER + REQUEST_TIMEOUT * 2, t)
                .await
                .expect("a client did not stop")
                .expect("client task");
            out.merge(o);
        }
        out
    }
}

/// xorshift64*: a tiny deterministic generator per client, good enough to pick accounts.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

async fn run_client(
    n: u64,
    client: Client,
    w: Workload,
    spec: LoadSpec,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
) -> Outcome {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (n + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut out = Outcome::default();
    let mut acked_here = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let a = if rng.next() % 100 < spec.hot_percent || w.cold.is_empty() {
            &w.hot[rng.below(w.hot.len())]
        } else {
            &w.cold[rng.below(w.cold.len())]
        };
        let id = Uuid::new_v4();
        let amount = 1 + rng.next() % 100;
        let body = json!({"command_id": id, "type": "deposit", "payload": {"amount": amount}});
        let started = Instant::now();
        match client.command(a, body, &mut out).await {
            Sent::Acked(position) => {
                let now = Instant::now();
                out.command_latencies.push(now - started);
                out.ack_times.push(now);
                acks.fetch_add(1, Ordering::Relaxed);
                out.acked.insert(
                    id,
                    Ack {
                        tenant: a.tenant.clone(),
                        account: a.id.clone(),
                        position,
                    },
                );
                acked_here += 1;
                if spec.read_every > 0 && acked_here.is_multiple_of(spec.read_every) {
                    read_your_write(&client, a, position, &mut out).await;
                }
            }
            Sent::Refused(why) => {
                out.refused.insert(id, why);
            }
            Sent::GaveUp(why) => {
                out.gave_up.insert(id, why);
            }
        }
    }
    out
}

/// `GET views/accounts/{id}?min_position=<position>` until 200 (retrying 502/503/504, bounded);
/// the document must reflect at least that position.
async fn read_your_write(client: &Client, a: &Account, position: u64, out: &mut Outcome) {
    let path = format!(
        "/v1/tenants/{}/views/accounts/{}?min_position={position}",
        a.tenant, a.id
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        match client.get(&path).await {
            Ok(resp) => {
                let status = resp.status();
                *out.read_statuses.entry(status.as_u16()).or_default() += 1;
                if status == StatusCode::OK {
                    let v: Value = resp.json().await.expect("view json");
                    let seen = v["position"].as_u64().unwrap_or(0);
                    assert!(
                        seen >= position,
                        "read-your-writes: {v} does not reflect position {position}"
                    );
                    out.read_latencies.push(started.elapsed());
                    return;
                }
                assert!(
                    matches!(status.as_u16(), 500 | 502..=504),
                    "read-your-writes {path}: unexpected {status}"
                );
            }
            Err(e) if e.is_timeout() => out.timeouts += 1,
            Err(_) => out.transport_errors += 1,
        }
        if Instant::now() >= deadline {
            out.stale_reads += 1;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
