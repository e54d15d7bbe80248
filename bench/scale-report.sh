#!/usr/bin/env bash
# Prints the "Marketplace scale" section of docs/PERFORMANCE.md from the output of the latency, sellers and
# aggregate push benchmarks: every figure beside its target, then the charts in PLOTS_DIR (linked as perf/).
# Usage: bash bench/scale-report.sh LATENCY_LOG SELLERS_LOG AGGREGATE_LOG PLOTS_DIR
set -uo pipefail
LAT=$1 SEL=$2 AGG=$3 PLOTS_DIR=$4
echo "## Marketplace scale"
echo
echo "From \`bench/latency.rs\`, \`bench/sellers.rs\` and \`bench/aggregate_push.rs\` (raw output below). Added latency is"
echo "the time from the 202 to the sandbox handling the \`leads/complex\` that carries the order, less the"
echo "sandbox's configured answer latency. Sellers: memory is the benchmark process's peak during each phase"
echo "(the sandbox runs in a child process); the idle figures are of the real \`amocrm-connector serve\` binary."
echo
echo "| figure | measured | target | |"
echo "|---|---|---|---|"
awk '/^RESULT latency/ {
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    t = ""; ok = "—"
    if (v["rate"] == 100 && v["sellers"] == 1000) { t = "p99 ≤ 50 ms"; ok = (v["p99"] + 0 <= 50) ? "met" : "**missed**" }
    if (v["rate"] == 1000 && v["sellers"] == 10000) { t = "p99 ≤ 250 ms"; ok = (v["p99"] + 0 <= 250) ? "met" : "**missed**" }
    printf "| Added latency, %s, %s orders/s over %s sellers, %s | p50 %s, p90 %s, p99 %s, max %s ms (%s orders) | %s | %s |\n", v["deal"], v["rate"], v["sellers"], v["backend"], v["p50"], v["p90"], v["p99"], v["max"], v["n"], (t == "" ? "none set" : t), ok
  }' "$LAT" 2>/dev/null || true
awk '/^RESULT sellers/ {
    delete v
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    n = v["n"]; b = v["backend"]; p = v["phase"]
    if (p == "seed") printf "| Database size, %s connections, %s | %s bytes per connection | none set | — |\n", n, b, v["bytes_per_connection"]
    if (p == "intake") printf "| Webhook intake with %s connections, %s | %s req/s, p99 %s ms, peak %s MiB | p99 < 50 ms | %s |\n", n, b, v["rate"], v["p99"], v["rss_mib"], (v["p99"] + 0 < 50 ? "met" : "**missed**")
    if (p == "push") printf "| Order push with %s connections, %s | %s orders/s, peak %s MiB | none set | — |\n", n, b, v["rate"], v["rss_mib"]
    if (p == "refresh") {
      ok = "—"; t = "none set"
      if (n == 100000) { t = "≤ 150 s, exactly 100,000 exchanges, ≤ 128 MiB"; ok = (v["secs"] + 0 <= 150 && v["exchanges"] == 100000 && v["rss_mib"] + 0 <= 128) ? "met" : "**missed**" }
      printf "| Refresh sweep of %s due connections, %s, 50 ms sandbox latency | %s s (%s refreshes/s), %s exchanges, peak %s MiB | %s | %s |\n", n, b, v["secs"], v["rate"], v["exchanges"], v["rss_mib"], t, ok
    }
    if (p == "idle") {
      ok = "—"; t = "none set"
      if (n == 100000) { t = "≤ 64 MiB, no CPU at rest"; ok = (v["rss_mib"] + 0 <= 64 && v["cpu_pct"] + 0 < 0.5) ? "met" : "**missed**" }
      printf "| Idle service with %s connections, %s | %s MiB resident, %s %% of a core at rest | %s | %s |\n", n, b, v["rss_mib"], v["cpu_pct"], t, ok
    }
  }' "$SEL" 2>/dev/null || true
awk '/^RESULT aggregate/ {
    for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    t = "none set"; ok = "—"
    if (v["backend"] == "SQLite" && v["sellers"] == 500) { t = "≥ 20,000 orders/s"; ok = (v["rate"] + 0 >= 20000) ? "met" : "**missed**" }
    printf "| Aggregate push, %s sellers, %s | %s orders/s | %s | %s |\n", v["sellers"], v["backend"], v["rate"], t, ok
  }' "$AGG" 2>/dev/null || true
echo
for svg in latency-p99 sellers-refresh-seconds sellers-refresh-memory sellers-idle-memory sellers-idle-cpu sellers-push sellers-intake aggregate-push; do
  [ -f "$PLOTS_DIR/$svg.svg" ] && echo "![$svg](perf/$svg.svg)"
done
echo
