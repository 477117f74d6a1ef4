//! RS256 and ES256 tokens verified with a public key file, as configured by flags.

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{AuthArgs, Authenticator, Claims};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    auth: AuthArgs,
}

fn authenticator(public_key: &str, alg: &str) -> Authenticator {
    let path = format!("{FIXTURES}/{public_key}");
    let args = Args::parse_from([
        "test",
        "--auth-jwt-public-key-file",
        &path,
        "--auth-jwt-algorithm",
        alg,
    ])
    .auth;
    Authenticator::from_args(&args).expect("authenticator")
}

fn token(alg: Algorithm, private_key: &str) -> String {
    let pem = std::fs::read(format!("{FIXTURES}/{private_key}")).expect("key");
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("encoding key");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 60;
    let claims = Claims {
        sub: "svc".into(),
        exp,
        tenants: vec!["acme".into()],
        admin: false,
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
}

#[test]
fn rs256_tokens_verify_with_the_public_key() {
    let auth = authenticator("rsa-public.pem", "RS256");
    let claims = auth
        .verify(&token(Algorithm::RS256, "rsa-private.pem"))
        .expect("valid");
    assert_eq!(claims.tenants, ["acme"]);
    // an ES256 token is refused by an RS256 verifier
    assert_eq!(
        auth.verify(&token(Algorithm::ES256, "ec-private.pem"))
            .expect_err("wrong algorithm")
            .status,
        401
    );
}

#[test]
fn es256_tokens_verify_with_the_public_key() {
    let auth = authenticator("ec-public.pem", "ES256");
    let claims = auth
        .verify(&token(Algorithm::ES256, "ec-private.pem"))
        .expect("valid");
    assert_eq!(claims.sub, "svc");
    assert_eq!(
        auth.verify(&token(Algorithm::RS256, "rsa-private.pem"))
            .expect_err("wrong algorithm")
            .status,
        401
    );
}

#[test]
fn unusable_settings_are_refused_at_start_up() {
    let none = Args::parse_from(["test"]).auth;
    let err = Authenticator::from_args(&none)
        .err()
        .expect("no auth decided");
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    let short = Args::parse_from(["test", "--auth-jwt-secret", "short"]).auth;
    assert!(Authenticator::from_args(&short).is_err(), "a 5-byte secret");
    let missing = Args::parse_from(["test", "--auth-jwt-public-key-file", "/nonexistent.pem"]).auth;
    assert!(Authenticator::from_args(&missing).is_err());
    let disabled = Args::parse_from(["test", "--insecure-no-auth"]).auth;
    assert!(
        !Authenticator::from_args(&disabled)
            .expect("disabled")
            .is_enabled()
    );
}
