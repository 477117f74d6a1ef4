//! Integration tests of the projection service against a real nats-server.

mod bulk;
mod consume;
mod http;
mod live;
mod openapi;
mod parking;
mod rebuild;
mod scale;
mod status;
mod support;
mod takeover;
