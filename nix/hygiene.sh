#!/usr/bin/env bash
# Lint the flake's Nix files without Nix evaluation (CI has no crane/rust-overlay/nixpkgs to
# evaluate against): every .nix file parses, deadnix finds no dead code, alejandra finds nothing
# to reformat, and nix/gate.json (the gate as the flake's checks run it) is what the justfile's
# `verify` recipe says (scripts/gate-json.sh --check).
#
#   nix/hygiene.sh        (idempotent; installs what is missing on first run; exit 1 on any failure)
#
# Installs when missing: nix-instantiate (Debian nix-bin, as root), deadnix (cargo install),
# just (pip: rust-just).
# alejandra's command-line tool is not on crates.io: when no `alejandra` is on PATH, a small
# checker built on the alejandra library crate (same formatter) is built once into the cache.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/nats-es-hygiene

say() { printf '\033[1m[hygiene]\033[0m %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# The Nix files: tracked ones plus new ones not ignored by git (so it also works before a commit).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
else
  mapfile -t files < <(find . -name '*.nix' -not -path './target/*' -not -path './.git/*' | sort)
fi
existing=()
for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
files=("${existing[@]}")
[ "${#files[@]}" -gt 0 ] || { say "no .nix files"; exit 1; }
say "${#files[@]} Nix files: ${files[*]}"

# ------------------------------------------------------------------ tools
if ! have nix-instantiate; then
  [ "$(id -u)" = 0 ] || { say "nix-instantiate is missing: apt-get install -y nix-bin (as root)"; exit 1; }
  say "installing nix-instantiate (apt: nix-bin)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends nix-bin >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends nix-bin >/dev/null; }
fi
if ! have just; then
  say "installing just (pip: rust-just)"
  python3 -m pip install --quiet --disable-pip-version-check rust-just 2>&1 | grep -v 'Running pip as the' || true
  have pyenv && pyenv rehash || true
fi
if ! have deadnix; then
  say "installing deadnix (cargo install, about a minute)"
  cargo install deadnix --locked --quiet
fi
if have alejandra; then
  fmt_check() { alejandra --check -q "$@"; }
else
  checker=$cache/alejandra-check/target/release/alejandra-check
  if [ ! -x "$checker" ]; then
    say "building an alejandra checker from the alejandra crate (once, about a minute)"
    mkdir -p "$cache/alejandra-check/src"
    cat >"$cache/alejandra-check/Cargo.toml" <<'EOF'
[package]
name = "alejandra-check"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
alejandra = "=3.1.0"

[workspace]
EOF
    cat >"$cache/alejandra-check/src/main.rs" <<'EOF'
//! `alejandra-check FILE...`: exit 1 when alejandra would reformat a file or cannot parse it.
use alejandra::format::{in_memory, Status};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut failed = false;
    for path in std::env::args().skip(1) {
        let before = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("{path}: {error}");
                failed = true;
                continue;
            }
        };
        match in_memory(path.clone(), before) {
            (Status::Changed(false), _) => {}
            (Status::Changed(true), _) => {
                eprintln!("requires formatting: {path}");
                failed = true;
            }
            (Status::Error(error), _) => {
                eprintln!("{path}: {error}");
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
EOF
    (cd "$cache/alejandra-check" && cargo build --release --quiet)
  fi
  fmt_check() { "$checker" "$@"; }
fi

# ------------------------------------------------------------------ checks
failed=()
step() { # step NAME COMMAND...
  local name=$1
  shift
  if "$@"; then say "$name: ok"; else say "$name: FAILED"; failed+=("$name"); fi
}
parse_all() {
  local f rc=0
  for f in "${files[@]}"; do
    nix-instantiate --parse "$f" >/dev/null || { say "does not parse: $f"; rc=1; }
  done
  return "$rc"
}

step "nix-instantiate --parse" parse_all
step "deadnix --fail" deadnix --fail "${files[@]}"
step "alejandra --check" fmt_check "${files[@]}"
step "gate data (nix/gate.json)" scripts/gate-json.sh --check

if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "all Nix hygiene checks passed"
