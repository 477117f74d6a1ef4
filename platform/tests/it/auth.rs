//! RS256, ES256 and EdDSA tokens verified with a public key file, as configured by flags.

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

/// The encoding key of a private key fixture.
pub(crate) fn encoding_key(alg: Algorithm, private_key: &str) -> EncodingKey {
    let pem = std::fs::read(format!("{FIXTURES}/{private_key}")).expect("key");
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("encoding key")
}

fn token(alg: Algorithm, private_key: &str) -> String {
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
    jsonwebtoken::encode(&Header::new(alg), &claims, &encoding_key(alg, private_key)).expect("sign")
}

/// Each public key file verifies its algorithm's tokens and refuses another algorithm's.
#[tokio::test]
async fn tokens_verify_with_the_public_key_file_of_their_algorithm() {
    for (public, alg_name, alg, private, other, other_private) in [
        (
            "rsa-public.pem",
            "RS256",
            Algorithm::RS256,
            "rsa-private.pem",
            Algorithm::ES256,
            "ec-private.pem",
        ),
        (
            "ec-public.pem",
            "ES256",
            Algorithm::ES256,
            "ec-private.pem",
            Algorithm::RS256,
            "rsa-private.pem",
        ),
        (
            "ed-public.pem",
            "EdDSA",
            Algorithm::EdDSA,
            "ed-private.pem",
            Algorithm::ES256,
            "ec-private.pem",
        ),
    ] {
        let auth = authenticator(public, alg_name);
        let claims = auth
            .verify(&token(alg, private))
            .await
            .unwrap_or_else(|p| panic!("{alg_name}: {p:?}"));
        assert_eq!(claims.tenants, ["acme"], "{alg_name}");
        let p = auth
            .verify(&token(other, other_private))
            .await
            .expect_err("wrong algorithm");
        assert_eq!(p.status, 401, "{alg_name}");
    }
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
