//! Test support: the stack (as in `tests/it`), a raw HTTP/1.1 client that sends the request
//! target byte for byte, a NATS wiretap on `>`, hostile values, tokens and problem checks.

use std::collections::BTreeSet;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub(crate) use e2e::{SECRET, Stack, Topology};

// ---------------------------------------------------------------------------------------------
// tokens

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A valid HS256 token for `tenants`.
pub(crate) fn token(tenants: &[&str]) -> String {
    let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
    platform::auth::mint_hs256(SECRET.as_bytes(), "hostile", &tenants, 600).expect("token")
}

/// A valid HS256 admin token (no tenants).
pub(crate) fn admin_token() -> String {
    platform::auth::mint_hs256_claims(SECRET.as_bytes(), "ops", &[], true, 600).expect("token")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and these claims, HMAC-SHA256-signed with `secret` whatever
/// the header says (so `{"alg":"RS256"}` with an HS256 signature is possible).
pub(crate) fn hand_signed(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        jsonwebtoken::Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{sig}")
}

/// An unsigned token: `{"alg":"none"}`, the claims, an empty signature.
pub(crate) fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

/// Claims for tenant `acme`, expiring in `ttl` seconds (negative: already expired).
pub(crate) fn claims(tenants: &[&str], admin: bool, ttl: i64) -> Value {
    let exp = now().saturating_add_signed(ttl);
    serde_json::json!({
        "iss": platform::auth::DEV_ISSUER, "aud": platform::auth::DEV_AUDIENCE,
        "sub": "hostile", "exp": exp, "tenants": tenants, "admin": admin,
    })
}

// ---------------------------------------------------------------------------------------------
// raw HTTP

/// One answer of the raw client.
#[derive(Debug)]
pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
}

impl RawResponse {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether this is an RFC 9457 problem of ours with the response's status.
    pub(crate) fn is_problem(&self) -> bool {
        let body = self.json();
        self.content_type == "application/problem+json"
            && body["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:nats-es:problem:"))
            && body["status"] == self.status
    }

    pub(crate) fn slug(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("urn:nats-es:problem:")
            .to_owned()
    }
}

/// Sends one HTTP/1.1 request with `target` written exactly as given (no normalisation, no
/// re-encoding, unlike reqwest), `Connection: close`, and reads the whole answer.
pub(crate) async fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> RawResponse {
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if let Some(b) = body {
            stream.write_all(b).await?;
        }
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let out = tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within 30 s"))
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    parse_response(&out).unwrap_or_else(|| {
        panic!(
            "{method} {target}: unparsable answer {:?}",
            String::from_utf8_lossy(&out[..out.len().min(300)])
        )
    })
}

