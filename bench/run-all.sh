#!/usr/bin/env bash
# Runs every benchmark under bench/ plus start-up time and resident memory, on SQLite and (when it can be
# started) PostgreSQL, and writes the figures, the date and the machine to docs/PERFORMANCE.md, each beside
# its target from the issues. Usage: bash bench/run-all.sh   (see bench/README.md for the knobs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

OUT=${OUT:-docs/PERFORMANCE.md}
LOGS=${LOGS:-$(mktemp -d /tmp/bench-XXXXXX)}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
ORDERS=${BENCH_ORDERS:-10000}
CONNECTIONS=${BENCH_CONNECTIONS:-10000}

say() { printf '==> %s\n' "$*" >&2; }

# PostgreSQL: the given URL, or the local throwaway server of scripts/pg-start.sh; none is fine too.
PG_URL=${BENCH_DATABASE_URL:-}
if [ -z "$PG_URL" ] && [ "${BENCH_SKIP_PG:-0}" != 1 ]; then
  PG_URL=$(bash scripts/pg-start.sh 2>/dev/null || true)
fi

mkdir -p "$LOGS"
say "building (release; the benchmarks and, for them, the service binary)"
cargo bench --no-run --message-format=json >"$LOGS/build.json"
bench_exe() {
  grep -o '"executable":"[^"]*"' "$LOGS/build.json" | cut -d'"' -f4 | grep "/$1-[0-9a-f]*$" | tail -1
}

# Runs a command in the background, samples its resident memory every 100 ms, and leaves the peak (MiB)
# in $PEAK_MIB and the wall time (s) in $WALL_S. Output goes to the given log file.
measure() {
  local log=$1
  shift
  local start end peak=0 rss
  start=$(date +%s%N)
  "$@" >"$log" 2>"$log.err" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    if [ -n "$rss" ] && [ "$rss" -gt "$peak" ]; then peak=$rss; fi
    sleep 0.1
  done
  if ! wait "$pid"; then
    say "FAILED: $* (see $log.err)"
    tail -20 "$log.err" >&2
    echo "(the benchmark failed: $(tail -1 "$log.err"))" >>"$log"
  fi
  end=$(date +%s%N)
  PEAK_MIB=$((peak / 1024))
  WALL_S=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.0f", (b - a) / 1e9}')
}

declare -A MEM WALL

# --- refresh sweep ---------------------------------------------------------------------------------
say "refresh sweep, SQLite"
measure "$LOGS/refresh-sqlite.txt" env -u BENCH_DATABASE_URL "$(bench_exe refresh_sweep)" --bench --connections "$CONNECTIONS"
MEM[refresh-sqlite]=$PEAK_MIB; WALL[refresh-sqlite]=$WALL_S
if [ -n "$PG_URL" ]; then
  say "refresh sweep, PostgreSQL"
  measure "$LOGS/refresh-pg.txt" env BENCH_DATABASE_URL="$PG_URL" "$(bench_exe refresh_sweep)" --bench --connections "$CONNECTIONS"
  MEM[refresh-pg]=$PEAK_MIB; WALL[refresh-pg]=$WALL_S
fi

# --- order push ------------------------------------------------------------------------------------
for sellers in 1 50; do
  say "order push, $sellers seller(s), SQLite"
  measure "$LOGS/push-$sellers-sqlite.txt" env -u BENCH_DATABASE_URL "$(bench_exe order_push)" --bench --sellers "$sellers" --orders "$ORDERS"
  MEM[push-$sellers-sqlite]=$PEAK_MIB; WALL[push-$sellers-sqlite]=$WALL_S
  if [ -n "$PG_URL" ]; then
    say "order push, $sellers seller(s), PostgreSQL"
    measure "$LOGS/push-$sellers-pg.txt" env BENCH_DATABASE_URL="$PG_URL" "$(bench_exe order_push)" --bench --sellers "$sellers" --orders "$ORDERS"
    MEM[push-$sellers-pg]=$PEAK_MIB; WALL[push-$sellers-pg]=$WALL_S
  fi
done

# --- webhook intake and event delivery (SQLite, then PostgreSQL in the same run) ----------------------
say "webhook intake and event delivery"
if [ -n "$PG_URL" ]; then
  measure "$LOGS/intake.txt" env BENCH_DATABASE_URL="$PG_URL" "$(bench_exe webhook_intake)" --bench
else
  measure "$LOGS/intake.txt" env -u BENCH_DATABASE_URL -u TEST_DATABASE_URL "$(bench_exe webhook_intake)" --bench
fi
MEM[intake]=$PEAK_MIB; WALL[intake]=$WALL_S

