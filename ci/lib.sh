# Shared by the CI check scripts that start processes: a registry of what was started, stopping it all, waits
# with deadlines, and JSON reads. The sourcing script defines fail() and sets, before using these:
#   WORK         its temp dir (process logs are $WORK/<name>.$PROC_LOG_EXT, default "log")
#   DEADLINE_AT  a $SECONDS value no wait goes past
#   CHECK_NAME   how its messages are prefixed
# shellcheck shell=bash

PIDS=()
NAMES=()

started() { # name pid
  NAMES+=("$1")
  PIDS+=("$2")
}

# Stops everything started: SIGTERM, then SIGKILL for what is still there after $STOP_GRACE_TENTHS tenths.
stop_all() {
  local i pid n
  for i in "${!PIDS[@]}"; do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    for n in $(seq 1 "${STOP_GRACE_TENTHS:-50}"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[$CHECK_NAME] ${NAMES[$i]} ($pid) ignored SIGTERM; killing" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  NAMES=()
}

check_alive() {
  local i
  for i in "${!PIDS[@]}"; do
    kill -0 "${PIDS[$i]}" 2>/dev/null ||
      fail "${NAMES[$i]} exited unexpectedly (see $WORK/${NAMES[$i]}.${PROC_LOG_EXT:-log})"
  done
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND until it succeeds, within SECONDS and DEADLINE_AT,
# failing at once if a started process died.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local until=$((SECONDS + secs))
  [ "$until" -le "$DEADLINE_AT" ] || until=$DEADLINE_AT
  while :; do
    check_alive
    if "$@"; then return 0; fi
    [ "$SECONDS" -lt "$until" ] || fail "timed out waiting for: $what"
    sleep 0.2
  done
}

file_has() { grep -qE "$2" "$1" 2>/dev/null; }

# pyj FILE 'python expression over d': d is the parsed JSON file; strings print bare, the rest as JSON.
pyj() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(v if isinstance(v,str) else json.dumps(v))' "$1" "$2"; }

# The service's `demo` (SQLite and the bundled sandbox) from $BIN, on free ports, its data in $WORK/demo:
# registered as `demo`; BASE (its URL) and API_KEY are set once its banner and secrets are written.
start_demo() {
  local log="$WORK/demo.${PROC_LOG_EXT:-log}"
  : >"$log" # made before the background start opens it: read at once below
  (cd "$WORK" && exec "$BIN" demo --data-dir "$WORK/demo" --port 0 --sandbox-port 0) >"$log" 2>&1 &
  started demo $!
  wait_for 60 "demo to start (its banner and secrets)" demo_ready
  API_KEY=$(pyj "$WORK/demo/demo-secrets.json" 'd["api_key"]')
}
demo_ready() {
  BASE=$(sed -n 's#.*API reference: \(http://127\.0\.0\.1:[0-9]*\)/api/v1/docs.*#\1#p' "$WORK/demo.${PROC_LOG_EXT:-log}" | head -n1)
  [ -n "$BASE" ] && [ -s "$WORK/demo/demo-secrets.json" ]
}

# finish RC LOG...: stops everything started; after a failure prints the tails of the LOG files that exist and
# keeps $WORK, else removes it (unless KEEP_WORK is set).
finish() {
  local rc=$1 f
  shift
  stop_all
  if [ "$rc" -ne 0 ]; then
    for f in "$@"; do
      [ -f "$f" ] || continue
      echo "----- tail of $f" >&2
      tail -n 25 "$f" | cut -c1-400 >&2
    done
    echo "[$CHECK_NAME] logs kept in $WORK" >&2
  elif [ -n "${KEEP_WORK:-}" ]; then
    echo "[$CHECK_NAME] logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}

# authorize_link FILE: the sandbox consent link ({sandbox}/oauth?client_id&state&mode) on a saved connect page.
authorize_link() {
  python3 - "$1" <<'PY'
import html, re, sys
page = open(sys.argv[1], encoding="utf-8").read()
for href in re.findall(r'href="([^"]+)"', page):
    href = html.unescape(href)
    if re.search(r"/oauth\?.*client_id=", href):
        print(href)
        break
PY
}

# consent_form AUTHORIZE_URL ACCOUNT: the form the sandbox's consent page posts when the seller presses "Allow"
# for ACCOUNT: the authorize link's client_id, state and mode, plus the account and the decision.
consent_form() {
  python3 - "$1" "$2" <<'PY'
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit
q = dict(parse_qsl(urlsplit(sys.argv[1]).query))
q.update(account=sys.argv[2], decision="allow")
print(urlencode(q))
PY
}

# expect STATUS...: the last `api` call (its status in $STATUS, its body in $WORK/resp.json) answered one of these.
expect() {
  local s
  for s in "$@"; do [ "$STATUS" = "$s" ] && return 0; done
  fail "expected HTTP $* but got $STATUS: $(head -c 600 "$WORK/resp.json" 2>/dev/null)"
}

# finish_on_exit LOG...: on exit, whatever the cause, `finish` with the exit status and these logs.
finish_on_exit() {
  FINISH_LOGS=("$@")
  trap 'rc=$?; trap - EXIT; finish "$rc" "${FINISH_LOGS[@]}"; exit "$rc"' EXIT
}
