#!/usr/bin/env bash
# Open-loop latency tails against a peer and against the machine's own hiccups, in one run:
#   1. the machine: `cargo bench --bench hiccup` (how long a spinning thread is kept off its
#      CPU, with both CPUs busy and each alone): the floor under any tail measured here
#   2. hongbao SHAKE and redis LPOP, each alone on SERVER_CPU (default 0), driven by the same
#      `hongbao load` on CLIENT_CPU (default 1) at the same fixed rates (open loop, latency
#      from the intended send time), with the load generator polling (`--spin`) so that its
#      own wake-ups stay out of the figures; ROUNDS alternating rounds per rate
# Prints markdown tables; leaves each run's files under OUT (default target/tail).
#
# usage: bash bench/tail.sh [SECONDS=5] [RATES="160000 800000"] [ROUNDS=2]
# needs: python3, redis-server and redis-cli (Debian: redis-server, redis-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
RATES=${2:-160000 800000}
ROUNDS=${3:-2}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PWD/target/tail}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
rm -rf "$OUT" && mkdir -p "$OUT"

echo "## The machine's hiccups"
echo
cargo bench --quiet --bench hiccup -- "$DUR" 2>/dev/null
echo

start_hongbao --no-pacing
RD_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$WORK" && exec taskset -c "$SERVER_CPU" redis-server --port "$RD_PORT" --bind 127.0.0.1 \
  --save "" --appendonly no --daemonize no > redis.log 2>&1) &
echo $! > "$WORK/redis.pid"
for _ in $(seq 100); do redis-cli -p "$RD_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
# Enough 26-byte values that no LPOP finds the list empty.
TOTAL=0
for r in $RATES; do TOTAL=$((TOTAL + r * (DUR + 2) * ROUNDS)); done
VALUE=$(printf 'x%.0s' $(seq 26))
python3 - "$VALUE" $((TOTAL / 100 + 1)) <<'EOF' | redis-cli -p "$RD_PORT" >/dev/null
import sys
cmd = "RPUSH mylist " + " ".join([sys.argv[1]] * 100) + "\n"
for _ in range(int(sys.argv[2])):
    sys.stdout.write(cmd)
EOF

run() { # label, then hongbao load arguments
  local label=$1; shift
  "$BIN" load --cpus "$CLIENT_CPU" --conns 64 --depth 64 --warmup 1 --duration "$DUR" --spin \
    --quiet --label "$label" --out "$OUT/$label" "$@" >/dev/null 2>"$OUT/$label.err" \
    || { cat "$OUT/$label.err"; exit 1; }
}
for rate in $RATES; do
  for round in $(seq "$ROUNDS"); do
    run "hongbao-$rate-$round" --target "$TARGET" --auth-keys "$WORK/auth.keys" --no-open --rate "$rate"
    run "redis-$rate-$round" --target "127.0.0.1:$RD_PORT" --op redis-lpop --redis-key mylist --rate "$rate"
  done
done

echo "## Open loop, the same load generator (--spin), server alone on CPU $SERVER_CPU"
echo
python3 - "$OUT" $RATES <<'EOF'
import json, os, sys
out, rates = sys.argv[1], sys.argv[2:]
us = lambda v: f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"
print("| run | rate | p50 | p99 | p99.9 | max |")
print("|---|---:|---:|---:|---:|---:|")
for rate in rates:
    for name in sorted(d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d)) and f"-{rate}-" in d):
        s = json.load(open(os.path.join(out, name, "summary.json")))
        x = next(v for v in s["series"] if v["outcome"] == "all")
        l = x["latency"]
        print(f"| {name} | {x['per_second']:,.0f} | {us(l['p50_us'])} | {us(l['p99_us'])} | {us(l['p999_us'])} | {us(l['max_us'])} |")
EOF
echo
echo "- command: \`bash bench/tail.sh $DUR \"$RATES\" $ROUNDS\` (server CPU $SERVER_CPU, load CPU $CLIENT_CPU; 64 connections, up to 64 in flight each)"
echo "- machine: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
echo "- date: $(date -u +%F)"
