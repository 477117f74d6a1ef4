//! The stack under test: [`e2e::Stack`], shared with the other end-to-end binaries.

pub(crate) use e2e::{SECRET, Stack, Topology};
