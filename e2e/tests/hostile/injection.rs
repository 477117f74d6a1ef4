//! Subject injection through the gateway: hostile values in every path and query position of
//! every route of both services, while a plain NATS client listens on `>`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_value_in_any_position_widens_a_subject_through_the_gateway() {
    let stack = Stack::up(Topology::Single);
    let tap = Wiretap::start(&stack.nats_urls[0]).await;
    let gw = stack.gateway_addr().to_owned();

    // a token that grants every (decoded) hostile tenant as well, so a hostile tenant gets past
    // the tenant check and reaches id validation: granting "*" or ">" must not widen anything
    let segments = hostile_segments();
    let mut grants: Vec<String> = vec!["acme".to_owned()];
    grants.extend(segments.iter().map(|s| percent_decode(s)));
    let grants: Vec<&str> = grants.iter().map(String::as_str).collect();
    let mut claims = claims(&grants, true, 600);
    claims["sub"] = json!("hostile-injection");
    let token = hand_signed(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims,
        SECRET.as_bytes(),
    );
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let open = br#"{"type":"open","payload":{"owner":"Mallory","currency":"EUR"}}"#;

    // legitimate traffic on the same routes: the only subjects allowed to appear
    let mut legit = BTreeSet::new();
    for n in 0..3 {
        let id = format!("legit-{n}-{}", uuid::Uuid::new_v4().simple());
        let r = raw_request(
            &gw,
            "POST",
            &format!("/v1/tenants/acme/aggregates/account/{id}/commands"),
            &headers,
            Some(open),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        legit.insert(format!("tenant.acme.aggregate.account.{id}"));
    }

    let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let mut sent = 0usize;
    let id = format!("victim-{}", uuid::Uuid::new_v4().simple());
    for (method, template, body) in ROUTES {
        for position in positions(template) {
            for value in &segments {
                let target = fill(template, position, value, &id);
                let r =
                    raw_request(&gw, method, &target, &headers, body.then_some(&open[..])).await;
                sent += 1;
                let slug = r.slug();
                let a_key = matches!(position, "{key}" | "{after}")
                    && matches!(r.status, 200 | 404)
                    && is_document_key(&percent_decode(value));
                if !(a_key || r.is_problem() && allowed(position, r.status, &slug)) {
                    failures.push(format!(
                        "{method} {target} -> {} {} {}",
                        r.status,
                        r.content_type,
                        String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                    ));
                }
                *outcomes.entry((r.status, slug)).or_default() += 1;
            }
        }
    }

    let (events, foreign) = tap.foreign(&legit).await;
    eprintln!(
        "gateway injection: {sent} hostile requests, outcomes {outcomes:?}; {events} messages on tenant.>, {} foreign",
        foreign.len()
    );
    assert!(
        foreign.is_empty(),
        "messages on foreign subjects: {foreign:?}"
    );
    // the tap sees each event once as published and once per view consumer delivery (a
    // JetStream delivery carries the original subject)
    assert!(
        events >= legit.len(),
        "the wiretap missed the legitimate events"
    );
    assert!(
        failures.is_empty(),
        "{} of {sent} hostile requests were not answered 400/404 problem+json:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let panics = stack.panics();
    assert!(panics.is_empty(), "{panics:?}");
}

/// What the gateway does with requests the services never see: a request line longer than
/// nginx's buffer, raw bytes that are not valid in a request target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_what_it_refuses_itself_as_problem_json() {
    let stack = Stack::up(Topology::Single);
    let tap = Wiretap::start(&stack.nats_urls[0]).await;
    let gw = stack.gateway_addr().to_owned();
    let token = token(&["acme"]);
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let huge = huge_segment();
    let mut failures = Vec::new();
    for target in [
        format!("/v1/tenants/acme/aggregates/account/{huge}"),
        format!("/v1/tenants/{huge}/views/accounts"),
        "/v1/tenants/acme/aggregates/account/a b".to_owned(),
        "/v1/tenants/acme/aggregates/account/\u{e9}".to_owned(),
        "/v1/tenants/acme/views/accounts/a\u{2024}b".to_owned(),
    ] {
        let r = raw_request(&gw, "GET", &target, &headers, None).await;
        if !(r.is_problem() && (400..500).contains(&r.status)) {
            failures.push(format!(
                "GET {}... -> {} {:?} {}",
                &target[..target.len().min(60)],
                r.status,
                r.content_type,
                String::from_utf8_lossy(&r.body[..r.body.len().min(120)])
            ));
        }
    }
    let (_, foreign) = tap.foreign(&BTreeSet::new()).await;
    assert!(
        foreign.is_empty(),
        "messages on foreign subjects: {foreign:?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
