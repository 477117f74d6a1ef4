//! The operator console (`gateway/console`, served by the gateway at `/console/`) in a real
//! headless Chromium against a real stack: sign in (from the URL fragment and by pasting),
//! views, a command sent from the form built from the OpenAPI document and its event appearing
//! live in the aggregate's history, paging, a poison message parked and then retried and
//! skipped, a rebuild watched to its end, the health page, problems shown on failures, phone
//! width, and screenshots of every page (copied to `$CONSOLE_SCREENSHOTS` when set: `just
//! console-screenshots` writes docs/console/).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::browser::Browser;

use crate::support::{SECRET, Stack, Topology};

const WAIT: Duration = Duration::from_secs(30);
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";

/// A CSS selector or text as a JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string literal")
}

/// The visible text of the first element matching `selector`, or null.
fn text_of(selector: &str) -> String {
    format!(
        "const e = document.querySelector({}); return e ? e.innerText : null;",
        js(selector)
    )
}

/// The text of `selector` once it contains `wanted`.
fn text_containing(selector: &str, wanted: &str) -> String {
    format!(
        "const e = document.querySelector({}); return e && e.innerText.includes({}) ? e.innerText : null;",
        js(selector),
        js(wanted)
    )
}

fn console_token(tenants: &[&str], admin: bool) -> String {
    let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
    platform::auth::mint_hs256_claims(SECRET.as_bytes(), "e2e-console", &tenants, admin, 3600)
        .expect("token")
}

struct Shots {
    dir: tempfile::TempDir,
    names: Vec<String>,
}

impl Shots {
    async fn take(&mut self, browser: &Browser, name: &str) {
        let png = browser.screenshot().await;
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 1000,
            "screenshot {name} is not a PNG"
        );
        std::fs::write(self.dir.path().join(format!("{name}.png")), png).expect("write png");
        self.names.push(name.to_owned());
    }

    /// Copies the screenshots to `$CONSOLE_SCREENSHOTS` when it is set.
    fn publish(&self) {
        let Some(dest) = std::env::var_os("CONSOLE_SCREENSHOTS") else {
            return;
        };
        let dest = PathBuf::from(dest);
        std::fs::create_dir_all(&dest).expect("screenshot dir");
        for name in &self.names {
            let file = format!("{name}.png");
            std::fs::copy(self.dir.path().join(&file), dest.join(&file)).expect("copy png");
        }
        eprintln!(
            "[console] {} screenshots in {}",
            self.names.len(),
            dest.display()
        );
    }
}

/// Waits until `selector`'s text contains `wanted` and returns that text.
async fn wait_text(browser: &Browser, what: &str, selector: &str, wanted: &str) -> String {
    let text = browser
        .wait_for(what, &text_containing(selector, wanted), WAIT)
        .await;
    text.as_str().unwrap_or_default().to_owned()
}

/// Waits until `selector` shows some text and returns it.
async fn wait_shown(browser: &Browser, what: &str, selector: &str) -> String {
    wait_text(browser, what, selector, "").await
}

/// Waits for the problem box in `scope` and checks it shows each of `wanted` (title, status,
/// a word of the detail).
async fn assert_problem(browser: &Browser, scope: &str, wanted: &[&str]) {
    let shown = browser
        .wait_for(
            &format!("a problem in {scope}"),
            &text_of(&format!("{scope} .problem")),
            WAIT,
        )
        .await;
    let shown = shown.as_str().unwrap_or_default();
    assert!(
        wanted.iter().all(|w| shown.contains(w)),
        "{scope} shows {shown:?}, wanted {wanted:?}"
    );
}

/// Waits until the confirmation dialog is open.
async fn dialog_open(browser: &Browser) {
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('confirm').open;",
            WAIT,
        )
        .await;
}

/// Waits until the parked list has reloaded after an action (it is `aria-busy` meanwhile).
async fn parked_list_settled(browser: &Browser) {
    browser
        .wait_for(
            "the parked list reloaded",
            "return document.getElementById('parked-list').getAttribute('aria-busy') !== 'true';",
            WAIT,
        )
        .await;
}

