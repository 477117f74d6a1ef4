//! End-to-end: the real binaries behind the real nginx gateway, started by `scripts/stack.sh`,
//! driven only through the gateway with an HTTP client.

mod binaries;
mod console;
mod cors;
mod devshell;
mod inventory;
mod live;
mod oidc;
mod stack;
mod support;
