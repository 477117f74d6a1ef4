#!/usr/bin/env bash
# CI as a fresh machine runs it: `.ci/run` in a new clone of the committed HEAD, with ../shared
# beside it and an empty CARGO_HOME (its bin/ first on PATH), so nothing the warm registry or
# target directory holds can hide a missing step. Tools already on PATH (rustup's cargo, just,
# nats-server, nginx, ...) are kept; the registry, the git index and the build are not.
#
#   ./dev ci-fresh            (or scripts/ci-fresh.sh)
#   CI_FRESH_DIR=<dir>        where to clone (default: a new directory under ${TMPDIR:-/tmp})
#   CI_FRESH_KEEP=1           keep the directory after a green run (a red one is always kept)
#
# Run it before you stop whenever Cargo.lock, the justfile, ./dev or .ci/run changed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { printf '\033[1m[ci-fresh]\033[0m %s\n' "$*" >&2; }

[ -d "$repo/../shared" ] || { say "no ../shared beside the checkout ($repo/../shared): CI has one"; exit 2; }
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  say "warning: uncommitted changes are not part of the run (it clones HEAD $(git -C "$repo" rev-parse --short HEAD))"
fi

work=${CI_FRESH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/nats-es-ci-fresh.XXXXXX")}
mkdir -p "$work"
rm -rf "$work/repo" "$work/cargo-home"
git clone --quiet --no-hardlinks "$repo" "$work/repo"
ln -sfn "$(cd "$repo/../shared" && pwd)" "$work/shared"
mkdir -p "$work/cargo-home/bin"
export CARGO_HOME=$work/cargo-home
export PATH=$CARGO_HOME/bin:$PATH
unset CARGO_TARGET_DIR

say "HEAD $(git -C "$work/repo" rev-parse --short HEAD) in $work/repo, CARGO_HOME=$CARGO_HOME (empty)"
start=$(date +%s)
set +e
(cd "$work/repo" && .ci/run) 2>&1 | tee "$work/ci.log"
rc=${PIPESTATUS[0]}
set -e
took=$(($(date +%s) - start))
say "$([ "$rc" = 0 ] && echo green || echo "RED (exit $rc)") in $((took / 60)) min $((took % 60)) s; log: $work/ci.log"
if [ "$rc" = 0 ] && [ -z "${CI_FRESH_KEEP:-}" ] && [ -z "${CI_FRESH_DIR:-}" ]; then rm -rf "$work"; fi
exit "$rc"
