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
CHECK_NAME=schemathesis
DEADLINE_AT=$((SECONDS + 60))
fail() {
  echo "[schemathesis] FAIL: $*" >&2
  exit 1
}
# shellcheck source=ci/lib.sh
source "$ROOT/ci/lib.sh"
KEEP_WORK=${SCHEMATHESIS_KEEP:-}
finish_on_exit "$WORK/demo.log"
start_demo
KEY=$API_KEY

# The run's own report files stay in the temp dir; the console report is what CI shows.
cd "$WORK"
"$tools/bin/st" --config-file "$HERE/schemathesis.toml" run "$BASE/api/v1/openapi.json" \
  -H "Authorization: Bearer $KEY" --max-examples ${SCHEMATHESIS_EXAMPLES:-100}
