#!/usr/bin/env bash
# Checks that amocrm-client and amocrm-sandbox can be published: each README's example block is its example
# file, `cargo package` builds both as they would be uploaded, every example runs to exit 0, and rustdoc
# finds nothing to warn about.
#
# Usage: bash ci/crates/run.sh   (from anywhere; CARGO_TARGET_DIR is respected, default: target/ at the
# repository root)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target" = /* ]] || target="$PWD/$target"
export CARGO_TARGET_DIR="$target"
cd "$root"

crates=(amocrm-sandbox amocrm-client)
step() { printf '\n==> crates: %s\n' "$*"; }

step "README example blocks match the example files"
# A README block follows a line `<!-- example: examples/NAME.rs -->`; the file holds the same lines between
# `// README: begin` and `// README: end`, indented one level.
for crate in "${crates[@]}"; do
  dir="crates/$crate"
  while read -r file; do
    readme_block="$(awk -v f="$file" '
      $0 == "<!-- example: " f " -->" { want = 1; next }
      want && /^```rust$/ { inside = 1; want = 0; next }
      inside && /^```$/ { exit }
      inside { print }' "$dir/README.md")"
    file_block="$(awk '/\/\/ README: end/ { exit } on { print } /\/\/ README: begin/ { on = 1 }' "$dir/$file" \
      | sed 's/^    //')"
    if [[ -z "$file_block" || "$readme_block" != "$file_block" ]]; then
      echo "crates: $dir/README.md's block for $file differs from the file's README region:" >&2
      diff <(printf '%s\n' "$readme_block") <(printf '%s\n' "$file_block") >&2 || true
      exit 1
    fi
    echo "ok $dir/README.md = $dir/$file"
  done < <(sed -n 's/^<!-- example: \(.*\) -->$/\1/p' "$dir/README.md")
done

step "cargo package"
# Both in one call: amocrm-client dev-depends on amocrm-sandbox 0.1.0, which crates.io does not have until the
# sandbox is published. Packaged together, cargo resolves it from the sandbox package it has just built, and
# verifies each crate by building the extracted .crate on its own (so a file outside a crate's directory, or a
# path-only dependency, fails here). --allow-dirty only when the crates have uncommitted changes (a developer's
# tree); CI's fresh clone has none, so there the check is as strict as `cargo publish`.
dirty=()
if [[ -n "$(git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
  dirty=(--allow-dirty)
fi
cargo package -p amocrm-sandbox -p amocrm-client "${dirty[@]}"

step "examples"
for crate in "${crates[@]}"; do
  cargo build -q -p "$crate" --examples
  for path in "crates/$crate"/examples/*.rs; do
    name="$(basename "$path" .rs)"
    start=$SECONDS
    # Each example stops on its own in well under a second once built; the timeout only bounds a hang.
    timeout 120 cargo run -q -p "$crate" --example "$name" >/dev/null
    echo "ok $crate example $name ($((SECONDS - start)) s)"
  done
done

step "cargo doc"
for crate in "${crates[@]}"; do
  RUSTDOCFLAGS="-D warnings" cargo doc -q --no-deps -p "$crate"
  echo "ok $crate docs"
done

step "done"
