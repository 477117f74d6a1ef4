//! The devshell's local JetStream (`scripts/devshell-nats.sh`, run by `nix develop`'s shell
//! hook): started by the first shell, kept while any registered shell lives, stopped with the
//! last one, never an orphan, never holding the caller's output open.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::{NatsServer, free_port, nats_server_bin, wait_for};

const WITHIN: Duration = Duration::from_secs(30);

/// A stand-in for an interactive shell: a process that lives until killed.
fn fake_shell() -> Child {
    Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep")
}

struct Devshell {
    state: tempfile::TempDir,
    port: u16,
    monitor: u16,
}

impl Devshell {
    fn new() -> Self {
        Self {
            state: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            monitor: free_port(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.state.path().join("devshell")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(e2e::repo_root().join("scripts/devshell-nats.sh"));
        cmd.args(args)
            .env("NATS_ES_STATE", self.state.path())
            .env("NATS_URL", format!("nats://127.0.0.1:{}", self.port))
            .env("NATS_ES_MONITOR_PORT", self.monitor.to_string())
            .env("NATS_SERVER_BIN", nats_server_bin())
            .env("NATS_ES_POLL_SECS", "0.2")
            .env_remove("NATS_ES_DEVSHELL_NATS");
        cmd
    }

    /// Runs `enter PID` with its output on pipes and reads them to the end: a background
    /// process that kept them open would make this wait (as it would a CI runner).
    fn enter(&self, shell: &Child, extra_env: &[(&str, &str)]) -> String {
        let mut cmd = self.command(&["enter", &shell.id().to_string()]);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run devshell-nats.sh enter");
        let (mut out, mut err) = (String::new(), String::new());
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        if let Some(o) = stdout.as_mut() {
            o.read_to_string(&mut out).expect("read stdout");
        }
        err.push_str(&reader.join().expect("stderr reader"));
        let status = child.wait().expect("wait enter");
        assert!(status.success(), "enter failed: {status}\n{err}");
        err
    }

    fn pid_file(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir().join(name))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn answers(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

impl Drop for Devshell {
    fn drop(&mut self) {
        let _ = self.command(&["stop"]).output();
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
}

fn kill(shell: &mut Child) {
    shell.kill().expect("kill fake shell");
    shell.wait().expect("reap fake shell");
}

#[test]
fn the_first_shell_starts_nats_and_the_last_one_to_leave_stops_it() {
    let d = Devshell::new();
    let mut first = fake_shell();
    let mut second = fake_shell();

    let said = d.enter(&first, &[]);
    assert!(said.contains("starting"), "{said}");
    // the server may answer before its supervisor has recorded its pid: wait for both
    let (server, supervisor) = wait_for("the devshell's nats-server answers", WITHIN, || {
        match (
            d.answers(),
            d.pid_file("nats.pid"),
            d.pid_file("supervisor.pid"),
        ) {
            (true, Some(server), Some(supervisor)) => Ok((server, supervisor)),
            seen => Err(seen),
        }
    });

    // a second shell joins the running server
    d.enter(&second, &[]);
    assert_eq!(
        d.pid_file("supervisor.pid"),
        Some(supervisor),
        "one supervisor"
    );
    assert_eq!(d.pid_file("nats.pid"), Some(server), "one server");

    // the first shell leaves: the supervisor notices (drops its registration), the server stays
    let first_file = d.dir().join("shells").join(first.id().to_string());
    kill(&mut first);
    wait_for("the supervisor drops the dead shell", WITHIN, || {
        (!first_file.exists())
            .then_some(())
            .ok_or("still registered")
    });
    assert!(
        alive(server) && d.answers(),
        "the server must outlive the first shell"
    );

    // the last shell leaves: the server and the supervisor are gone
    kill(&mut second);
    wait_for("the server stops with the last shell", WITHIN, || {
        (!alive(server) && !alive(supervisor) && !d.answers())
            .then_some(())
            .ok_or((alive(server), alive(supervisor)))
    });
}

#[test]
fn a_killed_supervisor_leaves_no_orphan_server() {
    let d = Devshell::new();
    let mut shell = fake_shell();
    d.enter(&shell, &[]);
    // the server may answer before its supervisor has recorded its pid: wait for both
    let (server, supervisor) = wait_for("the devshell's nats-server answers", WITHIN, || {
        match (
            d.answers(),
            d.pid_file("nats.pid"),
            d.pid_file("supervisor.pid"),
        ) {
            (true, Some(server), Some(supervisor)) => Ok((server, supervisor)),
            seen => Err(seen),
        }
    });
    let status = Command::new("kill")
        .args(["-KILL", &supervisor.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_for("the server dies with its supervisor", WITHIN, || {
        (!alive(server)).then_some(()).ok_or("server alive")
    });
    kill(&mut shell);
}

#[test]
fn nothing_is_started_when_opted_out_pointed_elsewhere_or_already_served() {
    let mut shell = fake_shell();

    let opted_out = Devshell::new();
    opted_out.enter(&shell, &[("NATS_ES_DEVSHELL_NATS", "0")]);
    assert_eq!(opted_out.pid_file("supervisor.pid"), None);

    let elsewhere = Devshell::new();
    let said = elsewhere.enter(&shell, &[("NATS_URL", "nats://nats.example.com:4222")]);
    assert!(said.contains("nats.example.com"), "{said}");
    assert_eq!(elsewhere.pid_file("supervisor.pid"), None);

    let running = NatsServer::start();
    let mut served = Devshell::new();
    served.port = running.port();
    let said = served.enter(&shell, &[]);
    assert!(said.contains("already answers"), "{said}");
    assert_eq!(served.pid_file("supervisor.pid"), None);

    kill(&mut shell);
}
