//! Real responses against a service's OpenAPI document: the status must be documented for the
//! operation, the `Content-Type` must be one of that status's, and a JSON body must validate
//! against the documented schema (JSON Schema 2020-12, the dialect of OpenAPI 3.1, with the
//! document's `$ref`s resolved in the document itself). An object the document closes
//! (`additionalProperties: false`) refuses a field it does not declare; a missing required
//! field fails too.
//!
//! ```no_run
//! # fn demo(doc: serde_json::Value, body: &[u8]) {
//! let spec = testkit::openapi::Conformance::new(doc);
//! spec.check("GET", "/v1/tenants/acme/views/accounts/a-1?min_position=3", 200, "application/json", body);
//! spec.assert_every_success_checked();
//! # }
//! ```

use std::collections::BTreeSet;
use std::sync::Mutex;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use http_body_util::BodyExt as _;
use serde_json::{Map, Value};
use tower::ServiceExt as _;

/// A service's router and its document (read from the router's own `/openapi.json`): every
/// request through [`CheckedApi::call`] has its response checked against the document.
pub struct CheckedApi {
    router: Router,
    /// The document and the responses checked so far.
    pub spec: Conformance,
}

impl CheckedApi {
    /// Reads the document the router serves at `/openapi.json`.
    pub async fn new(router: Router) -> Self {
        let resp = router
            .clone()
            .oneshot(
                Request::get("/openapi.json")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("the router answers");
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let doc = serde_json::from_slice(&bytes).expect("/openapi.json is JSON");
        Self {
            router,
            spec: Conformance::new(doc),
        }
    }

    /// One request (`token`: a bearer token; `body`: JSON), its response checked against the
    /// document. Returns the status and the JSON body (`null` for a live feed or no body).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Body::from(body.unwrap_or_default().to_owned()))
            .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("response");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if content_type.starts_with("text/event-stream") {
            // a live feed does not end: its head is what the document describes
            self.spec.check(method, uri, status, &content_type, b"");
            return (status, Value::Null);
        }
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        self.spec.check(method, uri, status, &content_type, &bytes);
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// The operations of one OpenAPI document, and which of their responses a test checked.
pub struct Conformance {
    doc: Value,
    /// `(method, path template, status)` of every response checked.
    checked: Mutex<BTreeSet<(String, String, u16)>>,
}

impl Conformance {
    /// The document, as the service serves it at `/openapi.json`.
    pub fn new(doc: Value) -> Self {
        Self {
            doc,
            checked: Mutex::new(BTreeSet::new()),
        }
    }

    /// Checks one real response to `method uri` (a concrete path, with or without a query):
    /// the documented operation is found by its path template, then status, content type and
    /// body are checked against it. Panics naming what does not conform.
    #[track_caller]
    pub fn check(&self, method: &str, uri: &str, status: u16, content_type: &str, body: &[u8]) {
        let method = method.to_ascii_lowercase();
        let path = uri.split('?').next().unwrap_or(uri);
        let template = self
            .template_of(path, &method)
            .unwrap_or_else(|| panic!("{method} {path}: no such operation in the document"));
        let operation = &self.doc["paths"][&template][&method];
        let response = &operation["responses"][status.to_string()];
        assert!(
            response.is_object(),
            "{method} {template}: status {status} is not documented (documented: {:?}); body: {}",
            keys(&operation["responses"]),
            String::from_utf8_lossy(body)
        );
        let media = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let content = &response["content"];
        if content.is_null() {
            assert!(
                body.is_empty(),
                "{method} {template} {status}: documented without a body, got {media}: {}",
                String::from_utf8_lossy(body)
            );
        } else {
            let documented = &content[&media];
            assert!(
                documented.is_object(),
                "{method} {template} {status}: Content-Type {media:?} is not documented (documented: {:?})",
                keys(content)
            );
            if is_json(&media) {
                let instance: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
                    panic!(
                        "{method} {template} {status}: the body is not JSON ({e}): {}",
                        String::from_utf8_lossy(body)
                    )
                });
                self.validate(&documented["schema"], &instance)
                    .unwrap_or_else(|errors| {
                        panic!(
                            "{method} {template} {status}: the body does not conform to the documented schema:\n{errors}\nbody: {instance}\nschema: {}",
                            documented["schema"]
                        )
                    });
            }
        }
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((method, template, status));
    }

