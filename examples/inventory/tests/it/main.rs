//! Integration tests of the inventory example against a real nats-server, through the
//! platform's library API only (`aggregate::Service`, `projection::Service`).

mod commands;
mod evolution;
mod readme;
mod support;
