# The project's recipes. `just` lists them; `just verify` is the gate CI and `nix flake check` run.

set shell := ["bash", "-euo", "pipefail", "-c"]

# nextest profile: `ci` when CI is set (no fail-fast, JUnit), `default` otherwise
nextest_profile := if env("CI", "") != "" { "ci" } else { env("NEXTEST_PROFILE", "default") }
# cargo-deny reads its advisory database offline when CI or DENY_OFFLINE is set
deny_offline := if env("CI", "") != "" { "--offline" } else if env("DENY_OFFLINE", "") != "" { "--offline" } else { "" }

# the local stack: nats, up, down, logs, status, token
import 'justfile.stack'

# list the recipes
default:
    @just --list

# the gate: formatting, lints, tests, dependency policy
[group('gate')]
verify: fmt-check clippy test deny unused-deps

# the gate exactly as CI runs it
[group('gate')]
ci:
    CI=true just verify

# check formatting
[group('gate')]
fmt-check:
    cargo fmt --all --check

# format the code
[group('dev')]
fmt:
    cargo fmt --all

# lint every crate and target, warnings are errors
[group('gate')]
clippy:
    cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

# run every test (nextest) and the doctests; the tests start their own nats-server. The
# end-to-end tests run the service binaries: built first, so that no test spends its time limit
# compiling them
[group('gate')]
test:
    cargo build --locked -p aggregate -p projection -p inventory --bins
    cargo nextest run --workspace --all-features --profile {{nextest_profile}} --no-tests=fail
    cargo test --workspace --all-features --doc

# dependency policy: advisories, bans, licenses, sources. cargo-deny reads the metadata of every
# platform's crates, a build fetches only the host's: `cargo fetch` (all targets) brings the rest
[group('gate')]
deny:
    cargo fetch --locked --quiet
    cargo deny {{deny_offline}} check

# no unused dependency: cargo machete per member, and no unused [workspace.dependencies] entry
[group('gate')]
unused-deps:
    scripts/check-unused-deps.sh

# write nix/gate.json, the gate as the flake's checks run it (after changing `verify` or a step)
[group('gate')]
gate-json:
    scripts/gate-json.sh --write

# regenerate the console's screenshots in docs/console/ (the console's end-to-end test, in a real browser)
[group('dev')]
console-screenshots:
    CONSOLE_SCREENSHOTS={{justfile_directory()}}/docs/console cargo nextest run -p e2e --test it --no-tests=fail console::

# benchmarks against raw JetStream in the same run (`just bench --quick` for a smoke run)
[group('bench')]
bench *args:
    cargo run --release -p bench -- {{args}}
