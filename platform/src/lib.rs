//! Operational conventions written once and used by both services.
//!
//! - [`problem`]: RFC 9457 problem+json errors with stable `type` URIs.
//! - [`http`]: the middleware stack every service router gets (request id, trace context,
//!   body limit, timeout, metrics, problem+json fallbacks) and the ops routes
//!   (`/healthz`, `/readyz`, `/metrics`).
//! - [`metrics`]: the Prometheus registry.
//! - [`telemetry`]: tracing subscriber setup for binaries.
//! - [`nats`]: NATS connection options and ownership of the events stream.
//! - [`differences`]: a needed configuration against the server's, in words (stream and
//!   consumer checks).
//! - [`auth`]: bearer JWT authentication and tenant isolation.
//! - [`health`]: `GET /v1/admin/health`, an instance's NATS connection and the stream's state.
//! - [`openapi`]: the bearer scheme, the problem schema and `/openapi.json`.
//! - [`shutdown`]: SIGTERM / Ctrl-C handling and bounded graceful drain.
//! - [`service`]: the flags every service has, and the serve-and-drain loop.

pub mod auth;
pub mod differences;
pub mod health;
pub mod http;
pub mod metrics;
pub mod nats;
pub mod openapi;
pub mod problem;
pub mod service;
pub mod shutdown;
pub mod sse;
pub mod telemetry;
pub mod wakeup;