fn parse_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut content_type = String::new();
    let mut chunked = false;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-type" {
            v.clone_into(&mut content_type);
        } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Some(RawResponse {
        status,
        content_type,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// NATS wiretap

/// A plain NATS client subscribed to `>` for the duration of a test: every subject seen.
pub(crate) struct Wiretap {
    client: async_nats::Client,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Subjects of the server's own machinery (JetStream API and acks, KV buckets, replies,
/// system account), not event subjects.
const INTERNAL: &[&str] = &["$JS.", "$KV.", "_INBOX.", "$SYS.", "$JSC.", "$O.", "$NRG."];

impl Wiretap {
    pub(crate) async fn start(nats_url: &str) -> Wiretap {
        let client = async_nats::connect(nats_url)
            .await
            .expect("wiretap connect");
        let mut sub = client.subscribe(">").await.expect("subscribe >");
        client.flush().await.expect("flush");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                sink.lock().expect("lock").push(m.subject.to_string());
            }
        });
        Wiretap { client, seen, task }
    }

    /// Waits until everything published before this call has reached the tap (a sentinel sent
    /// after it comes back), then returns every subject seen so far.
    pub(crate) async fn drain(&self) -> Vec<String> {
        let sentinel = format!("hostile.sentinel.{}", uuid::Uuid::new_v4().simple());
        self.client
            .publish(sentinel.clone(), "".into())
            .await
            .expect("publish sentinel");
        self.client.flush().await.expect("flush");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.seen.lock().expect("lock").contains(&sentinel) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the wiretap did not see its own sentinel"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.seen.lock().expect("lock").clone()
    }

    /// The subjects on `tenant.>` that are not in `legit`, and any subject that is neither an
    /// event subject, nor internal, nor a sentinel.
    pub(crate) async fn foreign(&self, legit: &BTreeSet<String>) -> (usize, Vec<String>) {
        let seen = self.drain().await;
        let events = seen.iter().filter(|s| s.starts_with("tenant.")).count();
        eprintln!(
            "wiretap: event subjects {:?}",
            seen.iter()
                .filter(|s| s.starts_with("tenant."))
                .collect::<Vec<_>>()
        );
        let foreign = seen
            .into_iter()
            .filter(|s| {
                if s.starts_with("hostile.sentinel.") || INTERNAL.iter().any(|p| s.starts_with(p)) {
                    return false;
                }
                !legit.contains(s)
            })
            .collect();
        (events, foreign)
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

impl Drop for Wiretap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// hostile values

/// Path segments, written as they go on the wire, that must never become (part of) a subject.
pub(crate) fn hostile_segments() -> Vec<String> {
    let mut v: Vec<String> = [
        ".",
        "..",
        "*",
        ">",
        "a.b",
        "a*",
        "a>b",
        "a.>",
        "tenant.acme.aggregate.account.x",
        "%2E",
        "a%2Eb",
        "%2e%2e",
        "%2A",
        "%3E",
        "a%2A%3E",
        "a%20b",
        "%20",
        "%09",
        "a%0Ab",
        "a%0D%0Ab",
        "%00",
        "a%00b",
        "%7F",
        "%2F",
        "a%2Fb",
        "%5C",
        "%252E",
        "a%252Eb",
        "%252A",
        "%253E",
        "%25",
        "%",
        "%zz",
        "%C3%A9",
        "%E2%80%AE",
        "%EF%BC%8E",
        "%EF%BC%8A",
        "%EF%BC%9E",
        "%FF",
        "%C0%AE",
        "a;b",
        "a,b",
        "a:b",
        "a@b",
        "a+b",
        "a$b",
        "a!b",
        "a%3Fb",
        "a%23b",
        "~",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("a".repeat(65));
    v.push(format!("{}.{}", "a".repeat(32), "b".repeat(32)));
    v
}

/// A 10 KB segment (through the gateway it exceeds nginx's request-line buffer).
pub(crate) fn huge_segment() -> String {
    format!("{}%2E{}", "a".repeat(5_000), "b".repeat(5_000))
}

/// Percent-decodes like axum's path extractor (invalid UTF-8 decodes lossily here; axum
/// rejects it, and the value is only used to mint tokens that grant it).
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if b[i] == b'%'
            && let Some(v) = hex
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// routes

/// Every API route of both services: method, template (`{t}` tenant, `{ty}` aggregate type,
/// `{id}` aggregate id, `{view}`, `{key}` document key, `{seq}` parked sequence, and the query
/// values `{after}` and `{agg}`), and whether it takes a JSON body.
pub(crate) const ROUTES: &[(&str, &str, bool)] = &[
    (
        "POST",
        "/v1/tenants/{t}/aggregates/{ty}/{id}/commands",
        true,
    ),
    ("GET", "/v1/tenants/{t}/aggregates/{ty}/{id}", false),
    ("GET", "/v1/tenants/{t}/aggregates/{ty}/{id}/events", false),
    ("GET", "/v1/tenants/{t}/views/{view}?after={after}", false),
    ("GET", "/v1/tenants/{t}/views/{view}/{key}", false),
    ("GET", "/v1/admin/views/{view}/parked", false),
    (
        "POST",
        "/v1/admin/views/{view}/parked/retry?aggregate={agg}",
        false,
    ),
    ("POST", "/v1/admin/views/{view}/parked/{seq}/skip", false),
];

/// Placeholder names and the valid value each gets when another position is under attack.
pub(crate) fn good_values(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("{t}", "acme".to_owned()),
        ("{ty}", "account".to_owned()),
        ("{id}", id.to_owned()),
        ("{view}", "accounts".to_owned()),
        ("{key}", id.to_owned()),
        ("{seq}", "1".to_owned()),
        ("{after}", id.to_owned()),
        ("{agg}", format!("acme.account.{id}")),
    ]
}

/// The answers a hostile value in `position` may get, by (status, problem slug).
pub(crate) fn allowed(position: &str, status: u16, slug: &str) -> bool {
    match (status, slug) {
        // the value reached the handler (or, not UTF-8 once decoded, the auth middleware) and
        // was refused as an id
        (400, "invalid-id") => position != "{agg}",
        (400, "invalid-query") => position == "{agg}" || position == "{after}",
        // the gateway refused a request it cannot parse or pass on (bad escape, NUL, a
        // character not allowed in a URI, a request line over its limit): nothing reached a
        // service
        (400, "bad-request") | (414, "uri-too-long") => true,
        // the path cannot match a route (decoded '/', '..' normalised by the gateway)
        (404, "not-found") => true,
        // a view name is only looked up in the map of views, never put in a subject
        (404, "unknown-view") => position == "{view}",
        _ => false,
    }
}

/// Whether `value` (decoded) is a valid view document key: 1 to 8 id tokens joined by `.`.
/// Such a key in the `{key}` or `{after}` position is a legitimate read (200 or 404): keys are
/// only compared with stored keys under the path's tenant, never put in a subject.
pub(crate) fn is_document_key(value: &str) -> bool {
    let tokens: Vec<&str> = value.split('.').collect();
    tokens.len() <= 8
        && tokens.iter().all(|t| {
            !t.is_empty()
                && t.len() <= 64
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// `template` with `position` replaced by `value` and every other placeholder by its good value.
pub(crate) fn fill(template: &str, position: &str, value: &str, id: &str) -> String {
    let mut out = template.replace(position, value);
    for (p, v) in good_values(id) {
        out = out.replace(p, &v);
    }
    out
}

/// The placeholders present in a template.
pub(crate) fn positions(template: &str) -> Vec<&'static str> {
    [
        "{t}", "{ty}", "{id}", "{view}", "{key}", "{seq}", "{after}", "{agg}",
    ]
    .into_iter()
    .filter(|p| template.contains(p))
    .collect()
}
