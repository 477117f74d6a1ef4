//! A real browser for tests: headless Chromium driven over WebDriver (W3C, through
//! `chromedriver`), with a few calls of the protocol spoken directly over HTTP.
//!
//! [`Browser::start`] starts `chromedriver` on a free loopback port (its own process group, so
//! the Chromium it starts dies with it on drop) and opens a session with a fresh profile. A test
//! that cannot find `chromedriver` or Chromium fails with the install command; it never skips.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const HOW_TO_INSTALL: &str = "install a browser with `apt-get install -y chromium chromium-driver` \
     (or point CHROMEDRIVER_BIN and CHROMIUM_BIN at the binaries)";

/// A headless Chromium session, closed and killed on drop.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    _profile: tempfile::TempDir,
}

fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    ///
    /// # Panics
    /// When chromedriver or Chromium is missing (with the install command) or does not start.
    pub async fn start() -> Self {
        let driver_bin = find("CHROMEDRIVER_BIN", &["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found: {HOW_TO_INSTALL}"));
        let chromium = find(
            "CHROMIUM_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        )
        .unwrap_or_else(|| panic!("Chromium not found: {HOW_TO_INSTALL}"));
        let port = crate::free_port();
        let mut cmd = Command::new(&driver_bin);
        cmd.arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let driver = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run {}: {e}; {HOW_TO_INSTALL}", driver_bin.display())
        });
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {base} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("browser profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut browser = Self {
            driver,
            http,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", &format!("{base}/session"), caps).await;
        browser.session = format!(
            "{base}/session/{}",
            created["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no session id from chromedriver: {created}"))
        );
        browser
    }

    async fn call(&self, method: &str, url: &str, body: Value) -> Value {
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {url}: {status} {answer}"
        );
        answer["value"].clone()
    }

    /// Navigates to `url` and waits until the page has loaded.
    pub async fn goto(&self, url: &str) {
        self.call(
            "POST",
            &format!("{}/url", self.session),
            json!({"url": url}),
        )
        .await;
    }

    /// Runs `script` in the page (a function body: `arguments` are `args`, `return` gives the
    /// result; WebDriver "execute script").
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            &format!("{}/execute/sync", self.session),
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Runs `script` (as [`Browser::run`]) every 100 ms until it returns something other than
    /// `null`, `false`, `""` or `0`, and returns that. Fails after `timeout` with `what`, the
    /// last value seen and the page's visible text.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.run(script, vec![]).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if Instant::now() >= deadline {
                let text = self
                    .run(
                        "return document.body ? document.body.innerText : ''",
                        vec![],
                    )
                    .await;
                panic!(
                    "waited {timeout:?} for {what}; last value {value}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The WebDriver id of the first element matching the CSS `selector` (fails when none).
    async fn element(&self, selector: &str) -> String {
        let found = self
            .call(
                "POST",
                &format!("{}/element", self.session),
                json!({"using": "css selector", "value": selector}),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element id for {selector}: {found}"))
            .to_owned()
    }

    /// Clicks the element matching `selector` as a user would (scrolled into view; fails when
    /// it is hidden or covered).
    pub async fn click(&self, selector: &str) {
        let id = self.element(selector).await;
        self.call(
            "POST",
            &format!("{}/element/{id}/click", self.session),
            json!({}),
        )
        .await;
    }

    /// Replaces the text of the input or textarea matching `selector` by typing `text`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let id = self.element(selector).await;
        self.call(
            "POST",
            &format!("{}/element/{id}/clear", self.session),
            json!({}),
        )
        .await;
        self.call(
            "POST",
            &format!("{}/element/{id}/value", self.session),
            json!({"text": text}),
        )
        .await;
    }

    /// Sends keys to the element matching `selector` (WebDriver key codes such as `\u{E007}`
    /// for Enter), as a keyboard user would.
    pub async fn keys(&self, selector: &str, keys: &str) {
        let id = self.element(selector).await;
        self.call(
            "POST",
            &format!("{}/element/{id}/value", self.session),
            json!({"text": keys}),
        )
        .await;
    }

    /// Resizes the window (outer size, CSS pixels).
    pub async fn set_window_size(&self, width: u32, height: u32) {
        self.call(
            "POST",
            &format!("{}/window/rect", self.session),
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self
            .call("GET", &format!("{}/screenshot", self.session), json!({}))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64")
    }

    /// Runs `script` in the page; its last argument is the callback to call with the result
    /// (WebDriver "execute async script"), which this returns. `args` come first.
    pub async fn run_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            "POST",
            &format!("{}/timeouts", self.session),
            json!({"script": 30_000}),
        )
        .await;
        self.call(
            "POST",
            &format!("{}/execute/async", self.session),
            json!({"script": script, "args": args}),
        )
        .await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // the whole process group: chromedriver and every Chromium process it started
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}
