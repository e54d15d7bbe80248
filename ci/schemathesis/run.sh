#!/usr/bin/env bash
# CI check: schemathesis (every check, every phase, deterministic) against a running `demo`, whose document
# must describe exactly what the service takes and answers. Allowed exceptions: schemathesis.toml, explained
# in false-alarms.md. Nothing leaves the machine: the run is in a network namespace with loopback only.
#
#   bash ci/schemathesis/run.sh         (SCHEMATHESIS_KEEP=1 keeps the temp dir with the demo's log;
#                                        SCHEMATHESIS_SHARED_NETWORK=1 where unshare -n is not allowed)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/ci/schemathesis"
VERSION=4.32.5
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

BIN="$TARGET/debug/amocrm-connector"
tools="$TARGET/ci-tools"

if [ "${1:-}" != --inside ]; then
  cargo build -q --bin amocrm-connector
  [ -x "$tools/bin/python" ] || python3 -m venv "$tools"
  "$tools/bin/python" -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$VERSION')" 2>/dev/null ||
    "$tools/bin/pip" install -q "schemathesis==$VERSION"
  # The run itself in a network namespace of its own, with loopback only: subscriptions schemathesis makes
  # up may name any host, and nothing may be delivered off this machine.
  if [ -n "${SCHEMATHESIS_SHARED_NETWORK:-}" ]; then
    exec bash "$0" --inside
  fi
  exec unshare -n bash -c 'ip link set lo up && exec bash "$0" --inside' "$0"
fi

WORK=$(mktemp -d)
DEMO_PID=
cleanup() {
  [ -n "$DEMO_PID" ] && kill "$DEMO_PID" 2>/dev/null && wait "$DEMO_PID" 2>/dev/null
  if [ -n "${SCHEMATHESIS_KEEP:-}" ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

: >"$WORK/demo.out" # made before the background start opens it: read below right away
(cd "$WORK" && exec "$BIN" demo --data-dir "$WORK/demo" --port 0 --sandbox-port 0) >"$WORK/demo.out" 2>&1 &
DEMO_PID=$!
BASE=
for _ in $(seq 600); do
  BASE=$(sed -n 's#.*API reference: \(http://127\.0\.0\.1:[0-9]*\)/api/v1/docs.*#\1#p' "$WORK/demo.out" | head -n1)
  [ -n "$BASE" ] && [ -s "$WORK/demo/demo-secrets.json" ] && break
  kill -0 "$DEMO_PID" 2>/dev/null || { cat "$WORK/demo.out"; echo "demo exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$BASE" ] || { cat "$WORK/demo.out"; echo "demo did not start within 60 s" >&2; exit 1; }
KEY=$("$tools/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' "$WORK/demo/demo-secrets.json")

# The run's own report files stay in the temp dir; the console report is what CI shows.
cd "$WORK"
"$tools/bin/st" --config-file "$HERE/schemathesis.toml" run "$BASE/api/v1/openapi.json" \
  -H "Authorization: Bearer $KEY" --max-examples ${SCHEMATHESIS_EXAMPLES:-100}
