//! Authentication through the gateway, on both services and the admin routes: every forged,
//! expired, misdirected or malformed token is refused with the right 401/403 problem+json.

use platform::auth::{DEV_AUDIENCE, DEV_ISSUER};
use serde_json::json;

use crate::support::*;

const AGG: &str = "/v1/tenants/acme/aggregates/account/auth-probe";
const AGG_CMD: &str = "/v1/tenants/acme/aggregates/account/auth-probe/commands";
const VIEW: &str = "/v1/tenants/acme/views/accounts/auth-probe";
const LIST: &str = "/v1/tenants/acme/views/accounts";
const ADMIN: &str = "/v1/admin/views/accounts/parked";
const ADMIN_RETRY: &str = "/v1/admin/views/accounts/parked/retry";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_the_right_problem() {
    let stack = Stack::up(Topology::Single);
    let tap = Wiretap::start(&stack.nats_urls[0]).await;
    let gw = stack.gateway_addr().to_owned();
    let secret = SECRET.as_bytes();
    let hs256 = json!({"alg": "HS256", "typ": "JWT"});
    let acme = claims(&["acme"], false, 600);

    let mut sent = 0usize;
    let mut failures = Vec::new();
    let mut check = async |label: &str, auth: Option<String>, want: &[(u16, &str)]| {
        for (method, path) in [
            ("GET", AGG),
            ("POST", AGG_CMD),
            ("GET", VIEW),
            ("GET", LIST),
            ("GET", ADMIN),
            ("POST", ADMIN_RETRY),
        ] {
            let mut headers = vec![("Content-Type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("Authorization", a.as_str()));
            }
            let body: &[u8] = br#"{"type":"open","payload":{"owner":"X","currency":"EUR"}}"#;
            let r = raw_request(
                &gw,
                method,
                path,
                &headers,
                (method == "POST").then_some(body),
            )
            .await;
            sent += 1;
            let is_admin = path.starts_with("/v1/admin/");
            let (status, slug) = if is_admin && want.len() > 1 {
                want[1]
            } else {
                want[0]
            };
            if !(r.is_problem() && r.status == status && r.slug() == slug) {
                failures.push(format!(
                    "{label}: {method} {path} -> {} {} {} (want {status} {slug})",
                    r.status,
                    r.content_type,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                ));
            }
        }
    };
    let unauthorized = [(401, "unauthorized")];
    let forbidden = [(403, "forbidden")];

    check("no token", None, &unauthorized).await;
    check("empty bearer", Some("Bearer ".into()), &unauthorized).await;
    check(
        "basic auth",
        Some("Basic YWNtZTphY21l".into()),
        &unauthorized,
    )
    .await;
    check("not a jwt", Some("Bearer not.a.jwt".into()), &unauthorized).await;
    check(
        "expired",
        Some(format!(
            "Bearer {}",
            hand_signed(&hs256, &claims(&["acme"], true, -120), secret)
        )),
        &unauthorized,
    )
    .await;
    check(
        "wrong signature",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &hs256,
                &claims(&["acme"], true, 600),
                b"another-secret-another-secret-00"
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "alg none",
        Some(format!(
            "Bearer {}",
            alg_none(&claims(&["acme"], true, 600))
        )),
        &unauthorized,
    )
    .await;
    check(
        "alg none, signature kept",
        Some(format!("Bearer {}", {
            let good = hand_signed(&hs256, &claims(&["acme"], true, 600), secret);
            let parts: Vec<&str> = good.split('.').collect();
            let none = alg_none(&claims(&["acme"], true, 600));
            format!("{}{}", none, parts[2])
        })),
        &unauthorized,
    )
    .await;
    check(
        "HS256 signature, header claims RS256",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &claims(&["acme"], true, 600),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "HS256 signature, header claims HS512",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &claims(&["acme"], true, 600),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "no sub",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &hs256,
                &json!({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "exp": 9_999_999_999u64, "tenants": ["acme"], "admin": true}),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "no exp",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &hs256,
                &json!({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "x", "tenants": ["acme"], "admin": true}),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "tenants as a string",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &hs256,
                &json!({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "x", "exp": 9_999_999_999u64, "tenants": "acme"}),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    check(
        "admin as a string",
        Some(format!(
            "Bearer {}",
            hand_signed(
                &hs256,
                &json!({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": "x", "exp": 9_999_999_999u64, "tenants": ["acme"], "admin": "true"}),
                secret
            )
        )),
        &unauthorized,
    )
    .await;
    // the stack requires iss = DEV_ISSUER and an aud containing DEV_AUDIENCE
    let mut misdirected = Vec::new();
    for (label, key, value) in [
        ("another issuer", "iss", json!("https://evil.example")),
        ("no issuer", "iss", json!(null)),
        ("another audience", "aud", json!(["some-other-service"])),
        ("no audience", "aud", json!(null)),
    ] {
        let mut c = claims(&["acme"], true, 600);
        if value.is_null() {
            c.as_object_mut().expect("object").remove(key);
        } else {
            c[key] = value;
        }
        misdirected.push((label, hand_signed(&hs256, &c, secret)));
    }
    for (label, token) in misdirected {
        check(label, Some(format!("Bearer {token}")), &unauthorized).await;
        // the detail names the claim that failed, and is never "malformed"
        let r = raw_request(
            &gw,
            "GET",
            AGG,
            &[("Authorization", format!("Bearer {token}").as_str())],
            None,
        )
        .await;
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        let claim = if label.contains("issuer") {
            "iss"
        } else {
            "aud"
        };
        assert!(
            detail.contains(&format!("`{claim}`")) && !detail.contains("malformed"),
            "{label}: {detail}"
        );
    }
    for (label, tenants) in [
        ("wrong tenant", vec!["other"]),
        ("tenant in another case", vec!["ACME"]),
        ("tenant wildcard *", vec!["*"]),
        ("tenant wildcard >", vec![">"]),
        ("tenant with a space", vec!["acme "]),
        ("tenant prefix", vec!["acm"]),
        ("no tenants", vec![]),
    ] {
        // 403 on tenant routes; the admin routes refuse a token without the admin claim
        check(
            label,
            Some(format!(
                "Bearer {}",
                hand_signed(&hs256, &claims(&tenants, false, 600), secret)
            )),
            &forbidden,
        )
        .await;
    }
    // an admin token grants no tenant: 403 on tenant routes, through on admin routes
    let admin_no_tenant = format!("Bearer {}", admin_token());
    for (method, path) in [("GET", AGG), ("GET", VIEW), ("GET", LIST)] {
        let r = raw_request(
            &gw,
            method,
            path,
            &[("Authorization", admin_no_tenant.as_str())],
            None,
        )
        .await;
        sent += 1;
        assert!(
            r.is_problem() && r.status == 403 && r.slug() == "forbidden",
            "admin token on {path}: {} {:?}",
            r.status,
            r.json()
        );
    }
    // a tenant token is refused on the admin routes, even granting every tenant there is
    let tenant_only = format!("Bearer {}", hand_signed(&hs256, &acme, secret));
    for (method, path) in [
        ("GET", ADMIN),
        ("POST", ADMIN_RETRY),
        ("POST", "/v1/admin/views/accounts/parked/1/skip"),
    ] {
        let r = raw_request(
            &gw,
            method,
            path,
            &[("Authorization", tenant_only.as_str())],
            None,
        )
        .await;
        sent += 1;
        assert!(
            r.is_problem() && r.status == 403 && r.slug() == "forbidden",
            "tenant token on {path}: {} {:?}",
            r.status,
            r.json()
        );
    }
    // positive controls: the right tokens get through
    let r = raw_request(
        &gw,
        "GET",
        AGG,
        &[("Authorization", tenant_only.as_str())],
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.slug().as_str()),
        (404, "not-found"),
        "{:?}",
        r.json()
    );
    let r = raw_request(
        &gw,
        "GET",
        LIST,
        &[("Authorization", tenant_only.as_str())],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let r = raw_request(
        &gw,
        "GET",
        ADMIN,
        &[("Authorization", admin_no_tenant.as_str())],
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.json());

    eprintln!("auth: {sent} requests, {} wrong answers", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // none of it wrote anything
    let (events, foreign) = tap.foreign(&Default::default()).await;
    assert_eq!((events, foreign.len()), (0, 0), "{foreign:?}");
}