# --- marketplace scale: latency, connected sellers, aggregate push (each runs SQLite, then PostgreSQL) -----
scale_env() { if [ -n "$PG_URL" ]; then echo "BENCH_DATABASE_URL=$PG_URL"; else echo "BENCH_SKIP=1"; fi; }
QUICK_FLAG=()
[ "${BENCH_QUICK:-0}" = 1 ] && QUICK_FLAG=(--quick)
say "latency: order accepted -> leads/complex"
measure "$LOGS/latency.txt" env "$(scale_env)" "$(bench_exe latency)" --bench "${QUICK_FLAG[@]}"
MEM[latency]=$PEAK_MIB; WALL[latency]=$WALL_S
say "connected sellers: 1,000 / 10,000 / 100,000"
measure "$LOGS/sellers.txt" env "$(scale_env)" "$(bench_exe sellers)" --bench "${QUICK_FLAG[@]}"
MEM[sellers]=$PEAK_MIB; WALL[sellers]=$WALL_S
say "aggregate push: 50 / 500 / 5,000 sellers beside the bare client"
measure "$LOGS/aggregate.txt" env "$(scale_env)" "$(bench_exe aggregate_push)" --bench "${QUICK_FLAG[@]}"
MEM[aggregate]=$PEAK_MIB; WALL[aggregate]=$WALL_S
PLOTS_DIR=$(dirname "$OUT")/perf
"$(bench_exe plots)" "$PLOTS_DIR" "$LOGS/latency.txt" "$LOGS/sellers.txt" "$LOGS/aggregate.txt" >&2 || say "plots failed"

# --- start-up time to a healthy /health, and the idle service's memory -------------------------------
BIN=$(realpath "$TARGET_DIR/release/amocrm-connector")
PSQL=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1 || true)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo $((20000 + RANDOM % 20000)); }
startup() { # label database-url
  local label=$1 url=$2 port dir pid start end code=000 rss
  port=$(free_port)
  dir=$(mktemp -d)
  start=$(date +%s%N)
  # exec all the way down: $pid is the service process itself.
  (cd "$dir" && exec env -i PATH="$PATH" DATABASE_URL="$url" LISTEN_ADDR="127.0.0.1:$port" \
      PUBLIC_BASE_URL="http://127.0.0.1:$port" TOKEN_ENCRYPTION_KEYS="b1:$(head -c32 /dev/urandom | base64)" \
      AMOCRM_CLIENT_ID=bench AMOCRM_CLIENT_SECRET=bench-secret LOG_FORMAT=json \
      "$BIN" serve >"$LOGS/startup-$label.log" 2>&1) &
  pid=$!
  for _ in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health" || true)
    [ "$code" = 200 ] && break
    sleep 0.01
  done
  end=$(date +%s%N)
  if [ "$code" != 200 ]; then
    say "start-up on $label failed"
    cat "$LOGS/startup-$label.log" >&2
    kill "$pid" 2>/dev/null || true
    return 0
  fi
  sleep 2
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  STARTUP_MS[$label]=$(( (end - start) / 1000000 ))
  IDLE_MIB[$label]=$((rss / 1024))
  rm -rf "$dir"
}
declare -A STARTUP_MS IDLE_MIB
say "start-up, SQLite (fresh database: migrations included)"
startup sqlite "sqlite://$(mktemp -d)/startup.db"
if [ -n "$PG_URL" ]; then
  say "start-up, PostgreSQL (fresh schema: migrations included)"
  schema="bench_startup_$$"
  if [ -n "$PSQL" ]; then
    "$PSQL" -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema" >/dev/null 2>&1
    sep='?'; case "$PG_URL" in *\?*) sep='&';; esac
    startup pg "${PG_URL}${sep}options=-csearch_path%3D$schema"
    "$PSQL" -q "$PG_URL" -c "DROP SCHEMA IF EXISTS $schema CASCADE" >/dev/null 2>&1
  else
    startup pg "$PG_URL"
  fi
fi

