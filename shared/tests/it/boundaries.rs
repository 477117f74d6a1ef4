//! The contract crate stays pure: nothing in its dependency closure (read from Cargo.lock) is
//! an async runtime, a NATS client, an HTTP framework or anyhow.

use std::collections::{BTreeMap, BTreeSet};

const FORBIDDEN: &[&str] = &["tokio", "async-nats", "axum", "hyper", "anyhow", "reqwest"];

/// package name -> names of its dependencies, from the workspace's Cargo.lock.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .expect("Cargo.lock at the workspace root");
    let mut graph = BTreeMap::new();
    for block in lock.split("[[package]]").skip(1) {
        let mut name = None;
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in block.lines().map(str::trim) {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_owned());
            } else if line.starts_with("dependencies = [") {
                in_deps = true;
            } else if in_deps && line == "]" {
                in_deps = false;
            } else if in_deps {
                // "serde", or "serde 1.0.0" when several versions exist
                let d = line.trim_matches(|c| c == '"' || c == ',');
                deps.push(d.split(' ').next().unwrap_or(d).to_owned());
            }
        }
        if let Some(n) = name {
            graph.entry(n).or_insert_with(Vec::new).extend(deps);
        }
    }
    graph
}

#[test]
fn shared_depends_on_no_runtime_client_or_framework() {
    let graph = lock_graph();
    let mut seen = BTreeSet::new();
    let mut todo = vec!["shared".to_owned()];
    while let Some(p) = todo.pop() {
        if seen.insert(p.clone()) {
            todo.extend(graph.get(&p).cloned().unwrap_or_default());
        }
    }
    assert!(seen.contains("serde"), "the lock was read: {seen:?}");
    for f in FORBIDDEN {
        assert!(
            !seen.contains(*f),
            "shared depends on {f} (closure: {seen:?})"
        );
    }
}
