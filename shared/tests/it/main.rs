//! Integration tests of the wire contract: golden fixtures and property tests.

mod boundaries;
mod fixtures;
mod properties;
