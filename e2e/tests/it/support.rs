//! Starts the stack in a temporary directory on free ports and stops it on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::free_port;

pub(crate) const SECRET: &str = "e2e-secret-e2e-secret-e2e-secret";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// `target/<profile>/`, where this test's own binary lives one level down (`deps/`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_owned()
}

/// The service binaries, built by this test if they are not there yet.
pub(crate) fn binaries() -> (PathBuf, PathBuf) {
    let dir = target_profile_dir();
    let (agg, proj) = (dir.join("aggregate"), dir.join("projection"));
    if !agg.is_file() || !proj.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .current_dir(repo_root())
            .args(["build", "-p", "aggregate", "-p", "projection", "--bins"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
    }
    (agg, proj)
}

/// A running stack; `down` on drop.
pub(crate) struct Stack {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) gateway: String,
    pub(crate) nats_url: String,
    /// Direct URLs of the first aggregate and the first projection instance.
    pub(crate) aggregate: String,
    pub(crate) projection: String,
}

impl Stack {
    pub(crate) fn up() -> Stack {
        testkit::nats_server_bin(); // fail early, with install advice, when it is missing
        let (agg, proj) = binaries();
        let dir = tempfile::Builder::new()
            .prefix("e2e-stack-")
            .tempdir()
            .expect("stack dir");
        let (nats, monitor, gateway) = (free_port(), free_port(), free_port());
        let (a1, p1) = (free_port(), free_port());
        let aggs = format!("{a1} {}", free_port());
        let projs = format!("{p1} {}", free_port());
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("up")
            .env("STACK_DIR", dir.path())
            .env("NATS_PORT", nats.to_string())
            .env("NATS_MONITOR_PORT", monitor.to_string())
            .env("GATEWAY_PORT", gateway.to_string())
            .env("AGGREGATE_PORTS", &aggs)
            .env("PROJECTION_PORTS", &projs)
            .env("AGGREGATE_BIN", &agg)
            .env("PROJECTION_BIN", &proj)
            .env("AUTH_JWT_SECRET", SECRET)
            .env("STACK_TIMEOUT", "60")
            .output()
            .expect("run scripts/stack.sh up");
        let stack = Stack {
            dir,
            gateway: format!("http://127.0.0.1:{gateway}"),
            nats_url: format!("nats://127.0.0.1:{nats}"),
            aggregate: format!("http://127.0.0.1:{a1}"),
            projection: format!("http://127.0.0.1:{p1}"),
        };
        assert!(
            out.status.success(),
            "stack.sh up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub(crate) fn gateway_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs").join("gateway-access.log"))
            .unwrap_or_default()
    }

    /// Kills one process of the stack (by its pid file), as a crash would.
    pub(crate) fn kill(&self, name: &str) {
        let pid = std::fs::read_to_string(self.dir.path().join("pids").join(format!("{name}.pid")))
            .expect("pid file");
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {name}");
    }

    pub(crate) fn token(tenants: &[&str]) -> String {
        let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
        platform::auth::mint_hs256(SECRET.as_bytes(), "e2e", &tenants, 600).expect("token")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/stack.sh"))
            .arg("down")
            .env("STACK_DIR", self.dir.path())
            .output();
    }
}
