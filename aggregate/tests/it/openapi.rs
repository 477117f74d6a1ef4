//! Every documented route answers what the OpenAPI document says: real requests to the app on a
//! real nats-server, each response checked against the route's documented schema for its status
//! (`testkit::openapi`).

use std::time::Duration;

use platform::auth::{Authenticator, mint_hs256_claims};
use platform::http::HttpSettings;
use testkit::NatsServer;
use testkit::openapi::CheckedApi;

use crate::support::*;

const SECRET: &[u8] = b"openapi-secret-openapi-secret-openapi";

/// A request (method, uri, bearer token, JSON body) and the status it must answer.
type Exchange<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, u16);

#[tokio::test]
async fn every_route_answers_its_documented_schema() {
    let server = NatsServer::start();
    let app = instance(&server).await;
    let router = aggregate::app(
        &app,
        Authenticator::hs256(SECRET),
        HttpSettings {
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(10),
        },
    );
    let admin = mint_hs256_claims(SECRET, "test", &["acme".into()], true, 60).expect("token");
    let user = mint_hs256_claims(SECRET, "test", &["acme".into()], false, 60).expect("token");
    let (admin, user) = (Some(admin.as_str()), Some(user.as_str()));
    let api = CheckedApi::new(router).await;

    let acc = "/v1/tenants/acme/aggregates/account/oa-1";
    let cmds = &format!("{acc}/commands");
    let deposit = r#"{"type":"deposit","payload":{"amount":5},"expected_version":1}"#;
    // in order
    #[rustfmt::skip]
    let exchanges: &[Exchange<'_>] = &[
        ("POST", cmds, user, Some(r#"{"type":"open","payload":{"owner":"Ada","currency":"EUR"},"metadata":{"k":"v"}}"#), 200),
        ("POST", cmds, user, Some(deposit), 200),
        // a multi-event command: several events in one answer
        ("POST", "/v1/tenants/acme/aggregates/ledger/l-1/commands", user, Some(r#"{"type":"post","payload":{"lines":["a","b"]}}"#), 200),
        ("GET", acc, user, None, 200),
        ("GET", &format!("{acc}/events"), user, None, 200),
        ("GET", &format!("{acc}/events?from_version=2&limit=1"), user, None, 200),
        ("GET", &format!("{acc}/events?follow=true"), user, None, 200),
        ("GET", "/v1/tenants/acme/events", user, None, 200),
        ("GET", "/v1/admin/health", admin, None, 200),
        // the problems, extension members included (a version conflict has two)
        ("POST", cmds, user, Some(deposit), 409),
        ("POST", cmds, user, Some(r#"{"type":"withdraw","payload":{"amount":1000}}"#), 422),
        ("POST", cmds, user, Some(r#"{"typo":1}"#), 400),
        ("GET", "/v1/tenants/acme/aggregates/account/nobody", user, None, 404),
        ("GET", acc, None, None, 401),
        ("GET", "/v1/tenants/other/aggregates/account/oa-1", user, None, 403),
        ("GET", "/v1/admin/health", user, None, 403),
    ];
    for &(method, uri, token, body, want) in exchanges {
        let (status, answer) = api.call(method, uri, token, body).await;
        assert_eq!(status, want, "{method} {uri}: {answer}");
    }
    let (_, events) = api.call("GET", &format!("{acc}/events"), user, None).await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(2),
        "{events}"
    );
    let (_, conflict) = api.call("POST", cmds, user, Some(deposit)).await;
    assert!(conflict["current_version"].is_number(), "{conflict}");

    api.spec.assert_every_success_checked();
}

/// `Commands.account` describes each command's payload as the account decodes it: what the
/// schema accepts decodes (whatever the domain then decides), what it refuses is refused as
/// bad input (400 `invalid-payload` / `unknown-command`), never decoded.
#[test]
fn the_document_describes_each_command_payload_as_the_account_decodes_it() {
    use aggregate::domain::DecideError;
    use serde_json::{Value, json};
    use testkit::openapi::Conformance;

    let aggregates = aggregate::default_aggregates();
    let doc = serde_json::to_value(aggregate::openapi::document(&aggregates)).expect("json");
    let api = Conformance::new(doc);
    let account = aggregates
        .iter()
        .find(|a| a.aggregate_type().as_str() == "account")
        .expect("account is shipped");
    let decide = |body: &Value| {
        let payload = body.get("payload").cloned().unwrap_or(Value::Null);
        account.decide(
            &account.initial(),
            body["type"].as_str().expect("type"),
            payload,
        )
    };
    let bad_input = |r: &Result<_, DecideError>| {
        matches!(
            r,
            Err(DecideError::InvalidPayload { .. } | DecideError::UnknownCommand { .. })
        )
    };
    let accepted = [
        json!({"type": "open", "payload": {"owner": "Ada", "currency": "EUR"}}),
        json!({"type": "deposit", "payload": {"amount": 250}}),
        json!({"type": "withdraw", "payload": {"amount": 1}}),
        json!({"type": "close", "payload": {}}),
    ];
    for body in &accepted {
        api.check_component("Commands.account", body)
            .unwrap_or_else(|e| panic!("{body} refused by the schema:\n{e}"));
        assert!(!bad_input(&decide(body)), "{body} not decoded");
    }
    let refused = [
        json!({"type": "deposit", "payload": {"amount": "ten"}}),
        json!({"type": "deposit", "payload": {}}),
        json!({"type": "open", "payload": {"owner": "Ada"}}),
        json!({"type": "deposit", "payload": {"amount": 1, "note": "extra"}}),
        json!({"type": "fly", "payload": {}}),
    ];
    for body in &refused {
        assert!(
            api.check_component("Commands.account", body).is_err(),
            "{body} accepted by the schema"
        );
        assert!(
            bad_input(&decide(body)),
            "{body} decoded: {:?}",
            decide(body).map(|_| ())
        );
    }
}
