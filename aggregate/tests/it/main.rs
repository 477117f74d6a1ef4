//! Integration tests of the aggregate service against a real nats-server.

mod cluster;
mod history;
mod http;
mod live;
mod openapi;
mod runtime;
mod snapshot;
mod startup;
mod store;
mod support;
