//! Hostile input: no input crashes a service, widens a NATS subject or leaks across tenants.
//!
//! - `inprocess`: both routers in process on a real nats-server: an injection matrix over every
//!   position of every route, and a proptest of arbitrary requests (methods, path segments,
//!   queries, bodies, content types, tokens).
//! - `injection`: the same matrix through the nginx gateway of the whole stack, with a NATS
//!   wiretap on `>`.
//! - `poison`: raw messages published straight onto aggregate subjects.
//! - `auth`: forged, expired, misdirected and malformed tokens on both services.

mod auth;
mod injection;
mod inprocess;
mod poison;
mod support;
