//! The real binaries: start-up refusals, SIGTERM drain, the rebuild command.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{NatsServer, free_port};

use e2e::binaries;

fn spawn(
    bin: &std::path::Path,
    server: &NatsServer,
    port: u16,
    extra_env: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(bin);
    cmd.env("NATS_URL", server.url())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env_remove("AUTH_JWT_SECRET")
        .env_remove("AUTH_DISABLED")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn service")
}

async fn ready(port: u16, within: Duration) -> bool {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[tokio::test]
async fn both_binaries_drain_on_sigterm_and_exit_cleanly() {
    let server = NatsServer::start();
    let (agg, proj) = binaries();
    for bin in [&agg, &proj] {
        let port = free_port();
        let mut child = spawn(bin, &server, port, &[("AUTH_DISABLED", "true")]);
        assert!(
            ready(port, Duration::from_secs(20)).await,
            "{} not ready",
            bin.display()
        );
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = wait_exit(&mut child, Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{} did not exit within 15 s of SIGTERM", bin.display()));
        assert!(exit.success(), "{} exited with {exit}", bin.display());
    }
}

#[tokio::test]
async fn both_binaries_refuse_to_start_without_an_auth_decision() {
    let server = NatsServer::start();
    let (agg, proj) = binaries();
    for bin in [&agg, &proj] {
        let mut child = spawn(bin, &server, free_port(), &[]);
        let exit = wait_exit(&mut child, Duration::from_secs(15)).expect("exits by itself");
        assert!(!exit.success());
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read");
        assert!(
            err.contains("--insecure-no-auth"),
            "{}: {err}",
            bin.display()
        );
    }
}

#[tokio::test]
async fn the_rebuild_command_replays_and_switches() {
    let server = NatsServer::start();
    let (_, proj) = binaries();
    // a projection instance creates the stream and generation 0 of every view
    let port = free_port();
    let mut child = spawn(&proj, &server, port, &[("AUTH_DISABLED", "true")]);
    assert!(ready(port, Duration::from_secs(20)).await);
    let out = Command::new(&proj)
        .args(["rebuild", "--view", "accounts"])
        .env("NATS_URL", server.url())
        .env("LOG_FORMAT", "json")
        .output()
        .expect("run rebuild");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = wait_exit(&mut child, Duration::from_secs(15));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rebuild failed: {log}");
    assert!(
        log.contains("rebuild done") && log.contains("\"generation\":1"),
        "{log}"
    );
    let bad = Command::new(&proj)
        .args(["rebuild", "--view", "nope"])
        .env("NATS_URL", server.url())
        .output()
        .expect("run rebuild");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("accounts"),
        "lists the views"
    );
}

#[tokio::test]
async fn both_binaries_warn_at_start_up_when_issuer_or_audience_is_not_set() {
    let server = NatsServer::start();
    let (agg, proj) = binaries();
    let secret = ("AUTH_JWT_SECRET", "a-test-secret-a-test-secret-a-test");
    for bin in [&agg, &proj] {
        for (env, warned) in [
            (vec![secret], true),
            (
                vec![
                    secret,
                    ("AUTH_JWT_ISSUER", "https://idp.example"),
                    ("AUTH_JWT_AUDIENCE", "nats-es"),
                ],
                false,
            ),
        ] {
            let port = free_port();
            let mut child = spawn(bin, &server, port, &env);
            assert!(
                ready(port, Duration::from_secs(20)).await,
                "{} not ready",
                bin.display()
            );
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
            wait_exit(&mut child, Duration::from_secs(15)).expect("exits after SIGTERM");
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            let warnings: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("WARN"))
                .filter(|l| l.contains("AUTH_JWT_ISSUER") || l.contains("AUTH_JWT_AUDIENCE"))
                .collect();
            if warned {
                assert!(
                    warnings
                        .iter()
                        .any(|l| l.contains("AUTH_JWT_ISSUER") && l.contains("AUTH_JWT_AUDIENCE")),
                    "{}: no start-up WARN naming both settings: {err}",
                    bin.display()
                );
            } else {
                assert!(warnings.is_empty(), "{}: {warnings:?}", bin.display());
            }
        }
    }
}
