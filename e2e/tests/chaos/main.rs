//! Faults and load on the real stack: nats-server (one node or a 3-node JetStream cluster), two
//! aggregate and two projection instances and the nginx gateway, all started by
//! `scripts/stack.sh` in a temporary directory on free ports, driven through the gateway.
//!
//! Every scenario runs a bounded load (clients that retry the same command id until it is
//! acknowledged), injects its fault mid-load, lets the stack recover, stops the load and runs
//! the one shared invariant check (`invariants::check`). Sizes come from `CHAOS_SCALE`
//! (default 1) and, for the load test, `LOAD_SECONDS` / `LOAD_CLIENTS`. Figures are printed to
//! stderr (`--no-capture`) and written to `target/reliability/<scenario>.json`.
//! See RELIABILITY.md.

mod faults;
mod harness;
mod idempotency;
mod invariants;
mod load;
mod report;
mod startup;
mod workload;