/// Answers the confirmation dialog with Confirm.
async fn confirm(browser: &Browser) {
    dialog_open(browser).await;
    browser.click("#confirm-ok").await;
}

async fn sign_in(browser: &Browser, token: &str) {
    browser.type_into("#token-input", token).await;
    browser.click("#sign-in-button").await;
}

/// Navigates with the keyboard: focuses the nav link to `page` and presses Enter on it.
async fn open_page(browser: &Browser, page: &str) {
    browser
        .keys(&format!("#nav a[href='#/{page}']"), ENTER)
        .await;
    browser
        .wait_for(
            &format!("the {page} page"),
            &format!(
                "return location.hash.startsWith({});",
                js(&format!("#/{page}"))
            ),
            WAIT,
        )
        .await;
}

/// The page fits the window: nothing scrolls sideways except inside `.scroll` boxes.
async fn assert_fits(browser: &Browser, page: &str) {
    let sizes = browser
        .run(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await;
    let (scroll, inner) = (sizes[0].as_u64(), sizes[1].as_u64());
    assert!(
        scroll.is_some() && scroll <= inner,
        "{page} is wider than the window: {sizes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_the_operator_tasks_in_a_real_browser() {
    let stack = tokio::task::block_in_place(|| Stack::up(Topology::Single));
    let gw = stack.gateway.clone();
    let http = reqwest::Client::new();
    let admin = console_token(&["acme"], true);
    let acme = Stack::token(&["acme"]);

    // the gateway serves the static console with a strict CSP, and each instance's health
    let resp = http
        .get(format!("{gw}/console/"))
        .send()
        .await
        .expect("console");
    assert_eq!(resp.status(), StatusCode::OK);
    let header = |r: &reqwest::Response, h: &str| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert!(header(&resp, "content-type").starts_with("text/html"));
    assert!(header(&resp, "content-security-policy").contains("default-src 'self'"));
    let resp = http
        .get(format!("{gw}/console/js/main.js"))
        .send()
        .await
        .expect("module");
    assert!(header(&resp, "content-type").starts_with("text/javascript"));
    let instances: Value = http
        .get(format!("{gw}/instances"))
        .send()
        .await
        .expect("instances")
        .json()
        .await
        .expect("instances json");
    let names: Vec<&str> = instances["instances"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["aggregate-1", "aggregate-2", "projection-1", "projection-2"]
    );
    for (token, status) in [(None, 401), (Some(&acme), 403), (Some(&admin), 200)] {
        let mut req = http.get(format!("{gw}/instances/aggregate-1/health"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("health");
        assert_eq!(resp.status().as_u16(), status);
        let body: Value = resp.json().await.expect("health json");
        if status == 200 {
            assert_eq!(body["instance"], "aggregate-1", "{body}");
            assert_eq!(body["nats"]["state"], "connected", "{body}");
            assert_eq!(body["stream"]["name"], "AGGREGATE_EVENTS", "{body}");
        } else {
            assert!(
                body["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:nats-es:problem:")),
                "{body}"
            );
        }
    }

    let browser = Browser::start().await;
    let mut shots = Shots {
        dir: tempfile::tempdir().expect("screenshot dir"),
        names: Vec::new(),
    };

    // sign in from the link `just up` prints: the token leaves the address bar at once
    browser.goto(&format!("{gw}/console/#token={admin}")).await;
    wait_shown(
        &browser,
        "the views table",
        "#views-table tr[data-view='accounts'] .state",
    )
    .await;
    let hash = browser.run("return location.hash;", vec![]).await;
    assert_eq!(hash, "#/views");
    // the skip link moves the keyboard focus to the content and leaves the page where it is
    browser.keys(".skip-link", ENTER).await;
    let focus = browser
        .run("return [document.activeElement.id, location.hash];", vec![])
        .await;
    assert_eq!(focus, json!(["main", "#/views"]));
    let who = browser.run(&text_of("#who"), vec![]).await;
    assert!(
        who.as_str()
            .is_some_and(|w| w.contains("e2e-console") && w.contains("admin")),
        "{who}"
    );
    wait_shown(
        &browser,
        "both views",
        "#views-table tr[data-view='tenant-summary'] .state",
    )
    .await;

    // sign out, then sign in by pasting: a non-JWT is refused on the page
    browser.click("#sign-out").await;
    wait_shown(&browser, "the sign-in form", "#sign-in").await;
    shots.take(&browser, "sign-in").await;
    sign_in(&browser, "not a token").await;
    wait_text(&browser, "the refusal", "#sign-in-message", "not a JWT").await;
    // a token without admin: the views page shows the gateway's problem, not a blank page
    sign_in(&browser, &acme).await;
    assert_problem(&browser, "#views-status", &["Forbidden", "admin"]).await;
    browser.click("#sign-out").await;
    sign_in(&browser, &admin).await;
    wait_shown(
        &browser,
        "the views table",
        "#views-table tr[data-view='accounts'] .state",
    )
    .await;

    // send a command from the form built from the OpenAPI document
    let id = format!("con-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    open_page(&browser, "command").await;
    wait_shown(&browser, "the command form", "#command-form").await;
    browser.type_into("#cmd-path-id", &id).await;
    browser.type_into("#cmd-body-type", "open").await;
    browser
        .type_into(
            "#cmd-body-payload",
            r#"{"owner": "Ada", "currency": "EUR"}"#,
        )
        .await;
    browser.click("#cmd-body-command_id-new").await;
    browser.click("#command-send").await;
    wait_text(
        &browser,
        "the accepted command",
        "#command-accepted",
        "version 1",
    )
    .await;
    browser
        .run(
            "document.getElementById('command-answer').scrollIntoView({block: 'end'});",
            vec![],
        )
        .await;
    shots.take(&browser, "command").await;
    // a refused command shows the problem's title and detail
    browser.type_into("#cmd-body-type", "deposit").await;
    browser
        .type_into("#cmd-body-payload", r#"{"amount": "lots"}"#)
        .await;
    browser.type_into("#cmd-body-command_id", "").await;
    browser.click("#command-send").await;
    assert_problem(
        &browser,
        "#command-answer",
        &["Invalid command payload", "400"],
    )
    .await;

    // the history, newest first, follows new events live
    browser
        .type_into("#cmd-body-payload", r#"{"amount": 1}"#)
        .await;
    browser.click("#command-send").await;
    wait_text(&browser, "the deposit", "#command-accepted", "version 2").await;
    browser.click("#command-history-link").await;
    wait_shown(
        &browser,
        "the history",
        "#history-rows tr[data-version='2'] .event-type",
    )
    .await;
    wait_text(&browser, "the live feed", "#live-status", "live").await;
    let first = browser
        .run(&text_of("#history-rows tr:first-child .event-type"), vec![])
        .await;
    assert_eq!(first, "deposited", "newest first");
    let meta = browser
        .run(
            &text_of("#history-rows tr[data-version='1'] .metadata"),
            vec![],
        )
        .await;
    assert!(
        meta.as_str()
            .is_some_and(|m| m.contains("request id") && m.contains("traceparent")),
        "{meta}"
    );
    let command = format!("{gw}/v1/tenants/acme/aggregates/account/{id}/commands");
    for n in 3..=25 {
        let resp = http
            .post(&command)
            .bearer_auth(&acme)
            .json(&json!({"type": "deposit", "payload": {"amount": n}}))
            .send()
            .await
            .expect("deposit");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    wait_text(&browser, "version 25 live", "#aggregate-version", "25").await;
    browser
        .wait_for(
            "event 25 on top",
            "const r = document.querySelector('#history-rows tr:first-child'); \
             return r && r.dataset.version === '25' && document.querySelectorAll('#history-rows tr').length === 20;",
            WAIT,
        )
        .await;
    shots.take(&browser, "aggregates").await;
    browser.click("#history-older").await;
    let page = browser
        .wait_for(
            "the older page",
            "const rows = [...document.querySelectorAll('#history-rows tr')].map(r => r.dataset.version); \
             return rows[0] === '5' ? rows : null;",
            WAIT,
        )
        .await;
    assert_eq!(page, json!(["5", "4", "3", "2", "1"]));
    browser.click("#history-newer").await;
    browser
        .wait_for(
            "the newest page again",
            "const r = document.querySelector('#history-rows tr:first-child'); return r && r.dataset.version === '25';",
            WAIT,
        )
        .await;

    // a poison message is parked; the console shows it, retries (refused again, shown as a
    // problem), skips it after a confirmation (Escape cancels one), and retries what waited
    let nats = stack.nats().await;
    let js_ctx = async_nats::jetstream::new(nats);
    let poisoned = format!("pz-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let resp = http
        .post(format!(
            "{gw}/v1/tenants/acme/aggregates/account/{poisoned}/commands"
        ))
        .bearer_auth(&acme)
        .json(&json!({"type": "open", "payload": {"owner": "Bo", "currency": "EUR"}}))
        .send()
        .await
        .expect("open");
    assert_eq!(resp.status(), StatusCode::OK);
    let subject = format!("tenant.acme.aggregate.account.{poisoned}");
    let publish = |body: Vec<u8>| {
        let js_ctx = js_ctx.clone();
        let subject = subject.clone();
        async move {
            js_ctx
                .publish(subject, body.into())
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence
        }
    };
    let garbage = publish(b"\x00\xffnot json at all".to_vec()).await;
    let behind = publish(
        json!({
            "event_id": uuid::Uuid::now_v7(),
            "command_id": uuid::Uuid::new_v4(),
            "tenant_id": "acme",
            "aggregate_type": "account",
            "aggregate_id": poisoned,
            "version": 2,
            "event_type": "deposited",
            "payload": {"amount": 5},
            "occurred_at": "2026-01-01T00:00:00Z",
        })
        .to_string()
        .into_bytes(),
    )
    .await;
    let parked_url = format!("{gw}/v1/admin/views/accounts/parked");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body: Value = http
            .get(&parked_url)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("parked")
            .json()
            .await
            .expect("parked json");
        let seqs: Vec<u64> = body["parked"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["seq"].as_u64()).collect())
            .unwrap_or_default();
        if seqs.contains(&garbage) && seqs.contains(&behind) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not parked within {WAIT:?}: {body}\n{}",
            stack.warnings()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    open_page(&browser, "views").await;
    wait_text(
        &browser,
        "the parked count",
        "#views-table tr[data-view='accounts'] .parked",
        "2",
    )
    .await;
    open_page(&browser, "parked").await;
    let row = |seq: u64, what: &str| format!("#parked-table tr[data-seq='{seq}'] {what}");
    wait_text(
        &browser,
        "the parked events",
        &row(behind, ".cause"),
        &format!("parked behind seq {garbage}"),
    )
    .await;
    let cause = browser.run(&text_of(&row(garbage, ".cause")), vec![]).await;
    assert!(
        cause
            .as_str()
            .is_some_and(|c| c.contains("not an event envelope")),
        "{cause}"
    );
    browser.click(&row(garbage, "button.show")).await;
    wait_text(
        &browser,
        "the parked body",
        &format!("#parked-details-{garbage} .parked-body"),
        "not json at all",
    )
    .await;
    shots.take(&browser, "parked").await;
    browser.click(&row(garbage, "button.retry")).await;
    confirm(&browser).await;
    assert_problem(
        &browser,
        "#parked-result",
        &["Parked events failed again", "409"],
    )
    .await;
    parked_list_settled(&browser).await;
    // Escape cancels a skip
    browser.click(&row(garbage, "button.skip")).await;
    dialog_open(&browser).await;
    browser.keys("#confirm-cancel", ESCAPE).await;
    browser
        .wait_for(
            "the dialog closed",
            "return !document.getElementById('confirm').open;",
            WAIT,
        )
        .await;
    browser.click(&row(garbage, "button.skip")).await;
    confirm(&browser).await;
    browser
        .wait_for(
            "the skipped event gone",
            &format!(
                "return !document.querySelector({}) && !!document.querySelector({});",
                js(&row(garbage, ".cause")),
                js(&row(behind, ".cause"))
            ),
            WAIT,
        )
        .await;
    let skips = stack
        .gateway_log()
        .lines()
        .filter(|l| l.contains(&format!("/parked/{garbage}/skip")))
        .count();
    assert_eq!(skips, 1, "one skip sent: the cancelled one sent nothing");
    browser.click(&row(behind, "button.retry")).await;
    confirm(&browser).await;
    wait_shown(&browser, "the empty list", "#parked-empty").await;
    let result = browser.run(&text_of("#parked-result"), vec![]).await;
    assert!(
        result
            .as_str()
            .is_some_and(|r| r.contains("\"applied\": 1")),
        "{result}"
    );
    let doc: Value = http
        .get(format!(
            "{gw}/v1/tenants/acme/views/accounts/{poisoned}?min_position={behind}"
        ))
        .bearer_auth(&acme)
        .send()
        .await
        .expect("doc")
        .json()
        .await
        .expect("doc json");
    assert_eq!(doc["document"]["balance"], 5, "{doc}");

    // a rebuild, watched to its end
    open_page(&browser, "views").await;
    wait_shown(
        &browser,
        "the views table",
        "#views-table tr[data-view='accounts'] .state",
    )
    .await;
    browser
        .click("#views-table tr[data-view='accounts'] button.rebuild")
        .await;
    confirm(&browser).await;
    browser
        .wait_for(
            "the rebuild to finish",
            &text_containing(
                "#views-table tr[data-view='accounts'] .rebuild-done",
                "generation 1",
            ),
            Duration::from_secs(90),
        )
        .await;
    let bar = browser
        .run(
            "const p = document.querySelector(\"#views-table tr[data-view='accounts'] progress\"); return [p.value, p.max];",
            vec![],
        )
        .await;
    assert_eq!(bar[0], bar[1], "the bar is full: {bar}");
    wait_text(
        &browser,
        "generation 1 in the table",
        "#views-table tr[data-view='accounts'] .generation",
        "1",
    )
    .await;
    wait_text(
        &browser,
        "the rebuilt view running",
        "#views-table tr[data-view='accounts'] .state",
        "running",
    )
    .await;
    shots.take(&browser, "views").await;

    // health: every instance ready and connected, the stream's state
    open_page(&browser, "health").await;
    browser
        .wait_for(
            "every instance ready",
            "const rows = [...document.querySelectorAll('#instances-table tbody tr')]; \
             return rows.length === 4 && rows.every(r => r.querySelector('.readiness').innerText.includes('ready') \
               && r.querySelector('.nats').innerText.includes('connected'));",
            WAIT,
        )
        .await;
    let messages = wait_shown(
        &browser,
        "the stream's messages",
        "#stream-facts dd[data-fact='Messages']",
    )
    .await;
    assert!(messages.parse::<u64>().is_ok_and(|m| m >= 28), "{messages}");
    let name = browser
        .run(&text_of("#stream-facts dd[data-fact='Name']"), vec![])
        .await;
    assert_eq!(name, "AGGREGATE_EVENTS");
    shots.take(&browser, "health").await;
    // an instance down shows as the gateway's problem, the others stay ready
    stack.kill("aggregate-2").await;
    assert_problem(
        &browser,
        "#instances-table tr[data-instance='aggregate-2'] .readiness",
        &["Service unavailable", "502"],
    )
    .await;

    // phone width: every page fits, the navigation stays usable
    browser.set_window_size(390, 844).await;
    let width = browser.run("return window.innerWidth;", vec![]).await;
    assert!(
        width.as_u64().is_some_and(|w| w <= 400),
        "the window did not shrink to phone width: {width}"
    );
    for page in ["views", "parked", "aggregates", "command", "health"] {
        open_page(&browser, page).await;
        browser
            .wait_for(
                &format!("the {page} page's heading"),
                "return document.querySelector('main h1')?.innerText;",
                WAIT,
            )
            .await;
        assert_fits(&browser, page).await;
    }
    browser
        .goto(&format!(
            "{gw}/console/#/aggregates?tenant=acme&type=account&id={id}"
        ))
        .await;
    wait_shown(
        &browser,
        "the history on a phone",
        "#history-rows tr[data-version='25'] .event-type",
    )
    .await;
    assert_fits(&browser, "aggregates").await;
    shots.take(&browser, "aggregates-phone").await;

    assert_eq!(stack.panics(), Vec::<String>::new());
    shots.publish();
}
