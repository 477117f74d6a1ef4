//! Support shared by the end-to-end test binaries (`tests/it`, `tests/chaos`,
//! `tests/hostile`): where the workspace and the service binaries are, and free ports.
//! The tests themselves live in `tests/`.

pub mod oidc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::time::Instant;

/// The development secret every stack under test signs and checks tokens with.
pub const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-0";

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `target/<profile>/`: where the running executable is, or its parent when that is `deps/`
/// (test executables live in `target/<profile>/deps/`, binaries such as `bench` do not).
///
/// # Panics
/// When the executable's path has no parent.
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("target/<profile>");
    if dir.file_name().is_some_and(|d| d == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

static BUILD: Once = Once::new();

/// The `aggregate` and `projection` binaries of this profile, built (once per test binary,
/// with the inventory example's, [`inventory_binaries`]) so that a test never runs a stale
/// build of the services.
///
/// # Panics
/// When the build fails.
pub fn binaries() -> (PathBuf, PathBuf) {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root()).args([
            "build",
            "-p",
            "aggregate",
            "-p",
            "projection",
            "-p",
            "inventory",
            "--bins",
        ]);
        if target_profile_dir()
            .file_name()
            .is_some_and(|p| p == "release")
        {
            cmd.arg("--release");
        }
        // `cargo run` / `cargo test` give the process they start its own package's variables
        // (CARGO_PKG_NAME=bench, CARGO_MANIFEST_DIR, ...). Build scripts that watch them (ring's
        // does) would see them changed against a build from a shell and rebuild, and the next
        // build from a shell would rebuild again: every bench run compiled for minutes.
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(is_cargo_package_variable) {
                cmd.env_remove(name);
            }
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
    });
    let dir = target_profile_dir();
    (dir.join("aggregate"), dir.join("projection"))
}

/// A variable cargo sets for the package whose process it runs, not one the user configures
/// (`CARGO_HOME`, `CARGO_TARGET_DIR`, `CARGO_BUILD_*` stay).
fn is_cargo_package_variable(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || ["CARGO_PRIMARY_PACKAGE", "OUT_DIR"].contains(&name)
}

/// The inventory example's `inventory-aggregate` and `inventory-projection` binaries of this
/// profile, built as [`binaries`] are.
///
/// # Panics
/// When the build fails.
pub fn inventory_binaries() -> (PathBuf, PathBuf) {
    binaries();
    let dir = target_profile_dir();
    (
        dir.join("inventory-aggregate"),
        dir.join("inventory-projection"),
    )
}

/// `n` different free loopback ports (`testkit::free_port` may hand a released port out
/// twice).
pub fn distinct_free_ports(n: usize) -> Vec<u16> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = testkit::free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// One nats-server, or three (`n1..n3`, processes `nats-n1..nats-n3`) with `STREAM_REPLICAS=3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One nats-server.
    Single,
    /// Three nats-servers with routes, streams and buckets replicated three times.
    Cluster,
}

/// A running stack; `scripts/stack.sh down` on drop.
pub struct Stack {
    /// The stack's directory (`STACK_DIR`: data, logs, pid files), removed on drop.
    pub dir: tempfile::TempDir,
    /// One nats-server or three.
    pub topology: Topology,
    /// The gateway's base URL, `http://127.0.0.1:<port>`.
    pub gateway: String,
    /// Client URLs of every nats-server.
    pub nats_urls: Vec<String>,
    /// `(name, http://127.0.0.1:<port>)` of every service instance.
    pub services: Vec<(String, String)>,
}

