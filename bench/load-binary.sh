#!/usr/bin/env bash
# Binary-protocol load on one server core with `hongbao load`: the server pinned to SERVER_CPU
# (default 0), the load generator (one io_uring thread) pinned to CLIENT_CPU (default 1), the
# demo event with slot pacing on. Scenarios, in one run:
#   ping          PING, 64 connections x depth 16 (the protocol without the money path)
#   shake         SHAKE, 64 x 16, one user per connection, envelopes not opened
#   shake+open    SHAKE as 100,000 users (HELLO to switch), every envelope won OPENed (durable)
#   open loop     SHAKE at 80% of the shake scenario's rate, 64 connections (latency from
#                 intended send times)
# Prints one markdown table: replies/s, latency percentiles, and CPU per reply of the server
# and of the load generator (utime + stime from /proc), and leaves each run's files
# (summary.json, .hgrm, report.md) under OUT (default target/load-binary).
#
# usage: bash bench/load-binary.sh [SECONDS=10]
# needs: python3 (reads summary.json)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PWD/target/load-binary}
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
rm -rf "$OUT" && mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_hongbao

echo "| scenario | replies/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/reply | loader CPU µs/reply |"
echo "|---|---:|---:|---:|---:|---:|---:|"
run() { # name, then hongbao load arguments
  local name=$1; shift
  local s0 t0
  s0=$(cpu_ticks "$SPID")
  t0=$(mktemp)
  /usr/bin/time -f "%U %S" -o "$t0" "$BIN" load --target "$TARGET" --cpus "$CLIENT_CPU" \
    --warmup 2 --duration "$DUR" --quiet --label "$name" --out "$OUT/$name" "$@" >/dev/null \
    2>"$OUT/$name.err" || { cat "$OUT/$name.err"; exit 1; }
  local s1; s1=$(cpu_ticks "$SPID")
  python3 - "$OUT/$name/summary.json" "$(( s1 - s0 ))" "$HZ" "$(cat "$t0")" "$name" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
server_s = int(sys.argv[2]) / int(sys.argv[3])
user, system = map(float, sys.argv[4].split())
n = s["replies"]
# CPU seconds cover warm-up too: scale by the replies of the whole run (rate x total time).
total = s["replies_per_second"] * (s["measured_s"] + s["config"]["warmup_s"])
alls = [x for x in s["series"] if x["outcome"] == "all" and x["op"] != "hello"]
l = alls[0]["latency"]
print(f"| {sys.argv[5]} | {s['replies_per_second']:,.0f} | {l['p50_us']:.0f} | {l['p99_us']:.0f} "
      f"| {l['p999_us']:.0f} | {1e6 * server_s / total:.2f} | {1e6 * (user + system) / total:.2f} |")
print(s["replies_per_second"], file=open(sys.argv[1] + ".rate", "w"))
EOF
  rm -f "$t0"
}
run ping --op ping --conns 64 --depth 16
run shake --auth-keys "$WORK/auth.keys" --conns 64 --depth 16 --no-open
run shake+open --auth-keys "$WORK/auth.keys" --conns 64 --depth 16 --uids 100000
RATE=$(python3 -c "print(int(0.8 * float(open('$OUT/shake/summary.json.rate').read())))")
run open-loop-80pct --auth-keys "$WORK/auth.keys" --conns 64 --depth 64 --rate "$RATE" --no-open
echo
echo "- command: \`bash bench/load-binary.sh $DUR\` (server CPU $SERVER_CPU, load CPU $CLIENT_CPU; open loop at $RATE/s)"
echo "- machine: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "- date: $(date -u +%F)"
echo "- latency columns: the scenario's main operation (ping or shake), from intended send times"