    /// Asserts that every documented success status (2xx) of every operation was checked at
    /// least once, so a route added to the document is not left out of the test.
    #[track_caller]
    pub fn assert_every_success_checked(&self) {
        let checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut missing = Vec::new();
        for (template, item) in self.doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                for status in keys(&operation["responses"]) {
                    let Ok(code) = status.parse::<u16>() else {
                        continue;
                    };
                    if (200..300).contains(&code)
                        && !checked.contains(&(method.clone(), template.clone(), code))
                    {
                        missing.push(format!("{method} {template} {code}"));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "documented responses never checked: {missing:?}"
        );
    }

    /// Validates `instance` against the document's component schema `name` (e.g. a command
    /// body against `Commands.account`); the errors, one per line, when it does not conform.
    pub fn check_component(&self, name: &str, instance: &Value) -> Result<(), String> {
        assert!(
            self.doc["components"]["schemas"][name].is_object(),
            "no component schema {name:?} in the document"
        );
        let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
        self.validate(&schema, instance)
    }

    /// The template of the document's paths that `path` matches for `method`: same number of
    /// segments, literal segments equal, `{param}` segments non-empty; the one with the most
    /// literal segments when several match.
    fn template_of(&self, path: &str, method: &str) -> Option<String> {
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .iter()
            .filter(|(_, item)| item.get(method).is_some())
            .filter_map(|(template, _)| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') && part.ends_with('}') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, template.clone()))
            })
            .max()
            .map(|(_, template)| template)
    }

    /// Validates `instance` against `schema`, resolving `$ref`s (`#/components/...`) in the
    /// document: the schema is compiled as a root that carries the document's components.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let mut root = match schema {
            Value::Object(o) => o.clone(),
            other => panic!("the documented schema is not an object: {other}"),
        };
        root.insert("components".into(), self.doc["components"].clone());
        let root = Value::Object(root);
        let validator = jsonschema::draft202012::new(&root)
            .unwrap_or_else(|e| panic!("the documented schema does not compile: {e}\n{root}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("  at {:?}: {e}", e.instance_path().as_str()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(Map::keys)
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/v1/things/{id}": {"get": {"responses": {
                    "200": {"description": "a thing", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                    "404": {"description": "none", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
                }}},
                "/v1/things/special": {"get": {"responses": {
                    "204": {"description": "nothing"}
                }}}
            },
            "components": {"schemas": {
                "Thing": {"type": "object", "required": ["id", "size"], "additionalProperties": false,
                          "properties": {"id": {"type": "string"}, "size": {"type": "integer", "minimum": 0}}},
                "Problem": {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
            }}
        })
    }

    fn fails(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let err = std::panic::catch_unwind(f).expect_err("must fail");
        err.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_conforming_body_passes_and_counts() {
        let c = Conformance::new(doc());
        c.check(
            "GET",
            "/v1/things/t1?x=1",
            200,
            "application/json",
            br#"{"id":"t1","size":3}"#,
        );
        c.check("GET", "/v1/things/special", 204, "", b"");
        c.check(
            "GET",
            "/v1/things/t2",
            404,
            "application/problem+json",
            br#"{"type":"x","extra":1}"#,
        );
        c.assert_every_success_checked();
    }

    /// Why a thing answered with `body` fails.
    fn thing_fails(body: &'static [u8]) -> String {
        fails(|| {
            Conformance::new(doc()).check("GET", "/v1/things/t1", 200, "application/json", body)
        })
    }

    #[test]
    fn an_undeclared_field_of_a_closed_object_fails() {
        let m = thing_fails(br#"{"id":"t1","size":3,"colour":"red"}"#);
        assert!(m.contains("colour"), "{m}");
    }

    #[test]
    fn a_missing_required_field_fails() {
        let m = thing_fails(br#"{"id":"t1"}"#);
        assert!(m.contains("size"), "{m}");
    }

    #[test]
    fn an_undocumented_status_or_content_type_fails() {
        let m = fails(|| {
            Conformance::new(doc()).check("GET", "/v1/things/t1", 500, "application/json", b"{}")
        });
        assert!(m.contains("500 is not documented"), "{m}");
        let m = fails(|| {
            Conformance::new(doc()).check("GET", "/v1/things/t1", 200, "text/plain", b"t1")
        });
        assert!(m.contains("not documented"), "{m}");
    }

    #[test]
    fn an_unchecked_success_is_reported() {
        let c = Conformance::new(doc());
        c.check(
            "GET",
            "/v1/things/t1",
            200,
            "application/json",
            br#"{"id":"t1","size":0}"#,
        );
        let m = fails(move || c.assert_every_success_checked());
        assert!(m.contains("get /v1/things/special 204"), "{m}");
    }
}
