#!/usr/bin/env bash
# Gate parity: the steps of the justfile's `verify` recipe must be exactly the steps nix/gate.txt
# maps to `nix flake check` attributes (nix/checks.nix enforces the other half: its check names
# are exactly the names on gate.txt's right-hand sides). Plain bash + coreutils, no Nix.
#
#   nix/check-gate-parity.sh [JUSTFILE] [GATE_TXT]     (defaults: ./justfile, nix/gate.txt)
#
# Exit 0: same steps; 1: they differ; 2: a file is missing or cannot be parsed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
justfile=${1:-$here/../justfile}
gate=${2:-$here/gate.txt}

fail() { printf 'gate parity: %s\n' "$*" >&2; exit 2; }
[ -f "$justfile" ] || fail "no justfile at $justfile"
[ -f "$gate" ] || fail "no gate list at $gate"

# gate.txt: `step = check check ...`; `#` starts a comment; keys starting with `+` are Nix-only.
gate_steps=()
nix_only=()
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  [[ $line =~ ^[[:space:]]*$ ]] && continue
  if [[ ! $line =~ ^[[:space:]]*([^[:space:]=]+)[[:space:]]*=([^=]*)$ ]]; then
    fail "$gate:$lineno: expected 'step = check ...', got: $line"
  fi
  key=${BASH_REMATCH[1]}
  checks=${BASH_REMATCH[2]}
  [[ $checks =~ [^[:space:]] ]] || fail "$gate:$lineno: step '$key' maps to no check"
  if [[ $key == +* ]]; then
    read -r -a words <<<"$checks"
    nix_only+=("${words[@]}")
    continue
  fi
  gate_steps+=("$key")
done <"$gate"

# justfile: the dependencies on the `verify` recipe's header line, e.g.
#   verify: fmt-check clippy test deny
#   @verify *ARGS: fmt-check (clippy "x") && deny      -> fmt-check clippy deny
deps=
found=0
while IFS= read -r line || [ -n "$line" ]; do
  if [[ $line =~ ^@?verify([[:space:]][^:]*)?:([^=].*)?$ ]]; then
    deps=${BASH_REMATCH[2]}
    found=1
    break
  fi
done <"$justfile"
[ "$found" = 1 ] || fail "no 'verify:' recipe in $justfile"
deps=${deps%%#*}
just_steps=()
in_parens=0
for word in $deps; do
  [ "$word" = "&&" ] && continue
  if [ "$in_parens" = 1 ]; then
    [[ $word == *")" ]] && in_parens=0
    continue
  fi
  if [[ $word == "("* ]]; then
    [[ $word == *")" ]] || in_parens=1
    word=${word#(}
    word=${word%)}
  fi
  just_steps+=("$word")
done

sorted() { if [ "$#" -gt 0 ]; then printf '%s\n' "$@" | sort; fi; }
dups=$(sorted "${gate_steps[@]}" | uniq -d)
[ -z "$dups" ] || fail "$gate lists a step more than once: $dups"

only_just=$(comm -23 <(sorted "${just_steps[@]}" | uniq) <(sorted "${gate_steps[@]}"))
only_gate=$(comm -13 <(sorted "${just_steps[@]}" | uniq) <(sorted "${gate_steps[@]}"))

if [ -n "$only_just$only_gate" ]; then
  {
    echo "gate parity: FAILED: \`just verify\` and \`nix flake check\` have drifted apart."
    echo "  just verify:      ${just_steps[*]:-(none)}"
    echo "  nix/gate.txt:     ${gate_steps[*]:-(none)}"
    [ -z "$only_just" ] || echo "  in just verify, missing from nix/gate.txt: $(paste -sd ' ' <<<"$only_just")"
    [ -z "$only_gate" ] || echo "  in nix/gate.txt, not in just verify:       $(paste -sd ' ' <<<"$only_gate")"
    echo "  Fix: make nix/gate.txt's left-hand sides the steps of \`verify:\` in the justfile, and"
    echo "  its right-hand sides the checks in nix/checks.nix that run the same commands."
  } >&2
  exit 1
fi
echo "gate parity: ok (just verify = ${just_steps[*]}; nix flake check also runs: ${nix_only[*]:-nothing else})"
