//! Integration tests of the wire contract: golden fixtures and property tests.

mod fixtures;
mod properties;
