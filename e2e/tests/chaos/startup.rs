//! Start-up of the documented cluster recipe (`scripts/stack.sh cluster-up`: three nodes,
//! `STREAM_REPLICAS=3`, two aggregate and two projection instances started together).

use crate::harness::{Stack, Topology};

/// Regression test of bug 1 (RELIABILITY.md, "Bugs found, and fixed"): on a fresh cluster the
/// second projection instance found the R3 bucket `PROJECTION_GENERATIONS` the first one had
/// just created, read it at once, got `503 no responders` (no replica served direct gets yet)
/// and exited. Every bucket is now probed until it answers before it is used.
#[test]
fn a_fresh_cluster_starts_two_projection_instances() {
    let stack =
        Stack::up_with(Topology::Cluster, 2, Some("info")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stack.services.len(), 4);
}
