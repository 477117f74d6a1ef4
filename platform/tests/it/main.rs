//! Integration tests of the shared conventions against a real nats-server.

mod auth;
mod jwks;
mod nats;
