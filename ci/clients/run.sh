#!/usr/bin/env bash
# Three third-party amoCRM client libraries (PyPI amocrm-api and aioamocrm, npm amocrm-js) hold a
# scripted conversation with the local amoCRM sandbox. Fails when a step fails that
# known-faults.md does not list as the library's own fault. Everything stays on 127.0.0.1.
#
# Usage: bash ci/clients/run.sh   (from anywhere; CARGO_TARGET_DIR is respected, default: target/ at
# the repository root)
# After the sandbox build, the run is bounded by CLIENTS_DEADLINE_SECS (default 150).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
[[ "$target" = /* ]] || target="$PWD/$target"
export CARGO_TARGET_DIR="$target"
cd "$root"

cargo build -q -p amocrm-sandbox --bin amocrm-sandbox
sandbox_bin="$CARGO_TARGET_DIR/debug/amocrm-sandbox"

deadline=$((SECONDS + ${CLIENTS_DEADLINE_SECS:-150}))
left() {
  local n=$((deadline - SECONDS))
  if ((n <= 0)); then
    echo "clients: out of time" >&2
    exit 1
  fi
  echo "$n"
}

work="$(mktemp -d)"
declare -A sandbox_pid sandbox_url
cleanup() {
  local p
  for p in "${sandbox_pid[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

libraries=(amocrm-api aioamocrm amocrm-js)
client_id="ci-clients-integration"
client_secret="ci-clients-secret"
redirect_uri="http://127.0.0.1:9/oauth/amocrm/callback"
declare -A account=([amocrm-api]=apiclient.amocrm.ru [aioamocrm]=aioclient.amocrm.ru [amocrm-js]=jsclient.amocrm.ru)
# Sandbox rules turned off per library; each is justified in known-faults.md.
declare -A rules_off=(
  [amocrm-api]=""
  [aioamocrm]="--token-endpoint-unlimited --accept-lead-patch-links"
  [amocrm-js]="--accept-lead-patch-links"
)

# One sandbox per library: its rules and its 7 req/s window are that conversation's alone.
for lib in "${libraries[@]}"; do
  # Made before the background start, which opens it at a moment of its own: read below right away.
  : >"$work/sandbox-$lib.log"
  # shellcheck disable=SC2086 # the flags are words
  "$sandbox_bin" --listen 127.0.0.1:0 \
    --client-id "$client_id" --client-secret "$client_secret" --redirect-uri "$redirect_uri" \
    --account "${account[$lib]}" ${rules_off[$lib]} >"$work/sandbox-$lib.log" 2>&1 &
  sandbox_pid[$lib]=$!
done

# Each sandbox binds port 0 and prints the address it got; then its control routes must answer.
for lib in "${libraries[@]}"; do
  url=""
  until [[ -n "$url" ]]; do
    if ! kill -0 "${sandbox_pid[$lib]}" 2>/dev/null; then
      cat "$work/sandbox-$lib.log" >&2
      echo "clients: the sandbox for $lib exited" >&2
      exit 1
    fi
    left >/dev/null
    url="$(sed -n 's/^amoCRM sandbox listening on \(http:\/\/127\.0\.0\.1:[0-9]*\)$/\1/p' "$work/sandbox-$lib.log")"
    [[ -n "$url" ]] || sleep 0.1
  done
  until curl -fsS --max-time 2 "$url/_sandbox/accounts" >/dev/null 2>&1; do
    left >/dev/null
    sleep 0.1
  done
  sandbox_url[$lib]="$url"
  echo "clients: sandbox for $lib at $url${rules_off[$lib]:+ (rules off: ${rules_off[$lib]})}"
done

venv="$CARGO_TARGET_DIR/ci-tools/clients-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  timeout "$(left)" python3 -m venv "$venv"
fi
timeout "$(left)" "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
timeout "$(left)" npm ci --prefix "$here" --no-audit --no-fund --loglevel=error >/dev/null

# A library's own stderr (amocrm-js prints every error body there) is shown only when it fails.
run_library() {
  local lib="$1"
  shift
  SANDBOX_URL="${sandbox_url[$lib]}" AMO_HOST="${account[$lib]}" AMO_CLIENT_ID="$client_id" \
    AMO_CLIENT_SECRET="$client_secret" AMO_REDIRECT_URI="$redirect_uri" \
    timeout "$(left)" "$@" >"$work/$lib.out" 2>"$work/$lib.err"
}

declare -A pid
run_library amocrm-api "$venv/bin/python" "$here/conv_amocrm_api.py" & pid[amocrm-api]=$!
run_library aioamocrm "$venv/bin/python" "$here/conv_aioamocrm.py" & pid[aioamocrm]=$!
run_library amocrm-js node "$here/conv_amocrm_js.js" & pid[amocrm-js]=$!

status=0
for lib in "${libraries[@]}"; do
  rc=0
  wait "${pid[$lib]}" || rc=$?
  cat "$work/$lib.out"
  if ((rc != 0)); then
    sed 's/^/  stderr: /' "$work/$lib.err"
    echo "clients: $lib failed (exit $rc)"
    status=1
  fi
done
grep -h ' summary: ' "$work"/*.out || true
exit "$status"
