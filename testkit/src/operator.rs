//! NATS decentralized auth ("operator mode") for tests: an operator, a system account, an
//! application account with JetStream, and users with `.creds` files, as `nsc` would make
//! them: JWTs (v2 claims, `ed25519-nkey`) signed with freshly generated nkeys.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator with a system account and one application account, ready to be written as a
/// server configuration (memory resolver with both accounts preloaded).
pub struct Operator {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

fn encode(claims: &Value, signer: &KeyPair) -> String {
    let header = URL_SAFE_NO_PAD.encode(json!({"typ": "JWT", "alg": "ed25519-nkey"}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{body}");
    let sig = signer.sign(signing_input.as_bytes()).expect("nkey signs");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

fn claims(subject: &KeyPair, issuer: &KeyPair, name: &str, nats: Value) -> Value {
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "jti": uuid_like(&subject.public_key()),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject.public_key(),
        "nats": nats,
    })
}

/// An id for `jti` (the server does not check it against the claims' hash).
fn uuid_like(seed: &str) -> String {
    seed.chars().rev().take(52).collect()
}

fn account_jwt(account: &KeyPair, operator: &KeyPair, name: &str, jetstream: bool) -> String {
    let js = if jetstream { -1 } else { 0 };
    encode(
        &claims(
            account,
            operator,
            name,
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": js, "disk_storage": js, "streams": js, "consumer": js,
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account",
                "version": 2,
            }),
        ),
        operator,
    )
}

impl Operator {
    /// Fresh keys for the operator and both accounts.
    pub fn new() -> Self {
        Operator {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
        }
    }

    /// The server configuration (to pass with `--config`): operator JWT, system account,
    /// memory resolver with both accounts preloaded.
    pub fn server_config(&self) -> String {
        let operator_jwt = encode(
            &claims(
                &self.operator,
                &self.operator,
                "test-operator",
                json!({"type": "operator", "version": 2}),
            ),
            &self.operator,
        );
        let system_jwt = account_jwt(&self.system, &self.operator, "SYS", false);
        let app_jwt = account_jwt(&self.account, &self.operator, "APP", true);
        format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {sys}: {system_jwt}\n  {app}: {app_jwt}\n}}\n",
            sys = self.system.public_key(),
            app = self.account.public_key(),
        )
    }

    /// Writes the server configuration into `dir` and returns its path.
    pub fn write_server_config(&self, dir: &Path) -> PathBuf {
        let path = dir.join("operator.conf");
        std::fs::write(&path, self.server_config()).expect("write server config");
        path
    }

    /// A `.creds` file for a new user of the application account, in `dir`.
    pub fn user_creds(&self, dir: &Path, name: &str) -> PathBuf {
        creds(dir, name, &self.account)
    }

    /// A `.creds` file for a user signed by an account this server does not know.
    pub fn foreign_user_creds(dir: &Path, name: &str) -> PathBuf {
        creds(dir, name, &KeyPair::new_account())
    }
}

fn creds(dir: &Path, name: &str, account: &KeyPair) -> PathBuf {
    let user = KeyPair::new_user();
    let jwt = encode(
        &claims(
            &user,
            account,
            name,
            json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                   "type": "user", "version": 2}),
        ),
        account,
    );
    let seed = user.seed().expect("user seed");
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let path = dir.join(format!("{name}.creds"));
    std::fs::write(&path, text).expect("write creds");
    path
}