# --- the report --------------------------------------------------------------------------------------
field() { # file awk-program
  awk "$2" "$1" 2>/dev/null || true
}
refresh_row() { # label file key
  local f=$1 label=$2 key=$3 secs ex
  [ -f "$f" ] || return 0
  secs=$(field "$f" '/sweep:/ {print $2}')
  ex=$(field "$f" '/token exchanges at the sandbox/ {print $6}')
  echo "| Refresh sweep, $label: $CONNECTIONS due connections, 50 ms sandbox latency | ${secs} s, ${ex} token exchanges | < 20 s, exactly ${CONNECTIONS} exchanges | $(awk -v s="$secs" -v e="$ex" -v n="$CONNECTIONS" 'BEGIN {print (s < 20 && e == n) ? "met" : "**missed**"}') | ${MEM[$key]} MiB |"
}
push_row() { # file label key
  local f=$1 label=$2 key=$3 per pct n429 exact
  [ -f "$f" ] || return 0
  per=$(field "$f" '/orders\/s per account/ {for (i = 1; i <= NF; i++) if ($i == "per" && $(i+1) == "account") print $(i-2)}' | head -1)
  pct=$(field "$f" '/orders\/s per account vs ceiling/ {v = $(NF-1); gsub(/\(/, "", v); print v}' | head -1)
  n429=$(field "$f" '/429 answers:/ {gsub(/;/, "", $3); print $3}' | head -1)
  exact=$(field "$f" '/exactly one per order:/ {gsub(/\)/, "", $NF); print $NF}' | head -1)
  echo "| Order push, $label | ${per} orders/s per account (${pct} % of 350), ${n429} × 429, one lead per order: ${exact} | ≥ 95 % of 350 per account, zero 429 | $(awk -v p="$pct" -v z="$n429" 'BEGIN {print (p >= 95 && z == 0) ? "met" : "**missed**"}') | ${MEM[$key]} MiB |"
}
intake_rows() {
  local f=$LOGS/intake.txt
  [ -f "$f" ] || return 0
  awk -v mem="${MEM[intake]}" '
    /^== .*: webhook intake/ { backend = $2; sub(":", "", backend) }
    /^bare actix-web handler/ { bare = $(NF-2) }
    /^webhook intake \(stored\)/ { rps = $(NF-2); p50 = $(NF-1); p99 = $NF }
    /^intake\/bare throughput:/ {
      pct = $3
      ok = (pct + 0 >= 50 && p99 + 0 < 50) ? "met" : "**missed**"
      printf "| Webhook intake, %s | %s req/s (bare handler %s, %s %%), p50 %s ms, p99 %s ms | ≥ 50 %% of bare, p99 < 50 ms | %s | %s MiB |\n", backend, rps, bare, pct, p50, p99, ok, mem
    }
    /^== .*: event delivery/ { dbackend = $2; sub(":", "", dbackend) }
    /^delivered .* events\/s/ {
      for (i = 1; i <= NF; i++) if ($i == "events/s") r = $(i-1)
      printf "| Event delivery, %s: signed POSTs to a local receiver | %s events/s | none set | — | %s MiB |\n", dbackend, r, mem
    }' "$f"
}

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
{
  echo "# Performance"
  echo
  echo "Measured by \`bash bench/run-all.sh\` (see [bench/README.md](../bench/README.md)) on $(date -u '+%Y-%m-%d %H:%M UTC'),"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, ${mem_total}, $(uname -sr); load average before the run"
  echo "$(cut -d' ' -f1-3 /proc/loadavg). $(rustc --version 2>/dev/null), release profile."
  if [ -n "$PG_URL" ]; then
    echo "PostgreSQL $("$PSQL" -tAc 'SHOW server_version' "$PG_URL" 2>/dev/null || echo '(version unknown)') on the same machine."
  else
    echo "PostgreSQL: not run (no server could be started)."
  fi
  echo
  echo "Every benchmark starts what it needs in its own process: the amoCRM sandbox, the service (as a library"
  echo "on its own port) and the load generator. \"Memory\" is the peak resident set of that process (sampled"
  echo "from /proc every 100 ms), so it includes the sandbox and the load generator."
  echo
  echo "| figure | measured | target | | peak memory |"
  echo "|---|---|---|---|---|"
  refresh_row "$LOGS/refresh-sqlite.txt" SQLite refresh-sqlite
  refresh_row "$LOGS/refresh-pg.txt" PostgreSQL refresh-pg
  push_row "$LOGS/push-1-sqlite.txt" "one seller, $ORDERS orders, SQLite" push-1-sqlite
  push_row "$LOGS/push-1-pg.txt" "one seller, $ORDERS orders, PostgreSQL" push-1-pg
  push_row "$LOGS/push-50-sqlite.txt" "50 sellers, $ORDERS orders, SQLite" push-50-sqlite
  push_row "$LOGS/push-50-pg.txt" "50 sellers, $ORDERS orders, PostgreSQL" push-50-pg
  intake_rows
  for b in sqlite pg; do
    [ -n "${STARTUP_MS[$b]:-}" ] || continue
    echo "| Start-up to a healthy /health, $([ $b = pg ] && echo PostgreSQL || echo SQLite), fresh database (migrations applied) | ${STARTUP_MS[$b]} ms; idle service ${IDLE_MIB[$b]} MiB resident | none set | — | ${IDLE_MIB[$b]} MiB |"
  done
  echo
  bash bench/scale-report.sh "$LOGS/latency.txt" "$LOGS/sellers.txt" "$LOGS/aggregate.txt" "$PLOTS_DIR"
  echo
  echo "## Raw output"
  for f in refresh-sqlite refresh-pg push-1-sqlite push-1-pg push-50-sqlite push-50-pg intake latency sellers aggregate; do
    [ -f "$LOGS/$f.txt" ] || continue
    echo
    echo "### $f (wall time ${WALL[$f]:-?} s, peak ${MEM[$f]:-?} MiB)"
    echo
    echo '```'
    cat "$LOGS/$f.txt"
    echo '```'
  done
} >"$OUT.new"
if [ -f "$OUT" ] && grep -q '^## Notes' "$OUT"; then
  # Hand-written notes (causes of missed targets) survive a re-run.
  { echo; sed -n '/^## Notes/,$p' "$OUT"; } >>"$OUT.new"
fi
mv "$OUT.new" "$OUT"
say "wrote $OUT (logs in $LOGS)"
