#!/usr/bin/env bash
# No unused dependency: `cargo machete` for each member's dependencies (it reads the sources,
# offline), and, what it does not look at, every entry of the root [workspace.dependencies] must
# be used by at least one member (`name.workspace = true` or `name = { workspace = true ... }`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v cargo-machete >/dev/null || {
  echo "cargo-machete is missing: cargo install cargo-machete --locked (./dev installs it)" >&2
  exit 1
}
cargo-machete

members=$(sed -n '/^\[workspace\]/,/^\[/{s/^members *= *\[\(.*\)\]/\1/p}' Cargo.toml | tr -d '" ' | tr ',' '\n')
[ -n "$members" ] || { echo "no [workspace] members found in Cargo.toml" >&2; exit 1; }
unused=()
for dep in $(sed -n '/^\[workspace.dependencies\]/,/^\[/{s/^\([A-Za-z0-9_-]*\) *=.*/\1/p}' Cargo.toml); do
  used=0
  for m in $members; do
    if grep -Eq "^${dep}(\.workspace *= *true| *= *\{[^}]*workspace *= *true)" "$m/Cargo.toml"; then used=1; break; fi
  done
  ((used)) || unused+=("$dep")
done
if ((${#unused[@]})); then
  echo "[workspace.dependencies] not used by any member: ${unused[*]}" >&2
  exit 1
fi
echo "every [workspace.dependencies] entry is used by a member"