impl Stack {
    /// Two aggregate and two projection instances, the stack script's default log filter.
    pub fn up(topology: Topology) -> Stack {
        Stack::up_with(topology, 2, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Two aggregate and `projections` (1 or 2) projection instances; the error is stack.sh's
    /// output plus the ERROR lines of the services' logs.
    ///
    /// A start that loses a port race (a port picked free was taken before its process bound
    /// it: "address already in use") is tried again on fresh ports, up to three times.
    pub fn up_with(
        topology: Topology,
        projections: usize,
        rust_log: Option<&str>,
    ) -> Result<Stack, String> {
        Stack::up_with_env(topology, projections, rust_log, &[])
    }

    /// [`Stack::up_with`], with more environment for `scripts/stack.sh` and the services it
    /// starts (e.g. `CORS_ALLOWED_ORIGINS`, `AUTH_OIDC_ISSUER_URL`).
    pub fn up_with_env(
        topology: Topology,
        projections: usize,
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Stack, String> {
        Stack::up_retrying(topology, projections, rust_log, env, false)
    }

    /// Two aggregate and two projection instances, and beside them the inventory example's
    /// services behind the same gateway (`INVENTORY=1`): `inventory-aggregate-1`, `-2` and
    /// `inventory-projection-1`, `-2`.
    pub fn up_with_inventory(topology: Topology) -> Stack {
        Stack::up_retrying(topology, 2, None, &[], true).unwrap_or_else(|e| panic!("{e}"))
    }

    fn up_retrying(
        topology: Topology,
        projections: usize,
        rust_log: Option<&str>,
        env: &[(&str, &str)],
        inventory: bool,
    ) -> Result<Stack, String> {
        let mut attempt = 1;
        loop {
            match Stack::try_up(topology, projections, rust_log, env, inventory) {
                Err(e) if attempt < 3 && e.to_lowercase().contains("address already in use") => {
                    eprintln!("[e2e] stack start lost a port race (attempt {attempt}); retrying");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn try_up(
        topology: Topology,
        projections: usize,
        rust_log: Option<&str>,
        env: &[(&str, &str)],
        inventory: bool,
    ) -> Result<Stack, String> {
        testkit::nats_server_bin(); // fail early, with install advice, when it is missing
        let (agg, proj) = binaries();
        let dir = tempfile::Builder::new()
            .prefix("e2e-stack-")
            .tempdir()
            .expect("stack dir");
        // distinct ports: testkit::free_port may hand the same released port out twice
        let mut ports = distinct_free_ports(18).into_iter();
        let mut port = move || ports.next().expect("enough ports");
        let gateway = port();
        let aggs = [port(), port()];
        let projs: Vec<u16> = (0..projections).map(|_| port()).collect();
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/stack.sh"))
            .env("STACK_DIR", dir.path())
            .env("GATEWAY_PORT", gateway.to_string())
            .env("AGGREGATE_PORTS", format!("{} {}", aggs[0], aggs[1]))
            .env(
                "PROJECTION_PORTS",
                projs
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .env("AGGREGATE_BIN", &agg)
            .env("PROJECTION_BIN", &proj)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("STACK_TIMEOUT", "60");
        let mut inventory_services = Vec::new();
        if inventory {
            let (agg, proj) = inventory_binaries();
            let aggs = [port(), port()];
            let projs = [port(), port()];
            let list = |ps: &[u16; 2]| format!("{} {}", ps[0], ps[1]);
            cmd.env("INVENTORY", "1")
                .env("INVENTORY_AGGREGATE_PORTS", list(&aggs))
                .env("INVENTORY_PROJECTION_PORTS", list(&projs))
                .env("INVENTORY_AGGREGATE_BIN", &agg)
                .env("INVENTORY_PROJECTION_BIN", &proj);
            for (service, ports) in [
                ("inventory-aggregate", aggs),
                ("inventory-projection", projs),
            ] {
                for (i, p) in ports.iter().enumerate() {
                    inventory_services.push((format!("{service}-{}", i + 1), *p));
                }
            }
        }
        let nats_urls = match topology {
            Topology::Single => {
                let nats = port();
                cmd.arg("up")
                    .env("NATS_PORT", nats.to_string())
                    .env("NATS_MONITOR_PORT", port().to_string());
                vec![format!("nats://127.0.0.1:{nats}")]
            }
            Topology::Cluster => {
                let ports: Vec<u16> = (0..3).map(|_| port()).collect();
                let list = |ps: &[u16]| ps.iter().map(u16::to_string).collect::<Vec<_>>().join(" ");
                let monitors: Vec<u16> = (0..3).map(|_| port()).collect();
                let routes: Vec<u16> = (0..3).map(|_| port()).collect();
                cmd.arg("cluster-up")
                    .env("NATS_PORTS", list(&ports))
                    .env("NATS_MONITOR_PORTS", list(&monitors))
                    .env("NATS_CLUSTER_PORTS", list(&routes))
                    .env("STREAM_REPLICAS", "3");
                ports
                    .iter()
                    .map(|p| format!("nats://127.0.0.1:{p}"))
                    .collect()
            }
        };
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("run scripts/stack.sh");
        let url = |p: u16| format!("http://127.0.0.1:{p}");
        let mut services = vec![
            ("aggregate-1".to_owned(), url(aggs[0])),
            ("aggregate-2".to_owned(), url(aggs[1])),
        ];
        for (i, p) in projs.iter().enumerate() {
            services.push((format!("projection-{}", i + 1), url(*p)));
        }
        services.extend(inventory_services.into_iter().map(|(n, p)| (n, url(p))));
        let stack = Stack {
            dir,
            topology,
            gateway: url(gateway),
            nats_urls,
            services,
        };
        if out.status.success() {
            return Ok(stack);
        }
        let mut errors = String::new();
        if let Ok(dir) = std::fs::read_dir(stack.dir.path().join("logs")) {
            for entry in dir.flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                for line in text.lines().filter(|l| l.contains("\"level\":\"ERROR\"")) {
                    errors.push_str(&format!(
                        "  {}: {line}\n",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
        }
        Err(format!(
            "stack.sh up ({topology:?}, {projections} projection instances) failed:\n{}\nERROR lines of the logs:\n{errors}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    async fn script(&self, args: &[&str]) {
        let started = Instant::now();
        let out = tokio::process::Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .args(args)
            .env("STACK_DIR", self.dir.path())
            .env("STACK_TIMEOUT", "60")
            .output()
            .await
            .expect("run scripts/stack.sh");
        assert!(
            out.status.success(),
            "stack.sh {} failed after {:?}:\n{}",
            args.join(" "),
            started.elapsed(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL one process (`stack.sh kill NAME`).
    pub async fn kill(&self, name: &str) {
        self.script(&["kill", name]).await;
    }

    /// Starts it again with its original command line and waits until its check answers 200
    /// (`stack.sh start NAME`).
    pub async fn start(&self, name: &str) {
        self.script(&["start", name]).await;
    }

    /// `http://127.0.0.1:<port>` of a service instance, e.g. `aggregate-1`.
    pub fn url_of(&self, name: &str) -> &str {
        self.services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_else(|| panic!("no service {name}"))
    }

    /// `127.0.0.1:<port>` of the gateway.
    pub fn gateway_addr(&self) -> &str {
        self.gateway.trim_start_matches("http://")
    }

    /// The whole log of a process of the stack (`aggregate-1`, `nats`, ...).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// The gateway's JSON access log.
    pub fn gateway_log(&self) -> String {
        self.log("gateway-access")
    }

    /// Every service log line that reports a panic.
    pub fn panics(&self) -> Vec<String> {
        self.services
            .iter()
            .flat_map(|(name, _)| {
                self.log(name)
                    .lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("{name}: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last WARN/ERROR lines of the service logs, for failure messages.
    pub fn warnings(&self) -> String {
        let found: Vec<String> = self
            .services
            .iter()
            .flat_map(|(name, _)| {
                self.log(name)
                    .lines()
                    .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                    .map(|l| format!("{name}: {}", &l[..l.len().min(400)]))
                    .collect::<Vec<_>>()
            })
            .collect();
        let skip = found.len().saturating_sub(12);
        found[skip..].join("\n")
    }

    /// The process id of a process of the stack.
    pub fn pid(&self, name: &str) -> u32 {
        let path = self.dir.path().join("pids").join(format!("{name}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid")
    }

    /// Resident set size of a process of the stack, in KiB (`VmRSS` in /proc/<pid>/status).
    pub fn rss_kib(&self, name: &str) -> u64 {
        let pid = self.pid(name);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status ({name}): {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS for {name} (pid {pid})"))
    }

    /// A token the stack's services accept, granting `tenants` (no admin).
    pub fn token<T: AsRef<str>>(tenants: &[T]) -> String {
        let tenants: Vec<String> = tenants.iter().map(|t| t.as_ref().to_owned()).collect();
        platform::auth::mint_hs256(SECRET.as_bytes(), "e2e", &tenants, 3600).expect("token")
    }

    /// A token granting the admin routes and no tenant.
    pub fn admin_token() -> String {
        platform::auth::mint_hs256_claims(SECRET.as_bytes(), "e2e-ops", &[], true, 3600)
            .expect("admin token")
    }

    /// A client of the stack's nats-server(s), for checks behind the services' backs.
    pub async fn nats(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .name("e2e-checker")
            .retry_on_initial_connect()
            .connect(self.nats_urls.clone())
            .await
            .expect("connect to nats")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("down")
            .env("STACK_DIR", self.dir.path())
            .output();
        if std::thread::panicking() {
            // keep the logs of a failed scenario
            let kept = self.dir.path().to_owned();
            let dest = std::env::temp_dir().join(format!(
                "e2e-failed-{}",
                kept.file_name().and_then(|n| n.to_str()).unwrap_or("stack")
            ));
            let _ = std::fs::rename(self.dir.path().join("logs"), &dest);
            eprintln!("logs of the failed scenario kept in {}", dest.display());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_service_build_drops_the_running_packages_variables_and_keeps_the_users() {
        for ours in [
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_LINKS",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "OUT_DIR",
        ] {
            assert!(super::is_cargo_package_variable(ours), "{ours}");
        }
        for users in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
        ] {
            assert!(!super::is_cargo_package_variable(users), "{users}");
        }
    }
}
